"""Turning a checkpoint into what the backends run: the static-shape deploy graph as ONNX for two
targets (:mod:`~maskrt.export.onnx`; ``tensorrt`` rewritten by :mod:`~maskrt.export.tensorrt_onnx`
so that TensorRT's parser maps each multi-level RoIAlign to maskrt's plugin), TensorRT engines
built from it (:mod:`~maskrt.export.tensorrt`; running them is the ``tensorrt`` backend's), and the
cache that makes each of these once per model, GPU and TensorRT version (:mod:`~maskrt.export.cache`).
``maskrt export onnx|engine`` is the command line (:mod:`~maskrt.export.cli`).
"""

from __future__ import annotations

import logging
import sys


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
