"""Checkpoints: one file with config, class names, state dict and provenance.

Loading also takes a bare torchvision state dict (plus a config name) and torchvision's published
COCO weights by name. Every load is strict: a wrong, corrupt or mismatched file is an error that
names the file and the first offending keys, never a silent partial load. Checkpoints written by
maskrt record a sha256 of their tensors (``tensors_sha256``), checked on every load: a flipped bit
is an error, not a model that answers wrong. Other checkpoints carry none; their
:attr:`LoadedModel.weights_verified` is false.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN

from maskrt.errors import MaskrtError
from maskrt.model.build import build_model
from maskrt.model.config import ModelConfig, get_config, torchvision_weights_config

FORMAT = "maskrt-checkpoint"
FORMAT_VERSION = 1
DEFAULT_CHECKPOINT = Path(__file__).resolve().parent / "weights" / "shapes.pt"


@dataclass
class LoadedModel:
    """A model ready for inference (eval mode) and what it is."""

    model: MaskRCNN
    config: ModelConfig
    sha256: str
    source: str
    meta: dict = field(default_factory=dict)
    weights_verified: bool = False  # the tensors matched a digest recorded when they were saved

    @property
    def version(self) -> str:
        return self.sha256[:12]


def default_checkpoint() -> Path:
    """The shipped shapes model."""
    return DEFAULT_CHECKPOINT


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and bytes (independent of the file format)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        value = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{value.dtype}|{tuple(value.shape)}|".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def save_checkpoint(
    path: Path,
    model: MaskRCNN,
    config: ModelConfig,
    provenance: dict,
    half: bool = False,
    training: dict | None = None,
) -> Path:
    """Write a self-describing checkpoint; ``half`` stores float tensors as fp16 (for shipping),
    ``training`` adds optimizer state for ``--resume``."""
    state = {
        k: v.detach().to("cpu", torch.float16 if half and v.is_floating_point() else v.dtype)
        for k, v in model.state_dict().items()
    }
    provenance = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "torch": str(torch.__version__),
        **provenance,
    }
    payload = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "config": config.to_dict(),
        "state_dict": state,
        "tensors_sha256": tensors_sha256(state),
        "provenance": provenance,
    }
    if training is not None:
        payload["training"] = training
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_file(path: Path) -> object:
    """``torch.load`` without executing pickled code; errors name the file."""
    if not path.exists():
        raise MaskrtError(f"{path}: no such file")
    if not path.is_file():
        raise MaskrtError(f"{path}: not a file")
    try:
        # TorchVersion is a str subclass that checkpoints often carry in their metadata
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load fails in many ways on foreign or damaged bytes
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MaskrtError(f"{path}: not a readable PyTorch checkpoint ({reason[:200]})") from None


def load_state_dict(model: MaskRCNN, state: dict, source: str) -> None:
    """Strict load whose error names the source and the first mismatched keys."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MaskrtError(f"{source}: does not hold a state dict of tensors")
    expected = model.state_dict()
    incoming = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in expected if k not in incoming and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in incoming if k not in expected]
    wrong_shape = [
        f"{k} {tuple(incoming[k].shape)} vs {tuple(expected[k].shape)}"
        for k in incoming
        if k in expected and incoming[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (first: {', '.join(missing[:3])})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {', '.join(unexpected[:3])})")
    if wrong_shape:
        problems.append(
            f"{len(wrong_shape)} shape mismatches (first: {'; '.join(wrong_shape[:3])})"
        )
    if problems:
        raise MaskrtError(f"{source}: weights do not fit the model config: " + "; ".join(problems))
    cast = {k: v.to(expected[k].dtype) if v.is_floating_point() else v for k, v in incoming.items()}
    model.load_state_dict(cast, strict=False)  # keys already checked; BN counters may be absent


def load_checkpoint(source: str | Path, config: str | ModelConfig | None = None) -> LoadedModel:
    """Load a maskrt checkpoint, a bare torchvision state dict (``config`` names its layout), or
    torchvision's published weights by name (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``)."""
    name = str(source)
    weights_config = torchvision_weights_config(name)
    if weights_config is not None:
        return _load_torchvision_weights(name, weights_config)
    path = Path(source)
    payload = read_file(path)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        if payload.get("version") != FORMAT_VERSION:
            raise MaskrtError(
                f"{path}: checkpoint format version {payload.get('version')} "
                f"is not supported (this maskrt reads {FORMAT_VERSION})"
            )
        cfg = ModelConfig.from_dict(payload["config"])
        if config is not None:
            cfg = _resolve(config)
        state, meta = payload["state_dict"], payload.get("provenance", {})
        verified = _verify(path, payload)
    else:
        if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
            payload = payload["model"]  # torchvision's detection references save {"model": ...}
        if config is None:
            raise MaskrtError(
                f"{path}: a bare state dict; name its layout with a config "
                f"(e.g. --config resnet50_fpn)"
            )
        cfg, state, meta, verified = _resolve(config), payload, {}, False
    model = build_model(cfg)
    load_state_dict(model, state, str(path))
    return LoadedModel(model.eval(), cfg, file_sha256(path), str(path), meta, verified)


def _verify(path: Path, payload: dict) -> bool:
    """True when the payload's tensors match their recorded digest, False when none is recorded
    (checkpoints written before digests); a mismatch is an error."""
    recorded = payload.get("tensors_sha256")
    if recorded is None:
        return False
    state = payload["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MaskrtError(f"{path}: does not hold a state dict of tensors")
    if tensors_sha256(state) != recorded:
        raise MaskrtError(
            f"{path}: the weights do not match the digest recorded when the checkpoint was saved "
            f"(the file is damaged); restore it from its source"
        )
    return True


def _resolve(config: str | ModelConfig) -> ModelConfig:
    return config if isinstance(config, ModelConfig) else get_config(config)


def _load_torchvision_weights(name: str, config: str) -> LoadedModel:
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise MaskrtError(f"{name}: not a torchvision weights name") from None
    cfg = get_config(config)
    try:
        state = weights.get_state_dict(progress=True)
    except OSError as exc:
        raise MaskrtError(f"{name}: could not download torchvision weights ({exc})") from None
    model = build_model(cfg)
    load_state_dict(model, state, name)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    digest = (
        file_sha256(cached)
        if cached.is_file()
        else hashlib.sha256(weights.url.encode()).hexdigest()
    )
    meta = {"dataset": "COCO 2017", "source": weights.url, "metrics": weights.meta.get("_metrics")}
    return LoadedModel(model.eval(), cfg, digest, name, meta)
