"""Backends that run the deploy graph, and :func:`open_backend`, which picks and opens one.

The model file decides what can serve it:

| model | torch | onnxruntime | tensorrt |
| --- | --- | --- | --- |
| checkpoint (``.pt``/``.pth``, or torchvision weights by name) | yes | exported to ONNX once, cached | no: build an engine (``maskrt export``; the Docker entrypoint does it) |
| ``.onnx`` | no | yes | no: build an engine |
| ``.plan`` / ``.engine`` | no | no | yes |

``backend=auto`` picks ``tensorrt`` on a GPU where the ``tensorrt`` package imports, else
``onnxruntime``; a model that TensorRT cannot take as it is (a checkpoint or an ONNX) then runs on
ONNX Runtime (CUDA execution provider on a GPU) with a log line saying so. Nothing of TensorRT is
imported unless the TensorRT backend is opened.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt.errors import MaskrtError

if TYPE_CHECKING:
    from maskrt.server.backends.base import Backend
    from maskrt.server.settings import Settings

log = logging.getLogger("maskrt.backends")

CHECKPOINT_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")
TORCHVISION_WEIGHTS_PREFIXES = ("MaskRCNN_ResNet50_FPN_Weights", "MaskRCNN_ResNet50_FPN_V2_Weights")


def model_path(settings: "Settings") -> str:
    """``settings.model`` or the bundled shapes checkpoint."""
    if settings.model:
        return settings.model
    from maskrt.model.checkpoint import default_checkpoint

    return str(default_checkpoint())


def model_kind(model: str) -> str:
    """``checkpoint``, ``onnx`` or ``engine``, from the name; errors name the accepted kinds."""
    if model.split(".")[0] in TORCHVISION_WEIGHTS_PREFIXES and not Path(model).exists():
        return "checkpoint"
    suffix = Path(model).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise MaskrtError(f"{model}: unknown model file type {suffix or '(no suffix)'!r}; expected a "
                      f"checkpoint (.pt, .pth), an ONNX file (.onnx) or a TensorRT engine "
                      f"(.plan, .engine)")


def tensorrt_available() -> bool:
    """A CUDA GPU and an importable ``tensorrt`` package (without importing it)."""
    import torch

    return torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None


def resolve_backend(backend: str, kind: str, device: str) -> str:
    """The backend that will serve a model of ``kind`` on ``device`` when ``backend`` is asked."""
    if backend == "auto":
        if kind == "engine":
            return "tensorrt"
        if device.startswith("cuda") and tensorrt_available():
            log.warning("backend=auto: TensorRT is available but the model is a %s, not an engine; "
                        "serving it with ONNX Runtime (build an engine with `maskrt export` to "
                        "serve it with TensorRT)", kind)
        return "onnxruntime"
    allowed = {"torch": ("checkpoint",), "onnxruntime": ("checkpoint", "onnx"),
               "tensorrt": ("engine",)}[backend]
    if kind not in allowed:
        hint = {
            "torch": "the torch backend serves a checkpoint (.pt)",
            "onnxruntime": "the onnxruntime backend serves a checkpoint or an ONNX file",
            "tensorrt": "the tensorrt backend serves an engine (.plan); build one from a checkpoint "
                        "or ONNX with `maskrt export` (docker/entrypoint.sh does it)",
        }[backend]
        raise MaskrtError(f"backend {backend!r} cannot serve a {kind}: {hint}")
    return backend


def check_model(settings: "Settings") -> tuple[str, str, str]:
    """Cheap checks done before the server starts: ``(model, kind, backend)``; a missing file or an
    impossible backend/model/device combination is an error here, not after start-up."""
    model = model_path(settings)
    kind = model_kind(model)
    device = settings.resolved_device()
    backend = resolve_backend(settings.backend, kind, device)
    if not (kind == "checkpoint" and model.split(".")[0] in TORCHVISION_WEIGHTS_PREFIXES):
        path = Path(model)
        if not path.is_file():
            raise MaskrtError(f"{model}: no such model file" + (
                "" if settings.model else " (the bundled default model is missing from this "
                "installation; pass --model)"))
        if not os.access(path, os.R_OK):
            raise MaskrtError(f"{model}: not readable")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MaskrtError(f"device {device!r} asked for, but torch sees no CUDA GPU")
    if backend == "tensorrt" and not device.startswith("cuda"):
        raise MaskrtError("the tensorrt backend runs on a CUDA device (device is "
                          f"{device!r})")
    return model, kind, backend


def open_backend(settings: "Settings") -> "Backend":
    """Open the backend ``settings`` ask for (see the module docstring); slow (loads weights,
    may export ONNX), so the server calls it after it starts listening."""
    import torch

    model, kind, backend = check_model(settings)
    device = torch.device(settings.resolved_device())
    max_batch = settings.max_batch
    log.info("opening model", extra={"fields": {"model": model, "kind": kind, "backend": backend,
                                                "device": str(device), "max_batch": max_batch}})
    if backend == "torch":
        from maskrt.model.checkpoint import load_checkpoint
        from maskrt.server.backends.torch import TorchBackend

        return TorchBackend(load_checkpoint(model), device=device, max_batch=max_batch)
    if backend == "onnxruntime":
        from maskrt.server.backends.onnxruntime import OnnxRuntimeBackend

        onnx = model if kind == "onnx" else str(
            cached_onnx(model, Path(settings.cache_dir), max_batch))
        return OnnxRuntimeBackend(onnx, device=device, max_batch=max_batch)
    from maskrt.server.backends.tensorrt import TensorRTBackend  # imported only here

    return TensorRTBackend(model, device=device, max_batch=max_batch)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def cached_onnx(checkpoint: str, cache_dir: Path, max_batch: int) -> Path:
    """The onnxruntime-target ONNX of ``checkpoint`` for batches up to ``max_batch``:
    ``<cache_dir>/onnx/<sha256>-b<max_batch>.onnx``, exported on first use under a file lock (the
    export writes a temporary file and renames it, so concurrent servers and interrupted exports
    never see half a file)."""
    from maskrt import __version__
    from maskrt.model.checkpoint import load_checkpoint

    src = Path(checkpoint)
    sha = _sha256(src) if src.is_file() else hashlib.sha256(checkpoint.encode()).hexdigest()
    out = cache_dir / "onnx" / f"{sha}-b{max_batch}-maskrt{__version__}.onnx"
    try:
        with _locked(out.with_suffix(".lock")):
            if out.is_file():
                log.info("reusing cached ONNX", extra={"fields": {"onnx": str(out)}})
                return out
            from maskrt.export.onnx import export_onnx

            log.info("exporting the checkpoint to ONNX (once; cached)",
                     extra={"fields": {"checkpoint": checkpoint, "onnx": str(out)}})
            export_onnx(load_checkpoint(checkpoint), out, "onnxruntime", max_batch=max_batch)
    except OSError as exc:
        raise MaskrtError(f"cannot write the ONNX cache under {cache_dir}: {exc} "
                          f"(set MASKRT_CACHE_DIR to a writable directory)") from None
    return out
