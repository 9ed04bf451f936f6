"""Compressed answers: gzip or deflate, whichever the client's ``Accept-Encoding`` accepts (gzip
first). RLE mask strings and JSON shrink several times, which counts for a client far away.

Starlette's ``GZipMiddleware`` speaks gzip only, and ``tritonclient``'s
``response_compression_algorithm="deflate"`` asks for deflate alone; this one middleware does both
with :mod:`zlib`. A binary ``/v2`` answer is compressed whole: its
``Inference-Header-Content-Length`` still counts the uncompressed JSON header, as Triton's does,
since clients inflate the body before they split it. Small answers, answers already encoded and
compressed media (images) go as they are.
"""

from __future__ import annotations

import asyncio
import re
import zlib

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# coding -> zlib's wbits: gzip's header and trailer, or the zlib format HTTP calls deflate
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
MINIMUM_BYTES = 1024  # smaller answers are not worth it
LEVEL = 6
INLINE_BYTES = 128 * 1024  # larger bodies are compressed in a thread, off the event loop
_COMPRESSED_MEDIA = re.compile(r"^(image|audio|video)/|^application/(zip|gzip|x-gzip|grpc)")
_NOT_ACCEPTABLE = re.compile(r"q\s*=\s*0(\.0{0,3})?")


def accepted_coding(accept_encoding: str) -> str | None:
    """``gzip`` or ``deflate`` when an ``Accept-Encoding`` value accepts it (not ``q=0``)."""
    accepted = set()
    for item in accept_encoding.lower().split(","):
        coding, *params = (part.strip() for part in item.split(";"))
        if coding and not any(_NOT_ACCEPTABLE.fullmatch(p) for p in params):
            accepted.add(coding)
    return next((c for c in WBITS if c in accepted), None)


class CompressionMiddleware:
    """Compresses each HTTP answer the client accepts compressed (see the module)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        coding = None
        if scope["type"] == "http":
            coding = accepted_coding(Headers(scope=scope).get("accept-encoding", ""))
        if coding is None:
            await self.app(scope, receive, send)
            return
        await self.app(scope, receive, _Compressing(coding, send).send)


class _Compressing:
    """The ``send`` of one answer: holds its start until the first body shows whether (and how)
    to compress it."""

    def __init__(self, coding: str, send: Send) -> None:
        self.coding = coding
        self.downstream = send
        self.start: Message | None = None
        self.compressor: zlib._Compress | None = None  # None: sent as it is

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        start, self.start = self.start, None
        if message["type"] == "http.response.body":
            if start is not None:
                self._choose(start, message)
            if self.compressor is not None:
                message = await self._compressed(message)
                if start is not None and not message.get("more_body", False):
                    MutableHeaders(scope=start)["Content-Length"] = str(len(message["body"]))
        if start is not None:
            await self.downstream(start)
        await self.downstream(message)

    def _choose(self, start: Message, first: Message) -> None:
        """Compress or not, from the start and the first body; the headers to match."""
        headers = MutableHeaders(scope=start)
        if start["status"] in (204, 206, 304) or "content-encoding" in headers:
            return
        headers.add_vary_header("Accept-Encoding")
        media = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        small = len(first.get("body", b"")) < MINIMUM_BYTES and not first.get("more_body", False)
        if small or _COMPRESSED_MEDIA.match(media):
            return
        self.compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, WBITS[self.coding])
        headers["Content-Encoding"] = self.coding
        del headers["Content-Length"]

    async def _compressed(self, message: Message) -> Message:
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) >= INLINE_BYTES:
            packed = await asyncio.to_thread(self._compress, body, more)
        else:
            packed = self._compress(body, more)
        return {**message, "body": packed}

    def _compress(self, body: bytes, more: bool) -> bytes:
        assert self.compressor is not None
        flush = zlib.Z_SYNC_FLUSH if more else zlib.Z_FINISH
        return self.compressor.compress(body) + self.compressor.flush(flush)
