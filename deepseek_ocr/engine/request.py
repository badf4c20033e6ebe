"""One generation request as the engine tracks it, from the queue to its finish."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ..generation.logits_processors import RepetitionDetector
from ..processing.prompt import PreparedInputs
from .options import GenerationOptions

FINISH_REASONS = ("stop", "length", "repetition", "error", "cancelled")

WAITING, RUNNING, FINISHED = "waiting", "running", "finished"

_ids = itertools.count()


@dataclass(eq=False)
class Request:
    """A prompt, its settings and what has been generated for it.

    Attributes:
        id: caller's id or a generated one.
        token_ids: generated ids so far (EOS not included).
        state: "waiting" (queued, or preempted and queued again), "running" (holds a slot),
            "finished".
        finish_reason: one of FINISH_REASONS once finished.
        error: what went wrong, for finish_reason "error".
        listener: called on the engine's thread as `listener(request, new_ids)` after each batch
            of new ids is known, and once more with `[]` when the request finishes.
        submitted_at, first_token_at, finished_at: `time.perf_counter()` stamps.
    """

    inputs: PreparedInputs
    options: GenerationOptions
    budget: int
    id: str = ""
    listener: Callable[["Request", list[int]], None] | None = None
    token_ids: list[int] = field(default_factory=list)
    state: str = WAITING
    finish_reason: str | None = None
    error: str | None = None
    submitted_at: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    finished_at: float | None = None
    # Engine bookkeeping ---------------------------------------------------------------
    slot: int | None = None
    epoch: int = 0  # bumped on preemption: results of steps launched before it are stale
    launched: int = 0  # tokens launched on the device for this request (collected or not)
    cache_length: int = 0  # host-known filled cache slots (prompt + launched decode steps)
    vision_rows: torch.Tensor | None = None  # kept for a re-prefill after preemption
    generator: torch.Generator | None = None
    detector: RepetitionDetector | None = None
    cancel_requested: bool = False

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"req-{next(_ids)}"
        if self.options.stop_on_repetition:
            self.detector = RepetitionDetector()
            self.detector.reset(1)

    @property
    def finished(self) -> bool:
        return self.state == FINISHED

    @property
    def prompt_tokens(self) -> int:
        return self.inputs.num_tokens
