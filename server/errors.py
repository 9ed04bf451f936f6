"""Errors the HTTP layer turns into ``{"error": {"code", "message"}}`` answers (DESIGN.md)."""

from __future__ import annotations


class ApiError(Exception):
    """A request the server refuses: HTTP ``status``, a stable machine ``code``, a human message.

    ``headers`` are added to the answer (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class BodyTooLarge(ApiError):
    """The body grew past ``max_upload_bytes`` while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", f"the request body is larger than the limit of {limit} bytes"
        )
