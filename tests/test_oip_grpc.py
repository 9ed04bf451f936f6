"""The gRPC front door and Triton's configuration and statistics extensions on a real
``maskrt serve``, spoken by the real clients: ``tritonclient.grpc`` (sync and ``aio``, raw and
typed tensors), KServe's ``InferenceGRPCClient``, ``tritonclient.http`` and curl.

The gRPC clients run in their own processes (tests/oip_grpc_clients.py says why); each answer
must equal ``/predict``'s for the same image, RLE bytes included.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import test_oip_http
import tritonclient.http as triton
from server_harness import (
    HOST,
    free_port,
    maskrt_command,
    metric,
    multipart,
    png,
    read_response,
    send_predict,
    shapes_image,
    start_server,
    wait_for,
)
from test_oip_http import AUTH, KEY, assert_same
from tools import missing

CLIENTS = Path(__file__).with_name("oip_grpc_clients.py")
IMAGES = [png(shapes_image(i)) for i in range(3)]
MAX_DELAY_MS = 7.5
pytestmark = [pytest.mark.slow]
# test_oip_http's fixtures of the same names, on this module's server
client = test_oip_http.client
name = test_oip_http.name


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    port = free_port()
    srv = start_server(
        tmp_path_factory,
        "grpc",
        {
            "model": checkpoint,
            "backend": "torch",
            "max_batch": 8,
            "max_delay_ms": MAX_DELAY_MS,
            "api_keys": KEY,
            "request_timeout_s": 60,
            "score_threshold": 0.0,
            "grpc_port": port,
        },
    )
    srv.grpc_address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def expected(client) -> list[dict]:
    """``/predict``'s answer for each image."""
    answers = []
    for data in IMAGES:
        r = client.post("/predict", files={"image": ("x.png", data, "image/png")})
        assert r.status_code == 200, r.text
        answers.append(r.json())
    return answers


def client_command(which: str, server, name: str, folder: Path) -> list[str]:
    """The command that runs ``which`` of tests/oip_grpc_clients.py on :data:`IMAGES`."""
    paths = []
    for i, data in enumerate(IMAGES):
        (folder / f"{i}.png").write_bytes(data)
        paths.append(str(folder / f"{i}.png"))
    return [sys.executable, str(CLIENTS), which, server.grpc_address, name, KEY, *paths]


def run_clients(which: str, server, name: str, tmp_path_factory) -> dict:
    command = client_command(which, server, name, tmp_path_factory.mktemp(f"images-{which}"))
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:] + server.log()
    return json.loads(run.stdout)


@pytest.fixture(scope="module")
def triton_grpc(server, name, expected, tmp_path_factory) -> dict:
    return run_clients("triton", server, name, tmp_path_factory)


@pytest.fixture(scope="module")
def kserve_grpc(server, name, expected, tmp_path_factory) -> dict:
    return run_clients("kserve", server, name, tmp_path_factory)


def getter(answer: dict):
    def get(output: str) -> np.ndarray:
        value = answer["outputs"][output]
        if output in ("labels", "masks"):
            return np.array(value, dtype=object)
        return np.array(value)

    return get


def test_tritonclient_grpc_answers_equal_predict(triton_grpc, expected):
    answers = triton_grpc["answers"]
    for i, want in enumerate(expected):
        assert answers[f"sync-{i}"]["raw"]  # raw in, raw out
        assert answers[f"sync-{i}"]["id"] == f"sync-{i}"
        assert_same(want, getter(answers[f"sync-{i}"]))
        # three images in one batch: the same detections, within float32 rounding of a batch
        batch = getter(answers["batch"])
        n = len(want["detections"])
        assert batch("num_detections")[i] == n
        boxes = np.array([d["box"] for d in want["detections"]], np.float32).reshape(n, 4)
        np.testing.assert_allclose(batch("boxes")[i][:n], boxes, rtol=1e-5, atol=1e-3)
    assert_same(expected[0], getter(answers["aio"]))
    assert answers["aio"]["id"] == "aio"


def test_parameters_reach_post_processing(triton_grpc, expected):
    params = triton_grpc["answers"]["params"]
    assert "masks" not in params["outputs"]
    kept = [d for d in expected[0]["detections"] if d["score"] >= 0.5]
    assert params["outputs"]["num_detections"] == [len(kept)]


def test_typed_contents_in_and_out(triton_grpc, expected):
    """A request with ``contents.bytes_contents`` gets typed ``contents`` back, equal to
    ``/predict``; the request id comes back as trailing metadata."""
    typed = triton_grpc["typed"]
    assert typed["id"] == "typed" and "raw_output_contents" not in typed
    outputs = {o["name"]: o for o in typed["outputs"]}
    n = len(expected[0]["detections"])
    assert outputs["num_detections"]["contents"]["int_contents"] == [n]
    shape = [int(s) for s in outputs["boxes"]["shape"]]
    boxes = np.array(outputs["boxes"]["contents"].get("fp32_contents", []), np.float32)
    want = np.array([d["box"] for d in expected[0]["detections"]], np.float32)
    np.testing.assert_array_equal(boxes.reshape(shape)[0, :n], want.reshape(n, 4))
    masks = [base64.b64decode(m) for m in outputs["masks"]["contents"].get("bytes_contents", [])]
    assert masks[:n] == [d["mask"]["counts"].encode() for d in expected[0]["detections"]]
    assert triton_grpc["typed_trailer"]["x-request-id"] == "typed-rid"


def test_kserve_grpc_client_answers_equal_predict(kserve_grpc, expected):
    assert kserve_grpc["ready"] and kserve_grpc["model_ready"]
    for i, want in enumerate(expected):
        answer = kserve_grpc["answers"][f"kserve-{i}"]
        assert answer["id"] == f"kserve-{i}"
        assert_same(want, getter(answer))


def test_probes_metadata_and_config_over_grpc(triton_grpc, name, client):
    assert triton_grpc["live"] and triton_grpc["ready"] and triton_grpc["model_ready"]
    assert set(triton_grpc["server_metadata"]["extensions"]) >= {
        "binary_tensor_data",
        "model_configuration",
        "statistics",
    }
    assert triton_grpc["model_metadata"] == {
        **client.get(f"/v2/models/{name}").json(),
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": ["-1"]}],
        "outputs": triton_grpc["model_metadata"]["outputs"],
    }
    # the same configuration as GET /v2/models/{name}/config (protobuf's JSON writes int64 as
    # strings and leaves out empty fields)
    config = triton_grpc["config"]["config"]
    rest = client.get(f"/v2/models/{name}/config").json()
    assert config["name"] == rest["name"] == name
    assert config["max_batch_size"] == rest["max_batch_size"] == 8
    assert [(t["name"], t["data_type"]) for t in config["output"]] == [
        (t["name"], t["data_type"]) for t in rest["output"]
    ]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == str(
        round(MAX_DELAY_MS * 1000)
    )


def test_statistics_over_grpc_count_the_calls(triton_grpc):
    (stats,) = triton_grpc["statistics"]["model_stats"]
    infer = stats["inference_stats"]
    # 3 sync + batch + params + aio + typed before the statistics call (and /predict's 3)
    assert int(infer["success"]["count"]) >= 7 + 3
    assert int(stats["inference_count"]) >= 3 + 3 + 1 + 1 + 1 + 3
    # protobuf's JSON leaves out zeros: a queue wait may round to none
    for stage in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert int(infer[stage]["count"]) > 0
    assert int(infer["compute_infer"]["ns"]) > 0
    sizes = {int(b["batch_size"]) for b in stats["batch_stats"]}
    assert 3 in sizes  # the batch request ran as one batch of 3
    assert triton_grpc["all_statistics"]["model_stats"][0]["name"] == stats["name"]


def test_grpc_errors_have_their_status_codes(triton_grpc):
    errors = triton_grpc["errors"]
    assert errors["no key"][0] == "StatusCode.UNAUTHENTICATED"
    assert "API key is required" in errors["no key"][1]
    assert errors["bad key"][0] == "StatusCode.UNAUTHENTICATED"
    assert errors["unknown model"][0] == "StatusCode.NOT_FOUND"
    assert errors["not an image"][0] == "StatusCode.INVALID_ARGUMENT"
    assert errors["bad parameter"][0] == "StatusCode.INVALID_ARGUMENT"
    assert "score_threshold" in errors["bad parameter"][1]
    assert errors["deadline"][0] == "StatusCode.DEADLINE_EXCEEDED"
    assert triton_grpc["live_after"]


def test_grpc_calls_are_counted_by_method(server, triton_grpc):
    values = server.metrics()
    endpoint = "/inference.GRPCInferenceService/ModelInfer"
    assert metric(values, "maskrt_requests_total", endpoint=endpoint, status="OK") >= 7
    assert metric(values, "maskrt_requests_total", endpoint=endpoint, status="UNAUTHENTICATED") == 2
    # the access log names the call, its status and its x-request-id
    lines = [json.loads(line) for line in server.log(tail=10**7).splitlines() if '"gRPC' in line]
    typed = [line for line in lines if line.get("request_id") == "typed-rid"]
    assert [(t["path"], t["status"]) for t in typed] == [(endpoint, "OK")]
    # the data plane gave up at the call's deadline (without it, gRPC's cancellation: CANCELLED)
    assert (
        metric(values, "maskrt_requests_total", endpoint=endpoint, status="DEADLINE_EXCEEDED") == 1
    )


# ---------------------------------------------------------------------------------------------
# REST: Triton's configuration and statistics extensions


def test_tritonclient_http_config_and_statistics(server, name, expected):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    try:
        config = c.get_model_config(name, headers=dict(AUTH))
        assert config["max_batch_size"] == 8
        assert config["input"] == [
            {"name": "image", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}
        ]
        types = {t["name"]: (t["data_type"], t["dims"]) for t in config["output"]}
        assert types["boxes"] == ("TYPE_FP32", [-1, 4])
        assert types["class_ids"] == ("TYPE_INT32", [-1])
        assert types["masks"] == ("TYPE_STRING", [-1])
        assert config["dynamic_batching"] == {
            "max_queue_delay_microseconds": round(MAX_DELAY_MS * 1000)
        }
        assert c.get_model_config(name, "1", headers=dict(AUTH)) == config
        stats = c.get_inference_statistics(name, headers=dict(AUTH))["model_stats"][0]
        assert stats["name"] == name and stats["version"] == "1"
        assert stats["inference_stats"]["success"]["count"] >= len(expected)
        assert stats["inference_stats"]["compute_infer"]["ns"] > 0
        assert c.get_inference_statistics(headers=dict(AUTH))["model_stats"][0]["name"] == name
    finally:
        c.close()


def test_stats_is_not_a_model_name(client, name):
    """``GET /v2/models/stats`` is the statistics of every model, not "unknown model 'stats'"."""
    r = client.get("/v2/models/stats")
    assert r.status_code == 200, r.text
    assert [m["name"] for m in r.json()["model_stats"]] == [name]
    assert client.get("/v2/models/nope/stats").status_code == 404
    assert client.get(f"/v2/models/{name}/versions/2/config").status_code == 404
    assert client.get("/v2").json()["extensions"] == [
        "binary_tensor_data",
        "model_configuration",
        "statistics",
        "model_repository",
    ]


def test_curl_reads_config_and_stats(server, name):
    curl = shutil.which("curl")
    if curl is None:
        missing("curl")
    for path in (f"/v2/models/{name}/config", f"/v2/models/{name}/versions/1/stats"):
        run = subprocess.run(
            [curl, "-sS", "-H", f"X-API-Key: {KEY}", server.url + path],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert json.loads(run.stdout)["name" if "config" in path else "model_stats"]
    run = subprocess.run(
        [curl, "-sS", "-o", "/dev/null", "-w", "%{http_code}", server.url + "/v2/models/stats"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.stdout == "401"


# ---------------------------------------------------------------------------------------------
# The port and the drain


def test_grpc_port_in_use_is_a_user_error(tmp_path):
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        run = subprocess.run(
            [*maskrt_command(), "serve", "--port", str(free_port()), "--grpc-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
    assert run.returncode == 2, run.stdout + run.stderr
    assert f"cannot listen on {HOST}:{port}" in run.stderr and "--grpc-port" in run.stderr


def test_sigterm_answers_the_grpc_call_in_flight(tmp_path_factory, checkpoint, name):
    """A gRPC call queued at SIGTERM is answered, one made during the drain gets UNAVAILABLE, and
    the server exits 0. An HTTP upload held half-sent keeps the batch from forming until the
    drain is under way (as in tests/test_server_shutdown.py)."""
    port = free_port()
    server = start_server(
        tmp_path_factory,
        "grpc-drain",
        {
            "model": checkpoint,
            "backend": "torch",
            "max_batch": 8,
            "max_delay_ms": 60000,
            "request_timeout_s": 60,
            "min_body_rate": 0,
            "api_keys": KEY,
            "grpc_port": port,
        },
    )
    server.grpc_address = f"127.0.0.1:{port}"  # type: ignore[attr-defined]
    try:
        body, ctype = multipart("image", "x.png", IMAGES[0])
        slow = send_predict(server, body, ctype, {"X-API-Key": KEY}, send_body=len(body) // 2)
        wait_for(server, "the upload", lambda m: metric(m, "maskrt_inflight_requests") == 1)
        folder = tmp_path_factory.mktemp("drain-images")
        command = client_command("infer", server, name, folder)
        queued = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        wait_for(server, "the gRPC call", lambda m: metric(m, "maskrt_inflight_requests") == 2)
        server.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while "draining" not in server.log(tail=10**6):
            assert time.monotonic() < deadline, f"no drain after SIGTERM:\n{server.log()}"
            time.sleep(0.05)
        during = subprocess.run(command, capture_output=True, text=True, timeout=120)
        slow.sendall(body[len(body) // 2 :])
        status, _ = read_response(slow)
        slow.close()
        answered = json.loads(queued.communicate(timeout=120)[0])
        exit_code = server.proc.wait(60)
    finally:
        server.stop(signal.SIGKILL)
    assert status == 200
    assert answered["status"] == "OK" and len(answered["num_detections"]) == len(IMAGES)
    assert json.loads(during.stdout)["status"] == "StatusCode.UNAVAILABLE", during.stderr
    assert exit_code == 0
