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
import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision.models.detection import MaskRCNN

from maskrt.errors import MaskrtError
from maskrt.model.build import build_model
from maskrt.model.config import (
    CONFIGS,
    DEFAULT_CHECKPOINT,
    ModelConfig,
    check_label_count,
    default_classes,
    get_config,
    torchvision_weights_config,
)
from maskrt.model.peek import CLASS_KEY, FORMAT, PICKLED

FORMAT_VERSION = 1


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


def read_file(path: Path, trust_pickle: bool = False) -> object:
    """``torch.load`` without executing pickled code unless ``trust_pickle``; errors name the
    file."""
    if not path.exists():
        raise MaskrtError(f"{path}: no such file")
    if not path.is_file():
        raise MaskrtError(f"{path}: not a file")
    try:
        # TorchVersion is a str subclass that checkpoints often carry in their metadata
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            return torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # torch.load fails in many ways on foreign or damaged bytes
        if "Unsupported global" in str(exc):  # torch's weights-only loader met a pickled class
            raise MaskrtError(PICKLED.format(path=path)) from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MaskrtError(f"{path}: not a readable PyTorch checkpoint ({reason[:200]})") from None


def bare_state(payload: object) -> object:
    """The state dict inside a torchvision-style file: the dict itself, the ``model`` entry of
    torchvision's detection references, or a whole model's ``state_dict()`` (trusted pickle)."""
    if isinstance(payload, torch.nn.Module):
        return payload.state_dict()
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict):
        return payload["model"]
    return payload


def load_state_dict(model: MaskRCNN, state: dict, source: str) -> None:
    """Strict load whose error names the source and the first mismatched keys."""
    _check_tensors(state, source)
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


def load_checkpoint(
    source: str | Path, config: str | ModelConfig | None = None, trust_pickle: bool = False
) -> LoadedModel:
    """Load a maskrt checkpoint, a bare torchvision state dict (its layout named by ``config`` or
    recognised by :func:`fit_config`), or torchvision's published weights by name
    (``MaskRCNN_ResNet50_FPN_Weights.COCO_V1``). A pickled whole model is refused unless
    ``trust_pickle``."""
    name = str(source)
    weights_config = torchvision_weights_config(name)
    if weights_config is not None:
        return _load_torchvision_weights(name, weights_config)
    path = Path(source)
    payload = read_file(path, trust_pickle)
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
        payload = bare_state(payload)
        config = fit_config(payload, config, str(path))
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
    state = _check_tensors(payload["state_dict"], str(path))
    if tensors_sha256(state) != recorded:
        raise MaskrtError(
            f"{path}: the weights do not match the digest recorded when the checkpoint was saved "
            f"(the file is damaged); restore it from its source"
        )
    return True


# weights whose shape follows the class count: a checkpoint for other classes differs only here
_PER_CLASS = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")


def _check_tensors(state: object, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MaskrtError(f"{source}: does not hold a state dict of tensors")
    return state


def _layout(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the weights that do not depend on the class count."""
    return {
        k: tuple(v.shape)
        for k, v in state.items()
        if not k.startswith(_PER_CLASS) and not k.endswith("num_batches_tracked")
    }


@functools.cache
def _config_layout(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: nothing allocated, nothing initialised for real
        return _layout(build_model(cfg).state_dict())


def fit_config(state: object, config: str | ModelConfig | None, source: str) -> ModelConfig:
    """The config of a bare state dict: ``config`` when given, else the one known config whose
    layout the weights have; its classes are as many as the weights' (named by
    :func:`~maskrt.model.config.default_classes` unless they already are that many)."""
    state = _check_tensors(state, source)
    count = _class_count(state, source)
    if config is None:
        layout = _layout(state)
        fits = [name for name, cfg in CONFIGS.items() if _config_layout(cfg) == layout]
        if len(fits) != 1:
            found = f"fits {' and '.join(fits)}" if fits else "fits none of the known configs"
            raise MaskrtError(
                f"{source}: a bare state dict whose layout {found}; name it with --config "
                f"(known: {', '.join(sorted(CONFIGS))})"
            )
        config = fits[0]
    cfg = _resolve(config)
    return cfg if cfg.num_classes == count else cfg.replace(classes=default_classes(count))


def _class_count(state: dict[str, torch.Tensor], source: str) -> int:
    """The predictor's outputs (background included) of a torchvision MaskRCNN state dict."""
    if CLASS_KEY not in state:
        raise MaskrtError(f"{source}: no {CLASS_KEY}; not the state dict of a torchvision MaskRCNN")
    return int(state[CLASS_KEY].shape[0])


@dataclass(frozen=True)
class ModelOptions:
    """What a user can say about a model besides its file: ``--config`` (the layout of a bare
    state dict), ``--labels`` (class names, background excluded), ``--canvas`` (side of the
    square input) and ``--trust-pickle`` (load a pickled whole model)."""

    config: str | None = None
    labels: tuple[str, ...] | None = None
    canvas: int | None = None
    trust_pickle: bool = False

    def tag(self) -> str:
        """A short digest of what changes the model (for cache names); empty when nothing
        does."""
        said = {"config": self.config, "labels": self.labels, "canvas": self.canvas}
        if not any(v is not None for v in said.values()):
            return ""
        return hashlib.sha256(json.dumps(said, sort_keys=True).encode()).hexdigest()[:12]


def load_model(source: str | Path, options: ModelOptions | None = None) -> LoadedModel:
    """:func:`load_checkpoint` with the user's :class:`ModelOptions` applied."""
    options = options or ModelOptions()
    loaded = load_checkpoint(source, options.config, options.trust_pickle)
    cfg = loaded.config
    if options.labels is not None:
        check_label_count(options.labels, cfg.num_classes, loaded.source)
        cfg = cfg.replace(classes=("__background__", *options.labels))
    cfg = cfg.with_canvas(options.canvas)
    loaded.model.transform.min_size = (cfg.canvas,)  # torchvision's own resize (eager) follows
    loaded.model.transform.max_size = cfg.canvas
    loaded.config = cfg
    return loaded


def read_state(
    source: str, trust_pickle: bool = False
) -> tuple[dict[str, torch.Tensor], ModelConfig | None]:
    """The weights of a maskrt checkpoint, a torchvision state dict or torchvision weights by
    name, and their config where the source records one."""
    config_name = torchvision_weights_config(source)
    if config_name is not None:
        return _download_state(source)[1], get_config(config_name)
    payload = read_file(Path(source), trust_pickle)
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        cfg = ModelConfig.from_dict(payload["config"])
        return _check_tensors(payload.get("state_dict"), source), cfg
    return _check_tensors(bare_state(payload), source), None


def init_weights(model: MaskRCNN, state: dict[str, torch.Tensor], source: str) -> list[str]:
    """Copy into ``model`` every weight of ``state`` whose name and shape match (fine-tuning);
    returns the modules left as initialised (such as heads for another class count)."""
    own = model.state_dict()
    matching = {
        k: v.to(own[k].dtype) for k, v in state.items() if k in own and v.shape == own[k].shape
    }
    if not any(k.startswith("backbone.") for k in matching):
        raise MaskrtError(f"{source}: none of its backbone weights fits this model's layout")
    model.load_state_dict(matching, strict=False)
    fresh = [k for k in own if k not in matching and not k.endswith("num_batches_tracked")]
    return sorted({k.rsplit(".", 1)[0] for k in fresh})


def _resolve(config: str | ModelConfig) -> ModelConfig:
    return config if isinstance(config, ModelConfig) else get_config(config)


def _load_torchvision_weights(name: str, config: str) -> LoadedModel:
    weights, state = _download_state(name)
    cfg = get_config(config)
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


def _download_state(name: str):
    """torchvision's weights enum of ``name`` and its state dict (downloaded once, cached)."""
    from torchvision.models import get_weight

    try:
        weights = get_weight(name)
    except (ValueError, KeyError, AttributeError):
        raise MaskrtError(f"{name}: not a torchvision weights name") from None
    try:
        return weights, weights.get_state_dict(progress=True)
    except OSError as exc:
        raise MaskrtError(f"{name}: could not download torchvision weights ({exc})") from None
