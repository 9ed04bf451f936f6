"""What every command that opens a model and serves it is told: the model and its backend, batching,
admission limits, threads, the export cache and precision. ``maskrt serve``, ``evaluate``,
``export``, ``predict`` and ``bench`` read these; the HTTP server's settings
(:class:`maskrt.server.settings.Settings`) extend them with what only HTTP needs.

Each option is an environment variable ``MASKRT_<NAME>`` and a flag of the same name (``--max-batch``
for ``MAX_BATCH``); flags win over the environment, which wins over the defaults below.
"""

from __future__ import annotations

import argparse
import os
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from maskrt.errors import MaskrtError

if TYPE_CHECKING:
    from maskrt.model.checkpoint import ModelOptions

GRAPHS_NEED_KERNELS = (
    "MASKRT_CUDA_GRAPHS (--cuda-graphs) needs MASKRT_CUDA_ROI_ALIGN (--cuda-roi-align): the "
    "composite RoIAlign and NMS wait for the GPU to size their work, which a CUDA graph cannot "
    "capture"
)
# a model's name: MODEL_NAME, DEFAULT_MODEL, a repository's model folder
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# what ModelOptions holds: the model's flags of every command that loads a checkpoint
MODEL_OPTIONS = ("config", "labels", "canvas", "trust_pickle")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/maskrt`` or ``~/.cache/maskrt``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "maskrt"


class RuntimeOptions(BaseSettings):
    """The model, the backend and the data plane's limits (docs/architecture.md, "Settings")."""

    model_config = SettingsConfigDict(env_prefix="MASKRT_", extra="ignore", frozen=True)

    model: str | None = Field(
        None,
        description="checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.plan/.engine) "
        "path; default: the bundled shapes model",
    )
    model_name: str | None = Field(
        None,
        pattern=MODEL_NAME,
        description="the name the model answers to (/v2/models/NAME, /v1/model, the metrics); "
        "default: the checkpoint's config name. KServe's ServingRuntime sets it to the "
        "InferenceService's name",
    )
    model_version: int = Field(
        1,
        ge=1,
        description="the version number the model answers to (/v2/models/NAME/versions/N, the "
        "metrics); a repository's models take theirs from their folders",
    )
    model_repository: Path | None = Field(
        None,
        description="serve every model of this folder (DIR/NAME/VERSION/model file, and an "
        "optional DIR/NAME/config.yaml), each version with its own batcher; instead of --model",
    )
    repository_poll_s: float = Field(
        0.0,
        ge=0,
        description="look at the model repository every this many seconds and load what changed "
        "(a new version folder swaps in once warm; a removed one is unloaded); 0: off",
    )
    default_model: str | None = Field(
        None,
        pattern=MODEL_NAME,
        description="the repository model of requests that name none (/predict, /v1/model); "
        "default: the only model, when there is one",
    )
    max_loaded_models: int = Field(
        8,
        ge=1,
        description="model versions loaded at once, all models together; a load past it is "
        "refused (a swap needs room for the new version while the old one serves)",
    )
    model_memory_budget_mb: int | None = Field(
        None,
        ge=1,
        description="MiB the loaded model versions may take together (estimated from each "
        "model file before its load, measured after); a load past it is refused. Unset: only "
        "the machine's available memory",
    )
    config: str | None = Field(
        None,
        description="layout of a bare state dict, e.g. resnet50_fpn (default: recognised from "
        "the weights where one known config fits)",
    )
    labels: str | None = Field(
        None,
        description="class names without the background, a comma list or a file with one per "
        "line (default: the checkpoint's; COCO's for torchvision's 91 classes, else "
        "class_1..class_N)",
    )
    canvas: int | None = Field(
        None,
        ge=32,
        description="side of the square input in pixels, a multiple of 32 (default: the config's)",
    )
    trust_pickle: bool = Field(
        False,
        description="load a pickled whole model (torch.save(model)); unpickling runs code from "
        "the file, so only for files you trust",
    )
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
        "auto",
        description="auto: tensorrt for an engine or on a GPU (there torch, or onnxruntime for an "
        "ONNX file, when TensorRT cannot serve), else onnxruntime",
    )
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N (auto: cuda when present)")
    max_batch: int = Field(8, ge=1, le=1024, description="largest batch the worker forms")
    max_delay_ms: float = Field(
        5.0,
        ge=0,
        le=60_000,
        description="longest wait for more images after the first of a batch (only while more "
        "requests are on their way)",
    )
    max_queue: int = Field(64, ge=1, description="images waiting for a batch; more get 503")
    pipeline_depth: int = Field(
        1,
        ge=0,
        le=8,
        description="batches handed to post-processing (its own thread) while the next batch "
        "is inferred; 0: every stage of a batch in the inference thread, one batch at a time",
    )
    request_timeout_s: float = Field(
        30.0, gt=0, description="a request not answered within this many seconds gets 504"
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="width x height limit, checked before decoding"
    )
    max_request_pixels: int = Field(
        64_000_000,
        ge=1,
        description="decoded pixels of all the images of one request (from their headers); "
        "more gets 413",
    )
    max_inflight_pixels: int = Field(
        256_000_000,
        ge=1,
        description="decoded pixels of all admitted requests (decoding, queued, in a batch); a "
        "request that would pass it gets 503 with Retry-After",
    )
    score_threshold: float = Field(
        0.5, ge=0, le=1, description="default of the score_threshold request parameter"
    )
    cache_dir: Path = Field(
        default_factory=default_cache_dir,
        description="where ONNX exports and TensorRT engines are cached (default ~/.cache/maskrt)",
    )
    inference_threads: int | None = Field(
        None,
        ge=1,
        description="threads of ONNX Runtime's intra-op pool (torch's with the torch backend); "
        "default: the cores this process may use",
    )
    inference_spinning: bool = Field(
        False,
        description="ONNX Runtime's intra-op threads spin-wait for work between operators (its "
        "own default); off, they sleep, leaving the cores to decoding, post-processing and "
        "anything else on the machine (faster on a small shared or virtual machine)",
    )
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch threads for pre- and post-processing beside ONNX Runtime or TensorRT "
        "(default 1: their small ops only lose time to thread hand-offs, and the cores are "
        "the inference's)",
    )
    decode_threads: int | None = Field(
        None, ge=1, description="image decoding threads (default: the usable cores, at most 4)"
    )
    engine_precision: Literal["fp16", "fp32"] = Field(
        "fp16", description="precision of TensorRT engines built from a checkpoint or an ONNX"
    )

    # the torch backend on CUDA (docs/architecture.md, "The torch backend on CUDA"); each is off
    # until a GPU run has shown it correct and faster
    torch_precision: Literal["fp32", "fp16", "bf16"] = Field(
        "fp32",
        description="the torch backend's autocast precision for the backbone and heads (boxes, "
        "scores and NMS stay fp32); fp16 needs a CUDA device, bf16 runs on the CPU too",
    )
    channels_last: bool = Field(
        False, description="the torch backend's convolutions in channels_last memory format"
    )
    cuda_graphs: bool = Field(
        False,
        description="the torch backend replays the deploy graph as one CUDA graph per batch size "
        "(a batch padded to the next captured size); needs a CUDA device and cuda_roi_align",
    )
    cuda_roi_align: bool = Field(
        False,
        description="the torch backend pools RoIs with maskrt's CUDA kernel (built with nvcc on "
        "first use) and runs NMS without a host sync; needs a CUDA device",
    )
    pinned_copies: bool = Field(
        False,
        description="decoding threads copy each image to the GPU from pinned memory on a stream "
        "of their own, overlapping the previous batch's inference; needs a CUDA device",
    )
    gpu_decode: bool = Field(
        False,
        description="the JPEGs of a request are decoded in one batched nvJPEG call instead of one "
        "call each; needs a CUDA device",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("canvas")
    @classmethod
    def _canvas(cls, value: int | None) -> int | None:
        if value is not None and value % 32:
            raise ValueError(f"must be a multiple of 32, such as {value // 32 * 32 or 32}")
        return value

    @field_validator("config", "labels")
    @classmethod
    def _model_flags(cls, value: str | None, info: ValidationInfo) -> str | None:
        """A config name that does not exist, or a labels file that does not, fails here: before
        a command loads anything."""
        from maskrt.model.config import get_config, parse_labels

        value = value.strip() or None if isinstance(value, str) else value
        if value is not None:
            check = get_config if info.field_name == "config" else parse_labels
            try:
                check(value)
            except MaskrtError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return value.strip() or None if isinstance(value, str) else value

    @model_validator(mode="after")
    def _pixel_limits(self) -> RuntimeOptions:
        if not self.max_image_pixels <= self.max_request_pixels <= self.max_inflight_pixels:
            raise ValueError(
                f"the pixel limits must grow: MAX_IMAGE_PIXELS ({self.max_image_pixels}) <= "
                f"MAX_REQUEST_PIXELS ({self.max_request_pixels}) <= MAX_INFLIGHT_PIXELS "
                f"({self.max_inflight_pixels})"
            )
        return self

    @model_validator(mode="after")
    def _repository(self) -> RuntimeOptions:
        if self.model_repository is not None:
            given = [n for n in ("model", "model_name") if getattr(self, n)]
            given += ["model_version"] if self.model_version != 1 else []
            if given:
                raise ValueError(
                    f"MODEL_REPOSITORY serves the models of a folder, named by their folders; "
                    f"drop {' and '.join(f'MASKRT_{n.upper()}' for n in given)}"
                )
        elif self.default_model or self.repository_poll_s:
            raise ValueError("DEFAULT_MODEL and REPOSITORY_POLL_S apply to MODEL_REPOSITORY")
        return self

    @model_validator(mode="after")
    def _cuda_graphs(self) -> RuntimeOptions:
        if self.cuda_graphs and not self.cuda_roi_align:
            raise ValueError(GRAPHS_NEED_KERNELS)
        return self

    def check_cuda_settings(self, device: str, backend: str) -> None:
        """A MaskrtError (exit 2, before the server listens) when a CUDA-only setting is asked
        for on another device, or a torch-backend setting for another backend: a setting that
        would silently do nothing is a mistake to report."""
        precision = f"MASKRT_TORCH_PRECISION={self.torch_precision}"
        cuda_only = [
            f"MASKRT_{name.upper()}"
            for name in ("cuda_graphs", "cuda_roi_align", "pinned_copies", "gpu_decode")
            if getattr(self, name)
        ] + ([precision] if self.torch_precision == "fp16" else [])
        if cuda_only and not device.startswith("cuda"):
            raise MaskrtError(f"{', '.join(cuda_only)} need a CUDA device (device is {device!r})")
        torch_only = [
            f"MASKRT_{name.upper()}"
            for name in ("cuda_graphs", "cuda_roi_align", "channels_last")
            if getattr(self, name)
        ] + ([precision] if self.torch_precision != "fp32" else [])
        if torch_only and backend != "torch":
            raise MaskrtError(
                f"{', '.join(torch_only)} apply to the torch backend (backend is {backend!r})"
            )

    def model_options(self) -> ModelOptions:
        """What these options say about the model besides its file."""
        from maskrt.model.checkpoint import ModelOptions
        from maskrt.model.config import parse_labels

        return ModelOptions(
            config=self.config,
            labels=parse_labels(self.labels) if self.labels else None,
            canvas=self.canvas,
            trust_pickle=self.trust_pickle,
        )

    def resolved_device(self) -> str:
        """``auto`` made concrete: ``cuda`` when torch sees a GPU, else ``cpu``."""
        from maskrt.devices import resolve_device

        return resolve_device(self.device)


Options = TypeVar("Options", bound=RuntimeOptions)
_METAVARS: dict[object, str] = {int: "N", float: "X"}


def flag_name(field: str) -> str:
    """``max_batch`` -> ``--max-batch``."""
    return "--" + field.replace("_", "-")


def add_flags(
    p: argparse.ArgumentParser, names: Iterable[str], options: type[RuntimeOptions] = RuntimeOptions
) -> None:
    """One flag per option of ``names`` (``--max-batch``), its help naming the variable and the
    default; a flag not given stays ``None``, so :func:`from_flags` leaves the option to the
    environment."""
    for name in names:
        field = options.model_fields[name]
        text = field.description or ""
        default = field.get_default(call_default_factory=True)
        if default not in (None, False, []) and "default:" not in text:
            text += f" (default: {default}; env MASKRT_{name.upper()})"
        else:
            text += f" (env MASKRT_{name.upper()})"
        kwargs: dict = {"dest": name, "default": None, "help": text}
        annotation = _without_none(field.annotation)
        args = typing.get_args(annotation)
        if typing.get_origin(annotation) is typing.Literal:
            kwargs["choices"] = list(args)
        elif annotation is int or annotation is float:
            kwargs["type"] = annotation
            kwargs["metavar"] = _METAVARS[annotation]
        elif annotation is bool:
            kwargs.update(action="store_const", const=True)
        p.add_argument(flag_name(name), **kwargs)


def _without_none(annotation: object) -> object:
    """``int`` for ``int | None``: the type a given flag has."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 and type(None) in typing.get_args(annotation) else annotation


def from_flags(
    args: argparse.Namespace,
    options: type[Options],
    names: Iterable[str] | None = None,
    **given: Any,
) -> Options:
    """``options`` from the flags given (``names`` only, when named), then ``given``, over the
    environment, over the defaults; a bad value is a MaskrtError naming the flag or the
    variable."""
    fields = options.model_fields if names is None else set(names)
    flags = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    given = {**flags, **given}
    try:
        return options(**given)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            if not err.get("loc"):  # a rule between options
                problems.append(err["msg"].removeprefix("Value error, "))
                continue
            name = str(err["loc"][0])
            where = flag_name(name) if name in given else f"MASKRT_{name.upper()}"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise MaskrtError("invalid settings: " + "; ".join(problems)) from None
