"""The artefact cache (``maskrt.export.cache``): made once under a lock, reused, named by what
makes it valid; and, on a GPU with TensorRT, a checkpoint served by the tensorrt backend through
it."""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from pathlib import Path

import onnx
import pytest
from deploy_helpers import loaded

from maskrt.errors import MaskrtError
from maskrt.export.artifacts import read_metadata
from maskrt.export.cache import cached, cached_onnx, hardware_tag, onnx_name, record_path
from maskrt.model.checkpoint import file_sha256, save_checkpoint


def _write(path: Path, text: str = "made") -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _slow_make(path: str, counter: str) -> None:
    def make(out: Path) -> None:
        with open(counter, "a") as f:
            f.write("x")
        time.sleep(0.5)
        _write(out)

    cached(Path(path), make, "a test file")


def test_made_once_then_reused(tmp_path):
    made = []
    target = tmp_path / "sub" / "a.bin"
    for _ in range(2):
        assert cached(target, lambda out: (made.append(out), _write(out)), "a") == target
    assert made == [target] and target.read_text() == "made"


def test_concurrent_callers_make_it_once(tmp_path):
    counter = tmp_path / "count"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_slow_make, args=(str(tmp_path / "b.bin"), str(counter)))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)  # spawned children import torch: slow on a loaded 2-core machine
        assert p.exitcode == 0
    assert counter.read_text() == "x" and (tmp_path / "b.bin").read_text() == "made"


def test_failures_leave_nothing(tmp_path):
    target = tmp_path / "c.bin"

    def boom(out: Path) -> None:
        raise MaskrtError("export failed")

    with pytest.raises(MaskrtError, match="export failed"):
        cached(target, boom, "c")
    with pytest.raises(MaskrtError, match="did not write"):
        cached(target, lambda out: None, "c")
    assert not target.exists()
    assert cached(target, _write, "c").read_text() == "made"  # the next start makes it
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(MaskrtError, match="MASKRT_CACHE_DIR"):
            cached(ro / "d" / "x.bin", _write, "d")


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[:2]),  # truncated
        lambda p: p.write_text("mad!"),  # same size, other bytes
        lambda p: record_path(p).unlink(),  # no record (a crash between the two writes)
    ],
    ids=["truncated", "overwritten", "unrecorded"],
)
def test_a_damaged_entry_is_made_again(tmp_path, damage, caplog):
    made = []
    target = tmp_path / "e.bin"
    cached(target, lambda out: (made.append(out), _write(out)), "e")
    damage(target)
    with caplog.at_level("WARNING", logger="maskrt.cache"):
        assert (
            cached(target, lambda out: (made.append(out), _write(out)), "e").read_text() == "made"
        )
    assert len(made) == 2 and "is damaged" in caplog.text
    cached(target, lambda out: made.append(out), "e")
    assert len(made) == 2  # valid again: reused


def test_names(monkeypatch):
    from maskrt import __version__

    monkeypatch.delenv("MASKRT_BUILD_ID", raising=False)
    assert (
        onnx_name("ab" * 32, "onnxruntime", 8, False)
        == f"{'ab' * 32}-onnxruntime-b8-detmasks-maskrt{__version__}.onnx"
    )
    monkeypatch.setenv("MASKRT_BUILD_ID", "img42")
    assert (
        onnx_name("cd", "tensorrt", 4, True)
        == f"cd-tensorrt-fp16-b4-maskrt{__version__}-img42.onnx"
    )
    assert (
        hardware_tag("NVIDIA H100 80GB HBM3", "9.0", "10.14.1")
        == "NVIDIA_H100_80GB_HBM3-sm90-trt10.14.1"
    )
    assert (
        hardware_tag("NVIDIA A100-SXM4-40GB", "8.0", "11.1.0")
        == "NVIDIA_A100_SXM4_40GB-sm80-trt11.1.0"
    )


def test_cached_onnx_per_target(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("MASKRT_BUILD_ID", raising=False)
    model = loaded("shapes", seed=5)
    ckpt = save_checkpoint(tmp_path / "m.pt", model.model, model.config, {})
    with caplog.at_level(logging.INFO, logger="maskrt"):
        first = cached_onnx(str(ckpt), tmp_path / "cache", 2, "tensorrt")
    # made in a child process (export/isolated.py), whose log records are logged here
    export = [r for r in caplog.records if r.name == "maskrt.export"]
    assert any("tracing the deploy graph" in r.getMessage() for r in export)
    assert {r.process for r in export} == {export[0].process} != {os.getpid()}
    assert first.parent == tmp_path / "cache" / "onnx"
    assert first.name.startswith(f"{file_sha256(ckpt)}-tensorrt-b2-")
    meta = read_metadata(onnx.load(str(first)))
    assert (meta["target"], meta["max_batch"], meta["precision"]) == ("tensorrt", "2", "fp32")
    stamp = first.stat().st_mtime_ns
    assert cached_onnx(str(ckpt), tmp_path / "cache", 2, "tensorrt") == first
    assert first.stat().st_mtime_ns == stamp  # reused, not made again


@pytest.mark.gpu
@pytest.mark.tensorrt
def test_tensorrt_backend_from_a_checkpoint(tmp_path):
    import torch

    from maskrt.runtime.backends import open_backend
    from maskrt.server.settings import Settings

    model = loaded("shapes", seed=6)
    ckpt = save_checkpoint(tmp_path / "m.pt", model.model, model.config, {})
    settings = Settings(
        model=str(ckpt),
        backend="tensorrt",
        device="cuda",
        max_batch=2,
        cache_dir=tmp_path / "cache",
    )
    backend = open_backend(settings)
    plans = list((tmp_path / "cache" / "engines").glob("*.plan"))
    assert (
        backend.name == "tensorrt" and len(plans) == 1 and plans[0].name.endswith("-fp16-b2.plan")
    )
    assert list((tmp_path / "cache" / "engines").glob("timing-*.cache"))
    stamp = plans[0].stat().st_mtime_ns
    open_backend(settings)  # a restart reuses the engine
    assert plans[0].stat().st_mtime_ns == stamp
    out = backend.infer(torch.zeros(1, 3, 192, 192, dtype=torch.uint8, device="cuda"))
    assert out.masks.shape == (1, 100, 28, 28)
