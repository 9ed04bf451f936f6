"""The pages for people, all served from files in the wheel so they work without internet:
``GET /`` (upload an image, see its masks; ``server/static/``) and the API docs ``GET /docs``
(Swagger UI) and ``GET /redoc``, whose scripts come from the ``fastapi-offline`` package.

The app is made with ``docs_url=None, redoc_url=None`` (FastAPI's own pages load from a CDN) and
:func:`add_pages` adds these instead. None of them needs an API key; the calls they make do.
Every answer of the app carries :data:`SECURITY_HEADERS` (the middleware sets them): a strict
Content-Security-Policy, wherever a page is served (``/static/index.html`` too), ``nosniff`` and no
framing; the docs pages set the looser :data:`DOCS_CSP` that Swagger UI and ReDoc need.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from pathlib import Path

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

PAGE_DIR = Path(__file__).parent.parent / "static"
ASSETS = "/static"  # the page's script and style sheet
DOCS_ASSETS = "/static/docs"  # Swagger UI and ReDoc

# Every answer's policy (the middleware's default): nothing loads from elsewhere, no inline script
# or style runs, and no page may frame this one (the page has an API-key box). The page's app.js
# needs only its own files, fetch() to this server and images from blob: URLs.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}
# The docs pages also need their inline start-up script (allowed by its hash, not 'unsafe-inline');
# ReDoc needs inline styles (styled-components) and a worker from a blob: URL (its search); it would
# fetch its logo from its CDN, which default-src 'none' keeps it from.
DOCS_CSP = (
    "default-src 'none'; script-src 'self' {scripts}; style-src 'self'{styles}; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self';{workers} "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
NO_CACHE = {"Cache-Control": "no-cache"}
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)

router = APIRouter(include_in_schema=False)


@router.get("/")
async def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", headers=NO_CACHE)


def _docs(request: Request, render, redoc: bool, **assets: str) -> HTMLResponse:
    """A docs page of ``request.app``'s OpenAPI, its files (``assets``: name -> file) local;
    ``redoc``: ReDoc's, which needs more of the policy than Swagger UI's."""
    root = request.scope.get("root_path", "")
    html = render(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} API",
        **{name: f"{root}{DOCS_ASSETS}/{file}" for name, file in assets.items()},
    )
    scripts = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _INLINE_SCRIPT.findall(bytes(html.body).decode())
    )
    html.headers.update(NO_CACHE)
    html.headers["Content-Security-Policy"] = DOCS_CSP.format(
        scripts=scripts,
        styles=" 'unsafe-inline'" if redoc else "",
        workers=" worker-src blob:;" if redoc else "",
    )
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
        redoc=False,
        swagger_js_url="swagger-ui-bundle.js",
        swagger_css_url="swagger-ui.css",
        swagger_favicon_url="favicon.png",
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    return _docs(
        request,
        functools.partial(get_redoc_html, with_google_fonts=False),
        redoc=True,
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
