"""Shared fixtures and the gpu / tensorrt markers' skip rules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from server_harness import serving_checkpoint

from maskrt.plugins import tensorrt_importable

# session fixtures of the TensorRT plugin tests (headers, stand-in libnvinfer, CMake build, exports)
pytest_plugins = ["tensorrt_toolchain"]


@pytest.fixture(scope="session")
def checkpoint() -> Path:
    """The model the server tests serve: the shipped shapes model."""
    return serving_checkpoint()


@pytest.fixture
def exact_float32():
    """float32 on CUDA as on the CPU: cuDNN's TF32 convolutions (PyTorch's default) round
    products to 10 mantissa bits, enough to reorder near-equal detections against the CPU."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    no_trt = pytest.mark.skip(
        reason="needs TensorRT: the 'tensorrt' Python package is not installed "
        "(it runs in the GPU Docker image)"
    )
    has_gpu = torch.cuda.is_available()
    # imported to tell (a stubs-only tensorrt passes find_spec); only where a GPU could use it
    has_trt = has_gpu and tensorrt_importable()
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "tensorrt" in item.keywords and not (has_trt and has_gpu):
            item.add_marker(no_trt)
