"""deepseek_ocr.evaluation: every metric against hand-computed values (arithmetic in comments)."""

from __future__ import annotations

import math
import sys

import pytest

from deepseek_ocr.errors import DeepseekOCRError
from deepseek_ocr.evaluation import (EditCounts, EvalRecord, MetricAggregator,
                                     MetricDependencyError, MetricInputError, PairScores,
                                     aggregate, cer, char_edit_counts, chinese_words, corpus_bleu,
                                     corpus_cer, corpus_normalized_edit_distance, corpus_wer,
                                     fox_words, levenshtein, looks_like_repetition_loop,
                                     mean_word_set_scores, normalize_omnidocbench,
                                     normalize_whitespace, normalized_edit_distance,
                                     resolve_segmenter, score_pair, sentence_bleu, set_error_rate,
                                     set_normalized_edit_distance, strip_center_tags,
                                     strip_equation_numbers, strip_grounding, summarize, wer,
                                     word_edit_counts, word_set_scores)

pytest.importorskip("rapidfuzz")

approx = pytest.approx


# --- text normalization ---------------------------------------------------------------------

def test_grounding_spans_removed_with_label_and_boxes():
    text = ("<|ref|>title<|/ref|><|det|>[[10, 20, 30, 40]]<|/det|>\n# Intro\n"
            "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4], [5, 6, 7, 8]]<|/det|>\nBody text.")
    assert strip_grounding(text) == "\n# Intro\n\nBody text."


def test_grounding_stray_tags_and_broken_spans():
    assert strip_grounding("<|grounding|>OCR this") == "OCR this"
    # A ref pair without boxes, and boxes without a label, go entirely.
    assert strip_grounding("a<|ref|>text<|/ref|>b") == "ab"
    assert strip_grounding("a<|det|>[[1, 2, 3, 4]]<|/det|>b") == "ab"
    # Output cut by max_new_tokens inside the box list: label pair, then the unclosed det.
    assert strip_grounding("Body<|ref|>text<|/ref|><|det|>[[1, 2, 3") == "Body"
    # Text between a broken ref pair and the next span survives (bodies cannot cross tags).
    text = "<|ref|>a<|/ref|>keep<|ref|>b<|/ref|><|det|>[[1, 1, 2, 2]]<|/det|>"
    assert strip_grounding(text) == "keep"
    # A "span" across a line break is not a span: only its tags go.
    assert strip_grounding("<|ref|>a\nb<|/ref|>") == "a\nb"


def test_equation_numbers_removed_but_not_mathematics():
    assert strip_equation_numbers(r"E = mc^2 \quad (1)") == "E = mc^2 "
    assert strip_equation_numbers(r"x \qquad(2.3) y \quad( A.1 ) z \quad(4a)") == "x  y  z "
    assert strip_equation_numbers(r"f(x) \quad (x > 0)") == r"f(x) \quad (x > 0)"


def test_center_tags_removed_content_kept():
    assert strip_center_tags("<center>Title</center>") == "Title"
    assert strip_center_tags("<CENTER >x</Center>") == "x"


def test_whitespace_modes():
    text = "  a \t b\n\n c\u3000d  "     # U+3000, the ideographic space, is whitespace too
    assert normalize_whitespace(text, "collapse") == "a b c d"
    assert normalize_whitespace(text, "remove") == "abcd"
    assert normalize_whitespace(text, "keep") == text
    with pytest.raises(MetricInputError):
        normalize_whitespace(text, "squash")


def test_normalize_omnidocbench_all_rules():
    raw = ("<|grounding|><|ref|>equation<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\n"
           "<center>\\[ E = mc^2 \\quad (1) \\]</center>\n\n  Next   line")
    assert normalize_omnidocbench(raw) == "\\[ E = mc^2 \\] Next line"
    assert normalize_omnidocbench(raw, whitespace="remove") == "\\[E=mc^2\\]Nextline"


def test_normalization_rejects_non_strings():
    with pytest.raises(MetricInputError):
        normalize_omnidocbench(None)


# --- edit distances -------------------------------------------------------------------------

def test_levenshtein_strings_and_word_lists():
    # kitten -> sitting: k->s, e->i, insert g = 3
    assert levenshtein("kitten", "sitting") == 3
    # one inserted word
    assert levenshtein(["a", "b"], ["a", "c", "b"]) == 1
    assert levenshtein("", "") == 0


def test_cer():
    # 3 edits / 7 reference characters
    assert cer("kitten", "sitting") == approx(3 / 7)
    # prediction longer than reference: 4 insertions / 2 reference characters = 2.0 (> 1)
    assert cer("abcabc", "ab") == approx(2.0)
    # everything deleted: 4 / 4
    assert cer("", "abcd") == approx(1.0)


def test_cer_empty_reference():
    assert cer("", "") == 0.0
    # 3 insertions against the floor of 1 reference character = 3.0
    assert cer("abc", "") == approx(3.0)


def test_cer_and_ned_on_cjk():
    # one substitution 北 -> 南 among 4 characters
    assert cer("我爱北京", "我爱南京") == approx(1 / 4)
    assert normalized_edit_distance("我爱北京", "我爱南京") == approx(1 / 4)
    # 3 extra characters: CER 3 / 2 = 1.5, NED 3 / max(5, 2) = 0.6
    assert cer("北京天安门", "北京") == approx(1.5)
    assert normalized_edit_distance("北京天安门", "北京") == approx(0.6)


def test_wer():
    # one deleted word / 4 reference words
    assert wer("the cat sat", "the cat sat down") == approx(1 / 4)
    # words are whitespace-split: spacing differences cost nothing
    assert wer("the  cat\nsat", "the cat sat") == 0.0
    # one substituted word / 3
    assert wer("a x c", "a b c") == approx(1 / 3)
    assert wer("", "") == 0.0
    # 2 inserted words against the floor of 1 reference word
    assert wer("a b", "") == approx(2.0)
    # Chinese without spaces is one "word": a single character error makes WER 1/1
    assert wer("我爱北京", "我爱南京") == approx(1.0)


def test_normalized_edit_distance():
    # 3 / max(6, 7)
    assert normalized_edit_distance("kitten", "sitting") == approx(3 / 7)
    assert normalized_edit_distance("sitting", "kitten") == approx(3 / 7)
    assert normalized_edit_distance("", "") == 0.0
    # 3 / max(3, 0)
    assert normalized_edit_distance("abc", "") == approx(1.0)
    # 4 / max(6, 2) = 2/3, while CER is 2.0
    assert normalized_edit_distance("abcabc", "ab") == approx(2 / 3)


def test_set_aggregation_differs_from_mean_of_ratios():
    short = ("ab", "abcdefghij")          # 8 deletions: CER 8/10, NED 8/10
    long_ = ("y" + "x" * 89, "x" * 90)    # 1 substitution: CER 1/90, NED 1/90
    longer_pred = ("abcabc", "ab")        # 4 insertions: CER 4/2, NED 4/6

    # set CER = (8 + 1) / (10 + 90) = 0.09; mean = (0.8 + 1/90) / 2 = 73/180
    assert corpus_cer([short, long_]) == approx(0.09)
    assert (cer(*short) + cer(*long_)) / 2 == approx(73 / 180)
    # set NED = (8 + 1) / (max(2,10) + max(90,90)) = 9/100
    assert corpus_normalized_edit_distance([short, long_]) == approx(0.09)

    # set CER = (8 + 4) / (10 + 2) = 1.0; set NED = (8 + 4) / (10 + 6) = 0.75
    assert corpus_cer([short, longer_pred]) == approx(1.0)
    assert corpus_normalized_edit_distance([short, longer_pred]) == approx(0.75)
    # mean NED = (0.8 + 2/3) / 2 = 11/15
    nets = [normalized_edit_distance(*p) for p in (short, longer_pred)]
    assert sum(nets) / 2 == approx(11 / 15)


def test_corpus_wer_and_counts():
    # (1 deletion + 1 substitution) / (4 + 3) reference words
    assert corpus_wer([("the cat sat", "the cat sat down"), ("a x c", "a b c")]) == approx(2 / 7)
    counts = word_edit_counts("a x c", "a b c")
    assert counts == EditCounts(1, 3, 3, "word")
    assert char_edit_counts("cat", "cart") == EditCounts(1, 3, 4, "char")


def test_set_aggregates_of_nothing_and_of_empty_pairs():
    assert corpus_cer([]) == 0.0
    assert corpus_wer([]) == 0.0
    assert corpus_normalized_edit_distance([]) == 0.0
    assert corpus_normalized_edit_distance([("", ""), ("", "")]) == 0.0
    # Σ reference = 0 but 3 inserted characters: the floor of 1 gives 3.0
    assert corpus_cer([("", ""), ("abc", "")]) == approx(3.0)


def test_set_aggregates_refuse_mixed_units_and_bad_pairs():
    with pytest.raises(MetricInputError):
        set_error_rate([EditCounts(1, 1, 1, "word")], "char")
    with pytest.raises(MetricInputError):
        set_normalized_edit_distance([EditCounts(1, 1, 1, "word")])
    with pytest.raises(MetricInputError):
        corpus_cer([("only one",)])
    with pytest.raises(MetricInputError):
        cer(None, "x")
    with pytest.raises(MetricInputError):
        wer("x", b"x")


def test_missing_rapidfuzz_raises_typed_error_naming_the_extra(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "rapidfuzz", None)
    monkeypatch.setitem(sys.modules, "rapidfuzz.distance", None)
    with pytest.raises(MetricDependencyError, match=r"pip install deepseek-ocr\[eval\]") as info:
        cer("a", "b")
    assert isinstance(info.value, DeepseekOCRError)
    assert isinstance(info.value, ImportError)
    # What does not need rapidfuzz still works.
    assert normalize_omnidocbench(" a ") == "a"
    assert word_set_scores("a", "a").f1 == 1.0


# --- Fox word sets --------------------------------------------------------------------------

def test_fox_precision_quirk_differs_from_textbook():
    # pred types {the, cat, sat} = 3; GT types {the, cat, sat, on, mat} = 5 ("the" twice, one
    # type); both hold 3.
    s = word_set_scores("the cat sat", "the cat sat on the mat")
    assert (s.matched, s.prediction_types, s.reference_types) == (3, 3, 5)
    assert s.precision == approx(1.0)        # 3 / 3 pred types
    assert s.recall == approx(0.6)           # 3 / 5 GT types
    assert s.fox_precision == approx(0.6)    # Fox: 3 / 5 GT types
    assert s.fox_recall == approx(1.0)       # Fox: 3 / 3 pred types
    assert s.f1 == approx(0.75)              # 2 * 3 / (3 + 5)
    assert s.segmentation == "whitespace"


def test_fox_sets_ignore_order_and_repeats():
    s = word_set_scores("mat the on", "the the the on mat")
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)


def test_fox_empty_texts():
    both = word_set_scores("", "")
    assert (both.precision, both.recall, both.f1) == (1.0, 1.0, 1.0)
    # nothing predicted: precision has denominator 0 (not both empty) -> 0; recall 0/2
    none_read = word_set_scores("", "a b")
    assert (none_read.precision, none_read.recall, none_read.f1) == (0.0, 0.0, 0.0)
    assert (none_read.fox_precision, none_read.fox_recall) == (0.0, 0.0)
    nothing_there = word_set_scores("a", "   ")
    assert (nothing_there.precision, nothing_there.recall, nothing_there.f1) == (0.0, 0.0, 0.0)


def test_fox_chinese_per_character_fallback():
    # [我, 爱, 北, 京, 。] vs [我, 爱, 南, 京, 。]: 4 of 5 types shared each way
    s = word_set_scores("我爱北京。", "我爱南京。", segmenter="char")
    assert (s.matched, s.prediction_types, s.reference_types) == (4, 5, 5)
    assert s.precision == approx(0.8) and s.recall == approx(0.8) and s.f1 == approx(0.8)
    assert s.segmentation == "char"
    # ideographs one by one, other letters and digits in runs, whitespace and punctuation alone
    assert chinese_words("OCR结果 good, v2", "char") == [
        "OCR", "结", "果", " ", "good", ",", " ", "v2"]


def test_fox_chinese_decision_covers_both_texts():
    # The GT holds Chinese, so the English prediction is segmented for Chinese too (Fox's rule).
    pred, gt, used = fox_words("hello, world", "你好", segmenter="char")
    assert used == "char"
    assert pred == ["hello", ",", " ", "world"]
    assert gt == ["你", "好"]


def test_fox_jieba_segmentation():
    pytest.importorskip("jieba")
    # jieba: 我们/今天/去/北京 vs 我们/明天/去/北京: 3 of 4 word types each way
    s = word_set_scores("我们今天去北京", "我们明天去北京", segmenter="jieba")
    assert (s.matched, s.prediction_types, s.reference_types) == (3, 4, 4)
    assert s.precision == approx(0.75) and s.fox_precision == approx(0.75)
    assert s.segmentation == "jieba"


def test_fox_without_jieba(monkeypatch):
    monkeypatch.setitem(sys.modules, "jieba", None)
    assert resolve_segmenter("auto") == "char"
    assert word_set_scores("我爱北京", "我爱南京").segmentation == "char"
    with pytest.raises(MetricDependencyError, match="pip install jieba"):
        word_set_scores("我爱北京", "我爱南京", segmenter="jieba")
    # English pages never need a segmenter
    assert word_set_scores("a b", "a b", segmenter="jieba").segmentation == "whitespace"
    with pytest.raises(MetricInputError):
        resolve_segmenter("spacy")


def test_mean_word_set_scores_is_per_page_mean():
    pages = [word_set_scores("the cat sat", "the cat sat on the mat"),   # P 1.0, R 0.6
             word_set_scores("a b", "a c")]                               # P 0.5, R 0.5
    m = mean_word_set_scores(pages)
    assert m["count"] == 2
    assert m["precision"] == approx(0.75)       # (1.0 + 0.5) / 2
    assert m["recall"] == approx(0.55)          # (0.6 + 0.5) / 2
    assert m["fox_precision"] == approx(0.55)   # Fox's precision is the textbook recall
    assert m["f1"] == approx(0.625)             # (0.75 + 0.5) / 2
    assert mean_word_set_scores([])["precision"] == 0.0


# --- BLEU -----------------------------------------------------------------------------------

def test_bleu_hand_computed():
    pytest.importorskip("sacrebleu")
    # hyp "the cat sat on the mat", ref "the cat sat on a mat" (6 words each, BP = 1):
    # 1-grams 5/6 ("the" clipped to 1), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3;
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** 0.25
    expected = (1 / 12) ** 0.25
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"]) == approx(expected)
    assert sentence_bleu("the cat sat on the mat", "the cat sat on a mat") == approx(expected)
    # every n-gram precision 1, but 4 words for 6: BP = exp(1 - 6/4) = exp(-0.5)
    assert corpus_bleu(["the cat sat on"], ["the cat sat on a mat"]) == approx(math.exp(-0.5))
    assert sentence_bleu("same words here ok", "same words here ok") == approx(1.0)


def test_bleu_chinese_auto_tokenization():
    pytest.importorskip("sacrebleu")
    # "auto" picks sacrebleu's "zh" tokenizer (one token per character), so spacing is irrelevant
    assert corpus_bleu(["我爱 北京 天安门"], ["我爱北京天安门"]) == approx(1.0)
    with pytest.raises(MetricInputError):
        corpus_bleu(["a", "b"], ["a"])


def test_bleu_without_sacrebleu(monkeypatch):
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(MetricDependencyError, match=r"deepseek-ocr\[eval\]"):
        sentence_bleu("a", "a")


# --- repetition loops -----------------------------------------------------------------------

def test_repetition_loop_detected():
    # period 3, 300 characters >= max(10 * 3, 200)
    assert looks_like_repetition_loop("abc" * 100)
    # period 14 ("the same line\n"), 20 copies = 280 >= max(140, 200)
    assert looks_like_repetition_loop("Intro text. " + "the same line\n" * 20)
    # cut in the middle of a block by max_new_tokens: 239 characters, still 4-periodic
    assert looks_like_repetition_loop(("abcd" * 60)[:-1])
    # a loop followed by one newline: found on the text without trailing whitespace
    assert looks_like_repetition_loop("xy" * 150 + "\n")
    # a loop of blank lines
    assert looks_like_repetition_loop("text\n" + "\n" * 300)


def test_repetition_needs_enough_copies_and_length():
    block = "abcdefghijklmnopqrstuvwxy"     # 25 distinct characters: no period below 25
    prefix = "Some introduction that differs. "
    # 10 copies = 250 characters >= max(10 * 25, 200): a loop
    assert looks_like_repetition_loop(prefix + block * 10)
    # 9 copies = 225 < 250 needed for period 25
    assert not looks_like_repetition_loop(prefix + block * 9)
    # dot leaders of 150 characters: shorter than min_length 200
    assert not looks_like_repetition_loop("Contents " + "." * 150)
    assert not looks_like_repetition_loop("An ordinary page of text. " * 3 + "The end.")
    assert not looks_like_repetition_loop("")
    # smaller thresholds catch it
    assert looks_like_repetition_loop("abc" * 9, min_repeats=5, min_length=20)
    with pytest.raises(MetricInputError):
        looks_like_repetition_loop("abc", max_period=0)


# --- records and summaries ------------------------------------------------------------------

RECORDS = [
    # grounding removed, whitespace collapsed: "Hello world" == "Hello world", 0 edits
    EvalRecord("<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\nHello  world", "Hello world"),
    # 300 characters against 3: 297 insertions; one word against one: 1 substitution; a loop
    {"prediction": "abc" * 100, "reference": "abc", "finish_reason": "length"},
    # cat -> cart: 1 insertion; the loop flag set by generation
    EvalRecord("cat", "cart", "repetition"),
]


def test_summarize_hand_computed():
    s = summarize(RECORDS)
    assert s["count"] == 3
    # set CER = (0 + 297 + 1) / (11 + 3 + 4) = 298 / 18
    assert s["cer"] == approx(298 / 18)
    # mean CER = (0 + 297/3 + 1/4) / 3 = (0 + 99 + 0.25) / 3
    assert s["cer_mean"] == approx(99.25 / 3)
    # set WER = (0 + 1 + 1) / (2 + 1 + 1); mean WER = (0 + 1 + 1) / 3
    assert s["wer"] == approx(0.5)
    assert s["wer_mean"] == approx(2 / 3)
    # set NED = (0 + 297 + 1) / (11 + 300 + 4); mean NED = (0 + 297/300 + 1/4) / 3
    assert s["ned"] == approx(298 / 315)
    assert s["ned_mean"] == approx((0.99 + 0.25) / 3)
    assert s["repetition_finish"] == 1
    assert s["repetition_detected"] == 1
    assert s["repetition"] == 2


def test_summarize_counts_a_record_with_both_flags_once():
    s = summarize([EvalRecord("abc" * 100, "abc", "repetition")])
    assert (s["repetition_finish"], s["repetition_detected"], s["repetition"]) == (1, 1, 1)


def test_summarize_hooks():
    # without normalization the grounding span counts as inserted text
    raw = summarize(RECORDS[:1], normalize=None)
    assert raw["cer"] > 0
    # without the detector only finish_reason counts
    s = summarize(RECORDS, repetition_detector=None)
    assert (s["repetition_detected"], s["repetition"]) == (0, 1)
    # a custom detector
    s = summarize(RECORDS, repetition_detector=lambda text: text == "cat")
    assert (s["repetition_detected"], s["repetition"]) == (1, 1)


def test_summarize_nothing():
    s = summarize([])
    assert s["count"] == 0 and s["cer"] == 0.0 and s["ned_mean"] == 0.0 and s["repetition"] == 0


def test_aggregator_and_stored_scores_reaggregate_exactly():
    agg = MetricAggregator()
    per_record = [agg.add_record(r) for r in RECORDS]
    assert agg.summary() == summarize(RECORDS)
    # JSON-ready dicts hold the counts; rebuilt scores give the same summary
    stored = [p.to_dict() for p in per_record]
    assert stored[2]["char_edits"] == 1 and stored[2]["reference_chars"] == 4
    assert aggregate(PairScores.from_dict(d) for d in stored) == summarize(RECORDS)
    one = score_pair("cat", "cart")
    assert (one.cer, one.wer, one.ned) == (approx(0.25), approx(1.0), approx(0.25))


def test_bad_records_are_reported():
    with pytest.raises(MetricInputError, match="reference"):
        summarize([{"prediction": "x"}])
    with pytest.raises(MetricInputError, match="record 1"):
        summarize([EvalRecord("a", "a"), EvalRecord(None, "a")])
    with pytest.raises(MetricInputError):
        summarize([("a", "a")])
    with pytest.raises(MetricInputError):
        PairScores.from_dict({"char_edits": 1})
