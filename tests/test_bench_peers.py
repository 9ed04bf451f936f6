"""``maskrt bench peers``: maskrt and the naive server measured one after the other, through the CLI
as a user runs it (real processes on loopback; a second of load each)."""

from __future__ import annotations

import json
import subprocess

from server_harness import maskrt_command


def peers(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*maskrt_command(), "bench", "peers", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_torch_backend_against_the_naive_server(tmp_path):
    out = tmp_path / "peers.json"
    run = peers(
        *("--servers", "maskrt,naive", "--backend", "torch", "--device", "cpu"),
        *("--concurrency", "1", "--duration", "1", "--warmup", "0.5", "--json", str(out)),
    )
    assert run.returncode == 0, run.stdout + run.stderr
    report = json.loads(out.read_text())
    assert out.with_suffix(".png").stat().st_size > 0  # the chart beside it (test_bench_chart.py)
    assert "on cpu, maskrt's backend torch" in report["model"]
    assert [r["server"] for r in report["results"]] == ["maskrt", "naive"]
    for result in report["results"]:
        (level,) = result["levels"]
        assert level["ok"] > 0 and not level["errors"], result


def test_onnx_only_flags_need_the_onnxruntime_backend():
    run = peers("--backend", "torch", "--int8", timeout=60)
    assert run.returncode == 2
    assert "--int8 and --maskrt-model are ONNX: they need --backend onnxruntime" in run.stderr
