"""Resilience run: a ``maskrt serve`` started here on 127.0.0.1, then hostile traffic against it.

1. overload: ``--overload-concurrency`` clients (each level ``--overload-seconds``) against a
   server with a short queue; answered (200), refused (503 with ``Retry-After``), failed (anything
   else); then 32 impatient clients that give up after 0.3 s (client disconnects, counted as
   refused); then the latency of single requests once the load is gone;
2. slow clients: ``--slow-connections`` connections that never finish their headers while a
   normal client keeps sending requests; how many of those were answered, and how many slow
   connections the server closed (408) after its header timeout;
3. oversized requests: a 1 MiB header (431), a body over the upload limit (413), a decompression
   bomb (413), a batch of PNGs of 6000x6000 (64, or as many as the queue takes: 413 by pixels);
   the server's RSS before and after;
4. hostile bodies (:mod:`maskrt.bench.body_attacks`), each against the server under normal load:
   ``/v2`` JSON nested 950 deep, millions of empty lists or unknown parameter keys in a little
   gzip, a non-ASCII digit in ``Inference-Header-Content-Length``, a second gzip member or
   trailing bytes, JSON with no or a "simple" content type; a line each (statuses, ``/healthz``
   p99, normal clients answered, RSS growth); then bodies trickled at a byte a second,
   ``X-Forwarded-For`` from an unconfigured peer and a hostile ``Host`` on a slash redirect;
5. soak: ``--soak-concurrency`` clients sending mixed images for ``--soak-minutes``; per minute
   answered, failed, p50/p95 latency, the server's RSS and open files; the trend from the first
   minute to the last;
5. forged logs, pipelined refusals, the metrics port and the page's headers, each beside normal
   traffic (a client sending images, a ``/healthz`` probe every 50 ms) and measured against the
   goals (normal clients all answered, ``/healthz`` p99 under 100 ms, RSS growth under 64 MB):
   paths with line breaks, terminal escapes and bidi overrides (none may reach the log raw),
   ``POST /predict`` pipelined with a 431 or malformed request (answers in order), idle and
   slow-header connections to ``METRICS_PORT`` (no thread each, 408), the security headers of the
   page and the docs.

    maskrt bench resilience --soak-minutes 20
    maskrt bench resilience --overload-seconds 10 --soak-minutes 1 -- --backend torch

Flags after ``--`` go to ``maskrt serve``; ``MASKRT_*`` variables apply to it as usual. Exits 1
when any request failed (an answer outside the contract) or the server died.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import httpx

from maskrt.bench import body_attacks
from maskrt.bench.load import LoadClient, default_image, percentile, wait_ready

HOST = "127.0.0.1"
REFUSED = {413, 431, 503}  # the server saying no, as documented


def big_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of ``width x height`` zeros (small on disk, fast to make)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" * (1 + (width + 7) // 8)
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Served:
    """``maskrt serve`` on a free loopback port, its log in a file; RSS and open files from
    ``/proc``."""

    def __init__(self, serve_args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [sys.executable, "-m", "maskrt", "serve", "--host", HOST]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port), *serve_args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def rss_mb(self) -> float:
        return self._status("VmRSS") / 1024

    def threads(self) -> float:
        return self._status("Threads")

    def _status(self, field: str) -> float:
        """A number of ``/proc/PID/status`` (NaN once the process is gone)."""
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    return int(line.split()[1])
        return float("nan")

    def open_files(self) -> int:
        try:
            return len(list(Path(f"/proc/{self.proc.pid}/fd").iterdir()))
        except OSError:
            return -1

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode


class Tally:
    """Answered / refused / failed counts of one phase: 200 is an answer where ``answers`` (else a
    failure), a status in ``refusals`` a refusal, anything else (other statuses, transport errors)
    a failure."""

    def __init__(self, name: str, refusals: set[int | str], answers: bool = True) -> None:
        self.name = name
        self.refusals = refusals
        self.answers = answers
        self.counts: dict[str, int] = {}
        self.answered = self.refused = self.failed = 0

    def add(self, status: int | str) -> None:
        self.counts[str(status)] = self.counts.get(str(status), 0) + 1
        if status == 200 and self.answers:
            self.answered += 1
        elif status in self.refusals:
            self.refused += 1
        else:
            self.failed += 1

    def line(self) -> str:
        detail = " ".join(f"{k}:{v}" for k, v in sorted(self.counts.items()))
        return (
            f"  {self.name}: answered {self.answered}, refused {self.refused}, failed "
            f"{self.failed}  ({detail})"
        )


def _png(size: tuple[int, int], colour: tuple[int, int, int]) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


def overload(server: Served, levels: list[int], seconds: float) -> list[Tally]:
    image, content_type = default_image()
    client = LoadClient(server.url, image, content_type, {}, {}, timeout_s=120)
    tallies = []
    for concurrency in levels:
        tally = Tally(f"overload c={concurrency}", {503})
        for _, status in asyncio.run(_closed_loop(client, concurrency, seconds)):
            tally.add(status)
        print(tally.line(), flush=True)
        tallies.append(tally)
    impatient = LoadClient(server.url, image, content_type, {}, {}, timeout_s=0.3)
    gave_up = {"ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout"}
    tally = Tally("impatient c=32 (0.3 s client timeout)", {503, *gave_up})
    for _, status in asyncio.run(_closed_loop(impatient, 32, seconds)):
        tally.add(status)
    print(tally.line(), flush=True)
    tallies.append(tally)
    after = [t * 1000 for t, s in asyncio.run(_closed_loop(client, 1, 5)) if s == 200]
    print(f"  after the overload: single requests p50 {percentile(after, 50):.0f} ms", flush=True)
    return tallies


async def _closed_loop(client: LoadClient, concurrency: int, seconds: float) -> list:
    async with client.client(concurrency) as http:
        return await client.closed_loop(http, concurrency, seconds)


def slow_clients(server: Served, connections: int, header_timeout_s: float) -> Tally:
    tally = Tally(f"normal requests beside {connections} slow connections", set())
    image, content_type = default_image()
    client = LoadClient(server.url, image, content_type, {}, {}, timeout_s=60)
    slow: list[socket.socket] = []
    closed = 0
    try:
        for _ in range(connections):
            sock = socket.create_connection((HOST, server.port), timeout=10)
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\n".encode())
            slow.append(sock)
        for _, status in asyncio.run(_closed_loop(client, 1, header_timeout_s + 2)):
            tally.add(status)
        for sock in slow:
            sock.settimeout(5)
            with contextlib.suppress(OSError):
                first = sock.recv(64)
                closed += first.startswith(b"HTTP/1.1 408") or first == b""
    finally:
        for sock in slow:
            sock.close()
    print(tally.line(), flush=True)
    print(f"  slow connections closed by the server: {closed} of {connections}", flush=True)
    tally.failed += connections - closed
    return tally


def oversized(server: Served, max_queue: int) -> Tally:
    tally = Tally("oversized requests", {413, 431, 503}, answers=False)
    rss_before = server.rss_mb()
    with httpx.Client(base_url=server.url, timeout=120, trust_env=False) as http:
        with contextlib.suppress(httpx.HTTPError):
            r = http.get("/healthz", headers={"X-Big": "a" * (1 << 20)})
            tally.add(r.status_code)
        huge = b"\x00" * (64 << 20)
        r = http.post("/predict", content=huge, headers={"Content-Type": "image/png"})
        tally.add(r.status_code)
        bomb = big_png(20000, 20000)
        r = http.post("/predict", content=bomb, headers={"Content-Type": "image/png"})
        tally.add(r.status_code)
        page = big_png(6000, 6000)  # as many as the queue takes, so that pixels decide
        files = [("images", (f"{i}.png", page, "image/png")) for i in range(min(64, max_queue))]
        r = http.post("/predict/batch", files=files)
        tally.add(r.status_code)
    print(tally.line(), flush=True)
    print(f"  RSS {rss_before:.0f} MB before, {server.rss_mb():.0f} MB after", flush=True)
    return tally


def hostile_bodies(server: Served, model: str, limit: int, copies: int) -> Tally:
    """:func:`maskrt.bench.body_attacks.body_attacks`, each under normal load; then trickled
    bodies, a forwarded address and a hostile ``Host``. An attack answered outside the contract,
    or a normal request not answered, is a failure; timings and RSS are reported against their
    goals."""
    tally = Tally("hostile bodies", set(), answers=False)
    image, content_type = default_image()
    normal = LoadClient(server.url, image, content_type, {}, {}, timeout_s=120)
    baseline = asyncio.run(
        body_attacks.under_load(server.url, None, normal, server.rss_mb, 0, min_seconds=10)
    )
    print(baseline.line("baseline (normal load, no attack)"), flush=True)
    high_water = baseline.rss_peak_mb
    for attack in body_attacks.body_attacks(model, limit):
        outcome = asyncio.run(
            body_attacks.under_load(
                server.url, attack, normal, server.rss_mb, copies, high_water_mb=high_water
            )
        )
        high_water = max(high_water, outcome.rss_peak_mb)
        print(outcome.line(attack.name, baseline), flush=True)
        tally.refused += sum(s in attack.expect for s in outcome.statuses)
        tally.failed += sum(s not in attack.expect for s in outcome.statuses)
        tally.failed += sum(s != 200 for s in outcome.normal)
    path = f"/v2/models/{model}/infer"
    timed_out, closed = body_attacks.trickle(HOST, server.port, path, 32, 60)
    print(f"  32 bodies trickled at 1 B/s: 408 for {timed_out}, closed {closed}", flush=True)
    tally.refused += closed
    tally.failed += 32 - closed
    believed = body_attacks.forwarded_for_believed(server.url, server.log_path)
    print(f"  X-Forwarded-For from an unconfigured peer: {'BELIEVED' if believed else 'ignored'}")
    status, reflected = body_attacks.host_reflected(server.url)
    shown = "REFLECTED" if reflected else "not reflected"
    print(f"  GET /predict/ with a hostile Host: {status}, {shown}", flush=True)
    tally.failed += believed + reflected
    print(tally.line(), flush=True)
    return tally


def soak(server: Served, minutes: float, concurrency: int) -> Tally:
    jpeg, _ = default_image()
    images = [
        (jpeg, "image/jpeg"),
        (_png((640, 480), (30, 90, 160)), "image/png"),
        (_png((1, 1), (255, 0, 0)), "image/png"),
        (_png((1920, 1080), (200, 200, 200)), "image/png"),
    ]
    clients = [LoadClient(server.url, d, t, {}, {}, timeout_s=120) for d, t in images]
    tally = Tally(f"soak c={concurrency}", set())
    print("  minute  answered  failed  p50 ms  p95 ms  RSS MB  open files", flush=True)
    rows = []

    async def one_minute(seconds: float) -> list:
        deadline = time.perf_counter() + seconds
        samples: list = []

        async def worker(i: int, http: httpx.AsyncClient) -> None:
            n = i
            while time.perf_counter() < deadline:
                samples.append(await clients[n % len(clients)].one(http))
                n += 1

        async with clients[0].client(concurrency) as http:
            await asyncio.gather(*(worker(i, http) for i in range(concurrency)))
        return samples

    total_s = minutes * 60
    minute = 0
    while total_s > 0 and server.proc.poll() is None:
        minute += 1
        samples = asyncio.run(one_minute(min(60.0, total_s)))
        total_s -= 60
        ok = [t * 1000 for t, s in samples if s == 200]
        failed = sum(s != 200 for _, s in samples)
        for _, status in samples:
            tally.add(status)
        row = (minute, len(ok), failed, server.rss_mb(), server.open_files())
        rows.append(row)
        print(
            f"  {minute:>6} {len(ok):>9} {failed:>7} {percentile(ok, 50):>7.0f} "
            f"{percentile(ok, 95):>7.0f} {row[3]:>7.0f} {row[4]:>11}",
            flush=True,
        )
    if rows:
        first, last = rows[0], rows[-1]
        print(
            f"  trend: RSS {first[3]:.0f} -> {last[3]:.0f} MB "
            f"({(last[3] - first[3]) / first[3] * 100:+.2f} %), open files {first[4]} -> "
            f"{last[4]}",
            flush=True,
        )
    print(tally.line(), flush=True)
    return tally


class Beside:
    """Normal traffic beside an attack, in a thread of its own: a client sending the default image
    in a closed loop and a ``/healthz`` probe every 50 ms; the server's RSS before and after."""

    def __init__(self, server: Served) -> None:
        self.server = server
        self.normal: list[int | str] = []
        self.healthz_ms: list[float] = []
        self.healthz_failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.rss_before = self.rss_after = float("nan")

    def __enter__(self) -> Beside:
        self.rss_before = self.server.rss_mb()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(120)
        self.rss_after = self.server.rss_mb()

    async def _run(self) -> None:
        image, content_type = default_image()
        client = LoadClient(self.server.url, image, content_type, {}, {}, timeout_s=60)
        async with client.client(2) as http:

            async def normal() -> None:
                while not self._stop.is_set():
                    self.normal.append((await client.one(http))[1])

            async def probe() -> None:
                while not self._stop.is_set():
                    start = time.perf_counter()
                    try:
                        ok = (await http.get("/healthz")).status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    if ok:
                        self.healthz_ms.append((time.perf_counter() - start) * 1000)
                    else:
                        self.healthz_failed += 1
                    await asyncio.sleep(0.05)

            await asyncio.gather(normal(), probe())

    def report(self, tally: Tally) -> str:
        """Counts the normal requests (answered or failed) and failed probes into ``tally``; the
        line that says how they fared, and whether the goals were met."""
        p99 = percentile(self.healthz_ms, 99)
        growth = self.rss_after - self.rss_before
        answered = sum(s == 200 for s in self.normal)
        tally.answered += answered
        tally.failed += len(self.normal) - answered + self.healthz_failed
        met = answered == len(self.normal) and not self.healthz_failed and p99 < 100
        met = met and growth < 64
        return (
            f"    beside it: normal requests {answered}/{len(self.normal)} answered, /healthz p99 "
            f"{p99:.0f} ms ({len(self.healthz_ms)} probes, {self.healthz_failed} failed), RSS "
            f"{growth:+.0f} MB; goals {'met' if met else 'MISSED'}"
        )


# paths whose decoded form holds what must not reach a log raw: a line break that would forge a
# line, terminal escapes, line and paragraph separators, bidi overrides, C1 controls, NUL
HOSTILE_PATHS = (
    "/a%0a2026-01-01%2000:00:00,000%20ERROR%20maskrt.server%20FORGED%20admin%20login",
    "/b%0d%0a{%22level%22:%22error%22,%22message%22:%22FORGED%22}",
    "/c%1b[2J%1b[31mred",
    "/d%e2%80%a8e%e2%80%a9f",
    "/g%e2%80%aeevil%e2%81%a6",
    "/h%c2%85i%c2%9bj%7f",
    "/k%5cn%00",
)


def forged_logs(server: Served, rounds: int = 100) -> Tally:
    """Each of ``HOSTILE_PATHS`` ``rounds`` times; then the log written meanwhile is read for raw
    characters that are not printable and lines that are not one JSON record."""
    tally = Tally("forged log lines", {404}, answers=False)
    start = server.log_path.stat().st_size
    with Beside(server) as beside, httpx.Client(base_url=server.url, trust_env=False) as http:
        for _ in range(rounds):
            for path in HOSTILE_PATHS:
                try:
                    tally.add(http.get(path).status_code)
                except httpx.HTTPError as exc:
                    tally.add(type(exc).__name__)
    with server.log_path.open(encoding="utf-8", errors="replace") as log:
        log.seek(start)
        lines = log.read().split("\n")[:-1]  # only a real newline ends a record; not the last
    raw = sum(not c.isprintable() for line in lines for c in line)
    not_json = 0
    for line in filter(None, lines):
        try:
            json.loads(line)
        except ValueError:
            not_json += 1
    tally.failed += raw + not_json
    beside_line = beside.report(tally)
    print(tally.line(), flush=True)
    print(
        f"    raw control, line or bidi characters in the log: {raw}; lines that are not one "
        f"JSON record: {not_json}",
        flush=True,
    )
    print(beside_line, flush=True)
    return tally


@dataclass(frozen=True)
class Answer:
    """One HTTP response read off a socket; ``headers`` by lower-case name."""

    status: int
    headers: dict[str, str]
    body: bytes


def read_responses(sock: socket.socket, count: int, timeout: float = 60) -> list[Answer]:
    """``count`` responses (Content-Length framed) read in order from ``sock``: the answers to
    requests pipelined on one connection, none of one's bytes lost to the next."""
    sock.settimeout(timeout)
    answers: list[Answer] = []
    with sock.makefile("rb") as stream:
        for _ in range(count):
            status_line = stream.readline()
            if not status_line:
                raise ConnectionError(f"connection closed after {len(answers)} responses")
            headers = {}
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            body = stream.read(int(headers.get("content-length", 0)))
            answers.append(Answer(int(status_line.split(b" ", 2)[1]), headers, body))
    return answers


def pipelined_refusals(server: Served, connections: int = 40) -> Tally:
    """On each connection, in one write, ``POST /predict`` then a request refused at connection
    level (a head over 64 KiB, or a malformed request line): the image's answer must come first,
    then the refusal, then the close."""
    tally = Tally(f"pipelined refusals ({connections} connections)", {503})
    image, content_type = default_image()
    request = httpx.Request(
        "POST", f"{server.url}/predict", files={"image": ("a", image, content_type)}
    )
    head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items())
    first = f"POST /predict HTTP/1.1\r\n{head}\r\n".encode() + request.read()
    refused = [
        f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'a' * 65536}\r\n\r\n".encode(),
        b"GARBAGE\r\n\r\n",
    ]
    out_of_order = 0
    with Beside(server) as beside:
        for i in range(connections):
            with socket.create_connection((HOST, server.port), timeout=60) as sock:
                try:
                    sock.sendall(first + refused[i % 2])
                    answers = read_responses(sock, 2)
                except OSError as exc:
                    tally.add(type(exc).__name__)
                    out_of_order += 1
                    continue
            tally.add(answers[0].status)
            if answers[1].status != (431, 400)[i % 2]:
                out_of_order += 1
    tally.failed += out_of_order
    beside_line = beside.report(tally)
    print(tally.line(), flush=True)
    print(f"    refusals out of order or lost: {out_of_order}", flush=True)
    print(beside_line, flush=True)
    return tally


def metrics_port(server: Served, port: int, connections: int, header_timeout_s: float) -> Tally:
    """``connections`` idle sockets to ``METRICS_PORT``, then a scrape; the server's threads before
    and while they are held; a connection that never finishes its headers must get 408."""
    tally = Tally(f"metrics port ({connections} idle connections)", {408}, answers=True)
    threads_before = server.threads()
    idle: list[socket.socket] = []
    with Beside(server) as beside:
        try:
            for _ in range(connections):
                idle.append(socket.create_connection((HOST, port), timeout=10))
            with socket.create_connection((HOST, port), timeout=30) as sock:
                sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                tally.add(read_responses(sock, 1)[0].status)
            threads_held = server.threads()
            with socket.create_connection((HOST, port), timeout=header_timeout_s + 10) as slow:
                slow.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n".encode())
                try:
                    tally.add(read_responses(slow, 1)[0].status)
                except OSError as exc:
                    tally.add(type(exc).__name__)
        finally:
            for sock in idle:
                sock.close()
    more = threads_held - threads_before
    tally.failed += more >= 10
    beside_line = beside.report(tally)
    print(tally.line(), flush=True)
    print(f"    threads {threads_before:.0f} before, {threads_held:.0f} while held", flush=True)
    print(beside_line, flush=True)
    return tally


def page_headers(server: Served) -> Tally:
    """The security headers of the page (wherever served), the docs and an API answer: nosniff,
    frame-ancestors 'none', no inline script allowed but by hash."""
    tally = Tally("page and docs headers", set(), answers=True)
    weak = []
    with httpx.Client(base_url=server.url, trust_env=False) as http:
        for path in ("/", "/static/index.html", "/docs", "/redoc", "/healthz"):
            r = http.get(path)
            tally.add(r.status_code)
            policy = {
                d.split()[0]: d.split()[1:]
                for d in r.headers.get("content-security-policy", "").split(";")
                if d.strip()
            }
            if (
                r.headers.get("x-content-type-options") != "nosniff"
                or policy.get("frame-ancestors") != ["'none'"]
                or "'unsafe-inline'" in policy.get("script-src", ["'unsafe-inline'"])
            ):
                weak.append(path)
    tally.failed += len(weak)
    print(tally.line(), flush=True)
    print(f"    without nosniff, frame-ancestors 'none' or a script policy: {weak}", flush=True)
    return tally


def error_lines(log_path: Path) -> list[str]:
    """Lines of a JSON server log at level error or above, and any line that is not JSON (a
    traceback printed outside logging)."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        try:
            level = json.loads(line).get("level")
        except ValueError:
            level = "not json"
        if level not in ("debug", "info", "warning"):
            out.append(line)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="maskrt bench resilience",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--overload-concurrency", default="64,256", help="comma-separated levels")
    p.add_argument("--overload-seconds", type=float, default=20.0, help="seconds per level")
    p.add_argument("--max-queue", type=int, default=8, help="the server's MAX_QUEUE")
    p.add_argument("--slow-connections", type=int, default=200, help="slow-header connections")
    p.add_argument("--header-timeout-s", type=float, default=5.0, help="the server's")
    p.add_argument("--max-upload-bytes", type=int, default=20 << 20, help="the server's")
    p.add_argument("--attack-copies", type=int, default=4, help="each hostile body at once")
    p.add_argument("--soak-minutes", type=float, default=20.0, help="length of the soak")
    p.add_argument("--soak-concurrency", type=int, default=4, help="soak clients")
    p.add_argument("--log", help="server log file (default: a temporary file, printed)")
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="-- flags for maskrt serve")
    args = p.parse_args(argv)
    serve_args = [a for a in args.serve_args if a != "--"]
    log_path = Path(args.log or tempfile.mkstemp(prefix="maskrt-resilience-", suffix=".log")[1])
    metrics = free_port()
    server = Served(
        [
            "--max-queue",
            str(args.max_queue),
            "--header-timeout-s",
            str(args.header_timeout_s),
            "--max-upload-bytes",
            str(args.max_upload_bytes),
            "--log-format",
            "json",
            "--metrics-port",
            str(metrics),
            *serve_args,
        ],
        log_path,
    )
    print(f"server log: {log_path}", flush=True)
    tallies: list[Tally] = []
    try:
        model = wait_ready(server.url, {}, 600)
        print(
            f"server {server.url} (pid {server.proc.pid}): {model['name']} on "
            f"{model['backend']}/{model['device']}, max batch {model['max_batch']}, max queue "
            f"{args.max_queue}; RSS {server.rss_mb():.0f} MB, open files {server.open_files()}",
            flush=True,
        )
        levels = [int(c) for c in args.overload_concurrency.split(",") if c.strip()]
        print("overload", flush=True)
        tallies += overload(server, levels, args.overload_seconds)
        print("slow clients", flush=True)
        tallies.append(slow_clients(server, args.slow_connections, args.header_timeout_s))
        print("oversized requests", flush=True)
        tallies.append(oversized(server, args.max_queue))
        print("hostile bodies", flush=True)
        tallies.append(
            hostile_bodies(server, model["name"], args.max_upload_bytes, args.attack_copies)
        )
        print(f"soak ({args.soak_minutes:g} min)", flush=True)
        tallies.append(soak(server, args.soak_minutes, args.soak_concurrency))
        print("forged logs, pipelining, the metrics port, the page", flush=True)
        tallies.append(forged_logs(server))
        tallies.append(pipelined_refusals(server))
        tallies.append(metrics_port(server, metrics, args.slow_connections, args.header_timeout_s))
        tallies.append(page_headers(server))
    finally:
        alive = server.proc.poll() is None
        code = server.stop()
    failed = sum(t.failed for t in tallies)
    errors = error_lines(log_path)
    print(f"server log: {len(errors)} error lines", flush=True)
    for line in errors[:5]:
        print(f"  {line[:300]}", flush=True)
    print(
        f"total: answered {sum(t.answered for t in tallies)}, refused "
        f"{sum(t.refused for t in tallies)}, failed {failed}; server "
        f"{'alive until stopped' if alive else 'DIED'}, exit {code}",
        flush=True,
    )
    return 0 if failed == 0 and not errors and alive and code == 0 else 1
