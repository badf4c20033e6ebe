"""Scoring a batch of (prediction, reference) pairs: per-pair scores and their summary.

`summarize(records)` is what the training eval and the research harness report. Each record is
normalized (default `normalize_omnidocbench`, on both sides), scored with character and word edit
counts, and checked for a repetition loop (on the raw prediction). The summary holds:

* `count`: number of records;
* `cer`, `wer`, `ned`: the set aggregates (Σ edits / Σ reference length for CER and WER,
  Σ edits / Σ max length for NED; see `edit_distance`);
* `cer_mean`, `wer_mean`, `ned_mean`: the means of the per-record ratios;
* `repetition_finish`: records whose `finish_reason` is "repetition" (the generation loop's own
  flag);
* `repetition_detected`: records whose raw prediction `looks_like_repetition_loop` (or the
  `repetition_detector` passed instead);
* `repetition`: records with either flag (each record counted once).

Per-record `PairScores.to_dict()` keeps the raw counts, so any subset of stored records can be
re-aggregated exactly (`PairScores.from_dict`, `aggregate`), e.g. into text-token buckets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Optional

from deepseek_ocr.evaluation.edit_distance import (EditCounts, char_edit_counts,
                                                   set_error_rate, set_normalized_edit_distance,
                                                   word_edit_counts)
from deepseek_ocr.evaluation.errors import MetricInputError, check_text
from deepseek_ocr.evaluation.repetition import looks_like_repetition_loop
from deepseek_ocr.evaluation.text_normalization import normalize_omnidocbench

Normalizer = Optional[Callable[[str], str]]
RepetitionDetector = Optional[Callable[[str], bool]]

REPETITION_FINISH = "repetition"
"""The `finish_reason` the generation loop gives a sequence it stopped as a loop."""


@dataclass(frozen=True)
class EvalRecord:
    """One model output and its reference.

    Args:
        prediction: the model's raw text.
        reference: the ground truth.
        finish_reason: how generation ended ("stop", "length", "repetition", "error"), if known.
    """

    prediction: str
    reference: str
    finish_reason: Optional[str] = None


@dataclass(frozen=True)
class PairScores:
    """Scores of one record, with the counts behind them.

    Args:
        chars: character-level edit counts (normalized texts).
        words: word-level edit counts (normalized texts).
        finish_reason: as given.
        repetition_detected: the detector's verdict on the raw prediction.
    """

    chars: EditCounts
    words: EditCounts
    finish_reason: Optional[str] = None
    repetition_detected: bool = False

    @property
    def cer(self) -> float:
        """Character error rate of this record."""
        return self.chars.error_rate

    @property
    def wer(self) -> float:
        """Word error rate of this record."""
        return self.words.error_rate

    @property
    def ned(self) -> float:
        """Normalized edit distance of this record."""
        return self.chars.normalized

    @property
    def repetition_finish(self) -> bool:
        """Whether generation itself stopped this output as a loop."""
        return self.finish_reason == REPETITION_FINISH

    def to_dict(self) -> dict[str, Any]:
        """A flat, JSON-ready dict: the three ratios, the raw counts, the repetition flags."""
        return {
            "cer": self.cer, "wer": self.wer, "ned": self.ned,
            "char_edits": self.chars.distance,
            "prediction_chars": self.chars.prediction_length,
            "reference_chars": self.chars.reference_length,
            "word_edits": self.words.distance,
            "prediction_words": self.words.prediction_length,
            "reference_words": self.words.reference_length,
            "finish_reason": self.finish_reason,
            "repetition_detected": self.repetition_detected,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PairScores":
        """Rebuild from `to_dict()` output (the ratios are recomputed from the counts)."""
        try:
            chars = EditCounts(int(d["char_edits"]), int(d["prediction_chars"]),
                               int(d["reference_chars"]), "char")
            words = EditCounts(int(d["word_edits"]), int(d["prediction_words"]),
                               int(d["reference_words"]), "word")
        except KeyError as exc:
            raise MetricInputError(f"score record lacks the field {exc.args[0]!r}") from exc
        except (TypeError, ValueError) as exc:
            raise MetricInputError(f"score record has a non-integer count: {exc}") from exc
        return cls(chars, words, d.get("finish_reason"), bool(d.get("repetition_detected", False)))


def score_pair(prediction: str, reference: str, *, finish_reason: Optional[str] = None,
               normalize: Normalizer = normalize_omnidocbench,
               repetition_detector: RepetitionDetector = looks_like_repetition_loop) -> PairScores:
    """Score one output: normalize both texts, count character and word edits, detect a loop.

    Args:
        prediction: the model's raw text.
        reference: the ground truth.
        finish_reason: how generation ended, if known.
        normalize: applied to both texts before counting; None scores them as given.
        repetition_detector: applied to the raw prediction; None disables detection.
    """
    prediction = check_text(prediction, "prediction")
    reference = check_text(reference, "reference")
    if finish_reason is not None and not isinstance(finish_reason, str):
        raise MetricInputError(f"finish_reason must be a str or None, got {finish_reason!r:.40}")
    looping = bool(repetition_detector(prediction)) if repetition_detector is not None else False
    if normalize is not None:
        prediction, reference = normalize(prediction), normalize(reference)
    return PairScores(char_edit_counts(prediction, reference),
                      word_edit_counts(prediction, reference), finish_reason, looping)


def aggregate(scores: Iterable[PairScores]) -> dict[str, Any]:
    """The summary (module doc) of already-scored records."""
    scores = list(scores)
    for s in scores:
        if not isinstance(s, PairScores):
            raise MetricInputError(f"expected PairScores, got {type(s).__name__}")
    n = len(scores)

    def mean(values: Iterable[float]) -> float:
        return sum(values) / n if n else 0.0

    return {
        "count": n,
        "cer": set_error_rate((s.chars for s in scores), "char"),
        "wer": set_error_rate((s.words for s in scores), "word"),
        "ned": set_normalized_edit_distance(s.chars for s in scores),
        "cer_mean": mean(s.cer for s in scores),
        "wer_mean": mean(s.wer for s in scores),
        "ned_mean": mean(s.ned for s in scores),
        "repetition_finish": sum(s.repetition_finish for s in scores),
        "repetition_detected": sum(s.repetition_detected for s in scores),
        "repetition": sum(s.repetition_finish or s.repetition_detected for s in scores),
    }


def _fields(record: Any, index: int) -> tuple[Any, Any, Any]:
    if isinstance(record, EvalRecord):
        return record.prediction, record.reference, record.finish_reason
    if isinstance(record, Mapping):
        missing = [k for k in ("prediction", "reference") if k not in record]
        if missing:
            raise MetricInputError(f"record {index} lacks {missing}: it has {sorted(record)}")
        return record["prediction"], record["reference"], record.get("finish_reason")
    raise MetricInputError(
        f"record {index} must be an EvalRecord or a mapping, got {type(record).__name__}")


@dataclass
class MetricAggregator:
    """Scores records one at a time (e.g. batch by batch during training) and summarizes them.

    Args:
        normalize: applied to both texts of every record (default `normalize_omnidocbench`).
        repetition_detector: applied to every raw prediction (default
            `looks_like_repetition_loop`); None counts only `finish_reason == "repetition"`.
    """

    normalize: Normalizer = normalize_omnidocbench
    repetition_detector: RepetitionDetector = looks_like_repetition_loop
    scores: list[PairScores] = field(default_factory=list)

    def add(self, prediction: str, reference: str,
            finish_reason: Optional[str] = None) -> PairScores:
        """Score one record, keep its scores, and return them (for a per-sample log)."""
        try:
            s = score_pair(prediction, reference, finish_reason=finish_reason,
                           normalize=self.normalize, repetition_detector=self.repetition_detector)
        except MetricInputError as exc:
            raise MetricInputError(f"record {len(self.scores)}: {exc}") from exc
        self.scores.append(s)
        return s

    def add_record(self, record: EvalRecord | Mapping[str, Any]) -> PairScores:
        """`add` for an `EvalRecord` or a mapping with `prediction`, `reference` and optionally
        `finish_reason` (a JSONL line)."""
        return self.add(*_fields(record, len(self.scores)))

    def summary(self) -> dict[str, Any]:
        """The summary (module doc) of every record added so far."""
        return aggregate(self.scores)


def summarize(records: Iterable[EvalRecord | Mapping[str, Any]], *,
              normalize: Normalizer = normalize_omnidocbench,
              repetition_detector: RepetitionDetector = looks_like_repetition_loop
              ) -> dict[str, Any]:
    """Score every record and return the summary (module doc): count, cer, wer, ned (set
    aggregates), cer_mean, wer_mean, ned_mean, repetition_finish, repetition_detected, repetition.

    Args:
        records: `EvalRecord`s, or mappings with `prediction`, `reference` and optionally
            `finish_reason`.
        normalize: applied to both texts (None: score them as given).
        repetition_detector: applied to raw predictions (None: only `finish_reason` counts).
    """
    agg = MetricAggregator(normalize, repetition_detector)
    for record in records:
        agg.add_record(record)
    return agg.summary()
