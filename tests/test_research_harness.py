"""The harness measures what it claims: an oracle predictor with a known number of injected edits,
behind the same interface as the model, is recovered exactly; records resume, refuse another
protocol, survive a cut-short write; the command writes every file; the forgetting study's
bookkeeping. No model is loaded here (see test_research_sweep.py for the model)."""
import csv
import json
import sys

import pytest
from PIL import Image

from deepseek_ocr.cli import main as cli_main
from deepseek_ocr.evaluation import normalize_omnidocbench
from deepseek_ocr.research import (OraclePredictor, Page, PlotDependencyError, ProtocolMismatchError,
                                   RecordFileError, RecordStore, parse_settings, run_compression_study,
                                   token_counter)
from deepseek_ocr.research.forgetting import ForgettingPlan, run_forgetting_study, setting_for_age, split_rounds
from deepseek_ocr.research.predictors import inject_substitutions
from deepseek_ocr.research.synth_text import generate_paragraphs, join_paragraphs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def counter():
    return token_counter()


@pytest.fixture
def pages(tmp_path):
    """Three pages of different lengths (the oracle only reads their image headers)."""
    out = []
    for number, size in enumerate([(800, 1100), (1000, 1000), (1400, 600)], 1):
        image = tmp_path / f"page{number}.png"
        Image.new("RGB", size, "white").save(image)
        text = join_paragraphs(generate_paragraphs(f"oracle:{number}", number + 1))
        out.append(Page(id=f"page{number}", image=image, reference=text, source=str(image), language="en",
                        meta={"font_size": 10 + number}))
    return out


class CountingPredictor:
    """Wraps a predictor and counts the items it is asked for (same interface)."""

    def __init__(self, inner):
        self.inner, self.items = inner, 0

    def describe(self):
        return self.inner.describe()

    def __call__(self, items):
        self.items += len(items)
        return self.inner(items)


def _study(pages, folder, predictor, counter, **options):
    count, name = counter
    settings = parse_settings(options.pop("modes", "tiny,small"))
    return run_compression_study(pages, settings, predictor, folder, count_tokens=count, tokenizer=name,
                                 batch_size=2, **options)


def test_injected_edits_are_exact():
    import random
    text = "abc abc  abc#"
    out = inject_substitutions(text, 4, random.Random(0))
    changed = [i for i, (a, b) in enumerate(zip(text, out)) if a != b]
    assert len(out) == len(text) and len(changed) == 4
    assert all(not text[i].isspace() and out[i] == "@" for i in changed)  # '#' occurs: the next one


def test_oracle_error_rate_is_recovered(tmp_path, pages, counter):
    rate = 0.1
    result = _study(pages, tmp_path / "out", OraclePredictor(rate, seed=3, count_tokens=counter[0]), counter,
                    make_plots=False)
    assert result.sweep.predicted == 6 and result.sweep.failed == 0
    total_edits = total_length = 0
    shortest = min(len(normalize_omnidocbench(p.reference)) for p in pages)
    for record in result.records:
        length = len(normalize_omnidocbench(record["reference"]))
        injected = record["extras"]["injected_edits"]
        assert injected == int(rate * length + 0.5)
        assert record["metrics"]["char_edits"] == injected
        assert record["metrics"]["ned"] == pytest.approx(injected / length, abs=1e-12)
        assert abs(record["metrics"]["ned"] - rate) <= 0.5 / length  # within rounding
        assert record["text_tokens"] == counter[0](record["reference"])
        total_edits, total_length = total_edits + injected, total_length + length
    # Table 3's page-set edit distance is Σ injected / Σ length in each setting (both settings
    # inject the same counts, so the totals over both give the same ratio).
    with open(tmp_path / "out" / "table3.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["language"] == "all"]
    assert [r["setting"] for r in rows] == ["tiny", "small"]
    for row in rows:
        assert float(row["ned_set"]) == pytest.approx(total_edits / total_length, rel=1e-12)
        assert float(row["precision_edit"]) == pytest.approx(1 - rate, abs=0.5 / shortest)


def test_resume_skips_finished_records_and_redoes_failed_or_cut_ones(tmp_path, pages, counter):
    folder = tmp_path / "out"
    oracle = OraclePredictor(0.05, count_tokens=counter[0])
    first = CountingPredictor(oracle)
    _study(pages, folder, first, counter, make_plots=False)
    assert first.items == 6
    again = CountingPredictor(oracle)
    result = _study(pages, folder, again, counter, make_plots=False)
    assert again.items == 0 and result.sweep.skipped == 6 and len(result.records) == 6
    # A cut-short last line (a write interrupted) is dropped and its record redone.
    lines = (folder / "records.jsonl").read_text().splitlines(keepends=True)
    (folder / "records.jsonl").write_text("".join(lines[:-1]) + lines[-1][:40])
    third = CountingPredictor(oracle)
    result = _study(pages, folder, third, counter, make_plots=False)
    assert third.items == 1 and result.sweep.skipped == 5
    assert any("incomplete last line" in n for n in result.notes)
    # A new setting adds records; the old ones stay.
    fourth = CountingPredictor(oracle)
    result = _study(pages, folder, fourth, counter, modes="tiny,small,base", make_plots=False)
    assert fourth.items == 3 and len(result.records) == 9
    protocol = json.loads((folder / "protocol.json").read_text())
    assert [s["name"] for s in protocol["settings"]] == ["tiny", "small", "base"]
    assert len(protocol["runs"]) == 4


def test_failed_pages_are_recorded_and_retried(tmp_path, pages, counter):
    pages[1].image = tmp_path / "gone.png"
    folder = tmp_path / "out"
    result = _study(pages, folder, OraclePredictor(0.0), counter, make_plots=False)
    assert result.sweep.failed == 2
    failed = [r for r in result.records if r["error"]]
    assert {r["page_id"] for r in failed} == {"page2"} and all(r["metrics"] is None for r in failed)
    assert "page image not found" in failed[0]["error"]
    assert "2 record(s) failed" in (folder / "table2.md").read_text()
    pages[1].image = tmp_path / "page2.png"
    retry = CountingPredictor(OraclePredictor(0.0))
    _study(pages, folder, retry, counter, make_plots=False)
    assert retry.items == 2


def test_another_protocol_is_refused(tmp_path, pages, counter):
    folder = tmp_path / "out"
    _study(pages[:1], folder, OraclePredictor(0.1), counter, make_plots=False)
    with pytest.raises(ProtocolMismatchError, match=r"(?s)edit_rate: 0.1 before, 0.2 now.*--no-resume"):
        _study(pages[:1], folder, OraclePredictor(0.2), counter, make_plots=False)
    with pytest.raises(ProtocolMismatchError, match="setting 'tiny'"):
        _study(pages[:1], folder, OraclePredictor(0.1), counter, modes="tiny=640:640", make_plots=False)
    fresh = _study(pages[:1], folder, OraclePredictor(0.2), counter, make_plots=False, fresh=True)
    assert fresh.sweep.predicted == 2 and len(fresh.records) == 2


def test_a_record_file_damaged_inside_is_an_error(tmp_path):
    (tmp_path / "records.jsonl").write_text('{"page_id": "a", "setting": "tiny"}\nnot json\n{"page_id": "b", "setting": "tiny"}\n')
    with pytest.raises(RecordFileError, match=r"records.jsonl:2"):
        RecordStore(tmp_path)


def test_plots_are_written_and_missing_matplotlib_names_the_extra(tmp_path, pages, counter, monkeypatch):
    result = _study(pages, tmp_path / "out", OraclePredictor(0.02), counter)
    names = {p.name for p in result.files}
    for name in ("precision_vs_ratio.png", "edit_distance_vs_vision_tokens.png", "precision_vs_font_size.png"):
        assert name in names and (tmp_path / "out" / name).read_bytes()[:8] == PNG_MAGIC
    for module in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(PlotDependencyError, match=r"deepseek-ocr\[research\].*--no-plots"):
        _study(pages, tmp_path / "out", OraclePredictor(0.02), counter)
    assert (tmp_path / "out" / "table2.md").exists()  # the tables come first


# ----------------------------------------------------------------------------- forgetting
def test_forgetting_schedule_and_rounds_file():
    schedule = parse_settings("small,tiny")
    assert [setting_for_age(a, 1, schedule) for a in range(4)] == [None, schedule[0], schedule[1], schedule[1]]
    assert split_rounds("one\n---\ntwo\nlines\n --- \n\nthree\n---\n") == ["one", "two\nlines", "three"]


def test_forgetting_study_bookkeeping(tmp_path, counter):
    count, name = counter
    plan = ForgettingPlan(rounds=4, keep=1, round_tokens=60, font_size=14, width=600)
    result = run_forgetting_study(tmp_path, plan, parse_settings("small,tiny"), OraclePredictor(0.0),
                                  count_tokens=count, tokenizer=name)
    assert result.sweep.predicted == 3
    with open(tmp_path / "forgetting.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # Round 1 is oldest (age 3); ages past the schedule keep its last setting.
    assert [(r["round"], r["age"], r["kept_as"]) for r in rows] == [
        ("1", "3", "tiny"), ("2", "2", "tiny"), ("3", "1", "small"), ("4", "0", "text")]
    for row in rows:
        text = (tmp_path / "rounds" / f"round-{int(row['round']):02d}.md").read_text()
        assert int(row["text_tokens"]) == count(text) <= 60
        cost = {"tiny": 64, "small": 100, "text": int(row["text_tokens"])}[row["kept_as"]]
        assert int(row["context_tokens"]) == cost
        assert int(row["tokens_saved"]) == int(row["text_tokens"]) - cost
        assert float(row["precision_edit"]) == 1.0  # an oracle without edits reads everything
    assert (tmp_path / "forgetting.png").read_bytes()[:8] == PNG_MAGIC
    assert "User: " in (tmp_path / "rounds" / "round-01.md").read_text()


# ----------------------------------------------------------------------------- the command
def test_command_end_to_end_with_the_oracle(tmp_path, capsys):
    synth, out = tmp_path / "synth", tmp_path / "results"
    assert cli_main(["research", "synth", "--out", str(synth), "--tokens", "120,250", "--font-sizes", "10,14",
                     "--page-size", "700x900", "--quiet"]) == 0
    args = ["research", "compression", "--data", str(synth), "--modes", "tiny", "--mode", "wide=1024:640:crop",
            "--oracle-edit-rate", "0.05", "--out", str(out), "--json", "--quiet"]
    assert cli_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["predicted"] == 8 and summary["failed"] == 0
    expected = {"records.jsonl", "protocol.json", "table2.md", "table2.csv", "table3.md", "table3.csv",
                "table_font_size.md", "table_font_size.csv", "precision_vs_ratio.png",
                "edit_distance_vs_vision_tokens.png", "precision_vs_font_size.png"}
    assert expected <= {p.name for p in out.iterdir()}
    assert cli_main(args) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == 8
    table2 = (out / "table2.md").read_text()
    assert "| 100–200 |" in table2 and "| 200–300 |" in table2 and "wide (" in table2
    assert cli_main(["research", "report", str(out), "--bucket-width", "500", "--no-plots", "--quiet"]) == 0
    assert "| 0–500 |" in (out / "table2.md").read_text()
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["fixed"]["predictor"]["kind"] == "oracle" and protocol["fixed"]["seed"] == 0


@pytest.mark.parametrize("args,message", [
    (["compression", "--data", "x", "--modes", "huge", "--oracle-edit-rate", "0"], "unknown mode 'huge'"),
    (["compression", "--data", "missing-folder", "--modes", "tiny", "--oracle-edit-rate", "0"], "no such file"),
    (["compression", "--data", "x", "--modes", "tiny", "--oracle-edit-rate", "2"], "must be in 0..1"),
    (["compression", "--data", "x", "--modes", "tiny", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["synth", "--tokens", "0"], "positive whole numbers"),
])
def test_command_usage_errors(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x").mkdir()
    assert cli_main(["research", *args]) == 2
    assert message in capsys.readouterr().err
