"""BLEU through sacrebleu (optional extra `eval`), on a 0..1 scale.

sacrebleu is the reference implementation of BLEU (Post, 2018): standard brevity penalty,
n-grams up to 4, its own tokenizers. Its scores here are divided by 100 to sit on the same 0..1
scale as the other metrics. They are *not* Fox's BLEU: Fox's script calls NLTK's sentence BLEU,
without smoothing, on its own word lists (whitespace or jieba words; see `fox.py`); a sentence
whose reference has fewer than four words, or with no matching 4-gram, gets 0 there, while
sacrebleu's `sentence_bleu` smooths (its "exp" method, effective order).

Tokenization (`tokenize`): "13a" (sacrebleu's default, mteval's rules for Latin scripts), "zh"
(every Chinese character a token, for Chinese), any other sacrebleu tokenizer name, or "auto"
(default): "zh" when a reference holds a character in U+4E00..U+9FFF, otherwise "13a".

Empty text: sacrebleu's values are kept (0.0 when either side is empty, both included).
"""

from __future__ import annotations

import re
from typing import Sequence

from deepseek_ocr.evaluation.errors import MetricInputError, check_text, require

_HAN = re.compile(r"[\u4e00-\u9fff]")


def _sacrebleu():
    return require("sacrebleu", "BLEU scores")


def _tokenizer(tokenize: str, references: Sequence[str]) -> str:
    if not isinstance(tokenize, str):
        raise MetricInputError(f"tokenize must be a str, got {type(tokenize).__name__}")
    if tokenize != "auto":
        return tokenize
    return "zh" if any(_HAN.search(r) for r in references) else "13a"


def sentence_bleu(prediction: str, reference: str, *, tokenize: str = "auto") -> float:
    """sacrebleu's sentence BLEU of one prediction against one reference, / 100 (0..1).

    Raises:
        MetricDependencyError: sacrebleu is not installed (`pip install deepseek-ocr[eval]`).
    """
    prediction = check_text(prediction, "prediction")
    reference = check_text(reference, "reference")
    sacrebleu = _sacrebleu()
    result = sacrebleu.sentence_bleu(prediction, [reference],
                                     tokenize=_tokenizer(tokenize, [reference]))
    return result.score / 100.0


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], *,
                tokenize: str = "auto") -> float:
    """sacrebleu's corpus BLEU (n-gram counts summed over all pairs, then one BLEU), / 100.

    Args:
        predictions: one text per page.
        references: one reference per page, in the same order.
        tokenize: see the module doc.

    Raises:
        MetricInputError: the two lists differ in length or hold a non-string.
        MetricDependencyError: sacrebleu is not installed (`pip install deepseek-ocr[eval]`).
    """
    predictions = [check_text(p, f"predictions[{i}]") for i, p in enumerate(predictions)]
    references = [check_text(r, f"references[{i}]") for i, r in enumerate(references)]
    if len(predictions) != len(references):
        raise MetricInputError(f"{len(predictions)} predictions but {len(references)} references")
    sacrebleu = _sacrebleu()
    result = sacrebleu.corpus_bleu(predictions, [references],
                                   tokenize=_tokenizer(tokenize, references))
    return result.score / 100.0
