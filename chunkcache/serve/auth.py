"""Optional API key: ``Authorization: Bearer <key>`` on every ``/v1`` route (``/health`` and ``/metrics`` stay
open for probes and scrapers).

An ASGI middleware rather than a route dependency, so a request without the key is refused before its body is
read or validated: an unauthenticated client learns nothing about the schema. The comparison is constant-time
(``hmac.compare_digest``), so response timing does not reveal how much of a guessed key was right.
"""

from __future__ import annotations

import hmac

from starlette.types import ASGIApp, Receive, Scope, Send

from chunkcache.serve.errors import error_response

PROTECTED_PREFIX = "/v1"


class BearerAuth:
    """Wrap ``app`` so ``/v1`` requests without ``Authorization: Bearer <api_key>`` get 401."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(PROTECTED_PREFIX):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                message = "missing API key: send 'Authorization: Bearer <key>'" if not given else "invalid API key"
                response = error_response(401, message, None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
