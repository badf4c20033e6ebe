"""The `deepseek-ocr` command: in-process, as `python -m deepseek_ocr`, and under torchrun (CPU, gloo).

Uses the 2-layer, narrow-decoder random checkpoint of test_pipeline.py (one build per
session). What is the process's own behaviour (exit codes, messages, file modes, what gets
imported) is tested on a subprocess.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from deepseek_ocr import DeepseekOCR
from deepseek_ocr.cli import DEFAULT_REPO, PROMPTS, main, parse_mode, resolve_prompt
from deepseek_ocr.postprocess import combine_pages
from deepseek_ocr.processing.views import MODES, Mode
from deepseek_ocr.weights import loading

from test_pipeline import (checkpoint_folder, fake_result, list_tree, load_model, make_image, make_pdf,
                           truncated_png)

REPO = Path(__file__).resolve().parent.parent
FAST = ["--mode", "128:128", "--max-new-tokens", "4", "--dpi", "72"]


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return checkpoint_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def model(ckpt):
    """The model of this module's in-process runs (pytest drops it after the module)."""
    return load_model(ckpt)


@pytest.fixture
def reuse_model(model, monkeypatch):
    """In-process runs take the module's loaded model instead of loading it again (loading is
    covered by the subprocess tests); records the folders `main` asked for. The model says it
    came from the folder asked for, as a real load would."""
    asked = []

    def from_pretrained(path, **kwargs):
        asked.append(str(path))
        monkeypatch.setattr(model, "folder", Path(path))
        return model

    monkeypatch.setattr(DeepseekOCR, "from_pretrained", staticmethod(from_pretrained))
    return asked


def env_for_subprocess(**extra) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)
    env.pop("WORLD_SIZE", None)
    return env


def inputs(folder: Path) -> Path:
    folder.mkdir()
    make_image(folder / "a.png", (120, 90))
    truncated_png(folder / "b.png")  # corrupt, between two good documents
    make_pdf(folder / "c.pdf", [(100, 130), (130, 100)])
    return folder


def test_ignore_eos_decodes_each_page_to_the_limit(ckpt, reuse_model, model, tmp_path, capsys):
    # End of text made the most likely token from the first step: a page stops at once ("stop",
    # no text token), unless --ignore-eos asks for every page to run to --max-new-tokens.
    from test_generation import forced_logits
    make_image(tmp_path / "a.png", (120, 90))
    eos = model.tokenizer.eos_id

    def edit(_call, logits):
        logits[:, eos] = 1e4

    records = {}
    with forced_logits(model, edit):
        for flag in ([], ["--ignore-eos"]):
            out = tmp_path / f"out{len(flag)}"
            assert main([str(tmp_path / "a.png"), "--model", str(ckpt), "--out", str(out), "--quiet", "--json",
                         *FAST, *flag]) == 0
            capsys.readouterr()
            records[bool(flag)] = json.loads((out / "a" / "page-0001.json").read_text())
    assert records[False]["finish_reason"] == "stop" and records[False]["tokens"]["text"] == 0
    assert records[True]["finish_reason"] == "length" and records[True]["tokens"]["text"] == 4


def test_prompt_presets_and_modes():
    assert resolve_prompt("markdown") == "<image>\n<|grounding|>Convert the document to markdown."
    assert resolve_prompt("free") == "<image>\nFree OCR."
    assert resolve_prompt("locate:the total") == "<image>\nLocate <|ref|>the total<|/ref|> in the image."
    assert resolve_prompt(r"<image>\nRead it.") == "<image>\nRead it."
    assert set(PROMPTS) == {"markdown", "ocr", "free", "figure", "describe"}
    assert parse_mode("Gundam") == MODES["gundam"]
    assert parse_mode("1024:640:crop") == Mode(1024, 640, True, name="1024:640:crop")
    assert parse_mode("512:512") == Mode(512, 512, False, name="512:512")


@pytest.mark.parametrize("args, message", [
    (["--mode", "huge"], "--mode"),
    (["--mode", "100:64"], "multiple of 16"),
    (["--prompt", "no tag here"], "<image>"),
    (["--prompt", "locate:"], "locate"),
    (["--pages", "3-1"], "reversed"),
])
def test_usage_errors_exit_2(tmp_path, capsys, args, message):
    make_image(tmp_path / "a.png", (64, 64))
    assert main([str(tmp_path / "a.png"), "--model", str(tmp_path / "none"), *args]) == 2
    assert message in capsys.readouterr().err


def test_missing_input_and_bad_numbers_exit_2(tmp_path, capsys):
    assert main([str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err
    make_image(tmp_path / "a.png", (64, 64))
    assert main([str(tmp_path / "a.png"), "--batch-size", "0"]) == 2


def test_cli_end_to_end_in_process(ckpt, reuse_model, tmp_path, capsys):
    src = inputs(tmp_path / "in")
    out = tmp_path / "out"
    argv = [str(src), "--model", str(ckpt), "--out", str(out), "--batch-size", "4", "--workers", "2",
            "--json", *FAST]
    assert main(argv) == 1  # one corrupt file
    captured = capsys.readouterr()
    summary = json.loads(captured.out)  # stdout holds the JSON only; progress went to stderr
    assert "pages 4/4" in captured.err and "3 ok, 1 failed" in captured.err
    rows = [(e["document"], e["page"], e["status"]) for e in summary["pages"]]
    assert rows == [("a", 1, "ok"), ("b", 1, "failed"), ("c", 1, "ok"), ("c", 2, "ok")]
    assert summary["pages"][1]["error_type"] == "InvalidImageError"
    totals = summary["totals"]
    assert (totals["pages"], totals["ok"], totals["failed"], totals["skipped"]) == (4, 3, 1, 0)
    assert totals["text_tokens"] == 3 * 4
    assert json.loads((out / "summary.json").read_text()) == summary
    for doc, page, status in rows:
        json_file = out / doc / f"page-{page:04d}.json"
        error_file = out / doc / f"page-{page:04d}.error.json"
        assert json_file.is_file() == (status == "ok") and error_file.is_file() == (status == "failed")
        if status == "ok":
            record = json.loads(json_file.read_text())
            assert record["tokens"]["text"] == 4 and record["finish_reason"] == "length"
            assert record["prompt"] == PROMPTS["markdown"]
    pages_md = [(out / "c" / f"page-000{i}.md").read_text(encoding="utf-8") for i in (1, 2)]
    assert (out / "c" / "c.md").read_text(encoding="utf-8") == combine_pages(pages_md)
    assert (out / "a" / "a.md").is_file() and not (out / "b" / "b.md").exists()

    # Rerun: the done pages are skipped, the failed one is retried (and fails again).
    assert main(argv) == 1
    again = json.loads(capsys.readouterr().out)
    assert [e["status"] for e in again["pages"]] == ["skipped", "failed", "skipped", "skipped"]

    # Only the first PDF page, with --no-resume: redone, and an image ignores --pages.
    assert main([str(src / "c.pdf"), str(src / "a.png"), "--model", str(ckpt), "--out", str(out),
                 "--pages", "2", "--no-resume", "--quiet", "--json", *FAST]) == 0
    third = json.loads(capsys.readouterr().out)
    assert [(e["document"], e["page"], e["status"]) for e in third["pages"] if not e.get("earlier")] == [
        ("c", 2, "ok"), ("a", 1, "ok")]
    assert reuse_model == [str(ckpt)] * 3


def test_ctrl_c_exits_130_and_the_rerun_finishes(reuse_model, model, tmp_path, capsys, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        make_image(src / f"p{i}.png", (70 + i, 60))
    calls = []

    def interrupted_on_second_batch(batch, **kw):
        calls.append(len(batch))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return [fake_result(inp, "text") for inp in batch]

    monkeypatch.setattr(model, "generate", interrupted_on_second_batch)
    out = tmp_path / "out"
    argv = [str(src), "--model", "m", "--out", str(out), "--batch-size", "1", *FAST]
    assert main(argv) == 130
    assert "interrupted" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] is True and [e["document"] for e in summary["pages"]] == ["p0"]
    assert list_tree(out) == {"summary.json", "p0/p0.md"} | {
        f"p0/page-0001.{ext}" for ext in ("md", "raw.txt", "boxes.jpg", "json")}
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [e["status"] for e in summary["pages"]] == ["skipped", "ok", "ok"]
    assert calls == [1, 1, 1, 1]


def test_random_model_reuses_the_cached_checkpoint(ckpt, reuse_model, tmp_path, capsys, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "random-demo").symlink_to(ckpt, target_is_directory=True)  # "built" before
    monkeypatch.setenv("DEEPSEEK_OCR_CACHE", str(cache))
    make_image(tmp_path / "p.png", (80, 80))
    assert main([str(tmp_path / "p.png"), "--model", "random", "--out", str(tmp_path / "out"), *FAST]) == 0
    captured = capsys.readouterr()
    assert "gibberish" in captured.err and "gibberish" in captured.out
    assert "pages: 1 ok, 0 failed, 0 skipped" in captured.out
    assert (tmp_path / "out" / "p" / "page-0001.json").is_file()
    assert reuse_model == [str(cache / "random-demo")]


def test_missing_weights_message(tmp_path):
    make_image(tmp_path / "p.png", (64, 64))
    env = env_for_subprocess(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
                             HF_HUB_CACHE=str(tmp_path / "hf" / "hub"))
    proc = subprocess.run([sys.executable, "-m", "deepseek_ocr", str(tmp_path / "p.png"),
                           "--out", str(tmp_path / "out")],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    # huggingface_hub >= 0.34 ships `hf`; `huggingface-cli` is gone from current releases.
    assert proc.stderr.count("hf download deepseek-ai/DeepSeek-OCR") == 1, proc.stderr
    assert "huggingface-cli" not in proc.stderr
    assert "--model DIR" in proc.stderr and "--model random" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_command_names_the_library_default_repo():
    assert DEFAULT_REPO == loading.DEFAULT_REPO


def test_python_dash_m_subprocess(ckpt, tmp_path):
    make_image(tmp_path / "p.png", (96, 64))
    proc = subprocess.run([sys.executable, "-m", "deepseek_ocr", str(tmp_path / "p.png"), "--model", str(ckpt),
                           "--out", str(tmp_path / "out"), "--json", "--prompt", "free", *FAST],
                          env=env_for_subprocess(), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["totals"]["ok"] == 1 and summary["prompt"] == PROMPTS["free"]
    assert summary["pages"][0]["tokens"]["text"] == 4
    assert (tmp_path / "out" / "p" / "p.md").is_file()


def test_torchrun_two_ranks_share_the_pages(ckpt, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    make_image(src / "a.png", (100, 70))
    make_pdf(src / "doc.pdf", [(90, 120), (120, 90), (100, 100)])
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "deepseek_ocr", str(src), "--model", str(ckpt), "--out", str(out), "--json",
           "--batch-size", "2", *FAST]
    proc = subprocess.run(cmd, env=env_for_subprocess(), cwd=tmp_path, capture_output=True, text=True,
                          timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])  # only rank 0 prints it
    expected = [("a", 1), ("doc", 1), ("doc", 2), ("doc", 3)]
    assert [(e["document"], e["page"]) for e in summary["pages"]] == expected
    assert summary["world_size"] == 2 and summary["totals"]["ok"] == 4
    ranks = [json.loads((out / f"summary.rank-{r}.json").read_text())["pages"] for r in (0, 1)]
    done = [[(e["document"], e["page"]) for e in share] for share in ranks]
    assert done == [expected[0::2], expected[1::2]]  # round-robin, each page exactly once
    for doc, page in expected:
        assert (out / doc / f"page-{page:04d}.json").is_file()
    pages_md = [(out / "doc" / f"page-000{i}.md").read_text(encoding="utf-8") for i in (1, 2, 3)]
    assert (out / "doc" / "doc.md").read_text(encoding="utf-8") == combine_pages(pages_md)
    assert (out / "a" / "a.md").is_file()


# ------------------------------------------------------------- issue 12: checks before loading
def run_cli(args: list[str], cwd: Path, umask: int | None = None, **env) -> subprocess.CompletedProcess:
    """`python -m deepseek_ocr ARGS` in a fresh process (its own exit code, streams, umask)."""
    return subprocess.run([sys.executable, "-m", "deepseek_ocr", *map(str, args)], env=env_for_subprocess(**env),
                          cwd=cwd, capture_output=True, text=True, timeout=300,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None)


STARTUP = """
import sys
from deepseek_ocr.cli import main
try:
    main(["--help"])
except SystemExit:
    pass
codes = [main(argv) for argv in ({cases})]
print(codes, "torch" in sys.modules)
"""


def test_help_and_argument_errors_do_not_import_torch(tmp_path):
    (tmp_path / "file.txt").write_text("not a folder")
    make_image(tmp_path / "p.png", (64, 64))
    cases = [["p.png", "--mode", "bogus"], ["p.png", "--pages", "3-1"], ["p.png", "--prompt", "no tag"],
             ["p.png", "--out", "file.txt"], ["p.png", "--batch-size", "0"], ["missing.png"],
             ["p.png", "--dtype", "int8"]]
    proc = subprocess.run([sys.executable, "-c", STARTUP.format(cases=repr(cases))], env=env_for_subprocess(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == f"{[2] * len(cases)} False"  # exit 2, torch never imported
    assert "usage: deepseek-ocr" in proc.stdout
    assert not (tmp_path / "ocr-output").exists()  # a usage error leaves no output folder behind


@pytest.mark.parametrize("out, message", [("file.txt", "exists and is not a folder"),
                                          ("file.txt/sub", "cannot create the folder")])
def test_bad_out_is_a_usage_error_before_anything_loads(tmp_path, out, message):
    # (A read-only folder takes the same path, a failed probe write, but cannot be made here:
    # the tests run as root, whom permission bits do not stop.)
    (tmp_path / "file.txt").write_text("not a folder")
    make_image(tmp_path / "p.png", (64, 64))
    # A model folder that does not exist: had it been loaded first, the error would be about it.
    proc = run_cli(["p.png", "--model", tmp_path / "no-model", "--out", out], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: --out {out}: {message}"), proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_a_usage_error(ckpt, tmp_path):
    make_image(tmp_path / "p.png", (64, 64))
    proc = run_cli(["p.png", "--model", ckpt, "--device", "cuda", "--out", "out"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "CUDA is not available" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_run_with_a_missing_path_a_range_past_the_end_and_umask_022(ckpt, tmp_path):
    make_image(tmp_path / "a.png", (90, 70))
    make_pdf(tmp_path / "doc.pdf", [(100, 100), (110, 90), (90, 110)])
    proc = run_cli(["a.png", "nothere.png", "doc.pdf", "--model", ckpt, "--out", "out", "--pages", "2-9",
                    "--json", *FAST], cwd=tmp_path, umask=0o022)
    assert proc.returncode == 1, proc.stderr  # the missing path; the other inputs all done
    assert "error: nothere.png: no such file or folder" in proc.stderr
    assert "note: doc.pdf has 3 page(s): --pages 2-9 reaches past its end; doing 2-3" in proc.stderr
    summary = json.loads(proc.stdout)
    assert [(e["document"], e["page"], e["status"]) for e in summary["pages"]] == [
        ("a", 1, "ok"), ("doc", 2, "ok"), ("doc", 3, "ok")]
    assert summary["missing_inputs"] == ["nothere.png: no such file or folder"]
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert len(files) == 1 + 5 + 2 * 4 + 1  # summary; a's 4 files + a.md; doc's 2x4 + doc.md
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}  # not mkstemp's 0600


@pytest.mark.parametrize("spec", ["5-", "99-", "4,7"])
def test_a_range_past_the_end_of_every_input_is_a_usage_error(reuse_model, tmp_path, capsys, spec):
    make_pdf(tmp_path / "doc.pdf", [(100, 100)] * 3)
    make_pdf(tmp_path / "two.pdf", [(100, 100)] * 2)
    assert main([str(tmp_path / "doc.pdf"), str(tmp_path / "two.pdf"), "--pages", spec,
                 "--out", str(tmp_path / "out"), *FAST]) == 2
    err = capsys.readouterr().err
    assert f"error: --pages {spec} is past the end of every input (doc.pdf: 3 page(s), two.pdf: 2 page(s))" in err
    assert "page 1" not in err and reuse_model == []


def test_a_range_past_the_end_of_one_input_leaves_it_out(reuse_model, tmp_path, capsys):
    make_pdf(tmp_path / "long.pdf", [(100, 100)] * 4)
    make_pdf(tmp_path / "short.pdf", [(100, 100)] * 2)
    assert main([str(tmp_path / "long.pdf"), str(tmp_path / "short.pdf"), "--pages", "3-", "--json",
                 "--out", str(tmp_path / "out"), *FAST]) == 0
    captured = capsys.readouterr()
    assert "note: short.pdf has 2 page(s): --pages 3- selects none of them; left out" in captured.err
    assert [(e["document"], e["page"]) for e in json.loads(captured.out)["pages"]] == [("long", 3), ("long", 4)]


def test_changed_settings_redo_the_pages(reuse_model, ckpt, tmp_path, capsys):
    make_image(tmp_path / "page.png", (90, 70))
    out = tmp_path / "out"

    def run(*extra, model=ckpt):
        assert main([str(tmp_path / "page.png"), "--model", str(model), "--out", str(out), "--json",
                     "--quiet", *FAST, *extra]) == 0
        (entry,) = json.loads(capsys.readouterr().out)["pages"]
        return entry["status"], entry.get("redone", "")

    assert run("--mode", "128:128") == ("ok", "")
    assert run("--mode", "128:128")[0] == "skipped"
    status, why = run("--mode", "192:192")
    assert status == "ok" and why.startswith("mode was")
    status, why = run("--mode", "192:192", "--prompt", "ocr")
    assert status == "ok" and why.startswith("prompt was")
    (tmp_path / "other").symlink_to(ckpt, target_is_directory=True)  # e.g. random, then the real weights
    status, why = run("--mode", "192:192", "--prompt", "ocr", model=tmp_path / "other")
    assert status == "ok" and why.startswith("model was")
    record = json.loads((out / "page" / "page-0001.json").read_text())
    assert record["run"]["model"] == str(tmp_path / "other") and record["prompt"] == PROMPTS["ocr"]


def test_unreadable_inputs_alone_load_no_model(reuse_model, tmp_path, capsys, monkeypatch):
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # --max-pixels raises it
    (tmp_path / "empty.png").write_bytes(b"")
    big = tmp_path / "big.png"  # a valid header claiming 9000 x 9000 (81 Mpx), and no pixel data
    ihdr = b"IHDR" + (9000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    big.write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr
                    + zlib.crc32(ihdr).to_bytes(4, "big") + (0).to_bytes(4, "big") + b"IEND"
                    + zlib.crc32(b"IEND").to_bytes(4, "big"))
    assert main([str(tmp_path / "empty.png"), str(big), "--out", str(tmp_path / "out"), "--json"]) == 1
    captured = capsys.readouterr()
    assert reuse_model == [] and "no model is loaded" in captured.err
    entries = json.loads(captured.out)["pages"]
    assert [(e["document"], e["status"], e["error_type"]) for e in entries] == [
        ("empty", "failed", "InvalidImageError"), ("big", "failed", "ImageTooLargeError")]
    # One limit quoted: ours (64 Mpx), not also Pillow's warning threshold.
    assert "67108864 pixels" in entries[1]["error"] and str(89478485) not in entries[1]["error"]
    assert (tmp_path / "out" / "big" / "page-0001.error.json").is_file()
    # --max-pixels raises the limit: the header passes, and only decoding fails (no pixel data).
    assert main([str(big), "--max-pixels", "90000000", "--out", str(tmp_path / "out"), "--json"]) == 1
    (entry,) = [e for e in json.loads(capsys.readouterr().out)["pages"] if not e.get("earlier")]
    assert entry["error_type"] == "InvalidImageError" and reuse_model == [DEFAULT_REPO]
