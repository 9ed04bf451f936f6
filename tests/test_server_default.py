"""``maskrt serve`` with no model, backend or device flag: the shipped shapes model on the best
backend for this machine (ONNX Runtime on a CPU, exported once into the cache; on a GPU TensorRT,
or the torch backend when TensorRT cannot serve), answering like the deploy graph."""

from __future__ import annotations

import numpy as np
import pytest
from server_harness import png, shapes_image, start_server

pytestmark = [
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "default", {})  # no MASKRT_* at all
    yield srv
    srv.stop()


def test_serves_the_shipped_model_on_the_best_backend_here(server):
    import torch

    from maskrt.model.checkpoint import default_checkpoint, load_checkpoint
    from maskrt.model.deploy import deploy_graph
    from maskrt.model.letterbox import boxes_to_original, fill_colour, letterbox_batch

    with server.client() as c:
        info = c.get("/v1/model").json()
        loaded = load_checkpoint(default_checkpoint())
        assert info["version"] == loaded.version and info["name"] == loaded.config.name
        if info["device"] == "cpu":
            assert info["backend"] == "onnxruntime" and info["fallback_reason"] is None
        else:  # TensorRT is tried on a GPU; the torch backend serves when it fails
            assert info["backend"] in ("tensorrt", "torch")
            assert (info["fallback_reason"] is None) == (info["backend"] == "tensorrt")
        image = shapes_image(11)
        r = c.post(
            "/predict",
            files={"image": ("x.png", png(image), "image/png")},
            params={"score_threshold": 0.5},
        )
        assert r.status_code == 200, r.text
        got = r.json()["detections"]
    assert got, "the shipped model finds the shapes of a shapes image"
    graph = deploy_graph(loaded)
    with torch.inference_mode():
        batch, (box,) = letterbox_batch(
            [torch.from_numpy(image).permute(2, 0, 1)],
            loaded.config.canvas,
            fill_colour(loaded.config.image_mean),
        )
        out = graph(batch)
        n = int(out.num_detections[0])
        keep = out.scores[0, :n] >= 0.5
        boxes = boxes_to_original(out.boxes[0, :n][keep], box).numpy()
    assert len(got) == len(boxes)
    np.testing.assert_allclose([d["box"] for d in got], boxes, atol=0.5)


def test_the_cached_onnx_serves_the_same_answers(server):
    """The server exported the checkpoint once into the cache; that ONNX file, opened in this
    process with backend=auto, gives exactly what the server answered (same graph, same batch).
    On a GPU the server serves on TensorRT or torch and exports no such ONNX."""
    from maskrt.export.cache import cached_onnx
    from maskrt.model.checkpoint import default_checkpoint
    from maskrt.runtime.backends import open_backend
    from maskrt.runtime.options import default_cache_dir
    from maskrt.runtime.pipeline import Pipeline
    from maskrt.server.settings import Settings

    with server.client() as c:
        info = c.get("/v1/model").json()
        data = png(shapes_image(12))
        served = c.post(
            "/predict",
            files={"image": ("x.png", data, "image/png")},
            params={"score_threshold": 0.05},
        ).json()["detections"]
    if info["backend"] != "onnxruntime":
        pytest.skip(f"the server serves on {info['backend']} (a GPU): it exported no ONNX")
    onnx = cached_onnx(str(default_checkpoint()), default_cache_dir(), info["max_batch"])
    assert onnx.is_file()
    backend = open_backend(Settings(model=str(onnx), device=info["device"]))
    assert backend.name == "onnxruntime" and backend.info.version == info["version"]
    assert Pipeline(backend).predict([data], score_threshold=0.05)[0] == served
