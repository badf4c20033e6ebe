"""`deepseek-ocr train`: fine-tune from a config file and/or flags.

    deepseek-ocr train --model deepseek-ai/DeepSeek-OCR --data pages/ --lora-r 16 --max-steps 500 --out run
    deepseek-ocr train --config run.toml --resume auto          # continue after an interruption
    deepseek-ocr scans/ --model run/model                       # OCR with the merged result

Flags override the file's settings (the names are `TrainConfig`'s, dashes for underscores).
The run writes `OUT/log.jsonl`, `OUT/checkpoints/step-N/`, `OUT/eval/step-N.jsonl`, and at the
end `OUT/adapter/` (LoRA, PEFT format) and `OUT/model/` (official layout, LoRA merged).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..training.config import (COMPILE_MODES, COMPILE_SCOPES, DTYPES, NONFINITE_POLICIES, PRESETS, SCHEDULES,
                               TrainConfig, TrainConfigError)
from . import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .common import parse_args, say, write_json


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepseek-ocr train", description="Fine-tune DeepSeek-OCR (LoRA or full) on your documents.",
        epilog="Exit codes: 0 done, 1 the run failed (data, NaN loss, out of memory), 2 usage or "
               "configuration problem, 130 interrupted (a checkpoint was written: rerun with --resume auto).")
    a = ap.add_argument
    a("--config", help="a .toml or .json file of settings (flags override it)")
    g = ap.add_argument_group("model and data")
    g.add_argument("--model", help="base checkpoint folder or hub repo id (default deepseek-ai/DeepSeek-OCR)")
    g.add_argument("--data", nargs="+", help="training files/folders: conversations or messages JSONL, "
                                             "Parquet, or a folder of images with .md/.txt beside them")
    g.add_argument("--eval-data", nargs="+", help="held-out data (same formats)")
    g.add_argument("--eval-max-samples", type=int, help="evaluate on the first N held-out samples")
    g.add_argument("--format", dest="data_format", help="auto (default), conversations, messages, jsonl, parquet, folder")
    g.add_argument("--image-root", help="folder that relative image paths in JSONL/Parquet start from")
    g.add_argument("--on-error", choices=("stop", "skip"), help="a bad record stops the run (default) or is skipped")
    g.add_argument("--mode", help="default mode: tiny, small, base, large, gundam (default) or BASE:IMAGE[:crop]")
    g.add_argument("--prompt", help="default prompt of records without one (default '<image>\\nFree OCR.')")
    g.add_argument("--max-length", type=int, help="longest sequence (prompt + image + answer) allowed")
    g.add_argument("--length-policy", choices=("error", "drop"), help="over max-length: error (default) or drop")
    g = ap.add_argument_group("what is trained")
    g.add_argument("--preset", choices=PRESETS, help="decoder (default), paper (CLIP+projector+decoder), all, lora")
    g.add_argument("--lora-r", type=int, help="train a LoRA adapter of this rank (e.g. 16)")
    g.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: r)")
    g.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0)")
    g.add_argument("--lora-targets", nargs="+", help="official module names, or all-linear "
                                                     "(default q/k/v/o and gate/up/down, experts included)")
    g.add_argument("--lora-rslora", action="store_const", const=True, help="rank-stabilized scaling alpha/sqrt(r)")
    g = ap.add_argument_group("optimization")
    g.add_argument("--lr", type=float, help="peak learning rate (default 2e-4 LoRA, 3e-5 full)")
    g.add_argument("--vision-lr-scale", type=float,
                   help="SAM's and CLIP's learning rate as a multiple of --lr (default 1; e.g. 0.3 with --preset paper)")
    g.add_argument("--weight-decay", type=float)
    g.add_argument("--warmup-steps", type=int)
    g.add_argument("--schedule", choices=SCHEDULES)
    g.add_argument("--max-steps", type=int, help="optimizer steps (and/or --epochs; the first reached ends)")
    g.add_argument("--epochs", type=float)
    g.add_argument("--batch-size", type=int, help="samples per micro-batch (default 1)")
    g.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (default 1)")
    g.add_argument("--max-grad-norm", type=float, help="clip the gradient norm (default 1.0; 0: off)")
    g.add_argument("--on-nonfinite", choices=NONFINITE_POLICIES,
                   help="a NaN/Inf loss or gradient norm stops the run (default) or skips that step's update "
                        "(10 in a row still stop it)")
    g.add_argument("--gradient-checkpointing", action="store_const", const=True)
    g.add_argument("--no-aux-loss", dest="aux_loss", action="store_const", const=False,
                   help="leave out the MoE balance loss")
    g.add_argument("--seed", type=int)
    g.add_argument("--dtype", choices=DTYPES, help="auto (bf16 autocast on CUDA, float32 on CPU)")
    g.add_argument("--master-weights", dest="master_weights", action="store_const", const=True,
                   help="train bf16 copies of the matmul weights with float32 masters instead of autocast's "
                        "casts at every use (off by default: measured slower and larger on an H200)")
    g.add_argument("--no-master-weights", dest="master_weights", action="store_const", const=False,
                   help="autocast's casts of the float32 weights at every use (the default)")
    g.add_argument("--no-bf16-frozen-base", dest="bf16_frozen_base", action="store_const", const=False,
                   help="keep a frozen decoder base (LoRA) in float32 instead of bf16 (where bf16 is exact)")
    g.add_argument("--compile", choices=COMPILE_SCOPES,
                   help="torch.compile the decoder's layers, CLIP's, or all of both for the training steps "
                        "(fuses each layer's glue: fewer launches for the host)")
    g.add_argument("--compile-mode", choices=COMPILE_MODES,
                   help="default, or reduce-overhead (the compiled layers replayed as CUDA graphs: the fastest "
                        "where every batch has one length; CUDA, one process, no gradient checkpointing or --grad-accum)")
    g.add_argument("--device", help="cuda, cuda:1, cpu (default: cuda when available)")
    g.add_argument("--strategy", choices=("ddp", "fsdp"),
                   help="under torchrun: ddp (default; LoRA or full) or fsdp (FSDP2 sharding, full fine-tuning)")
    g = ap.add_argument_group("output")
    g.add_argument("--out", dest="output_dir", help="run folder (default ./train-output)")
    g.add_argument("--resume", help="a checkpoint folder, or 'auto' for the latest in --out")
    g.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default 500)")
    g.add_argument("--keep-checkpoints", type=int, help="checkpoints kept (default 3)")
    g.add_argument("--eval-every", type=int, help="steps between evaluations (default 0: at the end)")
    g.add_argument("--eval-batch-size", type=int)
    g.add_argument("--eval-max-new-tokens", type=int)
    g.add_argument("--log-every", type=int, help="steps between log lines (default 10)")
    g.add_argument("--no-save-model", dest="save_model", action="store_const", const=False,
                   help="do not write OUT/model (the merged model in the official layout)")
    g.add_argument("--cache-vision", action="store_const", const=True,
                   help="with a frozen vision tower, encode each image once and keep its rows in memory")
    g.add_argument("--prepare-workers", type=int,
                   help="threads preparing the next step's samples while a step trains (default 2; 0: in the loop)")
    g.add_argument("--no-tensorboard", dest="tensorboard", action="store_const", const=False)
    g.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    g.add_argument("--quiet", action="store_true", help="no progress bar and no messages")
    g.add_argument("--verbose", action="store_true", help="log what happens (INFO) on stderr")
    return ap


_NOT_CONFIG = {"config", "resume", "json", "quiet", "verbose"}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}
    if args.quiet:
        overrides["progress"] = False
    if overrides.get("lora_targets") == ["all-linear"]:
        overrides["lora_targets"] = "all-linear"
    return TrainConfig.from_file(args.config, overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        cfg = config_from_args(args)
    except TrainConfigError as exc:
        print(f"deepseek-ocr train: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _train(cfg, args)
    except KeyboardInterrupt:  # a second Ctrl-C, or one while loading
        print("\ninterrupted (no checkpoint written for the current step)", file=sys.stderr)
        return EXIT_INTERRUPTED


def _train(cfg: TrainConfig, args: argparse.Namespace) -> int:
    import json

    from ..errors import DeepseekOCRError
    from ..training.checkpoint import CheckpointError
    from ..training.run import run_training
    from ..training.trainer import TrainingError

    quiet = args.quiet
    try:
        result = run_training(cfg, resume=args.resume, on_report=lambda text: say(text, quiet))
    except (CheckpointError, TrainingError) as exc:
        print(f"deepseek-ocr train: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, TrainingError) else EXIT_USAGE
    except DeepseekOCRError as exc:  # data, weights, adapter: the inputs cannot be used
        print(f"deepseek-ocr train: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    summary = {"step": result.step, "interrupted": result.interrupted,
               # The last applied step's (a step skipped for a NaN/Inf loss has none).
               "final_loss": next((r["loss"] for r in reversed(result.losses) if r["loss"] is not None), None),
               "skipped_steps": sum(r["loss"] is None for r in result.losses),
               "checkpoint": result.checkpoint, "adapter": result.adapter_dir, "model": result.model_dir,
               "eval": result.eval}
    write_json(Path(cfg.output_dir) / "result.json", summary)
    if args.json:
        print(json.dumps(summary, default=str))
    if result.interrupted:
        say(f"interrupted at step {result.step}; checkpoint {result.checkpoint}. "
            f"Continue with: deepseek-ocr train ... --resume auto", quiet)
        return EXIT_INTERRUPTED
    skipped = f" ({summary['skipped_steps']} skipped for a NaN/Inf loss)" if summary["skipped_steps"] else ""
    say(f"done: {result.step} steps{skipped}, final loss {summary['final_loss']}", quiet)
    for label, path in (("adapter", result.adapter_dir), ("model", result.model_dir)):
        if path is not None:
            say(f"{label}: {path}", quiet)
    if result.model_dir is not None:
        say(f"OCR with it: deepseek-ocr IMAGES --model {result.model_dir}", quiet)
    return EXIT_OK
