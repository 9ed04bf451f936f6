"""What the runtime refuses or cannot answer, as domain errors that know nothing of any protocol.

Each error has a stable machine ``code`` (``invalid_image``, ``queue_full``, ...), the same under
every front door, and a ``message`` for people that names what was wrong and how to fix it. The
class says what kind of failure it is; each front door maps the classes to its own statuses in one
table (HTTP: ``maskrt.server.errors.STATUS``).
"""

from __future__ import annotations


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


class ClientGone(Exception):
    """The client went away while its request waited; its images were dropped, nothing is sent."""
