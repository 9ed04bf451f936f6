"""Helpers of the server integration tests: a real ``maskrt serve`` subprocess on 127.0.0.1, the
model it serves, test images, and reading ``/metrics``.

Not a test module (no ``test_`` prefix); the ``test_server_*`` modules import it, and the
``checkpoint`` fixture of conftest.py serves :func:`serving_checkpoint`.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from maskrt.bench.resilience import (  # noqa: F401 (the tests' big image, reading answers)
    Answer,
    big_png,
    free_port,
    read_responses,
)

HOST = "127.0.0.1"


def maskrt_command() -> list[str]:
    """``.venv/bin/maskrt`` (the console script next to this Python), else ``python -m maskrt``."""
    script = Path(sys.executable).with_name("maskrt")
    return [str(script)] if script.exists() else [sys.executable, "-m", "maskrt"]


def serving_checkpoint() -> Path:
    """The shipped shapes checkpoint, which the repository holds: the server tests fail without it
    rather than serve another model."""
    from maskrt.model.checkpoint import default_checkpoint

    shipped = default_checkpoint()
    if not shipped.is_file():
        pytest.fail(f"the shipped checkpoint {shipped} is missing (it is part of the repository)")
    return shipped


class Server:
    """``maskrt serve`` as a child process, its log in a file."""

    def __init__(
        self,
        log_dir: Path,
        settings: dict[str, object],
        name: str = "server",
        prefix: tuple[str, ...] = (),
    ) -> None:
        """``prefix``: a command that runs the server (e.g. with fewer privileges)."""
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.metrics_url = f"http://{HOST}:{settings.get('metrics_port', self.port)}/metrics"
        self.log_path = log_dir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("MASKRT_")}
        env.update({f"MASKRT_{k.upper()}": str(v) for k, v in settings.items()})
        env["MASKRT_LOG_FORMAT"] = env.get("MASKRT_LOG_FORMAT", "json")
        env.setdefault("MASKRT_GRPC_PORT", "0")  # off unless asked: test servers run side by side
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [*prefix, *maskrt_command(), "serve", "--host", HOST, "--port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=log_dir,
        )

    def log(self, tail: int = 6000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-tail:]

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, trust_env=False, timeout=kwargs.pop("timeout", 60), **kwargs
        )

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        with self.client(timeout=5) as c:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    pytest.fail(f"maskrt serve exited with {self.proc.returncode}:\n{self.log()}")
                try:
                    if c.get("/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        pytest.fail(f"maskrt serve not ready after {timeout:.0f} s:\n{self.log()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return self.proc.returncode

    def metrics(self) -> dict[str, float]:
        from maskrt.bench.load import parse_metrics

        with self.client(timeout=10) as c:
            r = c.get(self.metrics_url)
            r.raise_for_status()
            return parse_metrics(r.text)


def start_server(tmp_path_factory, name: str, settings: dict[str, object]) -> Server:
    server = Server(tmp_path_factory.mktemp(name), settings, name)
    try:
        server.wait_ready()
    except BaseException:
        server.stop(signal.SIGKILL)
        raise
    return server


def publish(checkpoint: Path, root: Path, model: str, version: int) -> None:
    """Put ``checkpoint`` in ``root/model/version/`` as docs/scaling.md says to: written in a
    hidden folder, then renamed into place, so that a poll never sees half of it."""
    staging = root / f".staging-{model}-{version}"
    (staging / str(version)).mkdir(parents=True)
    shutil.copy(checkpoint, staging / str(version) / "model.pt")
    if (root / model).is_dir():
        (staging / str(version)).rename(root / model / str(version))
        staging.rmdir()
    else:
        staging.rename(root / model)


def png(image: np.ndarray | Image.Image) -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def jpeg(image: np.ndarray | Image.Image, quality: int = 90) -> bytes:
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def shapes_image(index: int = 0, seed: int = 7) -> np.ndarray:
    from maskrt.model.shapes import generate

    return generate(seed, index).image


def metric(values: dict[str, float], sample: str, /, **labels: str) -> float:
    """The sum of ``sample``'s series whose labels include ``labels`` (over every model version
    unless ``model`` and ``version`` are given)."""
    from maskrt.bench.load import sample_sum

    return sample_sum(values, sample, **labels)


def raw_request(
    path: str,
    body: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
    send_body: int | None = None,
) -> bytes:
    """An HTTP/1.1 request as bytes; ``send_body`` cuts the body (to send the rest later)."""
    lines = [
        f"POST {path} HTTP/1.1",
        f"Host: {HOST}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
    ]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode()
    return head + body[: len(body) if send_body is None else send_body]


def send_predict(
    server: Server,
    body: bytes,
    content_type: str,
    headers: dict[str, str] | None = None,
    send_body: int | None = None,
) -> socket.socket:
    """A connection that has sent ``POST /predict``; with ``send_body``, only that many body bytes:
    an upload in progress, whose rest can follow on the returned socket (or never)."""
    sock = socket.create_connection((HOST, server.port), timeout=60)
    sock.sendall(raw_request("/predict", body, content_type, headers, send_body))
    return sock


def read_response(sock: socket.socket, timeout: float = 60) -> tuple[int, bytes]:
    """Status and body of one response (Content-Length framed) read from ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, body


def multipart(
    field: str, filename: str, data: bytes, content_type: str = "image/png"
) -> tuple[bytes, str]:
    boundary = "maskrt-test-boundary-7f3a"
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: {content_type}\r\n\r\n'
    ).encode()
    body += data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait_for(server: Server, what: str, check, timeout: float = 20.0) -> dict[str, float]:
    """Poll the server's metrics until ``check(metrics)`` holds; fail with its queue metrics and
    log after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = server.metrics()
        if check(m):
            return m
        time.sleep(0.02)
    pytest.fail(
        f"timed out waiting for {what}; metrics: "
        f"{ {k: v for k, v in server.metrics().items() if k.startswith('maskrt_q')} }\n"
        f"{server.log()}"
    )


def sample_scene() -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The README's sample scene (``examples/draw_sample.py``): image, shape masks, labels."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "examples" / "draw_sample.py"
    spec = importlib.util.spec_from_file_location("draw_sample", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scene()


def check_overlay(
    picture: np.ndarray, image: np.ndarray, shapes: np.ndarray, detections: list[dict]
) -> list[int]:
    """Assert that ``picture`` (an overlay of ``detections`` on ``image``, both uint8 HxWx3) shows
    each drawn shape of ``shapes`` (bool [N, H, W]) that a detection found filled with that
    detection's colour blended into the image (where no label is written over it), and the
    background mostly as it was. Returns the detection index of each shape (-1 where none
    matched); masks are decoded with pycocotools."""
    from maskrt.runtime.overlay import ALPHA, colour, decode_mask, erode, font_size

    assert picture.shape == image.shape, (picture.shape, image.shape)
    masks = [decode_mask(d["mask"]) for d in detections]
    # the "label score" patches (above each box, or inside it at the top), generously
    height, width = image.shape[:2]
    patch = font_size(width, height) + 4
    text = np.zeros((height, width), dtype=bool)
    for d in detections:
        x1, y1 = (int(v) for v in d["box"][:2])
        length = len(f"{d['label']} {d['score']:.2f}") * 0.75 * patch + 4
        text[max(0, y1 - patch - 1) : y1 + patch + 2, max(0, x1 - 1) : x1 + int(length)] = True
    matched = []
    for shape in shapes:
        ious = [(shape & m).sum() / max((shape | m).sum(), 1) for m in masks]
        k = int(np.argmax(ious)) if ious and max(ious) > 0.5 else -1
        matched.append(k)
        if k < 0:
            continue
        inner = erode(shape, 2) & erode(masks[k], 2)
        assert inner.sum() > 0.5 * shape.sum(), f"shape {len(matched) - 1}: mask {k} misses it"
        inner &= ~text
        if inner.sum() < 20:
            continue  # written over by labels
        want = image[inner].astype(np.float64)
        for j, m in enumerate(masks):  # later detections are painted over earlier ones
            over = m[inner]
            want[over] = want[over] * (1 - ALPHA) + np.asarray(colour(j)) * ALPHA
        close = (np.abs(picture[inner].astype(np.float32) - want) <= 3).all(axis=1)
        assert close.mean() > 0.9, (
            f"shape {len(matched) - 1}: only {close.mean():.0%} of its pixels carry the colour "
            f"{colour(k)} of detection {k}"
        )
    background = np.logical_and.reduce([erode(~s, 3) for s in shapes])  # 3 px off every shape
    changed = (np.abs(picture.astype(int) - image.astype(int)) > 10).any(axis=2)[background]
    assert changed.mean() < 0.25, f"{changed.mean():.0%} of the background is painted over"
    return matched
