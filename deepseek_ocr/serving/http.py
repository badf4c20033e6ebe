"""HTTP pieces the endpoints share: reading a JSON body, error responses, and a streaming
response that always runs its clean-up."""
from __future__ import annotations

import json
import uuid
from typing import AsyncIterator, Callable

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, StreamingResponse

from .errors import MalformedRequestError, ServingError


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


async def read_json(request: Request):
    """The parsed body; 400 with the parser's reason when it is not JSON."""
    try:
        raw = await request.body()
    except ClientDisconnect:
        raise MalformedRequestError("the client closed the connection while sending the body") from None
    if not raw.strip():
        raise MalformedRequestError("the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise MalformedRequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as err:
        raise MalformedRequestError(f"the request body is not valid JSON: {err.msg} at line {err.lineno} "
                                    f"column {err.colno}") from None


def error_response(err: ServingError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class ClosingStream(StreamingResponse):
    """A StreamingResponse whose `on_close` runs however the response ends: finished, the
    client gone (Starlette then cancels the body iterator, whose own `finally` runs), or never
    started at all (a client that left before the first byte: the iterator's code never ran,
    so whatever it would have cleaned up is `on_close`'s job)."""

    def __init__(self, content: AsyncIterator, on_close: Callable[[], None], **kwargs):
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        except (ClientDisconnect, OSError):
            pass  # the client went away; nothing left to tell it
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()
            self._on_close()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
