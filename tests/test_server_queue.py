"""Queue limits of a real ``maskrt serve``: a full queue answers 503 with ``Retry-After``, a client
that disconnects while queued is dropped before inference (and frees its slot), and the server
carries on.

Settings: ``MAX_QUEUE=2``, ``MAX_BATCH=4``, ``MAX_DELAY_MS=10000``. A request whose body is still
being uploaded counts as "on its way", so the worker keeps waiting (up to 10 s) for it to join
the batch: that holds everything queued in the queue for as long as the test needs, without
relying on timing.
"""

from __future__ import annotations

import concurrent.futures

import pytest
from server_harness import (
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


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    srv = start_server(
        tmp_path_factory,
        "queue",
        {
            "model": checkpoint,
            "backend": "torch",
            "max_batch": 4,
            "max_queue": 2,
            "max_delay_ms": 10000,
            "request_timeout_s": 60,
            "min_body_rate": 0,  # uploads stalled on purpose are held for long
        },
    )
    yield srv
    srv.stop()


def test_queue_full_and_disconnect_while_queued(server):
    body, ctype = multipart("image", "x.png", png(shapes_image(0)))
    before = server.metrics()
    depth = lambda n: lambda m: metric(m, "maskrt_queue_depth") == n  # noqa: E731

    # S: half a body; the worker now waits for S's image before running what is queued
    slow = send_predict(server, body, ctype, send_body=len(body) // 2)
    wait_for(server, "S in flight", lambda m: metric(m, "maskrt_inflight_requests") == 1)

    a = send_predict(server, body, ctype)  # A: queued (1 of 2)
    wait_for(server, "A queued", depth(1))

    with server.client() as client:
        # B brings two images: they do not both fit -> 503, all or nothing
        files = [
            ("images", ("b1.png", png(shapes_image(1)), "image/png")),
            ("images", ("b2.png", png(shapes_image(2)), "image/png")),
        ]
        r = client.post("/predict/batch", files=files)
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1

        c = send_predict(server, body, ctype)  # C: queued (2 of 2)
        wait_for(server, "C queued", depth(2))

        r = client.post("/predict", files={"image": ("d.png", png(shapes_image(3)), "image/png")})
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["retry-after"]) >= 1

        # A goes away while queued: dropped at once, its slot free again
        a.close()
        m = wait_for(server, "A dropped", depth(1))
        assert metric(m, "maskrt_requests_total", endpoint="/predict", status="499") == 1
        assert metric(m, "maskrt_images_total") == metric(before, "maskrt_images_total")

        # S's upload completes: S and C run together; A never reached inference
        slow.sendall(body[len(body) // 2 :])
        s_status, s_body = read_response(slow)
        c_status, _ = read_response(c)
        assert (s_status, c_status) == (200, 200), s_body[:300]
        after = server.metrics()
        assert metric(after, "maskrt_images_total") - metric(before, "maskrt_images_total") == 2
        assert (
            metric(after, "maskrt_batch_size_count") - metric(before, "maskrt_batch_size_count")
        ) == 1
        assert metric(after, "maskrt_queue_depth") == 0
        assert client.get("/healthz").status_code == 200
    for s in (slow, c):
        s.close()
    assert "job dropped before inference: client disconnected" in server.log(tail=10**6)


def test_a_burst_overflows_the_queue(server):
    data = png(shapes_image(4))

    def one(_):
        with server.client() as c:
            r = c.post("/predict", files={"image": ("x.png", data, "image/png")})
            return r.status_code, r.headers.get("retry-after"), r.json()

    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    statuses = [s for s, _, _ in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(503) >= 1 and statuses.count(200) >= 2, statuses
    for status, retry, body in answers:
        if status == 503:
            assert body["error"]["code"] == "queue_full" and int(retry) >= 1
    with server.client() as c:  # still serving
        r = c.post("/predict", files={"image": ("x.png", data, "image/png")})
        assert r.status_code == 200 and c.get("/readyz").status_code == 200
    assert metric(server.metrics(), "maskrt_queue_depth") == 0
