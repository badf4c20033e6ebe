"""The pipeline on the engine: pages stream through continuous batching.

Up to `batch_size` pages decode at once; a page joins the moment another ends; each finished
page is post-processed (render, drawn boxes, files) in a finishing thread while the engine
decodes on, and outcomes leave in input order. `runner.run_pages` chooses this path unless the
reference loop was asked for (see `runs_on_engine`).
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import torch

from ..engine import GenerationOptions, engine_for, supports_model
from ..engine.gil import short_gil_turns
from ..errors import DeepseekOCRError
from ..generation.generate import make_result

logger = logging.getLogger(__name__)

# torch >= 2.5 has the top-level name; older builds only the CUDA one.
OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def runs_on_engine(runner) -> bool:
    """The engine runs the pages, unless the reference loop was asked for (`fast=False`), the
    model carries unmerged LoRA factors (only the reference loop honours them), or this
    object's `generate` was replaced (a wrapper or a test double): then pages go through
    that `generate` in windows of `batch_size`."""
    model = getattr(runner.ocr, "model", None)
    own = getattr(runner.ocr, "__dict__", {}).get("generate")  # an instance attribute shadowing the method
    replaced = own is not None and getattr(own, "__func__", None) is not getattr(type(runner.ocr), "generate", None)
    return runner.gen_kwargs.get("fast") is not False and not replaced \
        and isinstance(model, torch.nn.Module) and supports_model(model)


def run_continuous(runner, pages: Iterable) -> Iterator:
    """Pages stream through the engine: up to `batch_size` of them decode at once, a new one
    joins the moment one ends, and outcomes leave in input order as soon as they are done."""
    eng = engine_for(runner.ocr.model, runner.ocr.tokenizer)
    opts = GenerationOptions.from_kwargs(runner.gen_kwargs)
    feed = runner._feed(pages)
    pending, fill = feed.pending, feed.fill
    order: deque = deque()  # given out, in input order, waiting to be emitted
    in_engine = 0
    finisher = ThreadPoolExecutor(runner.workers, thread_name_prefix="deepseek-ocr-finish") \
        if runner.workers > 0 else None

    def finished(slot, req) -> None:
        nonlocal in_engine
        in_engine -= 1
        slot.timings.update(generate_s=req.finished_at - req.submitted_at, batch_size=runner.batch_size)
        slot.result = make_result(runner.ocr, req.inputs, req.token_ids, req.finish_reason, req.error)
        if req.finish_reason == "error":
            slot.fail("GenerationError", req.error or "generation failed")

    def done(slot) -> bool:
        return slot.skipped is not None or slot.error is not None or slot.result is not None

    try:
        # The engine's step shares the GIL with the preparing and finishing threads: short GIL
        # turns while pages stream (restored when the run ends; see engine/gil.py).
        with short_gil_turns(), runner.watch.batch(runner.batch_size):
            while True:
                fill()
                while pending and in_engine < runner.batch_size:
                    head = pending[0]
                    if hasattr(head.future, "done") and not head.future.done() and eng.has_work:
                        break  # the engine has work: decode on while the page is prepared
                    slot = pending.popleft()
                    if slot.future is not None:
                        runner._resolve(slot)
                    if slot.skipped is None and slot.error is None:
                        try:
                            slot.request = eng.submit(slot.inputs, opts, listener=lambda r, ids, s=slot:
                                       finished(s, r) if r.finished else None)
                            in_engine += 1
                        except DeepseekOCRError as err:
                            slot.fail(type(err).__name__, str(err))
                    order.append(slot)
                    fill()
                # Post-processing (render, drawn boxes, files) of every finished page runs
                # in the finishing threads while the engine decodes on; outcomes leave in
                # input order.
                for slot in order:
                    if slot.finishing is None and done(slot):
                        slot.finishing = runner._finish_later(slot, finisher)
                while order and order[0].finishing is not None and \
                        (not eng.has_work or not hasattr(order[0].finishing, "done")
                         or order[0].finishing.done()):
                    yield runner._emit_finished(order.popleft())
                if not order and not pending and feed.exhausted:
                    break
                if eng.has_work:
                    try:
                        eng.step()
                    except OutOfMemoryError as err:
                        _out_of_memory(runner, eng, order, err)
                    runner.watch.step()
        for name in list(runner._docs):
            runner._close_document(name)
    finally:
        eng.abort([s.request for s in order if s.request is not None])
        feed.close()
        if finisher is not None:
            finisher.shutdown(wait=True, cancel_futures=True)


def _out_of_memory(runner, eng, order, err) -> None:
    """A step ran out of memory: the pages in the engine fail with the reason, the engine's
    work is dropped, and later pages go in fewer at a time."""
    reqs = list(eng.running.values()) + list(eng.waiting)
    eng.abort(reqs)
    message = f"out of memory with {len(reqs)} pages in the engine: {err}"
    for slot in order:
        if slot.result is not None and slot.result.finish_reason == "cancelled":
            slot.result = None
            slot.fail("OutOfMemoryError", message)
    if runner.ocr.device.type == "cuda":
        torch.cuda.empty_cache()
    runner.batch_size = max(1, runner.batch_size // 2)
    logger.warning("%s; continuing with %d pages at a time", message, runner.batch_size)
