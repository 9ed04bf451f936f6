"""Answers of a real ``maskrt serve`` to what hostile or careless clients do, and what it tells its
operators: a multipart body cut before its closing boundary, clients that go away while their
images wait (info lines and status 499, no ERROR), metrics on a port of their own, and whether the
model's weights were checked."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from server_harness import (
    HOST,
    free_port,
    metric,
    multipart,
    png,
    raw_request,
    read_response,
    shapes_image,
    start_server,
)

METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory, "answers", {"metrics_port": METRICS_PORT})
    yield server
    server.stop()


def test_a_multipart_body_cut_before_its_end_is_400(server):
    body, content_type = multipart("image", "a.png", png(shapes_image()))
    cut = body[: body.rindex(b"\r\n--")]  # everything but the closing boundary
    with socket.create_connection((HOST, server.port), timeout=60) as sock:
        sock.sendall(raw_request("/predict", cut, content_type))
        status, answer = read_response(sock)
    assert status == 400 and json.loads(answer)["error"]["code"] == "invalid_multipart"


def test_clients_that_go_away_are_info_lines_and_499(server):
    files = [("images", (f"{i}.png", png(shapes_image(i)), "image/png")) for i in range(8)]
    request = httpx.Request("POST", f"{server.url}/predict/batch", files=files)
    body, content_type = request.read(), request.headers["content-type"]
    for _ in range(4):  # each one sends its images and leaves while they wait for inference
        with socket.create_connection((HOST, server.port), timeout=60) as sock:
            sock.sendall(raw_request("/predict/batch", body, content_type))
    with server.client() as c:  # served as usual afterwards
        r = c.post("/predict", files={"image": ("a.png", png(shapes_image()), "image/png")})
        assert r.status_code == 200
    deadline = time.monotonic() + 30
    while (
        metric(server.metrics(), "maskrt_requests_total", endpoint="/predict/batch", status="499")
        < 4
    ):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    lines = [json.loads(line) for line in server.log(10**7).splitlines() if line.startswith("{")]
    assert not [line for line in lines if line["level"] in ("error", "critical")], server.log()
    assert "never retrieved" not in server.log(10**7)
    gone = [line for line in lines if line.get("status") == 499]
    assert len(gone) >= 4 and {line["level"] for line in gone} == {"info"}


def test_metrics_on_their_own_port(server):
    with server.client() as c:
        r = c.get("/metrics")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = httpx.get(f"http://{HOST}:{METRICS_PORT}/metrics", trust_env=False, timeout=10)
    assert r.status_code == 200 and "maskrt_requests_total" in r.text


def test_model_info_says_the_weights_were_verified(server):
    with server.client() as c:
        info = c.get("/v1/model").json()
    assert info["weights_verified"] is True  # the bundled checkpoint carries its digest
