"""Artefacts made once and reused: ONNX exports of checkpoints and TensorRT engines.

One cache directory (``MASKRT_CACHE_DIR``, default ``~/.cache/maskrt``; a volume in
docker-compose.yml) holds::

    onnx/<checkpoint sha256>-<target>[-fp16]-b<max batch>[-detmasks]-maskrt<version>[-<build id>].onnx
    engines/<ONNX sha256, 16>-<GPU>-sm<compute capability>-trt<version>-<fp16|fp32>-b<max batch>.plan
    engines/<same>.plan.json                        the engine's sidecar
    engines/timing-<GPU>-sm<cc>-trt<version>.cache  TensorRT's timing cache, shared by builds

so a restart, or another server on the same directory and the same kind of GPU, reuses what was
made, and another GPU, TensorRT version, precision or batch gets its own. ``MASKRT_BUILD_ID`` (set
by the Docker entrypoint from the image) is part of the ONNX name, so a new image never reuses an
export made by other code of the same version. Each file is made under an exclusive lock and
renamed into place: servers sharing the directory make it once and never read half a file.

Beside each entry ``<entry>.sha256`` records its size and sha256, written once the entry is whole.
An entry is used only when it matches its record; a damaged one (truncated, overwritten, or
without a record) is made again. Looking needs no write access: a read-only cache that holds
valid entries (a volume built once) is served as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from maskrt.errors import MaskrtError
from maskrt.export.artifacts import atomic_write

if TYPE_CHECKING:
    from maskrt.model.checkpoint import ModelOptions

log = logging.getLogger("maskrt.cache")


@contextlib.contextmanager
def _locked(path: Path):
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        except BaseException:
            path.unlink(missing_ok=True)  # a failed maker leaves no lock file behind
            raise
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def record_path(path: Path) -> Path:
    """Where the size and sha256 of a cache entry are recorded."""
    return path.with_name(path.name + ".sha256")


def _digest(path: Path) -> dict:
    from maskrt.model.checkpoint import file_sha256

    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def _problem(path: Path) -> str | None:
    """None when ``path`` exists and matches its record, else what is wrong with it."""
    if not path.is_file():
        return "missing"
    try:
        record = json.loads(record_path(path).read_text())
    except FileNotFoundError:
        return "no record of its size and digest"
    except (OSError, ValueError) as exc:
        return f"unreadable record ({exc})"
    if not isinstance(record, dict) or record.get("size") != path.stat().st_size:
        return f"size {path.stat().st_size} bytes, recorded {record.get('size')}"
    if record.get("sha256") != _digest(path)["sha256"]:
        return "content differs from its recorded sha256"
    return None


def cached(path: Path, make: Callable[[Path], object], what: str) -> Path:
    """``path``, made by ``make(path)`` unless a valid one exists. ``make`` must write ``path``
    atomically (a temporary name, then a rename); it runs under an exclusive lock on
    ``<path>.lock``, so concurrent callers wait for one maker instead of making the file twice. A
    valid entry is found without the lock, so a read-only cache works."""
    fields = {"fields": {"path": str(path)}}
    problem = _problem(path)
    if problem is None:
        log.info("reusing cached %s", what, extra=fields)
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_name(path.name + ".lock")):
            problem = _problem(path)
            if problem is None:
                log.info("reusing cached %s", what, extra=fields)
                return path
            if problem != "missing":
                log.warning(
                    "cached %s is damaged (%s); making it again", what, problem, extra=fields
                )
            record_path(path).unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            log.info("making %s (once; cached)", what, extra=fields)
            make(path)
            if not path.is_file():
                raise MaskrtError(f"making {what} did not write {path}")
            atomic_write(record_path(path), json.dumps(_digest(path)).encode())
    except OSError as exc:
        raise MaskrtError(
            f"cannot write the cache under {path.parent} to make {what} ({problem}): {exc} "
            f"(set MASKRT_CACHE_DIR to a writable directory, or fill a read-only one from a "
            f"server that can write it)"
        ) from None
    return path


def _source_sha256(model: str) -> str:
    """sha256 of a checkpoint file, or of the name of torchvision weights."""
    from maskrt.model.checkpoint import file_sha256

    path = Path(model)
    return file_sha256(path) if path.is_file() else hashlib.sha256(model.encode()).hexdigest()


def onnx_name(checkpoint_sha256: str, target: str, max_batch: int, fp16: bool) -> str:
    from maskrt import __version__
    from maskrt.export.onnx import DEFAULT_MASK_HEAD

    build = os.environ.get("MASKRT_BUILD_ID", "")
    return (
        f"{checkpoint_sha256}-{target}{'-fp16' if fp16 else ''}-b{max_batch}"
        f"{'-detmasks' if DEFAULT_MASK_HEAD[target] == 'detections' else ''}"
        f"-maskrt{__version__}{'-' + build if build else ''}.onnx"
    )


def cached_onnx(
    checkpoint: str,
    cache_dir: Path,
    max_batch: int,
    target: str = "onnxruntime",
    fp16: bool = False,
    options: ModelOptions | None = None,
) -> Path:
    """The ``target`` ONNX export of ``checkpoint`` (a file, or torchvision weights by name) for
    batches up to ``max_batch``, loaded with ``options`` (which name the file too). Made in a
    child process (:mod:`maskrt.export.isolated`), so that the versions serving meanwhile do
    not stall."""
    from maskrt.export.isolated import run_isolated

    tag = options.tag() if options else ""
    source = _source_sha256(checkpoint) + (f"-{tag}" if tag else "")
    path = Path(cache_dir) / "onnx" / onnx_name(source, target, max_batch, fp16)
    what = f"{target} ONNX of {checkpoint}"
    return cached(
        path,
        lambda out: run_isolated(what, _export, checkpoint, options, out, target, max_batch, fp16),
        what,
    )


def _export(
    checkpoint: str,
    options: ModelOptions | None,
    out: Path,
    target: str,
    max_batch: int,
    fp16: bool,
) -> None:
    from maskrt.export.onnx import export_onnx
    from maskrt.model.checkpoint import load_model

    export_onnx(load_model(checkpoint, options), out, target, max_batch=max_batch, fp16=fp16)


def hardware_tag(gpu_name: str, compute_capability: str, tensorrt_version: str) -> str:
    """``NVIDIA_H100_80GB_HBM3-sm90-trt10.14.1``: what an engine is only valid for."""
    gpu = re.sub(r"[^A-Za-z0-9]+", "_", gpu_name).strip("_")
    return f"{gpu}-sm{compute_capability.replace('.', '')}-trt{tensorrt_version}"


def cached_engine(
    onnx: str | os.PathLike, cache_dir: Path, *, max_batch: int, fp16: bool, device: torch.device
) -> Path:
    """A TensorRT engine of a tensorrt-target ONNX for this GPU and TensorRT (builds it the first
    time: minutes), with the shared timing cache."""
    from maskrt.export.artifacts import gpu_description
    from maskrt.export.tensorrt import build_engine
    from maskrt.model.checkpoint import file_sha256
    from maskrt.plugins import import_tensorrt

    gpu = gpu_description(device)
    hardware = hardware_tag(
        gpu["gpu_name"], gpu["compute_capability"], import_tensorrt().__version__
    )
    engines = Path(cache_dir) / "engines"
    sha = file_sha256(Path(onnx))[:16]
    path = engines / f"{sha}-{hardware}-{'fp16' if fp16 else 'fp32'}-b{max_batch}.plan"
    return cached(
        path,
        lambda out: build_engine(
            onnx,
            out,
            fp16=fp16,
            max_batch=max_batch,
            timing_cache=engines / f"timing-{hardware}.cache",
            device=device,
        ),
        f"TensorRT engine of {onnx} for {gpu['gpu_name']} (minutes, the first time)",
    )
