"""FastAPI dependencies the routers share: the app's :class:`AppState` and the API key check."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.params import Depends as DependsParam
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from maskrt.server.state import AppState

# auto_error=False: the check below answers 401 itself; these two only document the schemes.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key")


def get_state(request: Request) -> AppState:
    """The state of the app serving ``request`` (set by ``create_app``)."""
    state: AppState = request.app.state.maskrt
    return state


async def require_api_key(
    request: Request,
    state: AppState = Depends(get_state),
    _bearer_key: HTTPAuthorizationCredentials | None = Depends(_bearer),
    _header_key: str | None = Depends(_header),
) -> None:
    """401 unless the request presents a configured key."""
    state.keys.check(request.headers.get("authorization"), request.headers.get("x-api-key"))


def api_key_dependencies(state: AppState) -> list[DependsParam]:
    """What a router with protected routes is included with: the key check when keys are
    configured, else nothing (and no security scheme in the OpenAPI document)."""
    return [Depends(require_api_key)] if state.keys.enabled else []
