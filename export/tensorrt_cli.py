"""``maskrt export engine``: a TensorRT engine from a tensorrt-target ONNX."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(kinds: argparse._SubParsersAction) -> None:
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
    from maskrt.export import console_logging
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
    )
    print(
        json.dumps(
            {
                "engine": str(args.out),
                **{
                    k: sidecar[k]
                    for k in (
                        "precision",
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
