"""Subcommands of `deepseek-ocr`: `train`, `eval`, `research` and `serve` (the OCR command itself is `cli.py`).

`cli.main` hands `deepseek-ocr train ...` / `deepseek-ocr eval ...` to `dispatch`. Modules here
import torch only after their arguments are parsed and checked, so `--help` answers at once.
Exit codes as the main command: 0 done, 1 the run failed, 2 usage or configuration problem,
130 interrupted (a checkpoint was written; `--resume auto` continues).
"""
from __future__ import annotations

SUBCOMMANDS = ("train", "eval", "research", "serve")
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def dispatch(name: str, argv: list[str]) -> int:
    if name == "train":
        from .train import main
    elif name == "eval":
        from .eval import main
    elif name == "research":
        from .research import main
    elif name == "serve":
        from .serve import main
    else:
        raise ValueError(f"unknown subcommand {name!r}")
    return main(argv)
