"""Connections under hostile traffic, against a real ``maskrt serve`` on 127.0.0.1: huge headers
get 431 without being parsed whole, malformed HTTP gets the JSON error format, connections that
never finish their headers are closed with 408, a connection cap answers 503, and the server raises
its open-file limit so that a few hundred slow connections do not starve normal clients; the same
holds on ``METRICS_PORT``, served by the same protocol. A refusal
on a pipelined connection comes after the answers to the requests before it, never in their place,
and nothing of it is logged as an error."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import (
    HOST,
    Server,
    free_port,
    multipart,
    png,
    raw_request,
    read_responses,
    shapes_image,
)
from tools import missing

from maskrt.bench.resilience import error_lines

SLOW_CONNECTIONS = 300
HEADER_TIMEOUT_S = 2
MAX_CONNECTIONS = 320
LOW_FILE_LIMIT = 256  # below SLOW_CONNECTIONS: the server must raise it to keep serving
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2 * MAX_CONNECTIONS:
        missing(
            f"the hard open-file limit ({hard}) is below {2 * MAX_CONNECTIONS}, too low for this "
            f"test: raise it (`ulimit -Hn {2 * MAX_CONNECTIONS}` as root)"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW_FILE_LIMIT, hard))  # inherited by the server
    try:
        server = Server(
            tmp_path_factory.mktemp("connections"),
            {
                "header_timeout_s": HEADER_TIMEOUT_S,
                "max_connections": MAX_CONNECTIONS,
                "metrics_port": METRICS_PORT,
            },
            "connections",
        )
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["main", "metrics"])
def port(request, server) -> int:
    """The connection limits hold on the main port and on the metrics port alike."""
    return server.port if request.param == "main" else METRICS_PORT


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=20)


def answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the answer on ``sock``, read until the server closes it."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    return int(lines[0].split(" ")[1]), headers, body


def error_code(body: bytes) -> str:
    return json.loads(body)["error"]["code"]


def healthy(server: Server) -> None:
    with server.client(timeout=20) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/predict", files={"image": ("a.png", png(shapes_image()), "image/png")})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("size", [64 * 1024, 8 * 1024 * 1024])
def test_huge_headers_get_431(server, port, size):
    with connect(port) as sock:
        head = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: ".encode()

        def send() -> None:
            with contextlib.suppress(OSError):  # the server stops reading at the limit
                sock.sendall(head + b"a" * size + b"\r\n\r\n")

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        status, headers, body = answer(sock)
        sender.join(20)
    assert status == 431 and error_code(body) == "headers_too_large"
    assert headers["content-type"] == "application/json" and headers["x-request-id"]
    assert headers["x-content-type-options"] == "nosniff"
    healthy(server)


def test_headers_under_the_limit_are_served(server):
    with server.client() as c:
        assert c.get("/healthz", headers={"X-Big": "a" * 15_000}).status_code == 200


@pytest.mark.parametrize(
    "request_bytes",
    [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: a\r\nbad header\r\n\r\n"],
    ids=["request-line", "header-line"],
)
def test_malformed_http_gets_a_json_400(port, request_bytes):
    with connect(port) as sock:
        sock.sendall(request_bytes)
        status, headers, body = answer(sock)
    assert status == 400 and error_code(body) == "invalid_http"
    assert headers["content-type"] == "application/json" and headers["x-request-id"]


def test_slow_headers_are_timed_out_and_normal_clients_served(server, port):
    slow = []
    try:
        for _ in range(SLOW_CONNECTIONS):
            sock = connect(port)
            sock.sendall(f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\n".encode())  # never ends
            slow.append(sock)
        healthy(server)  # beside them
        answers = [answer(sock) for sock in slow]  # each one closed after the header timeout
    finally:
        for sock in slow:
            sock.close()
    assert {(status, error_code(body)) for status, _, body in answers} == {(408, "header_timeout")}
    healthy(server)


def test_a_connection_that_sends_nothing_is_closed_without_an_answer(port):
    with connect(port) as sock:
        assert sock.recv(1024) == b""  # within HEADER_TIMEOUT_S; the socket timeout is 20 s


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[None]:
    """``count`` connections to ``port`` that send nothing, open while the block runs."""
    idle: list[socket.socket] = []
    try:
        for _ in range(count):
            idle.append(connect(port))
        yield
    finally:
        for sock in idle:
            sock.close()


def test_connections_over_the_cap_get_503(server, port):
    with idle_connections(port, MAX_CONNECTIONS), connect(port) as sock:
        sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        status, headers, body = answer(sock)
    assert status == 503 and error_code(body) == "too_many_connections"
    assert headers["retry-after"] == "1" and headers["x-request-id"]
    with server.client(timeout=20) as c:  # served again once the server has seen them close
        for _ in range(100):
            if c.get("/healthz").status_code == 200:
                break
            time.sleep(0.1)
    healthy(server)


HUGE_HEAD = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {'a' * 20_000}\r\n\r\n".encode()
BAD_CHUNKS = (
    f"POST /predict HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: image/png\r\n"
    "Transfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nZZ\r\n"
).encode()
HEALTHZ = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


@pytest.mark.parametrize(
    ("between", "refused", "want"),
    [
        (b"", HUGE_HEAD, (431, "headers_too_large")),
        (b"", b"GARBAGE\r\n\r\n", (400, "invalid_http")),
        (HEALTHZ, HUGE_HEAD, (431, "headers_too_large")),
        (HEALTHZ, BAD_CHUNKS, (400, "invalid_http")),
        (b"", HEALTHZ[:-2], (408, "header_timeout")),  # a head that never ends
    ],
    ids=["431", "invalid-request-line", "431-after-two", "invalid-chunked-body-after-two", "408"],
)
def test_a_pipelined_refusal_waits_for_the_answers_before_it(server, between, refused, want):
    """``POST /predict`` (still running when the rest arrives), maybe ``GET /healthz``, then a
    request refused at connection level, all in one write: every answer, in order, the refusal
    last, then the connection closed."""
    since = len(error_lines(server.log_path))
    body, ctype = multipart("image", "a.png", png(shapes_image()))
    expected = 2 + bool(between)
    with connect(server.port) as sock:
        sock.sendall(raw_request("/predict", body, ctype) + between + refused)
        answers = read_responses(sock, expected, timeout=20)
        assert sock.recv(1024) == b""  # closed after the refusal
    assert answers[0].status == 200, answers[0].body[:300]
    assert json.loads(answers[0].body)["detections"]
    if between:
        assert (answers[1].status, json.loads(answers[1].body)) == (200, {"status": "ok"})
    assert (answers[-1].status, error_code(answers[-1].body)) == want
    assert error_lines(server.log_path)[since:] == []
    healthy(server)


def test_a_malformed_chunked_body_gets_a_json_400(server):
    since = len(error_lines(server.log_path))
    with connect(server.port) as sock:
        sock.sendall(BAD_CHUNKS)
        status, _, body = answer(sock)
    assert status == 400 and error_code(body) == "invalid_http"
    assert error_lines(server.log_path)[since:] == []
    healthy(server)


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no Threads line in /proc/{pid}/status")


def test_the_metrics_port_serves_the_exposition(server):
    with server.client() as c:
        r = c.get(f"http://{HOST}:{METRICS_PORT}/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=")
        assert "maskrt_requests_total" in r.text and "process_resident_memory_bytes" in r.text
        assert c.get("/metrics").status_code == 404  # not on the public port
        other = c.get(f"http://{HOST}:{METRICS_PORT}/other")
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"


def test_idle_metrics_connections_hold_no_thread(server):
    """The metrics port is served on the event loop: idle sockets cost no thread each (they held
    one each on prometheus_client's threading server)."""
    before = threads(server.proc.pid)
    with idle_connections(METRICS_PORT, SLOW_CONNECTIONS), connect(METRICS_PORT) as sock:
        # accepted in order: once this one is answered, every idle one was accepted
        sock.sendall(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        assert read_responses(sock, 1)[0].status == 200
        held = threads(server.proc.pid)
    assert held - before < 10, f"{held - before} more threads with {SLOW_CONNECTIONS} idle sockets"
