"""The metrics of a model repository, scraped from a real ``maskrt serve --model-repository``
serving two models: each model version has its own series with its own traffic's counts, the
request metrics (HTTP and gRPC) name the model and version that answered, and unloading a model
removes its series while the other's stay."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import free_port, metric, png, shapes_image, start_server

CLIENTS = Path(__file__).with_name("oip_grpc_clients.py")
A = {"model": "a", "version": "1"}
B = {"model": "b", "version": "2"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    root = tmp_path_factory.mktemp("repository")
    for name, version in (("a", 1), ("b", 2)):
        (root / name / str(version)).mkdir(parents=True)
        shutil.copy(checkpoint, root / name / str(version) / "model.pt")
    port = free_port()
    srv = start_server(
        tmp_path_factory,
        "repository-metrics",
        {"model_repository": root, "backend": "torch", "max_batch": 4, "grpc_port": port},
    )
    srv.grpc_address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


def _of(values: dict[str, float], model: str) -> list[str]:
    """The series of ``model`` (``maskrt_model_info`` names it ``name``)."""
    return [k for k in values if f'model="{model}"' in k or f'name="{model}"' in k]


def _grpc_infer(server, model: str, image: Path) -> dict:
    command = [sys.executable, str(CLIENTS), "infer", server.grpc_address, model, "-", str(image)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:] + server.log()
    return json.loads(run.stdout)


def test_each_model_version_has_its_own_series_until_it_is_unloaded(server, tmp_path):
    image = png(shapes_image(1))
    (tmp_path / "1.png").write_bytes(image)
    with server.client() as c:
        fresh = server.metrics()
        for model in (A, B):  # every loaded version has its series before any traffic
            assert (
                f'maskrt_images_total{{model="{model["model"]}",version="{model["version"]}"}}'
                in fresh
            )
            assert (
                metric(fresh, "maskrt_model_info", name=model["model"], version=model["version"])
                == 1
            )
        for _ in range(2):
            r = c.post("/predict", params={"model": "a"}, files={"image": ("1.png", image)})
            assert r.status_code == 200, r.text
        files = [("images", (f"{i}.png", image)) for i in range(3)]
        r = c.post("/predict/batch", data={"model": "b"}, files=files)
        assert r.status_code == 200, r.text
        r = c.post("/predict", files={"image": ("1.png", image)})  # which model?
        assert r.status_code == 400 and r.json()["error"]["code"] == "model_required"
        assert c.get("/healthz").status_code == 200
    assert _grpc_infer(server, "b", tmp_path / "1.png")["status"] == "OK"

    m = server.metrics()
    assert metric(m, "maskrt_images_total", **A) == 2
    assert metric(m, "maskrt_images_total", **B) == 4
    assert metric(m, "maskrt_batch_size_sum", **A) == 2
    assert metric(m, "maskrt_queue_wait_seconds_count", **B) == 4
    assert metric(m, "maskrt_detections_total", **A) > 0
    assert metric(m, "maskrt_inference_duration_seconds_count", backend="torch", **A) >= 1
    assert metric(m, "maskrt_inflight_requests", **B) == 0
    assert metric(m, "maskrt_queue_depth", **A) == 0
    assert metric(m, "maskrt_backend_fallback", wanted="torch", backend="torch", **B) == 0
    ok = {"endpoint": "/predict", "status": "200"}
    assert metric(m, "maskrt_requests_total", **ok, **A) == 2
    assert metric(m, "maskrt_requests_total", **ok, **B) == 0
    assert metric(m, "maskrt_requests_total", endpoint="/predict/batch", status="200", **B) == 1
    assert metric(m, "maskrt_request_duration_seconds_count", endpoint="/predict", **A) == 2
    grpc = "/inference.GRPCInferenceService/ModelInfer"
    assert metric(m, "maskrt_requests_total", endpoint=grpc, status="OK", **B) == 1
    # no model named, or none chosen: empty labels
    unnamed = {"model": "", "version": ""}
    assert metric(m, "maskrt_requests_total", endpoint="/predict", status="400", **unnamed) == 1
    assert metric(m, "maskrt_requests_total", endpoint="/healthz", **unnamed) >= 1
    assert metric(m, "maskrt_decode_duration_seconds_count", decoder="pillow") == 6  # server-wide

    with server.client() as c:
        assert c.post("/v2/repository/models/a/unload").status_code == 200
    after = server.metrics()
    assert _of(after, "a") == []  # the data plane's series and the request series
    assert {k: v for k, v in after.items() if k in _of(m, "b")} == {
        k: v for k, v in m.items() if k in _of(m, "b")
    }
    assert len(_of(after, "b")) == len(_of(m, "b"))

    with server.client() as c:
        assert c.post("/v2/repository/models/a/load").status_code == 200
    reloaded = server.metrics()
    assert metric(reloaded, "maskrt_images_total", **A) == 0  # a new life, counted from 0
    assert metric(reloaded, "maskrt_model_info", name="a", version="1", backend="torch") == 1
