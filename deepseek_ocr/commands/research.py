"""`deepseek-ocr research`: optical-compression studies, one command each.

    deepseek-ocr research synth --out synth-pages --tokens 700 --font-sizes 12,16,20 --count 3
    deepseek-ocr research compression --data synth-pages --modes tiny,small --out results
    deepseek-ocr research compression --data Fox/en_page_ocr.json --image-root Fox/en_pdf_png \\
        --modes tiny,small --out fox-table2
    deepseek-ocr research forgetting --out forgetting
    deepseek-ocr research report results --bucket-width 50 --precision fox

Every study writes its per-page records (`records.jsonl`) and protocol (`protocol.json`) first,
then tables (markdown and CSV) and plots; rerunning the same command resumes. The library side
is `deepseek_ocr.research`. Exit codes: 0 done, 1 some page failed (its record says why),
2 usage, data or protocol problem, 130 interrupted (rerun to resume).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from . import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .common import say, setup_logging

DEFAULT_MAX_NEW_TOKENS = 2048  # above the longest Fox page (about 1,300 tokens); recorded in the protocol
DEFAULT_PROMPT = "free"  # "<image>\nFree OCR.": the prompt of the paper's Table 2


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive whole numbers, got {text!r}")
    return values


def _page_size(text: str) -> tuple[int, int | None]:
    width, sep, height = text.lower().partition("x")
    try:
        return int(width), (None if height == "auto" else int(height))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT or WIDTHxauto, got {text!r}") from None


def _add_predictor_options(parser: argparse.ArgumentParser) -> None:
    from ..cli_model import DEFAULT_REPO
    g = parser.add_argument_group("model (or oracle)")
    g.add_argument("--model", default=DEFAULT_REPO,
                   help=f"checkpoint folder or hub id (default {DEFAULT_REPO}); 'random' for random weights")
    g.add_argument("--oracle-edit-rate", type=float, metavar="RATE",
                   help="no model: predictions are the ground truth with RATE edits per character "
                        "(checks the harness; see the README)")
    g.add_argument("--prompt", default=DEFAULT_PROMPT,
                   help="free (default: '<image>\\nFree OCR.', Table 2's protocol), ocr, markdown, or a "
                        "prompt with <image>")
    g.add_argument("--max-new-tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS,
                   help=f"output limit per page (default {DEFAULT_MAX_NEW_TOKENS})")
    g.add_argument("--no-repeat-ngram-size", type=int, default=20,
                   help="the official no-repeat rule (default 20; 0: off)")
    g.add_argument("--batch-size", type=int, default=8, help="pages per generate call (default 8)")
    g.add_argument("--device", help="cuda, cpu (default: cuda when available)")
    g.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), help="default bf16 on GPU, float32 on CPU")
    g.add_argument("--seed", type=int, default=0, help="seeds generation, page subsets and the oracle (default 0)")


def _add_output_options(parser: argparse.ArgumentParser, out: str) -> None:
    g = parser.add_argument_group("output")
    g.add_argument("--out", default=out, help=f"results folder (default ./{out})")
    g.add_argument("--precision", choices=("edit", "fox", "words"), default="edit",
                   help="the precision tables show: edit = 1 - edit distance (default), fox = Fox's "
                        "script's word-set precision, words = textbook word-set precision")
    g.add_argument("--no-plots", action="store_true", help="tables only (plots need matplotlib)")
    g.add_argument("--no-resume", action="store_true", help="discard the folder's earlier records")
    g.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress lines")
    g.add_argument("--verbose", action="store_true", help="log what happens (INFO) on stderr")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepseek-ocr research", description="Optical-compression studies: precision against "
        "compression ratio (the paper's Tables 2 and 3), synthetic pages, the forgetting experiment.",
        epilog="Exit codes: 0 done, 1 some page failed, 2 usage/data/protocol problem, 130 interrupted.")
    sub = ap.add_subparsers(dest="study", required=True, metavar="STUDY")

    c = sub.add_parser("compression", help="every page in every setting: records, Table 2, Table 3, plots")
    c.add_argument("--data", nargs="+", required=True,
                   help="Fox JSON, OmniDocBench.json, a synth folder, or fine-tuning data (folder, JSONL, Parquet)")
    c.add_argument("--format", default="auto", help="auto (default), fox, omnidocbench, synth, folder, jsonl, "
                                                    "conversations, messages, parquet")
    c.add_argument("--image-root", nargs="+", help="folders holding Fox / OmniDocBench page images")
    c.add_argument("--omnidocbench-target", choices=("text", "markdown"), default="text",
                   help="ground truth of OmniDocBench pages: text blocks in reading order (default) or full markdown")
    c.add_argument("--max-pages", type=int, help="a seeded random subset of this many pages")
    c.add_argument("--modes", default=None, help="comma-separated modes, e.g. tiny,small,base,large,gundam")
    c.add_argument("--mode", action="append", default=[], metavar="[LABEL=]BASE:IMAGE[:crop]",
                   help="a custom setting (repeatable), e.g. 768:512:crop or wide=1024:640:crop")
    c.add_argument("--bucket-width", type=int, default=100, help="Table 2's text-token buckets (default 100)")
    _add_predictor_options(c)
    _add_output_options(c, "research-output")

    s = sub.add_parser("synth", help="render pages with exact ground truth and token counts")
    s.add_argument("--out", default="synth-pages", help="output folder (default ./synth-pages)")
    s.add_argument("--tokens", type=_int_list, default=[700], help="text-token targets, e.g. 650,750,850 (default 700)")
    s.add_argument("--count", type=int, default=1, help="texts per target (default 1)")
    s.add_argument("--font-sizes", type=_int_list, default=[16], help="every text at each size, e.g. 12,16,20 (default 16)")
    s.add_argument("--page-size", type=_page_size, default=(1000, 1414), help="WIDTHxHEIGHT or WIDTHxauto (default 1000x1414)")
    s.add_argument("--margin", type=int, default=64, help="pixels on every side (default 64)")
    s.add_argument("--line-spacing", type=float, default=1.3, help="line pitch / font size (default 1.3)")
    s.add_argument("--font", help="a .ttf/.otf file (default: Pillow's built-in font)")
    s.add_argument("--text", help="a UTF-8 text file to use instead of generated text (paragraphs at blank lines)")
    s.add_argument("--seed", type=int, default=0, help="seeds generated text (default 0)")
    s.add_argument("--tokenizer", help="checkpoint folder whose tokenizer counts tokens (default: the bundled one)")
    s.add_argument("--json", action="store_true", help="print the pages' facts as JSON on stdout")
    s.add_argument("--quiet", action="store_true")
    s.add_argument("--verbose", action="store_true")

    f = sub.add_parser("forgetting", help="old dialogue rounds as ever smaller images (paper §5)")
    f.add_argument("--rounds", type=int, default=8, help="rounds (default 8)")
    f.add_argument("--keep", type=int, default=2, help="most recent rounds kept as text (default 2)")
    f.add_argument("--round-tokens", type=int, default=250, help="tokens of a generated round (default 250)")
    f.add_argument("--schedule", default="large,base,small,tiny",
                   help="settings by age past --keep, oldest last (default large,base,small,tiny)")
    f.add_argument("--font-size", type=int, default=20, help="round rendering (default 20)")
    f.add_argument("--width", type=int, default=1024, help="round image width (default 1024)")
    f.add_argument("--margin", type=int, default=32, help="round image margin (default 32)")
    f.add_argument("--font", help="a .ttf/.otf file (default: Pillow's built-in font)")
    f.add_argument("--text", help="a dialogue file: rounds separated by lines '---' (default: generated)")
    _add_predictor_options(f)
    _add_output_options(f, "forgetting-output")

    r = sub.add_parser("report", help="rebuild a results folder's tables and plots from its records")
    r.add_argument("folder", help="a results folder (records.jsonl, protocol.json)")
    r.add_argument("--bucket-width", type=int, default=100)
    r.add_argument("--precision", choices=("edit", "fox", "words"), default="edit")
    r.add_argument("--no-plots", action="store_true")
    r.add_argument("--json", action="store_true")
    r.add_argument("--quiet", action="store_true")
    r.add_argument("--verbose", action="store_true")
    return ap


def _check_positive(args: argparse.Namespace, names: tuple[str, ...]) -> str | None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            return f"--{name.replace('_', '-')} must be at least 1, got {value}"
    return None


def _quiet_jieba(verbose: bool) -> None:
    """jieba (Fox's Chinese segmenter, optional) logs its dictionary loading at DEBUG on stderr
    through its own handler; keep that out of the progress lines unless --verbose."""
    if verbose:
        return
    try:
        import jieba
    except ImportError:
        return
    jieba.setLogLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # --help (0) and usage errors (2), reported by argparse
        return int(exit_.code or 0)
    setup_logging(args.verbose)
    _quiet_jieba(args.verbose)
    problem = _check_positive(args, ("batch_size", "max_new_tokens", "max_pages", "bucket_width", "count",
                                     "rounds", "round_tokens", "font_size", "width"))
    if problem is None and getattr(args, "oracle_edit_rate", None) is not None \
            and not 0 <= args.oracle_edit_rate <= 1:
        problem = f"--oracle-edit-rate must be in 0..1, got {args.oracle_edit_rate}"
    if problem:
        print(f"deepseek-ocr research {args.study}: {problem}", file=sys.stderr)
        return EXIT_USAGE
    from ..errors import DeepseekOCRError
    studies = {"compression": _compression, "synth": _synth, "forgetting": _forgetting, "report": _report}
    try:
        return studies[args.study](args)
    except KeyboardInterrupt:
        print("\ninterrupted: finished batches are in records.jsonl; rerun the same command to resume",
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except DeepseekOCRError as exc:
        print(f"deepseek-ocr research {args.study}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_USAGE


def print_summary(args: argparse.Namespace, summary: dict[str, Any]) -> int:
    """The end of every study: the summary as JSON (--json) or lines; the exit code."""
    if args.json:
        print(json.dumps(summary, default=str))
    quiet = args.quiet
    for note in summary.get("notes", []):
        say(f"note: {note}", quiet)
    if "predicted" in summary:
        say(f"{summary['predicted']} run, {summary['skipped']} already done, {summary['failed']} failed", quiet)
    for path in summary.get("files", []):
        say(f"wrote {path}", quiet)
    return EXIT_FAILED if summary.get("failed") else EXIT_OK



def _progress(quiet: bool):
    def report(done: int, total: int, record: dict) -> None:
        if record.get("error"):
            what = f"failed: {record['error']}"
        else:
            what = (f"precision {record['metrics']['precision_edit']:.3f}, ratio "
                    f"{record['compression_ratio'] or 0:.1f}x, {record['output_tokens']} tokens "
                    f"({record['finish_reason']})")
        say(f"[{done}/{total}] {record['setting']} {record['page_id']}: {what}", quiet)
    return report


def _predictor(args: argparse.Namespace):
    """(predictor, token counter, tokenizer name, recorded facts), or None when the model failed
    to load (the reason is printed)."""
    from ..research import ModelPredictor, OraclePredictor, token_counter
    if args.oracle_edit_rate is not None:
        count, name = token_counter()
        return OraclePredictor(args.oracle_edit_rate, seed=args.seed, count_tokens=count), count, name, {}
    from ..cli import UsageError, resolve_prompt
    from ..cli_model import load_for_command
    from ..processing.image_io import DEFAULT_MAX_PIXELS
    try:
        prompt = resolve_prompt(args.prompt)
    except UsageError as exc:
        from ..research import SettingError
        raise SettingError(str(exc)) from None
    ocr = load_for_command(args.model, device=args.device, dtype=args.dtype, max_pixels=DEFAULT_MAX_PIXELS)
    if ocr is None:
        return None
    predictor = ModelPredictor(ocr, prompt, max_new_tokens=args.max_new_tokens, seed=args.seed,
                               no_repeat_ngram_size=args.no_repeat_ngram_size or None)
    facts = {"device": str(ocr.device), "model_argument": args.model}
    return predictor, predictor.count_tokens, f"tokenizer of {ocr.folder}", facts


def _summary(result, out: str, notes: list[str]) -> dict[str, Any]:
    return {"out": str(Path(out).resolve()), "predicted": result.sweep.predicted, "skipped": result.sweep.skipped,
            "failed": result.sweep.failed, "records": len(result.records),
            "files": [str(p) for p in result.files], "notes": notes + result.notes}


def _compression(args: argparse.Namespace) -> int:
    from ..research import load_pages, parse_settings, run_compression_study
    settings = parse_settings(args.modes, args.mode)
    pages, notes = load_pages(args.data, format=args.format, image_roots=args.image_root,
                              omnidocbench_target=args.omnidocbench_target, max_pages=args.max_pages,
                              seed=args.seed)
    say(f"{len(pages)} page(s) x {len(settings)} setting(s): {', '.join(s.name for s in settings)}", args.quiet)
    loaded = _predictor(args)
    if loaded is None:
        return EXIT_USAGE
    predictor, count, tokenizer, facts = loaded
    result = run_compression_study(
        pages, settings, predictor, args.out, count_tokens=count, tokenizer=tokenizer, seed=args.seed,
        batch_size=args.batch_size, fresh=args.no_resume, bucket_width=args.bucket_width,
        precision=args.precision, make_plots=not args.no_plots, on_progress=_progress(args.quiet),
        context={**facts, "data": [str(Path(d).resolve()) for d in args.data], "format": args.format,
                 "argv": sys.argv[1:]})
    table2 = Path(args.out) / "table2.md"
    say(table2.read_text(encoding="utf-8"), args.quiet)
    return print_summary(args, _summary(result, args.out, notes))


def _synth(args: argparse.Namespace) -> int:
    from ..research import PageGeometry, make_synthetic_pages, token_counter
    from ..research.errors import SynthError
    count, name = token_counter(args.tokenizer)
    text = None
    if args.text is not None:
        try:
            text = Path(args.text).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise SynthError(f"cannot read --text {args.text}: {exc}") from None
    width, height = args.page_size
    entries = make_synthetic_pages(args.out, targets=args.tokens, count_tokens=count, font_sizes=args.font_sizes,
                                   count=args.count, geometry=PageGeometry(width, height, args.margin,
                                                                           args.line_spacing),
                                   seed=args.seed, text=text, font_path=args.font, tokenizer_name=name)
    for e in entries:
        say(f"{e['id']}: {e['text_tokens']} tokens, {e['lines']} lines, {e['page_width']}x{e['page_height']}, "
            f"{e['font']} {e['font_size']} px", args.quiet)
    say(f"wrote {len(entries)} page(s) and synth.json to {Path(args.out).resolve()}", args.quiet)
    if args.json:
        print(json.dumps(entries))
    return EXIT_OK


def _forgetting(args: argparse.Namespace) -> int:
    from ..research import parse_settings
    from ..research.errors import SynthError
    from ..research.forgetting import ForgettingPlan, run_forgetting_study
    schedule = parse_settings(args.schedule)
    plan = ForgettingPlan(rounds=args.rounds, keep=args.keep, round_tokens=args.round_tokens,
                          font_size=args.font_size, width=args.width, margin=args.margin)
    text = None
    if args.text is not None:
        try:
            text = Path(args.text).read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise SynthError(f"cannot read --text {args.text}: {exc}") from None
    loaded = _predictor(args)
    if loaded is None:
        return EXIT_USAGE
    predictor, count, tokenizer, facts = loaded
    result = run_forgetting_study(
        args.out, plan, schedule, predictor, count_tokens=count, tokenizer=tokenizer, seed=args.seed,
        text=text, font_path=args.font, batch_size=args.batch_size, fresh=args.no_resume,
        precision=args.precision, make_plots=not args.no_plots, on_progress=_progress(args.quiet),
        context={**facts, "argv": sys.argv[1:]})
    say((Path(args.out) / "forgetting.md").read_text(encoding="utf-8"), args.quiet)
    return print_summary(args, _summary(result, args.out, []))


def _report(args: argparse.Namespace) -> int:
    from ..research import load_records, read_protocol, write_compression_reports
    from ..research.forgetting import rebuild_forgetting_report
    protocol = read_protocol(args.folder) or {}
    experiment = protocol.get("fixed", {}).get("experiment", "compression")
    if experiment == "forgetting":
        files = rebuild_forgetting_report(args.folder, precision=args.precision, make_plots=not args.no_plots)
    else:
        order = [s["name"] for s in protocol.get("settings", [])] or None
        files = write_compression_reports(args.folder, load_records(args.folder), bucket_width=args.bucket_width,
                                          precision=args.precision, settings=order, make_plots=not args.no_plots)
    return print_summary(args, {"out": str(Path(args.folder).resolve()), "files": [str(p) for p in files]})
