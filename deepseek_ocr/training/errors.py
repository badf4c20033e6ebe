"""Why a training run stopped or could not start (raised by the loop in trainer.py, the
distributed seam, and the configuration's checks in config.py)."""
from __future__ import annotations

from ..errors import DeepseekOCRError


class TrainConfigError(DeepseekOCRError, ValueError):
    """A training configuration that cannot be used; `problems` lists every issue found."""

    def __init__(self, message: str, problems: list[str] | tuple[str, ...] = ()):
        self.problems = list(problems)
        super().__init__(message + "".join(f"\n  - {p}" for p in self.problems))


class TrainingError(DeepseekOCRError, RuntimeError):
    """Training stopped: the run cannot continue as configured."""


class NonFiniteLossError(TrainingError):
    """The loss (or the gradient norm) became NaN or Inf; `step` and `samples` say where."""

    def __init__(self, message: str, step: int, samples: list[str]):
        super().__init__(message)
        self.step, self.samples = step, samples


class TrainingOOMError(TrainingError):
    """The accelerator ran out of memory in a training step."""


class CompileError(TrainingError):
    """torch.compile failed on the layers the `compile` setting names (training/compiled.py)."""
