"""``bench/gpu_session.sh``, the plan for a lent GPU's 15 minutes, checked where there is none: its
``--dry-run`` lists the steps in priority order with caps that add up to under 8 minutes, every
file, module and flag a step names exists, it passes shellcheck, ``--prepare`` copies TensorRT's
headers for the run to carry, and a run (here, without a GPU, its steps fail) writes its two
files."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tarfile
from importlib import util
from pathlib import Path

import pytest
from tools import program

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_session.sh"
STEP = re.compile(r"^(P[123]) (\S+)\s+(\d+) s  (.*)$")
TOTAL = re.compile(r"^total (\d+) s of (\d+) s \(caps plus (\d+) s kill grace per step\)$")
# the torch backend's CUDA settings that the benchmark steps turn on (issue 25, item 2)
FAST_PATH_ENV = {
    "MASKRT_CUDA_GRAPHS",
    "MASKRT_CUDA_ROI_ALIGN",
    "MASKRT_TORCH_PRECISION",
    "MASKRT_CHANNELS_LAST",
    "MASKRT_PINNED_COPIES",
    "MASKRT_GPU_DECODE",
}


def script(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def plan() -> tuple[list[tuple[str, str, int, str]], re.Match]:
    run = script("--dry-run")
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    steps = [STEP.match(line) for line in lines[:-1]]
    assert all(steps), lines
    total = TOTAL.match(lines[-1])
    assert total, lines[-1]
    return [(m[1], m[2], int(m[3]), m[4]) for m in steps if m], total


def test_steps_in_priority_order_and_under_eight_minutes(plan):
    steps, total = plan
    names = [name for _, name, _, _ in steps]
    assert names == [
        *("env", "extension", "gpu_tests", "plugin_enqueue"),
        *("fast_path", "serving"),
        *("deploy", "deploy_graphs", "postprocess", "peers"),
    ]
    priorities = [p for p, _, _, _ in steps]
    assert priorities == sorted(priorities)
    grace = int(total[3])
    planned = sum(cap + grace for _, _, cap, _ in steps)
    assert planned == int(total[1])
    assert int(total[2]) == 480 and planned < 480


def test_every_file_module_and_flag_a_step_names_exists(plan):
    steps, _ = plan
    for _, name, _, command in steps:
        words = shlex.split(command.replace("&&", " && "))
        for word in words:
            if word.startswith(("tests/", "bench/")):
                assert (ROOT / word).is_file(), (name, word)
        for i, word in enumerate(words[:-1]):
            if word == "-m" and words[i - 1] == "python3":
                module = words[i + 1]
                if module == "maskrt" and words[i + 2] == "bench":
                    from maskrt.cli.bench import SCRIPTS

                    module = SCRIPTS[words[i + 3]][0]
                assert util.find_spec(module) is not None, (name, module)
                if module.startswith("maskrt.bench."):
                    end = words.index("&&", i) if "&&" in words[i:] else len(words)
                    flags = {w for w in words[i:end] if w.startswith("--")}
                    helped = subprocess.run(
                        [sys.executable, "-m", module, "--help"],
                        capture_output=True,
                        text=True,
                        timeout=120,
                    )
                    assert helped.returncode == 0, helped.stderr
                    assert {f for f in flags if f not in helped.stdout} == set(), (name, module)
        env = {w.split("=")[0] for w in words if re.match(r"^MASKRT_[A-Z_]+=", w)}
        assert env <= FAST_PATH_ENV, (name, env)
    assert "from maskrt.plugins.torch_ext import load_extension" in steps[1][3]
    from maskrt.plugins.torch_ext import load_extension

    assert callable(load_extension)


def test_shellcheck():
    run = subprocess.run([program("shellcheck"), str(SCRIPT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


def test_prepare_copies_the_tensorrt_headers(tmp_path):
    include = tmp_path / "trt" / "include"
    include.mkdir(parents=True)
    (include / "NvInferVersion.h").write_text("#define NV_TENSORRT_MAJOR 11\n")
    (include / "NvInferRuntime.h").write_text("// runtime\n")
    work = tmp_path / "work"
    work.mkdir()
    run = script("--prepare", str(include), cwd=work)
    assert run.returncode == 0, run.stderr
    copied = work / ".gpu-session" / "tensorrt" / "include"
    assert sorted(p.name for p in copied.iterdir()) == ["NvInferRuntime.h", "NvInferVersion.h"]
    bad = script("--prepare", str(tmp_path), cwd=work)
    assert bad.returncode == 2 and "no NvInferVersion.h" in bad.stderr


def test_the_repository_ignores_what_the_run_carries():
    for path in (".gpu-session/tensorrt/include/NvInferVersion.h", ".wheels-gpu/x.whl"):
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT)
        assert ignored.returncode == 0, path


def test_a_run_writes_its_summary_and_tarball(tmp_path):
    """One step (``--only``): where it fails (here: no GPU), the two files still come back."""
    out = tmp_path / "out"
    run = script(str(out), "--only", "env")
    assert run.returncode == 0, run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gpu_session.tar.gz", "summary.md"]
    summary = (out / "summary.md").read_text()
    assert re.search(r"^\| env \| P1 \| 15 \| \d+", summary, re.M), summary
    assert "- command: bash bench/gpu_session.sh" in summary and "| serving |" not in summary
    with tarfile.open(out / "gpu_session.tar.gz") as tar:
        assert {"./env.log", "./summary.md"} <= set(tar.getnames())
