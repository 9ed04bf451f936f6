"""``METRICS_PORT`` against a real ``maskrt serve``: the port is served by a uvicorn server on the
main one's event loop, so idle connections hold no thread each (test_server_connections.py checks
its connection limits with the main port's), the exposition (maskrt's metric names, Prometheus'
content type) is unchanged, and SIGTERM stops both ports."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from server_harness import HOST, free_port, read_response, start_server

from maskrt.bench.resilience import error_lines

IDLE_CONNECTIONS = 300
METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory, "metrics-port", {"metrics_port": METRICS_PORT})
    yield server
    server.stop()


def connect() -> socket.socket:
    return socket.create_connection((HOST, METRICS_PORT), timeout=20)


def get(path: str) -> tuple[int, bytes]:
    with connect() as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
        return read_response(sock)


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads line")


def test_the_metrics_port_serves_the_exposition(server):
    with server.client() as c:
        r = c.get(f"http://{HOST}:{METRICS_PORT}/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain; version=")
        assert "maskrt_requests_total" in r.text and "process_resident_memory_bytes" in r.text
        assert c.get("/metrics").status_code == 404  # not on the public port
        other = c.get(f"http://{HOST}:{METRICS_PORT}/other")
        assert other.status_code == 404 and other.json()["error"]["code"] == "not_found"


def test_idle_connections_hold_no_thread(server):
    before = threads(server.proc.pid)
    idle = []
    try:
        for _ in range(IDLE_CONNECTIONS):
            idle.append(connect())
        # served in order of connection: once this is answered, every idle one was accepted
        status, body = get("/metrics")
        assert status == 200 and b"maskrt_requests_total" in body
        held = threads(server.proc.pid)
    finally:
        for sock in idle:
            sock.close()
    assert held - before < 10, f"{held - before} more threads with {IDLE_CONNECTIONS} idle sockets"


def test_sigterm_stops_both_ports(server):  # the last test of the module
    assert server.stop() == 0, server.log()
    with pytest.raises(ConnectionRefusedError):
        connect()
    assert error_lines(server.log_path) == []
