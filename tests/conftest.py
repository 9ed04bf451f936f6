"""Shared fixtures and the gpu / tensorrt markers' skip rules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from server_harness import serving_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model the server tests serve (the shipped shapes model, else random weights)."""
    return serving_checkpoint(tmp_path_factory.mktemp("model"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    no_gpu = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    no_trt = pytest.mark.skip(
        reason="needs TensorRT: the 'tensorrt' Python package is not installed "
        "(it runs in the GPU Docker image)"
    )
    has_gpu = torch.cuda.is_available()
    has_trt = importlib.util.find_spec("tensorrt") is not None
    for item in items:
        if "gpu" in item.keywords and not has_gpu:
            item.add_marker(no_gpu)
        if "tensorrt" in item.keywords and not (has_trt and has_gpu):
            item.add_marker(no_trt)
