"""HTTP/1.1 connections under hostile traffic: uvicorn's httptools protocol with limits of its own.

Before a request reaches the app, each connection is held to:

- ``max_header_bytes``: a request line plus headers longer than this gets 431 as soon as the
  head passes the limit (the parser is fed at most that much of a head, so a huge header is never
  parsed whole);
- ``header_timeout_s``: a connection that has not sent complete headers this long after it opened
  (or, kept alive, after the first byte of its next request) gets 408 and is closed, so slow
  clients cannot hold sockets forever (one that sent nothing at all is closed without an answer;
  an idle kept-alive connection is uvicorn's keep-alive timeout's to close);
- ``max_connections``: a request on a connection beyond this many open ones gets 503 with
  ``Retry-After`` and the connection is closed;

and malformed HTTP gets the JSON error body of every other answer (400 ``invalid_http``) with an
``X-Request-ID``. A refusal on a pipelined connection waits for the answers to the requests before
it (running or queued), then is written and the connection closed: answers never go out of order
and none is cut off. A request whose body turns out malformed is not answered by the app (it sees
the client gone), only refused. :func:`raise_open_file_limit` lifts the process's soft limit on
open files to the hard one at start, so the connection cap, not the file limit, is what refuses
clients.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import resource
import uuid
from dataclasses import dataclass
from http import HTTPStatus

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from maskrt.server.errors import ApiError, error_response

log = logging.getLogger("maskrt.server")

MAX_OPEN_FILES = 1 << 20  # the target where the hard limit is unlimited (Linux's nr_open)
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
    body = error_response(exc, "").body  # no request line was read: the native error shape
    head = [
        f"HTTP/1.1 {exc.status} {HTTPStatus(exc.status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        "x-content-type-options: nosniff",
        f"x-request-id: {uuid.uuid4().hex}",
        *(f"{k.lower()}: {v}" for k, v in exc.headers.items()),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + bytes(body)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`.

    The head of a request is fed to the parser at most ``max_header_bytes`` at a time, so a longer
    one is refused before the parser (which joins header values by concatenation) sees it whole.
    """

    def __init__(self, *args, limits: ConnectionLimits, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.awaiting_head = True  # between requests, or inside a request line and headers
        self.head_bytes = 0  # bytes fed while awaiting_head
        self.head_parsed = 0  # bytes of the request line and headers the parser has given
        self.in_message = False  # the parser has begun a request it has not finished
        self.header_timer: asyncio.TimerHandle | None = None
        self.refused = False  # no more input is parsed
        self.refusal: bytes | None = None  # to write once the answers before it are out
        self.running: RequestResponseCycle | None = None  # the request whose app runs

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self.app = functools.partial(_over_capacity, len(self.connections))
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._headers_done()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        while data and self.awaiting_head and not self.refused:
            room = self.limits.max_header_bytes - self.head_bytes
            if room <= 0:
                self._refuse(self._headers_too_large())
                return
            self._await_headers()  # the start of a request on a kept-alive connection
            chunk, data = data[:room], data[room:]
            self.head_bytes += len(chunk)
            super().data_received(chunk)
        if data and not self.refused and not self.transport.is_closing():
            super().data_received(data)

    # The parser's callbacks count each head too: a request pipelined behind a body is parsed in
    # the same feed as that body, past the limit of data_received. Once refused, nothing more of
    # the connection reaches the app.
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.head_parsed, self.in_message = 0, True
        self._await_headers()  # also for a request that starts inside a feed

    def on_url(self, url: bytes) -> None:
        self._parsed(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._parsed(len(name) + len(value) + 4)
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        if self.refused:
            return
        self.awaiting_head = False
        self._headers_done()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self.refused:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self.refused:
            return
        super().on_message_complete()
        self.awaiting_head, self.head_bytes, self.in_message = True, 0, False

    def _parsed(self, size: int) -> None:
        self.head_parsed += size
        if self.head_parsed > self.limits.max_header_bytes:
            self._refuse(self._headers_too_large())

    def _start_asgi_task(self, cycle: RequestResponseCycle, app) -> None:
        self.running = cycle
        super()._start_asgi_task(cycle, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # starts the next pipelined request, if any
        if self.refusal is not None and not self._answering():
            self._write_refusal()

    def send_400_response(self, msg: str) -> None:
        self._refuse(ApiError(400, "invalid_http", "malformed HTTP request"))

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
        if self.transport.is_closing() or not self.awaiting_head:
            return
        if self.head_bytes == 0 and not self.in_message:  # nothing sent (a pre-connect): close
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
        self.refused = True
        self._headers_done()
        client = self.client[0] if self.client else ""
        log.info(
            "refused: %d %s",
            exc.status,
            exc.code,
            extra={"fields": {"status": exc.status, "code": exc.code, "client": client}},
        )
        if not self.awaiting_head and self.cycle is not None:  # its body is what is malformed
            self._drop(self.cycle)
        self.refusal = raw_error(exc)
        if not self._answering():
            self._write_refusal()

    def _answering(self) -> bool:
        """Whether a request before the refused one is still to be answered."""
        running = self.running
        busy = running is not None and not running.response_complete and not running.disconnected
        return busy or bool(self.pipeline)

    def _drop(self, cycle: RequestResponseCycle) -> None:
        """Take ``cycle`` out of the connection: dequeued if it waits its turn; if it runs, its app
        sees the client gone and nothing it sends is written."""
        for entry in [entry for entry in self.pipeline if entry[0] is cycle]:
            self.pipeline.remove(entry)
        cycle.disconnected = True
        cycle.message_event.set()

    def _write_refusal(self) -> None:
        assert self.refusal is not None
        refusal, self.refusal = self.refusal, None
        if self.transport.is_closing():  # the last answer closed it (Connection: close)
            return
        self._unset_keepalive_if_required()
        self.transport.write(refusal)
        # lingering close: what the client is still sending is read and dropped for a moment, so
        # closing with unread data (a reset) does not destroy the answer before the client reads it
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


async def _over_capacity(open_connections: int, scope, receive, send) -> None:
    """The app of a connection opened beyond ``max_connections``: 503, then close."""
    exc = ApiError(
        503,
        "too_many_connections",
        f"the server has too many open connections ({open_connections}); retry in 1 s",
        {
            "Retry-After": "1",
            "Connection": "close",
            "X-Content-Type-Options": "nosniff",
            "X-Request-ID": uuid.uuid4().hex,
        },
    )
    await error_response(exc, scope.get("path", ""))(scope, receive, send)


def protocol_factory(limits: ConnectionLimits):
    """What ``uvicorn.Config(http=...)`` takes: the guarded protocol bound to ``limits``."""
    return functools.partial(GuardedHttpToolsProtocol, limits=limits)


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
