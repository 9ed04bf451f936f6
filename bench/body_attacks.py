"""Hostile request bodies and connections of ``maskrt bench resilience`` (the phase "hostile
bodies"), each run against a server under normal load.

Each body attack is sent a few times at once while normal clients keep posting images to
``/predict`` and ``/healthz`` is polled; its report line has the attack's statuses, ``/healthz``'s
p99 and worst latency while it ran, how many normal requests were answered, and the growth of the
server's RSS: its peak during the attack over the highest RSS seen before it (the baseline, the
same load without an attack, sets the first mark, so that what inference itself allocates and
frees is not counted). The goals: ``/healthz`` p99 under 100 ms, every normal request answered,
RSS growth under 64 MB, and the contract's 4xx for every attack
(no ERROR line in the log, which the run checks at the end). Then: bodies trickled at a byte a
second (closed, with a 408, once they fall below ``MIN_BODY_RATE``), ``X-Forwarded-For`` from an
address not configured as a proxy (the access log must show the peer's address), and a slash
redirect with a hostile ``Host`` (nothing reflected).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from maskrt.bench.load import LoadClient, percentile

HEALTHZ_GOAL_MS = 100.0
RSS_GOAL_MB = 64.0
JSON = {b"content-type": b"application/json"}


@dataclass(frozen=True)
class Attack:
    """One hostile request: what to send, and the statuses the contract answers it with."""

    name: str
    path: str
    body: bytes
    headers: dict[bytes, bytes] = field(default_factory=dict)  # bytes: "²" is no ASCII
    expect: frozenset[int] = frozenset({400})


def body_attacks(model: str, limit: int) -> list[Attack]:
    """The attacks on ``/v2/models/{model}/infer`` of a server whose ``MAX_UPLOAD_BYTES`` is
    ``limit`` (the inflated bodies are made to fit under it, so the bounds, not the size limit,
    are what refuse them)."""
    infer = f"/v2/models/{model}/infer"
    gzipped = {**JSON, b"content-encoding": b"gzip"}
    request = json.dumps(
        {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}
    ).encode()
    lists = (limit - 64) // 3
    empty_lists = gzip.compress(b'{"inputs": [' + b"[]," * lists + b"[]]}", 9)
    keys = (limit - len(request) - 64) // 18  # "k000000000000":0,
    parameters = b",".join(b'"k%012d":0' % i for i in range(keys))
    unknown_keys = gzip.compress(request[:-1] + b', "parameters": {' + parameters + b"}}", 9)
    member = gzip.compress(request)
    return [
        Attack("JSON nested 950 deep", infer, b"[" * 950 + b"]" * 950, JSON),
        Attack(f"{lists} empty lists in {len(empty_lists)} B of gzip", infer, empty_lists, gzipped),
        Attack(
            f"{keys} unknown parameter keys in {len(unknown_keys)} B of gzip",
            infer,
            unknown_keys,
            gzipped,
        ),
        Attack(
            "Inference-Header-Content-Length: ²",
            infer,
            request,
            {b"inference-header-content-length": "²".encode()},
        ),
        Attack("a second gzip member", infer, member + gzip.compress(b"{}"), gzipped),
        Attack("bytes after the gzip stream", infer, member + b"trailing", gzipped),
        Attack("JSON without Content-Type (no preflight)", infer, request, {}, frozenset({415})),
        Attack(
            "JSON as text/plain", infer, request, {b"content-type": b"text/plain"}, frozenset({415})
        ),
        Attack(
            "JSON as a form",
            infer,
            request,
            {b"content-type": b"application/x-www-form-urlencoded"},
            frozenset({415}),
        ),
    ]


async def send(http: httpx.AsyncClient, attack: Attack) -> tuple[int | str, int]:
    """The status of one attack (or the transport error's name) and the answer's size."""
    try:
        r = await http.post(attack.path, content=attack.body, headers=attack.headers)
        return r.status_code, len(r.content)
    except httpx.HTTPError as exc:
        return type(exc).__name__, 0


@dataclass
class Outcome:
    """What one attack did to the server."""

    statuses: list[int | str]  # the attack's answers (a transport error by its name)
    answer_bytes: int
    healthz_ms: list[float]
    normal: list[int | str]
    rss_peak_mb: float
    rss_growth_mb: float  # the peak over the high-water mark before the attack

    def healthz_p99(self) -> float:
        return percentile(self.healthz_ms, 99)

    def line(self, name: str, baseline: Outcome | None = None) -> str:
        """The report line; with ``baseline`` (the same load without an attack), ``/healthz``'s
        p99 as a ratio of the baseline's too."""
        p99, worst = self.healthz_p99(), max(self.healthz_ms, default=float("nan"))
        answered = sum(s == 200 for s in self.normal)
        goals = (
            p99 < HEALTHZ_GOAL_MS
            and answered == len(self.normal)
            and self.rss_growth_mb < RSS_GOAL_MB
        )
        counts = collections.Counter(str(s) for s in self.statuses)
        statuses = " ".join(f"{k}:{v}" for k, v in sorted(counts.items())) or "no attack"
        ratio = "" if baseline is None else f", x{p99 / baseline.healthz_p99():.1f} the baseline"
        return (
            f"  {name}: {statuses} ({self.answer_bytes} B answered); /healthz p99 {p99:.0f} ms "
            f"(max {worst:.0f}{ratio}); normal {answered}/{len(self.normal)} answered; RSS "
            f"{self.rss_growth_mb:+.0f} MB over its high-water mark; "
            + ("the baseline" if baseline is None else f"goals {'met' if goals else 'MISSED'}")
        )


async def under_load(
    url: str,
    attack: Attack | None,
    normal: LoadClient,
    rss_mb: Callable[[], float],
    copies: int,
    high_water_mb: float = 0.0,
    min_seconds: float = 2.0,
) -> Outcome:
    """``copies`` of ``attack`` at once while two normal clients post images and ``/healthz`` is
    polled every 10 ms; at least ``min_seconds`` long. No attack: the baseline. RSS growth is
    counted over ``high_water_mb`` (or the RSS at the start, where higher)."""
    before = max(high_water_mb, rss_mb())
    peak = before
    healthz: list[float] = []
    done = asyncio.Event()

    async def poll(http: httpx.AsyncClient) -> None:
        nonlocal peak
        while not done.is_set():
            started = time.perf_counter()
            with contextlib.suppress(httpx.HTTPError):
                await http.get("/healthz")
                healthz.append((time.perf_counter() - started) * 1000)
            peak = max(peak, rss_mb())
            await asyncio.sleep(0.01)

    async def load(http: httpx.AsyncClient) -> list[int | str]:
        statuses = []
        while not done.is_set():
            statuses.append((await normal.one(http))[1])
        return statuses

    async def attacks(http: httpx.AsyncClient) -> list[tuple[int | str, int]]:
        started = time.perf_counter()
        sent = (
            []
            if attack is None
            else await asyncio.gather(*(send(http, attack) for _ in range(copies)))
        )
        await asyncio.sleep(max(0.0, min_seconds - (time.perf_counter() - started)))
        done.set()
        return sent

    timeout = httpx.Timeout(120)
    async with (
        httpx.AsyncClient(base_url=url, timeout=timeout, trust_env=False) as probe,
        httpx.AsyncClient(base_url=url, timeout=timeout, trust_env=False) as hostile,
        normal.client(2) as http,
    ):
        _, sent, *loads = await asyncio.gather(
            poll(probe), attacks(hostile), load(http), load(http)
        )
    return Outcome(
        [status for status, _ in sent],
        max((size for _, size in sent), default=0),
        healthz,
        [s for statuses_ in loads for s in statuses_],
        peak,
        peak - before,
    )


def trickle(host: str, port: int, path: str, connections: int, seconds: float) -> tuple[int, int]:
    """``connections`` JSON bodies sent a byte a second for at most ``seconds``: how many got a
    408 and how many the server closed (a 408 can be lost to the reset of a byte sent after
    the server closed; closed is what counts)."""
    socks = []
    for _ in range(connections):
        sock = socket.create_connection((host, port), timeout=10)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n"
        )
        sock.sendall(head.encode())
        sock.setblocking(False)
        socks.append(sock)
    answers: dict[socket.socket, bytes] = {}
    closed: set[socket.socket] = set()
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline and len(closed) < connections:
            for sock in socks:
                if sock in closed:
                    continue
                try:  # read first: an answer already sent is not lost to a reset by the send
                    data = sock.recv(4096)
                except BlockingIOError:
                    with contextlib.suppress(OSError):
                        sock.send(b" ")
                    continue
                except OSError:
                    closed.add(sock)
                    continue
                if data:
                    answers[sock] = answers.get(sock, b"") + data
                else:
                    closed.add(sock)
            time.sleep(1.0)
    finally:
        for sock in socks:
            sock.close()
    timed_out = sum(a.startswith(b"HTTP/1.1 408") for a in answers.values())
    return timed_out, len(closed)


def forwarded_for_believed(url: str, log_path: Path) -> bool:
    """Whether an ``X-Forwarded-For`` from this (unconfigured) peer reached the access log."""
    rid = uuid.uuid4().hex
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        http.get("/v1/model", headers={"X-Forwarded-For": "203.0.113.7", "X-Request-ID": rid})
    time.sleep(0.5)  # the access line is written after the answer
    for line in log_path.read_text(errors="replace").splitlines():
        if rid in line:
            with contextlib.suppress(ValueError):
                return json.loads(line).get("client") == "203.0.113.7"
    return False


def host_reflected(url: str) -> tuple[int, bool]:
    """The answer to ``GET /predict/`` with a hostile ``Host``, and whether it names that host."""
    evil = "attacker.example"
    with httpx.Client(base_url=url, timeout=30, trust_env=False) as http:
        r = http.get("/predict/", headers={"Host": evil}, follow_redirects=False)
    return r.status_code, evil in r.headers.get("location", "") or evil in r.text
