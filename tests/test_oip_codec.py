"""The Open Inference Protocol codec against the real clients' own encoders and decoders:
``tritonclient.http`` builds the request bodies and reads the responses, and so does the
``kserve`` package's ``InferRequest`` / ``InferResponse``."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import numpy as np
import pytest
import torch
from kserve import InferInput as KInput
from kserve import InferRequest as KRequest
from kserve import InferResponse as KResponse
from kserve.protocol.infer_type import RequestedOutput as KOutput
from tritonclient.http import InferInput, InferRequestedOutput, InferResult
from tritonclient.http._utils import _get_inference_request
from tritonclient.utils import serialize_byte_tensor

from maskrt.runtime.dataplane import ImageResult
from maskrt.runtime.decode import DecodedImage
from maskrt.runtime.pipeline import Inferred
from maskrt.server.errors import ApiError
from maskrt.server.oip import (
    OUTPUTS,
    decompress,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
    serialize_bytes,
)

IMAGES = [b"\x89PNG first image", b"", b"\xff\xd8 third \x00 image \xff\xd9"]


def triton_body(inputs, outputs=None, **kwargs) -> tuple[bytes, str | None]:
    body, json_size = _get_inference_request(
        inputs=inputs,
        request_id=kwargs.pop("request_id", ""),
        outputs=outputs,
        sequence_id=kwargs.pop("sequence_id", 0),
        sequence_start=kwargs.pop("sequence_start", False),
        sequence_end=kwargs.pop("sequence_end", False),
        priority=kwargs.pop("priority", 0),
        timeout=kwargs.pop("timeout", None),
        custom_parameters=kwargs.pop("parameters", None),
    )
    body = body if isinstance(body, bytes) else body.encode()
    return body, None if json_size is None else str(json_size)


def triton_input(images: list[bytes], binary: bool) -> InferInput:
    tensor = InferInput("image", [len(images)], "BYTES")
    if binary:
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_), binary_data=True)
    else:
        encoded = [base64.b64encode(i) for i in images]
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_), binary_data=False)
    return tensor


def test_tritonclient_binary_request():
    body, header = triton_body([triton_input(IMAGES, binary=True)], request_id="r-1")
    assert header is not None
    req = parse_infer_request(body, header, max_images=8)
    assert req.images == IMAGES
    assert req.id == "r-1"
    assert req.parameters == {}
    # tritonclient names no outputs and asks for binary ones: all outputs, binary
    assert req.selected_outputs(masks=True) == dict.fromkeys(OUTPUTS, True)
    assert "masks" not in req.selected_outputs(masks=False)


def test_tritonclient_json_request_with_outputs_and_parameters():
    outputs = [InferRequestedOutput("boxes", binary_data=False), InferRequestedOutput("masks")]
    body, header = triton_body(
        [triton_input(IMAGES, binary=False)],
        outputs,
        parameters={"score_threshold": 0.25, "max_detections": 3, "masks": "rle"},
    )
    assert header is None
    req = parse_infer_request(body, header, max_images=8)
    assert req.images == IMAGES
    assert req.parameters == {"score_threshold": 0.25, "max_detections": 3, "masks": "rle"}
    assert req.selected_outputs(masks=True) == {"boxes": False, "masks": True}
    with pytest.raises(ApiError, match="masks=none") as err:
        req.selected_outputs(masks=False)
    assert err.value.status == 400


def test_plain_json_request_gets_json_outputs():
    doc = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="]}]}
    req = parse_infer_request(json.dumps(doc).encode(), None, max_images=8)
    assert req.images == [b"hi"]
    assert set(req.selected_outputs(masks=True).values()) == {False}
    doc["parameters"] = {"binary_data_output": True}
    req = parse_infer_request(json.dumps(doc).encode(), None, max_images=8)
    assert set(req.selected_outputs(masks=True).values()) == {True}


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_request(binary):
    tensor = KInput("image", [len(IMAGES)], "BYTES")
    data = IMAGES if binary else [base64.b64encode(i) for i in IMAGES]
    tensor.set_data_from_numpy(np.array(data, dtype=np.object_), binary_data=binary)
    request = KRequest(
        "shapes",
        [tensor],
        request_outputs=[KOutput("scores", {"binary_data": True})],
        parameters={"masks": "none"},
    )
    body, json_length = request.to_rest()
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    req = parse_infer_request(body, None if json_length is None else str(json_length), max_images=8)
    assert req.images == IMAGES
    assert req.parameters == {"masks": "none"}
    assert req.selected_outputs(masks=False) == {"scores": True}


def test_binary_input_without_output_flags_gets_json_outputs():
    """As Triton and KServe: binary tensor data in does not mean binary out."""
    body, header = triton_body([triton_input(IMAGES, binary=True)])
    assert header is not None
    doc = json.loads(body[: int(header)])
    del doc["parameters"]["binary_data_output"]  # what a hand-written client sends
    header_bytes = json.dumps(doc).encode()
    body = header_bytes + body[int(header) :]
    req = parse_infer_request(body, str(len(header_bytes)), max_images=8)
    assert set(req.selected_outputs(masks=True).values()) == {False}


def test_triton_reserved_and_unknown_parameters():
    body, header = triton_body(
        [triton_input(IMAGES, binary=True)],
        parameters={"masks": "none", "tag": "x"},
        priority=2,
        sequence_id=9,
        sequence_start=True,
        timeout=1_500_000,
    )
    req = parse_infer_request(body, header, max_images=8)
    assert req.parameters == {"masks": "none"}  # what the model reads; the rest is not its
    assert req.timeout_s == 1.5


def test_raw_binary_request():
    req = parse_infer_request(IMAGES[0], "0", max_images=8)
    assert req.images == [IMAGES[0]]
    assert req.parameters == {}
    assert set(req.selected_outputs(masks=True).values()) == {True}


def _json_request(**input_fields) -> bytes:
    spec = {"name": "image", "datatype": "BYTES", "shape": [1], "data": ["aGk="], **input_fields}
    return json.dumps({"inputs": [spec]}).encode()


@pytest.mark.parametrize(
    ("body", "header", "status", "message"),
    [
        (b"{not json", None, 400, "not valid JSON"),
        (b"[]", None, 400, "JSON object"),
        (b"", None, 400, "empty"),
        (b"", "0", 400, "empty"),
        (b"{}", "10", 400, "only 2 bytes"),
        (b"{}", "x", 400, "byte count"),
        (b'{"inputs": []}', None, 400, "non-empty list"),
        (_json_request(name="images"), None, 400, "unknown input 'images'"),
        (_json_request(datatype="UINT8"), None, 400, "datatype BYTES"),
        (_json_request(shape=[1, 1]), None, 400, "shape"),
        (_json_request(shape=[0], data=[]), None, 400, "shape"),
        (_json_request(shape=[2]), None, 400, "but 1 elements"),
        (_json_request(shape=[9], data=["aGk="] * 9), None, 413, "limit is 8"),
        (_json_request(data=["not base64!"]), None, 400, "not valid base64"),
        (_json_request(data=[7]), None, 400, "base64 string"),
        (_json_request(data=None), None, 400, "needs 'data'"),
    ],
)
def test_bad_requests(body, header, status, message):
    with pytest.raises(ApiError, match=message) as err:
        parse_infer_request(body, header, max_images=8)
    assert err.value.status == status


def test_bad_binary_data():
    body, header = triton_body([triton_input(IMAGES, binary=True)])
    json_size = int(header)
    with pytest.raises(ApiError, match=r"declares .* bytes of binary data"):
        parse_infer_request(body[:-1], header, max_images=8)
    with pytest.raises(ApiError, match="declare"):
        parse_infer_request(body + b"x", header, max_images=8)
    # a corrupt element length inside the declared size
    tampered = body[:json_size] + b"\xff\xff\xff\x00" + body[json_size + 4 :]
    with pytest.raises(ApiError, match=r"image\[0\]: the element declares"):
        parse_infer_request(tampered, header, max_images=8)


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ([{"name": "segmentation"}], "unknown output 'segmentation'"),
        ([{"name": "boxes"}, {"name": "boxes"}], "twice"),
        ([{"name": "boxes", "parameters": {"classification": 2}}], "unsupported parameters"),
        ([{"name": "boxes", "parameters": {"binary_data": "yes"}}], "true or false"),
    ],
)
def test_bad_outputs(outputs, message):
    doc = json.loads(_json_request())
    doc["outputs"] = outputs
    with pytest.raises(ApiError, match=message) as err:
        parse_infer_request(json.dumps(doc).encode(), None, max_images=8)
    assert err.value.status == 400


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(algorithm):
    body, _ = triton_body([triton_input(IMAGES, binary=True)])
    packed = gzip.compress(body) if algorithm == "gzip" else zlib.compress(body)
    assert decompress(packed, algorithm, limit=len(body)) == body
    with pytest.raises(ApiError, match="larger than") as err:
        decompress(packed, algorithm, limit=len(body) - 1)
    assert err.value.status == 413
    with pytest.raises(ApiError, match="truncated"):
        decompress(packed[:-8], algorithm, limit=len(body))
    with pytest.raises(ApiError, match="corrupt"):
        decompress(b"garbage" + packed, algorithm, limit=len(body))
    with pytest.raises(ApiError, match="Content-Encoding 'br'") as err:
        decompress(packed, "br", limit=len(body))
    assert err.value.status == 415
    assert decompress(body, None, limit=len(body)) == body


def test_serialize_bytes_is_tritons():
    tensor = np.array([[b"abc", b""], [b"\x00\xff", b"z" * 300]], dtype=np.object_)
    assert serialize_bytes(tensor) == serialize_byte_tensor(tensor).item()


def image_result(height: int, width: int, detections: list) -> ImageResult:
    image = DecodedImage(torch.zeros((3, height, width), dtype=torch.uint8), "PNG", "pillow", 0.0)
    return ImageResult(image, Inferred(detections, 0.0, 0.0, 0.0, 0.0))


RESULTS = [
    image_result(
        480,
        640,
        [
            {
                "box": [1.5, 2.25, 30.0, 40.125],
                "score": 0.9375,
                "class_id": 2,
                "label": "circle",
                "mask": {"size": [480, 640], "counts": "PPa01O00"},
            },
            {
                "box": [5.0, 6.0, 7.0, 8.0],
                "score": 0.5,
                "class_id": 1,
                "label": "square",
                "mask": {"size": [480, 640], "counts": "`0<;"},
            },
        ],
    ),
    image_result(10, 20, []),
]


def check_outputs(get) -> None:
    """``get(name) -> numpy array`` as a client decodes it."""
    np.testing.assert_array_equal(get("num_detections"), [2, 0])
    np.testing.assert_array_equal(get("image_size"), [[480, 640], [10, 20]])
    boxes = get("boxes")
    assert boxes.dtype == np.float32 and boxes.shape == (2, 2, 4)
    np.testing.assert_array_equal(boxes[0], [[1.5, 2.25, 30.0, 40.125], [5, 6, 7, 8]])
    np.testing.assert_array_equal(boxes[1], 0)
    np.testing.assert_array_equal(get("scores"), [[0.9375, 0.5], [0, 0]])
    np.testing.assert_array_equal(get("class_ids"), [[2, 1], [0, 0]])
    labels = [[_text(v) for v in row] for row in get("labels")]
    assert labels == [["circle", "square"], ["", ""]]
    masks = [[_text(v) for v in row] for row in get("masks")]
    assert masks == [["PPa01O00", "`0<;"], ["", ""]]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@pytest.mark.parametrize("binary", [True, False])
def test_response_read_by_tritonclient(binary):
    body, header_length = encode_infer_response(
        "shapes", RESULTS, dict.fromkeys(OUTPUTS, binary), "req-9"
    )
    assert (header_length is not None) == binary
    result = InferResult.from_response_body(body, header_length=header_length)
    check_outputs(result.as_numpy)
    response = result.get_response()
    assert response["model_name"] == "shapes" and response["id"] == "req-9"


@pytest.mark.parametrize("binary", [True, False])
def test_response_read_by_kserve(binary):
    body, header_length = encode_infer_response("shapes", RESULTS, dict.fromkeys(OUTPUTS, binary))
    if header_length is None:
        response = KResponse.from_rest(json.loads(body))
    else:
        response = KResponse.from_bytes(body, header_length)
    by_name = {o.name: o for o in response.outputs}
    check_outputs(lambda name: by_name[name].as_numpy())


def test_response_mixed_and_empty():
    body, header_length = encode_infer_response(
        "shapes", [image_result(5, 5, [])], {"boxes": True, "labels": False}
    )
    result = InferResult.from_response_body(body, header_length=header_length)
    assert result.as_numpy("boxes").shape == (1, 0, 4)
    assert result.as_numpy("labels").shape == (1, 0)


def test_model_metadata():
    meta = model_metadata("shapes", "onnxruntime")
    assert meta["name"] == "shapes" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert {o["name"]: o["shape"] for o in meta["outputs"]}["boxes"] == [-1, -1, 4]
