"""The compression study as one call: protocol, resumable sweep, tables and plots.

    result = run_compression_study(pages, settings, predictor, "results",
                                   count_tokens=predictor.count_tokens, tokenizer="...", seed=0)

This is what `deepseek-ocr research compression` runs once it has loaded pages and a
predictor; tests and notebooks call it directly (with the model, or an `OraclePredictor`).
"""
from __future__ import annotations

import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from .pages import Page
from .predictors import Predictor
from .records import RECORD_VERSION, RecordStore, write_protocol
from .reports import write_compression_reports
from .scoring import NORMALIZATION, PRECISION_DEFINITIONS
from .settings import Setting
from .sweep import ProgressCallback, SweepResult, run_sweep, work_items


@dataclass
class StudyResult:
    """What a study run did and wrote.

    Attributes:
        sweep: the sweep's counts and new records.
        records: every current record of the folder (this run's and earlier ones).
        files: the tables and plots written.
        notes: things worth telling (a damaged last record line dropped ...).
    """

    sweep: SweepResult
    records: list[dict[str, Any]]
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's generators (sampling, if a predictor samples)."""
    random.seed(seed)
    try:
        import torch
    except ImportError:  # an oracle-only run needs no torch
        return
    torch.manual_seed(seed)


def protocol_fixed(experiment: str, predictor: Predictor, *, seed: int, tokenizer: str,
                   **extra: Any) -> dict[str, Any]:
    """The protocol's enforced part (see `records`)."""
    from .. import __version__
    return {"experiment": experiment, "package_version": __version__, "record_version": RECORD_VERSION,
            "predictor": predictor.describe(), "seed": seed, "tokenizer": tokenizer,
            "normalization": NORMALIZATION, "precision_definitions": PRECISION_DEFINITIONS,
            "compression_ratio": "ground-truth text tokens / valid vision tokens", **extra}


def run_context(**facts: Any) -> dict[str, Any]:
    """The protocol's recorded-only part of this run: time, versions, platform, and `facts`."""
    context = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
               "platform": platform.platform()}
    try:
        import torch
        context["torch"] = torch.__version__
    except ImportError:
        pass
    return {**context, **facts}


def run_compression_study(pages: Sequence[Page], settings: Sequence[Setting], predictor: Predictor,
                          folder: str | Path, *, count_tokens: Callable[[str], int], tokenizer: str,
                          seed: int = 0, batch_size: int = 8, fresh: bool = False,
                          bucket_width: int = 100, precision: str = "edit", make_plots: bool = True,
                          context: dict[str, Any] | None = None,
                          on_progress: ProgressCallback | None = None) -> StudyResult:
    """Check or write the protocol, run what is not done, then write every table and plot.

    Args:
        pages, settings: the study's pages and settings (every page in every setting).
        predictor: the model's, the oracle's, or any `Predictor`.
        folder: the results folder.
        count_tokens, tokenizer: the ground-truth token counter and its name (for the protocol).
        seed: seeds Python and torch before the sweep (and is part of the protocol).
        batch_size: pages per predictor call.
        fresh: discard earlier records and protocol (`--no-resume`).
        bucket_width, precision, make_plots: the reports' options.
        context: extra recorded facts (data paths, device, the command line).
        on_progress: see `run_sweep`.

    Raises:
        ProtocolMismatchError: the folder was made under another protocol.
        PlotDependencyError: plots without matplotlib (records and tables are written first).
    """
    folder = Path(folder)
    store = RecordStore(folder, fresh=fresh)
    write_protocol(folder, protocol_fixed("compression", predictor, seed=seed, tokenizer=tokenizer),
                   [s.describe() for s in settings], run_context(pages=len(pages), **(context or {})),
                   fresh=fresh)
    seed_everything(seed)
    sweep = run_sweep(work_items(pages, settings), predictor, store, count_tokens=count_tokens,
                      batch_size=batch_size, on_progress=on_progress)
    # Tables cover this run's pages and settings only: a folder may hold records of earlier
    # runs over other pages, which `deepseek-ocr research report` can still tabulate.
    wanted = {(p.id, s.name) for p in pages for s in settings}
    records = [r for r in store if (r["page_id"], r["setting"]) in wanted]
    files = write_compression_reports(folder, records, bucket_width=bucket_width, precision=precision,
                                      settings=[s.name for s in settings], make_plots=make_plots)
    return StudyResult(sweep, records, files, list(store.notes))
