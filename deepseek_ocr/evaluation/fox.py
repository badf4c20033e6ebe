"""Fox's word-set precision, recall and F1, in both definitions, named apart.

Fox's evaluation script (`eval_tools/eval_ocr_test.py`) turns each text into words, then into a
*set* of word types (so a word repeated ten times counts once, and word order is ignored), and
scores the two sets with NLTK's `precision(reference, test)` = |reference ∩ test| / |test| and
`recall(reference, test)` = |reference ∩ test| / |reference|. Its per-page function takes
`(pred, gt)` but is called with `(label, answer)`, i.e. with the arguments swapped, so:

* Fox's "precision" is |GT ∩ pred| / |GT word types|: the textbook *recall*;
* Fox's "recall" is |GT ∩ pred| / |pred word types|: the textbook *precision*;
* F1 is symmetric and the same either way: 2 |GT ∩ pred| / (|GT types| + |pred types|).

`word_set_scores` returns all of them: `precision` / `recall` (textbook) and `fox_precision` /
`fox_recall` (the script's). The DeepSeek-OCR paper does not say which "precision" its Table 2
reports: report both, and say which.

Words, as in Fox's script: if either text contains a character in U+4E00..U+9FA5 (Fox's test for
Chinese), both are segmented for Chinese, otherwise both are `str.split()`. Chinese segmentation:

* "jieba": `jieba.lcut(text)`, Fox's own call (`pip install jieba`). It keeps every whitespace
  character and punctuation mark as a token of its own, as Fox's numbers do.
* "char": used when jieba is not installed. An approximation: every CJK ideograph and kana is a
  word of its own (jieba would group 我们 into one word), runs of other letters and digits
  (Unicode `\\w`, underscore included) are words, and every other character, whitespace and
  punctuation included, is a token of its own (as in jieba). Scores of Chinese pages then differ
  from Fox's (more, shorter words; more matches by chance): record `segmentation` with results.
* "auto" (default): "jieba" when it can be imported, otherwise "char".

Empty sets: a ratio whose denominator is 0 is 1.0 when both sets are empty (nothing to read and
nothing read) and 0.0 otherwise. Fox's script would fail there (NLTK returns None).
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass
from typing import Iterable

from deepseek_ocr.evaluation.errors import MetricInputError, check_text, require

SEGMENTERS = ("auto", "jieba", "char")

_FOX_CHINESE = re.compile(r"[\u4e00-\u9fa5]")
# Ideographs (radicals, extension A, unified, compatibility, supplementary planes) and kana.
_CJK = "\u2e80-\u2fdf\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CHAR_WORDS = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])\w)+|.", re.DOTALL)


def is_fox_chinese(text: str) -> bool:
    """Whether `text` holds a character in U+4E00..U+9FA5, Fox's test for Chinese text."""
    return _FOX_CHINESE.search(check_text(text, "text")) is not None


def resolve_segmenter(segmenter: str = "auto") -> str:
    """The Chinese segmenter `segmenter` stands for: "jieba" or "char" ("auto": jieba if installed).

    Raises:
        MetricInputError: an unknown name.
        MetricDependencyError: "jieba" asked for but not installed.
    """
    if segmenter not in SEGMENTERS:
        raise MetricInputError(f"segmenter must be one of {SEGMENTERS}, got {segmenter!r}")
    if segmenter == "auto":
        return "jieba" if importlib.util.find_spec("jieba") is not None else "char"
    if segmenter == "jieba":
        require("jieba", "Fox word sets of Chinese text with segmenter='jieba'",
                install="pip install jieba")
    return segmenter


def chinese_words(text: str, segmenter: str = "auto") -> list[str]:
    """`text` segmented as Fox segments Chinese text (see the module doc for each segmenter)."""
    text = check_text(text, "text")
    if resolve_segmenter(segmenter) == "jieba":
        jieba = require("jieba", "Fox word sets of Chinese text", install="pip install jieba")
        return list(jieba.lcut(text))
    return _CHAR_WORDS.findall(text)


def fox_words(prediction: str, reference: str, segmenter: str = "auto"
              ) -> tuple[list[str], list[str], str]:
    """Both texts split into words the way Fox's script does.

    Returns:
        `(prediction words, reference words, segmentation)`, segmentation being "whitespace"
        (no Chinese in either text), "jieba" or "char".
    """
    prediction = check_text(prediction, "prediction")
    reference = check_text(reference, "reference")
    if is_fox_chinese(prediction) or is_fox_chinese(reference):
        used = resolve_segmenter(segmenter)
        return chinese_words(prediction, used), chinese_words(reference, used), used
    return prediction.split(), reference.split(), "whitespace"


def _ratio(numerator: int, denominator: int, both_empty: bool) -> float:
    if denominator:
        return numerator / denominator
    return 1.0 if both_empty else 0.0


@dataclass(frozen=True)
class WordSetScores:
    """Word-set scores of one page (see the module doc for the definitions).

    Args:
        precision: textbook precision, |GT ∩ pred| / |pred word types|.
        recall: textbook recall, |GT ∩ pred| / |GT word types|.
        f1: 2 |GT ∩ pred| / (|GT types| + |pred types|), the same in both definitions.
        fox_precision: Fox's script's "precision", |GT ∩ pred| / |GT word types| (= recall).
        fox_recall: Fox's script's "recall", |GT ∩ pred| / |pred word types| (= precision).
        matched: |GT ∩ pred|, word types in both.
        prediction_types: |pred word types|.
        reference_types: |GT word types|.
        segmentation: "whitespace", "jieba" or "char".
    """

    precision: float
    recall: float
    f1: float
    fox_precision: float
    fox_recall: float
    matched: int
    prediction_types: int
    reference_types: int
    segmentation: str

    def to_dict(self) -> dict:
        """The fields as a plain dict (for JSON records)."""
        return asdict(self)


def word_set_scores(prediction: str, reference: str, segmenter: str = "auto") -> WordSetScores:
    """Fox's word-set precision / recall / F1 of one page, in both definitions.

    Args:
        prediction: the model's text.
        reference: the ground truth.
        segmenter: Chinese segmentation, "auto", "jieba" or "char" (module doc).
    """
    predicted, expected, used = fox_words(prediction, reference, segmenter)
    p, g = set(predicted), set(expected)
    matched = len(p & g)
    both_empty = not p and not g
    precision = _ratio(matched, len(p), both_empty)
    recall = _ratio(matched, len(g), both_empty)
    f1 = _ratio(2 * matched, len(p) + len(g), both_empty)
    return WordSetScores(precision=precision, recall=recall, f1=f1, fox_precision=recall,
                         fox_recall=precision, matched=matched, prediction_types=len(p),
                         reference_types=len(g), segmentation=used)


def mean_word_set_scores(scores: Iterable[WordSetScores]) -> dict[str, float]:
    """The mean over pages of each ratio, as Fox's script reports (one page, one vote).

    Returns:
        `{"precision", "recall", "f1", "fox_precision", "fox_recall"}` means and `"count"`;
        every mean is 0.0 when there are no pages.
    """
    keys = ("precision", "recall", "f1", "fox_precision", "fox_recall")
    totals = dict.fromkeys(keys, 0.0)
    count = 0
    for s in scores:
        if not isinstance(s, WordSetScores):
            raise MetricInputError(f"expected WordSetScores, got {type(s).__name__}")
        count += 1
        for k in keys:
            totals[k] += getattr(s, k)
    out: dict[str, float] = {k: (v / count if count else 0.0) for k, v in totals.items()}
    out["count"] = count
    return out
