"""Every metric of one (prediction, ground truth) pair, as the flat dict a record stores.

All metrics come from `deepseek_ocr.evaluation` (the package's one implementation); this module
only decides which text each one sees and names the results apart:

* OmniDocBench-normalized edit counts (`normalize_omnidocbench`: grounding spans, `\\quad(n)`
  and `<center>` removed, whitespace runs collapsed), on both sides:
  `ned` = Levenshtein / max length, `cer`, `wer`, and the raw counts (`char_edits`,
  `prediction_chars`, `reference_chars`, `word_edits`, ...) from which any page set's
  aggregate is recomputed exactly.
* `precision_edit` = 1 − `ned`: the precision the one public Table 2 reproduction used.
* Fox's word sets, on the texts with grounding, `\\quad(n)` and `<center>` removed but
  whitespace kept (Fox splits on it): `precision_fox` = |GT ∩ pred| / |GT word types| (what
  Fox's script calls precision: its arguments are swapped), `recall_fox` = |GT ∩ pred| /
  |pred types|, and the textbook `precision_words` = |GT ∩ pred| / |pred types|,
  `recall_words` = |GT ∩ pred| / |GT types|, `f1_words` (the same in both), and the set sizes.
  The paper does not say which precision its Table 2 shows; every record holds both.
* `fox_edit_distance`: Levenshtein / max length on the texts exactly as given (Fox's
  `edit_dist`, no normalization at all).
* `bleu`: sacrebleu's sentence BLEU (0..1) of the normalized texts, or None when sacrebleu is not
  installed (it is optional; every other metric needs rapidfuzz, the `eval` extra).
* `repetition_detected`: the raw prediction ends in a loop (`looks_like_repetition_loop`).
"""
from __future__ import annotations

from typing import Any

from ..evaluation import (MetricDependencyError, normalize_omnidocbench, normalized_edit_distance,
                          score_pair, sentence_bleu, word_set_scores)

PRECISIONS = {
    "edit": "precision_edit",
    "fox": "precision_fox",
    "words": "precision_words",
}
"""Table 2's precision choices (`--precision`) and the record field each one reads."""

PRECISION_DEFINITIONS = {
    "edit": "1 - normalized edit distance (Levenshtein / max length) on OmniDocBench-normalized text",
    "fox": "Fox's script's precision: |GT words ∩ predicted words| / |GT word types| (word sets; "
           "the textbook recall)",
    "words": "textbook word-set precision: |GT words ∩ predicted words| / |predicted word types|",
}

NORMALIZATION = ("normalize_omnidocbench: grounding spans, \\quad(n) equation numbers and <center> "
                 "tags removed, whitespace runs collapsed to one space, ends stripped")


def score_prediction(prediction: str, reference: str, *, segmenter: str = "auto") -> dict[str, Any]:
    """The metrics above for one page.

    Args:
        prediction: the model's raw text.
        reference: the ground truth as the benchmark gives it.
        segmenter: Chinese word segmentation for Fox's word sets ("auto", "jieba", "char").

    Raises:
        MetricDependencyError: rapidfuzz is missing (`pip install deepseek-ocr[eval]`).
        MetricInputError: a text is not a string.
    """
    pair = score_pair(prediction, reference)
    scores = pair.to_dict()
    scores.pop("finish_reason")  # the record has its own, from the predictor
    scores["precision_edit"] = 1.0 - pair.ned
    keep_spacing = {"whitespace": "keep"}
    words = word_set_scores(normalize_omnidocbench(prediction, **keep_spacing),
                            normalize_omnidocbench(reference, **keep_spacing), segmenter)
    scores.update({
        "precision_fox": words.fox_precision, "recall_fox": words.fox_recall,
        "precision_words": words.precision, "recall_words": words.recall, "f1_words": words.f1,
        "matched_word_types": words.matched, "prediction_word_types": words.prediction_types,
        "reference_word_types": words.reference_types, "segmentation": words.segmentation,
    })
    scores["fox_edit_distance"] = normalized_edit_distance(prediction, reference)
    try:
        scores["bleu"] = sentence_bleu(normalize_omnidocbench(prediction), normalize_omnidocbench(reference))
    except MetricDependencyError:
        scores["bleu"] = None
    return scores
