"""The warnings libraries raise by design in maskrt's normal runs, silenced once for every command
(:func:`maskrt.cli.main`); importing this module changes nothing, and it imports no library."""

from __future__ import annotations

import warnings


def ignore_expected_warnings() -> None:
    """Silence the warnings maskrt's own use of its libraries raises by design (the tests list the
    same filters in pyproject.toml):

    - torch warns when it wraps a read-only buffer (Pillow's pixels, the upload's bytes, a training
      sample) without copying; such a tensor is never written in place, and a copy would cost time;
    - torchvision >= 0.29 warns on every ``decode_jpeg`` call that its decoders are deprecated.
    """
    warnings.filterwarnings(
        "ignore", message="The given NumPy array is not writable", category=UserWarning
    )
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torchvision\.io")
