"""ASGI middleware: request counting, the API key, and the body size limit.

Written as plain ASGI callables (not Starlette's BaseHTTPMiddleware, which buffers streaming
responses and hides client disconnects from the endpoint).
"""
from __future__ import annotations

import hmac
import json

from .errors import PayloadTooLargeError, UnauthorizedError

PUBLIC_PATHS = ("/health", "/", "/favicon.ico")
PUBLIC_PREFIXES = ("/static/",)
COUNTED_PATHS = ("/v1/chat/completions", "/v1/ocr", "/v1/models", "/health", "/metrics", "/")


async def _send_json(send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    payload = json.dumps(body).encode()
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class RequestCounter:
    """Counts answered requests by endpoint and status code (`requests_total`)."""

    def __init__(self, app, metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in COUNTED_PATHS else ("/static" if path.startswith("/static/") else "other")
        status = {"code": None}

        async def counting_send(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            # 499 (nginx's "client closed request") when the client left before an answer.
            self.metrics.count_request(endpoint, status["code"] or 499)


class ApiKeyGuard:
    """With a key set, every path but /health and the page's static files needs
    `Authorization: Bearer KEY` (what OpenAI clients send); 401 otherwise."""

    def __init__(self, app, api_key: str | None):
        self.app = app
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None or scope.get("method") == "OPTIONS":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES):
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = token.strip()
        # compare_digest: the comparison takes as long whatever prefix matches.
        if not given or not hmac.compare_digest(given, self.key):
            err = UnauthorizedError("a valid API key is required: send 'Authorization: Bearer <key>'")
            return await _send_json(send, err.status, err.body(), {"WWW-Authenticate": "Bearer"})
        return await self.app(scope, receive, send)


# A body over the limit is still read (and dropped) up to this many bytes past it before the 413
# goes out: a server that answers and closes while the client is still sending leaves unread
# bytes in its socket, the kernel then resets the connection, and the client sees "connection
# reset" instead of the 413 (seen in CI). Beyond it the answer goes at once, with Connection: close.
DRAIN_BYTES = 8 * 1024 * 1024


async def _drain(receive, budget: int) -> bool:
    """Reads and drops the rest of the request body, at most `budget` bytes; True when it ended."""
    dropped = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":  # the client went away
            return False
        if not message.get("more_body", False):
            return True
        dropped += len(message.get("body", b""))
        if dropped > budget:
            return False


class BodyLimit:
    """413 for a body over `limit` bytes: at once when Content-Length says so, else as soon as
    the bytes received pass it (chunked uploads), before the body is kept whole. The rest of an
    over-limit body is read and dropped first when it is at most `DRAIN_BYTES` past the limit
    (and the client is not waiting for `100 Continue`), so that the client reads the 413."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        value = headers.get(b"content-length")
        if value is not None:
            if not value.isdigit():
                return await _send_json(send, 400, {"error": {"message": "malformed Content-Length",
                                                              "type": "invalid_request_error",
                                                              "param": None, "code": 400}})
            if int(value) > self.limit:
                # A client that sent `Expect: 100-continue` waits for our word before sending
                # the body: none of it is in flight, so the 413 can go at once.
                waiting = headers.get(b"expect", b"").lower() == b"100-continue"
                ended = (not waiting and int(value) <= self.limit + DRAIN_BYTES
                         and await _drain(receive, self.limit + DRAIN_BYTES))
                return await _send_json(send, 413, self._error().body(), None if ended else {"Connection": "close"})
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_BYTES)
                    raise self._error()
            return message

        return await self.app(scope, limited_receive, send)

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(f"the request body is over this server's limit of {self.limit} bytes")
