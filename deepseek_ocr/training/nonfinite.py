"""What a step whose loss or gradient norm is NaN or Inf does (RELIABILITY.md 28).

Either way the weights are not updated for that step. With `on_nonfinite="stop"` (the default)
the run stops with a `NonFiniteLossError` naming the step, its samples and the last good
checkpoint. With "skip" the step's gradients are dropped and the run goes on: the step still
counts (its samples are consumed and the schedule moves on, so a resumed run sees the same
sequence), and its log record says why it was skipped. `MAX_SKIPS_IN_A_ROW` non-finite steps in
a row mean the run has diverged rather than met a bad batch: it then stops as under "stop".

Under torchrun every rank must take the same decision, or the ranks that step would wait for
the others in their next collective. With "skip" the ranks agree through one all-reduce of
their verdicts per step (a rank whose own samples were fine skips with the others); "stop"
keeps the check local: a non-finite loss on one rank makes the reduced gradients, hence the
gradient norm, non-finite on every rank, so each raises.
"""
from __future__ import annotations

import logging
import math

from .config import NONFINITE_POLICIES
from .distributed import all_reduce_sum
from .errors import NonFiniteLossError

logger = logging.getLogger(__name__)

MAX_SKIPS_IN_A_ROW = 10


def non_finite_error(what: str, step: int, where: str, names: list[str], last_checkpoint) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"{what} at step {step}{where}, samples: {', '.join(names)}. The weights were not updated for this "
        f"step; the last good checkpoint is {last_checkpoint or 'none'}. Lower lr, check these samples, "
        "or resume from the checkpoint.", step, names)


def sample_name(inp, index: int) -> str:
    """How a sample is named in errors: its file and line where the reader recorded them."""
    return str(inp.extras.get("source") or f"sample {index}")


def find_non_finite(losses: list[float], grad_norm: float, micro: list[list], indices: list[int], batch_size: int,
                    step: int, last_checkpoint) -> NonFiniteLossError | None:
    """The error for a step (1-based `step`) whose micro-batch losses or gradient norm are not
    finite, naming the first bad micro-batch's samples (or, for the norm, all of the step's);
    None when all are finite. `indices` are the step's sample indices, micro-batch after micro-batch."""
    for j, value in enumerate(losses):
        if not math.isfinite(value):
            start = j * batch_size
            return non_finite_error(f"the loss is {value}", step, f" (micro-batch {j + 1} of {len(micro)})",
                                    [sample_name(inp, indices[start + k]) for k, inp in enumerate(micro[j])],
                                    last_checkpoint)
    if not math.isfinite(grad_norm):
        return non_finite_error(f"the gradient norm is {grad_norm}", step, "",
                                [sample_name(inp, i) for inp, i in zip((x for mb in micro for x in mb), indices)],
                                last_checkpoint)
    return None


class NonFiniteSteps:
    """The run's policy for non-finite steps and its count of skipped ones (see the module
    docstring). `skipped` counts every skipped step of this process's run, `in_a_row` the
    current streak."""

    def __init__(self, policy: str = "stop", limit: int = MAX_SKIPS_IN_A_ROW):
        if policy not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, got {policy!r}")
        self.policy, self.limit = policy, limit
        self.skipped = self.in_a_row = 0

    def skip(self, error: NonFiniteLossError | None, step: int, dist=None) -> NonFiniteLossError | None:
        """Decide step `step` (1-based) given this rank's `error` (None: its loss and the gradient
        norm were finite). Returns None to apply the step, or the error that made it skipped;
        raises the error under "stop", or once `limit` steps in a row were skipped. `dist`: the
        run's `DistContext`."""
        if self.policy == "stop":
            if error is not None:
                raise error
            return None
        bad = error is not None
        if dist is not None:  # one process: no collective (all_reduce_sum returns the value)
            bad = all_reduce_sum(1.0 if bad else 0.0, dist) > 0
        if not bad:
            self.in_a_row = 0
            return None
        if error is None:  # this rank's samples were fine; another rank's were not
            error = NonFiniteLossError(f"another rank's loss or the gradient norm was not finite at step {step}",
                                       step, [])
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteLossError(f"{error} {self.in_a_row} steps in a row were not finite (on_nonfinite=skip "
                                     "stops the run then: it has diverged).", error.step, error.samples)
        logger.warning("step %d skipped: %s", step, error)
        return error
