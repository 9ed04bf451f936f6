"""The Open Inference Protocol on a real ``maskrt serve``, spoken by the real clients:
``tritonclient.http`` and the ``kserve`` package's ``InferenceRESTClient``.

The detections of ``/v2/models/{name}/infer`` equal ``/predict``'s for the same image and
parameters, RLE bytes included (decoded with pycocotools); every bad input is a 4xx in the
protocol's error shape; ``/v2`` requests are counted under their own ``endpoint`` label and share
batches with ``/predict`` traffic.

One server for the module: API keys on, ``MAX_DELAY_MS`` long (a lone request is never held
back; a batch waits only for requests on their way, which the batching test uses).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from kserve import InferenceRESTClient, RESTConfig
from kserve import InferInput as KInput
from kserve import InferRequest as KRequest
from pycocotools import mask as mask_utils
from server_harness import (
    jpeg,
    metric,
    multipart,
    png,
    read_response,
    send_predict,
    shapes_image,
    start_server,
    wait_for,
)
from tritonclient.utils import InferenceServerException

KEY = "oip-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}  # tritonclient adds to the headers it is given: copy
MAX_QUEUE = 16
INFER = "/v2/models/{name}/infer"
pytestmark = [pytest.mark.slow]
# the settings of the /v2 test servers: every detection (to compare with /predict), and a batch
# that waits for a half-uploaded request (uploads stalled on purpose are held for long)
SERVED = {
    "backend": "torch",
    "max_batch": 8,
    "max_delay_ms": 10000,
    "request_timeout_s": 60,
    "min_body_rate": 0,
    "score_threshold": 0.0,
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, checkpoint):
    srv = start_server(
        tmp_path_factory,
        "oip",
        {
            "model": checkpoint,
            **SERVED,
            "max_queue": MAX_QUEUE,
            "max_upload_bytes": 4_000_000,
            "api_keys": KEY,
        },
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    with server.client(headers=dict(AUTH)) as c:
        yield c


@pytest.fixture(scope="module")
def name(client) -> str:
    return client.get("/v1/model").json()["name"]


@pytest.fixture(scope="module")
def triton_client(server):
    c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
    yield c
    c.close()


IMAGES = [png(shapes_image(i)) for i in range(3)]


def predict(client, data: bytes, **params) -> dict:
    r = client.post("/predict", params=params, files={"image": ("x.png", data, "image/png")})
    assert r.status_code == 200, r.text
    return r.json()


def triton_infer(
    triton_client, name, images: list[bytes], binary: bool = True, outputs=None, **params
):
    tensor = triton.InferInput("image", [len(images)], "BYTES")
    data = images if binary else [base64.b64encode(i) for i in images]
    tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    requested = None
    if outputs is not None:
        requested = [triton.InferRequestedOutput(o, binary_data=binary) for o in outputs]
    # tritonclient sends JSON without a Content-Type, which /v2 refuses (no CORS preflight)
    headers = dict(AUTH) if binary else {**AUTH, "Content-Type": "application/json"}
    return triton_client.infer(
        name, [tensor], outputs=requested, headers=headers, parameters=params or None
    )


def assert_same(expected: dict, get, index: int = 0, masks: bool = True) -> None:
    """The ``index``-th image of a v2 response (``get(name) -> array``) equals a ``/predict``
    answer."""
    dets = expected["detections"]
    n = len(dets)
    assert get("num_detections")[index] == n
    np.testing.assert_array_equal(get("image_size")[index], [expected["height"], expected["width"]])
    boxes, scores = get("boxes")[index], get("scores")[index]
    np.testing.assert_array_equal(boxes[:n], np.array([d["box"] for d in dets], np.float32))
    np.testing.assert_array_equal(boxes[n:], 0)
    np.testing.assert_array_equal(scores[:n], np.array([d["score"] for d in dets], np.float32))
    np.testing.assert_array_equal(get("class_ids")[index][:n], [d["class_id"] for d in dets])
    assert [_bytes(v) for v in get("labels")[index][:n]] == [d["label"].encode() for d in dets]
    if not masks:
        return
    counts = [_bytes(v) for v in get("masks")[index]]
    assert counts[:n] == [d["mask"]["counts"].encode() for d in dets]
    assert set(counts[n:]) <= {b""}
    for det, rle in zip(dets, counts):
        ours = mask_utils.decode({"size": [expected["height"], expected["width"]], "counts": rle})
        theirs = mask_utils.decode({**det["mask"], "counts": det["mask"]["counts"].encode()})
        np.testing.assert_array_equal(ours, theirs)


def _bytes(value) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


# ---------------------------------------------------------------------------------------------
# Probes and metadata


def test_tritonclient_probes_and_metadata(triton_client, name):
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert triton_client.is_model_ready(name, headers=dict(AUTH))
    assert triton_client.is_model_ready(name, "1", headers=dict(AUTH))
    assert not triton_client.is_model_ready("no-such-model", headers=dict(AUTH))
    assert not triton_client.is_model_ready(name, "2", headers=dict(AUTH))
    meta = triton_client.get_server_metadata()
    assert meta["name"] == "maskrt" and "binary_tensor_data" in meta["extensions"]
    model = triton_client.get_model_metadata(name, headers=dict(AUTH))
    assert model["name"] == name and model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    outputs = {o["name"]: (o["datatype"], o["shape"]) for o in model["outputs"]}
    assert outputs["boxes"] == ("FP32", [-1, -1, 4]) and outputs["masks"] == ("BYTES", [-1, -1])
    assert triton_client.get_model_metadata(name, "1", headers=dict(AUTH)) == model
    with pytest.raises(InferenceServerException, match="no-such-model") as err:
        triton_client.get_model_metadata("no-such-model", headers=dict(AUTH))
    assert err.value.status() == "404"


def test_kserve_client_probes(server, name):
    async def probe() -> tuple[bool, bool, bool, bool]:
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as c:
            return (
                await c.is_server_live(server.url),
                await c.is_server_ready(server.url),
                await c.is_model_ready(server.url, name, headers=dict(AUTH)),
                await c.is_model_ready(server.url, "no-such-model", headers=dict(AUTH)),
            )

    assert asyncio.run(probe()) == (True, True, True, False)


# ---------------------------------------------------------------------------------------------
# Inference: the same detections as /predict


def test_binary_infer_equals_predict(client, triton_client, name):
    expected = predict(client, IMAGES[0])
    assert expected["detections"], "the test image must have detections"
    result = triton_infer(triton_client, name, IMAGES[:1])
    assert_same(expected, result.as_numpy)
    # tritonclient asked for no outputs: all of them came, binary
    response = result.get_response()
    assert {o["name"] for o in response["outputs"]} >= {"boxes", "masks", "labels"}
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])
    assert response["model_name"] == name and response["model_version"] == "1"


def test_json_infer_equals_predict(client, triton_client, name):
    expected = predict(client, IMAGES[1])
    outputs = ["num_detections", "image_size", "boxes", "scores", "class_ids", "labels", "masks"]
    result = triton_infer(triton_client, name, IMAGES[1:2], binary=False, outputs=outputs)
    assert all("data" in o for o in result.get_response()["outputs"])
    assert_same(expected, result.as_numpy)


def test_plain_json_request_and_versioned_route(client, name):
    expected = predict(client, IMAGES[2])
    doc = {
        "id": "my-id",
        "inputs": [
            {
                "name": "image",
                "datatype": "BYTES",
                "shape": [1],
                "data": [base64.b64encode(IMAGES[2]).decode()],
            }
        ],
    }
    r = client.post(f"/v2/models/{name}/versions/1/infer", json=doc)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["id"] == "my-id"
    tensors = {o["name"]: o for o in body["outputs"]}

    def get(output: str) -> np.ndarray:
        return np.array(tensors[output]["data"]).reshape(tensors[output]["shape"])

    assert_same(expected, get)


def test_raw_binary_request(client, name):
    expected = predict(client, IMAGES[0], score_threshold=0.3)
    r = client.post(
        f"/v2/models/{name}/infer",
        params={"score_threshold": 0.3},
        content=IMAGES[0],
        headers={"Inference-Header-Content-Length": "0", "Content-Type": "image/png"},
    )
    assert r.status_code == 200, r.text
    length = int(r.headers["inference-header-content-length"])
    result = triton.InferResult.from_response_body(r.content, header_length=length)
    assert_same(expected, result.as_numpy)


def test_several_images_in_one_request(client, triton_client, name):
    """Compared with /predict/batch: the same images in one batch (the backend's arithmetic may
    differ in the last bit between batch sizes)."""
    images = [*IMAGES, jpeg(shapes_image(3))]
    files = [("images", (f"{i}.img", data, "image/*")) for i, data in enumerate(images)]
    r = client.post("/predict/batch", files=files)
    assert r.status_code == 200, r.text
    expected = r.json()["results"]
    result = triton_infer(triton_client, name, images)
    assert result.as_numpy("boxes").shape[0] == len(images)
    for i, e in enumerate(expected):
        assert_same(e, result.as_numpy, index=i)


@pytest.mark.parametrize(
    "params",
    [
        {"score_threshold": 0.5},
        {"max_detections": 2},
        {"masks": "none"},
        {"score_threshold": 0.2, "max_detections": 1, "masks": "rle"},
    ],
)
def test_parameters(client, triton_client, name, params):
    expected = predict(client, IMAGES[0], **params)
    result = triton_infer(triton_client, name, IMAGES[:1], **params)
    masks = params.get("masks") != "none"
    assert_same(expected, result.as_numpy, masks=masks)
    assert (result.as_numpy("masks") is not None) == masks


def test_compressed_request(client, triton_client, name):
    expected = predict(client, IMAGES[2])
    tensor = triton.InferInput("image", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([IMAGES[2]], dtype=np.object_))
    result = triton_client.infer(
        name, [tensor], headers=dict(AUTH), request_compression_algorithm="gzip"
    )
    assert_same(expected, result.as_numpy)


def test_subset_of_outputs(triton_client, name):
    result = triton_infer(triton_client, name, IMAGES[:1], outputs=["scores"])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["scores"]


@pytest.mark.parametrize("binary", [True, False])
def test_kserve_client_infer(client, server, name, binary):
    expected = predict(client, IMAGES[1])
    tensor = KInput("image", [1], "BYTES")
    data = IMAGES[1] if binary else base64.b64encode(IMAGES[1])
    tensor.set_data_from_numpy(np.array([data], dtype=np.object_), binary_data=binary)

    async def infer():
        async with InferenceRESTClient(RESTConfig(protocol="v2")) as c:
            return await c.infer(server.url, KRequest(name, [tensor]), name, headers=dict(AUTH))

    response = asyncio.run(infer())
    by_name = {o.name: o for o in response.outputs}
    assert_same(expected, lambda output: by_name[output].as_numpy())


# ---------------------------------------------------------------------------------------------
# Bad inputs: 4xx in the protocol's shape


def _v2_error(r: httpx.Response, status: int, text: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and text in body["error"], body
    assert r.headers["x-request-id"]


def _infer_doc(**spec) -> dict:
    tensor = {"name": "image", "datatype": "BYTES", "shape": [1], "data": [""], **spec}
    return {"inputs": [tensor]}


@pytest.mark.parametrize(
    ("doc", "status", "text"),
    [
        (_infer_doc(data=[base64.b64encode(b"not an image").decode()]), 400, "image[0]"),
        (_infer_doc(datatype="UINT8"), 400, "datatype BYTES"),
        (_infer_doc(shape=[1, 1]), 400, "shape [B]"),
        (_infer_doc(data=["%%%"]), 400, "base64"),
        ({**_infer_doc(), "outputs": [{"name": "segmentation"}]}, 400, "unknown output"),
        (_infer_doc(name="pixels"), 400, "unknown input 'pixels'"),
        (_infer_doc(shape=[MAX_QUEUE + 1], data=[""] * (MAX_QUEUE + 1)), 413, "limit"),
        ({**_infer_doc(), "parameters": {"score_threshold": 2}}, 422, "score_threshold"),
        ({**_infer_doc(), "parameters": {"timeout": -1}}, 400, "parameters.timeout"),
    ],
)
def test_bad_requests(client, name, doc, status, text):
    doc["inputs"][0]["data"] = [
        d or base64.b64encode(IMAGES[0]).decode() for d in doc["inputs"][0]["data"]
    ]
    _v2_error(client.post(INFER.format(name=name), json=doc), status, text)


def test_bad_requests_with_the_clients(server, triton_client, name):
    before = metric(server.metrics(), "maskrt_requests_total", endpoint=INFER, status="400")
    with pytest.raises(InferenceServerException, match="image") as err:
        triton_infer(triton_client, name, [b"\x89PNG\r\n\x1a\n broken"])
    assert err.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown output") as err:
        triton_infer(triton_client, name, IMAGES[:1], outputs=["segmentation"])
    assert err.value.status() == "400"
    tensor = triton.InferInput("image", [1, 2], "UINT8")
    tensor.set_data_from_numpy(np.zeros((1, 2), np.uint8))
    with pytest.raises(InferenceServerException, match="datatype BYTES") as err:
        triton_client.infer(name, [tensor], headers=dict(AUTH))
    assert err.value.status() == "400"
    after = metric(server.metrics(), "maskrt_requests_total", endpoint=INFER, status="400")
    assert after - before == 3


def test_unknown_model_keys_and_content_type(server, client, name):
    doc = _infer_doc(data=[base64.b64encode(IMAGES[0]).decode()])
    _v2_error(client.post(INFER.format(name="nope"), json=doc), 404, "nope")
    _v2_error(client.post(f"/v2/models/{name}/versions/7/infer", json=doc), 404, "version")
    with server.client() as anonymous:
        _v2_error(anonymous.post(INFER.format(name=name), json=doc), 401, "API key")
        _v2_error(anonymous.get(f"/v2/models/{name}"), 401, "API key")
        assert anonymous.get("/v2/health/live").json() == {"live": True}
        assert anonymous.get("/v2/health/ready").json() == {"ready": True}
    body, ctype = multipart("image", "x.png", IMAGES[0])
    r = client.post(INFER.format(name=name), content=body, headers={"Content-Type": ctype})
    _v2_error(r, 415, "Inference-Header-Content-Length")
    r = client.post(
        INFER.format(name=name),
        content=b"x" * 5_000_000,
        headers={"Inference-Header-Content-Length": "0"},
    )
    _v2_error(r, 413, "limit")


# ---------------------------------------------------------------------------------------------
# Metrics and batching


def test_metrics_and_batching_with_predict(server, name):
    """A /v2 request and a /predict request in one batch: a half-uploaded /predict keeps the
    worker waiting for its image, the /v2 request queues meanwhile, then the upload completes."""
    body, ctype = multipart("image", "x.png", IMAGES[0])
    before = server.metrics()

    def v2_request() -> np.ndarray:  # tritonclient's connections belong to the thread
        c = triton.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=120)
        try:
            return triton_infer(c, name, IMAGES[1:2]).as_numpy("num_detections")
        finally:
            c.close()

    slow = send_predict(server, body, ctype, dict(AUTH), send_body=len(body) // 2)
    wait_for(server, "the upload in flight", lambda m: metric(m, "maskrt_inflight_requests") == 1)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        v2 = pool.submit(v2_request)
        wait_for(server, "the v2 image queued", lambda m: metric(m, "maskrt_queue_depth") == 1)
        slow.sendall(body[len(body) // 2 :])
        status, answer = read_response(slow)
        assert status == 200, answer[:300]
        assert v2.result().shape == (1,)
    slow.close()
    after = server.metrics()

    def delta(sample: str, **labels: str) -> float:
        return metric(after, sample, **labels) - metric(before, sample, **labels)

    assert delta("maskrt_images_total") == 2
    assert delta("maskrt_batch_size_count") == 1  # one batch held both
    assert delta("maskrt_requests_total", endpoint=INFER, status="200") == 1
    assert delta("maskrt_requests_total", endpoint="/predict", status="200") == 1
    assert metric(after, "maskrt_queue_depth") == 0


def test_request_id_echoed(client, name):
    doc = _infer_doc(data=[base64.b64encode(IMAGES[0]).decode()])
    r = client.post(INFER.format(name=name), json=doc, headers={"X-Request-ID": "oip-test-1"})
    assert r.status_code == 200 and r.headers["x-request-id"] == "oip-test-1"
    assert json.loads(r.content)["model_name"] == name
