"""Pieces the `train` and `eval` subcommands share: logging setup, printing, JSON output."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any


def parse_args(parser, argv: list[str] | None):
    """The parsed arguments with logging set up, or the exit code argparse chose (`--help`: 0,
    a usage error: 2) for the caller to return instead of letting SystemExit escape."""
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    setup_logging(args.verbose)
    return args


def setup_logging(verbose: bool) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def say(text: str, quiet: bool = False) -> None:
    """Human-readable progress on stderr (stdout is kept for --json)."""
    if not quiet:
        print(text, file=sys.stderr, flush=True)


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def format_metrics(summary: dict) -> str:
    parts = []
    for key in ("loss", "perplexity", "cer", "wer", "ned"):
        value = summary.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{key} {value:.4f}")
    if "count" in summary:
        parts.append(f"samples {summary['count']}")
    if "repetition" in summary:
        parts.append(f"repetition loops {summary['repetition']}")
    return ", ".join(parts)
