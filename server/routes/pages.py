"""The pages for people, all served from files in the wheel so they work without internet:
``GET /`` (upload an image, see its masks; ``server/static/``) and the API docs ``GET /docs``
(Swagger UI) and ``GET /redoc``, whose scripts come from the ``fastapi-offline`` package.

The app is made with ``docs_url=None, redoc_url=None`` (FastAPI's own pages load from a CDN) and
:func:`add_pages` adds these instead. None of them needs an API key; the calls they make do.
"""

from __future__ import annotations

import functools
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).parent.parent / "static"
ASSETS = "/static"  # the page's script and style sheet
DOCS_ASSETS = "/static/docs"  # Swagger UI and ReDoc

# Nothing on these pages may load from elsewhere (ReDoc would fetch its logo from its CDN).
CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; worker-src 'self' blob:"
)
HEADERS = {"Content-Security-Policy": CSP, "Cache-Control": "no-cache"}

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", headers=HEADERS)


def _docs(request: Request, render, **assets: str) -> HTMLResponse:
    """A docs page of ``request.app``'s OpenAPI, its files (``assets``: name -> file) local."""
    root = request.scope.get("root_path", "")
    html = render(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} API",
        **{name: f"{root}{DOCS_ASSETS}/{file}" for name, file in assets.items()},
    )
    html.headers.update(HEADERS)
    return html


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    return _docs(
        request,
        functools.partial(
            get_swagger_ui_html,
            oauth2_redirect_url=None,
            # no badge from the public validator: nothing on the page leaves this server
            swagger_ui_parameters={"validatorUrl": None, "defaultModelsExpandDepth": 2},
        ),
        swagger_js_url="swagger-ui-bundle.js",
        swagger_css_url="swagger-ui.css",
        swagger_favicon_url="favicon.png",
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _docs(
        request,
        functools.partial(get_redoc_html, with_google_fonts=False),
        redoc_js_url="redoc.standalone.js",
        redoc_favicon_url="favicon.png",
    )


def add_pages(app: FastAPI) -> None:
    """The page, the docs and their files on ``app`` (made with ``docs_url=redoc_url=None``)."""
    # the more specific mount first: "/static" would also take "/static/docs/..."
    app.mount(
        DOCS_ASSETS, StaticFiles(packages=[("fastapi_offline", "static")]), name="docs-assets"
    )
    app.mount(ASSETS, StaticFiles(directory=PAGE_DIR), name="static")
    app.include_router(router)
