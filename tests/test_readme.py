"""README's commands, run as written, in order, as a new user would: each ``bash`` block in a fresh
``bash`` that has only ``PATH`` (without any virtual environment on it) and ``HOME``, from the
repository root; each ``python`` block with ``.venv/bin/python``, as README says. A block that
starts the server (``make serve``, ``maskrt serve``) runs in the background until ``/readyz``
answers 200, for the blocks after it, and is stopped before the next one starts and at the end.

A block whose fence carries a reason (```` ```bash slow ````, ```` ```bash docker ````, and
```` ```bash ci ```` for ``make test``) is not run; the test lists each one it skipped, and why, in
a warning (pytest's warnings summary). Afterwards the clone must be as it was: no example writes
into tracked files or leaves files git does not ignore.

It needs the ``.venv`` that ``make test`` makes (then ``make serve`` only starts the server)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.tools import missing

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
URL = "http://127.0.0.1:8000"
# what a fence's word after the language says about a block not run here
NOT_RUN = {
    "ci": "is CI's own command, the test suite this test is part of",
    "slow": "takes minutes to hours on a CPU, past this test's budget (README says so in it)",
    "docker": "needs a Docker engine, which this test does not assume",
}
RUN = ("bash", "python")
FENCE = re.compile(r"^```(\w*)[ \t]*(\S*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SERVER = re.compile(r"^\s*(make serve|(\S*/)?maskrt serve)\b", re.M)


@dataclass
class Block:
    line: int
    language: str
    reason: str
    code: str

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    return [
        Block(text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2), m.group(3))
        for m in FENCE.finditer(text)
    ]


def fresh_env() -> dict[str, str]:
    """``PATH`` without this interpreter's virtual environment, and ``HOME``: nothing README did
    not set up."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p != venv_bin]
    return {"PATH": os.pathsep.join(path), "HOME": os.environ.get("HOME", str(Path.home()))}


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def wait_ready(process: subprocess.Popen, log: Path, block: Block) -> None:
    deadline = time.monotonic() + 600  # a first start exports the model's ONNX once
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"{block.where}: the server exited {process.returncode}:\n{log.read_text()}"
            )
        try:
            if httpx.get(f"{URL}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"{block.where}: the server was not ready in 10 minutes:\n{log.read_text()}")


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGINT)  # as Ctrl-C in its terminal: make and the server
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_readme_blocks_parse():
    """Every fence is a language this test knows what to do with, and a reason it knows."""
    blocks = readme_blocks()
    assert sum(SERVER.search(b.code) is not None for b in blocks if b.language == "bash") >= 2
    for block in blocks:
        assert block.reason in ("", *NOT_RUN), f"{block.where}: unknown fence word {block.reason!r}"
        assert block.language, f"{block.where}: a fence without a language"


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_readme_commands_run_as_written(tmp_path):
    if not (ROOT / ".venv" / "bin" / "maskrt").exists():
        missing(f"no {ROOT / '.venv'}: README's commands run in the .venv that `make test` makes")
    if not (ROOT / ".git").exists():
        missing(f"{ROOT} is not a git checkout: the test compares the clone before and after")
    try:
        httpx.get(f"{URL}/readyz", timeout=2)
        missing(f"something already listens on {URL}, where README's server must")
    except httpx.TransportError:
        pass
    before = git("status", "--porcelain"), git("diff")
    env = fresh_env()
    skipped: list[str] = []
    server: subprocess.Popen | None = None
    try:
        for i, block in enumerate(readme_blocks()):
            if block.language not in RUN:
                continue  # a file's content (yaml), not a command
            if block.reason:
                skipped.append(f"{block.where} ({block.reason}): {NOT_RUN[block.reason]}")
                continue
            if block.language == "python":
                command = [str(ROOT / ".venv" / "bin" / "python"), "-c", block.code]
            else:
                command = ["bash", "-euo", "pipefail", "-c", block.code]
            started = time.monotonic()
            if block.language == "bash" and SERVER.search(block.code):
                stop(server)
                log = tmp_path / f"server-{i}.log"
                with log.open("w") as out:
                    server = subprocess.Popen(
                        command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                wait_ready(server, log, block)
                print(f"{block.where}: ready in {time.monotonic() - started:.1f} s")
                continue
            done = subprocess.run(
                command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
            )
            assert done.returncode == 0, (
                f"{block.where} exited {done.returncode}:\n{block.code}\n"
                f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
            )
            print(f"{block.where}: {time.monotonic() - started:.1f} s")  # where the time goes (-s)
    finally:
        stop(server)
    assert (git("status", "--porcelain"), git("diff")) == before, (
        "README's commands changed the clone"
    )
    if skipped:  # listed, never silently left out
        warnings.warn("README blocks not run: " + "; ".join(skipped), stacklevel=1)
