"""docs/server.md's error table is what the server does: every row is read from the document and
each of its codes is provoked over HTTP, expecting that row's status and code."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from server_harness import big_png, png, serving_checkpoint, shapes_image, start_server

ROOT = Path(__file__).resolve().parents[1]
KEY = "table-test-key"
HEADERS = {"X-API-Key": KEY}
MAX_UPLOAD = 400_000


def error_table() -> dict[str, int]:
    """code -> status, from the table under "## Errors" in docs/server.md."""
    rows = {}
    for line in (ROOT / "docs" / "server.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not re.fullmatch(r"\d{3}(, \d{3})*", cells[0]):
            continue
        statuses = [int(s) for s in cells[0].split(", ")]
        codes = re.findall(r"`([a-z_]+)`", cells[1])
        pairs = (
            zip(codes, statuses)
            if len(statuses) == len(codes)
            else ((c, statuses[0]) for c in codes)
        )
        rows.update(pairs)
    return rows


def _multipart(fields: dict[str, tuple] | list[tuple[str, tuple]]) -> dict:
    return {"files": fields, "headers": HEADERS}


# code -> (method, path, httpx request arguments)
IMAGE = png(shapes_image())
REQUESTS = {
    "empty_body": ("POST", "/predict", {"headers": HEADERS}),
    "empty_image": ("POST", "/predict", _multipart({"image": ("a.png", b"", "image/png")})),
    "invalid_image": (
        "POST",
        "/predict",
        {"content": b"not an image", "headers": {**HEADERS, "Content-Type": "image/png"}},
    ),
    "invalid_multipart": (
        "POST",
        "/predict",
        {
            "content": b"this is no multipart body",
            "headers": {**HEADERS, "Content-Type": "multipart/form-data; boundary=zzz"},
        },
    ),
    "unauthorized": ("POST", "/predict", {"files": {"image": ("a.png", IMAGE, "image/png")}}),
    "not_found": ("GET", "/nope", {}),
    "method_not_allowed": ("GET", "/predict", {}),
    "body_too_large": (
        "POST",
        "/predict",
        {"content": b"x" * (MAX_UPLOAD + 1), "headers": {**HEADERS, "Content-Type": "image/png"}},
    ),
    "image_too_large": (
        "POST",
        "/predict",
        {"content": big_png(1000, 1000), "headers": {**HEADERS, "Content-Type": "image/png"}},
    ),
    "too_many_images": (
        "POST",
        "/predict/batch",
        {"files": [("images", ("a.png", IMAGE, "image/png"))] * 3, "headers": HEADERS},
    ),
    "unsupported_media_type": (
        "POST",
        "/predict",
        {"content": b"hello", "headers": {**HEADERS, "Content-Type": "text/plain"}},
    ),
    "invalid_parameter": (
        "POST",
        "/predict?score_threshold=2",
        _multipart({"image": ("a.png", IMAGE, "image/png")}),
    ),
    "missing_field": (
        "POST",
        "/predict",
        {
            "content": b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\n1\r\n--b--\r\n',
            "headers": {**HEADERS, "Content-Type": "multipart/form-data; boundary=b"},
        },
    ),
    "invalid_field": (
        "POST",
        "/predict",
        _multipart([("image", ("a.png", IMAGE, "image/png"))] * 2),  # one image per /predict
    ),
}
# answers that depend on timing or a failing backend, provoked by the tests named here
ELSEWHERE = {
    "inference_failed": "test_server_app.py",
    "queue_full": "test_server_queue.py",
    "not_ready": "test_server_app.py",
    "shutting_down": "test_server_shutdown.py",
    "timeout": "test_server_timeout.py",
    # per-request pixel admission and the global budget of decoded pixels in flight
    "too_many_pixels": "test_server_admission.py",
    "pixel_budget_full": "test_server_admission.py",
    # answered by the connection guard before any route (server/protocol.py)
    "invalid_http": "test_server_connections.py",
    "header_timeout": "test_server_connections.py",
    "headers_too_large": "test_server_connections.py",
    "too_many_connections": "test_server_connections.py",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    settings = {
        "model": serving_checkpoint(tmp_path_factory.mktemp("model")),
        "api_keys": KEY,
        "max_upload_bytes": MAX_UPLOAD,
        "max_image_pixels": 300_000,
        "max_queue": 2,
    }
    server = start_server(tmp_path_factory, "errors", settings)
    yield server
    server.stop()


def test_every_code_of_the_table_is_covered_and_nothing_else():
    assert set(error_table()) == set(REQUESTS) | set(ELSEWHERE)
    for code, module in ELSEWHERE.items():
        assert (ROOT / "tests" / module).is_file(), code


@pytest.mark.parametrize("code", sorted(REQUESTS))
def test_the_server_answers_as_the_table_says(server, code):
    status = error_table()[code]
    method, path, kwargs = REQUESTS[code]
    with httpx.Client(base_url=server.url, trust_env=False, timeout=60) as client:
        answer = client.request(method, path, **kwargs)
    assert (answer.status_code, answer.json()["error"]["code"]) == (status, code), answer.text
