"""The onnxruntime target's lighter graph: the mask head only on the rows that hold detections
(``maskrt.mask_head = detections``, a data-dependent shape inside the graph) answers exactly what
the static graph (``all``, the tensorrt target's only form) answers, padded to the same shapes."""

from __future__ import annotations

import pytest
import torch
from deploy_helpers import images, make_model

from maskrt.errors import MaskrtError
from maskrt.export.onnx import export_onnx
from maskrt.model.checkpoint import default_checkpoint, load_checkpoint
from maskrt.model.coco import open_dataset
from maskrt.model.deploy import DeployGraph
from maskrt.model.letterbox import fill_colour, letterbox_batch
from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend


@pytest.fixture(scope="module")
def backends(tmp_path_factory):
    """The shipped model (a few to a few dozen detections per image, K = 100) exported twice."""
    tmp = tmp_path_factory.mktemp("mask-head")
    shipped = load_checkpoint(default_checkpoint())
    light = export_onnx(shipped, tmp / "light.onnx", max_batch=4)
    full = export_onnx(shipped, tmp / "full.onnx", max_batch=4, mask_head="all")
    return OnnxRuntimeBackend(light, max_batch=4), OnnxRuntimeBackend(full, max_batch=4)


def test_onnxruntime_target_defaults_to_the_lighter_graph(backends):
    light, full = backends
    assert light.metadata["mask_head"] == "detections"
    assert full.metadata["mask_head"] == "all"


def _batch(backend, indices: list[int]) -> torch.Tensor:
    info = backend.info
    return _letterboxed(indices, info.canvas, info.image_mean)


def _letterboxed(indices: list[int], canvas: int, image_mean) -> torch.Tensor:
    data = open_dataset("shapes:8:2")
    images = [
        torch.from_numpy(data.load_image(data.image_ids[i])).permute(2, 0, 1).contiguous()
        for i in indices
    ]
    return letterbox_batch(images, canvas, fill_colour(image_mean))[0]


@pytest.mark.parametrize("indices", [[0], [1, 2, 3], [4, 5, 6, 7]])
def test_same_outputs_as_the_static_graph(backends, indices):
    light, full = backends
    batch = _batch(light, indices)
    a, b = light.infer(batch), full.infer(batch)
    counts = a.num_detections.tolist()
    assert min(counts) >= 1 and max(counts) < light.info.max_detections  # rows really skipped
    for name, x, y in zip(a._fields, a, b):
        assert x.shape == y.shape, name
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    for i, n in enumerate(counts):
        assert bool((a.masks[i, n:] == 0).all())  # padding past num_detections stays zero
        assert bool((a.masks[i, :n].amax((1, 2)) > 0.5).all())  # every detection has its mask


def test_no_detection_gives_zero_padded_outputs(backends):
    light, full = backends
    canvas = light.info.canvas
    blank = torch.full((2, 3, canvas, canvas), 127, dtype=torch.uint8)
    a, b = light.infer(blank), full.infer(blank)
    for name, x, y in zip(a._fields, a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)
    assert a.masks.shape == (
        2,
        light.info.max_detections,
        light.info.mask_size,
        light.info.mask_size,
    )


def test_upsampling_as_a_conv_gives_the_same_masks():
    """The onnxruntime target's mask predictor: its 2x2 stride-2 ConvTranspose as a 1x1 Conv to
    4x the channels, the 2x2 rearrangement on the detected class's logits (PyTorch graph, every
    one of the K rows a detection)."""
    shipped = load_checkpoint(default_checkpoint())
    config = shipped.config.replace(score_threshold=0.0)
    plain = DeployGraph(shipped.model.eval(), config).eval()
    as_conv = DeployGraph(shipped.model.eval(), config, upsample_as_conv=True).eval()
    assert as_conv.upsample_as_conv and not plain.upsample_as_conv
    batch = _letterboxed([0, 1], config.canvas, config.image_mean)
    with torch.inference_mode():
        a, b = as_conv(batch), plain(batch)
    assert a.num_detections.tolist() == [config.max_detections] * 2
    for name, x, y in zip(a._fields, a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-6, msg=name)


@pytest.mark.slow
def test_upsampling_as_a_conv_on_resnet50():
    """R50-FPN (random weights, canvas 256, every one of the K rows a detection): the same
    detections; the masks within float32 rounding, as PyTorch's 1x1 conv sums the 256 input
    channels in another order than its ConvTranspose (6.6e-6 at most measured over 3 seeds, 1 and 2
    threads; ONNX Runtime's two graphs gave identical masks, docs/benchmarks.md)."""
    model, cfg = make_model(
        "resnet50_fpn", canvas=256, max_detections=30, rpn_pre_nms_top_n=300, rpn_post_nms_top_n=200
    )
    plain = DeployGraph(model, cfg).eval()
    as_conv = DeployGraph(model, cfg, upsample_as_conv=True).eval()
    assert as_conv.upsample_as_conv
    with torch.inference_mode():
        a, b = as_conv(images(2, 256)), plain(images(2, 256))
    assert a.num_detections.tolist() == [cfg.max_detections] * 2
    for name in ("num_detections", "boxes", "scores", "classes"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    torch.testing.assert_close(a.masks, b.masks, rtol=0, atol=2e-5)


def test_tensorrt_target_stays_static(tmp_path):
    shipped = load_checkpoint(default_checkpoint())
    with pytest.raises(MaskrtError, match="tensorrt target is static"):
        export_onnx(shipped, tmp_path / "x.onnx", "tensorrt", mask_head="detections")
    with pytest.raises(MaskrtError, match="--mask-head"):
        export_onnx(shipped, tmp_path / "x.onnx", mask_head="some")
    assert not (tmp_path / "x.onnx").exists()
