"""The bridge between the event loop and an engine: one thread per engine owns it.

The engine is not thread-safe, so exactly one thread (the worker's) calls `submit`, `step` and
`cancel`. The event loop hands it submissions and cancellations through a thread-safe queue;
the thread steps while there is work and sleeps on the queue when there is none. Tokens go back
to the loop through `loop.call_soon_threadsafe`: once per engine round for all the requests with
news (not once per token, each being a write to the loop's self-pipe), and ids that arrive while
a request's wake-up is pending are appended to it, so a loop that falls behind the engine
receives tokens in larger batches instead of a growing backlog of callbacks.
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from typing import AsyncIterator

from ..engine import Engine, GenerationOptions, Request
from ..errors import DeepseekOCRError
from ..processing.prompt import PreparedInputs

logger = logging.getLogger(__name__)


class Generation:
    """One engine request as the event loop sees it.

    Made on the loop, filled by the engine thread through `on_tokens`. The loop reads it with
    `updates()`; once that ends, `finish_reason`, `error` and `token_ids` are final.

    Attributes:
        id: the request id (also the engine's).
        inputs, options: what was asked.
        token_ids: ids received on the loop so far.
        finish_reason: None while running; then one of the engine's FINISH_REASONS.
        error: what went wrong for "error".
        first_token_at: `time.perf_counter()` on the loop when the first id arrived.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, inputs: PreparedInputs, options: GenerationOptions,
                 request_id: str):
        self.loop = loop
        self.inputs, self.options, self.id = inputs, options, request_id
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.first_token_at: float | None = None
        self.request: Request | None = None  # the engine's, set on the engine thread
        self.cancelled = False  # asked to cancel before the engine saw the request
        self.worker: EngineWorker | None = None
        self.expired = False  # the request's deadline passed (set on the loop)
        self.counted = False  # its worker's `assigned` was given back
        # Shared with the engine thread, under _lock.
        self._lock = threading.Lock()
        self._pending: list[int] = []
        self._final: tuple[str, str | None] | None = None
        self._forced: tuple[str, str] | None = None
        self._wake_scheduled = False
        self._event = asyncio.Event()

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    # ------------------------------------------------------------------ engine thread
    def on_tokens(self, request: Request, ids: list[int]) -> None:
        """The engine's listener: new ids, or `[]` once the request has ended."""
        with self._lock:
            if ids:
                self._pending.extend(ids)
            else:
                self._final = self._forced or (request.finish_reason or "error", request.error)
            if self._wake_scheduled:
                return
            self._wake_scheduled = True
        self.worker.changed(self)

    def end(self, reason: str, error: str | None) -> None:
        """End a request the engine never took (or took and lost in a failed step)."""
        with self._lock:
            if self._final is None:
                self._final = (reason, error)
            self._wake_scheduled = True
        self.worker.changed(self)

    def force(self, reason: str, error: str) -> None:
        """Make the coming end of this request read `reason` / `error` (an engine failure ends
        requests through `abort`, which says "cancelled")."""
        with self._lock:
            self._forced = (reason, error)

    # -------------------------------------------------------------------- event loop
    def expire(self) -> None:
        """The deadline passed: `updates()` stops waiting (a timer on the loop calls this)."""
        self.expired = True
        self._event.set()

    async def updates(self) -> AsyncIterator[list[int]]:
        """Yield batches of new ids until the request ends (then `finish_reason` is set) or
        `expire()` is called (then it stays None)."""
        while True:
            self._event.clear()
            with self._lock:
                ids, self._pending = self._pending, []
                final = self._final
                self._wake_scheduled = False
            if ids:
                if self.first_token_at is None:
                    self.first_token_at = time.perf_counter()
                self.token_ids.extend(ids)
                yield ids
            if final is not None:
                self.finish_reason, self.error = final
                return
            if self.expired:
                return
            if not ids:
                await self._event.wait()


class EngineWorker:
    """The thread that owns `engine`.

    Loop side: `submit(generation)`, `cancel(generation)`, `stop()`, and the published figures
    `waiting`, `running`, `stats` (plain attributes the thread rewrites after every step).

    Args:
        engine: the engine; nothing else may touch it once `start()` was called.
        name: for the thread's name and the logs.
    """

    def __init__(self, engine: Engine, name: str = "engine-0"):
        self.engine = engine
        self.name = name
        self.assigned = 0  # generations given to this worker and not ended (loop side)
        self.waiting = 0
        self.running = 0
        self.stats: dict = dict(engine.stats)
        self.failures = 0
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._live: set[Generation] = set()
        self._changed: list[Generation] = []  # engine thread: generations with news this round
        self._thread = threading.Thread(target=self._main, name=f"deepseek-ocr-{name}", daemon=True)

    @property
    def slots(self) -> int:
        return self.engine.max_slots

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def submit(self, generation: Generation) -> None:
        generation.worker = self
        self.assigned += 1
        self._commands.put(("submit", generation))

    def cancel(self, generation: Generation) -> None:
        self._commands.put(("cancel", generation))

    def stop(self, timeout: float = 30.0) -> None:
        """End every request still in the engine ("cancelled") and the thread."""
        if self._thread.is_alive():
            self._commands.put(("stop", None))
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("%s: the engine thread did not stop within %.0f s", self.name, timeout)

    # ------------------------------------------------------------------ engine thread
    def changed(self, generation: Generation) -> None:
        """`generation` has news for the loop; told with the others of this round in `_wake`."""
        self._changed.append(generation)

    def _wake(self) -> None:
        """Wake the loop once for every generation with news: one cross-thread call per round
        instead of one per request (each is a write to the loop's self-pipe)."""
        if not self._changed:
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[Generation]] = {}
        for g in self._changed:
            by_loop.setdefault(g.loop, []).append(g)
        self._changed = []
        for loop, gens in by_loop.items():
            try:
                loop.call_soon_threadsafe(_set_events, gens)
            except RuntimeError:  # the loop has closed: nobody waits for these any more
                pass

    def _main(self) -> None:
        eng = self.engine
        try:  # every batch bucket's CUDA graph now, not in the middle of the first requests
            captured = eng.capture_graphs()
            if captured:
                logger.info("%s: captured the decode step for %d batch sizes", self.name, captured)
        except Exception:  # noqa: BLE001 - the engine still captures each bucket on first use
            logger.exception("%s: capturing the decode graphs at start failed", self.name)
        while True:
            try:
                # Idle: sleep until a command arrives. Busy: take what is there and step.
                command = self._commands.get(block=not eng.has_work)
            except queue.Empty:
                command = None
            while command is not None:
                if command[0] == "stop":
                    self._abort_all("cancelled", "the server is shutting down")
                    self._wake()
                    return
                self._apply(*command)
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
            if eng.has_work:
                try:
                    eng.step()
                except Exception as err:  # noqa: BLE001 - a failed step must not end the thread
                    # The requests in the step cannot be trusted any more; the others in the
                    # server (on other workers, or arriving next) are unaffected.
                    self.failures += 1
                    logger.exception("%s: engine step failed; its requests end with an error", self.name)
                    self._abort_all("error", f"the engine failed ({type(err).__name__}); retry the request")
            self._wake()
            self.waiting, self.running = len(eng.waiting), len(eng.running)
            if len(self._live) > self.waiting + self.running:  # some ended: forget them
                self._live = {g for g in self._live if g.request is not None and not g.request.finished}
            self.stats = dict(eng.stats)

    def _apply(self, kind: str, generation: Generation) -> None:
        if kind == "cancel":
            if generation.request is not None:
                self.engine.cancel(generation.request)
            else:
                generation.cancelled = True
            return
        if generation.cancelled:
            generation.end("cancelled", None)
            return
        try:
            generation.request = self.engine.submit(generation.inputs, generation.options,
                                                    request_id=generation.id, listener=generation.on_tokens)
        except DeepseekOCRError as err:  # checked on the loop before; a race with a limit change
            generation.end("error", str(err))
            return
        except Exception:  # noqa: BLE001 - a bug in one submission must not end the thread
            logger.exception("%s: submitting %s failed", self.name, generation.id)
            generation.end("error", "the engine could not take the request")
            return
        self._live.add(generation)

    def _abort_all(self, reason: str, error: str) -> None:
        live = [g for g in self._live if g.request is not None and not g.request.finished]
        for g in live:
            g.force(reason, error)
        try:
            self.engine.abort([g.request for g in live])
        except Exception:  # noqa: BLE001 - the engine is broken; the requests still get their end
            logger.exception("%s: aborting requests failed", self.name)
        for g in live:
            g.end(reason, error)
        self._live.clear()


def _set_events(generations: list[Generation]) -> None:
    for g in generations:
        g._event.set()
