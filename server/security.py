"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, against every configured
key without stopping at a match, so neither the position of a match nor the length or content of a
key shows in the time an answer takes. With no keys configured every request passes.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from maskrt.server.errors import ApiError


class ApiKeys:
    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple(hashlib.sha256(k.encode()).digest() for k in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def valid(self, presented: str | None) -> bool:
        if presented is None:
            return False
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        ok = False
        for known in self._digests:
            ok |= hmac.compare_digest(digest, known)
        return ok

    @staticmethod
    def presented(authorization: str | None, x_api_key: str | None) -> str | None:
        """The key a request presents: the ``Bearer`` credential, else ``X-API-Key``."""
        if authorization:
            scheme, _, credential = authorization.strip().partition(" ")
            if scheme.lower() == "bearer" and credential.strip():
                return credential.strip()
        if x_api_key:
            return x_api_key.strip()
        return None

    def check(self, authorization: str | None, x_api_key: str | None) -> None:
        """Raise 401 unless the request presents a configured key (or none are configured)."""
        if not self.enabled:
            return
        key = self.presented(authorization, x_api_key)
        if key is None:
            raise ApiError(
                401,
                "unauthorized",
                "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'",
                {"WWW-Authenticate": "Bearer"},
            )
        if not self.valid(key):
            raise ApiError(
                401,
                "unauthorized",
                "the API key is not valid",
                {"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
