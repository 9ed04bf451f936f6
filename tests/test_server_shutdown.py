"""SIGTERM to a real ``maskrt serve`` with requests in flight: it stops accepting connections,
answers every request it already has (queued ones and one still uploading), and exits 0."""

from __future__ import annotations

import concurrent.futures
import signal
import socket
import time

import pytest
from server_harness import (
    HOST,
    metric,
    multipart,
    png,
    read_response,
    send_predict,
    shapes_image,
    start_server,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
]


def test_sigterm_loses_no_request(tmp_path_factory, checkpoint):
    server = start_server(
        tmp_path_factory,
        "shutdown",
        {
            "model": checkpoint,
            "backend": "torch",
            "max_batch": 8,
            "max_queue": 64,
            "max_delay_ms": 10000,
            "request_timeout_s": 60,
        },
    )
    try:
        body, ctype = multipart("image", "x.png", png(shapes_image(0)))
        # an upload in progress keeps the worker waiting, so the others stay queued
        slow = send_predict(server, body, ctype, send_body=len(body) // 2)

        images = [png(shapes_image(i)) for i in range(6)]

        def one(data: bytes):
            with server.client() as c:
                r = c.post("/predict", files={"image": ("x.png", data, "image/png")})
                return r.status_code, len(r.json().get("detections", []))

        pool = concurrent.futures.ThreadPoolExecutor(6)
        futures = [pool.submit(one, d) for d in images]
        wait_for(
            server, "6 images queued", lambda m: metric(m, "maskrt_queue_depth") >= 6, timeout=30
        )

        server.proc.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.proc.poll() is None  # still draining
        with pytest.raises(OSError):  # no new connections
            socket.create_connection((HOST, server.port), timeout=2).close()

        slow.sendall(body[len(body) // 2 :])
        status, answer = read_response(slow)
        slow.close()
        assert status == 200, answer[:300]
        results = [f.result(timeout=60) for f in futures]
        pool.shutdown()
        assert [s for s, _ in results] == [200] * 6
        assert server.proc.wait(60) == 0
        log = server.log(tail=10**6)
        assert "draining" in log and "stopped" in log
    finally:
        server.stop(signal.SIGKILL)
