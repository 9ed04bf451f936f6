"""A mistake in any flag of ``maskrt serve`` is found before the server listens: exit status 2, one
line naming the flag (or file) and the fix, and torch never imported (so it takes a fraction of a
second where importing torch takes seconds). Checkpoints are read for that without torch
(:mod:`maskrt.model.peek`)."""

from __future__ import annotations

import os
import pty
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskrt.errors import MaskrtError
from maskrt.model.config import DEFAULT_CHECKPOINT
from maskrt.model.peek import CLASS_KEY, class_count
from tests.server_harness import HOST, free_port

# runs `maskrt ARGS...`; adds 10 to its exit status when torch was imported on the way
RUN_CLI = (
    "import sys; from maskrt.cli import main; code = main(sys.argv[1:]); "
    "sys.exit(code + (10 if 'torch' in sys.modules else 0))"
)


def run_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKRT_")}
    return subprocess.run(
        [sys.executable, "-c", RUN_CLI, *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def state_dict_file(path: Path, classes: int, **save: object) -> Path:
    """A torchvision-style state dict with a ``classes``-way predictor (other weights do not
    matter to the class count)."""
    state = {CLASS_KEY: torch.zeros(classes, 8), "backbone.body.conv1.weight": torch.zeros(1)}
    torch.save(state, path, **save)
    return path


@pytest.fixture
def mistakes(tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(DEFAULT_CHECKPOINT.read_bytes()[:5000])
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    other = state_dict_file(tmp_path / "four.pth", 5)
    labels = tmp_path / "labels.txt"
    labels.write_text("square\ncircle\n")
    return {
        "canvas": (["--canvas", "500"], "--canvas: must be a multiple of 32, such as 480"),
        "config": (["--config", "resnet50"], "--config: unknown model config 'resnet50'"),
        "labels count": (["--labels", "a,b"], "--labels names 2 classes; "),
        "labels file count": (["--labels", str(labels)], "--labels names 2 classes; "),
        "labels of a bare state dict": (
            ["--model", str(other), "--labels", "a,b,c"],
            f"--labels names 3 classes; {other} has 4",
        ),
        "labels path": (["--labels", str(tmp_path / "nope.txt")], "no such labels file"),
        "model path": (["--model", str(tmp_path / "nope.pt")], "no such model file"),
        "damaged model": (["--model", str(damaged)], "not a readable PyTorch checkpoint"),
        "pickled model": (["--model", str(whole)], "--trust-pickle"),
        "model kind": (["--model", str(tmp_path / "m.bin")], "unknown model file type"),
    }


CASES = [
    "canvas",
    "config",
    "labels count",
    "labels file count",
    "labels of a bare state dict",
    "labels path",
    "model path",
    "damaged model",
    "pickled model",
    "model kind",
]


@pytest.mark.parametrize("case", CASES)
def test_a_mistake_exits_2_before_torch_and_before_listening(mistakes, case):
    argv, message = mistakes[case]
    port = free_port()
    done = run_cli("serve", "--port", str(port), *argv)
    assert done.returncode == 2, (done.returncode, done.stderr)  # 12: right, but torch was imported
    assert done.stderr.startswith("maskrt: error: ") and done.stderr.count("\n") == 1, done.stderr
    assert message in done.stderr
    with socket.socket() as probe:  # nothing listens on the port it was given
        assert probe.connect_ex((HOST, port)) != 0


def test_a_port_in_use_exits_2_before_torch():
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli("serve", "--port", str(port))
    assert done.returncode == 2, (done.returncode, done.stderr)
    assert f"cannot listen on {HOST}:{port}" in done.stderr and "--port" in done.stderr


def test_class_count_read_without_torch(tmp_path):
    assert class_count(DEFAULT_CHECKPOINT) == 4  # the shapes model: three shapes and background
    assert class_count(DEFAULT_CHECKPOINT, config="resnet18_fpn") == 91  # as load_checkpoint
    assert class_count(state_dict_file(tmp_path / "bare.pth", 7)) == 7
    torch.save({"model": torch.load(tmp_path / "bare.pth")}, tmp_path / "reference.pth")
    assert class_count(tmp_path / "reference.pth") == 7  # torchvision references' {"model": ...}
    legacy = state_dict_file(tmp_path / "legacy.pt", 7, _use_new_zipfile_serialization=False)
    assert class_count(legacy) is None  # only torch reads the legacy format: the load decides


def test_a_pickled_model_is_refused_unless_trusted(tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save(torch.nn.Linear(2, 2), whole)
    with pytest.raises(MaskrtError, match="pickled Python object"):
        class_count(whole)
    assert class_count(whole, trust_pickle=True) is None  # the load (trusted) decides
    copied = tmp_path / "weights.pt"
    shutil.copy(DEFAULT_CHECKPOINT, copied)
    assert class_count(copied, trust_pickle=True) == 4


@pytest.mark.parametrize("tty,expected", [(True, "text"), (False, "json")])
def test_log_format_auto_is_text_on_a_terminal_and_json_elsewhere(tty, expected):
    code = (
        "import logging; from maskrt.server.logging import configure_logging; "
        "configure_logging('auto', 'info'); logging.getLogger('maskrt.x').info('hello')"
    )
    if tty:
        main, other = pty.openpty()
        subprocess.run([sys.executable, "-c", code], stderr=other, timeout=60, check=True)
        os.close(other)
        line = os.read(main, 4096).decode()
        os.close(main)
    else:
        line = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        ).stderr
    assert (line.lstrip().startswith("{") and '"message": "hello"' in line) == (expected == "json")
    assert ("INFO    maskrt.x hello" in line) == (expected == "text"), line
