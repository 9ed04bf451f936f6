"""``maskrt bench``: load and component benchmarks.

``maskrt bench load`` is the HTTP load generator (:mod:`maskrt.bench.load`). Component benchmarks
that are scripts with a ``main(argv)`` are reachable as ``maskrt bench <name> [their flags]`` via
:data:`SCRIPTS` (add one line there for a new one).
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module, help); each module has main(argv: list[str] | None) -> int
SCRIPTS: dict[str, tuple[str, str]] = {
    "postprocess": (
        "maskrt.bench.postprocess",
        "post-processing of 100 masks, ours against torchvision",
    ),
    "roi-align-gpu": ("maskrt.bench.roi_align_gpu", "the RoIAlign plugin kernel on the GPU"),
    "deploy-gpu": (
        "maskrt.bench.deploy_gpu",
        "the torch backend's deploy graph on a GPU against torchvision eager (CUDA settings: flags)",
    ),
    "parity": (
        "maskrt.bench.parity",
        "per-detection parity of two backends through the serving pipeline",
    ),
    "v2": (
        "maskrt.bench.v2",
        "Open Inference Protocol (tritonclient) against /predict, JSON/base64 against binary",
    ),
    "peers": (
        "maskrt.bench.peers",
        "maskrt serve against a naive FastAPI server and LitServe, one at a time",
    ),
    "chart": (
        "maskrt.bench.chart",
        "redraw the chart (throughput, p50/p95 against concurrency) of a load, peers or v2 report",
    ),
    "json-encode": (
        "maskrt.bench.json_encode",
        "serialising a /predict answer, json against orjson",
    ),
    "onnx-compare": (
        "maskrt.bench.onnx_compare",
        "several ONNX files of one model (mask head, int8) interleaved in ONNX Runtime",
    ),
    "resilience": (
        "maskrt.bench.resilience",
        "overload, slow clients, oversized requests and a soak against a `maskrt serve` it starts",
    ),
    "repository": (
        "maskrt.bench.repository",
        "a version swap under load, RSS after an unload, two models under mixed load",
    ),
    "onnx-cpu": (
        "maskrt.bench.onnx_cpu",
        "R50-FPN deploy graph in ONNX Runtime (CPU) against torchvision eager and its stock ONNX",
    ),
}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="load and component benchmarks")
    kinds = p.add_subparsers(dest="bench", required=True, metavar="BENCH")

    from maskrt.bench.load import __doc__ as load_doc
    from maskrt.bench.load import add_arguments

    load = kinds.add_parser(
        "load",
        help="HTTP load against a running `maskrt serve` (loopback)",
        description=load_doc.split("\n\n")[0],
    )
    add_arguments(load)
    load.set_defaults(func=_load)

    for name, (module, text) in SCRIPTS.items():
        s = kinds.add_parser(name, help=text, add_help=False, prefix_chars="\x00")
        s.add_argument("rest", nargs=argparse.REMAINDER)
        s.set_defaults(func=_script(module))


def _load(args: argparse.Namespace) -> int:
    from maskrt.bench.load import run

    return run(args)


def _script(module: str):
    def call(args: argparse.Namespace) -> int:
        return int(importlib.import_module(module).main(args.rest) or 0)

    return call
