"""The FastAPI app: :func:`create_app` puts the HTTP front door together over a data plane.

- :class:`~maskrt.runtime.dataplane.DataPlane`: what the routes call to infer, and ask readiness
  and the model (in this process, :class:`~maskrt.runtime.local.LocalDataPlane`; on Ray Serve, the
  model deployment's, :mod:`maskrt.server.ray_serve`); its life cycle runs with the app's;
- :mod:`~maskrt.server.middleware`: request context (id, metrics, access log, last-resort 500),
  the security headers of every answer and the body size limit;
- :mod:`~maskrt.server.compression`: gzip or deflate answers for clients that accept them;
- :mod:`~maskrt.server.errors`: the error JSON of every refused request, the runtime's errors'
  statuses among them;
- :mod:`~maskrt.server.routes`: the routers (probes and metrics, the native API, the Open
  Inference Protocol, the page and the API docs);
- :mod:`~maskrt.server.inference` and :mod:`~maskrt.server.parsing`: what the inference routes
  share. See docs/architecture.md ("HTTP contract") for the routes and the error format.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from maskrt import __version__
from maskrt.runtime.dataplane import DataPlane
from maskrt.runtime.local import LocalDataPlane
from maskrt.runtime.models import ModelSet
from maskrt.runtime.statistics import Statistics
from maskrt.server import oip
from maskrt.server.compression import CompressionMiddleware
from maskrt.server.dependencies import api_key_dependencies
from maskrt.server.errors import install_error_handlers
from maskrt.server.metrics import Metrics
from maskrt.server.middleware import (
    BodyLimitMiddleware,
    RequestContextMiddleware,
    SecurityHeadersMiddleware,
)
from maskrt.server.parsing import PARAMETERS
from maskrt.server.routes import pages, predict, probes, repository, v2
from maskrt.server.security import ApiKeys
from maskrt.server.settings import Settings
from maskrt.server.state import AppState


def create_app(
    settings: Settings | None = None,
    *,
    data_plane: Callable[[Statistics], DataPlane] | None = None,
    models: Callable[[Statistics], ModelSet] | None = None,
) -> FastAPI:
    """The app for ``settings`` (default: from the environment). ``models(statistics)`` makes
    the :class:`~maskrt.runtime.models.ModelSet` the routes call, reporting to ``statistics``
    (the app's metrics), or ``data_plane(statistics)`` the one data plane it holds (reporting to
    its model's :class:`~maskrt.server.metrics.ModelMetrics`); by default
    ``settings``' model repository, or a :class:`~maskrt.runtime.local.LocalDataPlane` that
    opens ``settings``' model, in this process."""
    settings = settings or Settings()
    device = settings.resolved_device()
    metrics = Metrics(
        max_batch=settings.max_batch, gpu_device=device if device.startswith("cuda") else None
    )
    if models is not None:
        model_set = models(metrics)
    elif settings.model_repository is not None and data_plane is None:
        model_set = ModelSet(settings, metrics)
    else:  # one data plane; its metrics take the model's name once it is loaded
        statistics = metrics.for_model(settings.model_name or "", str(settings.model_version))
        plane = (data_plane or functools.partial(LocalDataPlane, settings))(statistics)
        model_set = ModelSet.fixed(settings, metrics, plane)
    state = AppState(settings, model_set, metrics, ApiKeys(settings.api_keys))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        model_set.start()
        try:
            yield
        finally:
            await model_set.stop()

    app = FastAPI(
        title="maskrt",
        version=__version__,
        lifespan=lifespan,
        description="Mask R-CNN instance segmentation: boxes, classes, scores and COCO RLE masks.",
        docs_url=None,  # pages.add_pages serves /docs and /redoc from local files
        redoc_url=None,
        redirect_slashes=False,  # its redirect is built from the client's Host header: a 404
    )
    app.state.maskrt = state
    install_error_handlers(app, known_parameters=PARAMETERS)
    app.include_router(probes.router)
    app.include_router(predict.router, dependencies=api_key_dependencies(state))
    app.include_router(v2.public)
    app.include_router(v2.models, dependencies=api_key_dependencies(state))
    app.include_router(v2.router, dependencies=api_key_dependencies(state))
    app.include_router(repository.router, dependencies=api_key_dependencies(state))
    pages.add_pages(app)
    # added first = innermost: what the others see and count is the answer as sent
    app.add_middleware(CompressionMiddleware)
    # added last = outermost: the context sees every answer, the limit's 413 included
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Content-Encoding",
                "X-Request-ID",
                oip.HEADER_LENGTH,
            ],
            expose_headers=["X-Request-ID", "Retry-After", oip.HEADER_LENGTH],
            max_age=600,
        )
    app.add_middleware(
        BodyLimitMiddleware,
        limit=settings.max_upload_bytes,
        min_rate=settings.min_body_rate,
        grace_s=settings.header_timeout_s,
    )
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    # outermost of all: the context's own answers (its 413 and last-resort 500) get them too
    app.add_middleware(SecurityHeadersMiddleware, headers=pages.SECURITY_HEADERS)
    return app
