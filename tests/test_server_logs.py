"""Log lines a client cannot forge, against a real ``maskrt serve`` in each log format: a path with
``%0a`` stays on its access line, and no control, C1, line-separator or bidi character reaches the
log raw (each is escaped, so what was sent can still be read back)."""

from __future__ import annotations

import json
import re
import socket

import pytest
from server_harness import HOST, read_response, start_server

from maskrt.bench.resilience import HOSTILE_PATHS

RAW = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ +\S+ ")


@pytest.fixture(scope="module", params=["json", "text"])
def logged(request, tmp_path_factory) -> tuple[str, list[int], str]:
    """The log format, the status of each request to ``HOSTILE_PATHS`` (each decodes to a
    character that must not reach a log raw), and the server's whole log."""
    server = start_server(tmp_path_factory, f"logs-{request.param}", {"log_format": request.param})
    try:
        statuses = []
        for path in HOSTILE_PATHS:
            with socket.create_connection((HOST, server.port), timeout=20) as sock:
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode())
                statuses.append(read_response(sock)[0])
    finally:
        server.stop()
    return request.param, statuses, server.log_path.read_text(encoding="utf-8")


def decoded(path: str) -> str:
    from urllib.parse import unquote

    return unquote(path)


def test_hostile_paths_are_answered(logged):
    _, statuses, _ = logged
    assert statuses == [404] * len(HOSTILE_PATHS)


def test_no_raw_control_line_or_bidi_character_in_the_log(logged):
    _, _, log = logged
    assert [hex(ord(c)) for c in RAW.findall(log.replace("\n", ""))] == []


def test_every_line_is_one_record_and_keeps_what_was_sent(logged):
    log_format, _, log = logged
    lines = log.splitlines()
    assert not [line for line in lines if "FORGED" in line and "GET" not in line]
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # each line one whole JSON object
        logged_paths = {r["path"] for r in records if r.get("logger") == "maskrt.access"}
        assert {decoded(p) for p in HOSTILE_PATHS} <= logged_paths  # escaped, not lost
    else:
        assert [line for line in lines if not TEXT_LINE.match(line)] == []
        access = [line for line in lines if " maskrt.access GET " in line and " 404 " in line]
        assert len(access) == len(HOSTILE_PATHS)
        for line, path in zip(access, HOSTILE_PATHS, strict=True):
            want = decoded(path).encode("unicode_escape").decode("ascii")
            assert f"GET {want} 404" in line
