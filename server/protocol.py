"""HTTP/1.1 connections under hostile traffic: uvicorn's h11 protocol with limits of its own.

Before a request reaches the app, each connection is held to:

- ``max_header_bytes``: a request line plus headers longer than this gets 431 as soon as the
  buffered head passes the limit (h11 stops at it, so a huge header is never parsed whole);
- ``header_timeout_s``: a connection that has not sent complete headers this long after it opened
  (or, kept alive, after the first byte of its next request) gets 408 and is closed, so slow
  clients cannot hold sockets forever (one that sent nothing at all is closed without an answer;
  an idle kept-alive connection is uvicorn's keep-alive timeout's to close);
- ``max_connections``: a request on a connection beyond this many open ones gets 503 with
  ``Retry-After`` and the connection is closed;

and malformed HTTP gets the JSON error body of every other answer (400 ``invalid_http``) with an
``X-Request-ID``. :func:`raise_open_file_limit` lifts the process's soft limit on open files to
the hard one at start, so the connection cap, not the file limit, is what refuses clients.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import resource
import uuid
from dataclasses import dataclass
from http import HTTPStatus

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from maskrt.server.errors import ApiError, error_response

log = logging.getLogger("maskrt.server")

MAX_OPEN_FILES = 1 << 20  # the target where the hard limit is unlimited (Linux's nr_open)
_HEAD_END = re.compile(rb"\n\r?\n")  # the blank line that ends a request head (h11's rule)
LINGER_S = 2.0  # how long a refused connection's further input is read and dropped
FDS_RESERVED = 64  # files the process needs besides client sockets (model, logs, threads, pipes)


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    header_timeout_s: float
    max_connections: int


def raw_error(exc: ApiError) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 answer for ``exc``, for connections the app never
    sees."""
    body = error_response(exc).body
    head = [
        f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        f"x-request-id: {uuid.uuid4().hex}",
        *(f"{k.lower()}: {v}" for k, v in exc.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + bytes(body)


class _Connection(h11.Connection):
    """Remembers the protocol error that ended the connection (its status hint: 400 or 431)."""

    error: h11.RemoteProtocolError | None = None

    def next_event(self):
        try:
            return super().next_event()
        except h11.RemoteProtocolError as exc:
            self.error = exc
            raise


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the limits of :class:`ConnectionLimits`."""

    def __init__(self, *args, limits: ConnectionLimits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.conn = _Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self.header_timer: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = functools.partial(_over_capacity, len(self.connections))
        self._await_headers()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        if self.conn.their_state is h11.IDLE:  # the start of a request on a kept-alive connection
            self._await_headers()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large():
            self._refuse(self._headers_too_large())
            return
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # a request's headers arrived (or it failed)
            self._headers_done()

    def send_400_response(self, msg: str) -> None:
        error = self.conn.error
        if error is not None and error.error_status_hint == 431:
            self._refuse(self._headers_too_large())
        else:
            self._refuse(ApiError(400, "invalid_http", f"malformed HTTP request: {error or msg}"))

    def _head_too_large(self) -> bool:
        """Whether the buffered start of a request has no end of headers within the limit (h11
        alone lets a head of any size through when it arrives whole)."""
        buffered = self.conn.trailing_data[0]
        limit = self.limits.max_header_bytes
        return len(buffered) > limit and _HEAD_END.search(buffered, 0, limit) is None

    def _headers_too_large(self) -> ApiError:
        return ApiError(
            431,
            "headers_too_large",
            f"the request line and headers are larger than the limit of "
            f"{self.limits.max_header_bytes} bytes",
        )

    def _await_headers(self) -> None:
        if self.header_timer is None:
            self.header_timer = self.loop.call_later(
                self.limits.header_timeout_s, self._header_timeout
            )

    def _headers_done(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if not self.conn.trailing_data[0]:  # nothing sent at all (a pre-connect): just close
            self.transport.close()
        else:
            self._refuse(
                ApiError(
                    408,
                    "header_timeout",
                    f"no complete request headers within {self.limits.header_timeout_s:g} s",
                )
            )

    def _refuse(self, exc: ApiError) -> None:
        if self.refused:
            return
        self._headers_done()
        client = self.client[0] if self.client else ""
        log.info(
            "refused: %d %s",
            exc.status,
            exc.code,
            extra={"fields": {"status": exc.status, "code": exc.code, "client": client}},
        )
        self.transport.write(raw_error(exc))
        # lingering close: what the client is still sending is read and dropped for a moment, so
        # closing with unread data (a reset) does not destroy the answer before the client reads it
        self.refused = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


async def _over_capacity(open_connections: int, scope, receive, send) -> None:
    """The app of a connection opened beyond ``max_connections``: 503, then close."""
    exc = ApiError(
        503,
        "too_many_connections",
        f"the server has too many open connections ({open_connections}); retry in 1 s",
        {"Retry-After": "1", "Connection": "close", "X-Request-ID": uuid.uuid4().hex},
    )
    await error_response(exc)(scope, receive, send)


def protocol_factory(limits: ConnectionLimits):
    """What ``uvicorn.Config(http=...)`` takes: the guarded protocol bound to ``limits``."""
    return functools.partial(GuardedH11Protocol, limits=limits)


def raise_open_file_limit(max_connections: int) -> int:
    """Lift the soft limit on open files to the hard one (where the OS allows) and return the
    number of connections that fit under it: ``max_connections`` or fewer, with a warning."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = MAX_OPEN_FILES if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d to %d: %s", soft, target, exc)
    if soft == resource.RLIM_INFINITY or soft - FDS_RESERVED >= max_connections:
        return max_connections
    fits = max(1, soft - FDS_RESERVED)
    log.warning(
        "the open-file limit (%d) allows %d connections, fewer than max_connections (%d); "
        "serving at most %d",
        soft,
        fits,
        max_connections,
        fits,
    )
    return fits
