"""`deepseek-ocr eval`: a model (and optionally a LoRA adapter) on a dataset -> loss, CER, WER, NED.

    deepseek-ocr eval --model run/model --data test/ --out eval-out
    deepseek-ocr eval --model deepseek-ai/DeepSeek-OCR --adapter run/adapter --data test.jsonl

Prints the summary, and writes `OUT/metrics.json` and `OUT/predictions.jsonl` (one line per
sample: source, reference, prediction, finish_reason and its scores).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .common import format_metrics, parse_args, say, write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepseek-ocr eval", description="Evaluate DeepSeek-OCR on a dataset: held-out loss and "
                                              "perplexity, CER/WER/NED of greedy outputs, repetition loops.",
        epilog="Exit codes: 0 done, 1 the evaluation failed, 2 usage problem, 130 interrupted.")
    a = ap.add_argument
    a("--model", default="deepseek-ai/DeepSeek-OCR", help="checkpoint folder or hub repo id")
    a("--adapter", help="a PEFT LoRA adapter folder to merge into the model first")
    a("--data", nargs="+", required=True, help="files/folders in any training data format")
    a("--format", dest="data_format", default="auto")
    a("--image-root", help="folder that relative image paths in JSONL/Parquet start from")
    a("--mode", default="gundam", help="default mode of samples without their own (default gundam)")
    a("--prompt", help="default prompt of records without one")
    a("--max-samples", type=int, help="only the first N samples")
    a("--batch-size", type=int, default=8, help="samples per batch (default 8)")
    a("--max-new-tokens", type=int, help="generation limit (default: twice the longest reference + 16)")
    a("--no-repeat-ngram-size", type=int, default=20, help="as at inference (default 20; 0: off)")
    a("--no-loss", action="store_true", help="skip the held-out loss")
    a("--no-generation", action="store_true", help="skip generation (loss and perplexity only)")
    a("--device", help="cuda, cpu (default: cuda when available)")
    a("--dtype", choices=("float32", "bfloat16", "float16"), help="default bf16 on GPU, float32 on CPU")
    a("--out", default="eval-output", help="folder for metrics.json and predictions.jsonl")
    a("--json", action="store_true", help="print the metrics as JSON on stdout")
    a("--quiet", action="store_true")
    a("--verbose", action="store_true")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    for name in ("batch_size", "max_new_tokens", "max_samples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            print(f"deepseek-ocr eval: --{name.replace('_', '-')} must be at least 1", file=sys.stderr)
            return EXIT_USAGE
    if args.no_loss and args.no_generation:
        print("deepseek-ocr eval: --no-loss and --no-generation leave nothing to do", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _evaluate(args)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _evaluate(args: argparse.Namespace) -> int:
    from ..errors import DeepseekOCRError
    from ..ocr import DeepseekOCR
    from ..training.config import TrainConfig
    from ..training.evaluate import evaluate
    from ..training.run import load_dataset

    quiet = args.quiet
    try:
        ocr = DeepseekOCR.from_pretrained(args.model, device=args.device, dtype=args.dtype, adapter=args.adapter)
        # The readers' settings travel in a TrainConfig, as for training (max_steps: unused here).
        cfg = TrainConfig(model=args.model, data=list(args.data), data_format=args.data_format,
                          image_root=args.image_root, mode=args.mode, prompt=args.prompt, max_steps=1)
        dataset, report = load_dataset(ocr, cfg, cfg.data, limit=args.max_samples)
        say(f"evaluation data: {report.summary()}", quiet)
        out = Path(args.out)
        result = evaluate(ocr, dataset, batch_size=args.batch_size, loss=not args.no_loss,
                          generation=not args.no_generation, max_new_tokens=args.max_new_tokens,
                          no_repeat_ngram_size=args.no_repeat_ngram_size or None,
                          predictions_path=None if args.no_generation else out / "predictions.jsonl")
    except DeepseekOCRError as exc:
        print(f"deepseek-ocr eval: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary = {"model": args.model, "adapter": args.adapter, **result.to_dict()}
    write_json(out / "metrics.json", summary)
    if args.json:
        print(json.dumps(summary))
    say(format_metrics(summary), quiet)
    say(f"wrote {out / 'metrics.json'}" + ("" if args.no_generation else f" and {out / 'predictions.jsonl'}"), quiet)
    return EXIT_OK
