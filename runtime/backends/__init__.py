"""Backends that run the deploy graph, and :func:`open_backend`, which picks and opens one.

The model file decides what each backend does with it:

| model | torch | onnxruntime | tensorrt |
| --- | --- | --- | --- |
| checkpoint (``.pt``/``.pth``, or torchvision weights by name) | serves it | exports it to ONNX
  once (cached) | exports a tensorrt-target ONNX and builds an engine for this GPU once (cached) |
| ``.onnx`` | no | serves it | builds an engine once (cached); a tensorrt-target ONNX |
| ``.plan`` / ``.engine`` | no | no | serves it (built for this GPU and TensorRT) |

The caches live under ``MASKRT_CACHE_DIR`` (:mod:`maskrt.export.cache`). ``backend=auto`` picks
``tensorrt`` for an engine or on a CUDA device, else ``onnxruntime``. On a CUDA device, for a
checkpoint or an ONNX file, TensorRT is only tried: when it cannot serve (not installed, the
plugin library fails to load, the engine build or load fails) the model is served on the same
device by the torch backend (a checkpoint) or ONNX Runtime (an ONNX file, which torch cannot
run), and the backend says why (:class:`~maskrt.runtime.backends.base.Fallback`). A backend asked
by name, and an engine, which only TensorRT runs, fail with their error instead. Nothing of
TensorRT is imported unless TensorRT is tried.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from maskrt.errors import MaskrtError, describe
from maskrt.model.config import DEFAULT_CHECKPOINT, torchvision_weights_config

if TYPE_CHECKING:
    import torch

    from maskrt.runtime.backends.base import Backend
    from maskrt.runtime.options import RuntimeOptions

log = logging.getLogger("maskrt.backends")

CHECKPOINT_SUFFIXES = (".pt", ".pth")
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".plan", ".engine")


def model_path(options: RuntimeOptions) -> str:
    """``options.model`` or the bundled shapes checkpoint."""
    return options.model or str(DEFAULT_CHECKPOINT)


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


def tensorrt_device(device: str) -> bool:
    """Whether TensorRT runs on ``device`` (a CUDA device), so that ``backend=auto`` tries it.

    Also the fallback's one test seam: ``tests/fallback_site/sitecustomize.py``, which a test puts
    on a real ``maskrt serve``'s path with a broken ``tensorrt`` package beside it, makes this true
    on a CPU machine, so that the real TensorRT path runs and fails as it does on a GPU host without
    TensorRT. A module on the path, not a setting: no user can turn it on by mistake."""
    return device.startswith("cuda")


def resolve_backend(backend: str, kind: str, device: str) -> str:
    """The backend that will be tried first for a model of ``kind`` on ``device`` when ``backend``
    is asked (:func:`fallback_backend` says what serves when it fails)."""
    if backend == "auto":
        if kind == "engine" or tensorrt_device(device):
            return "tensorrt"
        return "onnxruntime"
    check_backend_serves(backend, kind)
    return backend


def check_backend_serves(backend: str, kind: str) -> None:
    """A MaskrtError when the named ``backend`` cannot serve a model of ``kind`` (auto serves
    every kind)."""
    if backend == "auto":
        return
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


def fallback_backend(asked: str, kind: str, backend: str) -> str | None:
    """What serves, on the same device, when ``backend`` (resolved from ``asked``) fails to open:
    for ``auto``'s TensorRT the torch backend (a checkpoint) or ONNX Runtime (an ONNX file, which
    torch cannot run); nothing for an engine, which only TensorRT runs, nor for a backend asked
    by name, which must fail with its error."""
    if asked != "auto" or backend != "tensorrt" or kind == "engine":
        return None
    return "torch" if kind == "checkpoint" else "onnxruntime"


def check_model_file(options: RuntimeOptions) -> tuple[str, str]:
    """``(model, kind)``, checked without importing torch (so in well under a second): a model
    file that is missing, unreadable or of an unknown kind, or model flags for a file that fixes
    them, is an error before anything slow starts."""
    model = model_path(options)
    kind = model_kind(model)
    if kind != "checkpoint" and (options.config or options.labels or options.canvas):
        raise MaskrtError(
            f"{model}: --config, --labels and --canvas apply to a checkpoint; an {kind} file "
            f"fixes them (export it again with them)"
        )
    check_backend_serves(options.backend, kind)
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
    if kind == "checkpoint":
        check_checkpoint(options, model)
    return model, kind


def check_checkpoint(options: RuntimeOptions, model: str) -> None:
    """A damaged or pickled checkpoint, and ``--labels`` against the class count it records, read
    from the file without torch; torchvision's weights by name have their config's."""
    from maskrt.model.config import check_label_count, get_config, parse_labels
    from maskrt.model.peek import class_count

    weights_config = torchvision_weights_config(model)
    if weights_config is not None:
        count: int | None = get_config(weights_config).num_classes
    else:
        count = class_count(Path(model), options.config, options.trust_pickle)
    if count is not None and options.labels:
        check_label_count(parse_labels(options.labels), count, model)


def check_model(options: RuntimeOptions) -> tuple[str, str, str]:
    """Cheap checks done before the server starts: ``(model, kind, backend)``; a missing or
    unreadable file, ``--labels`` for another class count (read from the file, not by building the
    model) or an impossible backend/model/device combination is an error here, not after
    start-up."""
    from maskrt.devices import check_device

    model, kind = check_model_file(options)
    device = options.resolved_device()
    backend = resolve_backend(options.backend, kind, device)
    check_device(device)
    fallback = fallback_backend(options.backend, kind, backend)
    # the torch settings apply to auto's TensorRT through its torch fallback
    options.check_cuda_settings(device, "torch" if fallback == "torch" else backend)
    if options.cuda_roi_align:
        from maskrt.plugins.torch_ext import cuda_toolkit

        cuda_toolkit()  # the kernels are built at start-up: nvcc must be there
    # a TensorRT with a fallback is only tried when the model opens; one without must work
    if backend == "tensorrt" and fallback is None:
        if not tensorrt_device(device):
            raise MaskrtError(f"the tensorrt backend runs on a CUDA device (device is {device!r})")
        from maskrt.plugins import import_tensorrt

        import_tensorrt()  # raises the error that says where TensorRT comes from
    return model, kind, backend


def open_backend(options: RuntimeOptions) -> Backend:
    """Open the backend ``options`` ask for, or its fallback (see the module docstring); slow
    (loads weights, may export an ONNX or build a TensorRT engine the first time), so the server
    calls it after it starts listening."""
    import torch

    model, kind, backend = check_model(options)
    device = torch.device(options.resolved_device())
    instead = fallback_backend(options.backend, kind, backend)
    log.info(
        "opening model",
        extra={
            "fields": {
                "model": model,
                "kind": kind,
                "backend": backend,
                "fallback": instead,
                "device": str(device),
                "max_batch": options.max_batch,
            }
        },
    )

    def opener(name: str) -> Callable[[], Backend]:
        return lambda: open_named(name, options, model, kind, device)

    if instead is None:
        return opener(backend)()
    return with_fallback(backend, opener(backend), instead, opener(instead))


def with_fallback(
    wanted: str, first: Callable[[], Backend], serving: str, instead: Callable[[], Backend]
) -> Backend:
    """``first()``, which opens the ``wanted`` backend; when it raises, ``instead()``, which opens
    ``serving``, marked with the reason, which is logged once at ERROR (with the traceback when it
    is not a MaskrtError). Any Exception counts: a server that stays up on ``serving`` and says it
    is degraded beats one that does not come up; when ``instead()`` fails too, its error is the
    load's."""
    try:
        return first()
    except Exception as exc:
        error = describe(exc)
        log.error(
            "the %s backend failed, serving on the %s backend instead: %s",
            wanted,
            serving,
            error,
            exc_info=None if isinstance(exc, MaskrtError) else exc,
            extra={"fields": {"wanted": wanted, "backend": serving}},
        )
    from maskrt.runtime.backends.base import Fallback

    backend = instead()
    backend.fallback = Fallback(wanted, f"the {wanted} backend failed: {error}")
    return backend


def open_named(
    backend: str, options: RuntimeOptions, model: str, kind: str, device: torch.device
) -> Backend:
    """The ``backend`` (torch, onnxruntime or tensorrt) of ``model`` on ``device``."""
    max_batch = options.max_batch
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
    if backend == "onnxruntime":
        from maskrt.export.cache import cached_onnx
        from maskrt.runtime.backends.onnxruntime import OnnxRuntimeBackend

        onnx = (
            model
            if kind == "onnx"
            else str(
                cached_onnx(
                    model, Path(options.cache_dir), max_batch, options=options.model_options()
                )
            )
        )
        return OnnxRuntimeBackend(
            onnx,
            device=device,
            max_batch=max_batch,
            threads=options.inference_threads,
            spinning=options.inference_spinning,
        )
    return open_tensorrt(options, model, kind, device)


def open_tensorrt(options: RuntimeOptions, model: str, kind: str, device: torch.device) -> Backend:
    """The tensorrt backend: TensorRT and the plugin library first (cheap, and what fails most
    often), then the tensorrt-target ONNX and the engine for this GPU (cached; minutes the first
    time)."""
    from maskrt import plugins
    from maskrt.runtime.backends.tensorrt import TensorRTBackend  # TensorRT only from here on

    plugins.import_tensorrt()
    plugins.load()
    max_batch = options.max_batch
    cache_dir = Path(options.cache_dir)
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
