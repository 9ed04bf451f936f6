"""maskrt's CUDA kernels as a PyTorch extension: the torch backend's ``cuda_roi_align`` setting,
tests and benchmarks on a GPU.

``load_extension()`` compiles ``roi_align/roi_align_kernel.cu`` (the kernel the TensorRT plugin launches),
``nms/grouped_nms_torch.cu`` (grouped NMS without a host sync) and ``roi_align/roi_align_torch.cpp``
(the pybind11 binding of both) with ``torch.utils.cpp_extension.load``; no TensorRT file takes part.
Compiling needs nvcc; running needs a CUDA device.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from maskrt.errors import MaskrtError

SRC = Path(__file__).resolve().parent / "roi_align"
NMS = Path(__file__).resolve().parent / "nms"
SOURCES = [SRC / "roi_align_kernel.cu", NMS / "grouped_nms_torch.cu", SRC / "roi_align_torch.cpp"]


def _cuda_root(detected: str | None) -> Path | None:
    """The CUDA toolkit root with the runtime headers. torch infers CUDA_HOME from nvcc's location,
    which is wrong when ``nvcc`` on PATH is a wrapper script (e.g. /usr/local/bin/nvcc)."""
    candidates = [
        os.environ.get("CUDA_HOME"),
        os.environ.get("CUDA_PATH"),
        detected,
        "/usr/local/cuda",
    ]
    for candidate in candidates:
        if (
            candidate
            and (Path(candidate) / "include" / "cuda_runtime_api.h").is_file()
            and (Path(candidate) / "bin" / "nvcc").is_file()
        ):
            return Path(candidate)
    return None


def cuda_toolkit() -> Path:
    """The CUDA toolkit the extension is built with; a MaskrtError saying how to point at one
    when there is none (checked before a server that needs the extension starts listening)."""
    from torch.utils import cpp_extension

    root = _cuda_root(cpp_extension.CUDA_HOME)
    if root is None:
        raise MaskrtError(
            "building maskrt's CUDA extension (RoIAlign and NMS kernels) needs the CUDA toolkit "
            "(bin/nvcc, include/cuda_runtime_api.h); set CUDA_HOME to its directory"
        )
    return root


@functools.cache
def load_extension(build_directory: str | None = None, verbose: bool = False):
    """Build (once per process and build directory; torch caches across processes) and import the
    extension module. ``build_directory`` defaults to torch's extension cache. Set
    ``TORCH_CUDA_ARCH_LIST`` (e.g. ``"9.0"``) to build for fewer architectures than torch's default."""
    from torch.utils import cpp_extension

    cpp_extension.CUDA_HOME = str(cuda_toolkit())  # what torch's build reads: nvcc, include, lib
    if build_directory is not None:
        os.makedirs(build_directory, exist_ok=True)
    return cpp_extension.load(
        name="maskrt_roi_align_ext",
        sources=[str(s) for s in SOURCES],
        extra_include_paths=[str(SRC), str(NMS)],
        extra_cflags=["-O3"],
        extra_cuda_cflags=["-O3"],
        build_directory=build_directory,
        verbose=verbose,
    )
