"""training/prefetch.py: the steps read ahead on threads are the steps read in the loop (same
indices, same positions, same samples), the next step is prepared before it is asked for, and
a sample's error surfaces only for a step that is consumed."""
from __future__ import annotations

import threading
import time

import pytest

from deepseek_ocr.training.data.records import DataError
from deepseek_ocr.training.data.sampler import SampleOrder
from deepseek_ocr.training.prefetch import StepPrefetcher


class Recording:
    """A dataset of strings that records which index was read on which thread."""

    def __init__(self, n: int, bad: int | None = None):
        self.n, self.bad = n, bad
        self.reads: list[tuple[int, str]] = []
        self.lock = threading.Lock()

    def __len__(self):
        return self.n

    def __getitem__(self, i: int) -> str:
        with self.lock:
            self.reads.append((i, threading.current_thread().name))
        if i == self.bad:
            raise DataError(f"record-{i}", "cannot prepare: broken image")
        return f"sample-{i}"


def _steps(workers: int, n: int = 7, per_step: int = 3, steps: int = 6):
    data, order = Recording(n), SampleOrder(n, seed=5)
    pf = StepPrefetcher(data, order, per_step, workers)
    try:
        return [pf.next(more=k + 1 < steps) for k in range(steps)], data
    finally:
        pf.close()


def test_read_ahead_equals_reading_in_the_loop():
    # 6 steps of 3 over 7 samples: the take crosses epochs, so positions and permutations change.
    inline, inline_data = _steps(0)
    ahead, ahead_data = _steps(2)
    assert ahead == inline
    assert {name for _, name in inline_data.reads} == {threading.current_thread().name}
    assert {name for _, name in ahead_data.reads} <= {f"deepseek-ocr-train-prepare_{i}" for i in range(2)}
    # Nothing beyond the last step was read.
    assert sorted(i for i, _ in ahead_data.reads) == sorted(i for i, _ in inline_data.reads)


def test_the_next_step_is_prepared_before_it_is_asked_for():
    data, order = Recording(10), SampleOrder(10, seed=1)
    pf = StepPrefetcher(data, order, 2, workers=2)
    try:
        items, indices, _ = pf.next(more=True)
        deadline = time.monotonic() + 10
        while len(data.reads) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(data.reads) == 4  # this step's 2 and the next step's 2, before next() is called again
        second, second_indices, _ = pf.next(more=False)
        assert {i for i, _ in data.reads} == set(indices) | set(second_indices)
    finally:
        pf.close()


def test_errors_only_for_consumed_steps():
    order = SampleOrder(4, seed=0)
    first_step = order.take(2)
    bad_later = next(i for i in range(4) if i not in first_step)
    # The bad sample is in step 2; a run of one step reads ahead only when told there is more.
    pf = StepPrefetcher(Recording(4, bad=bad_later), SampleOrder(4, seed=0), 2, workers=2)
    try:
        items, _, _ = pf.next(more=False)
        assert len(items) == 2
    finally:
        pf.close()
    # Read ahead, then the run stops: closing drops the failed step without raising.
    pf = StepPrefetcher(Recording(4, bad=bad_later), SampleOrder(4, seed=0), 2, workers=2)
    pf.next(more=True)
    pf.close()
    # Consumed: the sample's own error, as reading in the loop raises it.
    for workers in (0, 2):
        pf = StepPrefetcher(Recording(4, bad=bad_later), SampleOrder(4, seed=0), 2, workers=workers)
        try:
            pf.next(more=True)
            with pytest.raises(DataError, match=f"record-{bad_later}.*broken image"):
                pf.next(more=False)
        finally:
            pf.close()
