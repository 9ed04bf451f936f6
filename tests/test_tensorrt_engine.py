"""``maskrt export engine`` and the ``tensorrt`` backend.

What runs anywhere: the checks made before TensorRT loads (file, target, batch, workspace), the
clear errors where TensorRT or a GPU is missing, and that importing and starting the server never
imports ``tensorrt``. Building an engine and serving it (markers ``gpu`` and ``tensorrt``) runs
where both exist: the GPU Docker image.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import torch
from deploy_helpers import assert_outputs_match, exported, images

from maskrt.cli import main
from maskrt.errors import MaskrtError
from maskrt.export.artifacts import read_sidecar, set_metadata_props, sidecar_path
from maskrt.export.onnx import export_onnx
from maskrt.export.tensorrt import build_engine, check_build_request, configure_builder
from maskrt.export.tensorrt_onnx import rewrite
from maskrt.plugins import tensorrt_importable
from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

TRT_AND_GPU = torch.cuda.is_available() and tensorrt_importable()


@pytest.fixture(scope="module")
def trt_onnx(tmp_path_factory):
    """A tensorrt-target ONNX of the random shapes model (batch 1..3) and its onnxruntime source."""
    source, _ = exported("shapes", max_batch=3)
    out = tmp_path_factory.mktemp("trt") / "shapes.trt.onnx"
    onnx.save(rewrite(onnx.load(str(source))), str(out))
    return out, source


def test_build_request_checks(trt_onnx, tmp_path):
    path, source = trt_onnx
    meta, fp16, canvas, sha, max_batch = check_build_request(path, None, 4.0)
    assert (fp16, canvas, max_batch, meta["target"]) == (False, 192, 3, "tensorrt") and len(
        sha
    ) == 64
    assert check_build_request(path, 2, 0.5)[4] == 2
    with pytest.raises(MaskrtError, match="takes batches of 1 to 3"):
        check_build_request(path, 4, 4.0)
    with pytest.raises(MaskrtError, match="--workspace must be positive"):
        check_build_request(path, 1, 0)
    with pytest.raises(MaskrtError, match=r"target 'onnxruntime'.*--target tensorrt"):
        check_build_request(source, None, 4.0)
    with pytest.raises(MaskrtError, match="no such ONNX file"):
        check_build_request(tmp_path / "none.onnx", None, 4.0)
    (tmp_path / "junk.onnx").write_bytes(b"\x00junk")
    with pytest.raises(MaskrtError, match="not an ONNX file"):
        check_build_request(tmp_path / "junk.onnx", None, 4.0)
    # fp16 engines only from the fp16 export, on TensorRT 10 as on 11 (no weak typing)
    with pytest.raises(MaskrtError, match=r"--fp16: .* is fp32.*--target tensorrt --fp16"):
        check_build_request(path, None, 4.0, fp16=True)

    half = onnx.load(str(path))  # an ONNX that holds fp16 tensors is recognised as such
    init = half.graph.initializer[0]
    init.CopyFrom(
        onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(init).astype("float16"), init.name)
    )
    set_metadata_props(half, {"max_batch": "3"})
    onnx.save(half, str(tmp_path / "half.onnx"))
    assert check_build_request(tmp_path / "half.onnx", None, 4.0, fp16=True)[1] is True


class BuilderConfig:
    """A stand-in for TensorRT's ``IBuilderConfig`` (TensorRT's builder cannot be installed
    without a GPU) that keeps the calls made to it; the names it answers to are TensorRT 11's
    (test_tensorrt_api_names.py checks export/tensorrt.py against them)."""

    def __init__(self):
        self.calls: list[tuple] = []

    def set_memory_pool_limit(self, pool, size):
        self.calls.append(("set_memory_pool_limit", pool, size))

    def set_flag(self, flag):
        self.calls.append(("set_flag", flag))

    def clear_flag(self, flag):
        self.calls.append(("clear_flag", flag))


TRT_NAMES = SimpleNamespace(
    MemoryPoolType=SimpleNamespace(WORKSPACE="MemoryPoolType.WORKSPACE"),
    BuilderFlag=SimpleNamespace(TF32="BuilderFlag.TF32"),
)


@pytest.mark.parametrize("tf32", [False, True])
def test_builder_config_has_tf32_only_when_asked(tf32):
    """TensorRT sets TF32 by default; our engines clear it unless asked (--tf32)."""
    config = BuilderConfig()
    configure_builder(TRT_NAMES, config, workspace_gib=0.5, tf32=tf32)
    assert config.calls == [
        ("set_memory_pool_limit", "MemoryPoolType.WORKSPACE", 1 << 29),
        ("set_flag" if tf32 else "clear_flag", "BuilderFlag.TF32"),
    ]


def test_export_engine_takes_tf32_only_from_its_flag():
    from maskrt.cli import build_parser

    base = ["export", "engine", "--onnx", "m.onnx", "--out", "m.plan"]
    assert build_parser().parse_args(base).tf32 is False
    assert build_parser().parse_args([*base, "--tf32"]).tf32 is True


@pytest.mark.skipif(TRT_AND_GPU, reason="TensorRT and a GPU are here")
def test_cli_explains_what_is_missing(trt_onnx, tmp_path, capsys):
    path, _ = trt_onnx
    assert main(["export", "engine", "--onnx", str(path), "--out", str(tmp_path / "m.plan")]) == 2
    err = capsys.readouterr().err
    assert "needs a CUDA GPU" in err or "TensorRT is not installed" in err
    assert not (tmp_path / "m.plan").exists()


def test_backend_errors_before_tensorrt(tmp_path):
    from maskrt.runtime.backends.tensorrt import TensorRTBackend

    with pytest.raises(MaskrtError, match="CUDA device, not 'cpu'"):
        TensorRTBackend(tmp_path / "m.plan", device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(MaskrtError, match="no CUDA GPU"):
            TensorRTBackend(tmp_path / "m.plan", device="cuda")
    (tmp_path / "m.plan").write_bytes(b"plan")
    with pytest.raises(MaskrtError, match=r"no sidecar m\.plan\.json"):
        read_sidecar(tmp_path / "m.plan")
    sidecar_path(tmp_path / "m.plan").write_text("[1, 2]")
    with pytest.raises(MaskrtError, match="not a JSON object"):
        read_sidecar(tmp_path / "m.plan")


def test_server_never_imports_tensorrt():
    """Import the app, build it and open the default backend: no ``tensorrt`` module is loaded."""
    code = (
        "import sys, maskrt.server.app as a, maskrt.runtime.backends as b, maskrt.cli as c\n"
        "from maskrt.server.settings import Settings\n"
        "c.build_parser(); a.create_app(Settings(backend='torch', device='cpu', max_batch=1))\n"
        "b.open_backend(Settings(backend='torch', device='cpu', max_batch=1))\n"
        "import maskrt.runtime.backends.tensorrt, maskrt.export.tensorrt\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorrt'))\n"
    )
    assert _python(code).strip() == "[]"


def _python(code: str) -> str:
    """What ``code`` prints, run in a fresh interpreter (nothing imported into this one)."""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout


def test_a_stubs_only_tensorrt_is_not_taken_for_tensorrt(tmp_path):
    """A ``tensorrt`` without the bindings (type stubs, an empty package) makes find_spec true;
    maskrt imports it to tell, and refuses it with the reason."""
    stubs = tmp_path / "tensorrt"
    stubs.mkdir()
    (stubs / "__init__.pyi").write_text("class Runtime: ...\n__version__: str\n")
    code = (
        "import importlib.util, sys\n"
        f"sys.path.insert(0, {str(tmp_path)!r})\n"
        f"sys.path.insert(0, {str(Path(__file__).parents[1] / 'docker')!r})\n"
        "import maskrt_env\n"
        "from maskrt.errors import MaskrtError\n"
        "from maskrt.plugins import import_tensorrt, tensorrt_importable\n"
        "print(importlib.util.find_spec('tensorrt') is not None, tensorrt_importable(),\n"
        "      maskrt_env._tensorrt()[0])\n"
        "try:\n"
        "    import_tensorrt()\n"
        "except MaskrtError as exc:\n"
        "    print(exc)\n"
    )
    first, message = _python(code).splitlines()
    assert first.split() == ["True", "False", "None"]
    assert "is not TensorRT's Python bindings" in message and str(stubs) in message


# ---------------------------------------------------------------------------------------------
# on a GPU with TensorRT (the GPU Docker image)


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_runs_on_its_own_gpu_whatever_gpu_is_current(trt_onnx, tmp_path):
    """An engine on the last GPU, run while GPU 0 is current (a fresh thread): Engine.run makes
    its device current, so TensorRT enqueues there."""
    from maskrt.runtime.backends.tensorrt import TensorRTBackend

    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA GPUs")
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    path, source = trt_onnx
    plan = tmp_path / "m.plan"
    build_engine(path, plan, max_batch=3, device=device)
    backend = TensorRTBackend(plan, device=device, max_batch=3)
    reference = OnnxRuntimeBackend(source, device="cpu", max_batch=3)
    imgs = images(2, 192, seed=44)
    torch.cuda.set_device(0)
    assert assert_outputs_match(backend.infer(imgs.to(device)), reference.infer(imgs)) == 200


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_fp32_matches_onnxruntime(trt_onnx, tmp_path):
    from maskrt.runtime.backends.tensorrt import TensorRTBackend

    path, source = trt_onnx
    plan, cache = tmp_path / "m.plan", tmp_path / "timing.cache"
    sidecar = build_engine(path, plan, max_batch=3, timing_cache=cache)
    assert plan.stat().st_size > 0 and cache.stat().st_size > 0
    assert json.loads(sidecar_path(plan).read_text()) == sidecar
    major, minor = torch.cuda.get_device_capability()
    assert sidecar["compute_capability"] == f"{major}.{minor}" and sidecar["precision"] == "fp32"
    assert sidecar["tf32"] is False  # what lets the fp32 engine match ONNX Runtime's float32
    backend = TensorRTBackend(plan, device="cuda", max_batch=8)
    reference = OnnxRuntimeBackend(source, device="cpu", max_batch=3)
    assert backend.max_batch == 3 and backend.info == reference.info
    for batch in (1, 3):
        imgs = images(batch, 192, seed=40 + batch)
        assert (
            assert_outputs_match(backend.infer(imgs.cuda()), reference.infer(imgs)) == 100 * batch
        )


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_engine_fp16_and_the_shipped_model_through_the_pipeline(tmp_path):
    from maskrt.bench.parity import Parity
    from maskrt.model.checkpoint import default_checkpoint, load_checkpoint
    from maskrt.model.coco import open_dataset
    from maskrt.runtime.backends.tensorrt import TensorRTBackend
    from maskrt.runtime.pipeline import Pipeline

    shipped = load_checkpoint(default_checkpoint())
    trt_onnx = export_onnx(shipped, tmp_path / "s.trt.onnx", "tensorrt", max_batch=4)
    ort_onnx = export_onnx(shipped, tmp_path / "s.onnx", "onnxruntime", max_batch=4)
    data = open_dataset("shapes:16:2")
    imgs = [data.load_image(i) for i in data.image_ids]
    reference = Pipeline(OnnxRuntimeBackend(ort_onnx, device="cpu", max_batch=4)).predict(imgs)
    half_onnx = export_onnx(shipped, tmp_path / "h.trt.onnx", "tensorrt", max_batch=4, fp16=True)
    with pytest.raises(MaskrtError, match="is fp32"):  # the precision comes from the ONNX
        build_engine(trt_onnx, tmp_path / "no.plan", fp16=True)
    builds = [(trt_onnx, False, 0.99), (half_onnx, True, 0.9)]
    for index, (source, fp16, minimum) in enumerate(builds):
        plan = tmp_path / f"{index}.plan"
        sidecar = build_engine(source, plan, fp16=fp16)
        assert sidecar["precision"] == ("fp16" if fp16 else "fp32")
        ours = Pipeline(TensorRTBackend(plan, device="cuda", max_batch=4)).predict(imgs)
        parity = Parity()
        for a, b in zip(ours, reference):
            parity.add(a, b)
        assert parity.matched_fraction >= minimum, (source, fp16, parity)
