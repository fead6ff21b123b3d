"""Request body size limit, enforced before anything parses the body (oversized bodies get 413).

A pure ASGI middleware: a declared ``Content-Length`` over the limit is refused without reading a byte;
otherwise the body is read here, counting as it arrives (chunked uploads declare no length), and replayed to
the application only when it fits. Holding the whole body is what the JSON parser would do anyway.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chunkcache.serve.errors import error_response

DEFAULT_MAX_BODY = 8 << 20


class BodyLimit:
    """Wrap ``app`` so request bodies larger than ``max_bytes`` are answered with 413."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        messages: list[Message] = []
        size = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(413, f"request body is larger than the limit of {self.max_bytes} bytes",
                                  None, "request_too_large", {"Connection": "close"})
        await response(scope, receive, send)
