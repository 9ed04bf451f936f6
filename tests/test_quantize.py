"""``maskrt export onnx --int8``: ONNX Runtime static quantization (QDQ, per-channel) calibrated on
a data set; the file keeps the deploy contract and metadata, the onnxruntime backend serves it, and
its detections are the float model's."""

from __future__ import annotations

import onnx
import pytest
import torch
from torchvision.ops import box_iou

from maskrt.errors import MaskrtError
from maskrt.export.onnx import build_onnx, export_onnx
from maskrt.export.quantize import quantize_int8
from maskrt.model.checkpoint import default_checkpoint, load_checkpoint
from maskrt.model.coco import open_dataset
from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from maskrt.runtime.pipeline import Pipeline


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("int8")
    proto = build_onnx(load_checkpoint(default_checkpoint()), max_batch=2, mask_head="detections")
    onnx.save(proto, str(tmp / "fp32.onnx"))
    onnx.save(quantize_int8(proto, open_dataset("shapes:16:3")), str(tmp / "int8.onnx"))
    return (
        Pipeline(OnnxRuntimeBackend(tmp / "fp32.onnx", max_batch=2)),
        Pipeline(OnnxRuntimeBackend(tmp / "int8.onnx", max_batch=2)),
        tmp / "int8.onnx",
    )


def test_int8_file_keeps_the_contract(pipelines):
    fp32, int8, path = pipelines
    meta = int8.backend.metadata
    assert meta["precision"] == "int8" and meta["calibration"] == "shapes:16:3"
    assert {k: v for k, v in meta.items() if k not in ("precision", "calibration")} == {
        k: v for k, v in fp32.backend.metadata.items() if k != "precision"
    }
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops


def test_int8_runs_every_convolution_in_int8(pipelines):
    """Every Conv and Gemm reads dequantized int8 (ONNX Runtime fuses them into QLinearConv /
    QGemm), the frozen batch norms were folded into the convolutions before quantizing (no float
    Mul on a convolution's output) and no ConvTranspose is left in float."""
    model = onnx.load(str(pipelines[2]))
    producer = {out: n for n in model.graph.node for out in n.output}

    def source(name: str) -> str:
        node = producer.get(name)
        while node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node = producer.get(node.input[0])
        return "" if node is None else node.op_type

    convs = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "ConvTranspose")]
    assert len(convs) > 20 and all(n.op_type != "ConvTranspose" for n in convs)
    for n in convs:
        assert [producer[i].op_type for i in n.input[:2]] == ["DequantizeLinear"] * 2, n.name
    assert not [
        n.name for n in model.graph.node if n.op_type == "Mul" and source(n.input[0]) == "Conv"
    ]


def test_int8_finds_what_float_finds(pipelines):
    fp32, int8, _ = pipelines
    data = open_dataset("shapes:20:2")
    images = [data.load_image(i) for i in data.image_ids]
    matched = total = 0
    for a, b in zip(
        fp32.predict(images, score_threshold=0.5), int8.predict(images, score_threshold=0.5)
    ):
        total += len(a)
        if not a or not b:
            continue
        iou = box_iou(torch.tensor([d["box"] for d in a]), torch.tensor([d["box"] for d in b]))
        same = torch.tensor([[x["class_id"] == y["class_id"] for y in b] for x in a])
        matched += int(((iou >= 0.8) & same).any(1).sum())
    assert total >= 10
    assert matched >= 0.9 * total


def test_int8_errors(tmp_path):
    shipped = load_checkpoint(default_checkpoint())
    with pytest.raises(MaskrtError, match="int8"):
        export_onnx(shipped, tmp_path / "x.onnx", "tensorrt", int8_calibration="shapes:4:3")
    with pytest.raises(MaskrtError, match="int8"):
        export_onnx(shipped, tmp_path / "x.onnx", fp16=True, int8_calibration="shapes:4:3")
    with pytest.raises(MaskrtError, match="shapes:COUNT:SEED"):
        export_onnx(shipped, tmp_path / "x.onnx", int8_calibration="shapes:x")
    with pytest.raises(MaskrtError, match="no such COCO annotations file"):
        export_onnx(shipped, tmp_path / "x.onnx", int8_calibration=str(tmp_path / "nothing"))
    assert not (tmp_path / "x.onnx").exists()
