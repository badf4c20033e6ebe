"""The `deepseek-ocr` command: OCR files, folders, globs and PDFs into markdown.

    deepseek-ocr scans/ report.pdf --mode gundam --out ocr-output
    deepseek-ocr page.png --model random              # no download: random weights, gibberish text
    python -m torch.distributed.run --nproc_per_node 4 -m deepseek_ocr big.pdf   # 4 GPUs

Exit codes: 0 every page done, 1 some page failed or some input was missing, 2 usage or model
problem, 130 interrupted.

Order of work: the arguments (and the output folder) are checked first, without importing
torch, so that `--help` and a mistyped option answer at once; then the inputs are listed and
their headers read; then the device is checked; only then is the model loaded. A run whose
every page is already known to fail loads no model at all.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from .cli_model import DEFAULT_REPO, RANDOM_MODEL, device_problem, load_for_command
from .inputs import DEFAULT_DPI, DEFAULT_MAX_PAGES, InvalidPageRangeError, parse_page_ranges, select_pages
from .processing.image_io import DEFAULT_MAX_PIXELS
from .processing.views import MODES, Mode, resolve_mode
from .prompts import LOCATE, PROMPTS  # the presets live below the CLI, where the server finds them too

logger = logging.getLogger("deepseek_ocr.cli")

DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")

EXIT_OK, EXIT_FAILED_PAGES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A command-line argument that cannot be used; reported with exit code 2."""


# --------------------------------------------------------------------------- arguments
def _batch_size(args, ocr) -> int:
    """The asked-for batch, or 64 pages on a GPU (the engine's decode step is cheap per row there)
    and 8 on the CPU (where each row costs its share of the matmuls, and pages wait in memory)."""
    if args.batch_size is not None:
        return args.batch_size
    return 64 if ocr is not None and ocr.device.type == "cuda" else 8


def resolve_prompt(spec: str) -> str:
    """A preset name, `locate:TEXT`, or a raw prompt holding `<image>` (a typed `\\n` is a newline).

    Args:
        spec: the `--prompt` value.
    """
    if spec in PROMPTS:
        return PROMPTS[spec]
    if spec.startswith("locate:"):
        text = spec[len("locate:"):].strip()
        if not text:
            raise UsageError("--prompt locate:TEXT needs the text to find")
        return LOCATE.format(text)
    prompt = spec.replace("\\n", "\n")  # shells pass "\n" as two characters
    if prompt.count("<image>") != 1:
        raise UsageError(f"--prompt must be one of {sorted(PROMPTS)}, locate:TEXT, or a prompt with "
                         f"<image> exactly once; got {spec!r}")
    return prompt


def parse_mode(spec: str) -> Mode:
    """A mode name, or `BASE:IMAGE[:crop]` (e.g. `1024:640:crop`), as `resolve_mode` reads them.

    Args:
        spec: the `--mode` value.
    """
    try:
        return resolve_mode(spec)
    except ValueError as err:  # ModeError
        raise UsageError(f"--mode: {err}") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def generation_options(args: argparse.Namespace) -> dict:
    """The `generate` keywords the command's options ask for."""
    gen = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    if args.ignore_eos:
        gen["ignore_eos"] = True
    return gen


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepseek-ocr", description="OCR images and PDFs into markdown with DeepSeek-OCR.",
        epilog="Exit codes: 0 all pages done, 1 some page failed or an input was missing, 2 usage or "
               "model problem, 130 interrupted (rerun the same command to resume).")
    ap.add_argument("inputs", nargs="+", help="image files, PDFs, folders or glob patterns")
    ap.add_argument("--model", default=DEFAULT_REPO,
                    help=f"checkpoint folder or hub repo id (default {DEFAULT_REPO}, from the hub "
                         "cache); 'random' for a small random-weight model (gibberish text)")
    ap.add_argument("--mode", default="gundam", type=str,
                    help=f"{', '.join(MODES)} (default gundam) or BASE:IMAGE[:crop], e.g. 1024:640:crop")
    ap.add_argument("--prompt", default="markdown",
                    help=f"{', '.join(PROMPTS)} (default markdown), locate:TEXT, or a raw prompt with <image>")
    ap.add_argument("--out", default="ocr-output", help="output folder (default ./ocr-output)")
    ap.add_argument("--pages", default=None,
                    help="pages of PDFs and multi-page TIFFs, e.g. 1-3,5,9- (cut at each document's end)")
    ap.add_argument("--dpi", type=_positive_float, default=DEFAULT_DPI, help="PDF rendering dpi (default 144)")
    ap.add_argument("--max-pixels", type=_positive_int, default=DEFAULT_MAX_PIXELS,
                    help=f"largest image accepted, in pixels (default {DEFAULT_MAX_PIXELS}, 64 Mpx); "
                         "PDF pages over it are rendered at a lower dpi")
    ap.add_argument("--password", default=None, help="password of encrypted PDFs")
    ap.add_argument("--batch-size", type=_positive_int, default=None,
                    help="pages decoding at once; a page joins as soon as another ends "
                         "(default 64 on a GPU, 8 on the CPU)")
    ap.add_argument("--workers", type=_non_negative_int, default=2,
                    help="threads preparing pages ahead of the model (default 2)")
    ap.add_argument("--max-new-tokens", type=_positive_int, default=None,
                    help="output token limit per page (default: what the context allows)")
    ap.add_argument("--ignore-eos", action="store_true",
                    help="decode every page to --max-new-tokens, past the end-of-text token (for "
                         "benchmarks: the same work per page whatever the weights)")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, choices=DTYPE_NAMES,
                    help="bfloat16, float16, float32 (default bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--no-resume", action="store_true",
                    help="redo pages an earlier run finished (pages done with other settings are redone anyway)")
    ap.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress display and no human summary")
    ap.add_argument("--verbose", action="store_true", help="log what happens (INFO) on stderr")
    return ap


def check_out_dir(out: str) -> bool:
    """Make sure `out` is a folder this process can write in; returns whether it was created.

    Checked by writing a probe file, since permission bits say nothing for root or on a
    read-only mount.
    """
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {out}: exists and is not a folder")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {out}: cannot create the folder: {err.strerror or err}") from None
    try:
        fd, probe = tempfile.mkstemp(prefix=".deepseek-ocr-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        if created:
            _remove_empty(path)
        raise UsageError(f"--out {out}: cannot write in the folder: {err.strerror or err}") from None
    return created


def _remove_empty(path: Path) -> None:
    try:
        path.rmdir()  # only if empty: a usage error should not leave a folder behind
    except OSError:
        pass


# -------------------------------------------------------------------------------- main
def _human_summary(summary: dict, out_dir: Path, documents: list, missing: list, stream) -> None:
    t = summary["totals"]
    print(f"pages: {t['ok']} ok, {t['failed']} failed, {t['skipped']} skipped (of {t['pages']}) "
          f"in {t['seconds']:.1f}s; {t['pages_per_s'] or 0:.2f} pages/s, "
          f"{t['tokens_per_s'] or 0:.1f} output tokens/s", file=stream)
    if t.get("redone"):
        print(f"  {t['redone']} page(s) redone: done before with other settings", file=stream)
    for entry in summary["pages"]:
        if entry["status"] == "failed" and not entry.get("earlier"):
            print(f"  failed: {entry['source']} page {entry['page']}: {entry.get('error_type')}: "
                  f"{entry.get('error')}", file=stream)
    for message in missing:
        print(f"  missing: {message}", file=stream)
    earlier = f"; summary.json also lists {t['earlier']} page(s) of earlier runs" if t.get("earlier") else ""
    print(f"outputs: {out_dir.resolve()} ({len(documents)} document markdown file(s), summary.json{earlier})",
          file=stream)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (see the module docstring).

    Args:
        argv: the arguments (default sys.argv[1:]).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("train", "eval", "research", "serve"):  # subcommands (deepseek_ocr/commands); OCR a file so named as ./train
        from .commands import dispatch
        return dispatch(argv[0], argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_intermixed_args(argv)  # inputs may come after options too
    except SystemExit as exit_:  # argparse reports usage errors itself (code 2) and --help (0)
        return int(exit_.code or 0)
    try:
        return _run(args)
    except KeyboardInterrupt:  # before or after the pages (loading, building the random model)
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _check_arguments(args: argparse.Namespace) -> tuple[str, Mode]:
    """Every check that needs no file and no torch; raises UsageError."""
    prompt = resolve_prompt(args.prompt)
    mode = parse_mode(args.mode)
    if args.pages is not None:
        try:
            parse_page_ranges(args.pages, DEFAULT_MAX_PAGES, clip=True)  # the syntax only
        except InvalidPageRangeError as err:
            raise UsageError(f"--pages: {err}") from None
    return prompt, mode


def _run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    err = sys.stderr
    created = False
    try:
        prompt, mode = _check_arguments(args)
        created = check_out_dir(args.out)
        sel = select_pages(args.inputs, pages=args.pages, dpi=args.dpi, password=args.password,
                           max_pixels=args.max_pixels)
        missing = [str(e) for e in sel.missing]
        for message in missing:
            print(f"error: {message}", file=err)
        if sel.beyond_every_input:
            counts = ", ".join(f"{doc.path.name}: {n} page(s)" for doc, n in sel.beyond)
            raise UsageError(f"--pages {args.pages} is past the end of every input ({counts})")
        if not sel.pages:
            raise UsageError("the inputs hold no pages" if not missing else "no input left to read")
        for note in sel.notes:
            print(f"note: {note}", file=err)
        needs_model = bool(sel.readable)
        problem = device_problem(args.device) if needs_model else None
        if problem is not None:
            raise UsageError(problem)
    except UsageError as e:
        print(f"error: {e}", file=err)
        if created:
            _remove_empty(Path(args.out).expanduser())
        return EXIT_USAGE
    return _run_pages(args, sel.pages, prompt, mode, missing, needs_model)


def _render_settings(args: argparse.Namespace):
    """What a page's pixels depend on besides its file: for PDF pages the dpi and the pixel cap
    (a page over it is rendered smaller); an image is decoded as it is."""
    pdf = {"dpi": args.dpi, "max_pixels": args.max_pixels}
    return lambda page: pdf if page.document.kind == "pdf" else {}


def _run_pages(args: argparse.Namespace, pages: list, prompt: str, mode: Mode, missing: list[str],
               needs_model: bool) -> int:
    from PIL import Image

    from .pipeline import Group, dist_from_env, run_job
    err = sys.stderr
    human = sys.stderr if args.json else sys.stdout
    try:
        dist = dist_from_env()
    except ValueError as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    if Image.MAX_IMAGE_PIXELS is not None and args.max_pixels > Image.MAX_IMAGE_PIXELS:
        # The command's --max-pixels is the one limit: Pillow's bomb guard (which refuses at twice
        # this value whatever the library is asked) follows it. The library never changes it.
        Image.MAX_IMAGE_PIXELS = args.max_pixels
    talk = dist.is_main and not args.quiet
    random_weights = args.model == RANDOM_MODEL
    ocr = None
    if needs_model:
        from .pipeline import device_for
        ocr = load_for_command(args.model, device=device_for(dist, args.device), dtype=args.dtype,
                               max_pixels=args.max_pixels, err=err)
        if ocr is None:
            return EXIT_USAGE
    if talk:
        ndocs = len({p.document.name for p in pages})
        where = (f"model {ocr.folder} on {ocr.device} ({str(ocr.dtype).replace('torch.', '')})" if ocr
                 else "no page can be read, so no model is loaded")
        print(f"deepseek-ocr: {len(pages)} page(s) in {ndocs} document(s); {where}; mode {mode.name}; "
              f"output {Path(args.out).resolve()}" + (f"; {dist.world_size} ranks" if dist.distributed else ""),
              file=err)
        if random_weights and ocr is not None:
            print("note: --model random has random weights: its text is gibberish. It shows the "
                  "pipeline end to end; use the official weights for real OCR.", file=err)

    gen = generation_options(args)
    settings = {"model": str(ocr.folder) if ocr else args.model, "random_weights": random_weights,
                "mode": mode.name, "prompt": prompt,
                "device": str(ocr.device) if ocr else None,
                "dtype": str(ocr.dtype).replace("torch.", "") if ocr else None,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "missing_inputs": missing}
    group = Group(dist)
    try:
        report = run_job(ocr, pages, out_dir=args.out, dist=dist, group=group, progress=talk,
                         settings=settings, prompt=prompt, mode=mode, batch_size=_batch_size(args, ocr),
                         workers=args.workers, resume=not args.no_resume,
                         page_settings=_render_settings(args), **gen)
    except KeyboardInterrupt:
        print("\ninterrupted: the files written so far are complete; run the same command again "
              "to resume", file=err)
        return EXIT_INTERRUPTED
    finally:
        group.close()
    if dist.is_main:
        if args.json:
            json.dump(report.summary, sys.stdout, ensure_ascii=False)
            sys.stdout.write("\n")
            sys.stdout.flush()
        if not args.quiet:
            _human_summary(report.summary, Path(args.out), report.documents, missing, human)
            if random_weights and ocr is not None:
                print("(random weights: the text is gibberish)", file=human)
    return max(report.exit_code, EXIT_FAILED_PAGES if missing else EXIT_OK)
