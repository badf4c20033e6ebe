"""Edit distances: the package's only Levenshtein, CER, WER, normalized edit distance (NED), and
their aggregation over a set of pages.

Every distance is the plain Levenshtein distance (insertions, deletions and substitutions each
cost 1; no transpositions), computed by rapidfuzz's C++ `Levenshtein.distance` (optional extra
`eval`: `pip install deepseek-ocr[eval]`; without it these functions raise
`MetricDependencyError`). Characters are Python `str` code points: a CJK character, an accented
letter in NFC and an emoji are one character each; a letter with a combining accent is two.
Words are `str.split()` pieces (runs of non-whitespace), so WER is meaningless for scripts
written without spaces; use CER there.

No normalization happens here: the functions score exactly the strings they are given. Normalize
both sides first (`normalize_omnidocbench`), or let `summarize` do it.

Per pair (d = Levenshtein distance; P, R = prediction and reference lengths in the unit):

* CER = d_chars / R_chars, WER = d_words / R_words. Both can exceed 1 (a prediction much longer
  than its reference). Empty reference: 0.0 when the prediction is empty too, otherwise
  d / 1 = P (every predicted unit is an insertion, counted against a floor of one reference
  unit), so the value stays finite and still grows with the amount of spurious text.
* NED = d_chars / max(P_chars, R_chars), in [0, 1]; 0.0 when both are empty (OmniDocBench's
  convention).

Over a set of pairs i (the "set" or "corpus" aggregate, which weights each page by its length):

* set CER = Σ d_i / Σ R_i, set WER likewise with words (jiwer's and most papers' corpus CER/WER);
  the same floor of 1 applies when Σ R_i = 0.
* set NED = Σ d_i / Σ max(P_i, R_i) (OmniDocBench's page-set score); 0.0 when every pair is
  empty on both sides.

They differ from the mean of the per-pair ratios whenever pages differ in length: a 10-character
page with 5 errors and a 1,000-character page with 10 errors have mean CER (0.5 + 0.01) / 2 =
0.255 but set CER 15 / 1,010 ≈ 0.0149.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from deepseek_ocr.evaluation.errors import MetricInputError, check_text, require


def levenshtein(a: str | Sequence[str], b: str | Sequence[str]) -> int:
    """The Levenshtein distance between two strings, or two sequences of words.

    Unit costs for insertion, deletion and substitution. Sequences compare their elements with
    `==` (so a list of words gives a word-level distance).

    Raises:
        MetricDependencyError: rapidfuzz is not installed.
    """
    # rapidfuzz: a well-kept C++ implementation, orders of magnitude faster than a Python
    # dynamic-programming loop on page-length texts (thousands of characters).
    lev = require("rapidfuzz.distance", "edit distances (CER, WER, NED)").Levenshtein
    return int(lev.distance(a, b))


@dataclass(frozen=True)
class EditCounts:
    """The raw counts behind one pair's ratio, kept so that any set of pairs can be re-aggregated.

    Args:
        distance: Levenshtein distance between prediction and reference, in `unit`s.
        prediction_length: length of the prediction in `unit`s.
        reference_length: length of the reference in `unit`s.
        unit: "char" or "word".
    """

    distance: int
    prediction_length: int
    reference_length: int
    unit: str

    @property
    def max_length(self) -> int:
        """max(prediction_length, reference_length): the NED denominator."""
        return max(self.prediction_length, self.reference_length)

    @property
    def error_rate(self) -> float:
        """distance / reference_length (CER or WER); see the module doc for an empty reference."""
        return _error_rate(self.distance, self.prediction_length, self.reference_length)

    @property
    def normalized(self) -> float:
        """distance / max_length (NED); 0.0 when both sides are empty."""
        return self.distance / self.max_length if self.max_length else 0.0


def _error_rate(distance: int, prediction_length: int, reference_length: int) -> float:
    if reference_length:
        return distance / reference_length
    # Empty reference: the distance is then the prediction's length; divide by a floor of 1.
    return float(distance) if prediction_length else 0.0


def char_edit_counts(prediction: str, reference: str) -> EditCounts:
    """Character-level `EditCounts` of a prediction against its reference."""
    prediction = check_text(prediction, "prediction")
    reference = check_text(reference, "reference")
    return EditCounts(levenshtein(prediction, reference), len(prediction), len(reference), "char")


def word_edit_counts(prediction: str, reference: str) -> EditCounts:
    """Word-level `EditCounts` (words = `str.split()`) of a prediction against its reference."""
    predicted = check_text(prediction, "prediction").split()
    expected = check_text(reference, "reference").split()
    return EditCounts(levenshtein(predicted, expected), len(predicted), len(expected), "word")


def cer(prediction: str, reference: str) -> float:
    """Character error rate: Levenshtein(prediction, reference) / len(reference).

    Can exceed 1. Empty reference: 0.0 if the prediction is empty, else len(prediction).
    """
    return char_edit_counts(prediction, reference).error_rate


def wer(prediction: str, reference: str) -> float:
    """Word error rate: word-level Levenshtein / number of reference words (`str.split()`).

    Can exceed 1. No reference words: 0.0 if the prediction has none, else its word count.
    """
    return word_edit_counts(prediction, reference).error_rate


def normalized_edit_distance(prediction: str, reference: str) -> float:
    """NED: Levenshtein(prediction, reference) / max(len(prediction), len(reference)), in [0, 1].

    0.0 when both are empty. Symmetric in its arguments. Fox's "edit_dist" and OmniDocBench's
    per-block text edit distance are this quantity (on their own normalized strings).
    """
    return char_edit_counts(prediction, reference).normalized


def _totals(counts: Iterable[EditCounts], unit: str) -> tuple[int, int, int, int]:
    distance = prediction = reference = longest = 0
    for c in counts:
        if not isinstance(c, EditCounts):
            raise MetricInputError(f"expected EditCounts, got {type(c).__name__}")
        if c.unit != unit:
            raise MetricInputError(f"cannot aggregate {c.unit}-level counts as {unit}-level")
        distance += c.distance
        prediction += c.prediction_length
        reference += c.reference_length
        longest += c.max_length
    return distance, prediction, reference, longest


def set_error_rate(counts: Iterable[EditCounts], unit: str = "char") -> float:
    """Σ distance / Σ reference_length over `counts` (set CER for unit "char", set WER for
    "word"). Σ reference_length = 0: 0.0 if Σ prediction_length = 0, else Σ distance.
    An empty iterable gives 0.0.
    """
    distance, prediction, reference, _ = _totals(counts, unit)
    return _error_rate(distance, prediction, reference)


def set_normalized_edit_distance(counts: Iterable[EditCounts]) -> float:
    """Σ distance / Σ max(prediction_length, reference_length) over character-level `counts`
    (OmniDocBench's page-set edit distance). 0.0 when the denominator is 0 (no pairs, or every
    pair empty on both sides).
    """
    distance, _, _, longest = _totals(counts, "char")
    return distance / longest if longest else 0.0


def _pairs(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    out = []
    for k, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise MetricInputError(f"pair {k} must be (prediction, reference), got {pair!r:.80}")
        out.append((pair[0], pair[1]))
    return out


def corpus_cer(pairs: Iterable[tuple[str, str]]) -> float:
    """Set CER of `(prediction, reference)` pairs: Σ character edits / Σ reference characters."""
    return set_error_rate((char_edit_counts(p, r) for p, r in _pairs(pairs)), "char")


def corpus_wer(pairs: Iterable[tuple[str, str]]) -> float:
    """Set WER of `(prediction, reference)` pairs: Σ word edits / Σ reference words."""
    return set_error_rate((word_edit_counts(p, r) for p, r in _pairs(pairs)), "word")


def corpus_normalized_edit_distance(pairs: Iterable[tuple[str, str]]) -> float:
    """Set NED of `(prediction, reference)` pairs: Σ edits / Σ max(len(pred), len(ref))."""
    return set_normalized_edit_distance(char_edit_counts(p, r) for p, r in _pairs(pairs))
