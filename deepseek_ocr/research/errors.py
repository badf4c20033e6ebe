"""Errors of the research harness, in the package's hierarchy (`DeepseekOCRError`).

Each names what was wrong and what to do about it; the command prints the message and exits
with code 2 (usage: bad data, bad settings, a results folder made under another protocol) or 1
(a run that started and failed).
"""
from __future__ import annotations

from ..errors import DeepseekOCRError


class ResearchError(DeepseekOCRError):
    """Base class of the research harness's errors."""


class BenchmarkFormatError(ResearchError, ValueError):
    """A benchmark file (Fox, OmniDocBench, a synthetic-page manifest, a generic dataset) is
    malformed or names images that are not there.

    Attributes:
        source: the file (and entry) at fault.
        reason: what is wrong, in words.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class SettingError(ResearchError, ValueError):
    """A sweep setting (mode list, custom mode, label) cannot be used."""


class ProtocolMismatchError(ResearchError):
    """The results folder holds records made under another protocol (prompt, model, generation
    options, seed ...): resuming would mix incomparable numbers."""


class RecordFileError(ResearchError, ValueError):
    """A records JSONL file is damaged somewhere other than its last line."""


class SynthError(ResearchError, ValueError):
    """A synthetic page cannot be made as asked (text does not fit, font missing, bad size)."""


class PlotDependencyError(ResearchError, ImportError):
    """matplotlib, which the plots need, is not installed."""


PLOT_EXTRA_HINT = "pip install deepseek-ocr[research]"
