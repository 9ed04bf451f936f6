"""The Open Inference Protocol (KServe v2, Triton's HTTP/REST API) beside the native API.

``/v2/health/*`` and ``GET /v2`` (:data:`public`) are open, as ``/healthz`` is; the
``/v2/models/...`` routes (:data:`router`) are included behind the API key check, as ``/predict``
is. Inference goes
through :func:`~maskrt.server.inference.infer_request`, so ``/v2`` images share the batcher, the
limits and the timeouts of ``/predict``; :mod:`maskrt.server.oip` parses and encodes the wire
format. Errors under ``/v2`` are ``{"error": "..."}`` (:func:`~maskrt.server.errors.error_body`).
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from maskrt.runtime.dataplane import EncodedImage
from maskrt.runtime.pipeline import PostOptions
from maskrt.server import oip, triton
from maskrt.server.dependencies import get_state
from maskrt.server.errors import ApiError, json_response, shown
from maskrt.server.inference import infer_request
from maskrt.server.parsing import parse_params, post_options
from maskrt.server.settings import Settings
from maskrt.server.state import AppState

public = APIRouter(prefix="/v2", tags=["open inference protocol"])
# /v2/models/stats: included before `router`, whose /v2/models/{name} would take it for a model
models = APIRouter(prefix="/v2/models", tags=["open inference protocol"])
router = APIRouter(prefix="/v2/models/{name}", tags=["open inference protocol"])
_VERSIONED = "/versions/{version}"


def oip_examples(answer: Any, *, with_path: bool = True) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI answers of a v2 route: ``answer`` for 200, and the protocol's error shape for
    bad parameter."""
    examples: dict[int | str, dict[str, Any]] = {
        200: {"content": {"application/json": {"example": answer}}}
    }
    if with_path:
        error = {"error": "score_threshold: Input should be a valid number (got 'high')"}
        examples[422] = {"content": {"application/json": {"example": error}}}
    return examples


_MODEL_METADATA = {
    "name": "shapes",
    "versions": ["1"],
    "platform": "maskrt_onnxruntime",
    "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [{"name": "num_detections", "datatype": "INT32", "shape": [-1]}],
}
_INFER_ANSWER = {
    "model_name": "shapes",
    "model_version": "1",
    "outputs": [{"name": "num_detections", "datatype": "INT32", "shape": [1], "data": [2]}],
}


@public.get(
    "/health/live",
    summary="the process is alive",
    responses=oip_examples({"live": True}, with_path=False),
)
async def live(state: AppState = Depends(get_state)) -> Response:
    alive = state.models.stuck_for() is None
    return json_response({"live": alive}, 200 if alive else 503)


@public.get(
    "/health/ready",
    summary="the model is loaded and warmed up",
    responses=oip_examples({"ready": True}, with_path=False),
)
async def ready(state: AppState = Depends(get_state)) -> Response:
    is_ready = state.models.ready
    return json_response({"ready": is_ready}, 200 if is_ready else 503)


@public.get(
    "",
    summary="server metadata",
    responses=oip_examples(
        {
            "name": "maskrt",
            "version": "0.1.0",
            "extensions": ["binary_tensor_data", "model_configuration", "statistics"],
        },
        with_path=False,
    ),
)
async def server_metadata() -> Response:
    return json_response(oip.server_metadata())


def model_metadata_of(state: AppState, name: str, version: str | None) -> dict[str, Any]:
    """``name``'s metadata, its loaded versions among it (the gRPC front door answers it too)."""
    served = state.models.get(name, version).served_model()
    versions = state.models.ready_versions(name) if version is None else [served.model_version]
    return oip.model_metadata(name, served.backend, versions)


@router.get("", summary="model metadata", responses=oip_examples(_MODEL_METADATA))
@router.get(_VERSIONED, summary="model metadata", responses=oip_examples(_MODEL_METADATA))
async def model_metadata(
    name: str, version: str | None = None, state: AppState = Depends(get_state)
) -> Response:
    return json_response(model_metadata_of(state, name, version))


@router.get(
    "/ready",
    summary="the model is ready",
    responses=oip_examples({"name": "shapes", "ready": True}),
)
@router.get(
    _VERSIONED + "/ready",
    summary="the model is ready",
    responses=oip_examples({"name": "shapes", "ready": True}),
)
async def model_ready(
    name: str, version: str | None = None, state: AppState = Depends(get_state)
) -> Response:
    state.models.get(name, version)  # 404 unknown, 503 loading
    return json_response({"name": name, "ready": True})


_CONFIG_EXAMPLE = {
    "name": "shapes",
    "platform": "maskrt_onnxruntime",
    "max_batch_size": 8,
    "input": [{"name": "image", "data_type": "TYPE_STRING", "dims": [1], "reshape": {"shape": []}}],
    "output": [{"name": "boxes", "data_type": "TYPE_FP32", "dims": [-1, 4]}],
    "dynamic_batching": {"max_queue_delay_microseconds": 5000},
}
_STATS_EXAMPLE = {
    "model_stats": [
        {
            "name": "shapes",
            "version": "1",
            "inference_count": 3,
            "execution_count": 2,
            "inference_stats": {"success": {"count": 2, "ns": 81000000}},
            "batch_stats": [{"batch_size": 1, "compute_infer": {"count": 1, "ns": 30000000}}],
        }
    ]
}


@router.get(
    "/config", summary="model configuration (Triton's)", responses=oip_examples(_CONFIG_EXAMPLE)
)
@router.get(
    _VERSIONED + "/config",
    summary="model configuration (Triton's)",
    responses=oip_examples(_CONFIG_EXAMPLE),
)
async def model_config(
    name: str, version: str | None = None, state: AppState = Depends(get_state)
) -> Response:
    plane = state.models.get(name, version)
    return json_response(
        triton.model_config(plane.served_model(), name, plane.options.max_delay_ms)
    )


@models.get(
    "/stats",
    summary="statistics of every model (Triton's)",
    responses=oip_examples(_STATS_EXAMPLE, with_path=False),
)
async def statistics(state: AppState = Depends(get_state)) -> Response:
    return json_response(triton.model_statistics(state.models.statistics_planes(None, None)))


@router.get("/stats", summary="model statistics (Triton's)", responses=oip_examples(_STATS_EXAMPLE))
@router.get(
    _VERSIONED + "/stats",
    summary="model statistics (Triton's)",
    responses=oip_examples(_STATS_EXAMPLE),
)
async def model_statistics(
    name: str, version: str | None = None, state: AppState = Depends(get_state)
) -> Response:
    return json_response(triton.model_statistics(state.models.statistics_planes(name, version)))


def _check_content_type(request: Request, *, json_only: bool, settings: Settings) -> None:
    """415 for a JSON request that is not ``application/json``: a form, text or untyped body is a
    "simple" request, which any web page may send cross-origin without a preflight, so a visitor's
    browser could post to a key-less server on their network. ``application/json`` and
    ``Inference-Header-Content-Length`` both need a preflight. ``V2_ANY_CONTENT_TYPE`` lifts this
    on trusted networks (``curl -d``, clients that send no type)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if json_only and media != "application/json" and not settings.v2_any_content_type:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"unsupported Content-Type {shown(media or '(none)')}: send the inference request "
            f"as JSON with the header 'Content-Type: application/json', or binary tensor data "
            f"with the {oip.HEADER_LENGTH} header",
        )


def _parse(
    body: bytes,
    encoding: str | None,
    header_length: str | None,
    query: list[tuple[str, str]],
    settings: Settings,
) -> tuple[oip.InferRequest, dict[str, bool], PostOptions]:
    """Inflate, parse and validate a request body: CPU work on client data, so it runs in a
    thread (the event loop, and with it ``/healthz``, stays free) and under the bounds of
    :func:`~maskrt.server.oip.parse_infer_request`."""
    inspect = oip.json_inspector(header_length, max_images=settings.max_queue)
    data = oip.decompress(body, encoding, limit=settings.max_upload_bytes, inspect=inspect)
    parsed = oip.parse_infer_request(data, header_length, max_images=settings.max_queue)
    return (parsed, *request_options(parsed, query, settings.score_threshold))


def request_options(
    parsed: oip.InferRequest, query: list[tuple[str, str]], default_threshold: float
) -> tuple[dict[str, bool], PostOptions]:
    """The outputs a parsed request selects and its post-processing options, its own timeout
    among them: the same for ``/v2`` and gRPC."""
    params = parse_params(query + list(parsed.parameters.items()))
    outputs = parsed.selected_outputs(masks=params.masks == "rle")
    options = post_options(params, default_threshold)
    return outputs, dataclasses.replace(options, timeout_s=parsed.timeout_s)


@router.post(
    "/infer",
    summary="inference (JSON, binary tensor data, or a raw image body)",
    responses=oip_examples(_INFER_ANSWER),
)
@router.post(
    _VERSIONED + "/infer",
    summary="inference (JSON, binary tensor data, or raw)",
    responses=oip_examples(_INFER_ANSWER),
)
async def infer(
    request: Request,
    name: str,
    version: str | None = None,
    state: AppState = Depends(get_state),
) -> Response:
    plane = state.models.get(name, version)
    header_length = request.headers.get(oip.HEADER_LENGTH)
    _check_content_type(request, json_only=header_length is None, settings=state.settings)
    parsed: oip.InferRequest | None = None
    outputs: dict[str, bool] = {}

    async def read() -> tuple[list[EncodedImage], PostOptions]:
        nonlocal parsed, outputs
        body = await request.body()
        got, outputs, options = await asyncio.to_thread(
            _parse,
            body,
            request.headers.get("content-encoding"),
            header_length,
            list(request.query_params.multi_items()),
            state.settings,
        )
        parsed = got
        images = [EncodedImage(data, f"{oip.INPUT}[{i}]") for i, data in enumerate(got.images)]
        return images, options

    results = await infer_request(plane, request, read)
    assert parsed is not None
    model_version = plane.served_model().model_version
    body, json_length = oip.encode_infer_response(name, results, outputs, parsed.id, model_version)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        headers={oip.HEADER_LENGTH: str(json_length)},
        media_type="application/octet-stream",
    )
