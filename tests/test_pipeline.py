"""The batch pipeline (`deepseek_ocr.pipeline`) on the CPU with a 2-layer random checkpoint.

The model runs for real in custom 128:128 mode (7 vision tokens) and in `tiny`, with a few
new tokens, so that pages cost about a second. Fault tests (out of memory, grounding output)
swap `ocr.generate` for a stand-in, because they are about what the pipeline does around it.

The checkpoint has the official vision tower and a narrow decoder (hidden 64, see `CKPT_ARGS`):
these tests check what the pipeline and the command do around the model (batching, files,
resume, token counts), none of which depends on the decoder's width, and at full width the
decoder's embedding and head alone were 1.3 GB of float32 in every process that loads it (this
one, and the command's subprocesses and torchrun ranks in test_cli.py).

Set DEEPSEEK_OCR_PIPELINE_CKPT to a folder made by
`make_random_checkpoint(folder, **CKPT_ARGS)` to skip the ~20 s rebuild.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import pypdfium2 as pdfium
import pytest
import torch
from PIL import Image, ImageDraw

from deepseek_ocr import DeepseekOCR, GenerationResult, make_random_checkpoint
from deepseek_ocr.engine import engine_for
from deepseek_ocr.inputs import expand_inputs, iter_pages
from deepseek_ocr.pipeline import ProgressReporter, run_job, run_pages, shard
from deepseek_ocr.pipeline.runner import OutOfMemoryError
from deepseek_ocr.postprocess import combine_pages, render_page
from deepseek_ocr.processing.views import Mode

FAST = Mode(128, 128, False, name="fast")  # 2x2 vision tokens: the cheapest mode the model takes
GEN = {"max_new_tokens": 4}

_CKPT: dict[str, Path] = {}  # one checkpoint folder per session, for both test files
CKPT_ARGS = dict(layers=2, experts=4, topk=2, dtype=torch.float32, hidden_size=64, heads=2,
                 intermediate_size=128, moe_intermediate_size=32)


def checkpoint_folder(tmp_path_factory) -> Path:
    """The shared random checkpoint (built once per session, also for test_cli.py)."""
    reuse = os.environ.get("DEEPSEEK_OCR_PIPELINE_CKPT")
    if reuse and (Path(reuse) / "config.json").is_file():
        return Path(reuse)
    if "ckpt" not in _CKPT:
        folder = tmp_path_factory.getbasetemp() / "pipeline_ckpt"
        if not (folder / "config.json").is_file():
            make_random_checkpoint(folder, **CKPT_ARGS)
        _CKPT["ckpt"] = folder
    return _CKPT["ckpt"]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory)


def load_model(folder: Path) -> DeepseekOCR:
    return DeepseekOCR.from_pretrained(folder, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def ocr(ckpt) -> DeepseekOCR:
    """The model, for this module only: 1.7 GB in float32 (the vision tower), so it must not
    outlive the module (a session-wide copy stayed resident while every later test file ran)."""
    return load_model(ckpt)


# ------------------------------------------------------------------------------ inputs
def make_image(path: Path, size: tuple[int, int], text: str = "") -> Path:
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((8, 8), text or path.stem, fill="black")
    img.save(path)
    return path


def make_pdf(path: Path, sizes: list[tuple[float, float]]) -> Path:
    """A real PDF with one blank page per (width, height) in points."""
    pdf = pdfium.PdfDocument.new()
    for w, h in sizes:
        pdf.new_page(w, h)
    pdf.save(str(path))
    pdf.close()
    return path


def truncated_png(path: Path, size=(90, 70)) -> Path:
    """A PNG whose header is fine but whose pixel data is cut: fails only when decoded."""
    full = path.with_suffix(".full.png")
    Image.effect_noise(size, 50).convert("RGB").save(full)
    data = full.read_bytes()
    full.unlink()
    path.write_bytes(data[: len(data) // 2])
    return path


def pages_of(*items) -> list:
    return [p for doc in expand_inputs([str(i) for i in items]) for p in iter_pages(doc, dpi=72)]


def list_tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


def check_page_files(out: Path, outcome) -> dict:
    """Every file of a done page exists, parses and agrees with the outcome; returns the json."""
    doc, stem = outcome.page.document.name, f"page-{outcome.page.number:04d}"
    folder = out / doc
    record = json.loads((folder / f"{stem}.json").read_text())
    result = outcome.result
    raw = (folder / f"{stem}.raw.txt").read_text(encoding="utf-8")
    assert raw == result.raw_text
    image = outcome.page.load()
    # The markdown is the post-processing of the stripped text, as the official code does.
    expected = render_page(raw.strip(), image, page_name=stem)
    assert (folder / f"{stem}.md").read_text(encoding="utf-8") == expected.markdown
    with Image.open(folder / f"{stem}.boxes.jpg") as drawn:
        assert drawn.size == image.size
    tokens = record["tokens"]
    assert tokens == {"prompt": result.prompt_tokens, "vision": result.vision_tokens,
                      "valid_vision": result.valid_vision_tokens, "text": len(result.token_ids),
                      "compression_ratio": result.compression_ratio}
    assert len(result.token_ids) / result.valid_vision_tokens == tokens["compression_ratio"]
    assert record["token_ids"] == result.token_ids
    assert record["finish_reason"] == result.finish_reason
    assert record["page"] == outcome.page.number and record["source"] == str(outcome.page.document.path)
    assert (record["width"], record["height"]) == image.size
    assert record["boxes"] == expected.boxes and record["problems"] == expected.problems
    assert set(record["timings"]) >= {"prepare_s", "generate_s", "render_s"}
    assert not (folder / f"{stem}.error.json").exists()
    return record


def no_temporaries(out: Path) -> None:
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------- tests
def test_pdf_and_images_in_two_modes_in_order(ocr, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    make_pdf(src / "report.pdf", [(100, 140), (140, 100), (120, 120)])  # 72 dpi: pixels = points
    make_image(src / "a.png", (150, 110))
    make_image(src / "b.png", (90, 160))
    pages = pages_of(src)
    assert [(p.document.name, p.number) for p in pages] == [
        ("a", 1), ("b", 1), ("report", 1), ("report", 2), ("report", 3)]
    sizes = [(150, 110), (90, 160), (100, 140), (140, 100), (120, 120)]

    # Spy on generate: each result remembers the picture size it was made from, so a result
    # handed to the wrong page (batching, threads) shows.
    real_generate, batches = ocr.generate, []

    def spy(batch, **kw):
        batches.append(len(batch))
        results = real_generate(batch, **kw)
        for inp, res in zip(batch, results):
            res.extras["size"] = inp.original_size
        return results

    monkeypatch.setattr(ocr, "generate", spy)
    out = tmp_path / "out"
    outcomes = list(run_pages(ocr, pages, prompt="<image>\nFree OCR.", mode=FAST, batch_size=3,
                              workers=2, out_dir=out, **GEN))
    assert batches == [3, 2]
    assert [o.page for o in outcomes] == pages
    assert [o.result.extras["size"] for o in outcomes] == sizes
    assert all(o.status == "ok" and o.error is None for o in outcomes)
    for o in outcomes:
        assert o.result.finish_reason == "length" and len(o.result.token_ids) == 4
        record = check_page_files(out, o)
        assert record["mode"]["base_size"] == 128
    report_md = [(out / "report" / f"page-000{i}.md").read_text(encoding="utf-8") for i in (1, 2, 3)]
    assert (out / "report" / "report.md").read_text(encoding="utf-8") == combine_pages(report_md)
    assert (out / "a" / "a.md").read_text(encoding="utf-8") == (out / "a" / "page-0001.md").read_text(encoding="utf-8")
    no_temporaries(out)

    # Second mode (tiny, 512 px), a page of each kind, no output folder: results only.
    batches.clear()
    tiny = list(run_pages(ocr, [pages[0], pages[3]], mode="tiny", batch_size=2, workers=1, **GEN))
    assert batches == [2]
    assert [o.result.extras["size"] for o in tiny] == [sizes[0], sizes[3]]
    # tiny: 8x8 tokens + a newline per row + the separator; 4 vision tokens at 128:128.
    assert [o.result.vision_tokens for o in tiny] == [8 * 9 + 1] * 2
    assert outcomes[0].result.vision_tokens == 2 * 3 + 1
    assert all(o.render is not None and o.record["status"] == "ok" for o in tiny)


def test_corrupt_file_in_the_middle_of_a_batch(ocr, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_image(src / "p1.png", (100, 80))
    truncated_png(src / "p2.png")
    make_image(src / "p3.png", (80, 100))
    pages = pages_of(src / "p1.png", src / "p2.png", src / "p3.png")
    out = tmp_path / "out"
    seen = []
    outcomes = list(run_pages(ocr, pages, mode=FAST, batch_size=3, workers=2, out_dir=out,
                              on_page=lambda o: seen.append(o.page.document.name), **GEN))
    assert seen == ["p1", "p2", "p3"] == [o.page.document.name for o in outcomes]
    assert [o.status for o in outcomes] == ["ok", "failed", "ok"]
    bad = outcomes[1]
    assert bad.error_type == "InvalidImageError" and "p2.png" in bad.error and bad.result is None
    error = json.loads((out / "p2" / "page-0001.error.json").read_text())
    assert error["status"] == "failed" and error["error_type"] == "InvalidImageError"
    assert not (out / "p2" / "page-0001.json").exists() and not (out / "p2" / "p2.md").exists()
    for o in (outcomes[0], outcomes[2]):
        check_page_files(out, o)


def test_interrupted_run_leaves_complete_files_and_resumes(ocr, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_pdf(src / "doc.pdf", [(100, 100), (110, 90), (90, 110), (100, 120)])
    pages = pages_of(src / "doc.pdf")
    out = tmp_path / "out"
    done = []

    def stop_after_two(outcome):
        done.append(outcome.page.number)
        if len(done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        for _ in run_pages(ocr, pages, mode=FAST, batch_size=3, workers=2, out_dir=out,
                           on_page=stop_after_two, **GEN):
            pass
    no_temporaries(out)
    # Pages 1 and 2 were reported; a page the engine finished meanwhile may have been written by
    # a finishing thread too: whatever is there is complete (all four files), never partial.
    written = sorted({int(p.name[5:9]) for p in (out / "doc").glob("page-*.json")})
    assert written[:2] == [1, 2] and set(written) <= {1, 2, 3, 4}
    assert list_tree(out) == {f"doc/page-000{i}.{ext}" for i in written
                              for ext in ("md", "raw.txt", "boxes.jpg", "json")}
    first = {i: (out / "doc" / f"page-000{i}.json").read_bytes() for i in written}

    calls = []
    real_generate = ocr.generate

    def counting(batch, **kw):
        calls.append(len(batch))
        return real_generate(batch, **kw)

    ocr.generate = counting
    try:
        outcomes = list(run_pages(ocr, pages, mode=FAST, batch_size=3, workers=2, out_dir=out, **GEN))
    finally:
        del ocr.generate
    # Only the pages without files ran (none at all when the engine had finished every page
    # before the interrupt reached the loop).
    assert calls == ([4 - len(written)] if len(written) < 4 else [])
    assert [o.status for o in outcomes] == ["skipped"] * len(written) + ["ok"] * (4 - len(written))
    for o in outcomes[:len(written)]:  # read back from the first run's files
        record = json.loads(first[o.page.number])
        assert o.record == record and o.result.token_ids == record["token_ids"]
        assert o.result.raw_text == (out / "doc" / f"page-000{o.page.number}.raw.txt").read_text(encoding="utf-8")
    for o in outcomes[len(written):]:
        check_page_files(out, o)
    assert {i: (out / "doc" / f"page-000{i}.json").read_bytes() for i in written} == first
    md = [(out / "doc" / f"page-000{i}.md").read_text(encoding="utf-8") for i in (1, 2, 3, 4)]
    assert (out / "doc" / "doc.md").read_text(encoding="utf-8") == combine_pages(md)
    no_temporaries(out)


def fake_result(inp, text: str, ids=(11, 12, 13)) -> GenerationResult:
    return GenerationResult(text=text.strip(), token_ids=list(ids), finish_reason="stop",
                            prompt_tokens=inp.num_tokens, vision_tokens=inp.num_vision_tokens,
                            valid_vision_tokens=inp.valid_vision_tokens, raw_text=text)


def test_out_of_memory_splits_the_batch(ocr, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    widths = [70, 71, 72, 73, 74, 75]
    for i, w in enumerate(widths):
        make_image(src / f"img{i}.png", (w, 64))
    pages = pages_of(*(src / f"img{i}.png" for i in range(len(widths))))
    poison = 73  # the page that does not fit even alone
    calls = []

    def generate(batch, **kw):
        ws = [inp.original_size[0] for inp in batch]
        calls.append(ws)
        if len(batch) > 2 or poison in ws:
            raise OutOfMemoryError("CUDA out of memory (simulated)")
        return [fake_result(inp, f"width {w}") for inp, w in zip(batch, ws)]

    monkeypatch.setattr(ocr, "generate", generate)
    outcomes = list(run_pages(ocr, pages, mode=FAST, batch_size=6, workers=2, out_dir=tmp_path / "out"))
    assert [o.page for o in outcomes] == pages
    assert [o.status for o in outcomes] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert [o.result.text for o in outcomes if o.status == "ok"] == [f"width {w}" for w in widths if w != poison]
    assert outcomes[3].error_type == "OutOfMemoryError"
    # 6 -> 3 + 3; 3 -> 2 + 1; the poisoned page's pair -> 1 + 1.
    assert calls == [[70, 71, 72, 73, 74, 75], [70, 71, 72], [70, 71], [72], [73, 74, 75],
                     [73, 74], [73], [74], [75]]
    assert (tmp_path / "out" / "img3" / "page-0001.error.json").is_file()


def test_grounded_output_writes_boxes_and_crops(ocr, tmp_path, monkeypatch):
    make_image(tmp_path / "fig.png", (300, 400))
    pages = pages_of(tmp_path / "fig.png")
    text = ("<|ref|>title<|/ref|><|det|>[[100, 50, 900, 150]]<|/det|>\nResults\n\n"
            "<|ref|>image<|/ref|><|det|>[[100, 200, 600, 700]]<|/det|>\n")
    monkeypatch.setattr(ocr, "generate", lambda batch, **kw: [fake_result(i, text) for i in batch])
    out = tmp_path / "out"
    (o,) = run_pages(ocr, pages, mode=FAST, out_dir=out)
    record = json.loads((out / "fig" / "page-0001.json").read_text())
    # Pixel boxes by hand: int(v / 999 * size) on the 300 x 400 page.
    assert [b["box"] for b in record["boxes"]] == [[30, 20, 270, 60], [30, 80, 180, 280]]
    assert [b["label"] for b in record["boxes"]] == ["title", "image"]
    assert record["boxes"][1]["crop"] == "images/page-0001-0.jpg"
    with Image.open(out / "fig" / "images" / "page-0001-0.jpg") as crop:
        assert crop.size == (150, 200)
    md = (out / "fig" / "page-0001.md").read_text(encoding="utf-8")
    assert "![](images/page-0001-0.jpg)" in md and "<|ref|>" not in md and "Results" in md
    assert record["files"]["crops"] == ["images/page-0001-0.jpg"]
    check_page_files(out, o)


def test_arguments_are_checked_at_the_call(ocr):
    with pytest.raises(ValueError):
        run_pages(ocr, [], batch_size=0)
    with pytest.raises(ValueError):
        run_pages(ocr, [], prompt="no image tag")
    with pytest.raises(TypeError):
        run_pages(ocr, [], max_new_tokenz=3)


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_partition_the_pages(world):
    for n in (0, 1, 5, 7, 12):
        items = list(range(n))
        shares = [shard(items, r, world) for r in range(world)]
        assert sorted(x for s in shares for x in s) == items  # complete, nothing twice
        assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced
        assert shares[0] == items[0::world]  # round-robin: page i goes to rank i % world
    with pytest.raises(ValueError):
        shard([1], world, world)


class _Stream:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_into_a_file_counts_only_finished_pages_and_ticks_on_time():
    now = [0.0]
    plain = _Stream(False)
    rep = ProgressReporter(4, stream=plain, interval=10.0, clock=lambda: now[0], ticker=False)
    now[0] = 2.0
    rep.update(status="failed")  # within the interval of the first line: no line
    now[0] = 4.0
    rep.update(status="skipped")
    with rep.batch(2):
        now[0] = 9.0
        for _ in range(7):
            rep.step()
        now[0] = 12.0
        rep.tick()  # no page event for 8 s: the timer still draws, showing the batch
    now[0] = 14.0
    rep.update(status="ok", tokens=30)
    now[0] = 20.0
    rep.update(status="ok", tokens=10)  # the last page always draws
    rep.close()
    lines = plain.text.splitlines()
    assert "\r" not in plain.text and len(lines) == 3, lines
    assert lines[0].startswith("pages 0/4 (0%), 0.00 pages/s")
    # At 12 s: 2 pages done but none finished by the model, so no rate and no ETA (the old
    # display gave the failed page's speed); the running batch shows its 7 steps and 8 s.
    assert lines[1].startswith("pages 2/4 (50%), 0.00 pages/s  0.0 tok/s  elapsed 00:12  ETA --:--")
    assert "failed 1" in lines[1] and "skipped 1" in lines[1] and "batch of 2: step 7, 00:08" in lines[1]
    # At 20 s: 2 finished pages / 20 s = 0.10 pages/s, 40 tokens / 20 s.
    assert lines[2].startswith("pages 4/4 (100%), 0.10 pages/s  2.0 tok/s  elapsed 00:20  ETA 00:00")
    assert "batch" not in lines[2]


def test_progress_on_a_terminal_redraws_one_line_with_moving_time():
    now = [0.0]
    tty = _Stream(True)
    rep = ProgressReporter(10, stream=tty, clock=lambda: now[0], ticker=False)
    now[0] = 10.0
    rep.update(status="ok")
    now[0] = 20.0
    rep.update(status="ok")
    now[0] = 25.0
    rep.tick()  # between pages the elapsed time still moves
    rep.close()
    assert tty.text.endswith("\n") and tty.text.count("\n") == 1
    assert "elapsed 00:25" in tty.text and "2/10" in tty.text
    assert "ETA 01:40" in tty.text  # 8 pages left at 2 pages / 25 s


def test_progress_timer_thread_draws_without_events():
    plain = _Stream(False)
    rep = ProgressReporter(3, stream=plain, interval=0.05)
    first = plain.text.count("\n")
    deadline = time.monotonic() + 5
    while plain.text.count("\n") < first + 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    rep.close()
    assert plain.text.count("\n") >= first + 2  # lines with no page event in between


def test_batch_watch_sees_decode_steps(ocr, tmp_path):
    make_image(tmp_path / "a.png", (90, 70))
    make_image(tmp_path / "b.png", (70, 90))

    class Watch:
        def __init__(self):
            self.batches, self.steps = [], 0

        @contextlib.contextmanager
        def batch(self, pages):
            self.batches.append(pages)
            yield

        def step(self):
            self.steps += 1

    watch = Watch()
    outcomes = list(run_pages(ocr, pages_of(tmp_path / "a.png", tmp_path / "b.png"), mode=FAST, batch_size=2,
                              workers=0, watch=watch, max_new_tokens=5))
    assert watch.batches == [2] and all(len(o.result.token_ids) == 5 for o in outcomes)
    # One decoder forward for the prompt, then one per token after the first (each forward
    # gives the logits of the next token): 5 tokens, 5 forwards, seen while the batch ran.
    assert watch.steps == 5


def test_resume_redoes_pages_made_with_other_settings(ocr, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    make_image(src / "a.png", (80, 60))
    make_pdf(src / "d.pdf", [(100, 100)])
    calls = []

    def generate(batch, **kw):
        calls.append(len(batch))
        return [fake_result(inp, "text") for inp in batch]

    monkeypatch.setattr(ocr, "generate", generate)
    out = tmp_path / "out"

    def run(**kw):
        calls.clear()
        args = {"mode": FAST, "prompt": "<image>\nFree OCR.", "batch_size": 4, "workers": 0,
                "out_dir": out, **kw}
        return [(o.status, o.redone) for o in run_pages(ocr, pages_of(src), **args)]

    assert run() == [("ok", None)] * 2
    assert run() == [("skipped", None)] * 2 and calls == []
    for change, key in [({"mode": Mode(128, 128, True, name="fast-crop")}, "mode"),
                        ({"prompt": "<image>\nOCR."}, "prompt"),
                        ({"max_new_tokens": 7}, "generation"),
                        ({"page_settings": lambda p: {"dpi": 200} if p.document.kind == "pdf" else {}}, "dpi")]:
        first = run(**change)
        assert [s for s, _ in first] == ["ok", "ok"] if key != "dpi" else ["skipped", "ok"], (key, first)
        assert all(r.startswith(f"{key} was ") for s, r in first if s == "ok"), first
        assert run(**change) == [("skipped", None)] * 2  # redone with the new settings, now reused
        run()  # back to the plain settings (redone again) for the next change
    # Another model folder (the same weights through a link) and a changed source file.
    (tmp_path / "link").symlink_to(ocr.folder, target_is_directory=True)
    monkeypatch.setattr(ocr, "folder", tmp_path / "link")
    assert [s for s, _ in run()] == ["ok", "ok"]
    monkeypatch.undo()
    monkeypatch.setattr(ocr, "generate", generate)
    run()
    os.utime(src / "a.png", ns=(1, 1))
    result = run()
    assert result[0][0] == "ok" and "source was" in result[0][1] and result[1] == ("skipped", None)
    assert run(resume=False) == [("ok", None)] * 2


def test_outputs_honour_the_umask(ocr, tmp_path, monkeypatch):
    make_image(tmp_path / "a.png", (60, 60))
    monkeypatch.setattr(ocr, "generate", lambda batch, **kw: [fake_result(i, "x") for i in batch])
    old = os.umask(0o027)
    try:
        list(run_pages(ocr, pages_of(tmp_path / "a.png"), mode=FAST, out_dir=tmp_path / "out"))
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) == 5 and {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o640)}


def test_a_second_range_keeps_the_earlier_pages(ocr, tmp_path, monkeypatch):
    make_pdf(tmp_path / "doc.pdf", [(100, 100)] * 4)
    monkeypatch.setattr(ocr, "generate", lambda batch, **kw: [
        fake_result(i, f"page of {i.original_size}") for i in batch])
    out = tmp_path / "out"
    doc = expand_inputs([str(tmp_path / "doc.pdf")])[0]

    def job(spec):
        pages = iter_pages(doc, pages=spec, dpi=72)
        return run_job(ocr, pages, out_dir=out, progress=False, mode=FAST, workers=0)

    job("1-2")
    second = job("4")
    md = [(out / "doc" / f"page-000{i}.md").read_text(encoding="utf-8") for i in (1, 2, 4)]
    assert (out / "doc" / "doc.md").read_text(encoding="utf-8") == combine_pages(md)
    summary = json.loads((out / "summary.json").read_text())
    assert summary == second.summary
    assert [(e["page"], e["status"], e.get("earlier", False)) for e in summary["pages"]] == [
        (1, "ok", True), (2, "ok", True), (4, "ok", False)]
    assert summary["totals"]["pages"] == 1 and summary["totals"]["earlier"] == 2


def test_continuous_run_equals_the_static_windows(ocr, tmp_path):
    """Five pages through the engine, two at a time (a page joins as soon as one ends), against
    the same pages through the reference loop in windows: same tokens, same order, same files."""
    sizes = [(90, 70), (70, 90), (100, 100), (64, 120), (120, 64)]
    for i, size in enumerate(sizes):
        make_image(tmp_path / f"p{i}.png", size)
    pages = pages_of(*(tmp_path / f"p{i}.png" for i in range(len(sizes))))
    static = list(run_pages(ocr, pages, mode=FAST, batch_size=2, workers=1, out_dir=tmp_path / "a",
                            max_new_tokens=6, fast=False))
    flowing = list(run_pages(ocr, pages, mode=FAST, batch_size=2, workers=1, out_dir=tmp_path / "b",
                             max_new_tokens=6))
    assert [o.page for o in flowing] == pages
    assert [o.result.token_ids for o in flowing] == [o.result.token_ids for o in static]
    assert all(o.status == "ok" and o.result.finish_reason == "length" for o in flowing)
    for o in flowing:
        name = o.page.document.name
        assert (tmp_path / "b" / name / "page-0001.md").read_text(encoding="utf-8") == \
            (tmp_path / "a" / name / "page-0001.md").read_text(encoding="utf-8")
    assert not engine_for(ocr.model, ocr.tokenizer).has_work


def test_short_gil_turns_while_pages_stream_then_restored(ocr, tmp_path, monkeypatch):
    """The engine's steps run with the GIL switch interval at 0.5 ms (its host work competes
    with the preparing and finishing threads); the process's own value comes back after."""
    import sys

    from deepseek_ocr.engine.gil import short_gil_turns
    make_image(tmp_path / "p1.png", (100, 80))
    eng = engine_for(ocr.model, ocr.tokenizer)
    seen = []
    real_step = type(eng).step
    monkeypatch.setattr(type(eng), "step", lambda self: (seen.append(sys.getswitchinterval()), real_step(self))[1])
    old = sys.getswitchinterval()
    sys.setswitchinterval(0.004)
    try:
        outcomes = list(run_pages(ocr, pages_of(tmp_path / "p1.png"), mode=FAST, batch_size=2, workers=1, **GEN))
        assert [o.status for o in outcomes] == ["ok"]
        assert seen and all(v == pytest.approx(0.0005, rel=0.02) for v in seen)
        assert sys.getswitchinterval() == pytest.approx(0.004, rel=0.02)
        sys.setswitchinterval(0.0001)
        with short_gil_turns():
            assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.02)
    finally:
        sys.setswitchinterval(old)
