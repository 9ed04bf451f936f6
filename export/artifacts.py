"""The files export makes and the backends read, as formats: written whole or not at all, the
``maskrt.*`` metadata of an ONNX file, and a TensorRT engine's JSON sidecar.

A leaf of ``export``: it imports no other maskrt module but the errors, so the exporters, the cache
and the runtime's backends all take these from here.

Every ONNX file carries ``metadata_props`` ``maskrt.classes`` (a JSON list of class names, index =
class id), ``maskrt.canvas``, ``maskrt.mask_size``, ``maskrt.max_detections``, ``maskrt.config``,
``maskrt.checkpoint_sha256`` and ``maskrt.target`` (docs/architecture.md, "Contracts"). An engine
has a sidecar ``<engine>.json`` with the same fields plus the TensorRT version, the GPU's name and
compute capability, and the precision.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from maskrt.errors import MaskrtError

INPUT_NAME = "images"  # the deploy graph's one input, in ONNX files and engines
METADATA_PREFIX = "maskrt."


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it): readers never see
    half a file, and a failed write leaves nothing behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        tmp.replace(path)
    except OSError as exc:
        raise MaskrtError(f"cannot write {path}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# ONNX metadata


def set_metadata_props(proto: Any, values: dict[str, str]) -> None:
    """Set ``maskrt.<key>`` entries of ``proto.metadata_props`` (replacing existing ones)."""
    keep = [p for p in proto.metadata_props if p.key not in {METADATA_PREFIX + k for k in values}]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    for key, value in values.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_PREFIX + key, str(value)


def read_metadata(proto_or_path: Any) -> dict[str, str]:
    """``maskrt.*`` metadata of an ONNX file or ``ModelProto`` (keys without the prefix)."""
    import onnx

    if isinstance(proto_or_path, (str, os.PathLike)):
        proto_or_path = onnx.load_model(str(proto_or_path), load_external_data=False)
    return maskrt_entries({p.key: p.value for p in proto_or_path.metadata_props})


def maskrt_entries(metadata: dict[str, str]) -> dict[str, str]:
    """The ``maskrt.*`` entries of ONNX metadata, keys without the prefix."""
    return {
        k[len(METADATA_PREFIX) :]: v for k, v in metadata.items() if k.startswith(METADATA_PREFIX)
    }


def check(proto: Any) -> None:
    """``onnx.checker.check_model(full_check=True)``; a failure is a MaskrtError."""
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise MaskrtError(f"the exported ONNX graph does not pass onnx.checker: {exc}") from None


# ---------------------------------------------------------------------------------------------
# TensorRT engine sidecars


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{engine}.json")


def read_sidecar(engine: str | os.PathLike) -> dict:
    """An engine's JSON sidecar; a MaskrtError when it is missing or malformed."""
    path = sidecar_path(engine)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MaskrtError(
            f"{engine}: no sidecar {path.name} beside it; build engines with "
            f"`maskrt export engine`, which writes one"
        ) from None
    except (OSError, ValueError) as exc:
        raise MaskrtError(f"{path}: unreadable engine sidecar ({exc})") from None
    if not isinstance(data, dict):
        raise MaskrtError(f"{path}: unreadable engine sidecar (not a JSON object)")
    return data


def gpu_description(device: Any) -> dict[str, str]:
    """Name and compute capability (``"9.0"``) of a CUDA device, as the sidecar records them."""
    import torch

    major, minor = torch.cuda.get_device_capability(device)
    return {
        "gpu_name": torch.cuda.get_device_name(device),
        "compute_capability": f"{major}.{minor}",
    }
