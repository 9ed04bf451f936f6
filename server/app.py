"""The FastAPI app: :func:`create_app` puts the parts together.

- :mod:`~maskrt.server.state`: the model, the batcher and the app's life cycle (load, warm-up,
  ready, drain);
- :mod:`~maskrt.server.middleware`: request context (id, metrics, access log, last-resort 500)
  and the body size limit;
- :mod:`~maskrt.server.errors`: the error JSON of every refused request;
- :mod:`~maskrt.server.routes`: the routers (probes and metrics, the native API, the page and the
  API docs);
- :mod:`~maskrt.server.inference` and :mod:`~maskrt.server.parsing`: what the inference routes
  share. See DESIGN.md ("HTTP contract") for the routes and the error format.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from maskrt import __version__
from maskrt.server.dependencies import api_key_dependencies
from maskrt.server.errors import install_error_handlers
from maskrt.server.middleware import BodyLimitMiddleware, RequestContextMiddleware
from maskrt.server.parsing import PARAMETERS
from maskrt.server.routes import pages, predict, probes, v2
from maskrt.server.settings import Settings
from maskrt.server.state import Opener, ServerState


def create_app(
    settings: Settings | None = None,
    *,
    opener: Opener | None = None,
    on_fatal: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app for ``settings`` (default: from the environment). ``opener(settings) -> Backend``
    defaults to :func:`maskrt.runtime.backends.open_backend`; ``on_fatal(exc)`` is called when the
    model cannot be loaded (``maskrt serve`` then exits)."""
    settings = settings or Settings()
    if opener is None:
        from maskrt.runtime.backends import open_backend

        opener = open_backend
    state = ServerState(settings, opener, on_fatal)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start_loading()
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(
        title="maskrt",
        version=__version__,
        lifespan=lifespan,
        description="Mask R-CNN instance segmentation: boxes, classes, scores and COCO RLE masks.",
        docs_url=None,  # pages.add_pages serves /docs and /redoc from local files
        redoc_url=None,
    )
    app.state.maskrt = state
    install_error_handlers(app, known_parameters=PARAMETERS)
    app.include_router(probes.router)
    app.include_router(predict.router, dependencies=api_key_dependencies(state))
    app.include_router(v2.public)
    app.include_router(v2.router, dependencies=api_key_dependencies(state))
    pages.add_pages(app)
    # added last = outermost: the context sees every answer, the limit's 413 included
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
            max_age=600,
        )
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=state.metrics)
    return app
