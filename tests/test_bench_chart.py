"""The chart beside a load report: real matplotlib draws the PNG of each bench's report format
(``bench load``'s levels, ``bench peers``' servers, ``bench v2``'s routes), read back with Pillow."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from server_harness import maskrt_command
from tools import package

from maskrt.bench.chart import DPI, SIZE_IN, series, write_report
from maskrt.bench.load import LevelResult

package("matplotlib", extra="bench")

WIDTH, HEIGHT = (round(side * DPI) for side in SIZE_IN)


def levels(scale: float) -> list[dict]:
    return [
        dataclasses.asdict(
            LevelResult(
                concurrency=c,
                seconds=10.0,
                requests=int(40 * c**0.5 * scale),
                ok=int(40 * c**0.5 * scale),
                errors={},
                throughput=4 * c**0.5 * scale,
                p50_ms=250.0 * c**0.5 / scale,
                p95_ms=400.0 * c**0.5 / scale,
                p99_ms=500.0 * c**0.5 / scale,
                mean_ms=260.0 * c**0.5 / scale,
                batch={"mean": 1.0, "sizes": {}},
            )
        )
        for c in (1, 4, 16)
    ]


REPORTS = {
    "load": {"url": "http://127.0.0.1:8000", "model": {"backend": "onnxruntime", "device": "cpu"},
             "levels": levels(1.0)},
    "peers": {"model": "shapes", "results": [
        {"server": "maskrt", "levels": levels(2.0), "rss_mb": 900.0},
        {"server": "naive", "levels": levels(1.0), "rss_mb": 800.0},
    ]},
    "v2": {"routes": {"/predict": levels(1.0), "v2 binary": levels(1.1)}},
}  # fmt: skip


@pytest.mark.parametrize("kind", REPORTS)
def test_a_chart_is_written_beside_the_json(tmp_path, kind):
    report = REPORTS[kind]
    path = tmp_path / f"{kind}.json"
    write_report(report, path, f"bench {kind}")
    assert json.loads(path.read_text()) == report
    png = Image.open(path.with_suffix(".png"))
    assert png.format == "PNG" and png.size == (WIDTH, HEIGHT)
    pixels = np.asarray(png.convert("RGB"))
    # drawn lines in matplotlib's colour cycle: C0 blue for the first server or route, and C1
    # orange for the second one when there is one
    colours = {tuple(p) for p in pixels.reshape(-1, 3)[::7]}
    assert (0x1F, 0x77, 0xB4) in colours
    assert ((0xFF, 0x7F, 0x0E) in colours) == (len(series(report)) > 1)


def test_the_chart_command_redraws_a_report_and_names_a_bad_one(tmp_path):
    path = tmp_path / "peers.json"
    path.write_text(json.dumps(REPORTS["peers"]))
    run = subprocess.run(
        [*maskrt_command(), "bench", "chart", str(path), "--title", "peers"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert Image.open(path.with_suffix(".png")).size == (WIDTH, HEIGHT)

    bad = tmp_path / "other.json"
    bad.write_text(json.dumps({"detections": []}))
    run = subprocess.run(
        [*maskrt_command(), "bench", "chart", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{bad}: not a bench report" in run.stderr
    assert not bad.with_suffix(".png").exists()


def test_without_matplotlib_the_json_is_written_and_the_install_named(tmp_path):
    """The serving install has no matplotlib: the report still lands, and the user learns how to
    get its chart (a fresh interpreter in which importing matplotlib fails, as when it is absent)."""
    path = tmp_path / "load.json"
    code = (
        "import json, sys; sys.modules['matplotlib'] = None\n"
        "from maskrt.bench.chart import write_report\n"
        f"write_report(json.loads(sys.argv[1]), {str(path)!r}, 'load')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, json.dumps(REPORTS["load"])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(path.read_text()) == REPORTS["load"]
    assert not path.with_suffix(".png").exists()
    assert "matplotlib is not installed; pip install 'maskrt[bench]'" in run.stderr
