"""The OpenAPI schema says what the server accepts: schemathesis (a real third-party client) runs
every check it has against a real ``maskrt serve``, positive data acceptance included, with a
bounded number of examples per operation, and finds nothing."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from server_harness import start_server
from tools import program

EXAMPLES = 15  # per operation and phase: a short run; the seed makes it repeatable


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory, "openapi", {"max_batch": 2})
    yield server
    server.stop()


def test_schemathesis_finds_nothing(server, tmp_path):
    cli = program("schemathesis")
    hooks = Path(__file__).with_name("schemathesis_hooks.py")  # uploads are real images
    proc = subprocess.run(
        [
            cli,
            "run",
            f"{server.url}/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "1",
            "--workers",
            "1",
            "--generation-database",
            "none",
            "--request-timeout",
            "60",
            # the Open Inference Protocol routes follow the protocol's own spec, not OpenAPI
            # bodies: tritonclient and kserve test them (test_oip_http.py)
            "--exclude-path-regex",
            "^/v2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)},
    )
    assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-2000:]
    assert "No issues found" in proc.stdout
    with server.client() as c:
        assert c.get("/readyz").status_code == 200
