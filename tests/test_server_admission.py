"""Admission by decoded size, against a real ``maskrt serve``: a request whose images add up to too
many pixels is a 413 before anything is decoded (a few kB of PNG can be gigabytes decoded), and
one that would take the server past its in-flight pixel budget is a 503 with ``Retry-After``."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from server_harness import big_png, metric, start_server, wait_for

MAX_REQUEST_PIXELS = 64_000_000
MAX_INFLIGHT_PIXELS = 90_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(
        tmp_path_factory,
        "admission",
        {
            "max_request_pixels": MAX_REQUEST_PIXELS,
            "max_inflight_pixels": MAX_INFLIGHT_PIXELS,
            "request_timeout_s": 120,
        },
    )
    yield server
    server.stop()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def batch(*sizes: tuple[int, int]) -> list:
    return [("images", (f"{i}.png", big_png(w, h), "image/png")) for i, (w, h) in enumerate(sizes)]


def test_64_huge_pngs_are_refused_before_decoding(server):
    files = batch(*[(6000, 6000)] * 64)  # 2.3 gigapixels, ~7 GB decoded; ~300 kB sent
    before = rss_bytes(server.proc.pid)
    with server.client(timeout=120) as c:
        r = c.post("/predict/batch", files=files)
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "too_many_pixels"
        assert c.get("/readyz").status_code == 200
    assert rss_bytes(server.proc.pid) - before < 256 * 1024 * 1024


def test_over_the_in_flight_budget_is_503_until_it_frees(server):
    first: dict = {}

    def send_first() -> None:  # 4 x 16 Mpx: holds 64 Mpx of the 90 Mpx budget while it runs
        with server.client(timeout=120) as c:
            first["response"] = c.post("/predict/batch", files=batch(*[(4000, 4000)] * 4))

    sender = threading.Thread(target=send_first)
    sender.start()
    try:
        wait_for(
            server,
            "the first request's pixels in flight",
            lambda m: metric(m, "maskrt_inflight_pixels") > 0,
            timeout=60,
        )
        with server.client(timeout=120) as c:
            r = c.post("/predict/batch", files=batch(*[(6000, 6000)]))  # 36 Mpx more: over
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "pixel_budget_full" and r.headers["retry-after"]
    finally:
        sender.join(180)
    assert first["response"].status_code == 200, first["response"].text
    with server.client(timeout=120) as c:  # the budget is free again
        assert c.post("/predict/batch", files=batch(*[(6000, 6000)])).status_code == 200
    assert metric(server.metrics(), "maskrt_inflight_pixels") == 0
