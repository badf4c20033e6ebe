"""`POST /v1/chat/completions`: one engine request per call, answered whole or streamed as
server-sent events ending in `data: [DONE]`, in the shapes the OpenAI API (and vLLM) use.

`finish_reason` is "stop" (EOS) or "length"; a loop stopped by `stop_on_repetition` reads "stop"
with `stop_reason: "repetition"` (vLLM's field for why it stopped), so clients that know only
OpenAI's reasons keep working.
"""
from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..generation.detokenize import IncrementalDetokenizer
from . import prepare_pool
from .backend import Backend, unless_disconnected
from .chat_request import ChatRequest, parse_chat
from .errors import GenerationFailedError, RequestTimeoutError, ServingError, ShuttingDownError
from .http import SSE_HEADERS, ClosingStream, dumps, new_id, read_json
from .worker import Generation

logger = logging.getLogger(__name__)


def _finish(gen: Generation) -> tuple[str, str | None]:
    if gen.finish_reason == "repetition":
        return "stop", "repetition"
    return ("length", None) if gen.finish_reason == "length" else ("stop", None)


def _usage(gen: Generation) -> dict:
    prompt, completion = gen.inputs.num_tokens, len(gen.token_ids)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _check_end(gen: Generation) -> None:
    """The end of a request that did not complete normally, as the error to answer with."""
    if gen.finish_reason == "error":
        raise GenerationFailedError(gen.error or "generation failed")
    if gen.finish_reason == "cancelled":
        raise ShuttingDownError(gen.error or "the request was cancelled: the server is shutting down")


async def _in_processes(backend: Backend, chat: ChatRequest, param: str):
    """Prepare in `backend.prepare_pool`. A data URL goes to the child undecoded: its base64
    decoding holds the GIL (~5 ms per MB of image), while passing the string costs a tenth of
    that. An http(s) image is fetched here, on a thread (network waits release the GIL)."""
    image = chat.image
    if image is not None and image.is_data:
        return await backend.run_cpu(prepare_pool.prepare_data_url, image.url, image.param, chat.prompt, chat.mode,
                                     param=param, in_processes=True)
    data = None if image is None else await backend.run_cpu(image.read, backend.config, param=param)
    return await backend.run_cpu(prepare_pool.prepare, data, chat.prompt, chat.mode, param=param, in_processes=True)


async def _prepare(backend: Backend, chat: ChatRequest, deadline: float):
    def work():
        data = chat.image.read(backend.config) if chat.image is not None else None
        return backend.prepare_here(data, chat.prompt, chat.mode)

    loop = asyncio.get_running_loop()
    param = chat.image.param if chat.image else "messages"
    if backend.prepare_pool is not None:
        job = _in_processes(backend, chat, param)
    else:
        job = backend.run_cpu(work, param=param)
    try:
        inputs = await asyncio.wait_for(job, max(0.0, deadline - loop.time()))
    except asyncio.TimeoutError:
        backend.metrics.timeouts += 1
        raise RequestTimeoutError("preparing the image took longer than the server's request limit") from None
    backend.check_budget(inputs, chat.options)
    return inputs


async def chat_completions(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    started, loop = time.perf_counter(), asyncio.get_running_loop()
    deadline = backend.deadline(loop.time())
    chat = parse_chat(await read_json(request), backend.config)
    ticket = backend.admit()
    try:
        inputs = await _prepare(backend, chat, deadline)
    except BaseException:
        ticket.release()
        raise
    # Arrival -> prepared (body read, image decoded, views made): the part of the time to first
    # token spent before the request queues for an engine, per request (Server-Timing) and in
    # /metrics.
    prepared = time.perf_counter() - started
    backend.metrics.prepare.observe(prepared)
    timing = {"Server-Timing": f"prepare;dur={prepared * 1e3:.1f}"}
    meta = {"id": new_id("chatcmpl"), "created": int(time.time()), "model": chat.model}
    if chat.stream:
        return ClosingStream(_events(backend, chat, inputs, meta, started, deadline), on_close=ticket.release,
                             media_type="text/event-stream", headers={**SSE_HEADERS, **timing})
    try:
        answered, gen = await unless_disconnected(_complete(backend, chat, inputs, started, deadline),
                                                  request.receive, on_disconnect=lambda: _count_disconnect(backend))
    finally:
        ticket.release()
    if not answered:  # the client left; the request was cancelled and nobody reads this
        return Response(status_code=499)
    _check_end(gen)
    text = backend.tokenizer.decode(gen.token_ids, skip_special_tokens=chat.skip_special_tokens)
    reason, stop_reason = _finish(gen)
    return JSONResponse({
        **meta, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "logprobs": None, "finish_reason": reason, "stop_reason": stop_reason}],
        "usage": _usage(gen)}, headers=timing)


def _count_disconnect(backend: Backend) -> None:
    backend.metrics.cancelled += 1


async def _complete(backend: Backend, chat: ChatRequest, inputs, started: float, deadline: float) -> Generation:
    gen = backend.start_generation(inputs, chat.options, prefix="chat")
    return await backend.collect(gen, started, deadline)


def _chunk(meta: dict, delta: dict, finish: str | None = None, stop_reason: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    if finish is not None:
        choice["stop_reason"] = stop_reason
    return "data: " + dumps({**meta, "object": "chat.completion.chunk", "choices": [choice]}) + "\n\n"


async def _events(backend: Backend, chat: ChatRequest, inputs, meta: dict, started: float, deadline: float):
    """The SSE body. Runs only while the client listens: Starlette cancels it on disconnect,
    and leaving `backend.tokens` cancels the engine request."""
    tok = backend.tokenizer
    detok = IncrementalDetokenizer(lambda ids: tok.decode(ids, skip_special_tokens=chat.skip_special_tokens))
    try:
        gen = backend.start_generation(inputs, chat.options, prefix="chat")
    except ServingError as err:  # the server began shutting down since the request was accepted
        yield "data: " + dumps(err.body()) + "\n\ndata: [DONE]\n\n"
        return
    finished = False
    try:
        yield _chunk(meta, {"role": "assistant", "content": ""})
        try:
            async for ids in backend.tokens(gen, started, deadline):
                piece = detok.extend(ids)
                if piece:
                    yield _chunk(meta, {"content": piece})
            _check_end(gen)
        except ServingError as err:
            yield "data: " + dumps(err.body()) + "\n\n"
        else:
            tail = detok.flush()
            if tail:
                yield _chunk(meta, {"content": tail})
            reason, stop_reason = _finish(gen)
            yield _chunk(meta, {}, reason, stop_reason)
            if chat.include_usage:
                yield "data: " + dumps({**meta, "object": "chat.completion.chunk", "choices": [],
                                        "usage": _usage(gen)}) + "\n\n"
        yield "data: [DONE]\n\n"
        finished = True
    finally:
        if not finished and not gen.finished:
            backend.metrics.cancelled += 1  # the client went away mid-stream
        backend.release(gen, started)
