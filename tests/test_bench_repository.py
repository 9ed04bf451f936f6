"""``maskrt bench repository`` end to end with tiny durations: it starts a real ``maskrt serve
--model-repository``, swaps a version in under load, loads and unloads a third model, runs two
models side by side, and reports each phase (what the figures are is ``docs/benchmarks.md``'s
business, not this test's)."""

from __future__ import annotations

import json
import subprocess

import pytest
from server_harness import maskrt_command

pytestmark = pytest.mark.slow

SHORT = (
    *("--swap-seconds", "3", "--swap-concurrency", "4", "--swap-window-s", "1"),
    *("--rss-seconds", "1", "--mixed-seconds", "1", "--mixed-concurrency", "2"),
    *("--mixed-rounds", "2"),
    *("--warmup", "0.5", "--settle-s", "0.2"),
    # the torch backend: the swap's new weights load without an ONNX export (tests/test_cache.py
    # and tests/test_isolated.py cover that), which keeps this test short
    *("--", "--backend", "torch"),
)


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*maskrt_command(), "bench", "repository", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_each_phase_runs_and_reports_its_goal(tmp_path):
    out = tmp_path / "repository.json"
    run = bench("--json", str(out), *SHORT)
    assert run.returncode == 0, run.stdout + run.stderr
    goals = [line for line in run.stdout.splitlines() if line.strip().startswith("goal:")]
    assert len(goals) == 3, run.stdout
    assert all(line.endswith((": met", ": NOT met")) for line in goals), goals
    report = json.loads(out.read_text())
    swap = report["swap"]
    assert swap["failed"] == {} and swap["loaded"]
    assert (swap["version_before"], swap["version_after"], swap["versions_after"]) == (
        "1",
        "2",
        ["2"],
    )
    assert swap["steady_requests"] > 0 and swap["swap_requests"] > 0
    assert swap["swap_p99_ms"] <= swap["swap_max_ms"]
    rss = report["unload_rss"]
    assert rss["unloaded"] and rss["requests"] > 0 and rss["failed"] == 0
    assert rss["after_load_mb"] > 0 and rss["after_unload_mb"] > 0
    mixed = report["mixed"]
    assert mixed["rounds"] == 2
    for name in ("a", "b"):
        for phase in ("solo", "mixed"):
            assert len(mixed[phase][name]) == 2
            for level in mixed[phase][name]:
                assert level["ok"] == level["requests"] > 0, (phase, name, level)
            assert mixed[f"{phase}_throughput"][name] > 0
    assert report["failed"] == 0 and report["repository_failures"] == []
    assert report["log_errors"] == []


def test_a_missing_model_file_is_named():
    run = bench("--model", "/nonexistent/weights.pt")
    assert run.returncode == 2
    assert "--model /nonexistent/weights.pt: no such file" in run.stderr
