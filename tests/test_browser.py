"""The page at ``GET /`` and the API docs in a real headless Chromium, as a person uses them.

One ``maskrt serve`` with API keys on 127.0.0.1 serves every test of this module. Chromium is
Debian's ``chromium`` package (``make test`` installs it when it runs as root; no browser is ever
downloaded), driven by Playwright's Python API. Every request of the browser to anything but that
server is aborted and recorded, and each test checks that there was none: the pages work offline.

Where ``playwright`` or a Chromium binary is missing (``MASKRT_CHROMIUM`` names one that is not on
PATH) the tests fail under ``CI=true`` and skip, with the reason, elsewhere.
"""

from __future__ import annotations

import io
import os
import re
import shutil

import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import (
    HOST,
    check_overlay,
    png,
    publish,
    sample_scene,
    shapes_image,
    start_server,
)
from tools import missing, package

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:The given NumPy array is not writable"),
]

KEY = "browser-test-key-1"
B_LABELS = ["sq", "ci", "tr"]  # model b's names of the shipped checkpoint's classes
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    found = os.environ.get("MASKRT_CHROMIUM") or next(
        filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
    )
    if found is None:
        missing(
            "no Chromium on PATH: install Debian's chromium package (make test does, as root) "
            "or set MASKRT_CHROMIUM"
        )
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # both found before a server starts for them
    package("playwright")
    chromium()
    srv = start_server(tmp_path_factory, "browser", {"api_keys": KEY, "max_batch": 2})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="module")
def repository_server(tmp_path_factory, checkpoint):
    """A model repository of ``a`` and ``b`` (versions 1 and 2, both served, with labels of its
    own), no API keys and no default model: copies of the shipped checkpoint."""
    package("playwright")
    chromium()
    root = tmp_path_factory.mktemp("browser-models")
    for model, version in (("a", 1), ("b", 1), ("b", 2)):
        publish(checkpoint, root, model, version)
    (root / "b" / "config.yaml").write_text(f"labels: {B_LABELS}\nversion_policy: all\n")
    settings = {"model_repository": root, "backend": "torch", "max_batch": 1}
    srv = start_server(tmp_path_factory, "browser-repository", settings)
    yield srv
    srv.stop()


@pytest.fixture
def offline(browser, server):
    yield from isolated(browser, server)


@pytest.fixture
def offline_repository(browser, repository_server):
    yield from isolated(browser, repository_server)


def isolated(browser, server):
    """A fresh browser context that can reach only ``server``; yields (context, blocked URLs)."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    blocked: list[str] = []
    own = f"http://{HOST}:{server.port}/"

    def route(r) -> None:
        if r.request.url.startswith(own):
            r.continue_()
        else:
            blocked.append(r.request.url)
            r.abort()

    context.route("**/*", route)
    yield context, blocked
    context.close()
    assert blocked == [], f"the page asked for something outside this server: {blocked}"


def watched(context, server) -> tuple:
    """A new page of ``context`` and the list its script errors and Content-Security-Policy
    violations (console errors naming the policy) are added to; but for a file from elsewhere,
    which the policy blocks on purpose (ReDoc's logo from its CDN)."""
    page = context.new_page()
    errors: list[str] = []
    elsewhere = re.compile(rf"^Loading the \w+ 'https?://(?!{re.escape(HOST)}:{server.port}/)")

    def console(message) -> None:
        if "Content Security Policy" in message.text and not elsewhere.match(message.text):
            errors.append(message.text)

    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", console)
    return page, errors


def open_page(context, server, key: str = KEY):
    """Load ``/``, which asks for a key (the server has keys), and give it ``key``."""
    page, errors = watched(context, server)
    page.goto(server.url + "/")
    page.locator("#key-box").wait_for(state="visible")
    page.fill("#api-key", key)
    page.click("#use-key")
    return page, errors


def reference_answer(server, data: bytes) -> dict:
    with server.client(headers={"X-API-Key": KEY}) as c:
        r = c.post("/predict", files={"image": ("x.png", data)}, params={"score_threshold": 0})
        r.raise_for_status()
        return r.json()


def test_the_key_field_unlocks_the_page(server, offline):
    from playwright.sync_api import expect

    context, _ = offline
    page, errors = open_page(context, server, key="not-the-key-123")
    expect(page.locator("#error")).to_contain_text("401 unauthorized: the API key is not valid")
    assert "onnxruntime" not in page.text_content("#model")
    page.fill("#api-key", KEY)
    page.click("#use-key")
    expect(page.locator("#model")).to_contain_text(" on ")
    with httpx.Client(base_url=server.url, trust_env=False) as c:
        info = c.get("/v1/model", headers={"X-API-Key": KEY}).json()
    model = page.text_content("#model")
    assert info["name"] in model and info["backend"] in model and info["device"] in model
    assert all(name in model for name in info["classes"][1:])
    assert page.locator("#error").is_hidden()
    assert page.locator("#choice").is_hidden(), "one model: nothing to choose"
    assert errors == []


def test_an_upload_draws_the_masks_and_the_slider_refilters(server, offline):
    from playwright.sync_api import expect

    context, _ = offline
    image, shapes, _ = sample_scene()
    data = png(image)
    answer = reference_answer(server, data)
    scores = [d["score"] for d in answer["detections"]]
    page, errors = open_page(context, server)
    expect(page.locator("#model")).to_contain_text(" on ")
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/predict" in r.url else None)
    page.set_input_files(
        "#file", files=[{"name": "shapes.png", "mimeType": "image/png", "buffer": data}]
    )
    page.locator("body[data-state=done]").wait_for()
    rows = page.locator("#detections tbody tr")
    assert rows.count() == sum(s >= 0.5 for s in scores)  # the slider starts at 0.5
    assert "server" in page.text_content("#latency") and "ms" in page.text_content("#latency")

    page.locator("#score").fill("0.9")
    assert rows.count() == sum(s >= 0.9 for s in scores)
    labels = rows.locator("td:nth-child(3)").all_text_contents()
    assert labels == [d["label"] for d in answer["detections"] if d["score"] >= 0.9]
    shot = Image.open(io.BytesIO(page.locator("#view").screenshot())).convert("RGB")
    h, w = image.shape[:2]
    picture = np.asarray(shot.resize((w, h), Image.Resampling.NEAREST))
    shown = [d for d in answer["detections"] if d["score"] >= 0.9]
    matched = check_overlay(picture, image, shapes, shown)
    assert -1 not in matched, f"the model found every drawn shape: {matched}"

    page.locator("#score").fill("0")
    assert rows.count() == len(scores)
    assert len(uploads) == 1, f"the slider refilters without asking again: {uploads}"
    assert page.text_content("#summary").endswith(
        f"by {answer['model']['name']} version {answer['model']['model_version']}"
    )
    assert errors == []


def test_a_non_image_shows_the_servers_error(server, offline):
    context, _ = offline
    page, errors = open_page(context, server)
    notes = {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture\n"}
    page.set_input_files("#file", files=[notes])
    page.locator("body[data-state=error]").wait_for()
    text = page.text_content("#error")
    assert "notes.txt" in text and "400 invalid_image" in text and "not an image" in text
    assert errors == []


def test_docs_and_redoc_render_offline(server, offline):
    context, _ = offline
    page, errors = watched(context, server)
    page.goto(server.url + "/docs")
    page.locator(".opblock").first.wait_for()
    paths = page.locator(".opblock-summary-path").all_text_contents()
    assert {"/predict", "/predict/batch", "/v1/model", "/healthz", "/readyz"} <= set(paths)
    page.goto(server.url + "/redoc")
    page.get_by_text("detect and segment the objects of one image").first.wait_for()
    assert errors == []


def test_a_repository_page_asks_the_chosen_model(repository_server, offline_repository):
    from playwright.sync_api import expect

    context, _ = offline_repository
    data = png(shapes_image(0))
    with repository_server.client() as c:
        r = c.post(
            "/predict",
            files={"image": ("x.png", data)},
            params={"model": "b", "version": "2", "score_threshold": 0},
        )
        assert r.status_code == 200, r.text
        answer = r.json()
    page, errors = watched(context, repository_server)
    uploads: list[str] = []
    page.on("request", lambda r: uploads.append(r.url) if "/predict" in r.url else None)
    page.goto(repository_server.url + "/")
    choice = page.locator("#choice")
    expect(choice).to_be_visible()
    options = choice.locator("option").all_text_contents()
    assert options == ["a", "b version 1", "b version 2"]
    # no default model (several serve): the first is chosen, as GET /v1/model refuses to choose
    assert page.locator("#choice option:checked").text_content() == "a"
    assert page.text_content("#model").startswith("a ")

    choice.select_option(label="b version 2")
    expect(page.locator("#model")).to_contain_text("sq, ci, tr")
    upload = {"name": "shapes.png", "mimeType": "image/png", "buffer": data}
    page.set_input_files("#file", files=[upload])
    page.locator("body[data-state=done]").wait_for()
    assert page.text_content("#summary").endswith("by b version 2")
    page.locator("#score").fill("0")
    labels = page.locator("#detections tbody td:nth-child(3)").all_text_contents()
    assert labels == [d["label"] for d in answer["detections"]]
    assert set(labels) <= set(B_LABELS) and labels
    assert uploads[-1].endswith("/predict?score_threshold=0&model=b&version=2")

    # b unloaded meanwhile: the upload's unknown_model brings the list up to date
    with repository_server.client() as c:
        assert c.post("/v2/repository/models/b/unload").status_code == 200
    page.set_input_files("#file", files=[upload])
    page.locator("body[data-state=error]").wait_for()
    assert "404 unknown_model" in page.text_content("#error")
    expect(choice).to_be_hidden()
    assert page.text_content("#model").startswith("a ")
    assert "unknown_model" in page.text_content("#error"), "the refresh keeps the error shown"
    page.set_input_files("#file", files=[upload])
    page.locator("body[data-state=done]").wait_for()
    assert page.text_content("#summary").endswith("by a version 1")
    assert uploads[-1].endswith("/predict?score_threshold=0&model=a")
    assert errors == []
