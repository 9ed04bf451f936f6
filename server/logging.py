"""Structured logs: one JSON object per line (or plain text), every line of a request carrying its
request id.

The request id lives in a context variable set by the request middleware; log calls from a
request's task pick it up automatically. Extra fields go in ``extra={"fields": {...}}``.

What a client sends (a path, a header) ends up in log lines, so neither format writes a character
that :meth:`str.isprintable` refuses (C0 and C1 controls, line and paragraph separators, bidi
overrides and other format characters) raw: JSON writes it as ``\\uXXXX``, text as a Python escape
(``\\n``, ``\\x1b``, ``\\u202e``). A path with ``%0a`` cannot forge a line, nor ``%1b`` drive a
terminal, nor U+202E reorder what a reader sees.
"""

from __future__ import annotations

import contextvars
import datetime
import json
import logging
import re
import sys

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "maskrt_request_id", default=None
)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def escape(text: str) -> str:
    """``text`` with a backslash and every character that is not printable written as a Python
    escape, so that it stays on one line and shows what was sent."""
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(c if c.isprintable() and c != "\\" else repr(c)[1:-1] for c in text)


def _json_escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # a UTF-16 surrogate pair, as JSON spells characters past U+FFFF
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


_UNPRINTABLE = re.compile("[^ -~]")  # candidates; only those that are not printable are escaped


def json_safe(line: str) -> str:
    """A JSON text with every character that is not printable escaped (``json.dumps`` escapes C0
    controls only)."""
    if line.isprintable():
        return line
    return _UNPRINTABLE.sub(
        lambda m: m.group() if m.group().isprintable() else _json_escape(m), line
    )


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
        return json_safe(json.dumps(entry, default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``time level logger message key=value ...``, a value with a space or a quote in quotes; a
    traceback on the lines below, each line escaped."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        record.message = escape(record.getMessage())
        record.asctime = self.formatTime(record)
        line = self.formatMessage(record)
        fields = _fields(record)
        if fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        traces = [self.formatException(record.exc_info)] if record.exc_info else []
        if record.stack_info:
            traces.append(self.formatStack(record.stack_info))
        for trace in traces:
            line += "\n" + "\n".join(escape(part) for part in trace.split("\n"))
        return line


def _text_value(value: object) -> str:
    text = escape(str(value))
    if text and not any(c in text for c in ' "='):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def configure_logging(log_format: str = "json", level: str = "info") -> None:
    """Route the root logger (and uvicorn's loggers) to stderr in ``log_format``: ``json``,
    ``text``, or ``auto``, text for a person at a terminal and JSON for a log collector."""
    if log_format == "auto":
        log_format = "text" if sys.stderr.isatty() else "json"
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
