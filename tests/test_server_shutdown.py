"""SIGTERM to a real ``maskrt serve`` with requests in flight: it stops accepting connections,
answers every request it already has (queued ones and one still uploading), turns not ready
(``shutting_down``) for what it starts during the drain, and exits 0.

uvicorn closes idle connections at once on SIGTERM (a kept-alive client's next request finds the
port closed), so what the server starts during the drain is provoked by HTTP/1.1 pipelining: on one
connection a queued ``POST /predict``, then ``GET /readyz`` and another ``POST /predict`` that
uvicorn runs only once the first is answered. Nothing races: the batch cannot start while an upload
it waits for is unfinished (``MAX_DELAY_MS`` 60 s), and that upload is finished only after the log
shows uvicorn's shutdown under way."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import socket
import time
from dataclasses import dataclass

import pytest
from server_harness import (
    HOST,
    Answer,
    free_port,
    metric,
    multipart,
    png,
    raw_request,
    read_response,
    read_responses,
    send_predict,
    shapes_image,
    start_server,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
]
QUEUED = 6  # POST /predict from their own clients, queued behind the held batch
SHUTTING_DOWN = "Waiting for connections to close"  # uvicorn: listener and idle connections closed


@dataclass
class Drain:
    """What a client saw of one drain."""

    running_after_sigterm: bool
    new_connection_refused: bool
    uploading: tuple[int, bytes]  # the request still uploading at SIGTERM
    queued: list[int]  # statuses of the QUEUED requests
    pipelined: list[Answer]  # queued POST /predict, then GET /readyz and POST /predict
    exit_code: int
    log: str


@pytest.fixture(scope="module")
def drain(tmp_path_factory, checkpoint) -> Drain:
    server = start_server(
        tmp_path_factory,
        "shutdown",
        {
            "model": checkpoint,
            "backend": "torch",
            "max_batch": 8,
            "max_queue": 64,
            "max_delay_ms": 60000,
            "request_timeout_s": 60,
            "min_body_rate": 0,  # uploads stalled on purpose are held for long
            "metrics_port": free_port(),  # polled during the drain, stopped with the main port
        },
    )
    try:
        body, ctype = multipart("image", "x.png", png(shapes_image(0)))
        # an upload in progress keeps the worker waiting, so the others stay queued
        slow = send_predict(server, body, ctype, send_body=len(body) // 2)
        # its images are announced to the batcher once its route runs: only then can no batch form
        wait_for(server, "the upload", lambda m: metric(m, "maskrt_inflight_requests") == 1)
        pipelined = socket.create_connection((HOST, server.port), timeout=60)
        pipelined.sendall(
            raw_request("/predict", body, ctype)
            + f"GET /readyz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
            + raw_request("/predict", body, ctype)
        )

        def one(data: bytes) -> int:
            with server.client() as c:
                return c.post("/predict", files={"image": ("x.png", data, "image/png")}).status_code

        pool = concurrent.futures.ThreadPoolExecutor(QUEUED)
        futures = [pool.submit(one, png(shapes_image(i))) for i in range(QUEUED)]
        wait_for(
            server,
            f"{QUEUED + 1} images queued",
            lambda m: metric(m, "maskrt_queue_depth") >= QUEUED + 1,
            timeout=30,
        )

        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while SHUTTING_DOWN not in server.log(tail=10**6):
            assert time.monotonic() < deadline, f"no shutdown after SIGTERM:\n{server.log()}"
            time.sleep(0.05)
        running = server.proc.poll() is None
        try:
            socket.create_connection((HOST, server.port), timeout=2).close()
            refused = False
        except OSError:
            refused = True

        slow.sendall(body[len(body) // 2 :])
        uploading = read_response(slow)
        slow.close()
        answers = read_responses(pipelined, 3)
        pipelined.close()
        queued = [f.result(timeout=60) for f in futures]
        pool.shutdown()
        exit_code = server.proc.wait(60)
        return Drain(running, refused, uploading, queued, answers, exit_code, server.log(10**6))
    finally:
        server.stop(signal.SIGKILL)


def test_sigterm_loses_no_request(drain):
    assert drain.running_after_sigterm and drain.new_connection_refused
    status, answer = drain.uploading
    assert status == 200, answer[:300]
    assert drain.queued == [200] * QUEUED
    first = drain.pipelined[0]
    assert first.status == 200 and json.loads(first.body)["detections"], first.body[:300]
    assert drain.exit_code == 0
    assert "draining" in drain.log and "stopped" in drain.log


def assert_shutting_down(answer: Answer) -> None:
    assert answer.status == 503, answer.body[:300]
    assert json.loads(answer.body)["error"]["code"] == "shutting_down"
    assert int(answer.headers["retry-after"]) > 0


def test_readyz_is_shutting_down_during_the_drain(drain):
    """A probe the server answers after SIGTERM, on a connection opened before it."""
    assert_shutting_down(drain.pipelined[1])


def test_inference_started_during_the_drain_is_refused(drain):
    """What the server starts after SIGTERM goes elsewhere (503, ``Retry-After``); what it had
    already started is answered (the test above)."""
    assert_shutting_down(drain.pipelined[2])
