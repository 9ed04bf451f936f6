"""``maskrt export onnx``: a checked ONNX file with metadata, one ``MultiLevelRoIAlign`` local-function
node per RoIAlign, standard ops only, a dynamic batch, and the PyTorch deploy graph's detections in
ONNX Runtime."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from deploy_helpers import assert_outputs_match, exported, images, loaded, roi_align_nodes

from maskrt.cli import main
from maskrt.errors import MaskrtError
from maskrt.export.artifacts import read_metadata
from maskrt.export.onnx import export_onnx
from maskrt.export.onnx_ops import (
    DOMAIN,
    ROI_ALIGN_OP,
    all_nodes,
    multilevel_roi_align_function,
)
from maskrt.model.checkpoint import file_sha256, save_checkpoint
from maskrt.model.deploy import DeployGraph, DeployOutputs


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory):
    """A checkpoint written with save_checkpoint, exported through the CLI."""
    tmp = tmp_path_factory.mktemp("cli")
    model = loaded("shapes", seed=1)
    ckpt = save_checkpoint(tmp / "shapes.pt", model.model, model.config, {"note": "test"})
    out = tmp / "shapes.onnx"
    return ckpt, out


def test_cli_export_checker_metadata(cli_export, caplog):
    ckpt, out = cli_export
    caplog.set_level(logging.INFO, logger="maskrt")
    assert (
        main(
            [
                "export",
                "onnx",
                "--model",
                str(ckpt),
                "--out",
                str(out),
                "--target",
                "onnxruntime",
                "--max-batch",
                "2",
                "--max-detections",
                "50",
            ]
        )
        == 0
    )
    sha = file_sha256(ckpt)
    lines = [r.getMessage() for r in caplog.records if r.name == "maskrt.export"]
    assert any(str(out) in line and "MB" in line and sha in line for line in lines), lines

    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    meta = read_metadata(model)
    config = json.loads(meta["config"])
    assert json.loads(meta["classes"]) == ["__background__", "square", "circle", "triangle"]
    assert meta["canvas"] == "192" and meta["mask_size"] == "28" and meta["max_detections"] == "50"
    assert config["name"] == "shapes" and config["max_detections"] == 50 and config["canvas"] == 192
    assert (
        meta["checkpoint_sha256"] == sha
        and meta["target"] == "onnxruntime"
        and meta["max_batch"] == "2"
    )

    # input and outputs: uint8 [batch, 3, S, S] -> fixed K, symbolic batch only
    (image,) = model.graph.input
    dims = image.type.tensor_type.shape.dim
    assert image.name == "images" and image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 192, 192]
    expected = {
        "num_detections": (onnx.TensorProto.INT32, []),
        "boxes": (onnx.TensorProto.FLOAT, [50, 4]),
        "scores": (onnx.TensorProto.FLOAT, [50]),
        "classes": (onnx.TensorProto.INT32, [50]),
        "masks": (onnx.TensorProto.FLOAT, [50, 28, 28]),
    }
    assert [o.name for o in model.graph.output] == list(expected)
    for o in model.graph.output:
        dtype, rest = expected[o.name]
        dims = o.type.tensor_type.shape.dim
        assert o.type.tensor_type.elem_type == dtype
        assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == rest, o


def test_roi_align_is_one_local_function_node_per_call():
    path, _ = exported("shapes", max_batch=3)
    model = onnx.load(str(path))
    nodes = roi_align_nodes(model)
    assert len(nodes) == 2  # box head and mask head
    attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in nodes]
    common = {
        "sampling_ratio": 2,
        "aligned": 0,
        "canonical_scale": 224,
        "canonical_level": 4,
        "first_level": 2,
    }
    assert sorted(a["output_size"] for a in attrs) == [7, 14]
    assert all({k: a[k] for k in common} == common for a in attrs)
    assert all(len(n.input) == 5 for n in nodes)  # rois + the 4 FPN maps
    (function,) = [f for f in model.functions if (f.domain, f.name) == (DOMAIN, ROI_ALIGN_OP)]
    assert set(function.attribute) == set(common) | {"output_size"}
    # standard ONNX ops only: the graph (but for the function calls) and the function body
    others = [n for n in model.graph.node if n not in nodes]
    assert {n.domain for n in others} <= {"", "ai.onnx"}
    body = [n for f in model.functions for n in all_nodes(f)]
    assert {n.domain for n in body} <= {"", "ai.onnx"}
    assert "RoiAlign" in {n.op_type for n in body}
    assert {o.domain for o in model.opset_import} == {"", DOMAIN}


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_equals_pytorch_graph(batch):
    path, model = exported("shapes", max_batch=3)
    graph = DeployGraph(model.model, model.config).eval()
    imgs = images(batch, model.config.canvas, seed=10 + batch)
    with torch.inference_mode():
        expected = graph(imgs)
    actual = DeployOutputs(
        *(torch.from_numpy(a) for a in _session(path).run(None, {"images": imgs.numpy()}))
    )
    pairs = assert_outputs_match(actual, expected)
    assert pairs == batch * model.config.max_detections  # forced detections


def test_export_errors(tmp_path):
    model = loaded("shapes")
    with pytest.raises(MaskrtError, match="multiple of 32"):
        export_onnx(model, tmp_path / "x.onnx", canvas=200)
    with pytest.raises(MaskrtError, match="unknown ONNX target"):
        export_onnx(model, tmp_path / "x.onnx", target="tflite")
    with pytest.raises(MaskrtError, match="max-batch"):
        export_onnx(model, tmp_path / "x.onnx", max_batch=0)
    assert not list(tmp_path.iterdir())


def test_function_body_equals_the_torch_op():
    """The local function alone, in ONNX Runtime, vs torch.ops.maskrt.multilevel_roi_align: level
    boundaries, degenerate, out-of-image and NaN-area RoIs, aligned both ways, adaptive sampling."""
    from onnx import TensorProto, helper
    from test_roi_align import _boxes, _features

    for levels, aligned, sampling, size in [(4, 0, 2, 7), (4, 1, 0, 14), (1, 0, 2, 7)]:
        inputs = ["rois"] + [f"f{i}" for i in range(levels)]
        node = helper.make_node(
            ROI_ALIGN_OP,
            inputs,
            ["y"],
            domain=DOMAIN,
            output_size=size,
            sampling_ratio=sampling,
            aligned=aligned,
            canonical_scale=224,
            canonical_level=4,
            first_level=2,
        )
        graph = helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("rois", TensorProto.FLOAT, ["B", "R", 4])]
            + [
                helper.make_tensor_value_info(f"f{i}", TensorProto.FLOAT, ["B", 8, None, None])
                for i in range(levels)
            ],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "R", 8, size, size])],
        )
        model = helper.make_model(
            graph,
            ir_version=10,
            functions=[multilevel_roi_align_function(levels, 18)],
            opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid(DOMAIN, 1)],
        )
        onnx.checker.check_model(model, full_check=True)
        session = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
        boxes, features = _boxes(3, 30), _features(3)[:levels]
        boxes[0, 0] = torch.tensor([10.0, 10.0, 5.0, 40.0])  # NaN area
        feed = {"rois": boxes.numpy(), **{f"f{i}": f.numpy() for i, f in enumerate(features)}}
        (y,) = session.run(None, feed)
        expected = torch.ops.maskrt.multilevel_roi_align(
            boxes, features, size, sampling, bool(aligned)
        )
        assert np.abs(y - expected.numpy()).max() <= 1e-5
        empty = session.run(None, {**feed, "rois": np.zeros((3, 0, 4), np.float32)})[0]
        assert empty.shape == (3, 0, 8, size, size)


@pytest.mark.slow
def test_resnet50_fpn_canvas_800_runs_in_onnxruntime(tmp_path):
    """A random-weight R50-FPN at canvas 800 with a zero score threshold (K=100 forced detections):
    exports, passes the checker and runs in ONNX Runtime."""
    model = loaded("resnet50_fpn", calibrate=False, canvas=800)
    path = export_onnx(model, tmp_path / "r50.onnx", max_batch=1)
    meta = read_metadata(path)
    assert meta["canvas"] == "800" and len(json.loads(meta["classes"])) == 91
    out = _session(path).run(None, {"images": images(1, 800).numpy()})
    num, boxes, scores, classes, masks = out
    assert num.tolist() == [100] and masks.shape == (1, 100, 28, 28)
    assert (np.diff(scores[0]) <= 0).all() and (classes[0] >= 1).all() and (classes[0] <= 90).all()
    assert (boxes[0] >= 0).all() and (boxes[0] <= 800).all() and ((masks >= 0) & (masks <= 1)).all()
