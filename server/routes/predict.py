"""The native API: ``GET /v1/model``, ``POST /predict``, ``POST /predict/batch``
(docs/architecture.md, "HTTP contract"); included behind the API key check when keys are
configured.

A request to ``/predict``: ready? -> content type (415) -> body, streamed under the size limit
(413) -> parameters (422) -> decode in a thread (400/413) -> batcher queue (503 when full) -> wait
for the batch result (504 at the request's deadline; a client that goes away drops its images
before inference) -> JSON.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from maskrt.runtime.dataplane import DataPlane, EncodedImage, ImageResult
from maskrt.runtime.errors import BadRequest, Redirect
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
    EXAMPLE_MODEL_INFO,
    BatchPredictResponse,
    ModelInfoResponse,
    PredictParams,
    PredictResponse,
)
from maskrt.server.state import AppState

router = APIRouter()
_MODELS_EXAMPLE = {
    "name": "shapes",
    "version": "1",
    "state": "READY",
    "reason": "",
    "model": EXAMPLE_MODEL_INFO,
}


@router.get(
    "/v1/model",
    response_model=ModelInfoResponse,
    responses={401: ERROR_RESPONSES[401], 503: ERROR_RESPONSES[503]},
    summary="the served model",
)
async def model_info(request: Request, state: AppState = Depends(get_state)) -> Response:
    model, version = _target(parse_params(list(request.query_params.multi_items())))
    return json_response(state.models.get(model, version).served_model().describe())


@router.get(
    "/v1/models",
    responses={
        200: {"content": {"application/json": {"example": {"models": [_MODELS_EXAMPLE]}}}},
        401: ERROR_RESPONSES[401],
    },
    summary="every model and version, with its state (and, once ready, what /v1/model says)",
)
async def models_info(state: AppState = Depends(get_state)) -> Response:
    planes = {(v.name, v.label): v.plane for v in state.models.loaded() if v.state == "READY"}
    rows = []
    for row in state.models.index():
        plane = planes.get((row.name, row.version))
        rows.append(
            {**row.as_dict(), "model": None if plane is None else plane.served_model().describe()}
        )
    return json_response({"models": rows})


@router.post(
    "/predict",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body_doc(batch=False),
    summary="detect and segment the objects of one image",
)
async def predict(request: Request, state: AppState = Depends(get_state)) -> Response:
    plane, results = await _infer(state, request, batch=False)
    return json_response(answer(plane.served_model().ref(), results[0]))


@router.post(
    "/predict/batch",
    response_model=BatchPredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=request_body_doc(batch=True),
    summary="several images in one request; results in order",
)
async def predict_batch(request: Request, state: AppState = Depends(get_state)) -> Response:
    plane, results = await _infer(state, request, batch=True)
    ref = plane.served_model().ref()
    return json_response({"results": [answer(ref, r) for r in results]})


async def _infer(
    state: AppState, request: Request, batch: bool
) -> tuple[DataPlane, list[ImageResult]]:
    """The request's results and the data plane (model version) that gave them. The model is
    named by the query (``model``, ``version``), which picks the plane before the body is read,
    or by the multipart form's fields; else it is the default model. The default's plane reads
    the form (the request is in flight while it uploads) and hands it over when the form names
    another (:class:`~maskrt.runtime.errors.Redirect`); with several models and no default, the
    form is read first."""
    query = list(request.query_params.multi_items())
    kind = classify_content_type(request.headers.get("content-type", ""), batch, has_body(request))
    target = _target(parse_params(query))
    form_may_name = target == (None, None) and kind != "raw"
    try:
        plane: DataPlane | None = state.models.get(*target)
    except BadRequest:
        if not form_may_name:
            raise
        plane = None

    async def read() -> tuple[list[EncodedImage], PostOptions]:
        datas, fields = await read_images(request, kind, batch, state.settings.max_queue)
        params = parse_params(query + fields)
        names = [f"images[{i}]" if batch else "image" for i in range(len(datas))]
        images = [EncodedImage(data, name) for data, name in zip(datas, names)]
        options = post_options(params, state.settings.score_threshold)
        if form_may_name and (plane is None or _target(params) != (None, None)):
            named = state.models.get(*_target(params))
            if named is not plane:
                raise Redirect(named, images, options)
        return images, options

    try:
        if plane is None:
            await read()  # names the model: a Redirect
        assert plane is not None
        return plane, await infer_request(plane, request, read)
    except Redirect as elsewhere:
        got = elsewhere.images, elsewhere.options

        async def given() -> tuple[list[EncodedImage], PostOptions]:
            return got

        return elsewhere.plane, await infer_request(elsewhere.plane, request, given)


def _target(params: PredictParams) -> tuple[str | None, str | None]:
    return params.model, params.version
