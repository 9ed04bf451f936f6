"""README's "Serve your own model", run as written (at a small canvas, on a free port): a
torchvision R50-FPN state dict with 3 classes serves with no --config, its classes named by
--labels; a port in use is a user error (status 2) found before the model loads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from server_harness import HOST, free_port, maskrt_command

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(section: str) -> list[str]:
    """The lines of the ```bash blocks under README's ``## <section>``, without README's
    ``.venv/bin/`` (this interpreter's environment is first on the PATH of :func:`run`)."""
    text = (ROOT / "README.md").read_text()
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```bash\n(.*?)```", body, re.S)
    lines = [line for block in blocks for line in block.splitlines() if line.strip()]
    return [line.removeprefix(".venv/bin/") for line in lines]


def run(line: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKRT_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, text=True, **kwargs)


@pytest.mark.slow
def test_readme_serve_your_own_model(tmp_path):
    make, serve, *asks = readme_commands("Serve your own model")
    assert "num_classes=4" in make and serve.startswith("maskrt serve --model my_model.pth")
    assert run(make, tmp_path, timeout=300).returncode == 0
    port = free_port()
    serve = serve.replace("--canvas 512", "--canvas 128")  # the same command, small for a CPU
    log = (tmp_path / "serve.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKRT_")}
    env.update(MASKRT_CACHE_DIR=str(tmp_path / "cache"), MASKRT_LOG_FORMAT="text")
    args = serve.split()[1:]
    server = subprocess.Popen(
        [*maskrt_command(), *args, "--port", str(port), "--host", HOST],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        ready = (
            f"curl -sf --retry 300 --retry-delay 1 --retry-all-errors http://{HOST}:{port}/readyz"
        )
        assert run(ready, tmp_path, timeout=600).returncode == 0, (
            tmp_path / "serve.log"
        ).read_text()
        answers = [
            run(line.replace("8000", str(port)), ROOT, capture_output=True, timeout=120)
            for line in asks
        ]
        assert all(a.returncode == 0 for a in answers), [a.stderr for a in answers]
        model, prediction = (json.loads(a.stdout) for a in answers)
        assert model["classes"] == ["__background__", "cat", "dog", "bird"]
        assert model["canvas"] == 128
        assert {d["label"] for d in prediction["detections"]} <= {"cat", "dog", "bird"}

        taken = subprocess.run(
            [*maskrt_command(), *args, "--port", str(port), "--host", HOST],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert taken.returncode == 2
        assert f"cannot listen on {HOST}:{port}" in taken.stderr
    finally:
        server.terminate()
        server.wait(60)
        log.close()
