"""A real ``maskrt serve`` on 127.0.0.1: predictions equal to the deploy graph's own pasted masks,
dynamic batching under concurrency, every bad input a clear 4xx JSON error with the server healthy
afterwards, API keys, probes, model info, metrics, OpenAPI and structured logs.

One server for the whole module (torch backend, so that the reference below runs the very same
graph in this process, with the same number of torch threads: oneDNN's sums depend on it); API keys
on, a 2 MB upload limit.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import time

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from server_harness import (
    big_png,
    jpeg,
    metric,
    multipart,
    png,
    send_predict,
    shapes_image,
    start_server,
    wait_for,
)

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
UPLOAD_LIMIT = 2_000_000
THREADS = 2  # the server's and the reference's intra-op threads
pytestmark = [
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    srv = start_server(
        tmp_path_factory,
        "http",
        {
            "model": checkpoint,
            "backend": "torch",
            "inference_threads": THREADS,
            "max_batch": 8,
            "max_delay_ms": 50,
            "max_queue": 64,
            "max_upload_bytes": UPLOAD_LIMIT,
            "api_keys": KEY,
            "request_timeout_s": 60,
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client(headers=AUTH) as c:
        yield c


@pytest.fixture(scope="module")
def model_info(client):
    r = client.get("/v1/model")
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def reference(checkpoint, model_info):
    """The deploy graph in this process (same checkpoint, same device as the server) and
    torchvision's paste: what the server must answer."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from maskrt.model.checkpoint import load_checkpoint
    from maskrt.model.deploy import deploy_graph
    from maskrt.model.letterbox import boxes_to_original, fill_colour, letterbox_batch

    device = torch.device(model_info["device"])
    loaded = load_checkpoint(checkpoint)
    graph = deploy_graph(loaded).to(device)
    fill = fill_colour(loaded.config.image_mean)

    @torch.inference_mode()
    def predict(image: np.ndarray, score_threshold: float) -> list[dict]:
        threads = torch.get_num_threads()
        torch.set_num_threads(THREADS)
        try:
            return run(image, score_threshold)
        finally:
            torch.set_num_threads(threads)

    def run(image: np.ndarray, score_threshold: float) -> list[dict]:
        tensor = torch.from_numpy(image).permute(2, 0, 1).to(device)
        batch, (box,) = letterbox_batch([tensor], loaded.config.canvas, fill)
        out = graph(batch)
        n = int(out.num_detections[0])
        keep = out.scores[0, :n] >= score_threshold
        boxes = boxes_to_original(out.boxes[0, :n][keep].float(), box)
        masks = (
            paste_masks_in_image(
                out.masks[0, :n][keep][:, None].float(), boxes, (box.height, box.width)
            )[:, 0]
            > 0.5
        )
        return [
            {"box": b, "score": s, "class_id": c, "mask": m}
            for b, s, c, m in zip(
                boxes.cpu().tolist(),
                out.scores[0, :n][keep].cpu().tolist(),
                out.classes[0, :n][keep].cpu().tolist(),
                masks.cpu().numpy(),
            )
        ]

    return predict


def post_image(client, data: bytes, content_type: str = "image/png", params=None, **kwargs):
    return client.post(
        "/predict", files={"image": ("x", data, content_type)}, params=params, **kwargs
    )


def assert_error(r, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"] and "Traceback" not in r.text
    if code is not None:
        assert body["error"]["code"] == code, body
    return body


def assert_healthy(server):
    with server.client(headers=AUTH) as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        r = c.post("/predict", files={"image": ("x.png", png(shapes_image(0)), "image/png")})
        assert r.status_code == 200, r.text


# ---------------------------------------------------------------------------------------------
# Predictions


@pytest.mark.parametrize("index", [0, 1, 2])
def test_prediction_equals_the_deploy_graph(client, reference, index):
    image = shapes_image(index)
    threshold = 0.0  # every valid row of the graph: the most masks to compare
    r = post_image(client, png(image), params={"score_threshold": threshold})
    assert r.status_code == 200, r.text
    body = r.json()
    h, w = image.shape[:2]
    assert (body["width"], body["height"]) == (w, h)
    assert set(body["timings_ms"]) >= {"queue", "preprocess", "inference", "postprocess"}
    expected = reference(image, threshold)
    got = body["detections"]
    assert len(got) == len(expected) > 0
    # exactly: the same graph, the same batch of one and the same torch thread count give the same
    # float32 sums (0.0 difference in score and box over 72 detections of 12 images, measured)
    for g, e in zip(got, expected):
        assert g["class_id"] == e["class_id"]
        assert g["score"] == e["score"]
        assert g["box"] == e["box"]
        assert g["mask"]["size"] == [h, w]
        decoded = mask_utils.decode(
            {"size": g["mask"]["size"], "counts": g["mask"]["counts"].encode()}
        )
        np.testing.assert_array_equal(decoded.astype(bool), e["mask"])
        assert isinstance(g["label"], str)


def test_raw_body_equals_multipart(client):
    data = png(shapes_image(3))
    a = post_image(client, data, params={"score_threshold": 0.1})
    b = client.post(
        "/predict",
        content=data,
        headers={"Content-Type": "image/png"},
        params={"score_threshold": 0.1},
    )
    assert a.status_code == b.status_code == 200
    assert a.json()["detections"] == b.json()["detections"]


def test_parameters(client, model_info):
    data = png(shapes_image(4))
    full = post_image(client, data, params={"score_threshold": 0}).json()["detections"]
    assert len(full) >= 3
    two = post_image(client, data, params={"score_threshold": 0, "max_detections": 2}).json()
    assert two["detections"] == full[:2]
    boxes_only = post_image(client, data, params={"score_threshold": 0, "masks": "none"}).json()
    assert len(boxes_only["detections"]) == len(full)
    assert all("mask" not in d for d in boxes_only["detections"])
    cut = full[len(full) // 2]["score"]
    above = post_image(client, data, params={"score_threshold": cut}).json()["detections"]
    assert above == [d for d in full if d["score"] >= cut]
    # form fields work as well as query parameters
    r = client.post(
        "/predict",
        files={"image": ("x", data, "image/png")},
        data={"max_detections": "1", "score_threshold": "0"},
    )
    assert r.status_code == 200 and r.json()["detections"] == full[:1]
    assert {d["label"] for d in full} <= set(model_info["classes"][1:])


def test_default_score_threshold_is_the_setting(client):
    data = png(shapes_image(5))
    r = post_image(client, data).json()
    assert all(d["score"] >= 0.5 for d in r["detections"])


def test_batch_endpoint_in_order(client):
    images = [shapes_image(i) for i in (6, 7, 8)]
    files = [("images", (f"{i}.png", png(im), "image/png")) for i, im in enumerate(images)]
    r = client.post("/predict/batch", files=files, params={"score_threshold": 0.2})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["width"], x["height"]) for x in results] == [
        (im.shape[1], im.shape[0]) for im in images
    ]
    for im, res in zip(images, results):
        single = post_image(client, png(im), params={"score_threshold": 0.2}).json()
        assert len(res["detections"]) == len(single["detections"])
        for a, b in zip(res["detections"], single["detections"]):
            assert a["class_id"] == b["class_id"]
            np.testing.assert_allclose(a["box"], b["box"], atol=0.05)


def test_jpeg_and_exif_orientation(client):
    image = shapes_image(9)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: upright is rotated 90 degrees clockwise
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=92, exif=exif)
    r = post_image(client, buf.getvalue(), "image/jpeg")
    assert r.status_code == 200
    assert (r.json()["width"], r.json()["height"]) == (image.shape[0], image.shape[1])


def test_concurrent_requests_are_batched(server, client):
    images = [png(shapes_image(i)) for i in range(16)]
    before = server.metrics()

    def one(data: bytes) -> int:
        with server.client(headers=AUTH) as c:
            return c.post("/predict", files={"image": ("x.png", data, "image/png")}).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(one, images))
    after = server.metrics()
    assert statuses == [200] * 16
    batches = metric(after, "maskrt_batch_size_count") - metric(before, "maskrt_batch_size_count")
    images_in = metric(after, "maskrt_batch_size_sum") - metric(before, "maskrt_batch_size_sum")
    singles = metric(after, "maskrt_batch_size_bucket", le="1.0") - metric(
        before, "maskrt_batch_size_bucket", le="1.0"
    )
    assert images_in == 16
    assert batches < 16 and singles < batches, (batches, singles)  # some batches larger than 1
    assert metric(after, "maskrt_images_total") - metric(before, "maskrt_images_total") == 16


# ---------------------------------------------------------------------------------------------
# Bad inputs: a clear 4xx JSON error each, and the server healthy afterwards


def truncated_jpeg() -> bytes:
    data = jpeg(shapes_image(1))
    return data[: len(data) // 2]


BAD_UPLOADS = {
    "empty file": (b"", "image/png", 400, "empty_image"),
    "not an image": (
        b"this is not an image, only some text " * 10,
        "image/gif",
        400,
        "invalid_image",
    ),
    "text": (b"hello world", "text/plain", 400, "invalid_image"),
    "truncated jpeg": (truncated_jpeg(), "image/jpeg", 400, "invalid_image"),
    "20000x20000 png": (big_png(20000, 20000), "image/png", 413, "image_too_large"),
}


@pytest.mark.parametrize("name", list(BAD_UPLOADS))
def test_bad_uploads(server, client, name):
    data, ctype, status, code = BAD_UPLOADS[name]
    r = post_image(client, data, ctype)
    body = assert_error(r, status, code)
    assert "image" in body["error"]["message"]
    raw = client.post("/predict", content=data, headers={"Content-Type": "image/png"})
    assert raw.status_code == (400 if name == "empty file" else status)
    assert_healthy(server)


def test_one_pixel_image_is_valid(client):
    """A 1x1 image is a valid image: 200, width = height = 1, whatever the model finds."""
    r = post_image(
        client, png(Image.new("RGB", (1, 1), (200, 30, 30))), params={"score_threshold": 0}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["width"], body["height"]) == (1, 1)
    for d in body["detections"]:
        assert d["mask"]["size"] == [1, 1]
        assert all(0 <= v <= 1 for v in d["box"])


def test_empty_raw_body(server, client):
    r = client.post("/predict", content=b"", headers={"Content-Type": "image/jpeg"})
    assert_error(r, 400, "empty_body")
    assert_healthy(server)


def test_body_over_the_limit(server, client):
    blob = np.random.default_rng(0).integers(0, 256, UPLOAD_LIMIT + 500_000, np.uint8).tobytes()
    # declared by Content-Length: refused before the body is read
    assert_error(
        client.post("/predict", content=blob, headers={"Content-Type": "image/jpeg"}),
        413,
        "body_too_large",
    )
    # chunked (no Content-Length): counted while streaming

    def chunks():
        for i in range(0, len(blob), 65536):
            yield blob[i : i + 65536]

    r = client.post("/predict", content=chunks(), headers={"Content-Type": "image/jpeg"})
    assert "content-length" not in r.request.headers
    assert_error(r, 413, "body_too_large")
    assert r.headers["x-content-type-options"] == "nosniff"
    # multipart, too
    assert_error(post_image(client, blob, "image/jpeg"), 413, "body_too_large")
    assert_healthy(server)


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/json", "application/x-www-form-urlencoded", None]
)
def test_wrong_content_type(server, client, ctype):
    headers = {"Content-Type": ctype} if ctype else {}
    r = client.post("/predict", content=png(shapes_image(0)), headers=headers)
    assert ctype is not None or "content-type" not in r.request.headers
    body = assert_error(r, 415, "unsupported_media_type")
    assert "multipart/form-data" in body["error"]["message"]
    assert_healthy(server)


def test_batch_endpoint_wants_multipart(client):
    r = client.post(
        "/predict/batch", content=png(shapes_image(0)), headers={"Content-Type": "image/png"}
    )
    assert_error(r, 415, "unsupported_media_type")


@pytest.mark.parametrize(
    "params",
    [
        {"masks": "polygon"},
        {"score_threshold": "high"},
        {"score_threshold": "1.5"},
        {"score_threshold": "-0.1"},
        {"max_detections": "-1"},
        {"max_detections": "2.5"},
        {"scoreThreshold": "0.3"},  # unknown name
    ],
)
def test_bad_parameters(server, client, params):
    r = post_image(client, png(shapes_image(0)), params=params)
    body = assert_error(r, 422, "invalid_parameter")
    assert next(iter(params)) in body["error"]["message"]


def test_bad_form_parameter_and_repeats(client):
    data = png(shapes_image(0))
    r = client.post("/predict", files={"image": ("x", data, "image/png")}, data={"masks": "all"})
    assert_error(r, 422, "invalid_parameter")
    r = client.post(
        "/predict",
        files={"image": ("x", data, "image/png")},
        data={"masks": "rle"},
        params={"masks": "none"},
    )
    assert_error(r, 422, "invalid_parameter")


def test_missing_or_wrong_image_field(client):
    data = png(shapes_image(0))
    assert_error(client.post("/predict", files={"picture": ("x", data, "image/png")}), 422)
    assert_error(
        client.post(
            "/predict", data={"image": "not a file"}, files={"other": ("", b"", "text/plain")}
        ),
        422,
    )
    two = [("image", ("a", data, "image/png")), ("image", ("b", data, "image/png"))]
    assert_error(client.post("/predict", files=two), 422)


def test_client_gone_mid_upload(server):
    body, ctype = multipart("image", "x.png", png(shapes_image(0)))
    before = server.metrics()
    with send_predict(server, body, ctype, AUTH, send_body=len(body) // 2):
        time.sleep(0.3)
    m = wait_for(
        server,
        "a 499 for the client gone mid-upload",
        lambda m: (
            metric(m, "maskrt_requests_total", endpoint="/predict", status="499")
            > metric(before, "maskrt_requests_total", endpoint="/predict", status="499")
        ),
        timeout=10,
    )
    assert metric(m, "maskrt_inflight_requests") == 0
    assert "unhandled error" not in server.log(tail=10**6)
    assert_healthy(server)


def test_api_keys(server):
    data = png(shapes_image(0))
    with server.client() as anon:
        r = anon.post("/predict", files={"image": ("x", data, "image/png")})
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        assert_error(
            anon.post(
                "/predict",
                files={"image": ("x", data, "image/png")},
                headers={"Authorization": "Bearer wrong-key-000000"},
            ),
            401,
        )
        assert_error(anon.post("/predict/batch", files={"images": ("x", data, "image/png")}), 401)
        assert_error(anon.get("/v1/model"), 401)
        ok = anon.post(
            "/predict", files={"image": ("x", data, "image/png")}, headers={"X-API-Key": KEY}
        )
        assert ok.status_code == 200
        # probes, metrics and docs stay open
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert anon.get(path).status_code == 200, path
    assert_healthy(server)


def test_unknown_routes_and_methods(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/predict"), 405, "method_not_allowed")


# ---------------------------------------------------------------------------------------------
# Probes, model info, metrics, docs, logs


def test_probes_and_model_info(client, model_info, checkpoint):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    assert model_info["backend"] == "torch"
    assert model_info["classes"][0] == "__background__" and len(model_info["classes"]) >= 2
    assert model_info["max_batch"] == 8
    assert {"name", "version", "device", "canvas", "mask_size", "max_detections"} <= set(model_info)
    r = client.post("/predict", files={"image": ("x", png(shapes_image(0)), "image/png")}).json()
    assert r["model"] == {
        k: model_info[k] for k in ("name", "version", "model_version", "backend", "device")
    }


def test_metrics_exposition(server, client):
    client.post("/predict", files={"image": ("x", png(shapes_image(0)), "image/png")})
    client.post("/predict", content=b"hello", headers={"Content-Type": "text/plain"})
    text = client.get("/metrics").text
    for name in (
        "maskrt_request_duration_seconds_bucket",
        "maskrt_queue_wait_seconds_bucket",
        "maskrt_preprocess_duration_seconds_bucket",
        "maskrt_inference_duration_seconds_bucket",
        "maskrt_postprocess_duration_seconds_bucket",
        "maskrt_batch_size_bucket",
        "maskrt_requests_total",
        "maskrt_images_total",
        "maskrt_detections_total",
        "maskrt_queue_depth",
        "maskrt_inflight_requests",
        "maskrt_model_info",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ):
        assert name in text, name
    m = server.metrics()
    assert metric(m, "maskrt_requests_total", endpoint="/predict", status="200") > 0
    assert metric(m, "maskrt_requests_total", endpoint="/predict", status="415") > 0
    info = client.get("/v1/model").json()
    model = {"model": info["name"], "version": "1"}  # --model: version 1 of its model
    assert metric(m, "maskrt_requests_total", endpoint="/predict", status="200", **model) > 0
    assert metric(m, "maskrt_images_total", **model) > 0
    assert metric(m, "maskrt_requests_total", endpoint="/metrics", model="", version="") > 0
    assert (
        metric(
            m,
            "maskrt_model_info",
            backend="torch",
            device=info["device"],
            name=info["name"],
            version="1",
        )
        == 1
    )
    assert metric(m, "maskrt_inference_duration_seconds_count", backend="torch", **model) > 0


def test_openapi_has_the_real_schemas(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    for name in (
        "PredictResponse",
        "BatchPredictResponse",
        "Detection",
        "Mask",
        "ErrorResponse",
        "ModelInfoResponse",
    ):
        assert name in schemas, name
    post = spec["paths"]["/predict"]["post"]
    assert post["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/PredictResponse"
    )
    assert {"multipart/form-data", "image/*"} <= set(post["requestBody"]["content"])
    assert {p["name"] for p in post["parameters"]} == {
        "score_threshold",
        "max_detections",
        "masks",
        "model",
        "version",
    }
    assert "413" in post["responses"] and "504" in post["responses"]
    assert client.get("/docs").status_code == 200


def csp(response) -> dict[str, str]:
    """The Content-Security-Policy of ``response``, directive name -> sources."""
    policy = response.headers["content-security-policy"]
    return {d.split()[0]: " ".join(d.split()[1:]) for d in policy.split(";") if d.strip()}


@pytest.mark.parametrize("path", ["/", "/static/index.html"])
def test_the_page_has_a_strict_policy_wherever_it_is_served(client, path):
    r = client.get(path)
    assert r.status_code == 200 and b'id="key-box"' in r.content
    policy = csp(r)
    assert policy["default-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert policy["script-src"] == "'self'" and policy["style-src"] == "'self'"
    assert "unsafe" not in r.headers["content-security-policy"]
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path", ["/healthz", "/v1/model", "/static/app.js", "/openapi.json", "/nowhere"]
)
def test_every_answer_is_nosniff_and_unframed(client, path):
    r = client.get(path)
    assert r.headers["x-content-type-options"] == "nosniff"
    assert csp(r)["frame-ancestors"] == "'none'"


def test_swagger_ui_runs_only_its_own_inline_script(client):
    import base64
    import hashlib
    import re

    r = client.get("/docs")
    inline = re.findall(r"<script>(.*?)</script>", r.text, re.DOTALL)
    assert len(inline) == 1
    digest = base64.b64encode(hashlib.sha256(inline[0].encode()).digest()).decode()
    policy = csp(r)
    assert policy["script-src"] == f"'self' 'sha256-{digest}'"
    assert policy["style-src"] == "'self'" and policy["frame-ancestors"] == "'none'"
    assert "connect-src" in policy and policy["default-src"] == "'none'"


def test_responses_match_the_schema(client):
    from maskrt.server.schemas import BatchPredictResponse, ModelInfoResponse, PredictResponse

    data = png(shapes_image(2))
    PredictResponse.model_validate(post_image(client, data, params={"score_threshold": 0}).json())
    BatchPredictResponse.model_validate(
        client.post("/predict/batch", files=[("images", ("a", data, "image/png"))]).json()
    )
    ModelInfoResponse.model_validate(client.get("/v1/model").json())


def test_request_id_and_json_logs(server, client):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = post_image(client, b"not an image")
    rid = r.headers["x-request-id"]
    assert len(rid) >= 16
    bad = client.get("/healthz", headers={"X-Request-ID": "bad id\twith spaces"})
    assert bad.headers["x-request-id"] != "bad id\twith spaces"
    lines = [line for line in server.log(tail=10**7).splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [rec for rec in records if rec.get("request_id") == rid]
    assert access and access[-1]["status"] == 400 and access[-1]["path"] == "/predict"
    assert all({"ts", "level", "logger", "message"} <= set(rec) for rec in records)


def test_server_still_healthy_at_the_end(server):
    assert_healthy(server)
    m = server.metrics()
    assert metric(m, "maskrt_queue_depth") == 0 and metric(m, "maskrt_inflight_requests") == 0


# ---------------------------------------------------------------------------------------------
# The load generator against this server


def test_bench_load(server, checkpoint, tmp_path):
    import subprocess

    from server_harness import maskrt_command

    out = tmp_path / "bench.json"
    run = subprocess.run(
        [
            *maskrt_command(),
            "bench",
            "load",
            "--url",
            server.url,
            "--concurrency",
            "1,3",
            "--duration",
            "3",
            "--warmup",
            "0.5",
            "--api-key",
            KEY,
            "--direct-runs",
            "4",
            "--model",
            str(checkpoint),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    text = run.stdout
    assert "p50 ms" in text and "batch sizes" in text and "server overhead:" in text, text
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0  # the chart beside it (test_bench_chart.py)
    levels = {lvl["concurrency"]: lvl for lvl in report["levels"]}
    assert set(levels) == {1, 3}
    assert levels[1]["ok"] > 0 and levels[1]["batch"]["sizes"].get("1", 0) > 0
    assert sum(levels[3]["batch"]["sizes"].values()) == levels[3]["batch"]["batches"]
    assert report["same_model"] is True
    assert report["overhead_c1"]["pairs"] == 4


def test_bench_v2_report_and_chart(server, tmp_path):
    """``maskrt bench v2 --json``: both routes per level in bench load's fields, and the chart."""
    import subprocess

    from server_harness import maskrt_command
    from tools import package

    package("tritonclient")
    out = tmp_path / "v2.json"
    run = subprocess.run(
        [
            *maskrt_command(),
            *("bench", "v2", "--url", server.url, "--api-key", KEY, "--json", str(out)),
            *("--concurrency", "1,2", "--duration", "1", "--rounds", "1"),
            *("--big-bytes", "100000", "--big-requests", "1"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert set(report["routes"]) == {"/predict", "v2 binary"}
    for levels in report["routes"].values():
        assert [lv["concurrency"] for lv in levels] == [1, 2]
        assert all(lv["requests"] > 0 and lv["p95_ms"] >= lv["p50_ms"] > 0 for lv in levels)
    assert set(report["big_image"]["p50_ms"]) == {"binary", "JSON/base64"}
    assert out.with_suffix(".png").stat().st_size > 0
