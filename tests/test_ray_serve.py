"""maskrt on a real two-node Ray cluster on this machine (``maskrt.server.ray_serve``).

The module starts ``ray start --head`` (no GPU) and a second ``ray start --address ...`` that
declares two (fake) GPUs, deploys ``maskrt.server.ray_serve:build`` on them (ONNX Runtime on the
CPU, ``num_gpus=1`` per model replica, so model replicas can only land on the "GPU" node) and talks
to it over HTTP through Ray Serve's proxy. The cluster runs inside a fresh network namespace with
only loopback (``unshare(CLONE_NEWNET)`` on the test thread, which every process it starts
inherits), so nothing Ray listens on is reachable from outside this machine; without the
privilege for that (CAP_SYS_ADMIN) it runs on the host's network with every node's address set to
127.0.0.1 (Ray may then still listen on all interfaces).

Checked: the ingress serves ``maskrt serve``'s own app (answers equal to the pipeline's own, errors,
limits, keys, request ids; a decompression bomb of 64 images refused by the pixel budget before
anything is decoded; ``/v2`` through tritonclient answering as a ``maskrt serve`` does), the model
replicas on the GPU node, images of different sizes in one batch, scale-up under load, a model
replica killed under load (every request answered 200 or a clean 503, none lost) and replaced, and
scale-down after the load. Slow (about 2-4 minutes on 2 cores). Without the optional ``ray`` extra
it fails under ``CI=true`` (``make test`` installs the extra) and skips elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from server_harness import big_png, free_port, jpeg, metric, png, shapes_image, start_server
from tools import package, program

ray = package("ray", extra="ray")
serve = package("ray.serve", extra="ray")

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

CLONE_NEWNET = 0x40000000
HOST = "127.0.0.1"
KEY = "ray-test-key-123"
SETTINGS = {
    "backend": "onnxruntime",
    "device": "cpu",
    "max_batch": 4,
    "max_delay_ms": 50,
    "max_queue": 64,
    "request_timeout_s": 60,
    "max_upload_bytes": 2_000_000,
    "api_keys": KEY,
    "score_threshold": 0.3,
    "model_name": "segmenter",  # not the config's name: the replicas and the ingress use this one
}
RAY_OPTIONS = {
    "num_gpus": 1,
    "num_cpus": 1,
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 2,
    "upscale_delay_s": 2,
    "downscale_delay_s": 5,
    "look_back_period_s": 11,  # Ray wants it above its 10 s metrics interval
}
# Ray Serve reports load to its autoscaler every 10 s by default; a short test wants it sooner.
RAY_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    # no token authentication (nothing outside the namespace reaches the cluster), whatever a
    # ~/.ray/auth_token of an earlier local Ray says
    "RAY_AUTH_MODE": "disabled",
    "OMP_NUM_THREADS": "1",
}
AUTH = {"Authorization": f"Bearer {KEY}"}


@contextlib.contextmanager
def loopback_namespace():
    """This thread (and every process it starts) in a new network namespace with only ``lo``."""
    libc = ctypes.CDLL(None, use_errno=True)
    original = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if libc.unshare(CLONE_NEWNET) != 0 or shutil.which("ip") is None:
            yield False  # no privilege: the host's network, nodes on 127.0.0.1
            return
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        try:
            yield True
        finally:
            assert libc.setns(original, CLONE_NEWNET) == 0, os.strerror(ctypes.get_errno())
    finally:
        os.close(original)


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> None:
    with log.open("ab") as out:
        done = subprocess.run(
            [program("ray", extra="ray"), "start", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            timeout=180,
        )
    assert done.returncode == 0, log.read_text()[-4000:]


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                table[int(entry.name)] = (ppid, cmdline)
    return table


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_processes_of(temp_dir: Path, timeout: float = 30) -> None:
    """End the Ray processes this module started (not ``ray stop``, which ends every Ray process
    of the machine): those naming our temp dir, and their descendants (the workers)."""
    table = _processes()
    ours = {pid for pid, (_, cmd) in table.items() if str(temp_dir) in cmd and pid != os.getpid()}
    while True:
        more = {pid for pid, (ppid, _) in table.items() if ppid in ours} - ours
        if not more:
            break
        ours |= more
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(_alive(p) for p in ours):
            time.sleep(0.5)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head node without GPUs and a worker node with two declared GPUs; maskrt deployed."""
    logs = tmp_path_factory.mktemp("ray")
    temp_dir = Path(f"/tmp/maskrt-ray-{os.getpid()}")  # Ray's socket paths must stay short
    saved = {k: os.environ.get(k) for k in [*RAY_ENV, "RAY_ADDRESS"]}
    os.environ.update(RAY_ENV)
    os.environ.pop("RAY_ADDRESS", None)
    env = dict(os.environ)
    with loopback_namespace() as isolated:
        gcs, worker_metrics = free_port(), free_port()
        common = ["--node-ip-address", HOST, "--disable-usage-stats"]
        try:
            _ray_start(
                [
                    "--head",
                    f"--port={gcs}",
                    "--num-cpus=2",
                    "--num-gpus=0",
                    "--include-dashboard=false",
                    f"--temp-dir={temp_dir}",
                    *common,
                ],
                env,
                logs / "ray-start.log",
            )
            _ray_start(
                [
                    f"--address={HOST}:{gcs}",
                    "--num-cpus=2",
                    "--num-gpus=2",
                    f"--dashboard-agent-listen-port={free_port()}",
                    f"--metrics-export-port={worker_metrics}",
                    *common,
                ],
                env,
                logs / "ray-start.log",
            )
            ray.init(address=f"{HOST}:{gcs}", logging_level="warning")
            port = free_port()
            serve.start(http_options={"host": HOST, "port": port})
            from maskrt.server.ray_serve import build

            serve.run(build({**SETTINGS, **RAY_OPTIONS}), name="maskrt", route_prefix="/")
            yield {
                "url": f"http://{HOST}:{port}",
                "isolated": isolated,
                "worker_metrics": f"http://{HOST}:{worker_metrics}/metrics",
                "temp_dir": temp_dir,
            }
        finally:
            if ray.is_initialized():  # (serve.shutdown would start a local Ray otherwise)
                with contextlib.suppress(Exception):
                    serve.shutdown()
                ray.shutdown()
            stop_processes_of(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def client(cluster, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=cluster["url"], trust_env=False, timeout=120, **kwargs)


def model_replicas() -> list[dict]:
    """The live MaskrtModel replica actors: ``actor_id``, ``name``, ``node_id``. From the GCS's
    actor table (Ray's developer API; the public state API needs the dashboard, not started)."""
    from ray._private.state import actors

    return [
        {"actor_id": a["ActorID"], "name": a["Name"], "node_id": a["Address"]["NodeID"]}
        for a in actors(actor_state_name="ALIVE").values()
        if a["ActorClassName"].endswith(":MaskrtModel")
    ]


def wait_until(what: str, check, timeout: float, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


# -- the API -----------------------------------------------------------------------------------


def test_predict_matches_the_pipeline(cluster):
    from maskrt.runtime.backends import open_backend
    from maskrt.runtime.pipeline import Pipeline
    from maskrt.server.settings import Settings

    image = shapes_image(3)
    with client(cluster) as c:
        info = c.get("/v1/model", headers=AUTH)
        assert info.status_code == 200, info.text
        r = c.post("/predict", content=png(image), headers={**AUTH, "Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    keys = ("name", "version", "model_version", "backend", "device")
    assert body["model"] == {k: info.json()[k] for k in keys}
    assert info.json()["fallback_reason"] is None  # carried from the replica; onnxruntime was asked
    assert (body["width"], body["height"]) == (image.shape[1], image.shape[0])
    assert set(body["timings_ms"]) == {"decode", "queue", "preprocess", "inference", "postprocess"}

    settings = Settings(backend="onnxruntime", device="cpu", max_batch=1)
    expected = Pipeline(open_backend(settings)).predict([image], score_threshold=0.3)[0]
    got = body["detections"]
    assert [d["class_id"] for d in got] == [d["class_id"] for d in expected] and got
    np.testing.assert_allclose([d["box"] for d in got], [d["box"] for d in expected], atol=0.05)
    assert [d["mask"] for d in got] == [d["mask"] for d in expected]


def test_errors_limits_keys_and_request_ids(cluster):
    image = png(shapes_image(0))
    with client(cluster) as c:

        def code(r: httpx.Response) -> tuple[int, str]:
            return r.status_code, r.json()["error"]["code"]

        raw = {**AUTH, "Content-Type": "image/png"}
        assert (
            c.post("/predict", content=image, headers={"Content-Type": "image/png"}).status_code
            == 401
        )
        assert c.get("/v1/model").status_code == 401
        assert code(c.post("/predict", content=b"not an image", headers=raw))[0] == 400
        assert code(
            c.post("/predict", content=image, headers={**AUTH, "Content-Type": "text/plain"})
        ) == (
            415,
            "unsupported_media_type",
        )
        assert code(c.post("/predict?score_threshold=2", content=image, headers=raw))[0] == 422
        assert code(c.post("/predict?colour=red", content=image, headers=raw))[0] == 422
        assert c.post("/predict", content=b"x" * 3_000_000, headers=raw).status_code == 413
        assert code(c.post("/predict", content=big_png(8000, 6000), headers=raw)) == (
            413,
            "image_too_large",
        )
        r = c.post("/predict", content=image, headers={**raw, "X-Request-ID": "trace-abc.123"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "trace-abc.123"
        r = c.post("/predict", content=b"junk", headers=raw)
        assert len(r.headers["x-request-id"]) >= 16
        assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200


@pytest.fixture(scope="module")
def served(cluster, tmp_path_factory):
    """``maskrt serve`` with the cluster's settings, beside it (in its network namespace)."""
    server = start_server(tmp_path_factory, "serve", SETTINGS)
    yield server
    server.stop()


def ingress_peak_rss() -> int:
    """Peak resident memory (bytes) of the ingress replica's process."""
    ingress = [
        pid
        for pid, (_, cmd) in _processes().items()
        if "MaskrtIngress" in cmd and cmd.startswith("ray::")
    ]
    assert len(ingress) == 1, f"ingress replica processes: {ingress}"
    status = Path(f"/proc/{ingress[0]}/status").read_text()
    return 1024 * int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM:")).split()[1])


def test_a_pixel_bomb_is_refused_before_decoding(cluster, served):
    """64 PNGs of 6000x6000 zeros: about 300 kB on the wire, 6.9 GB decoded. The ingress refuses
    them from their headers (413, the per-request pixel budget) as ``maskrt serve`` does, and its
    peak memory does not grow by even one decoded image (108 MB)."""
    body, content_type = _batch_body([big_png(6000, 6000)] * 64, "image/png")
    assert len(body) < 400_000
    headers = {**AUTH, "Content-Type": content_type}
    before = ingress_peak_rss()
    with client(cluster) as c:
        r = c.post("/predict/batch", content=body, headers=headers)
    grown = ingress_peak_rss() - before
    with served.client() as c:
        direct = c.post("/predict/batch", content=body, headers=headers)
    assert r.status_code == direct.status_code == 413, r.text
    assert r.json()["error"] == direct.json()["error"]
    assert r.json()["error"]["code"] == "too_many_pixels"
    print(f"\npixel bomb: the ingress's peak RSS grew by {grown / 2**20:.1f} MiB")
    assert grown < 50 * 2**20


def test_tritonclient_infer_answers_as_maskrt_serve_does(cluster, served):
    import tritonclient.http as triton

    image = triton.InferInput("image", [1], "BYTES")
    image.set_data_from_numpy(np.array([png(shapes_image(5))], dtype=np.object_))

    def infer(url: str) -> dict[str, np.ndarray]:
        c = triton.InferenceServerClient(url.removeprefix("http://"), network_timeout=120)
        try:
            result = c.infer(SETTINGS["model_name"], [image], headers=dict(AUTH))
        finally:
            c.close()
        names = [o["name"] for o in result.get_response()["outputs"]]
        return {n: result.as_numpy(n) for n in names}

    ray_answer, direct = infer(cluster["url"]), infer(served.url)
    assert set(ray_answer) == set(direct) >= {"boxes", "masks", "labels", "num_detections"}
    assert int(direct["num_detections"][0]) > 0
    for name in ("num_detections", "image_size", "class_ids", "labels", "masks"):
        np.testing.assert_array_equal(ray_answer[name], direct[name], err_msg=name)
    np.testing.assert_allclose(ray_answer["boxes"], direct["boxes"], atol=0.05)
    np.testing.assert_allclose(ray_answer["scores"], direct["scores"], atol=1e-4)


def test_model_replicas_run_on_the_gpu_node(cluster):
    gpu_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")}
    assert len(gpu_nodes) == 1 and len([n for n in ray.nodes() if n["Alive"]]) == 2
    replicas = model_replicas()
    assert replicas and {a["node_id"] for a in replicas} == gpu_nodes


def _batch_body(images: list[bytes], media_type: str = "image/jpeg") -> tuple[bytes, str]:
    boundary = "maskrt-ray-boundary"
    parts = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; '
        f'filename="{i}"\r\nContent-Type: {media_type}\r\n\r\n'.encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    )
    return parts + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_images_of_different_sizes_share_a_batch(cluster):
    """A /predict/batch answers in order; its images ran in one batch (a batch's stage times are
    shared by all its images)."""
    sizes = [(320, 240), (200, 400), (512, 512)]
    images = [jpeg(Image.fromarray(shapes_image(i)).resize(s)) for i, s in enumerate(sizes)]
    body, content_type = _batch_body(images)
    with client(cluster) as c:
        r = c.post("/predict/batch", content=body, headers={**AUTH, "Content-Type": content_type})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [(x["width"], x["height"]) for x in results] == sizes
    inference = {x["timings_ms"]["inference"] for x in results}
    assert len(inference) == 1, f"not one batch: {[x['timings_ms'] for x in results]}"


def test_replica_and_ingress_metrics(cluster):
    """The model replicas' ``ray_maskrt_*`` metrics reach the GPU node's Ray metrics endpoint;
    the ingress counts its requests as ``maskrt serve`` does."""
    from maskrt.bench.load import parse_metrics

    def exported() -> dict[str, float] | None:
        with httpx.Client(trust_env=False, timeout=10) as c:
            values = parse_metrics(c.get(cluster["worker_metrics"]).text)
        images = sum(v for k, v in values.items() if k.startswith("ray_maskrt_images_total"))
        batches = [k for k in values if k.startswith("ray_maskrt_batch_size_bucket")]
        return values if images > 0 and batches else None

    wait_until("ray_maskrt_* metrics on the GPU node", exported, 90, every=3)
    with client(cluster) as c:
        text = c.get("/metrics").text
    # MODEL_NAME labels the replicas' metrics and the ingress's model and requests (version 1)
    ingress = {"model": SETTINGS["model_name"], "version": "1"}
    assert metric(parse_metrics(text), "maskrt_requests_total", status="200", **ingress) > 0
    model = f'model="{SETTINGS["model_name"]}"'
    assert any(model in k for k in exported() or {} if k.startswith("ray_maskrt_images_total"))
    served = [k for k in parse_metrics(text) if k.startswith("maskrt_model_info{")]
    assert served and all(f'name="{SETTINGS["model_name"]}"' in k for k in served), served
    # the model replica's backend, as the ingress learnt it: nothing fell back
    fallback = {"backend": "onnxruntime", "wanted": "onnxruntime", **ingress}
    assert metric(parse_metrics(text), "maskrt_backend_fallback", **fallback) == 0
    assert len([k for k in parse_metrics(text) if k.startswith("maskrt_backend_fallback")]) == 1


# -- scaling and failure ---------------------------------------------------------------------------


async def _load(url: str, images: list[bytes], stop: asyncio.Event, statuses: list) -> None:
    async with httpx.AsyncClient(base_url=url, trust_env=False, timeout=120) as c:

        async def worker(i: int) -> None:
            n = i
            while not stop.is_set():
                n += 1
                try:
                    r = await c.post(
                        "/predict",
                        content=images[n % len(images)],
                        headers={**AUTH, "Content-Type": "image/jpeg"},
                    )
                    code = r.json()["error"]["code"] if r.status_code != 200 else ""
                    statuses.append((r.status_code, code, r.headers.get("retry-after")))
                except httpx.HTTPError as exc:
                    statuses.append((0, repr(exc), None))

        await asyncio.gather(*(worker(i) for i in range(6)))


def test_scale_up_survive_a_killed_replica_and_scale_down(cluster):
    images = [jpeg(shapes_image(i)) for i in range(4)]
    statuses: list = []
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def scenario() -> dict:
        load = asyncio.ensure_future(_load(cluster["url"], images, stop, statuses))
        try:
            replicas = await asyncio.to_thread(
                wait_until,
                "a second model replica under load",
                lambda: len(model_replicas()) >= 2 and model_replicas(),
                180,
            )
            victim = replicas[0]
            before = len(statuses)
            ray.kill(ray.get_actor(victim["name"], namespace="serve"), no_restart=True)
            await asyncio.to_thread(
                wait_until,
                "the killed replica replaced",
                lambda: (
                    (ids := {a["actor_id"] for a in model_replicas()})
                    and victim["actor_id"] not in ids
                    and len(ids) >= 2
                ),
                180,
            )
            await asyncio.to_thread(
                wait_until, "requests after the kill", lambda: len(statuses) > before + 10, 120
            )
        finally:
            stop.set()
            await load
        return {"victim": victim["actor_id"]}

    loop.run_until_complete(scenario())
    loop.close()
    retried = sum(
        log.read_text(errors="replace").count("model replica lost")
        for log in Path(cluster["temp_dir"]).glob("session_latest/logs/worker-*.err")
    )
    print(f"\nunder load, a replica killed: {Counter(s[:2] for s in statuses)}; {retried} retried")
    bad = [s for s in statuses if s[0] != 200 and not (s[0] == 503 and s[2])]
    assert not bad, f"lost or unclean answers: {bad[:10]} of {len(statuses)}"
    assert sum(s[0] == 200 for s in statuses) > 20
    wait_until("scale-down to one model replica", lambda: len(model_replicas()) == 1, 180)
