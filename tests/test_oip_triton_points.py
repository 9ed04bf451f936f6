"""What a Triton or KServe user meets on ``/v2`` beyond inference itself, against a real
``maskrt serve`` with the real clients (``tritonclient.http``, KServe's REST client, curl):

- the model's name is ``MODEL_NAME`` (KServe's InferenceService name), on ``/v2``, ``/v1/model``,
  the answers and the metrics; the checkpoint's config name is not served;
- outputs are JSON unless ``binary_data`` / ``binary_data_output`` ask for binary (a raw binary
  request aside), whatever the request's own form;
- Triton's reserved parameters: ``timeout`` (microseconds) becomes the request's deadline,
  ``priority`` and ``sequence_*`` and unknown keys are ignored on ``/v2``; ``/predict`` stays strict;
- gzip and deflate answers on ``Accept-Encoding``; CORS allows and exposes the binary header.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import shutil
import subprocess
import zlib

import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, RESTConfig
from kserve import InferInput as KInput
from kserve import InferRequest as KRequest
from server_harness import (
    metric,
    multipart,
    png,
    read_response,
    send_predict,
    shapes_image,
    start_server,
    wait_for,
)
from test_oip_http import SERVED, assert_same, predict
from tools import missing
from tritonclient.utils import InferenceServerException

NAME = "maskrt"  # the InferenceService's name in deploy/kubernetes/kserve
ORIGIN = "https://app.example"
INFER = f"/v2/models/{NAME}/infer"
IMAGES = [png(shapes_image(i)) for i in range(2)]
pytestmark = [pytest.mark.slow]


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    srv = start_server(
        tmp_path_factory,
        "oip-points",
        {"model": checkpoint, **SERVED, "model_name": NAME, "cors_origins": ORIGIN},
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def triton_client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    yield c
    c.close()


def image_input(images: list[bytes]) -> triton.InferInput:
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    tensor.set_data_from_numpy(np.array(images, dtype=np.object_))
    return tensor


def binary_request(images: list[bytes], **parameters) -> tuple[bytes, dict[str, str]]:
    """A hand-written binary tensor data request that names no outputs."""
    data = b"".join(len(i).to_bytes(4, "little") + i for i in images)
    doc: dict = {
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [len(images)],
                "parameters": {"binary_data_size": len(data)},
            }
        ]
    }
    if parameters:
        doc["parameters"] = parameters
    header = json.dumps(doc).encode()
    return header + data, {"Inference-Header-Content-Length": str(len(header))}


def json_request(images: list[bytes], **parameters) -> dict:
    data = [base64.b64encode(i).decode() for i in images]
    tensor = {"name": "image", "datatype": "BYTES", "shape": [len(images)], "data": data}
    return {"inputs": [tensor], "parameters": parameters}


def json_tensors(body: dict):
    tensors = {o["name"]: o for o in body["outputs"]}

    def get(output: str) -> np.ndarray:
        return np.array(tensors[output]["data"]).reshape(tensors[output]["shape"])

    return get


# ---------------------------------------------------------------------------------------------
# The model's name


def test_the_model_answers_to_its_configured_name_everywhere(server, client, triton_client):
    assert client.get("/v1/model").json()["name"] == NAME
    assert triton_client.is_model_ready(NAME)
    assert triton_client.get_model_metadata(NAME)["name"] == NAME
    expected = predict(client, IMAGES[0])
    assert expected["model"]["name"] == NAME
    result = triton_client.infer(NAME, [image_input(IMAGES[:1])])
    assert result.get_response()["model_name"] == NAME
    assert_same(expected, result.as_numpy)
    # the checkpoint's config name is not served: one name, as KServe routes by it
    config_name = "shapes"
    r = client.post(f"/v2/models/{config_name}/infer", json=json_request(IMAGES[:1]))
    assert r.status_code == 404 and NAME in r.json()["error"], r.text
    assert not triton_client.is_model_ready(config_name)
    metrics = server.metrics()
    assert metric(metrics, "maskrt_model_info", name=NAME, backend="torch", device="cpu") == 1
    assert not any('name="shapes"' in key for key in metrics)


def test_kserve_rest_client_addresses_the_inference_service_name(client, server):
    expected = predict(client, IMAGES[1])
    tensor = KInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([IMAGES[1]], dtype=np.object_), binary_data=True)

    async def infer():
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as c:
            ready = await c.is_model_ready(server.url, NAME)
            return ready, await c.infer(server.url, KRequest(NAME, [tensor]), NAME)

    ready, response = asyncio.run(infer())
    assert ready and response.model_name == NAME
    by_name = {o.name: o for o in response.outputs}
    assert_same(expected, lambda output: by_name[output].as_numpy())


# ---------------------------------------------------------------------------------------------
# Output kind


def test_binary_input_gets_json_outputs_unless_asked(client):
    expected = predict(client, IMAGES[0])
    body, headers = binary_request(IMAGES[:1])
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    assert_same(expected, json_tensors(r.json()))

    body, headers = binary_request(IMAGES[:1], binary_data_output=True)
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    assert_same(expected, triton.InferResult.from_response_body(r.content, False, length).as_numpy)

    # a raw binary request (the body is the image) keeps binary outputs
    raw = {"Inference-Header-Content-Length": "0", "Content-Type": "image/png"}
    r = client.post(INFER, content=IMAGES[0], headers=raw)
    assert r.status_code == 200 and "inference-header-content-length" in r.headers


def test_output_binary_data_flags_still_choose(triton_client):
    outputs = [
        triton.InferRequestedOutput("scores", binary_data=True),
        triton.InferRequestedOutput("labels", binary_data=False),
    ]
    result = triton_client.infer(NAME, [image_input(IMAGES[:1])], outputs=outputs)
    described = {o["name"]: o for o in result.get_response()["outputs"]}
    assert "binary_data_size" in described["scores"]["parameters"]
    assert "data" in described["labels"]


# ---------------------------------------------------------------------------------------------
# Reserved parameters


def test_tritonclient_reserved_parameters_are_accepted(client, triton_client):
    expected = predict(client, IMAGES[1])
    result = triton_client.infer(
        NAME,
        [image_input(IMAGES[1:2])],
        priority=3,
        sequence_id=42,
        sequence_start=True,
        sequence_end=True,
        timeout=60_000_000,
    )
    assert_same(expected, result.as_numpy)


def test_unknown_keys_are_ignored_on_v2_but_not_on_predict(client):
    expected = predict(client, IMAGES[0], max_detections=1)
    doc = json_request(IMAGES[:1], max_detections=1, my_tracing_tag="abc", retries=2)
    r = client.post(INFER, json=doc)
    assert r.status_code == 200, r.text
    assert_same(expected, json_tensors(r.json()))
    files = {"image": ("x.png", IMAGES[0], "image/png")}
    r = client.post("/predict", params={"priority": 1}, files=files)
    assert r.status_code == 422 and "unknown parameter 'priority'" in r.text, r.text
    # the cap on parameter keys still holds: ignoring keys must not make floods cheap
    flood = json_request(IMAGES[:1], **{f"k{i}": i for i in range(65)})
    r = client.post(INFER, json=flood)
    assert r.status_code == 400 and "at most 64" in r.json()["error"], r.text
    r = client.post(INFER, json=json_request(IMAGES[:1], timeout="soon"))
    assert r.status_code == 400 and "timeout" in r.json()["error"], r.text


def test_timeout_becomes_the_request_deadline(server, triton_client):
    """A half-uploaded /predict keeps the batch waiting for its image (MAX_DELAY_MS is long), so
    the /v2 request queued behind it outlives its own timeout of 0.3 s: 504, well before
    REQUEST_TIMEOUT_S (60 s). The upload then completes and is answered."""
    body, ctype = multipart("image", "x.png", IMAGES[0])
    slow = send_predict(server, body, ctype, send_body=len(body) // 2)
    try:
        wait_for(
            server, "the upload in flight", lambda m: metric(m, "maskrt_inflight_requests") == 1
        )
        with pytest.raises(InferenceServerException, match=r"own timeout of 0\.3 s") as err:
            triton_client.infer(NAME, [image_input(IMAGES[:1])], timeout=300_000)
        assert err.value.status() == "504"
        slow.sendall(body[len(body) // 2 :])
        status, answer = read_response(slow)
        assert status == 200, answer[:300]
    finally:
        slow.close()


# ---------------------------------------------------------------------------------------------
# Compressed answers


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_tritonclient_compressed_answers(client, triton_client, algorithm):
    expected = predict(client, IMAGES[0])
    result = triton_client.infer(
        NAME, [image_input(IMAGES[:1])], response_compression_algorithm=algorithm
    )
    assert_same(expected, result.as_numpy)


@pytest.mark.parametrize(
    ("accept", "coding", "inflate"),
    [
        ("gzip", "gzip", gzip.decompress),
        ("deflate", "deflate", zlib.decompress),
        ("gzip;q=0, deflate", "deflate", zlib.decompress),
        ("br, gzip;q=0.5", "gzip", gzip.decompress),
    ],
)
def test_binary_answer_compressed_keeps_the_uncompressed_header_length(
    server, accept, coding, inflate
):
    body, headers = binary_request(IMAGES[:1], binary_data_output=True)
    # an httpx client without decoding: the bytes as sent
    with (
        server.client(headers={"Accept-Encoding": accept}) as raw,
        raw.stream("POST", INFER, content=body, headers=headers) as r,
    ):
        packed = b"".join(r.iter_raw())
    assert r.status_code == 200
    assert r.headers["content-encoding"] == coding and "Accept-Encoding" in r.headers["vary"]
    assert int(r.headers["content-length"]) == len(packed)
    assert r.headers["x-request-id"] and r.headers["x-content-type-options"] == "nosniff"
    plain = inflate(packed)
    assert len(plain) > 2 * len(packed)
    length = int(r.headers["inference-header-content-length"])
    json.loads(plain[:length])  # the header counts the uncompressed JSON
    with server.client() as identity:
        r = identity.post(INFER, content=body, headers={**headers, "Accept-Encoding": "identity"})
    assert "content-encoding" not in r.headers and r.content == plain


def test_small_answers_and_predict(server):
    with server.client(headers={"Accept-Encoding": "gzip"}) as c:
        small = c.get("/healthz")
        assert small.status_code == 200 and "content-encoding" not in small.headers
        files = {"image": ("x.png", IMAGES[0], "image/png")}
        r = c.post("/predict", files=files)
        assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
        assert r.json()["detections"]


def test_curl(server):
    curl = shutil.which("curl") or missing("curl is not on PATH (apt-get install curl)")
    command = [curl, "-sS", "--compressed", "-D", "-", "-H", "Content-Type: application/json"]
    out = subprocess.run(
        [*command, "-d", "@-", server.url + INFER],
        input=json.dumps(json_request(IMAGES[:1])).encode(),
        capture_output=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    answer = json.loads(body)  # curl inflated it
    assert answer["model_name"] == NAME
    assert all("data" in o for o in answer["outputs"])


# ---------------------------------------------------------------------------------------------
# CORS


def test_cors_allows_and_exposes_the_binary_header(client):
    r = client.options(
        INFER,
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "inference-header-content-length, content-type",
        },
    )
    assert r.status_code == 200, r.text
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "inference-header-content-length" in allowed
    body, headers = binary_request(IMAGES[:1], binary_data_output=True)
    r = client.post(INFER, content=body, headers={**headers, "Origin": ORIGIN})
    assert r.status_code == 200
    exposed = r.headers["access-control-expose-headers"].lower()
    assert "inference-header-content-length" in exposed
