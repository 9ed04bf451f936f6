"""ONNX export of the deploy graph (``maskrt export onnx``).

:func:`export_onnx` traces :class:`maskrt.model.deploy.DeployGraph` with PyTorch's
``torch.export``-based ONNX exporter (``torch.onnx.export(dynamo=True)``, the default exporter since
PyTorch 2.9 and the one kept by 2.11 and later; the TorchScript exporter is deprecated), with a
dynamic batch of 1 to ``max_batch`` images and every other shape fixed. maskrt's two custom ops are
translated by :mod:`maskrt.export.onnx_ops`: each multi-level RoIAlign is one
``com.maskrt::MultiLevelRoIAlign`` node (an ONNX local function of standard ops), each NMS a standard
``NonMaxSuppression``.

Targets:

- ``onnxruntime``: that graph, standard ONNX ops only (the local function's body included).
- ``tensorrt``: the same graph rewritten for TensorRT by ``maskrt.export.tensorrt_onnx.rewrite``
  (``ModelProto -> ModelProto``; each ``MultiLevelRoIAlign`` node becomes the plugin node).

Every file carries ``metadata_props`` (docs/architecture.md, "The deploy graph"):
``maskrt.classes``, ``maskrt.canvas``, ``maskrt.mask_size``, ``maskrt.max_detections``,
``maskrt.config``, ``maskrt.checkpoint_sha256``, ``maskrt.target``, plus ``maskrt.max_batch``,
``maskrt.precision`` (``fp32``, or ``fp16`` for ``--fp16``: backbone and heads in float16; ``int8``
for ``--int8``), ``maskrt.mask_head`` and ``maskrt.weights_verified`` (``true`` when the
checkpoint's tensors matched their recorded digest), and passes ``onnx.checker.check_model(full_check=True)``.

``maskrt.mask_head`` says which rows the mask head runs on: ``all`` (the ``K`` rows, every shape
static: what TensorRT needs, and the ``tensorrt`` target's only choice) or ``detections`` (the first
``max(num_detections)`` rows of the batch, a data-dependent shape inside the graph; the outputs keep
the contract's padded ``[B, K, ...]`` shapes and values). ``detections`` is the ``onnxruntime``
target's default: the same answers with the mask head's work cut to the objects found.

``--int8`` (``onnxruntime`` target): ONNX Runtime static quantization of the exported graph,
calibrated on a data set (:mod:`maskrt.export.quantize`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
import warnings
from pathlib import Path

from maskrt.errors import MaskrtError
from maskrt.export.artifacts import INPUT_NAME, atomic_write, check, set_metadata_props

log = logging.getLogger("maskrt.export")

TARGETS = ("onnxruntime", "tensorrt")
MASK_HEADS = ("all", "detections")
DEFAULT_MASK_HEAD = {"onnxruntime": "detections", "tensorrt": "all"}
DEFAULT_OPSET = 18
DEFAULT_MAX_BATCH = 8


def build_onnx(
    loaded,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    canvas: int | None = None,
    max_detections: int | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    mask_head: str = "all",
    target: str = "onnxruntime",
):
    """The ``onnxruntime``-target ``onnx.ModelProto`` of a ``LoadedModel`` (``.model``,
    ``.config``, ``.sha256``), metadata included, checked. ``fp16``: backbone and heads (weights
    and activations) in float16, RoIs, box decoding, scores and NMS in float32 — the mixed
    precision that TensorRT 11's strongly typed engines take as it is; the caller's model is not
    changed. ``mask_head``: ``all`` or ``detections`` (module docstring). ``target``: the
    ``onnxruntime`` target gets the mask predictor's 2x2 ``ConvTranspose`` as a 1x1 ``Conv`` (ONNX
    Runtime's faster kernel, and one its int8 quantization covers); the ``tensorrt`` target keeps
    it and is held to TensorRT's NMS limits before anything is traced (the graph is returned
    un-rewritten: :func:`export_onnx` rewrites it)."""
    import torch

    from maskrt.export.onnx_ops import add_functions, drop_default_reductions, translation_table
    from maskrt.model.deploy import OUTPUT_NAMES, DeployGraph

    if max_batch < 1:
        raise MaskrtError(f"--max-batch must be at least 1, got {max_batch}")
    if not 16 <= opset <= 21:
        raise MaskrtError(f"--opset {opset}: supported opsets are 16 to 21")
    if canvas is not None and (canvas < 32 or canvas % 32):
        raise MaskrtError(f"--canvas {canvas}: must be a positive multiple of 32")
    if max_detections is not None and max_detections < 1:
        raise MaskrtError(f"--max-detections must be at least 1, got {max_detections}")
    if mask_head not in MASK_HEADS:
        raise MaskrtError(f"--mask-head {mask_head!r}: expected one of {', '.join(MASK_HEADS)}")
    config = loaded.config.replace(
        **({"canvas": canvas} if canvas else {}),
        **({"max_detections": max_detections} if max_detections else {}),
    )
    model = copy.deepcopy(loaded.model).float().cpu().eval()  # Module.float/cpu/half work in place
    if fp16:
        model = model.half()
    graph = DeployGraph(
        model,
        config,
        masks_on_detections=mask_head == "detections",
        upsample_as_conv=target == "onnxruntime",
    ).eval()
    if target == "tensorrt":
        from maskrt.export.tensorrt_onnx import check_nms_limits

        check_nms_limits(graph.nms_boxes)
    example_batch = 2 if max_batch >= 2 else 1
    example = torch.randint(
        0,
        256,
        (example_batch, 3, config.canvas, config.canvas),
        dtype=torch.uint8,
        generator=torch.Generator().manual_seed(0),
    )
    dynamic = None
    if max_batch >= 2:
        dynamic = {INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=max_batch)}}
    started = time.perf_counter()
    log.info(
        "tracing the deploy graph (canvas %d, batch 1-%d) and translating it to ONNX: step 1/2, "
        "tens of seconds to minutes",
        config.canvas,
        max_batch,
    )
    with warnings.catch_warnings(), torch.no_grad(), _quiet_libraries():
        warnings.simplefilter("ignore", category=FutureWarning)
        warnings.simplefilter("ignore", category=DeprecationWarning)
        program = torch.onnx.export(
            graph,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_shapes=dynamic,
            opset_version=opset,
            custom_translation_table=translation_table(),
            optimize=True,
            verbose=False,
            report=False,
        )
    if program is None:  # torch.onnx.export returns None only when it writes a file itself
        raise MaskrtError("torch.onnx.export returned no ONNX program")
    proto = drop_default_reductions(add_functions(program.model_proto, opset))
    log.info(
        "traced and translated in %.1f s; step 2/2: checking the graph",
        time.perf_counter() - started,
    )
    set_metadata(
        proto,
        config,
        loaded.sha256,
        "onnxruntime",
        max_batch,
        "fp16" if fp16 else "fp32",
        loaded.weights_verified,
    )
    set_metadata_props(proto, {"mask_head": mask_head})
    check(proto)
    return proto


@contextlib.contextmanager
def _quiet_libraries():
    """The exporter's libraries log every rewrite at INFO; keep them at WARNING during an export."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    loaded,
    out: str | os.PathLike,
    target: str = "onnxruntime",
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    canvas: int | None = None,
    max_detections: int | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    mask_head: str | None = None,
    int8_calibration: str | None = None,
) -> Path:
    """Export ``loaded`` to ``out`` for ``target``; returns the path. Written to a temporary name
    beside ``out`` and renamed, so a reader never sees half a file. ``mask_head`` defaults to the
    target's :data:`DEFAULT_MASK_HEAD`; ``int8_calibration`` (a data spec such as
    ``shapes:64:3``) quantizes the ``onnxruntime`` target to int8."""
    if target not in TARGETS:
        raise MaskrtError(f"unknown ONNX target {target!r}; known targets: {', '.join(TARGETS)}")
    mask_head = mask_head or DEFAULT_MASK_HEAD[target]
    if target == "tensorrt" and mask_head != "all":
        raise MaskrtError("--mask-head detections: the tensorrt target is static (all rows)")
    calibration = None
    if int8_calibration:
        if target != "onnxruntime" or fp16:
            raise MaskrtError("--int8 quantizes the float32 onnxruntime target (no --fp16)")
        from maskrt.model.coco import open_dataset

        calibration = open_dataset(int8_calibration)  # a bad spec fails before the export
    out = Path(out)
    started = time.perf_counter()
    proto = build_onnx(
        loaded,
        max_batch=max_batch,
        canvas=canvas,
        max_detections=max_detections,
        opset=opset,
        fp16=fp16,
        mask_head=mask_head,
        target=target,
    )
    if target == "tensorrt":
        from maskrt.export.tensorrt_onnx import rewrite

        proto = rewrite(proto)
    if calibration is not None:
        from maskrt.export.quantize import quantize_int8

        proto = quantize_int8(proto, calibration)
    atomic_write(out, proto.SerializeToString())
    size = out.stat().st_size
    log.info(
        "wrote %s: %.1f MB, target %s, %s, mask head on %s rows, checkpoint sha256 %s, "
        "max batch %d, %.1f s",
        out,
        size / 1e6,
        target,
        "int8" if int8_calibration else "fp16" if fp16 else "fp32",
        mask_head,
        loaded.sha256,
        max_batch,
        time.perf_counter() - started,
    )
    return out


def set_metadata(
    proto,
    config,
    sha256: str,
    target: str,
    max_batch: int,
    precision: str,
    weights_verified: bool,
) -> None:
    set_metadata_props(
        proto,
        {
            "classes": json.dumps(list(config.classes)),
            "canvas": str(config.canvas),
            "mask_size": str(config.mask_size),
            "max_detections": str(config.max_detections),
            "config": config.to_json(),
            "checkpoint_sha256": sha256,
            "target": target,
            "precision": precision,
            "max_batch": str(max_batch),
            "weights_verified": "true" if weights_verified else "false",
        },
    )
    proto.producer_name = "maskrt"
    from maskrt import __version__ as version

    proto.producer_version = str(version)
