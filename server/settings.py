"""The HTTP server's settings: the runtime's options (:class:`~maskrt.runtime.options.RuntimeOptions`)
and what only the HTTP front door needs (listening, keys, CORS, connection limits, logs).

Environment variables ``MASKRT_<NAME>``, the same names as ``maskrt serve`` flags. Precedence:
command-line flags, then the environment, then the defaults. List settings (``API_KEYS``,
``CORS_ORIGINS``, ``FORWARDED_ALLOW_IPS``) are comma-separated (a JSON list is accepted too).
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from maskrt.runtime.options import RuntimeOptions


class Settings(RuntimeOptions):
    """Everything ``maskrt serve`` can be told (docs/architecture.md, "Settings")."""

    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1, description="request body size limit")
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
    min_body_rate: int = Field(
        8192,
        ge=0,
        description="bytes per second a request body must average once HEADER_TIMEOUT_S has "
        "passed since its headers; a slower one gets 408 and the connection is closed (0: off)",
    )
    v2_any_content_type: bool = Field(
        False,
        description="take /v2 JSON under any Content-Type, not only application/json: for "
        "trusted networks only (a form or text body is one any web page can send cross-origin "
        "without a preflight)",
    )
    forwarded_allow_ips: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="comma-separated addresses of the proxies whose "
        "X-Forwarded-For and X-Forwarded-Proto are believed; empty: none, the peer's address is "
        "the client's",
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
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="serve the Open Inference Protocol over gRPC (Triton's "
        "inference.GRPCInferenceService) on this port (same host); 0: off",
    )
    log_format: Literal["auto", "json", "text"] = Field(
        "auto",
        description="log line format; auto: text on a terminal, JSON elsewhere (a file, a pipe, "
        "a container's log)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log level")

    @field_validator("api_keys", "cors_origins", "forwarded_allow_ips", mode="before")
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

    @model_validator(mode="after")
    def _ports(self) -> Settings:
        if self.metrics_port is not None and self.metrics_port == self.port:
            raise ValueError(f"METRICS_PORT must differ from PORT ({self.port})")
        if self.grpc_port and self.grpc_port in (self.port, self.metrics_port):
            raise ValueError(f"GRPC_PORT must differ from PORT and METRICS_PORT ({self.grpc_port})")
        return self
