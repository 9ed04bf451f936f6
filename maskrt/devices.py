"""Device names and batch sizes as every command and backend checks them, in one place."""

from __future__ import annotations

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


def check_max_batch(max_batch: int) -> None:
    if max_batch < 1:
        raise MaskrtError(f"max_batch must be at least 1, got {max_batch}")
