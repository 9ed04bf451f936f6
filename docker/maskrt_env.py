#!/usr/bin/env python3
"""What the container entrypoint needs to know about this machine, one question per subcommand.

Installed in the images as ``maskrt-env`` (docker/entrypoint.sh calls it):

``maskrt-env gpu [INDEX]``
    ``<gpu name>\\t<compute capability, e.g. 90>\\t<TensorRT version>`` of CUDA device INDEX.
    Exit 3 when no usable CUDA device is visible, 4 when the tensorrt package cannot be imported.
"""

from __future__ import annotations

import sys

NO_GPU, NO_TENSORRT = 3, 4


def gpu(index: int) -> int:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - the images always have torch
        print(f"cannot import torch: {exc}", file=sys.stderr)
        return NO_GPU
    if not torch.cuda.is_available():
        print("torch.cuda.is_available() is False", file=sys.stderr)
        return NO_GPU
    count = torch.cuda.device_count()
    if index >= count:
        print(f"CUDA device {index} asked for, {count} visible", file=sys.stderr)
        return NO_GPU
    tensorrt, problem = _tensorrt()
    if tensorrt is None:
        print(problem, file=sys.stderr)
        return NO_TENSORRT
    major, minor = torch.cuda.get_device_capability(index)
    print(f"{torch.cuda.get_device_name(index)}\t{major}{minor}\t{tensorrt.__version__}")
    return 0


def _tensorrt():
    """(TensorRT's bindings, None) or (None, why not). Imported to tell: a stubs-only ``tensorrt``
    would pass ``importlib.util.find_spec``."""
    try:
        import tensorrt
    except ImportError as exc:
        return None, f"cannot import tensorrt: {exc}"
    if not hasattr(tensorrt, "Runtime"):
        return None, f"tensorrt at {getattr(tensorrt, '__path__', '?')} has no bindings (stubs?)"
    return tensorrt, ""


def main(argv: list[str]) -> int:
    if argv[:1] == ["gpu"] and len(argv) <= 2:
        return gpu(int(argv[1]) if len(argv) == 2 else 0)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
