"""The `deepseek-ocr` command: OCR files, folders, globs and PDFs into markdown.

    deepseek-ocr scans/ report.pdf --mode gundam --out ocr-output
    deepseek-ocr page.png --model random              # no download: random weights, gibberish text
    python -m torch.distributed.run --nproc_per_node 4 -m deepseek_ocr big.pdf   # 4 GPUs

Exit codes: 0 every page done, 1 some page failed, 2 usage or model problem, 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import DeepseekOCRError, InputNotFoundError, WeightsError
from .inputs import DEFAULT_DPI, DEFAULT_MAX_PAGES, expand_inputs, parse_page_ranges
from .inputs.sources import MULTI_PAGE_IMAGE_EXTENSIONS
from .processing.views import MODES, Mode
from .weights.loading import DEFAULT_REPO

logger = logging.getLogger("deepseek_ocr.cli")

PROMPTS = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
}
LOCATE = "<image>\nLocate <|ref|>{}<|/ref|> in the image."
RANDOM_MODEL = "random"
RANDOM_SIZE = {"layers": 2, "experts": 4, "topk": 2}

EXIT_OK, EXIT_FAILED_PAGES, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class UsageError(Exception):
    """A command-line argument that cannot be used; reported with exit code 2."""


# --------------------------------------------------------------------------- arguments
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


def parse_mode(spec: str) -> str | Mode:
    """A mode name, or `BASE:IMAGE[:crop]` (e.g. `1024:640:crop`).

    Args:
        spec: the `--mode` value.
    """
    if spec.lower() in MODES:
        return spec.lower()
    parts = spec.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].lower() != "crop"):
        raise UsageError(f"--mode must be one of {sorted(MODES)} or BASE:IMAGE[:crop], got {spec!r}")
    try:
        base, image = int(parts[0]), int(parts[1])
        return Mode(base, image, len(parts) == 3, name=spec)
    except ValueError as err:
        raise UsageError(f"--mode {spec!r}: {err}") from None


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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepseek-ocr", description="OCR images and PDFs into markdown with DeepSeek-OCR.",
        epilog="Exit codes: 0 all pages done, 1 some page failed, 2 usage or model problem, "
               "130 interrupted (rerun the same command to resume).")
    ap.add_argument("inputs", nargs="+", help="image files, PDFs, folders or glob patterns")
    ap.add_argument("--model", default=DEFAULT_REPO,
                    help=f"checkpoint folder or hub repo id (default {DEFAULT_REPO}, from the hub "
                         "cache); 'random' for a small random-weight model (gibberish text)")
    ap.add_argument("--mode", default="gundam", type=str,
                    help="tiny, small, base, large, gundam (default) or BASE:IMAGE[:crop]")
    ap.add_argument("--prompt", default="markdown",
                    help=f"{', '.join(PROMPTS)} (default markdown), locate:TEXT, or a raw prompt with <image>")
    ap.add_argument("--out", default="ocr-output", help="output folder (default ./ocr-output)")
    ap.add_argument("--pages", default=None, help="pages of PDFs and multi-page TIFFs, e.g. 1-3,5,9-")
    ap.add_argument("--dpi", type=_positive_float, default=DEFAULT_DPI, help="PDF rendering dpi (default 144)")
    ap.add_argument("--password", default=None, help="password of encrypted PDFs")
    ap.add_argument("--batch-size", type=_positive_int, default=8, help="pages per forward (default 8)")
    ap.add_argument("--workers", type=_non_negative_int, default=2,
                    help="threads preparing pages ahead of the model (default 2)")
    ap.add_argument("--max-new-tokens", type=_positive_int, default=None,
                    help="output token limit per page (default: what the context allows)")
    ap.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="bfloat16, float16, float32 (default bf16 on GPU, fp32 on CPU)")
    ap.add_argument("--no-resume", action="store_true", help="redo pages an earlier run finished")
    ap.add_argument("--json", action="store_true", help="print the run summary as JSON on stdout")
    ap.add_argument("--quiet", action="store_true", help="no progress line and no human summary")
    ap.add_argument("--verbose", action="store_true", help="log what happens (INFO) on stderr")
    return ap


# ------------------------------------------------------------------------------- model
def random_model_dir() -> Path:
    """Where `--model random` keeps its checkpoint: `$DEEPSEEK_OCR_CACHE/random-demo`, by default
    `~/.cache/deepseek_ocr/random-demo`."""
    root = os.environ.get("DEEPSEEK_OCR_CACHE") or os.path.join("~", ".cache", "deepseek_ocr")
    return Path(root).expanduser() / "random-demo"


def ensure_random_model(err=sys.stderr) -> Path:
    """Build the random-weight checkpoint once; later runs (and other ranks) reuse it.

    Built in a temporary sibling folder and renamed into place, so a run killed while building
    leaves no half checkpoint, and two processes building at once both end with a whole one.
    """
    target = random_model_dir()
    if (target / "config.json").is_file():
        return target
    import torch
    from .weights.random import make_random_checkpoint
    target.parent.mkdir(parents=True, exist_ok=True)
    print(f"building a random-weight checkpoint in {target} (once; about 1 GB) ...", file=err)
    tmp = Path(tempfile.mkdtemp(prefix=".random-demo-", dir=target.parent))
    try:
        make_random_checkpoint(tmp, dtype=torch.bfloat16, **RANDOM_SIZE)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # not another process winning the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _weights_help(model: str, err: Exception) -> str:
    return (f"error: cannot load the model {model!r}: {err}\n"
            f"  To download the official weights (6.7 GB) once:\n"
            f"      huggingface-cli download {DEFAULT_REPO}\n"
            f"  or pass a local checkpoint folder with --model DIR.\n"
            f"  To try the whole pipeline without weights: --model random "
            f"(random weights: the text is gibberish).")


# -------------------------------------------------------------------------------- main
def _selected_pages(documents, spec: str | None, dpi: float, password: str | None) -> list:
    """Every selected page; --pages applies to PDFs and multi-page TIFFs only (an image has one)."""
    from .pipeline import collect_pages
    out = []
    for doc in documents:
        multi = doc.kind == "pdf" or doc.path.suffix.lower() in MULTI_PAGE_IMAGE_EXTENSIONS
        out.extend(collect_pages([doc], pages=spec if multi else None, dpi=dpi, password=password))
    return out


def _human_summary(summary: dict, out_dir: Path, documents: list, stream) -> None:
    t = summary["totals"]
    print(f"pages: {t['ok']} ok, {t['failed']} failed, {t['skipped']} skipped (of {t['pages']}) "
          f"in {t['seconds']:.1f}s; {t['pages_per_s'] or 0:.2f} pages/s, "
          f"{t['tokens_per_s'] or 0:.1f} output tokens/s", file=stream)
    for entry in summary["pages"]:
        if entry["status"] == "failed":
            print(f"  failed: {entry['source']} page {entry['page']}: {entry.get('error_type')}: "
                  f"{entry.get('error')}", file=stream)
    print(f"outputs: {out_dir.resolve()} ({len(documents)} document markdown file(s), summary.json)",
          file=stream)


def main(argv: list[str] | None = None) -> int:
    """Run the command; returns the exit code (see the module docstring).

    Args:
        argv: the arguments (default sys.argv[1:]).
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse reports usage errors itself (code 2) and --help (0)
        return int(exit_.code or 0)
    try:
        return _run(args)
    except KeyboardInterrupt:  # before or after the pages (loading, building the random model)
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    err = sys.stderr
    human = sys.stderr if args.json else sys.stdout

    from .pipeline import Group, device_for, dist_from_env, run_job
    try:
        dist = dist_from_env()
        prompt = resolve_prompt(args.prompt)
        mode = parse_mode(args.mode)
        if args.pages is not None:
            # Syntax only, against a document just long enough for every number in the spec
            # (an open range like "9-" would otherwise expand to every page of a huge count),
            # capped at the most pages a document may have.
            numbers = [int(n) for n in re.findall(r"\d+", args.pages)]
            parse_page_ranges(args.pages, min(max([1, *numbers]), DEFAULT_MAX_PAGES))
        documents = expand_inputs(args.inputs)
        pages = _selected_pages(documents, args.pages, args.dpi, args.password)
    except (UsageError, ValueError, InputNotFoundError) as e:
        print(f"error: {e}", file=err)
        return EXIT_USAGE
    if not pages:
        print("error: the inputs hold no pages", file=err)
        return EXIT_USAGE
    talk = dist.is_main and not args.quiet

    model = args.model
    random_weights = model == RANDOM_MODEL
    from .ocr import DeepseekOCR
    try:
        if random_weights:
            model = str(ensure_random_model(err))
        ocr = DeepseekOCR.from_pretrained(model, device=device_for(dist, args.device), dtype=args.dtype)
    except WeightsError as e:
        print(_weights_help(args.model, e), file=err)
        return EXIT_USAGE
    except (DeepseekOCRError, ValueError, OSError) as e:
        print(f"error: cannot load the model {args.model!r}: {e}", file=err)
        return EXIT_USAGE
    if talk:
        ndocs = len({p.document.name for p in pages})
        print(f"deepseek-ocr: {len(pages)} page(s) in {ndocs} document(s); model {model} on "
              f"{ocr.device} ({str(ocr.dtype).replace('torch.', '')}); mode {args.mode}; "
              f"output {Path(args.out).resolve()}"
              + (f"; {dist.world_size} ranks" if dist.distributed else ""), file=err)
        if random_weights:
            print("note: --model random has random weights: its text is gibberish. It shows the "
                  "pipeline end to end; use the official weights for real OCR.", file=err)

    gen = {} if args.max_new_tokens is None else {"max_new_tokens": args.max_new_tokens}
    settings = {"model": str(model), "random_weights": random_weights, "mode": args.mode,
                "prompt": prompt, "device": str(ocr.device), "dtype": str(ocr.dtype).replace("torch.", ""),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    group = Group(dist)
    try:
        report = run_job(ocr, pages, out_dir=args.out, dist=dist, group=group, progress=talk,
                         settings=settings, prompt=prompt, mode=mode, batch_size=args.batch_size,
                         workers=args.workers, resume=not args.no_resume, **gen)
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
            _human_summary(report.summary, Path(args.out), report.documents, human)
            if random_weights:
                print("(random weights: the text is gibberish)", file=human)
    return report.exit_code
