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
   minute to the last.

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
import time
import zlib
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


class Served:
    """``maskrt serve`` on a free loopback port, its log in a file; RSS and open files from
    ``/proc``."""

    def __init__(self, serve_args: list[str], log_path: Path) -> None:
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
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
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
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
