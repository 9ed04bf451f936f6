"""``maskrt export``: one subcommand per artefact, ``onnx`` and ``engine`` (:mod:`maskrt.export`)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from maskrt.cli.model import add_model_arguments
from maskrt.runtime.options import MODEL_OPTIONS, RuntimeOptions, from_flags


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (and build TensorRT engines)",
        description="Export a model for deployment.",
    )
    kinds = parser.add_subparsers(dest="export_command", required=True, metavar="ARTEFACT")
    register_onnx(kinds)
    register_engine(kinds)


def register_onnx(kinds: argparse._SubParsersAction) -> None:
    from maskrt.export.onnx import DEFAULT_MAX_BATCH, DEFAULT_OPSET, MASK_HEADS, TARGETS

    p = kinds.add_parser(
        "onnx",
        help="the static-shape deploy graph as ONNX (dynamic batch)",
        description="Export the deploy graph of a checkpoint to ONNX: uint8 images [B, 3, S, S] in, "
        "fixed-size detections out, B from 1 to --max-batch. The file passes "
        "onnx.checker (full check) and carries maskrt.* metadata.",
    )
    add_model_arguments(p)
    p.add_argument("--out", type=Path, required=True, help="ONNX file to write")
    p.add_argument(
        "--target",
        choices=TARGETS,
        default="onnxruntime",
        help="onnxruntime: standard ONNX ops only; tensorrt: RoIAlign as the maskrt plugin",
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"largest batch the graph takes (default {DEFAULT_MAX_BATCH})",
    )
    p.add_argument(
        "--max-detections", type=int, help="K, detections per image (default: the config's)"
    )
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})"
    )
    p.add_argument(
        "--fp16",
        action="store_true",
        help="backbone and heads in float16, boxes and NMS in float32 (for TensorRT 11, "
        "whose engines keep the ONNX's precision)",
    )
    p.add_argument(
        "--mask-head",
        choices=MASK_HEADS,
        help="rows the mask head runs on: all K (static shapes; the tensorrt target's only "
        "choice) or only the detections found (the onnxruntime target's default)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="onnxruntime target: static int8 quantization (QDQ, per-channel), calibrated on "
        "--calibration",
    )
    p.add_argument(
        "--calibration",
        default="shapes:64:3",
        help="data set the int8 ranges are calibrated on: shapes:COUNT:SEED or a COCO "
        "directory / annotations JSON (default shapes:64:3, for the bundled model)",
    )
    p.set_defaults(func=_onnx)


def _onnx(args: argparse.Namespace) -> int:
    from maskrt.export.onnx import export_onnx
    from maskrt.model.checkpoint import load_model
    from maskrt.runtime.backends import model_path

    console_logging()
    options = from_flags(args, RuntimeOptions, ("model", *MODEL_OPTIONS))
    loaded = load_model(model_path(options), options.model_options())
    out = export_onnx(
        loaded,
        args.out,
        args.target,
        max_batch=args.max_batch,
        max_detections=args.max_detections,
        opset=args.opset,
        fp16=args.fp16,
        mask_head=args.mask_head,
        int8_calibration=args.calibration if args.int8 else None,
    )
    print(out)
    return 0


def register_engine(kinds: argparse._SubParsersAction) -> None:
    from maskrt.export.tensorrt import DEFAULT_WORKSPACE_GIB

    p = kinds.add_parser(
        "engine",
        help="a TensorRT engine from a tensorrt-target ONNX (needs a GPU and TensorRT)",
        description="Build a TensorRT engine (one optimization profile, batch 1 to --max-batch) from "
        "`maskrt export onnx --target tensorrt` output, with maskrt's RoIAlign plugin "
        "loaded, and write its JSON sidecar (<out>.json). The Docker entrypoint caches "
        "engines per ONNX, GPU, TensorRT version, precision and batch.",
    )
    p.add_argument("--onnx", type=Path, required=True, help="tensorrt-target ONNX file")
    p.add_argument("--out", type=Path, required=True, help="engine (.plan) to write")
    p.add_argument(
        "--fp16",
        action="store_true",
        help="an fp16 engine: needs the fp16 ONNX (`export onnx --fp16`), whose precision it keeps",
    )
    p.add_argument("--max-batch", type=int, help="largest batch (default: the ONNX's)")
    p.add_argument(
        "--tf32",
        action="store_true",
        help="let TensorRT run float32 layers in TF32 (faster, but float32 answers then differ "
        "from the other backends'; off by default)",
    )
    p.add_argument(
        "--workspace",
        type=float,
        default=DEFAULT_WORKSPACE_GIB,
        help=f"builder workspace in GiB (default {DEFAULT_WORKSPACE_GIB:g})",
    )
    p.add_argument(
        "--timing-cache",
        type=Path,
        help="timing cache file, read if present and written after the build",
    )
    p.add_argument("--device", default="cuda", help="CUDA device to build for (default: cuda)")
    p.set_defaults(func=_engine)


def _engine(args: argparse.Namespace) -> int:
    from maskrt.export.tensorrt import build_engine

    console_logging()
    sidecar = build_engine(
        args.onnx,
        args.out,
        fp16=args.fp16,
        max_batch=args.max_batch,
        workspace_gib=args.workspace,
        timing_cache=args.timing_cache,
        device=args.device,
        tf32=args.tf32,
    )
    print(
        json.dumps(
            {
                "engine": str(args.out),
                **{
                    k: sidecar[k]
                    for k in (
                        "precision",
                        "tf32",
                        "max_batch",
                        "tensorrt_version",
                        "gpu_name",
                        "compute_capability",
                        "build_seconds",
                    )
                },
            }
        )
    )
    return 0


def console_logging() -> None:
    """maskrt's INFO lines on stderr for the ``maskrt export`` commands (when nothing configured
    logging); the exporter's libraries' chatter stays at WARNING."""
    for name in ("onnxscript", "onnx_ir", "torch.onnx", "torch.export", "torch._export"):
        logging.getLogger(name).setLevel(logging.WARNING)
    log = logging.getLogger("maskrt")
    if not log.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
