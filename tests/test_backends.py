"""The ``torch`` and ``onnxruntime`` backends run the deploy graph and agree with each other."""

from __future__ import annotations

import logging
import shutil

import onnx
import pytest
import torch
from deploy_helpers import assert_outputs_match, exported, images, loaded
from tools import missing

from maskrt.errors import MaskrtError
from maskrt.export.artifacts import set_metadata_props
from maskrt.model.checkpoint import load_checkpoint, save_checkpoint
from maskrt.model.deploy import DeployGraph
from maskrt.runtime.backends.base import DeployOutputs
from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend
from maskrt.runtime.backends.torch import TorchBackend


@pytest.fixture(scope="module")
def torch_backend():
    return TorchBackend(loaded("shapes"), device="cpu", max_batch=3)


def test_torch_backend_runs_the_deploy_graph(torch_backend):
    model = loaded("shapes")
    info = torch_backend.info
    assert (info.name, info.canvas, info.mask_size, info.max_detections) == ("shapes", 192, 28, 100)
    assert info.classes == model.config.classes and info.version == model.sha256[:12]
    assert info.image_mean == model.config.image_mean
    imgs = images(2, 192, seed=4)
    out = torch_backend.infer(imgs)
    assert isinstance(out, DeployOutputs) and out.masks.shape == (2, 100, 28, 28)
    assert out.num_detections.dtype == torch.int32 and out.classes.dtype == torch.int32
    with torch.inference_mode():
        expected = DeployGraph(model.model, model.config).eval()(imgs)
    for a, b in zip(out, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_torch_backend_rejects_bad_input(torch_backend):
    with pytest.raises(MaskrtError, match="1 to 3"):
        torch_backend.infer(images(4, 192))
    with pytest.raises(MaskrtError, match="uint8"):
        torch_backend.infer(images(1, 192).float())
    with pytest.raises(MaskrtError, match="192"):
        torch_backend.infer(images(1, 160))
    with pytest.raises(MaskrtError, match="CUDA"):
        TorchBackend(loaded("shapes"), device="cpu", max_batch=1, precision="fp16")


def test_warmup_runs_once_on_the_cpu_and_logs_each_step(torch_backend, caplog):
    from maskrt.runtime.pipeline import Pipeline

    caplog.set_level(logging.INFO, logger="maskrt.runtime")
    seconds = Pipeline(torch_backend).warmup()
    assert list(seconds) == torch_backend.warmup_batch_sizes() == [1]
    runs = [r for r in caplog.records if r.getMessage() == "warm-up run"]
    assert [(r.fields["step"], r.fields["batch"]) for r in runs] == [("1/1", 1)]
    assert runs[0].fields["seconds"] > 0


def test_torch_backend_from_a_checkpoint(tmp_path):
    model = loaded("shapes", seed=2)
    path = save_checkpoint(tmp_path / "m.pt", model.model, model.config, {})
    checkpoint = load_checkpoint(path)
    backend = TorchBackend(checkpoint, device="cpu", max_batch=2)
    assert backend.info.version == checkpoint.sha256[:12] and backend.max_batch == 2
    assert backend.warmup_batch_sizes() == [1]  # on the CPU one run initialises every shape
    out = backend.infer(images(1, 192))
    assert int(out.num_detections[0]) == 100


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_backend_equals_torch_backend(torch_backend, batch):
    path, _ = exported("shapes", max_batch=3)
    backend = OnnxRuntimeBackend(path, device="cpu", max_batch=3)
    assert backend.info == torch_backend.info
    assert backend.device == torch.device("cpu") and backend.session.get_providers() == [
        "CPUExecutionProvider"
    ]
    imgs = images(batch, 192, seed=20 + batch)
    assert assert_outputs_match(backend.infer(imgs), torch_backend.infer(imgs)) == 100 * batch


def test_onnxruntime_backend_limits_and_errors(tmp_path, caplog):
    path, _ = exported("shapes", max_batch=3)
    with caplog.at_level(logging.WARNING, logger="maskrt"):
        backend = OnnxRuntimeBackend(path, max_batch=8, threads=1)
    assert backend.max_batch == 3 and "up to 3" in caplog.text
    with pytest.raises(MaskrtError, match="1 to 3"):
        backend.infer(images(4, 192))
    with pytest.raises(MaskrtError, match="no such ONNX file"):
        OnnxRuntimeBackend(tmp_path / "missing.onnx")

    # a target this backend does not know; a foreign ONNX has no maskrt metadata
    proto = onnx.load(str(path))
    set_metadata_props(proto, {"target": "tflite"})
    onnx.save(proto, str(tmp_path / "tflite.onnx"))
    with pytest.raises(MaskrtError, match="target 'tflite'"):
        OnnxRuntimeBackend(tmp_path / "tflite.onnx")
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    with pytest.raises(MaskrtError, match="not a maskrt ONNX file"):
        OnnxRuntimeBackend(tmp_path / "foreign.onnx")
    shutil.copy(path, tmp_path / "copy.onnx")
    if not torch.cuda.is_available():
        with pytest.raises(MaskrtError, match="no CUDA GPU"):
            OnnxRuntimeBackend(tmp_path / "copy.onnx", device="cuda")


@pytest.mark.gpu
def test_onnxruntime_cuda_io_binding_equals_cpu():
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        missing(
            "this ONNX Runtime has no CUDAExecutionProvider: onnxruntime-gpu is not installed "
            "(a dependency of maskrt on Linux x86-64: pip install -e .)"
        )
    path, _ = exported("shapes", max_batch=3)
    cpu = OnnxRuntimeBackend(path, device="cpu", max_batch=3)
    gpu = OnnxRuntimeBackend(path, device="cuda", max_batch=3)
    assert gpu.device.type == "cuda" and gpu.session.get_providers()[0] == "CUDAExecutionProvider"
    imgs = images(3, 192, seed=30)
    out = gpu.infer(imgs.cuda())
    assert all(t.is_cuda for t in out)
    assert_outputs_match(out, cpu.infer(imgs))


@pytest.mark.gpu
def test_torch_backend_cuda_fp16(exact_float32):
    model = loaded("shapes")
    cpu = TorchBackend(model, device="cpu", max_batch=2)
    imgs = images(2, 192, seed=31)
    expected = cpu.infer(imgs)
    full = TorchBackend(loaded("shapes"), device="cuda", max_batch=2).infer(imgs.cuda())
    assert all(t.is_cuda for t in full)
    assert_outputs_match(full, expected)
    half = TorchBackend(loaded("shapes"), device="cuda", max_batch=2, precision="fp16").infer(
        imgs.cuda()
    )
    assert half.boxes.dtype == torch.float32 and half.masks.shape == expected.masks.shape
    assert (half.num_detections.cpu() == expected.num_detections).all()
