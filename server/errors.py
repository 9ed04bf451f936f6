"""Errors the HTTP layer answers with, and the one place their JSON is built.

Every refused request gets ``{"error": {"code", "message"}}`` (docs/architecture.md, "HTTP
contract"), or ``{"error": "message"}`` under ``/v2`` (the Open Inference Protocol's shape):
:class:`ApiError` raised anywhere (a route, a dependency, the body reader), the runtime's errors
(their HTTP status from :data:`STATUS`), FastAPI's own 404/405 and validation errors, and the
middleware's last-resort 500 all go through :func:`error_response`.
"""

from __future__ import annotations

import reprlib
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from maskrt.runtime.errors import (
    BadRequest,
    DeadlineExceeded,
    InferenceError,
    InferenceFailed,
    InvalidImage,
    RepositoryError,
    TooLarge,
    Unavailable,
    UnknownModel,
)

OIP_PREFIX = "/v2"  # the Open Inference Protocol's routes (maskrt.server.routes.v2)
MAX_MESSAGE_CHARS = 1000  # an error message is never longer (a client's value can be megabytes)

_SHOWN = reprlib.Repr()  # Python 3.11's takes no arguments
_SHOWN.maxlevel, _SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlist, _SHOWN.maxdict = 2, 80, 80, 4, 4


def shown(value: Any) -> str:
    """``repr(value)`` cut short, for messages that quote a client's value: a few elements of a
    list, the ends of a long string, two levels of nesting (so neither a huge nor a deep value
    costs more than a line)."""
    return _SHOWN.repr(value)


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a stable machine ``code``, a human message.

    ``headers`` are added to the answer (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


class BodyTooLarge(ApiError):
    """The body grew past ``max_upload_bytes`` while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", f"the request body is larger than the limit of {limit} bytes"
        )


# The HTTP status of each kind of runtime error: the one table of the HTTP front door.
STATUS: dict[type[InferenceError], int] = {
    InvalidImage: 400,
    TooLarge: 413,
    Unavailable: 503,
    DeadlineExceeded: 504,
    InferenceFailed: 500,
    UnknownModel: 404,
    BadRequest: 400,
    RepositoryError: 400,
}


def from_runtime(exc: InferenceError) -> ApiError:
    """The HTTP answer to a runtime error: its status from :data:`STATUS`, its code and message,
    and ``Retry-After`` where waiting helps."""
    status = next(STATUS[kind] for kind in type(exc).__mro__ if kind in STATUS)
    headers = {} if exc.retry_after_s is None else {"Retry-After": str(exc.retry_after_s)}
    return ApiError(status, exc.code, exc.message, headers)


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Compact UTF-8 JSON by orjson (12x the standard library's speed on a ``/predict`` answer,
    ``maskrt bench json-encode``); numpy scalars and arrays are written as numbers and lists; a
    non-finite float (never in an answer) would be written as ``null``."""
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, headers=headers, media_type="application/json")


def error_body(exc: ApiError, path: str) -> dict[str, Any]:
    """The native shape, or under ``/v2`` the Open Inference Protocol's ``{"error": message}``."""
    if path == OIP_PREFIX or path.startswith(OIP_PREFIX + "/"):
        return {"error": exc.message}
    return exc.body()


def error_response(exc: ApiError, path: str) -> Response:
    """The answer to ``exc`` for a request to ``path``."""
    return json_response(error_body(exc, path), exc.status, exc.headers)


def unknown_parameter(name: Any, known: list[str]) -> str:
    return f"unknown parameter {shown(name)} (known: {', '.join(known)})"


def validation_message(exc: ValidationError | RequestValidationError, known: list[str]) -> str:
    """One line naming each bad parameter; an unknown one is answered with the ``known`` ones."""
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err.get("loc", ()) if p not in ("query", "body"))
        if err.get("type") == "extra_forbidden":
            parts.append(unknown_parameter(loc, known))
        else:
            parts.append(f"{loc}: {err.get('msg')} (got {shown(err.get('input'))})")
    return "; ".join(parts) or "invalid parameters"


def install_error_handlers(app: FastAPI, known_parameters: list[str]) -> None:
    """Answer :class:`ApiError`, the runtime's errors, FastAPI's HTTP errors (404, 405) and its
    request validation errors (422, naming ``known_parameters``) as error JSON."""

    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return error_response(exc, request.scope["path"])

    async def runtime_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, InferenceError)
        return error_response(from_runtime(exc), request.scope["path"])

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = (
            f"no route {request.method} {request.url.path}"
            if exc.status_code == 404
            else str(exc.detail)
        )
        error = ApiError(exc.status_code, code, message, dict(exc.headers or {}))
        return error_response(error, request.scope["path"])

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        message = validation_message(exc, known_parameters)
        return error_response(ApiError(422, "invalid_parameter", message), request.scope["path"])

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(InferenceError, runtime_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
