"""Structured logs: one JSON object per line (or plain text), every line of a request carrying its
request id.

The request id lives in a context variable set by the request middleware; log calls from a
request's task pick it up automatically. Extra fields go in ``extra={"fields": {...}}``.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import sys

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "maskrt_request_id", default=None
)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def _fields(record: logging.LogRecord) -> dict:
    out = {}
    rid = getattr(record, "request_id", None) or request_id_var.get()
    if rid:
        out["request_id"] = rid
    extra = getattr(record, "fields", None)
    if isinstance(extra, dict):
        out.update(extra)
    for key, value in vars(record).items():  # plain extra={...} keys too
        if key not in _RESERVED and key not in ("fields", "request_id", "color_message"):
            out[key] = value
    return out


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id"?, ...fields, "exc"?}``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(_fields(record))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = _fields(record)
        if fields:
            tail = " ".join(f"{k}={v}" for k, v in fields.items())
            head, sep, rest = line.partition("\n")  # keep a traceback below the fields
            line = f"{head} {tail}{sep}{rest}"
        return line


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route the root logger (and uvicorn's loggers) to stderr in ``log_format``."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "fastapi"):
        log = logging.getLogger(name)
        log.handlers.clear()
        log.propagate = True
        log.setLevel(level.upper())
    logging.captureWarnings(True)
