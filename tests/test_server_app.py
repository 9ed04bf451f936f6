"""The app in this process (httpx's ASGI transport, lifespan run by hand), for what a subprocess
cannot show: readiness while the model loads, a model that fails to load, and a backend exception
that fails only its own batch. The backend is the real TorchBackend, opened by the real
``open_backend``; the tests only delay the opening or make one ``infer`` call raise. Also the
``maskrt serve`` start-up errors."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import threading

import httpx
import pytest
from server_harness import maskrt_command, metric, png, shapes_image

from maskrt.bench.load import parse_metrics
from maskrt.errors import MaskrtError
from maskrt.runtime.backends import open_backend
from maskrt.runtime.local import LocalDataPlane
from maskrt.server.app import create_app
from maskrt.server.settings import Settings


@contextlib.asynccontextmanager
async def running(app):
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def until_ready(client, timeout: float = 120) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await client.get("/readyz")).status_code != 200:
        assert loop.time() < deadline, "not ready"
        await asyncio.sleep(0.05)


def settings(checkpoint, **kw) -> Settings:
    return Settings(model=str(checkpoint), backend="torch", device="cpu", max_batch=2, **kw)


def test_not_ready_until_loaded_and_warmed(checkpoint):
    release = threading.Event()

    def slow_open(s):
        release.wait(60)
        return open_backend(s)

    async def main():
        s = settings(checkpoint)
        app = create_app(s, data_plane=lambda stats: LocalDataPlane(s, stats, opener=slow_open))
        async with running(app) as client:
            assert (await client.get("/healthz")).status_code == 200  # alive at once
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
            assert int(r.headers["retry-after"]) > 0
            files = {"image": ("x.png", png(shapes_image(0)), "image/png")}
            r = await client.post("/predict", files=files)
            assert r.status_code == 503 and "retry-after" in r.headers
            assert (await client.get("/v1/model")).status_code == 503
            release.set()
            await until_ready(client)
            assert (await client.post("/predict", files=files)).status_code == 200
            plane = app.state.maskrt.models.fixed_plane
            # warm-up ran every batch size the backend uses before /readyz turned 200
            sizes = {s for s in plane.backend.warmup_batch_sizes() if s <= 2}
            assert sizes and set(plane.warmup_seconds) == sizes

    asyncio.run(main())


def test_model_that_fails_to_load(tmp_path, caplog):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    fatal = []

    async def main():
        s = Settings(model=str(bad), backend="torch", device="cpu")
        app = create_app(
            s, data_plane=lambda stats: LocalDataPlane(s, stats, on_fatal=fatal.append)
        )
        async with running(app) as client:
            for _ in range(200):
                if fatal:
                    break
                await asyncio.sleep(0.05)
            r = await client.get("/readyz")
            assert r.status_code == 503
            # no path, no library error text to anyone: the details are in the log only
            message = r.json()["error"]["message"]
            assert message == "the model failed to load (see the server log)"
            assert str(tmp_path) not in r.text and "checkpoint" not in r.text
            assert (await client.get("/healthz")).status_code == 200

    with caplog.at_level("ERROR", logger="maskrt.runtime"):
        asyncio.run(main())
    assert len(fatal) == 1 and isinstance(fatal[0], MaskrtError)
    assert "broken.pt: not a readable PyTorch checkpoint" in caplog.text


def test_model_info_says_whether_the_weights_were_verified(checkpoint, tmp_path):
    import torch

    from maskrt.model.checkpoint import read_file

    payload = read_file(checkpoint)
    del payload["tensors_sha256"]  # as maskrt wrote checkpoints before digests
    undigested = tmp_path / "undigested.pt"
    torch.save(payload, undigested)

    async def verified(model) -> bool:
        app = create_app(settings(model))
        async with running(app) as client:
            await until_ready(client)
            return (await client.get("/v1/model")).json()["weights_verified"]

    assert asyncio.run(verified(checkpoint)) is True
    assert asyncio.run(verified(undigested)) is False


def test_backend_exception_fails_only_its_batch(checkpoint):
    async def main():
        app = create_app(settings(checkpoint))
        async with running(app) as client:
            await until_ready(client)
            backend = app.state.maskrt.models.fixed_plane.backend
            real_infer = backend.infer
            calls = []

            def failing_once(images):
                calls.append(images.shape[0])
                if len(calls) == 1:
                    raise RuntimeError("simulated device failure")
                return real_infer(images)

            backend.infer = failing_once
            try:
                files = {"image": ("x.png", png(shapes_image(0)), "image/png")}
                r = await client.post("/predict", files=files)
                assert r.status_code == 500, r.text
                body = r.json()
                assert body["error"]["code"] == "inference_failed"
                assert "Traceback" not in r.text and "simulated" not in r.text
                assert r.headers["x-request-id"] in body["error"]["message"]
                # the worker carries on
                for _ in range(2):
                    assert (await client.post("/predict", files=files)).status_code == 200
                assert (await client.get("/healthz")).status_code == 200
            finally:
                backend.infer = real_infer
            text = (await client.get("/metrics")).text
            values = parse_metrics(text)
            assert metric(values, "maskrt_requests_total", endpoint="/predict", status="500") == 1

    asyncio.run(main())


@pytest.mark.parametrize("depth", [0, 1])
def test_post_processing_exception_fails_only_its_batch(checkpoint, depth):
    """Stage B (masks, RLE) raising fails only its batch, in its own thread when pipelined (in
    the inference thread with PIPELINE_DEPTH=0); the stage times reach the answer either way."""

    async def main():
        app = create_app(settings(checkpoint, pipeline_depth=depth))
        async with running(app) as client:
            await until_ready(client)
            pipeline = app.state.maskrt.models.fixed_plane.pipeline
            real_finish = pipeline.finish_batch
            threads = []

            def failing_once(inferred, options):
                threads.append(threading.current_thread().name)
                if len(threads) == 1:
                    raise RuntimeError("simulated post-processing failure")
                return real_finish(inferred, options)

            pipeline.finish_batch = failing_once
            files = {"image": ("x.png", png(shapes_image(0)), "image/png")}
            r = await client.post("/predict", files=files)
            assert r.status_code == 500 and r.json()["error"]["code"] == "inference_failed"
            answers = [await client.post("/predict", files=files) for _ in range(2)]
            assert [a.status_code for a in answers] == [200, 200]
            assert all(a.json()["timings_ms"]["postprocess"] > 0 for a in answers)
            assert (await client.get("/healthz")).status_code == 200
            text = (await client.get("/metrics")).text
            assert metric(parse_metrics(text), "maskrt_failed_batches_total") == 1
            return set(threads)

    assert asyncio.run(main()) == {"maskrt-post_0" if depth else "maskrt-infer_0"}


def test_cors_off_unless_configured(checkpoint):
    async def main(origins):
        def no_model(options):
            raise MaskrtError("no model needed")

        s = settings(checkpoint, cors_origins=origins)
        app = create_app(s, data_plane=lambda stats: LocalDataPlane(s, stats, opener=no_model))
        async with running(app) as client:
            r = await client.options(
                "/predict",
                headers={"Origin": "https://ui.example", "Access-Control-Request-Method": "POST"},
            )
            return r.headers.get("access-control-allow-origin")

    assert asyncio.run(main("")) is None
    assert asyncio.run(main("https://ui.example")) == "https://ui.example"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--model", "/nonexistent/model.pt"], "no such model file"),
        (["--model", "model.bin"], "unknown model file type"),
        (["--backend", "tensorrt", "--device", "cpu"], "runs on a CUDA device"),
        (["--backend", "torch", "--model", "m.plan"], "cannot serve an engine"),
        (["--max-batch", "0"], "--max-batch"),
    ],
)
def test_serve_refuses_bad_settings_before_starting(argv, message):
    run = subprocess.run(
        [*maskrt_command(), "serve", "--port", "1", *argv],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stdout + run.stderr
    assert message in run.stderr and "Traceback" not in run.stderr


def test_pipeline_without_http_is_what_the_server_answers(checkpoint):
    """The evaluation's entry point: Pipeline.predict / .predictor on an opened backend gives the
    records (and the Predictor tuples) the server would answer for the same image."""
    import numpy as np

    from maskrt.runtime.pipeline import Pipeline

    pipeline = Pipeline(open_backend(settings(checkpoint)))
    images = [shapes_image(0), shapes_image(1), shapes_image(2)]
    records = pipeline.predict(images, score_threshold=0.0, batch_size=2)
    from_bytes = pipeline.predict([png(im) for im in images], score_threshold=0.0)
    assert (
        len(records) == 3
        and records[0]
        and all({"box", "score", "class_id", "label", "mask"} <= set(d) for d in records[0])
    )
    for a, b in zip(records, from_bytes):
        assert [d["mask"] for d in a] == [d["mask"] for d in b]
    # (same batch composition: a batch's numbers can differ in the last bits from another's)
    boxes, scores, classes, rles = pipeline.predictor(score_threshold=0.0, batch_size=2)(images)[0]
    assert boxes.shape == (len(records[0]), 4) and boxes.dtype == np.float32
    assert scores.tolist() == [d["score"] for d in records[0]]
    assert classes.tolist() == [d["class_id"] for d in records[0]]
    assert rles == [d["mask"] for d in records[0]]

    async def main():
        app = create_app(settings(checkpoint))
        async with running(app) as client:
            await until_ready(client)
            r = await client.post(
                "/predict",
                params={"score_threshold": 0},
                files={"image": ("x.png", png(images[0]), "image/png")},
            )
            return r.json()["detections"]

    alone = pipeline.predict(images[:1], score_threshold=0.0)[0]  # a batch of 1, as served
    assert asyncio.run(main()) == alone


def test_stages_of_consecutive_batches_in_two_threads_give_the_serial_answers(checkpoint):
    """Batch 2 is letterboxed and inferred while batch 1 is post-processed in another thread,
    as the server's pipeline does: each batch's outputs are its own, so nothing changes."""
    from concurrent.futures import ThreadPoolExecutor

    from maskrt.runtime.pipeline import Pipeline, PostOptions

    pipeline = Pipeline(open_backend(settings(checkpoint)))
    opts = PostOptions(score_threshold=0.0)
    batches = [[pipeline.as_tensor(shapes_image(i)) for i in seeds] for seeds in ([0, 1], [2])]
    serial = [pipeline.run_batch(images, opts).detections for images in batches]
    first = pipeline.infer_batch(batches[0])
    with ThreadPoolExecutor(1) as post:
        pending = post.submit(pipeline.finish_batch, first, opts)
        second = pipeline.infer_batch(batches[1])
        overlapped = [pending.result().detections, pipeline.finish_batch(second, opts).detections]
    assert serial[0][0] and overlapped == serial
