"""Devices, cores and batch sizes as every command and backend sees them, in one place."""

from __future__ import annotations

import os

import torch

from maskrt.errors import MaskrtError


def resolve_device(name: str) -> str:
    """``auto`` made concrete: ``cuda`` when torch sees a GPU, else ``cpu``; others unchanged."""
    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: torch.device | str) -> torch.device:
    """``device`` as a :class:`torch.device`; a CUDA device torch cannot see is a MaskrtError."""
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MaskrtError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU")
    return device


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's cpuset, ``taskset``),
    not all the machine's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def check_max_batch(max_batch: int) -> None:
    if max_batch < 1:
        raise MaskrtError(f"max_batch must be at least 1, got {max_batch}")
