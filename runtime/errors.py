"""What the runtime refuses or cannot answer, as domain errors that know nothing of any protocol.

Each error has a stable machine ``code`` (``invalid_image``, ``queue_full``, ...), the same under
every front door, and a ``message`` for people that names what was wrong and how to fix it. The
class says what kind of failure it is; each front door maps the classes to its own statuses in one
table (HTTP: ``maskrt.server.errors.STATUS``).
"""

from __future__ import annotations

from typing import Any


class InferenceError(Exception):
    """A request the runtime refuses or fails. ``retry_after_s``: how long to wait before trying
    again, where waiting helps."""

    def __init__(self, code: str, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


class InvalidImage(InferenceError):
    """An image that cannot be decoded: empty, not in a supported format, truncated or corrupt."""


class TooLarge(InferenceError):
    """An image, or all the images of a request, with more pixels than the limit."""


class Unavailable(InferenceError):
    """Not now: the model is loading or failed to, the server is draining, or it is busy (queue or
    pixel budget full). Always has ``retry_after_s``."""


class DeadlineExceeded(InferenceError):
    """The request was not answered within its timeout."""


class InferenceFailed(InferenceError):
    """The backend raised for the batch the request's images were in (the details are logged)."""


class UnknownModel(InferenceError):
    """No such model, or no such version of it, is loaded (``unknown_model``)."""


class BadRequest(InferenceError):
    """A request the runtime cannot route: it names no model where several serve
    (``model_required``)."""


class RepositoryError(InferenceError):
    """A load or unload the model repository refuses: the model fails to load (``load_failed``),
    the load would pass ``MAX_LOADED_MODELS`` (``too_many_models``) or the memory budget
    (``memory_budget``), or the server has no repository to load from (``no_repository``)."""


class Redirect(Exception):
    """Raised by a request's ``read`` when what it read names another model or version than the
    data plane reading it (a form field): ``plane`` is to infer ``images`` with ``options``
    instead. Not an error; the first plane does not count the request."""

    def __init__(self, plane: Any, images: Any, options: Any) -> None:
        super().__init__("redirected")
        self.plane, self.images, self.options = plane, images, options


class ClientGone(Exception):
    """The client went away while its request waited; its images were dropped, nothing is sent."""
