"""Server settings: environment variables ``MASKRT_<NAME>``, the same names as ``maskrt serve`` flags.

Precedence: command-line flags, then the environment, then the defaults below. List settings
(``API_KEYS``, ``CORS_ORIGINS``) are comma-separated (a JSON list is accepted too).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from maskrt.cli.model import OPTION_HELP, TRUST_PICKLE_HELP

if TYPE_CHECKING:
    from maskrt.model.checkpoint import ModelOptions

_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/maskrt`` or ``~/.cache/maskrt``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "maskrt"


class Settings(BaseSettings):
    """Everything ``maskrt serve`` can be told (DESIGN.md, "Settings")."""

    model_config = SettingsConfigDict(env_prefix="MASKRT_", extra="ignore", frozen=True)

    model: str | None = Field(
        None,
        description="checkpoint (.pt), ONNX (.onnx) or TensorRT engine (.plan/.engine) "
        "path; default: the bundled shapes model",
    )
    config: str | None = Field(None, description=OPTION_HELP["--config"])
    labels: str | None = Field(None, description=OPTION_HELP["--labels"])
    canvas: int | None = Field(None, ge=32, description=OPTION_HELP["--canvas"])
    trust_pickle: bool = Field(False, description=TRUST_PICKLE_HELP)
    backend: Literal["auto", "torch", "onnxruntime", "tensorrt"] = Field(
        "auto", description="auto picks tensorrt on a GPU with TensorRT, else onnxruntime"
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
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="request body size limit")
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
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        repr=False,
        description="comma-separated API keys; when set, /predict* and /v1/model need one "
        "(Authorization: Bearer KEY or X-API-Key: KEY)",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated allowed CORS origins (off when empty)"
    )
    max_header_bytes: int = Field(
        16 * 1024,
        ge=1024,
        le=1024 * 1024,
        description="request line plus headers size limit; longer heads get 431",
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="a connection without complete request headers this long gets 408 and is "
        "closed",
    )
    max_connections: int = Field(
        1024,
        ge=1,
        description="open connections; a request on one beyond them gets 503 (the open-file "
        "limit is raised to fit at start)",
    )
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port")
    metrics_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="serve /metrics on this port (same host) instead of PORT, so that only "
        "PORT need be exposed; unset: /metrics on PORT",
    )
    log_format: Literal["json", "text"] = Field("json", description="log line format")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")
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

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        for key in value:
            if len(key) < 8 or any(c.isspace() for c in key):
                raise ValueError("each API key needs at least 8 characters and no whitespace")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        value = value.strip().lower()
        if not _DEVICE.match(value):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return value

    @field_validator("model")
    @classmethod
    def _model(cls, value: str | None) -> str | None:
        return value.strip() or None if isinstance(value, str) else value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if not self.max_image_pixels <= self.max_request_pixels <= self.max_inflight_pixels:
            raise ValueError(
                f"the pixel limits must grow: MAX_IMAGE_PIXELS ({self.max_image_pixels}) <= "
                f"MAX_REQUEST_PIXELS ({self.max_request_pixels}) <= MAX_INFLIGHT_PIXELS "
                f"({self.max_inflight_pixels})"
            )
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(f"METRICS_PORT must differ from PORT ({self.port})")
        return self

    def model_options(self) -> ModelOptions:
        """What these settings say about the model besides its file."""
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


def flag_name(field: str) -> str:
    """``max_batch`` -> ``--max-batch``."""
    return "--" + field.replace("_", "-")
