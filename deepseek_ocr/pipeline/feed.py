"""Pages on their way through the pipeline: one `_Slot` per page, prepared ahead of the model
in a thread pool (`_Feed`, a bounded look-ahead) or in the calling thread (`_Immediate`)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterator

from ..errors import DeepseekOCRError
from ..generation.generate import GenerationResult
from ..inputs import PageRef

# What one bad input may raise without stopping the run (section 21). Anything else is a bug
# and propagates.
PAGE_ERRORS = (DeepseekOCRError, OSError)


class _Slot:
    """One page on its way through the pipeline."""

    def __init__(self, page: PageRef):
        self.page = page
        self.future: Future | None = None
        self.image = None
        self.inputs = None
        self.result: GenerationResult | None = None
        self.error: tuple[str, str] | None = None  # (error_type, message)
        self.skipped: tuple[dict, GenerationResult] | None = None
        self.redone: str | None = None
        self.run: dict = {}
        self.timings: dict[str, float] = {}
        self.request = None  # the engine request (continuous runs)
        self.finishing = None  # the future of its post-processing (`_Runner._finish`)

    def fail(self, error_type: str, message: str) -> None:
        self.error = (error_type, message)


class _Immediate:
    """A finished future, for `workers=0` (prepare in the calling thread)."""

    def __init__(self, fn: Callable, *args):
        self._value, self._error = None, None
        try:
            self._value = fn(*args)
        except PAGE_ERRORS as err:
            self._error = err

    def result(self):
        if self._error is not None:
            raise self._error
        return self._value


class _Feed:
    """Pages from an iterator into `_Slot`s, up to `lookahead` ahead, prepared in `pool`."""

    def __init__(self, it: Iterator[PageRef], pool: ThreadPoolExecutor | None, new_slot, lookahead: int):
        self.it, self.pool, self.new_slot, self.lookahead = it, pool, new_slot, lookahead
        self.pending: deque[_Slot] = deque()
        self.exhausted = False

    def fill(self) -> None:
        while not self.exhausted and len(self.pending) < self.lookahead:
            try:
                page = next(self.it)
            except StopIteration:
                self.exhausted = True
                return
            self.pending.append(self.new_slot(page, self.pool))

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
