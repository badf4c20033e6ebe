"""Why a training run stopped (raised by the loop in trainer.py and the distributed seam)."""
from __future__ import annotations

from ..errors import DeepseekOCRError


class TrainingError(DeepseekOCRError, RuntimeError):
    """Training stopped: the run cannot continue as configured."""


class NonFiniteLossError(TrainingError):
    """The loss (or the gradient norm) became NaN or Inf; `step` and `samples` say where."""

    def __init__(self, message: str, step: int, samples: list[str]):
        super().__init__(message)
        self.step, self.samples = step, samples


class TrainingOOMError(TrainingError):
    """The accelerator ran out of memory in a training step."""
