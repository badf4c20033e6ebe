"""The whole compression sweep on the small random checkpoint: three synthetic pages in two
settings through the model's batched `generate`, every record, table and plot written, and a
rerun that skips what is done. The model is conftest's session-wide `small_model` (float32, on
the test device): the suite keeps that one copy alive for its other tests anyway, and a second
copy of its own here would add 3.2 GB to the suite's peak. Four new tokens per page keep the CPU
time to about a minute on an idle 2-core machine."""
import csv
import json

import pytest

from deepseek_ocr.research import (ModelPredictor, PageGeometry, load_pages, make_synthetic_pages,
                                   parse_settings, run_compression_study)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PROMPT = "<image>\nFree OCR."
NEW_TOKENS = 4


@pytest.fixture(scope="module")
def ocr(small_model):
    return small_model


class CountingPredictor:
    def __init__(self, inner):
        self.inner, self.calls, self.items = inner, 0, 0

    def describe(self):
        return self.inner.describe()

    def __call__(self, items):
        self.calls += 1
        self.items += len(items)
        return self.inner(items)


def test_sweep_end_to_end_and_resume(ocr, tmp_path):
    synth = tmp_path / "synth"
    make_synthetic_pages(synth, targets=[90, 150, 220], font_sizes=[14], count=1,
                         count_tokens=lambda text: len(ocr.tokenizer.encode(text)),
                         geometry=PageGeometry(width=640, height=800, margin=32))
    pages, _ = load_pages([synth])
    settings = parse_settings("tiny,small")
    predictor = CountingPredictor(ModelPredictor(ocr, PROMPT, max_new_tokens=NEW_TOKENS))
    out = tmp_path / "results"

    def run(predictor):
        return run_compression_study(pages, settings, predictor, out, count_tokens=predictor.inner.count_tokens,
                                     tokenizer="small checkpoint", batch_size=3)

    result = run(predictor)
    assert predictor.calls == 2 and predictor.items == 6  # one batch of three pages per setting
    assert result.sweep.predicted == 6 and result.sweep.failed == 0
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted((r["setting"], r["page_id"]) for r in records) == sorted(
        (s.name, p.id) for s in settings for p in pages)
    figures = {"tiny": (64, 8 * 9 + 1, 64), "small": (100, 10 * 11 + 1, 100)}  # grid, layout ids, valid
    for r in records:
        assert (r["vision_tokens"], r["layout_tokens"], r["valid_vision_tokens"]) == figures[r["setting"]]
        assert r["text_tokens"] == len(ocr.tokenizer.encode(r["reference"])) == r["page_meta"]["text_tokens"]
        assert r["compression_ratio"] == r["text_tokens"] / r["valid_vision_tokens"]
        assert 1 <= r["output_tokens"] <= NEW_TOKENS and r["finish_reason"] in ("stop", "length", "repetition")
        assert r["prompt_tokens"] > r["layout_tokens"] and r["seconds"] > 0
        assert r["metrics"]["reference_chars"] == len(" ".join(r["reference"].split()))
        assert 0.0 <= r["metrics"]["precision_edit"] <= 1.0 and r["error"] is None
        assert r["mode"]["name"] == r["setting"] and r["page_meta"]["font_size"] == 14
    # Random weights read nothing of the page: precision is near zero, which is what it shows.
    files = {p.name for p in out.iterdir()}
    for name in ("table2.md", "table2.csv", "table3.md", "table3.csv", "table_font_size.md",
                 "table_font_size.csv", "protocol.json"):
        assert name in files
    for name in ("precision_vs_ratio.png", "edit_distance_vs_vision_tokens.png", "precision_vs_font_size.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    with open(out / "table2.csv", newline="") as f:
        cells = list(csv.DictReader(f))
    assert sorted((c["tokens_low"], c["setting"]) for c in cells) == sorted(
        (str(low), s) for low in (0, 100, 200) for s in ("tiny", "small"))
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["fixed"]["predictor"]["prompt"] == PROMPT
    assert protocol["fixed"]["predictor"]["generation"] == {"max_new_tokens": NEW_TOKENS}
    assert protocol["fixed"]["predictor"]["model"] == str(ocr.folder)

    again = CountingPredictor(predictor.inner)
    result = run(again)
    assert again.calls == 0 and result.sweep.skipped == 6 and len(result.records) == 6

    # Lose the last record (as an interrupted run would): only that page is run again.
    lines = (out / "records.jsonl").read_text().splitlines(keepends=True)
    (out / "records.jsonl").write_text("".join(lines[:-1]))
    third = CountingPredictor(predictor.inner)
    result = run(third)
    assert third.items == 1 and result.sweep.predicted == 1 and result.sweep.skipped == 5
