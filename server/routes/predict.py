"""The native API: ``GET /v1/model``, ``POST /predict``, ``POST /predict/batch``
(docs/architecture.md, "HTTP contract"); included behind the API key check when keys are
configured.

A request to ``/predict``: ready? -> content type (415) -> body, streamed under the size limit
(413) -> parameters (422) -> decode in a thread (400/413) -> batcher queue (503 when full) -> wait
for the batch result (504 at the request's deadline; a client that goes away drops its images
before inference) -> JSON.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from maskrt.runtime.dataplane import EncodedImage, ImageResult, Reader
from maskrt.runtime.pipeline import PostOptions
from maskrt.server.answers import answer
from maskrt.server.dependencies import get_state
from maskrt.server.errors import json_response
from maskrt.server.inference import infer_request
from maskrt.server.parsing import (
    classify_content_type,
    has_body,
    parse_params,
    post_options,
    read_images,
    request_body_doc,
)
from maskrt.server.schemas import (
    ERROR_RESPONSES,
    BatchPredictResponse,
    ModelInfoResponse,
    PredictResponse,
)
from maskrt.server.state import AppState

router = APIRouter()


@router.get(
    "/v1/model",
    response_model=ModelInfoResponse,
    responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]},
    summary="the served model",
)
async def model_info(state: AppState = Depends(get_state)) -> Response:
    return json_response(state.plane.served_model().describe())


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body_doc(batch=False),
    summary="detect and segment the objects of one image",
)
async def predict(request: Request, state: AppState = Depends(get_state)) -> Response:
    results = await infer_request(state, request, _reader(state, request, batch=False))
    return json_response(_answer(state, results[0]))


@router.post(
    "/predict/batch",
    response_model=BatchPredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body_doc(batch=True),
    summary="several images in one request; results in order",
)
async def predict_batch(request: Request, state: AppState = Depends(get_state)) -> Response:
    results = await infer_request(state, request, _reader(state, request, batch=True))
    return json_response({"results": [_answer(state, r) for r in results]})


def _reader(state: AppState, request: Request, batch: bool) -> Reader:
    """The request's images (multipart or raw body) and its options (query and form fields)."""

    async def read() -> tuple[list[EncodedImage], PostOptions]:
        content_type = request.headers.get("content-type", "")
        kind = classify_content_type(content_type, batch, has_body(request))
        datas, fields = await read_images(request, kind, batch, state.settings.max_queue)
        params = parse_params(list(request.query_params.multi_items()) + fields)
        names = [f"images[{i}]" if batch else "image" for i in range(len(datas))]
        images = [EncodedImage(data, name) for data, name in zip(datas, names)]
        return images, post_options(params, state.settings.score_threshold)

    return read


def _answer(state: AppState, result: ImageResult) -> dict[str, Any]:
    return answer(state.plane.served_model().ref(), result)
