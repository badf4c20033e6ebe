"""What the endpoints share: the engines (one worker thread each), the thread pool that prepares
inputs, admission (the bounded queue), and running one generation to its end with the request's
deadline, its metrics and its cancellation.

Preparation (image decoding, PDF rendering, views, tokenizing) is CPU work that would stall the
event loop and the engine alike, so it runs in `executor`; PIL, PDFium (under its lock) and the
tokenizer release the GIL for their heavy parts. With `config.prepare_processes`, chat requests
are prepared in child processes instead (`prepare_pool`), off this process's GIL altogether.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import AsyncIterator, Callable, Sequence

from ..engine import Engine, GenerationOptions
from ..engine.transfer import pin_views
from ..errors import DeepseekOCRError
from ..processing.prompt import PreparedInputs
from .config import ServerConfig
from .errors import (QueueFullError, RequestTimeoutError, ShuttingDownError, ServingError,
                     from_library_error)
from .metrics import Metrics
from .prepare_pool import PreparePool
from .worker import EngineWorker, Generation

logger = logging.getLogger(__name__)

_ids = itertools.count(1)


class Ticket:
    """One admitted request; `release()` (idempotent) gives its place back."""

    def __init__(self, backend: "Backend"):
        self._backend = backend
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._backend.in_flight -= 1


class Backend:
    """The serving side of one or more loaded models.

    Args:
        models: loaded `DeepseekOCR`s, one per device; each gets an engine and a worker thread.
            The first one prepares inputs (the tokenizer and preprocessing are the same); its
            `max_pixels` is set to `config.max_pixels`.
        config: the server's limits.
        engine_kwargs: passed to each `Engine` (e.g. `max_slots`).
        engines: ready engines instead (tests), one per model.
    """

    def __init__(self, models: Sequence, config: ServerConfig, engine_kwargs: dict | None = None,
                 engines: Sequence[Engine] | None = None):
        if not models:
            raise ValueError("Backend needs at least one model")
        self.models = list(models)
        self.ocr = self.models[0]
        self.ocr.max_pixels = config.max_pixels
        self.config = config
        if engines is None:
            engines = [Engine(m.model, m.tokenizer, **(engine_kwargs or {})) for m in self.models]
        self.workers = [EngineWorker(e, name=f"engine-{i}") for i, e in enumerate(engines)]
        self.context = self.ocr.model.cfg.decoder.max_position_embeddings
        self.executor: ThreadPoolExecutor | None = None
        self.prepare_pool: PreparePool | None = None
        self.metrics = Metrics()
        self.in_flight = 0
        self.preparing = 0
        self.draining = False
        self.started_at = time.time()

    # -------------------------------------------------------------------- lifecycle
    @property
    def capacity(self) -> int:
        return sum(w.slots for w in self.workers) + self.config.max_queue

    @property
    def tokenizer(self):
        return self.ocr.tokenizer

    def start(self) -> None:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(self.config.prepare_workers, thread_name_prefix="deepseek-ocr-prepare")
        if self.config.prepare_processes and self.prepare_pool is None:
            # Blocks until every child has started (seconds: their imports), so that the first
            # requests do not wait for it; the server listens only once this returns.
            pool = PreparePool(self.config.prepare_processes, self.tokenizer, self.config.max_pixels)
            pool.start()
            self.prepare_pool = pool
        for w in self.workers:
            if not w.alive:
                w.start()

    def stop(self) -> None:
        """Cancel whatever the engines still hold, end their threads and the pool."""
        self.draining = True
        for w in self.workers:
            w.stop()
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None
        if self.prepare_pool is not None:
            self.prepare_pool.shutdown()
            self.prepare_pool = None

    @property
    def healthy(self) -> bool:
        return not self.draining and all(w.alive for w in self.workers)

    # -------------------------------------------------------------------- admission
    def admit(self) -> Ticket:
        """A place for one request, or 503 while shutting down / 429 when the queue is full."""
        if self.draining:
            raise ShuttingDownError("the server is shutting down")
        if self.in_flight >= self.capacity:
            self.metrics.rejected_queue_full += 1
            raise QueueFullError(f"the server is at capacity ({self.capacity} requests in flight); retry later",
                                 headers={"Retry-After": str(self.config.retry_after)})
        self.in_flight += 1
        return Ticket(self)

    # ------------------------------------------------------------------ preparation
    async def run_cpu(self, fn: Callable, *args, param: str | None = None, in_processes: bool = False):
        """`fn(*args)` in the preparation pool, or with `in_processes` in a preparing process (`fn`
        a module-level function of `prepare_pool`; a dead process is a 503); a library error
        becomes the request's 4xx."""
        pool = self.prepare_pool if in_processes else self.executor
        if pool is None:
            raise ShuttingDownError("the server is not running")
        loop = asyncio.get_running_loop()
        self.preparing += 1
        try:
            if in_processes:
                return await self.prepare_pool.run(fn, *args)
            return await loop.run_in_executor(self.executor, lambda: fn(*args))
        except DeepseekOCRError as err:
            raise from_library_error(err, param) from None
        finally:
            self.preparing -= 1

    def close_later(self, fn: Callable[[], None]) -> None:
        """Run a clean-up that may block (closing a PDF waits for PDFium's lock) off the loop."""
        try:
            if self.executor is not None:
                self.executor.submit(fn)
                return
        except RuntimeError:  # the pool is shutting down
            pass
        fn()

    async def prepare(self, image, prompt: str, mode, param: str | None = None) -> PreparedInputs:
        # `/v1/ocr` pages stay on threads even with `prepare_processes`: each is a PIL image
        # decoded or rendered here (a PDF page needs the document open in this process), and a
        # child would need its raw pixels pickled through the pipe (7 MB for 1280 x 1920 RGB).
        return await self.run_cpu(self.prepare_here, image, prompt, mode, param=param)

    def prepare_here(self, image, prompt: str, mode) -> PreparedInputs:
        """`ocr.prepare` on this (preparing) thread, the views as uint8 levels (half the bytes of
        bf16 pixels to pin and copy; the engine's vision encode converts them on the device) and
        pinned for the GPU's copy."""
        return pin_views(self.ocr.prepare(image, prompt, mode, pixel_codes=True), self.ocr.device)

    def check_budget(self, inputs: PreparedInputs, options: GenerationOptions, param: str = "max_tokens") -> None:
        """Refuse (422) a request whose prompt + max tokens cannot fit the context, before it queues."""
        try:
            options.budget(inputs.num_tokens, self.context)
        except DeepseekOCRError as err:
            raise from_library_error(err, param) from None

    # ------------------------------------------------------------------- generation
    def start_generation(self, inputs: PreparedInputs, options: GenerationOptions, prefix: str = "req") -> Generation:
        """Queue a request on the least busy engine."""
        if self.draining:
            raise ShuttingDownError("the server is shutting down")
        worker = min(self.workers, key=lambda w: w.assigned / w.slots)
        gen = Generation(asyncio.get_running_loop(), inputs, options, f"{prefix}-{next(_ids)}")
        worker.submit(gen)
        return gen

    def cancel(self, gen: Generation) -> None:
        if not gen.finished and gen.worker is not None:
            gen.worker.cancel(gen)

    async def tokens(self, gen: Generation, started: float, deadline: float) -> AsyncIterator[list[int]]:
        """Yield `gen`'s new ids as they come, until it ends or `deadline` (loop time) passes.

        Leaving early (the client went away, an exception) cancels the request in its engine,
        which frees its slot at the next step. Raises RequestTimeoutError at the deadline.
        """
        loop = asyncio.get_running_loop()
        # One timer per request rather than a timeout around every wait for tokens.
        timer = loop.call_at(deadline, gen.expire)
        last = None
        try:
            async for ids in gen.updates():
                now = time.perf_counter()
                if last is None:
                    self.metrics.ttft.observe(now - started)
                self.metrics.tokens_arrived(len(ids), None if last is None else now - last)
                last = now
                yield ids
            if not gen.finished:
                self.metrics.timeouts += 1
                raise RequestTimeoutError(f"the request ran past the server's limit of "
                                          f"{self.config.request_timeout:g} s and was cancelled")
        finally:
            timer.cancel()
            self.release(gen, started)

    def release(self, gen: Generation, started: float) -> None:
        """Account for `gen` once it is done with (idempotent; synchronous, so that it also runs
        in clean-up code being cancelled): its figures if it finished, else its cancellation."""
        if gen.counted:
            return
        gen.counted = True
        if gen.finished:
            self.metrics.prompt_tokens += gen.inputs.num_tokens
            self.metrics.duration.observe(time.perf_counter() - started)
        else:
            self.cancel(gen)
        if gen.worker is not None:
            gen.worker.assigned -= 1

    async def collect(self, gen: Generation, started: float, deadline: float,
                      on_ids: Callable[[list[int]], None] | None = None) -> Generation:
        """Run `gen` to its end (see `tokens`)."""
        async for ids in self.tokens(gen, started, deadline):
            if on_ids is not None:
                on_ids(ids)
        return gen

    def deadline(self, started_loop_time: float) -> float:
        return started_loop_time + self.config.request_timeout


async def until_disconnected(receive) -> None:
    """Return when the client has gone away (the ASGI `http.disconnect` message); call only
    after the request body has been read."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def unless_disconnected(awaitable, receive, on_disconnect: Callable[[], None]) -> tuple[bool, object]:
    """Await `awaitable`, unless the client disconnects first: then cancel it and call
    `on_disconnect`. Returns (True, its result), or (False, None) after a disconnect."""
    work = asyncio.ensure_future(awaitable)
    watch = asyncio.ensure_future(until_disconnected(receive))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            return True, work.result()
        work.cancel()
        try:
            await work
        except (asyncio.CancelledError, ServingError):
            pass
        on_disconnect()
        return False, None
    finally:
        watch.cancel()
        if not work.done():
            work.cancel()
