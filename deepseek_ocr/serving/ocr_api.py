"""`POST /v1/ocr`: an image or a PDF in, per page the markdown, the raw text, the grounding boxes
in the page's pixels, token figures and the finish reason; as one JSON object, or streamed as
NDJSON events (`stream=true`) while the pages are read.

The post-processing is the `deepseek-ocr` command's: `postprocess.render_page` on the stripped
text and the page as rendered, the same token figures (`pipeline.writer.token_figures`) and
page naming. Pages go to the engine `pages_in_flight` at a time; a page that fails (it will not
render, its generation faults) carries its error and the others come back.
"""
from __future__ import annotations

import asyncio
import logging
import time

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from ..generation.detokenize import IncrementalDetokenizer
from ..generation.generate import GenerationResult
from ..pipeline.writer import page_stem, token_figures
from ..postprocess import combine_pages, render_page
from .backend import Backend, unless_disconnected
from .documents import OcrRequest, PageSource, image_data_url, open_source, parse_ocr_form
from .errors import MalformedRequestError, RequestTimeoutError, ServingError
from .http import ClosingStream, dumps, new_id

logger = logging.getLogger(__name__)


class _Job:
    """One `/v1/ocr` request on its way: its pages' tasks and the events they report."""

    def __init__(self, backend: Backend, req: OcrRequest, source: PageSource, started: float, deadline: float):
        self.backend, self.req, self.source = backend, req, source
        self.started, self.deadline = started, deadline
        self.events: asyncio.Queue = asyncio.Queue()
        self.records: dict[int, dict] = {}
        self.gate = asyncio.Semaphore(backend.config.pages_in_flight)

    def emit(self, event: dict) -> None:
        if self.req.stream:
            self.events.put_nowait(event)

    async def page(self, index: int) -> None:
        number = index + 1
        t0 = time.perf_counter()
        record: dict = {"page": number, "index": index, "status": "failed", "error": None, "error_type": None}
        async with self.gate:
            try:
                if asyncio.get_running_loop().time() >= self.deadline:  # no time left: do not start it
                    raise RequestTimeoutError("the request's time limit passed before this page was read")
                await self._read_page(index, record)
            except ServingError as err:
                record.update(error=err.message, error_type=err.error_type)
                logger.info("ocr page %d: %s: %s", number, err.error_type, err.message)
        record["seconds"] = round(time.perf_counter() - t0, 4)
        self.records[number] = record
        self.backend.metrics.pages += 1
        self.emit({"event": "page", **record})

    async def _read_page(self, index: int, record: dict) -> None:
        backend, req = self.backend, self.req
        number = index + 1
        image = await backend.run_cpu(self.source.load, index, param="file")
        record.update(width=image.width, height=image.height)
        start = {"event": "page_start", "page": number, "width": image.width, "height": image.height}
        if req.page_images and req.stream:
            start["image"] = await backend.run_cpu(image_data_url, image)
        self.emit(start)
        inputs = await backend.prepare(image, req.prompt, req.mode, param="file")
        backend.check_budget(inputs, req.options)
        gen = backend.start_generation(inputs, req.options, prefix="ocr")
        on_ids = self._deltas(number) if req.deltas and req.stream else None
        await backend.collect(gen, self.started, self.deadline, on_ids)
        raw = backend.tokenizer.decode(gen.token_ids)
        result = GenerationResult(text=raw.strip(), token_ids=list(gen.token_ids), finish_reason=gen.finish_reason,
                                  prompt_tokens=inputs.num_tokens, vision_tokens=inputs.num_vision_tokens,
                                  valid_vision_tokens=inputs.valid_vision_tokens, error=gen.error, raw_text=raw)
        record.update(finish_reason=result.finish_reason, tokens=token_figures(result))
        if gen.finish_reason in ("error", "cancelled"):
            record.update(error=gen.error or f"generation {gen.finish_reason}", error_type="GenerationError",
                          raw_text=raw)
            return
        # The command renders the stripped text (`result.text`), as the official code does.
        render = await backend.run_cpu(lambda: render_page(result.text, image, page_name=page_stem(number)))
        record.update(status="ok", markdown=render.markdown, raw_text=raw, boxes=render.boxes,
                      problems=render.problems)
        if req.crops:
            record["crops"] = {name: await backend.run_cpu(image_data_url, picture, None)
                               for name, picture in render.crops}

    def _deltas(self, number: int):
        """A page's text events as its ids arrive (whole characters only)."""
        detok = IncrementalDetokenizer(self.backend.tokenizer.decode)

        def on_ids(ids: list[int]) -> None:
            piece = detok.extend(ids)
            if piece:
                self.emit({"event": "delta", "page": number, "text": piece})
        return on_ids

    async def run(self) -> None:
        tasks = [asyncio.ensure_future(self.page(i)) for i in self.source.selected]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def summary(self) -> dict:
        pages = [self.records[n] for n in sorted(self.records)]
        ok = [p for p in pages if p["status"] == "ok"]
        prompt = sum(p.get("tokens", {}).get("prompt", 0) for p in pages)
        completion = sum(p.get("tokens", {}).get("text", 0) for p in pages)
        return {"markdown": combine_pages([p["markdown"] for p in ok]), "complete": len(ok) == len(pages),
                "totals": {"pages": len(pages), "ok": len(ok), "failed": len(pages) - len(ok),
                           "seconds": round(time.perf_counter() - self.started, 4)},
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}


def _head(backend: Backend, req: OcrRequest, source: PageSource, ident: str) -> dict:
    mode = req.mode
    return {"id": ident, "object": "ocr.result", "model": backend.config.model_name,
            "document": {"kind": source.kind, "page_count": source.count,
                         "pages": [i + 1 for i in source.selected]},
            "mode": {"name": mode.name, "base_size": mode.base_size, "image_size": mode.image_size,
                     "crop": mode.crop},
            "prompt": req.prompt}


async def ocr(request: Request) -> Response:
    backend: Backend = request.app.state.backend
    started, loop = time.perf_counter(), asyncio.get_running_loop()
    deadline = backend.deadline(loop.time())
    try:
        form = await request.form(max_files=1, max_fields=64, max_part_size=backend.config.max_body_bytes)
    except ClientDisconnect:
        raise MalformedRequestError("the client closed the connection while sending the body") from None
    except ServingError:
        raise
    except Exception as err:  # noqa: BLE001 - Starlette's form parser raises several kinds
        if request.headers.get("content-type", "").split(";")[0].strip() != "multipart/form-data":
            raise MalformedRequestError("/v1/ocr takes multipart/form-data with a 'file' field") from None
        raise MalformedRequestError(f"the multipart body cannot be read: {err}") from None
    try:
        req = await parse_ocr_form(form, backend.config)
    finally:
        await form.close()
    ticket = backend.admit()
    try:
        source = await backend.run_cpu(open_source, req, backend.config, param="file")
    except BaseException:
        ticket.release()
        raise
    job = _Job(backend, req, source, started, deadline)
    head = _head(backend, req, source, new_id("ocr"))

    def close() -> None:
        ticket.release()
        backend.close_later(source.close)

    if req.stream:
        return ClosingStream(_ndjson(job, head), on_close=close, media_type="application/x-ndjson",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        answered, _ = await unless_disconnected(job.run(), request.receive,
                                                on_disconnect=lambda: _count_disconnect(backend))
    finally:
        close()
    if not answered:  # the client left; its pages were cancelled and nobody reads this
        return Response(status_code=499)
    return JSONResponse({**head, **job.summary(), "pages": [job.records[n] for n in sorted(job.records)]})


def _count_disconnect(backend: Backend) -> None:
    backend.metrics.cancelled += 1


async def _ndjson(job: _Job, head: dict):
    runner = asyncio.ensure_future(job.run())
    getter = None
    finished = False
    try:
        yield dumps({"event": "document", **head}) + "\n"
        while not (runner.done() and job.events.empty()):
            getter = asyncio.ensure_future(job.events.get())
            await asyncio.wait({getter, runner}, return_when=asyncio.FIRST_COMPLETED)
            if getter.done():
                yield dumps(getter.result()) + "\n"
            else:
                getter.cancel()
        runner.result()  # a bug inside surfaces here (logged by the app), not silently
        yield dumps({"event": "done", **job.summary()}) + "\n"
        finished = True
    finally:
        if getter is not None and not getter.done():
            getter.cancel()
        if not finished:
            if not runner.done():
                job.backend.metrics.cancelled += 1
            runner.cancel()
