"""OCR metrics: the package's one place that computes edit distances.

* `text_normalization`: OmniDocBench's clean-up of DeepSeek-OCR output (grounding spans,
  `\\quad(n)`, `<center>`) and whitespace modes.
* `edit_distance`: Levenshtein (rapidfuzz), CER, WER, normalized edit distance, set aggregates.
* `fox`: Fox's word-set precision / recall / F1, the script's definition and the textbook one.
* `bleu`: sacrebleu's BLEU, 0..1.
* `repetition`: `looks_like_repetition_loop`.
* `summary`: per-record scores and `summarize(records)` for a batch.

Edit distances and BLEU need the optional extra `eval` (`pip install deepseek-ocr[eval]`:
rapidfuzz, sacrebleu); without it they raise `MetricDependencyError` and everything else works.
Chinese word sets use jieba when it is installed (`pip install jieba`).
"""

from deepseek_ocr.evaluation.bleu import corpus_bleu, sentence_bleu
from deepseek_ocr.evaluation.edit_distance import (EditCounts, cer, char_edit_counts, corpus_cer,
                                                   corpus_normalized_edit_distance, corpus_wer,
                                                   levenshtein, normalized_edit_distance,
                                                   set_error_rate, set_normalized_edit_distance,
                                                   wer, word_edit_counts)
from deepseek_ocr.evaluation.errors import MetricDependencyError, MetricInputError
from deepseek_ocr.evaluation.fox import (SEGMENTERS, WordSetScores, chinese_words, fox_words,
                                         is_fox_chinese, mean_word_set_scores, resolve_segmenter,
                                         word_set_scores)
from deepseek_ocr.evaluation.repetition import looks_like_repetition_loop
from deepseek_ocr.evaluation.summary import (REPETITION_FINISH, EvalRecord, MetricAggregator,
                                             PairScores, aggregate, score_pair, summarize)
from deepseek_ocr.evaluation.text_normalization import (WHITESPACE_MODES, normalize_omnidocbench,
                                                        normalize_whitespace, strip_center_tags,
                                                        strip_equation_numbers, strip_grounding)

__all__ = [
    # text normalization
    "normalize_omnidocbench", "normalize_whitespace", "strip_grounding", "strip_equation_numbers",
    "strip_center_tags", "WHITESPACE_MODES",
    # edit distances
    "levenshtein", "EditCounts", "char_edit_counts", "word_edit_counts", "cer", "wer",
    "normalized_edit_distance", "set_error_rate", "set_normalized_edit_distance", "corpus_cer",
    "corpus_wer", "corpus_normalized_edit_distance",
    # Fox word sets
    "WordSetScores", "word_set_scores", "mean_word_set_scores", "fox_words", "chinese_words",
    "is_fox_chinese", "resolve_segmenter", "SEGMENTERS",
    # BLEU
    "sentence_bleu", "corpus_bleu",
    # repetition loops and batches
    "looks_like_repetition_loop", "EvalRecord", "PairScores", "score_pair", "aggregate",
    "MetricAggregator", "summarize", "REPETITION_FINISH",
    # errors
    "MetricDependencyError", "MetricInputError",
]
