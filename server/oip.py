"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) for maskrt's one model, as plain
functions: parse an infer request, encode its response, describe the server and the model.

The model takes one input, ``image`` (BYTES ``[B]``, each element an encoded image), and answers
with the tensors of :data:`OUTPUTS` (N = the largest detection count of the request; rows past an
image's count are zero or empty). A request comes in one of three forms:

1. JSON: ``{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [B], "data": [...]}]}``
   with each image a base64 string (JSON strings cannot carry arbitrary bytes);
2. the binary tensor data extension: the JSON header (its length in the
   ``Inference-Header-Content-Length`` header), then each input's bytes as its
   ``parameters.binary_data_size`` declares them; BYTES elements are a 4-byte little-endian
   length followed by the bytes (what ``tritonclient.http`` sends);
3. raw binary: ``Inference-Header-Content-Length: 0`` and the body is one encoded image.

An output is binary when its own ``parameters.binary_data`` says so, else when the request's
``parameters.binary_data_output`` does, else it is JSON (as in Triton and KServe: a client that
sends its images as binary data may still read JSON); a request that names no outputs gets all of
them. A raw binary request's outputs are binary.

The request's ``parameters`` are the native API's (``score_threshold``, ``max_detections``,
``masks``), ``binary_data_output``, and the keys Triton's clients send: ``timeout``
(microseconds) shortens the request's deadline; ``priority`` and ``sequence_*`` are accepted and
ignored (one model, no sequences). Any other key is ignored too, as Triton passes unknown keys on
to its backends; at most :data:`MAX_PARAMETERS` keys are read.

Bad requests raise :class:`~maskrt.server.errors.ApiError` (400, 413 for too many images); the
routes answer them in the protocol's shape, ``{"error": "..."}``
(:func:`maskrt.server.errors.error_body`).
"""

from __future__ import annotations

import binascii
import contextlib
import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maskrt import __version__
from maskrt.runtime.dataplane import ImageResult
from maskrt.runtime.postprocess import Detection
from maskrt.server import bounded_json
from maskrt.server.errors import ApiError, shown
from maskrt.server.schemas import PredictParams

HEADER_LENGTH = "Inference-Header-Content-Length"
# Bounds of a request's JSON, checked before it is parsed. A request is a handful of objects
# (inputs, outputs, parameters) plus one element per image, so these leave room for any client.
MAX_JSON_HEADER_BYTES = 1 << 20  # the JSON before binary tensor data (its images come after)
MAX_JSON_DEPTH = 32
MAX_JSON_ELEMENTS = 4096  # plus one per image the request may hold (max_images)
MAX_PARAMETERS = 64  # keys of one "parameters" object
_BYTE_COUNT = re.compile(r"[0-9]{1,15}")  # ASCII digits only: str.isdigit() also takes "²"
_PIECE = 1 << 20  # bytes inflated at a time
VERSION = "1"
INPUT = "image"
# the request parameters the model reads; the route validates them as /predict's
MODEL_PARAMETERS = frozenset(PredictParams.model_fields)

# name -> (datatype, shape with -1 for variable dimensions)
OUTPUTS: dict[str, tuple[str, tuple[int, ...]]] = {
    "num_detections": ("INT32", (-1,)),
    "boxes": ("FP32", (-1, -1, 4)),
    "scores": ("FP32", (-1, -1)),
    "class_ids": ("INT32", (-1, -1)),
    "labels": ("BYTES", (-1, -1)),
    "image_size": ("INT32", (-1, 2)),
    "masks": ("BYTES", (-1, -1)),
}
_NUMPY = {"INT32": np.dtype("<i4"), "FP32": np.dtype("<f4")}
_LENGTH = struct.Struct("<I")
_NUMBERS: dict[str, Callable[[Detection], Any]] = {
    "boxes": lambda d: d["box"],
    "scores": lambda d: d["score"],
    "class_ids": lambda d: d["class_id"],
}


@dataclass
class InferRequest:
    """A parsed infer request: the images, the model parameters, the outputs it asks for."""

    images: list[bytes]
    parameters: dict[str, Any] = field(default_factory=dict)  # for PredictParams
    outputs: dict[str, bool | None] = field(default_factory=dict)  # name -> binary (None: default)
    binary_output: bool = False  # default of outputs that do not say
    id: str | None = None
    timeout_s: float | None = None  # the client's deadline (Triton's timeout), from its arrival

    def selected_outputs(self, masks: bool) -> dict[str, bool]:
        """Output name -> binary; ``masks`` is false when the request's ``masks`` is ``none``."""
        if not self.outputs:
            return {n: self.binary_output for n in OUTPUTS if masks or n != "masks"}
        if "masks" in self.outputs and not masks:
            raise ApiError(400, "invalid_output", "output 'masks' is requested with masks=none")
        return {
            n: self.binary_output if binary is None else binary
            for n, binary in self.outputs.items()
        }


def _bad(message: str) -> ApiError:
    return ApiError(400, "invalid_request", message)


# ---------------------------------------------------------------------------------------------
# Requests


def decompress(
    body: bytes,
    encoding: str | None,
    *,
    limit: int,
    inspect: Callable[[bytes], None] | None = None,
) -> bytes:
    """The body of a request sent with ``Content-Encoding`` ``gzip`` or ``deflate`` (what
    ``tritonclient``'s ``request_compression_algorithm`` sends), at most ``limit`` bytes once
    inflated (413 past it). It is inflated a piece at a time, each piece passed to ``inspect``
    (which raises to stop), so a bad body is refused before it is whole (:func:`json_inspector`).
    """
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(
            415,
            "unsupported_media_type",
            f"unsupported Content-Encoding {shown(encoding)}: send gzip, deflate or none",
        )
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
    pieces: list[bytes] = []
    size = 0
    rest = body
    while not inflater.eof:
        try:
            piece = inflater.decompress(rest, _PIECE)
        except zlib.error as exc:
            raise _bad(f"the {encoding} body is corrupt ({exc})") from None
        rest = inflater.unconsumed_tail
        if not piece and not rest:
            raise _bad(f"the {encoding} body is truncated")
        size += len(piece)
        if size > limit:
            raise ApiError(
                413, "body_too_large", f"the inflated request body is larger than {limit} bytes"
            )
        if inspect is not None:
            inspect(piece)
        pieces.append(piece)
    if inflater.unused_data:  # a second gzip member, or anything else: refused, not dropped
        raise _bad(
            f"the {encoding} body has {len(inflater.unused_data)} bytes after its end (a second "
            f"{encoding} member or trailing data); send one {encoding} stream"
        )
    return b"".join(pieces)


def json_inspector(header_length: str | None, *, max_images: int) -> Callable[[bytes], None]:
    """What :func:`decompress` calls with each inflated piece: the request's JSON (the whole
    body, or its first ``Inference-Header-Content-Length`` bytes) goes through the bounds of
    :func:`parse_infer_request` as it is inflated, so millions of empty lists in a little gzip
    are refused after the first of them, before the rest is inflated."""
    left = -1 if header_length is None else header_byte_count(header_length)
    scanner = _scanner(max_images)

    def inspect(piece: bytes) -> None:
        nonlocal left
        if left >= 0:
            piece, left = piece[:left], max(0, left - len(piece))
        with _json_refused():
            scanner.feed(piece)

    return inspect


def _scanner(max_images: int) -> bounded_json.Scanner:
    return bounded_json.Scanner(
        max_depth=MAX_JSON_DEPTH, max_elements=MAX_JSON_ELEMENTS + max_images
    )


@contextlib.contextmanager
def _json_refused() -> Iterator[None]:
    try:
        yield
    except bounded_json.JsonRefused as exc:
        raise _bad(f"the inference request is {exc}") from None


def parse_infer_request(body: bytes, header_length: str | None, *, max_images: int) -> InferRequest:
    """The request in ``body``; ``header_length`` is the ``Inference-Header-Content-Length``
    header (``None`` for a JSON request). The JSON is held to :data:`MAX_JSON_DEPTH` and
    :data:`MAX_JSON_ELEMENTS` before it is parsed; this is work for a thread, not the event
    loop."""
    if header_length is None:
        header, binary = body, memoryview(b"")
    else:
        size = header_byte_count(header_length)
        if size == 0:
            if not body:
                raise _bad("the request body is empty: send the image as the body")
            return InferRequest([body], binary_output=True)
        if size > len(body):
            raise _bad(f"{HEADER_LENGTH} is {size}, but the body has only {len(body)} bytes")
        header, binary = body[:size], memoryview(body)[size:]
    if not header:
        raise _bad("the request body is empty: send an inference request (JSON)")
    with _json_refused():
        doc = bounded_json.loads(header, _scanner(max_images))
    if not isinstance(doc, dict):
        raise _bad("the inference request must be a JSON object")
    # JSON outputs unless binary_data_output or an output's binary_data asks (as Triton answers)
    return request_of(doc, binary, binary_output=False, max_images=max_images)


def request_of(
    doc: dict[str, Any], binary: memoryview, *, binary_output: bool, max_images: int
) -> InferRequest:
    """The request a parsed JSON document describes, its inputs' ``binary_data_size`` bytes in
    ``binary`` (the gRPC front door builds such a document from its message); ``binary_output``:
    the default of outputs that do not say."""
    images, used = _parse_inputs(doc.get("inputs"), binary, max_images)
    if used != len(binary):
        raise _bad(
            f"the binary data after the JSON header is {len(binary)} bytes, but the inputs "
            f"declare {used} (binary_data_size)"
        )
    parameters = _object(doc.get("parameters"), "parameters")
    binary_output = parameters.pop("binary_data_output", binary_output)
    if not isinstance(binary_output, bool):
        raise _bad(
            f"parameters.binary_data_output must be true or false, got {shown(binary_output)}"
        )
    timeout_s = _timeout(parameters.pop("timeout", None))
    request_id = doc.get("id")
    return InferRequest(
        images,
        {k: v for k, v in parameters.items() if k in MODEL_PARAMETERS},
        _parse_outputs(doc.get("outputs")),
        binary_output,
        None if request_id is None else str(request_id),
        timeout_s,
    )


def _timeout(value: Any) -> float | None:
    """Triton's ``timeout`` parameter (microseconds, 0: none) in seconds."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise _bad(f"parameters.timeout must be microseconds (an integer >= 0), got {shown(value)}")
    return value / 1e6 if value else None


def header_byte_count(value: str) -> int:
    """The value of ``Inference-Header-Content-Length``: ASCII digits, at most
    :data:`MAX_JSON_HEADER_BYTES`."""
    if not _BYTE_COUNT.fullmatch(value.strip()):
        raise _bad(f"{HEADER_LENGTH} must be a byte count, got {shown(value)}")
    size = int(value)
    if size > MAX_JSON_HEADER_BYTES:
        raise _bad(
            f"{HEADER_LENGTH} is {size}: the JSON header may have at most "
            f"{MAX_JSON_HEADER_BYTES} bytes (send the images as binary data after it)"
        )
    return size


def _object(value: Any, what: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _bad(f"{what} must be a JSON object, got {shown(value)}")
    if len(value) > MAX_PARAMETERS:
        raise _bad(f"{what} has {len(value)} keys; at most {MAX_PARAMETERS} are read")
    return dict(value)


def _parse_inputs(inputs: Any, binary: memoryview, max_images: int) -> tuple[list[bytes], int]:
    """The images of the one input and how many bytes of ``binary`` it used."""
    if not isinstance(inputs, list) or not inputs:
        raise _bad(f"'inputs' must be a non-empty list; the model takes one input, {INPUT!r}")
    for spec in inputs:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name != INPUT:
            raise _bad(f"unknown input {shown(name)}: the model takes one input, {INPUT!r}")
    if len(inputs) > 1:
        raise _bad(f"input {INPUT!r} is given {len(inputs)} times")
    spec = inputs[0]
    if spec.get("datatype") != "BYTES":
        raise _bad(
            f"input {INPUT!r} must have datatype BYTES (encoded images), got "
            f"{shown(spec.get('datatype'))}"
        )
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 1
        or not isinstance(shape[0], int)
        or isinstance(shape[0], bool)
        or shape[0] < 1
    ):
        raise _bad(f"input {INPUT!r} must have shape [B] with B >= 1 images, got {shown(shape)}")
    count = shape[0]
    if count > max_images:
        raise ApiError(
            413, "too_many_images", f"{count} images in one request; the limit is {max_images}"
        )
    size = _object(spec.get("parameters"), f"input {INPUT!r} parameters").get("binary_data_size")
    if size is None:
        return _from_json(spec.get("data"), count), 0
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _bad(f"input {INPUT!r}: binary_data_size must be a byte count, got {shown(size)}")
    if "data" in spec:
        raise _bad(f"input {INPUT!r} has both 'data' and binary_data_size")
    if size > len(binary):
        raise _bad(
            f"input {INPUT!r} declares {size} bytes of binary data, but {len(binary)} follow "
            "the JSON header"
        )
    return split_bytes(binary[:size], count), size


def _from_json(data: Any, count: int) -> list[bytes]:
    if not isinstance(data, list):
        raise _bad(
            f"input {INPUT!r} needs 'data' (a list of base64 strings) or "
            "parameters.binary_data_size (binary tensor data)"
        )
    if len(data) == 1 and isinstance(data[0], list):  # a nested [[...]] of the one dimension
        data = data[0]
    if len(data) != count:
        raise _bad(f"input {INPUT!r} has shape [{count}] but {len(data)} elements")
    images = []
    for i, element in enumerate(data):
        if not isinstance(element, str):
            raise _bad(f"{INPUT}[{i}] must be a base64 string, got {type(element).__name__}")
        try:
            images.append(binascii.a2b_base64(element, strict_mode=True))
        except (binascii.Error, ValueError) as exc:
            raise _bad(f"{INPUT}[{i}] is not valid base64 ({exc})") from None
    return images


def split_bytes(data: memoryview | bytes, count: int) -> list[bytes]:
    """The ``count`` elements of a serialized BYTES tensor (4-byte little-endian length, bytes)."""
    view = memoryview(data)
    out: list[bytes] = []
    pos = 0
    for i in range(count):
        if pos + 4 > len(view):
            raise _bad(f"{INPUT}[{i}]: the binary data ends before the element's 4-byte length")
        (n,) = _LENGTH.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view):
            raise _bad(
                f"{INPUT}[{i}]: the element declares {n} bytes, but only {len(view) - pos} remain"
            )
        out.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != len(view):
        raise _bad(
            f"input {INPUT!r}: {len(view) - pos} bytes of binary data past its {count} elements"
        )
    return out


def _parse_outputs(outputs: Any) -> dict[str, bool | None]:
    if outputs is None:
        return {}
    if not isinstance(outputs, list):
        raise _bad("'outputs' must be a list")
    known = ", ".join(OUTPUTS)
    selected: dict[str, bool | None] = {}
    for spec in outputs:
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in OUTPUTS:
            raise _bad(f"unknown output {shown(name)} (the model's outputs: {known})")
        if name in selected:
            raise _bad(f"output {name!r} is requested twice")
        params = _object(spec.get("parameters"), f"output {name!r} parameters")
        binary = params.pop("binary_data", None)
        if binary is not None and not isinstance(binary, bool):
            raise _bad(f"output {name!r}: binary_data must be true or false, got {shown(binary)}")
        if params:
            raise _bad(f"output {name!r}: unsupported parameters {shown(sorted(params))}")
        selected[name] = binary
    return selected


# ---------------------------------------------------------------------------------------------
# Responses


def output_tensors(results: Sequence[ImageResult], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The outputs ``names`` of a request's results as numpy arrays (BYTES: ``bytes`` objects)."""
    batch = len(results)
    detections = [r.inferred.detections for r in results]
    width = max((len(d) for d in detections), default=0)
    out: dict[str, Any] = {}
    for name in names:
        if name == "num_detections":
            out[name] = np.array([len(d) for d in detections], dtype=np.int32)
        elif name == "image_size":
            sizes = [[r.image.height, r.image.width] for r in results]
            out[name] = np.array(sizes, dtype=np.int32)
        elif name in ("boxes", "scores", "class_ids"):
            value = _NUMBERS[name]
            dtype = _NUMPY[OUTPUTS[name][0]]
            array = np.zeros((batch, width, *OUTPUTS[name][1][2:]), dtype=dtype)
            for i, dets in enumerate(detections):
                if dets:
                    array[i, : len(dets)] = [value(d) for d in dets]
            out[name] = array
        else:  # labels, masks
            array = np.full((batch, width), b"", dtype=np.object_)
            for i, dets in enumerate(detections):
                array[i, : len(dets)] = [_text(d, name) for d in dets]
            out[name] = array
    return out


def _text(detection: Detection, name: str) -> bytes:
    return (detection["label"] if name == "labels" else detection["mask"]["counts"]).encode()


def serialize_bytes(tensor: np.ndarray) -> bytes:
    """A BYTES tensor's binary form: each element (row-major) as a 4-byte little-endian length,
    then its bytes."""
    return b"".join(_LENGTH.pack(len(e)) + e for e in tensor.ravel())


def raw_tensor(datatype: str, value: np.ndarray) -> bytes:
    """An output's binary form (binary tensor data, gRPC's ``raw_output_contents``)."""
    return serialize_bytes(value) if datatype == "BYTES" else value.tobytes()


def encode_infer_response(
    model_name: str,
    results: Sequence[ImageResult],
    outputs: dict[str, bool],
    request_id: str | None = None,
    model_version: str = VERSION,
) -> tuple[bytes, int | None]:
    """The response body and, when some output is binary, the JSON header's length (the value
    of ``Inference-Header-Content-Length``)."""
    tensors = output_tensors(results, list(outputs))
    described = []
    chunks: list[bytes] = []
    for name, binary in outputs.items():
        datatype = OUTPUTS[name][0]
        value = tensors[name]
        entry: dict[str, Any] = {"name": name, "datatype": datatype, "shape": list(value.shape)}
        if binary:
            raw = raw_tensor(datatype, value)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [e.decode() for e in value.ravel()]
        else:
            entry["data"] = value.ravel().tolist()
        described.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    doc["outputs"] = described
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not chunks:
        return header, None
    return b"".join([header, *chunks]), len(header)


# ---------------------------------------------------------------------------------------------
# Metadata


def server_metadata() -> dict[str, Any]:
    """``GET /v2``; ``model_configuration`` and ``statistics`` are Triton's extensions
    (:mod:`maskrt.server.triton`)."""
    extensions = ["binary_tensor_data", "model_configuration", "statistics", "model_repository"]
    return {"name": "maskrt", "version": __version__, "extensions": extensions}


def model_metadata(name: str, backend: str, versions: Sequence[str] = (VERSION,)) -> dict[str, Any]:
    """``GET /v2/models/{name}``: its loaded versions, the tensors above, -1 for variable
    dimensions."""
    return {
        "name": name,
        "versions": list(versions),
        "platform": f"maskrt_{backend}",
        "inputs": [{"name": INPUT, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": n, "datatype": datatype, "shape": list(shape)}
            for n, (datatype, shape) in OUTPUTS.items()
        ],
    }
