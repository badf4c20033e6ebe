"""Errors of the metrics module, in the package's hierarchy (`DeepseekOCRError`)."""

from __future__ import annotations

import importlib
from types import ModuleType

from deepseek_ocr.errors import DeepseekOCRError

EVAL_EXTRA_HINT = "pip install deepseek-ocr[eval]"


class MetricDependencyError(DeepseekOCRError, ImportError):
    """An optional library a metric needs (rapidfuzz, sacrebleu, jieba) is not installed."""


class MetricInputError(DeepseekOCRError, ValueError):
    """A metric was given what it cannot score (not a string, a record lacking a field, ...)."""


def require(module: str, purpose: str, install: str = EVAL_EXTRA_HINT) -> ModuleType:
    """Import an optional dependency, or raise `MetricDependencyError` saying how to install it.

    Imported at call time, not at package import, so that `deepseek_ocr.evaluation` (its text
    normalization, Fox word sets, repetition detector) works without the optional libraries and
    only the metric that needs one fails, with a message naming the extra.

    Args:
        module: the module to import, e.g. "rapidfuzz.distance".
        purpose: what needs it, for the message, e.g. "edit distances (CER, WER, NED)".
        install: the command that installs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MetricDependencyError(
            f"{purpose} need the optional package {module.split('.')[0]!r}, which is not "
            f"installed: {install}") from exc


def check_text(value: object, name: str) -> str:
    """`value` if it is a `str`; otherwise `MetricInputError` naming the argument and its type.

    Metrics refuse `None` and bytes rather than scoring `str(None)` == "None" against a page.
    """
    if not isinstance(value, str):
        raise MetricInputError(f"{name} must be a str, got {type(value).__name__}")
    return value
