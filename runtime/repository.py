"""A model repository on disk: ``DIR/<name>/<version>/<model file>``, Triton's layout.

Each model folder may hold a ``config.yaml`` with what ``maskrt serve``'s model flags give
(``config``, ``labels``, ``canvas``, ``backend``, ``max_batch``, ...) and a version policy (which of
its versions to serve: the latest N, all, or specific ones). :func:`scan` reads the folder as it is
now; :func:`read_model` reads one model, and :func:`options_for` turns one of its versions into the
:class:`~maskrt.runtime.options.RuntimeOptions` its data plane opens. Nothing here opens a model:
a bad entry (no model file, two of them, a config that does not parse) is a :class:`ModelEntry`
with an ``error``, so that one broken model never keeps the others from serving.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from maskrt.errors import MaskrtError
from maskrt.runtime.options import MODEL_NAME, RuntimeOptions

MODEL_FILE_SUFFIXES = (".pt", ".pth", ".onnx", ".plan", ".engine")
CONFIG_FILE = "config.yaml"
NAME = re.compile(MODEL_NAME)
_VERSION = re.compile(r"^[1-9][0-9]{0,8}$")


class VersionPolicy(BaseModel):
    """Which versions of a model are served: the ``latest`` N (Triton's default, 1), ``all``, or
    the ``specific`` ones listed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latest: int | None = Field(None, ge=1)
    all: bool = False
    specific: tuple[int, ...] | None = None

    def select(self, versions: list[int]) -> list[int]:
        """The versions of ``versions`` this policy serves, ascending."""
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        return ordered[-(self.latest or 1) :]

    def describe(self) -> str:
        if self.all:
            return "all"
        if self.specific is not None:
            return "specific " + ", ".join(map(str, self.specific))
        return f"latest {self.latest or 1}"


class ModelConfig(BaseModel):
    """``DIR/<name>/config.yaml``: the model's flags and its version policy; every key optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    config: str | None = None
    labels: str | None = None  # a comma list or a file path, as --labels takes
    canvas: int | None = None
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] | None = None
    max_batch: int | None = None
    max_delay_ms: float | None = None
    max_queue: int | None = None
    engine_precision: Literal["fp16", "fp32"] | None = None
    trust_pickle: bool | None = None
    version_policy: VersionPolicy = VersionPolicy()

    @field_validator("labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        return value

    @field_validator("version_policy", mode="before")
    @classmethod
    def _policy(cls, value: object) -> object:
        """``all``, ``{latest: 2}``, ``{specific: [1, 3]}``, or Triton's JSON forms
        (``{"latest": {"num_versions": 2}}``, ``{"all": {}}``, ``{"specific": {"versions":
        [1]}}``)."""
        if value == "all":
            return {"all": True}
        if isinstance(value, dict):
            out = dict(value)
            if isinstance(out.get("latest"), dict):
                out["latest"] = out["latest"].get("num_versions", 1)
            if isinstance(out.get("specific"), dict):
                out["specific"] = out["specific"].get("versions", [])
            if isinstance(out.get("all"), dict):
                out["all"] = True
            return out
        return value

    def overrides(self) -> dict[str, Any]:
        """The runtime options this config sets."""
        return {
            k: v for k, v in self.model_dump(exclude={"version_policy"}).items() if v is not None
        }


# Triton's model configuration JSON keys (a load request's override) and where they go
_TRITON_KEYS = {"max_batch_size": "max_batch", "version_policy": "version_policy"}


def parse_override(text: str, source: str = "the load request's config") -> ModelConfig:
    """A load request's config override: a JSON object of ``config.yaml``'s keys, or of Triton's
    model configuration (``max_batch_size``, ``version_policy``,
    ``dynamic_batching.max_queue_delay_microseconds``; ``name`` and ``platform`` are ignored)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise MaskrtError(f"{source}: not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise MaskrtError(f"{source}: must be a JSON object")
    data = {k: v for k, v in data.items() if k not in ("name", "platform", "backend_name")}
    batching = data.pop("dynamic_batching", None)
    if isinstance(batching, dict) and "max_queue_delay_microseconds" in batching:
        data["max_delay_ms"] = int(batching["max_queue_delay_microseconds"]) / 1000
    return _validated({_TRITON_KEYS.get(k, k): v for k, v in data.items()}, source)


def _validated(data: object, source: str) -> ModelConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise MaskrtError(f"{source}: must be a mapping of settings")
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise MaskrtError(f"{source}: {problems}") from None


@dataclass
class ModelEntry:
    """One model folder as found on disk. ``versions``: version -> its model file; ``error``: why
    the model cannot be served (then nothing of it loads)."""

    name: str
    path: Path
    config: ModelConfig = field(default_factory=ModelConfig)
    versions: dict[int, Path] = field(default_factory=dict)
    error: str | None = None

    def served_versions(self, config: ModelConfig | None = None) -> list[int]:
        """The versions the version policy (of ``config``, default the entry's) serves."""
        return (config or self.config).version_policy.select(list(self.versions))


def scan(root: Path) -> dict[str, ModelEntry]:
    """Every model folder of the repository ``root``, by name."""
    if not root.is_dir():
        raise MaskrtError(f"{root}: no such model repository (a folder of model folders)")
    try:
        names = sorted(p.name for p in root.iterdir() if p.is_dir() and NAME.match(p.name))
    except OSError as exc:
        raise MaskrtError(f"{root}: cannot list the model repository ({exc.strerror})") from None
    return {name: read_model(root, name) for name in names}


def read_model(root: Path, name: str) -> ModelEntry:
    """The model folder ``root/name``: its config and its version folders. A folder that is not
    there is an error for the caller (``MaskrtError``); one that is there but broken is an entry
    with its ``error``."""
    path = root / name
    if not NAME.match(name) or not path.is_dir():
        raise MaskrtError(f"no model {name!r} in the repository {root}")
    entry = ModelEntry(name, path)
    try:
        entry.config = _read_config(path / CONFIG_FILE)
        for version_dir in path.iterdir():
            if version_dir.is_dir() and _VERSION.match(version_dir.name):
                entry.versions[int(version_dir.name)] = _model_file(version_dir)
        if not entry.versions:
            raise MaskrtError(
                f"{path}: no version folder (put the model file in {path}/1/, a positive integer)"
            )
        if not entry.served_versions():
            raise MaskrtError(
                f"{path}: the version policy ({entry.config.version_policy.describe()}) selects "
                f"none of the versions {sorted(entry.versions)}"
            )
    except MaskrtError as exc:
        entry.error = str(exc)
    except OSError as exc:  # a folder or file the server may not read
        entry.error = f"{exc.filename or path}: cannot read it ({exc.strerror})"
    return entry


def _read_config(path: Path) -> ModelConfig:
    if not path.exists():
        return ModelConfig()
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise MaskrtError(f"{path}: cannot read it ({exc})") from None
    config = _validated(data, str(path))
    labels = config.labels
    if labels is not None and "," not in labels and (path.parent / labels).is_file():
        config = config.model_copy(update={"labels": str(path.parent / labels)})
    return config


def _model_file(version_dir: Path) -> Path:
    files = [
        p
        for p in sorted(version_dir.iterdir())
        if p.is_file() and p.suffix.lower() in MODEL_FILE_SUFFIXES
    ]
    if len(files) != 1:
        kinds = ", ".join(MODEL_FILE_SUFFIXES)
        found = "none" if not files else ", ".join(p.name for p in files)
        raise MaskrtError(f"{version_dir}: needs exactly one model file ({kinds}); found {found}")
    return files[0]


def options_for(
    base: RuntimeOptions, entry: ModelEntry, version: int, config: ModelConfig | None = None
) -> RuntimeOptions:
    """The options one version's data plane opens: the server's, with the model's config (or a
    load request's ``config``) over them. Validated, so a bad value is a ``MaskrtError``."""
    overrides = (config or entry.config).overrides()
    # the repository's own settings at their defaults, given rather than left out: left out, a
    # settings class reads them again from the environment (MASKRT_MODEL_REPOSITORY)
    server_wide = ("model_repository", "default_model", "repository_poll_s")
    values = {
        **base.model_dump(),
        **{k: type(base).model_fields[k].default for k in server_wide},
        **overrides,
        "model": str(entry.versions[version]),
        "model_name": entry.name,
        "model_version": version,
    }
    try:
        return type(base).model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in exc.errors()
        )
        raise MaskrtError(f"{entry.path}: {problems}") from None
