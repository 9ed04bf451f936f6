"""What a checkpoint file holds, read without torch: its class count, for the checks a command does
before anything slow starts (``--labels`` against the model, a damaged or pickled file).

``torch.save`` writes a zip whose ``data.pkl`` is a pickle of the object with each tensor as a call
of ``torch._utils._rebuild_tensor_v2(storage, offset, size, ...)``. Reading it with an unpickler
that answers every global with a stand-in (nothing from the file runs) gives the tensors' shapes
and the plain data around them in milliseconds, where importing torch takes seconds.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

from maskrt.errors import MaskrtError
from maskrt.model.config import get_config

PICKLED = (
    "{path}: a pickled Python object (e.g. torch.save(model)), not a state dict; it was not "
    "loaded, because unpickling runs code from the file. If you trust it, convert it once with "
    "`maskrt convert --model {path} --out model.pt --trust-pickle`, or pass --trust-pickle"
)
# the predictor's weight: its rows are the classes, background included
CLASS_KEY = "roi_heads.box_predictor.cls_score.weight"
FORMAT = "maskrt-checkpoint"  # the "format" entry of a maskrt checkpoint


# where a state dict's globals live (storages, dtypes, tensors, sizes, version strings); a class
# from anywhere else (torchvision's MaskRCNN, torch.nn's modules, the user's) is a pickled object
_PLAIN = {"torch", "torch._utils", "torch.storage", "torch.torch_version", "collections"}


class TensorShape(tuple):
    """A tensor of the file, as its shape."""


class _StandIn:
    """Whatever else the pickle names (storages, dtypes, version strings): nothing of it is
    needed, and nothing of it runs."""

    def __new__(cls, *args: Any, **kwargs: Any) -> _StandIn:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def _tensor(storage: Any, offset: int, size: tuple[int, ...], *rest: Any) -> TensorShape:
    return TensorShape(size)


def _parameter(data: Any, *rest: Any) -> Any:
    return data


class _Reader(pickle.Unpickler):
    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self.foreign: list[str] = []  # classes beyond torch's and the standard containers

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _tensor
        if (module, name) == ("torch._utils", "_rebuild_parameter"):
            return _parameter
        if module not in _PLAIN:
            self.foreign.append(f"{module}.{name}")
        return _StandIn

    def persistent_load(self, pid: Any) -> None:
        return None  # a storage: its bytes are not read


def read_index(path: Path) -> tuple[object, bool] | None:
    """``(the object with its tensors as shapes, whether it pickles classes of its own)`` of a
    ``torch.save`` zip; None for the legacy format (before torch 1.6), which only torch reads."""
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as file:
                if file.read(1) == b"\x80":  # the legacy format opens with a pickle
                    return None
            raise ValueError("neither torch.save's zip nor its legacy format")
        with zipfile.ZipFile(path) as archive:
            pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            if len(pickles) != 1:
                raise ValueError("no data.pkl in the zip")
            with archive.open(pickles[0]) as file:
                reader = _Reader(file)
                return reader.load(), bool(reader.foreign)
    except Exception as exc:  # a damaged zip or pickle fails in many ways
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MaskrtError(f"{path}: not a readable PyTorch checkpoint ({reason[:200]})") from None


def class_count(path: Path, config: str | None = None, trust_pickle: bool = False) -> int | None:
    """The class count (background included) loading the checkpoint at ``path`` gives: its
    recorded config's, or ``config``'s when named (a maskrt checkpoint), or its predictor's rows (a
    torchvision state dict, whatever ``config`` names its layout). None where only
    loading it can say (the legacy format; a pickled model, which ``trust_pickle`` lets load). A
    damaged file, or a pickled model without ``trust_pickle``, is a MaskrtError."""
    index = read_index(path)
    if index is None:
        return None
    payload, pickled = index
    if pickled:
        if trust_pickle:
            return None
        raise MaskrtError(PICKLED.format(path=path))
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if config:
            return get_config(config).num_classes
        classes = payload.get("config", {}).get("classes")
        return len(classes) if isinstance(classes, list | tuple) else None
    state = payload  # a torchvision state dict, or the "model" entry of its references' files
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        state = payload["model"]
    weight = state.get(CLASS_KEY) if isinstance(state, dict) else None
    if not isinstance(weight, TensorShape) or not weight:
        raise MaskrtError(f"{path}: no {CLASS_KEY}; not the state dict of a torchvision MaskRCNN")
    return weight[0]
