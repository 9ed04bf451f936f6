"""``maskrt predict`` on drawn images, run as a person runs it (the console script): the model in
its own process and a real ``maskrt serve`` on 127.0.0.1 give the same JSON, which is the server's
``POST /predict`` answer, and the overlay shows each drawn shape in its detection's colour."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
from PIL import Image
from server_harness import (
    check_overlay,
    jpeg,
    maskrt_command,
    png,
    sample_scene,
    shapes_image,
    start_server,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = start_server(tmp_path_factory, "predict", {"max_batch": 1})
    yield srv
    srv.stop()


def predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*maskrt_command(), "predict", *args], capture_output=True, text=True, timeout=600
    )


def without_timings(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "timings_ms"}


def test_local_and_remote_answers_are_the_servers_and_overlays_show_the_shapes(server, tmp_path):
    scene, scene_masks, _ = sample_scene()
    drawn = shapes_image(11)
    files = {"scene.png": png(scene), "drawn.png": png(drawn), "photo.jpg": jpeg(drawn)}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    inputs = [str(tmp_path / name) for name in files]
    local = predict(
        *inputs, "--out", str(tmp_path / "local"), "--score-threshold", "0.9", "--max-batch", "1"
    )
    assert local.returncode == 0, local.stderr
    remote = predict(
        *inputs, "--out", str(tmp_path / "remote"), "--score-threshold", "0.9", "--url", server.url
    )
    assert remote.returncode == 0, remote.stderr
    assert "3 of 3 images written" in local.stderr
    assert "Warning" not in local.stderr + remote.stderr

    with server.client() as c:
        for name, data in files.items():
            r = c.post("/predict", files={"image": (name, data)}, params={"score_threshold": 0.9})
            r.raise_for_status()
            want = without_timings(r.json())
            stem = name.split(".")[0]
            for run in ("local", "remote"):
                got = json.loads((tmp_path / run / f"{stem}.json").read_text())
                assert set(got["timings_ms"]) == set(r.json()["timings_ms"])
                assert without_timings(got) == want, f"{run} {name}"

    answer = json.loads((tmp_path / "local" / "scene.json").read_text())
    picture = np.asarray(Image.open(tmp_path / "local" / "scene.png"))
    matched = check_overlay(picture, scene, scene_masks, answer["detections"])
    assert -1 not in matched, f"the model finds every shape of the scene: {matched}"

    from maskrt.model.shapes import generate

    answer = json.loads((tmp_path / "local" / "drawn.json").read_text())
    picture = np.asarray(Image.open(tmp_path / "local" / "drawn.png"))
    matched = check_overlay(
        picture, drawn, generate(7, 11).masks.astype(bool), answer["detections"]
    )
    assert any(k >= 0 for k in matched)

    with Image.open(tmp_path / "local" / "photo.jpg") as photo:  # JPEG in, JPEG out
        assert photo.format == "JPEG" and photo.size == (drawn.shape[1], drawn.shape[0])
    assert not (tmp_path / "local" / "photo.png").exists()


def test_bad_files_are_named_and_the_others_written(server, tmp_path):
    (tmp_path / "good.png").write_bytes(png(shapes_image(3)))
    (tmp_path / "notes.txt").write_text("not a picture\n")
    out = tmp_path / "out"
    run = predict(
        str(tmp_path / "good.png"),
        str(tmp_path / "notes.txt"),
        str(tmp_path / "missing.png"),
        "--out",
        str(out),
        "--url",
        server.url,
    )
    assert run.returncode == 2
    assert f"{tmp_path / 'notes.txt'}: not an image in a supported format" in run.stderr
    assert f"{tmp_path / 'missing.png'}: No such file or directory" in run.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.json", "good.png"]
    assert "1 of 3 images written" in run.stderr


def test_refusals_before_any_work(server, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    twins = [str(tmp_path / d / "x.png") for d in ("a", "b")]
    run = predict(*twins, "--url", server.url)
    assert run.returncode == 2 and "would both be written as x.*" in run.stderr
    run = predict(str(tmp_path / "x.png"), "--url", server.url, "--backend", "torch")
    assert run.returncode == 2 and "--backend" in run.stderr and "--url" in run.stderr
    run = predict(str(tmp_path / "x.png"), "--url", "http://127.0.0.1:9")
    assert run.returncode == 2 and "cannot reach the server at http://127.0.0.1:9" in run.stderr
