"""Preparing the next step's samples while this step trains.

A `SampleDataset` prepares a sample when it is read: the image decoded, cut into views and
normalized, the text tokenized; ~0.1 s for a Gundam page on one core. Read in the training
thread, that time is added to every step while the GPU waits. `StepPrefetcher` reads one step
ahead on worker threads instead (PIL's decoding and resizing and torch's pixel arithmetic run
without the GIL), so the training thread finds the step's samples ready.

What stays the same as reading in the loop, so a run is identical with or without it:
- the indices: they are taken from the same `SampleOrder` in the same order;
- the data position saved with a checkpoint: captured when a step's indices are taken, so a
  checkpoint after step k says "after step k" even though step k+1 was already read;
- errors: a sample that cannot be prepared raises when its step is consumed, and a step that is
  never trained (the run ended or was stopped) raises nothing.
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Sequence

from ..processing.prompt import PreparedInputs
from .data.sampler import SampleOrder


class StepPrefetcher:
    """`next()` gives (samples, indices, position) for one optimizer step.

    Args:
        data: the training samples (read with `data[i]`).
        order: the sample order; its state after a step's take is that step's position.
        per_step: samples per optimizer step on this rank (batch_size x grad_accum).
        workers: preparing threads; 0 reads in the calling thread, as the loop did before.
    """

    def __init__(self, data: Sequence[PreparedInputs], order: SampleOrder, per_step: int, workers: int):
        self.data, self.order, self.per_step = data, order, per_step
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="deepseek-ocr-train-prepare") if workers > 0 else None
        self._ahead: tuple[list[int], dict, list[Future]] | None = None

    def _take(self) -> tuple[list[int], dict, list[Future] | None]:
        indices = self.order.take(self.per_step)
        position = self.order.state_dict()
        futures = None if self._pool is None else [self._pool.submit(self.data.__getitem__, i) for i in indices]
        return indices, position, futures

    def next(self, more: bool) -> tuple[list[PreparedInputs], list[int], dict]:
        """This step's samples; with `more`, the next step's start preparing now."""
        current, self._ahead = self._ahead, None
        if current is None:
            current = self._take()
        if more and self._pool is not None:
            self._ahead = self._take()
        indices, position, futures = current
        items = [self.data[i] for i in indices] if futures is None else [f.result() for f in futures]
        return items, indices, position

    def close(self) -> None:
        """Drop the step read ahead (its errors too) and stop the threads."""
        if self._ahead is not None:
            for f in self._ahead[2] or ():
                f.cancel()
            self._ahead = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
