"""Triton's model repository extension over HTTP: ``POST /v2/repository/index``,
``/v2/repository/models/{name}/load`` and ``/unload``, behind the API key check.

They call :class:`~maskrt.runtime.models.ModelSet`, as the gRPC front door's repository calls do.
A load answers once the new versions are warm and take the model's traffic; an unload once the
model's in-flight requests are answered. Errors are ``{"error": "..."}`` as everywhere under
``/v2``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from maskrt.errors import MaskrtError
from maskrt.runtime.repository import ModelConfig, parse_override
from maskrt.server.dependencies import get_state
from maskrt.server.errors import ApiError, json_response
from maskrt.server.routes.v2 import oip_examples
from maskrt.server.state import AppState

router = APIRouter(prefix="/v2/repository", tags=["model repository"])
MAX_BODY_BYTES = 64 * 1024  # a load's config override; the index and unload bodies are tiny


async def _body(request: Request) -> dict[str, Any]:
    """The request's JSON object (empty when there is no body)."""
    data = b""
    async for chunk in request.stream():
        data += chunk
        if len(data) > MAX_BODY_BYTES:
            raise ApiError(
                413, "body_too_large", f"a repository request is at most {MAX_BODY_BYTES} bytes"
            )
    if not data.strip():
        return {}
    try:
        body = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ApiError(400, "invalid_json", f"the body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "the body must be a JSON object")
    return body


def load_config(parameters: dict[str, Any]) -> ModelConfig | None:
    """A load request's ``config`` parameter (a JSON string; Triton's model configuration or
    ``config.yaml``'s keys); file overrides (``file:...``) are refused."""
    files = [k for k in parameters if k.startswith("file:")]
    if files:
        raise ApiError(
            400,
            "unsupported_parameter",
            f"model file overrides ({files[0]}) are not supported: put the file in the repository",
        )
    text = parameters.get("config")
    if text is None:
        return None
    if not isinstance(text, str):
        raise ApiError(400, "invalid_request", "the 'config' parameter must be a JSON string")
    try:
        return parse_override(text)
    except MaskrtError as exc:
        raise ApiError(400, "invalid_request", str(exc)) from None


def parameters_of(body: dict[str, Any]) -> dict[str, Any]:
    parameters = body.get("parameters", {})
    if not isinstance(parameters, dict):
        raise ApiError(400, "invalid_request", "'parameters' must be a JSON object")
    return parameters


_INDEX = [
    {"name": "cars", "version": "3", "state": "READY", "reason": ""},
    {"name": "shapes", "state": "UNAVAILABLE", "reason": "unloaded"},
]
_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {
        "content": {
            "application/json": {
                "example": {"error": "loading 1 version(s) would pass MAX_LOADED_MODELS (8)"}
            }
        }
    }
}


@router.post(
    "/index",
    summary="the models of the repository and their state",
    responses=oip_examples(_INDEX, with_path=False),
)
async def index(request: Request, state: AppState = Depends(get_state)) -> Response:
    body = await _body(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise ApiError(400, "invalid_request", "'ready' must be true or false")
    return json_response([row.as_dict() for row in state.models.index(ready_only=ready)])


@router.post(
    "/models/{name}/load",
    summary="load (or reload) a model; answers once it serves",
    responses={**oip_examples({}), **_REFUSED},
)
async def load(name: str, request: Request, state: AppState = Depends(get_state)) -> Response:
    config = load_config(parameters_of(await _body(request)))
    await state.models.load(name, config)
    return json_response({})


@router.post(
    "/models/{name}/unload",
    summary="unload a model once its requests are answered",
    responses=oip_examples({}),
)
async def unload(name: str, request: Request, state: AppState = Depends(get_state)) -> Response:
    parameters_of(await _body(request))  # unload_dependents: there are no dependents
    await state.models.unload(name)
    return json_response({})
