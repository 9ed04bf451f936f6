"""``backend=auto`` keeps the service up when TensorRT cannot serve.

On a CUDA device ``auto`` tries TensorRT and, when it fails, serves on the torch backend (a
checkpoint) or ONNX Runtime (an ONNX file) on the same device, logs why once at ERROR and says so
in ``GET /v1/model`` (``backend``, ``fallback_reason``) and ``maskrt_backend_fallback``; a
``--backend tensorrt`` fails hard. This machine has no GPU and no TensorRT, so the fallback
(:func:`~maskrt.runtime.backends.with_fallback`) is fed the real errors of the TensorRT path (its
import, the plugin library's loading, the engine build), and a real ``maskrt serve`` is started
with ``tests/fallback_site`` on its path, which makes ``auto`` try the real TensorRT path on
this CPU (see that module).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from server_harness import Server, maskrt_command, png, shapes_image

from maskrt import plugins
from maskrt.bench.load import parse_metrics
from maskrt.errors import MaskrtError
from maskrt.runtime.backends import (
    fallback_backend,
    model_path,
    open_named,
    resolve_backend,
    with_fallback,
)
from maskrt.runtime.backends.base import Backend
from maskrt.runtime.dataplane import ServedModel
from maskrt.runtime.options import RuntimeOptions
from maskrt.server.metrics import Metrics

SITE = Path(__file__).with_name("fallback_site")


def test_auto_tries_tensorrt_on_a_gpu_and_knows_what_serves_instead():
    for kind, instead in (("checkpoint", "torch"), ("onnx", "onnxruntime")):
        assert resolve_backend("auto", kind, "cuda:1") == "tensorrt"
        assert fallback_backend("auto", kind, "tensorrt") == instead
    # an engine only TensorRT runs; a backend asked by name fails with its own error
    assert resolve_backend("auto", "engine", "cuda") == "tensorrt"
    assert fallback_backend("auto", "engine", "tensorrt") is None
    for kind in ("checkpoint", "onnx", "engine"):
        assert fallback_backend("tensorrt", kind, "tensorrt") is None
    # on the CPU auto is ONNX Runtime, which is no fallback
    assert resolve_backend("auto", "checkpoint", "cpu") == "onnxruntime"
    assert fallback_backend("auto", "checkpoint", "onnxruntime") is None


def test_torch_settings_apply_to_autos_torch_fallback(monkeypatch):
    """``auto``'s TensorRT takes the torch backend's settings for its fallback; a backend that
    has no torch fallback refuses them before the server listens."""
    from maskrt.runtime import backends

    monkeypatch.setattr(backends, "tensorrt_device", lambda device: True)
    auto = RuntimeOptions(device="cpu", backend="auto", channels_last=True)
    assert backends.check_model(auto)[2] == "tensorrt"
    named = RuntimeOptions(device="cpu", backend="onnxruntime", channels_last=True)
    with pytest.raises(MaskrtError, match="MASKRT_CHANNELS_LAST apply to the torch backend"):
        backends.check_model(named)


def _no_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    plugins.import_tensorrt()


def _stub_tensorrt(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # the tensorrt package of tests/fallback_site, which is not the bindings, as if imported
    spec = importlib.util.spec_from_file_location("tensorrt", SITE / "tensorrt" / "__init__.py")
    assert spec is not None and spec.loader is not None
    stub = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stub)
    monkeypatch.setitem(sys.modules, "tensorrt", stub)  # undone after the test
    plugins.import_tensorrt()


def _plugin_fails_to_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    lib = tmp_path / plugins.LIBRARY_NAME
    lib.write_text("not a shared library")
    monkeypatch.setenv(plugins.ENV_VAR, str(lib))
    plugins.load()


def _engine_build_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from maskrt.export.tensorrt import build_engine

    damaged = tmp_path / "model.onnx"  # e.g. a cache entry cut short
    damaged.write_bytes(b"\x0a\xff\xff\xffcut short")
    build_engine(damaged, tmp_path / "model.plan", device="cuda")


FAILURES = {
    "not installed": (_no_tensorrt, "TensorRT is not installed here"),
    "stubs only": (_stub_tensorrt, "is not TensorRT's Python bindings"),
    "plugin library": (_plugin_fails_to_load, "cannot load the TensorRT plugin library"),
    "engine build": (_engine_build_fails, "not an ONNX file"),
}


@pytest.fixture
def torch_on_cpu() -> Callable[[], Backend]:
    """Opens the bundled checkpoint on the torch backend on the CPU, as the fallback does."""
    options = RuntimeOptions(device="cpu", max_batch=1, inference_threads=1)
    threads = torch.get_num_threads()
    yield lambda: open_named(
        "torch", options, model_path(options), "checkpoint", torch.device("cpu")
    )
    torch.set_num_threads(threads)


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failing_tensorrt_falls_back_to_torch(
    failure, torch_on_cpu, monkeypatch, tmp_path, caplog
):
    fail, says = FAILURES[failure]
    with pytest.raises(MaskrtError, match=says) as raised:
        fail(monkeypatch, tmp_path)  # the TensorRT path's real error

    caplog.set_level("INFO", logger="maskrt")
    backend = with_fallback("tensorrt", lambda: fail(monkeypatch, tmp_path), "torch", torch_on_cpu)

    assert backend.name == "torch" and backend.device == torch.device("cpu")
    reason = f"the tensorrt backend failed: {raised.value}"
    assert backend.fallback is not None
    assert (backend.fallback.wanted, backend.fallback.reason) == ("tensorrt", reason)
    served = ServedModel.of(backend, 1)
    assert served.describe()["backend"] == "torch"
    assert served.describe()["fallback_reason"] == reason
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].name == "maskrt.backends"
    assert errors[0].getMessage() == (
        f"the tensorrt backend failed, serving on the torch backend instead: {raised.value}"
    )
    assert errors[0].exc_info is None  # a MaskrtError says what to do; no traceback


def test_a_library_error_is_logged_with_its_traceback(torch_on_cpu, caplog):
    def bindings_fail() -> Backend:
        raise RuntimeError("pybind11::init(): factory function returned nullptr")

    backend = with_fallback("tensorrt", bindings_fail, "torch", torch_on_cpu)
    assert backend.fallback is not None
    assert backend.fallback.reason == (
        "the tensorrt backend failed: RuntimeError: pybind11::init(): factory function "
        "returned nullptr"
    )
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert error.exc_info is not None and error.exc_info[0] is RuntimeError


def test_when_the_fallback_fails_too_its_error_is_raised(monkeypatch, tmp_path, caplog):
    def missing_checkpoint() -> Backend:
        from maskrt.model.checkpoint import load_model

        load_model(str(tmp_path / "gone.pt"))
        raise AssertionError("a missing checkpoint loaded")

    with pytest.raises(MaskrtError, match=r"gone\.pt"):
        with_fallback(
            "tensorrt",
            lambda: _no_tensorrt(monkeypatch, tmp_path),
            "torch",
            missing_checkpoint,
        )
    (error,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert "TensorRT is not installed here" in error.getMessage()


def _fallback_gauge(m: Metrics) -> dict[str, float]:
    samples = parse_metrics(m.render()[0].decode())
    return {k: v for k, v in samples.items() if k.startswith("maskrt_backend_fallback")}


def test_the_gauge_says_whether_the_server_is_degraded():
    m = Metrics(registry=CollectorRegistry(), process=False)
    assert _fallback_gauge(m) == {}  # no model yet
    m.for_model("shapes", "1").model_loaded("shapes", "torch", "cuda:0", "tensorrt")
    assert _fallback_gauge(m) == {
        'maskrt_backend_fallback{backend="torch",model="shapes",version="1",wanted="tensorrt"}': 1
    }
    m.for_model("shapes", "1").model_loaded("shapes", "tensorrt", "cuda:0")  # TensorRT worked
    assert _fallback_gauge(m) == {
        'maskrt_backend_fallback{backend="tensorrt",model="shapes",version="1",wanted="tensorrt"}': 0
    }


# ---------------------------------------------------------------------------------------------
# A real `maskrt serve` whose TensorRT fails


def _with_site(monkeypatch: pytest.MonkeyPatch) -> None:
    path = [str(SITE), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))


def test_serve_auto_falls_back_and_says_so(monkeypatch, tmp_path):
    _with_site(monkeypatch)
    server = Server(
        tmp_path, {"backend": "auto", "max_batch": 1, "cache_dir": tmp_path / "cache"}, "fallback"
    )
    try:
        server.wait_ready()
        with server.client() as c:
            model = c.get("/v1/model").json()
            answer = c.post(
                "/predict", files={"image": ("s.png", png(shapes_image(3)), "image/png")}
            )
        metrics = server.metrics()
    finally:
        server.stop()

    assert model["backend"] == "torch" and model["device"] == "cpu"
    assert model["fallback_reason"].startswith(
        "the tensorrt backend failed: TensorRT is not installed here (the 'tensorrt' found at "
    )
    assert "is not TensorRT's Python bindings" in model["fallback_reason"]
    assert answer.status_code == 200 and answer.json()["model"]["backend"] == "torch"
    assert answer.json()["detections"], "the torch fallback found none of the shapes"
    version = 'model="shapes",version="1"'
    assert metrics[f'maskrt_backend_fallback{{backend="torch",{version},wanted="tensorrt"}}'] == 1
    assert metrics['maskrt_model_info{backend="torch",device="cpu",name="shapes",version="1"}'] == 1
    lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line]
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1, errors
    assert errors[0]["message"] == (
        "the tensorrt backend failed, serving on the torch backend instead: "
        + model["fallback_reason"].removeprefix("the tensorrt backend failed: ")
    )
    assert (errors[0]["wanted"], errors[0]["backend"]) == ("tensorrt", "torch")


def test_serve_backend_tensorrt_still_fails_hard(monkeypatch, tmp_path):
    _with_site(monkeypatch)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKRT_")}
    run = subprocess.run(
        [*maskrt_command(), "serve", "--backend", "tensorrt", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "TensorRT is not installed here" in run.stderr
    assert "is not TensorRT's Python bindings" in run.stderr
