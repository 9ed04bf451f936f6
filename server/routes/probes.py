"""Probes and metrics: ``/healthz``, ``/readyz``, ``/metrics`` (never behind an API key), and the
app of the metrics port."""

from __future__ import annotations

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import Response

from maskrt.server.dependencies import get_state
from maskrt.server.errors import ApiError, install_error_handlers, json_response
from maskrt.server.middleware import SecurityHeadersMiddleware
from maskrt.server.routes.pages import SECURITY_HEADERS
from maskrt.server.schemas import (
    HEALTH_RESPONSES,
    METRICS_RESPONSES,
    READY_RESPONSES,
    Health,
    Ready,
)
from maskrt.server.state import AppState

router = APIRouter()


@router.get(
    "/healthz",
    response_model=Health,
    responses=HEALTH_RESPONSES,
    summary="the process is alive",
)
async def healthz(state: AppState = Depends(get_state)) -> Response:
    stuck = state.models.stuck_for()
    if stuck is not None:
        raise ApiError(503, "stuck", f"a batch has been running for {stuck:.0f} s")
    return json_response({"status": "ok"})


@router.get(
    "/readyz",
    response_model=Ready,
    responses=READY_RESPONSES,
    summary="the model is loaded and warmed up",
)
async def readyz(state: AppState = Depends(get_state)) -> Response:
    if not state.models.ready:
        raise state.models.not_ready()
    return json_response({"status": "ready"})


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses=METRICS_RESPONSES,
)
async def metrics(state: AppState = Depends(get_state)) -> Response:
    if state.settings.metrics_port is not None:  # kept off the public port
        raise ApiError(404, "not_found", "no route GET /metrics: metrics have a port of their own")
    return exposition(state)


def exposition(state: AppState) -> Response:
    """The Prometheus exposition of ``state``'s metrics."""
    body, content_type = state.metrics.render()
    return Response(body, media_type=content_type)


def create_metrics_app(state: AppState) -> FastAPI:
    """The app of ``METRICS_PORT``: ``GET /metrics`` of the main app's metrics, nothing else, with
    the same error JSON. ``maskrt serve`` serves it on the main app's event loop with the same
    guarded protocol (connection cap, header timeout; no thread per connection)."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    install_error_handlers(app, known_parameters=[])
    app.add_middleware(SecurityHeadersMiddleware, headers=SECURITY_HEADERS)

    @app.get("/metrics")
    async def metrics_only() -> Response:
        return exposition(state)

    return app
