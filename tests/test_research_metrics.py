"""The research harness's numbers against values worked out by hand: per-pair scores (empty
texts, CJK, grounding, Fox's swapped precision), Table 2 / Table 3 aggregation, and the
vision-token figures of a page in each mode (cross-checked against the preprocessing)."""
import pytest

from deepseek_ocr.research.scoring import score_prediction
from deepseek_ocr.research.settings import parse_setting, parse_settings, vision_figures
from deepseek_ocr.research.errors import SettingError
from deepseek_ocr.research.tables import table2, table3, table_by_meta


# ----------------------------------------------------------------------------- per pair
def test_scores_of_a_truncated_reading():
    s = score_prediction("the cat sat", "the cat sat on the mat")
    # Characters: 11 predicted, 22 expected, the 11 of " on the mat" missing.
    assert s["char_edits"] == 11 and s["prediction_chars"] == 11 and s["reference_chars"] == 22
    assert s["ned"] == 0.5 and s["precision_edit"] == 0.5 and s["cer"] == 0.5
    assert s["word_edits"] == 3 and s["wer"] == 0.5
    # Word types: predicted {the, cat, sat}, expected {the, cat, sat, on, mat}; 3 shared.
    assert s["matched_word_types"] == 3 and s["prediction_word_types"] == 3 and s["reference_word_types"] == 5
    assert s["precision_fox"] == pytest.approx(3 / 5)    # Fox's script: shared / GT types
    assert s["precision_words"] == 1.0                   # textbook: shared / predicted types
    assert s["recall_fox"] == 1.0 and s["recall_words"] == pytest.approx(3 / 5)
    assert s["f1_words"] == pytest.approx(6 / 8)
    assert s["fox_edit_distance"] == 0.5
    assert s["segmentation"] == "whitespace"


def test_scores_of_empty_texts():
    nothing_read = score_prediction("", "abc")
    assert nothing_read["ned"] == 1.0 and nothing_read["precision_edit"] == 0.0
    assert nothing_read["precision_fox"] == 0.0 and nothing_read["precision_words"] == 0.0
    assert nothing_read["f1_words"] == 0.0
    both_empty = score_prediction("", "")
    assert both_empty["ned"] == 0.0 and both_empty["precision_edit"] == 1.0
    assert both_empty["precision_fox"] == 1.0 and both_empty["precision_words"] == 1.0


def test_scores_of_chinese_text_per_character():
    s = score_prediction("我们的模型", "我们模型", segmenter="char")
    # One extra character: 1 edit over max(5, 4) characters; CER over the 4 expected.
    assert s["char_edits"] == 1 and s["ned"] == pytest.approx(1 / 5) and s["cer"] == pytest.approx(1 / 4)
    # Characters as words: predicted {我 们 的 模 型}, expected {我 们 模 型}.
    assert s["segmentation"] == "char"
    assert s["precision_fox"] == 1.0 and s["precision_words"] == pytest.approx(4 / 5)
    assert s["f1_words"] == pytest.approx(8 / 9)


def test_grounding_and_spacing_are_normalized_away_but_not_for_fox_edit_distance():
    span = "<|ref|>text<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>"  # 7 + 4 + 8 + 7 + 14 + 8 = 48 characters
    prediction = span + "\nHello  world"                    # 48 + 1 + 12 = 61 characters
    s = score_prediction(prediction, "Hello world")
    assert s["ned"] == 0.0 and s["precision_edit"] == 1.0
    assert s["precision_fox"] == 1.0 and s["precision_words"] == 1.0
    # Raw strings: the reference is a subsequence, so 61 - 11 = 50 deletions.
    assert s["fox_edit_distance"] == pytest.approx(50 / 61)


def test_bleu_is_reported_on_a_zero_to_one_scale():
    s = score_prediction("a b c d e f", "a b c d e f")
    assert s["bleu"] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- tables
def _record(page, setting, tokens, precision, edits, pred_chars, ref_chars, *, valid=64, grid=64,
            language="en", meta=None, error=None):
    metrics = None if error else {
        "precision_edit": precision, "precision_fox": precision / 2, "precision_words": precision / 4,
        "char_edits": edits, "prediction_chars": pred_chars, "reference_chars": ref_chars,
        "ned": edits / max(pred_chars, ref_chars)}
    return {"page_id": page, "setting": setting, "text_tokens": tokens, "valid_vision_tokens": valid,
            "vision_tokens": grid, "compression_ratio": tokens / valid, "language": language,
            "page_meta": meta or {}, "metrics": metrics, "error": error}


RECORDS = [
    _record("a", "tiny", 650, 0.9, 10, 100, 90),
    _record("b", "tiny", 720, 0.8, 60, 50, 300),
    _record("c", "tiny", 790, 0.6, 1, 10, 10, language="zh"),
    _record("a", "small", 650, 1.0, 0, 90, 90, valid=100, grid=100),
    _record("b", "small", 720, 0.5, 5, 50, 50, valid=100, grid=100, error="ImageError: broken"),
]


def test_table2_cells_are_page_means_in_token_buckets():
    t = table2(RECORDS, bucket_width=100, precision="edit")
    assert t.header == ["text tokens", "tiny (64 vision tokens): precision / ratio",
                        "small (100 vision tokens): precision / ratio", "pages"]
    # 600-700: page a only. tiny: 90%, 650/64 = 10.16x; small: 100%, 6.5x.
    assert t.rows[0] == ["600–700", "90.0% / 10.2×", "100.0% / 6.5×", "1"]
    # 700-800: pages b and c; tiny mean (0.8 + 0.6) / 2 = 70%, ratio (11.25 + 12.34) / 2 = 11.8x.
    # small has no usable page there (b failed).
    assert t.rows[1] == ["700–800", "70.0% / 11.8×", "–", "2"]
    assert any("1 record(s) failed" in n for n in t.notes)
    fox = table2(RECORDS, precision="fox")
    assert fox.rows[1][1].startswith("35.0%")  # precision_fox = precision / 2 in these records
    # CSV: one row per filled cell, with every precision definition.
    header, *rows = [line.split(",") for line in t.csv().strip().split("\n")]
    assert header[:4] == ["tokens_low", "tokens_high", "setting", "pages"]
    assert len(rows) == 3
    tiny_700 = dict(zip(header, rows[2]))  # rows: 600 tiny, 600 small, 700 tiny
    assert tiny_700["setting"] == "tiny" and tiny_700["pages"] == "2"
    assert float(tiny_700["precision_edit"]) == pytest.approx(0.7)
    assert float(tiny_700["precision_words"]) == pytest.approx(0.175)


def test_table2_marks_a_cell_with_fewer_pages_than_its_row():
    records = RECORDS[:3] + [_record("b", "small", 720, 0.5, 5, 50, 50, valid=100, grid=100)]
    t = table2(records)
    assert t.rows[1][2] == "50.0% / 7.2× (1)"


def test_table3_is_the_page_set_edit_distance():
    t = table3(RECORDS)
    assert t.header == ["setting", "vision tokens", "valid vision tokens", "pages", "edit distance (all)",
                        "edit distance (en)", "edit distance (zh)"]
    # tiny: (10 + 60 + 1) / (100 + 300 + 10) = 71 / 410, not the mean of 0.1, 0.2, 0.1.
    assert t.rows[0] == ["tiny", "64", "64", "3", f"{71 / 410:.3f}", f"{70 / 400:.3f} (2)", "0.100 (1)"]
    assert t.rows[1] == ["small", "100", "100", "1", "0.000", "0.000 (1)", "–"]


def test_table_by_font_size():
    records = [_record("a", "tiny", 650, 0.9, 1, 1, 1, meta={"font_size": 12}),
               _record("b", "tiny", 650, 0.7, 1, 1, 1, meta={"font_size": 12}),
               _record("c", "tiny", 650, 0.2, 1, 1, 1, meta={"font_size": 8})]
    t = table_by_meta(records, "font_size")
    assert t.rows == [["8", "20.0% (1)"], ["12", "80.0% (2)"]]
    assert table_by_meta(records, "no_such_fact") is None


# ----------------------------------------------------------------------------- settings
@pytest.mark.parametrize("spec,size,expected", [
    # (vision grid, layout ids, valid, tiles): worked out from DESIGN.md §2 and §5.
    ("tiny", (1000, 1414), (64, 8 * 9 + 1, 64, (1, 1))),
    ("small", (1000, 1414), (100, 10 * 11 + 1, 100, (1, 1))),
    ("base", (1000, 1414), (256, 16 * 17 + 1, int(256 * 1000 / 1414), (1, 1))),   # 181 valid
    ("large", (1000, 1414), (400, 20 * 21 + 1, int(400 * 1000 / 1414), (1, 1))),  # 282 valid
    # Aspect 0.707: grid 2x3 (0.667) beats 3x4 (0.75): 6 tiles of 100 tokens each.
    ("gundam", (1000, 1414), (256 + 600, 273 + 30 * 21, 181 + 600, (2, 3))),
    # Within one tile: no tiles at all.
    ("gundam", (600, 400), (256, 273, int(256 * 400 / 600), (1, 1))),
])
def test_vision_figures_by_hand(spec, size, expected):
    f = vision_figures(parse_setting(spec).mode, size)
    assert (f.vision_tokens, f.layout_tokens, f.valid_vision_tokens, f.tiles) == expected


@pytest.mark.parametrize("spec,size", [("tiny", (1000, 1414)), ("base", (1000, 1414)),
                                       ("gundam", (1000, 1414)), ("768:512:crop", (1300, 500)),
                                       ("gundam", (600, 400))])
def test_vision_figures_agree_with_the_preprocessing(spec, size):
    from PIL import Image

    from deepseek_ocr.processing.prompt import build_inputs
    from deepseek_ocr.processing.tokenizer import Tokenizer
    from deepseek_ocr.processing.views import make_views
    from deepseek_ocr.research.synth import BUNDLED_TOKENIZER
    mode = parse_setting(spec).mode
    inputs = build_inputs(Tokenizer.from_folder(BUNDLED_TOKENIZER), "<image>\nFree OCR.",
                          make_views(Image.new("RGB", size, "white"), mode), mode)
    f = vision_figures(mode, size)
    assert f.layout_tokens == inputs.num_vision_tokens
    assert f.valid_vision_tokens == inputs.valid_vision_tokens


def test_settings_parsing():
    settings = parse_settings("Tiny, small", ["768:512:crop", "wide=1024:640:crop"])
    assert [s.name for s in settings] == ["tiny", "small", "768:512:crop", "wide"]
    assert settings[3].mode.crop and settings[3].mode.image_size == 640
    with pytest.raises(SettingError, match="used twice"):
        parse_settings("tiny", ["tiny=512:512"])
    with pytest.raises(SettingError, match="no setting"):
        parse_settings(None, [])
    with pytest.raises(SettingError, match="huge"):
        parse_settings("huge")
    # 768 -> a 12x12 global grid; 512 tiles of 8x8; aspect 2.6 -> grid 3x1 (10-tile 5x2 exceeds 9).
    assert vision_figures(settings[2].mode, (1300, 500)).valid_vision_tokens == int(144 * 500 / 1300) + 3 * 64
