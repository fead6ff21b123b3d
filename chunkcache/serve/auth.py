"""Optional API key: ``Authorization: Bearer <key>`` on every ``/v1`` route (``/health`` and ``/metrics`` stay
open for probes and scrapers). The comparison is constant-time (``hmac.compare_digest``), so response timing
does not reveal how much of a guessed key was right."""

from __future__ import annotations

import hmac
from collections.abc import Callable

from fastapi import Request

from chunkcache.serve.errors import APIError


def bearer_guard(api_key: str | None) -> Callable[[Request], None]:
    """A FastAPI dependency that rejects requests without the key (401); a no-op when ``api_key`` is None."""
    expected = f"Bearer {api_key}".encode() if api_key else None

    def check(request: Request) -> None:
        if expected is None:
            return
        given = request.headers.get("authorization", "").encode("latin-1", "replace")
        if not hmac.compare_digest(given, expected):
            message = ("missing API key: send 'Authorization: Bearer <key>'" if not given
                       else "invalid API key")
            raise APIError(401, message, None, "invalid_api_key", {"WWW-Authenticate": "Bearer"})

    return check
