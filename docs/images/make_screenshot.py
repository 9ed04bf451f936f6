"""Redraw docs/images/page.png, README's picture of the page at ``GET /``, from the current model.

Starts a real ``maskrt serve`` (the bundled model unless ``--model``) on a free loopback port,
opens the page in headless Chromium (Debian's ``chromium``, driven by Playwright as the browser
tests do; ``MASKRT_CHROMIUM`` names another binary), drops ``examples/shapes.png`` on it, waits for
the answer to be drawn and writes the screenshot as a 256-colour PNG (a small file to commit):

    .venv/bin/python docs/images/make_screenshot.py

It needs the ``dev`` extra (Playwright) and a Chromium; no browser is downloaded.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 900  # the page's layout at README's width


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium() -> str:
    found = os.environ.get("MASKRT_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if found is None:
        sys.exit("no Chromium: install Debian's chromium package, or set MASKRT_CHROMIUM")
    return found


def wait_ready(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"maskrt serve exited with {server.returncode} before it was ready")
        try:
            if httpx.get(url + "/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"maskrt serve was not ready in {timeout_s:.0f} s")


def screenshot(url: str, image: Path) -> bytes:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": 600})
            page.goto(url + "/")
            page.locator("#model").filter(has_text=" on ").wait_for()
            page.set_input_files("#file", str(image))
            page.locator("body[data-state=done]").wait_for(timeout=120_000)
            return page.screenshot(full_page=True)
        finally:
            browser.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="what maskrt serve serves (default: the bundled model)")
    p.add_argument("--image", type=Path, default=ROOT / "examples" / "shapes.png")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "images" / "page.png")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="first start exports (s)")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "maskrt", "serve", "--port", str(port)]
    if args.model:
        command += ["--model", args.model]
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_ready(url, server, args.ready_timeout)
            shot = screenshot(url, args.image)
        except BaseException:
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-4000:])
            raise
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(30)
    picture = Image.open(io.BytesIO(shot)).convert("RGB").quantize(256)
    picture.save(args.out, optimize=True)
    print(f"wrote {args.out} ({picture.width}x{picture.height}, {args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
