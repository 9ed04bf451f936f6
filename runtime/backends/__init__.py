"""Backends that run the deploy graph, and :func:`open_backend`, which picks and opens one.

The model file decides what each backend does with it:

| model | torch | onnxruntime | tensorrt |
| --- | --- | --- | --- |
| checkpoint (``.pt``/``.pth``, or torchvision weights by name) | serves it | exports it to ONNX
  once (cached) | exports a tensorrt-target ONNX and builds an engine for this GPU once (cached) |
| ``.onnx`` | no | serves it | builds an engine once (cached); a tensorrt-target ONNX |
| ``.plan`` / ``.engine`` | no | no | serves it (built for this GPU and TensorRT) |

The caches live under ``MASKRT_CACHE_DIR`` (:mod:`maskrt.export.cache`). ``backend=auto`` picks
``tensorrt`` for an engine, or on a CUDA device where the ``tensorrt`` package is installed, else
``onnxruntime``; on a CUDA device it imports ``tensorrt`` to tell whether TensorRT works. Otherwise
nothing of TensorRT is imported unless the TensorRT backend is opened.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt.devices import check_device
from maskrt.errors import MaskrtError
from maskrt.model.config import torchvision_weights_config

if TYPE_CHECKING:
    from maskrt.runtime.backends.base import Backend
    from maskrt.runtime.options import RuntimeOptions

log = logging.getLogger("maskrt.backends")

CHECKPOINT_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")


def model_path(options: RuntimeOptions) -> str:
    """``options.model`` or the bundled shapes checkpoint."""
    if options.model:
        return options.model
    from maskrt.model.checkpoint import default_checkpoint

    return str(default_checkpoint())


def model_kind(model: str) -> str:
    """``checkpoint``, ``onnx`` or ``engine``, from the name; errors name the accepted kinds."""
    if torchvision_weights_config(model) is not None:
        return "checkpoint"
    suffix = Path(model).suffix.lower()
    if suffix in CHECKPOINT_SUFFIXES:
        return "checkpoint"
    if suffix in ONNX_SUFFIXES:
        return "onnx"
    if suffix in ENGINE_SUFFIXES:
        return "engine"
    raise MaskrtError(
        f"{model}: unknown model file type {suffix or '(no suffix)'!r}; expected a "
        f"checkpoint (.pt, .pth), an ONNX file (.onnx) or a TensorRT engine "
        f"(.plan, .engine)"
    )


def tensorrt_available() -> bool:
    """A CUDA GPU and TensorRT's Python bindings (imported to tell: a stubs package would pass a
    ``find_spec`` test; without a GPU nothing of TensorRT is imported)."""
    import torch

    from maskrt.plugins import tensorrt_importable

    return torch.cuda.is_available() and tensorrt_importable()


def resolve_backend(backend: str, kind: str, device: str) -> str:
    """The backend that will serve a model of ``kind`` on ``device`` when ``backend`` is asked."""
    if backend == "auto":
        if kind == "engine" or (device.startswith("cuda") and tensorrt_available()):
            return "tensorrt"
        return "onnxruntime"
    allowed = {
        "torch": ("checkpoint",),
        "onnxruntime": ("checkpoint", "onnx"),
        "tensorrt": ("checkpoint", "onnx", "engine"),
    }[backend]
    if kind not in allowed:
        hint = {
            "torch": "the torch backend serves a checkpoint (.pt)",
            "onnxruntime": "the onnxruntime backend serves a checkpoint or an ONNX file",
        }[backend]
        what = {"checkpoint": "a checkpoint", "onnx": "an ONNX file", "engine": "an engine"}[kind]
        raise MaskrtError(f"backend {backend!r} cannot serve {what}: {hint}")
    return backend


def check_model(options: RuntimeOptions) -> tuple[str, str, str]:
    """Cheap checks done before the server starts: ``(model, kind, backend)``; a missing file or an
    impossible backend/model/device combination is an error here, not after start-up."""
    model = model_path(options)
    kind = model_kind(model)
    if kind != "checkpoint" and options.model_options().tag():
        raise MaskrtError(
            f"{model}: --config, --labels and --canvas apply to a checkpoint; an {kind} file "
            f"fixes them (export it again with them)"
        )
    device = options.resolved_device()
    backend = resolve_backend(options.backend, kind, device)
    if torchvision_weights_config(model) is None:
        path = Path(model)
        if not path.is_file():
            raise MaskrtError(
                f"{model}: no such model file"
                + (
                    ""
                    if options.model
                    else " (the bundled default model is missing from this "
                    "installation; pass --model)"
                )
            )
        if not os.access(path, os.R_OK):
            raise MaskrtError(f"{model}: not readable")
    check_device(device)
    options.check_cuda_settings(device, backend)
    if options.cuda_roi_align:
        from maskrt.plugins.torch_ext import cuda_toolkit

        cuda_toolkit()  # the kernels are built at start-up: nvcc must be there
    if backend == "tensorrt" and not device.startswith("cuda"):
        raise MaskrtError(f"the tensorrt backend runs on a CUDA device (device is {device!r})")
    if backend == "tensorrt":
        from maskrt.plugins import import_tensorrt

        import_tensorrt()  # raises the error that says where TensorRT comes from
    return model, kind, backend


def open_backend(options: RuntimeOptions) -> Backend:
    """Open the backend ``options`` ask for (see the module docstring); slow (loads weights, may
    export an ONNX or build a TensorRT engine the first time), so the server calls it after it
    starts listening."""
    import torch

    model, kind, backend = check_model(options)
    device = torch.device(options.resolved_device())
    max_batch = options.max_batch
    log.info(
        "opening model",
        extra={
            "fields": {
                "model": model,
                "kind": kind,
                "backend": backend,
                "device": str(device),
                "max_batch": max_batch,
            }
        },
    )
    set_torch_threads(options, backend)
    if backend == "torch":
        from maskrt.model.checkpoint import load_model
        from maskrt.runtime.backends.torch import TorchBackend

        loaded = load_model(model, options.model_options())
        return TorchBackend(
            loaded,
            device=device,
            max_batch=max_batch,
            precision=options.torch_precision,
            channels_last=options.channels_last,
            cuda_roi_align=options.cuda_roi_align,
            cuda_graphs=options.cuda_graphs,
        )
    cache_dir = Path(options.cache_dir)
    if backend == "onnxruntime":
        from maskrt.export.cache import cached_onnx
        from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

        onnx = (
            model
            if kind == "onnx"
            else str(cached_onnx(model, cache_dir, max_batch, options=options.model_options()))
        )
        return OnnxRuntimeBackend(
            onnx,
            device=device,
            max_batch=max_batch,
            threads=options.inference_threads,
            spinning=options.inference_spinning,
        )
    from maskrt.runtime.backends.tensorrt import TensorRTBackend  # TensorRT only from here on

    if kind != "engine":
        from maskrt.export.artifacts import read_metadata
        from maskrt.export.cache import cached_engine, cached_onnx

        # fp16 engines come from the fp16 export on every TensorRT (boxes and NMS stay fp32); a
        # given ONNX keeps its own precision
        if kind == "onnx":
            onnx = model
            fp16 = read_metadata(onnx).get("precision") == "fp16"
        else:
            fp16 = options.engine_precision == "fp16"
            onnx = str(
                cached_onnx(
                    model,
                    cache_dir,
                    max_batch,
                    "tensorrt",
                    fp16=fp16,
                    options=options.model_options(),
                )
            )
        model = str(cached_engine(onnx, cache_dir, max_batch=max_batch, fp16=fp16, device=device))
    return TensorRTBackend(model, device=device, max_batch=max_batch)


def set_torch_threads(options: RuntimeOptions, backend: str) -> None:
    """torch's intra-op threads for this process: the inference's with the torch backend,
    ``torch_threads`` (default 1) for the pre- and post-processing beside the others, so torch
    and ONNX Runtime do not oversubscribe the cores."""
    import torch

    from maskrt.devices import usable_cores

    if backend == "torch":
        threads = options.inference_threads or usable_cores()
    else:
        threads = options.torch_threads or 1
    torch.set_num_threads(threads)
