"""The learning-rate schedule: linear warmup, then cosine, linear or constant.

A pure function of the optimizer step (no LambdaLR object with state of its own): the trainer
sets each group's lr from `lr_at(step, ...)` before every update, so a resumed run needs only
the step number to continue exactly where it stopped.

Steps count updates from 0: `lr_at(0)` is the rate of the first update. With `warmup` steps the
rate climbs `base * (s + 1) / warmup` (never 0, so the first update is not wasted), then decays
from `base` at step `warmup` to `base * min_ratio` at the last step `total - 1`.
"""
from __future__ import annotations

import math

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, *, total: int, warmup: int = 0, schedule: str = "cosine",
              min_ratio: float = 0.0) -> float:
    """The multiplier of the base rate at update `step` (0-based) of a run of `total` updates."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if total < 1 or step < 0 or warmup < 0:
        raise ValueError(f"need total >= 1, step >= 0, warmup >= 0; got {total}, {step}, {warmup}")
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = total - 1 - warmup
    progress = min(1.0, (step - warmup) / span) if span > 0 else 1.0
    if schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * decay


def lr_at(step: int, base_lr: float, **kwargs) -> float:
    """`base_lr * lr_factor(step, **kwargs)`."""
    return base_lr * lr_factor(step, **kwargs)
