"""What a run reports as it goes: a JSONL log, TensorBoard (when installed), a progress bar.

`log.jsonl` holds one JSON object per logged step (`{"step", "loss", "ce", "aux", "lr",
"grad_norm", "tokens_per_s", "samples_per_s", "samples", "tokens", "epoch", "time"}`), one per
evaluation (`{"step", "eval": {...}}`) and a few events (`{"event": "start" | "resume" |
"interrupted" | "end", ...}`). On resume, lines past the checkpoint's step are removed first,
so the file tells the story of the weights that exist.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LOG_NAME = "log.jsonl"


def _clean(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as strings rather than produce an unreadable line."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    return value


def truncate_log(path: Path, step: int) -> None:
    """Keep only the records of steps <= `step` (and events before them)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash: drop it
            continue
        if record.get("step", 0) <= step:
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


class Monitor:
    """Writes the JSONL log, TensorBoard scalars and the progress bar (rank 0 only).

    Args:
        output_dir: the run folder.
        total: optimizer steps of the run; initial: steps already done (a resumed run).
        enabled: False on ranks other than 0 (everything becomes a no-op).
        progress: draw a tqdm bar on stderr.
        tensorboard: write `output_dir/tensorboard` when torch.utils.tensorboard imports.
    """

    def __init__(self, output_dir: str | os.PathLike, *, total: int, initial: int = 0, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / LOG_NAME
        self._bar = None
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        truncate_log(self.path, initial)
        self._file = open(self.path, "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=initial + 1)
            except ImportError:  # tensorboard is optional
                logger.info("tensorboard is not installed: logging to %s only", self.path)
        if progress:
            try:
                from tqdm import tqdm
                self._bar = tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
            except ImportError:
                logger.info("tqdm is not installed: no progress bar")

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(_clean({**record, "time": round(time.time(), 3)}), ensure_ascii=False) + "\n")
        self._file.flush()
        if self._tb is not None and "step" in record:
            for key, value in record.items():
                if key in ("loss", "ce", "aux", "lr", "grad_norm", "tokens_per_s") and isinstance(value, (int, float)):
                    self._tb.add_scalar(f"train/{key}", value, record["step"])
            for key, value in (record.get("eval") or {}).items():
                if isinstance(value, (int, float)) and value is not None:
                    self._tb.add_scalar(f"eval/{key}", value, record["step"])

    def advance(self, n: int, record: dict | None = None) -> None:
        if self._bar is None:
            return
        if record is not None and record.get("loss") is not None:  # a skipped step has no loss
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                                  tok_s=f"{record.get('tokens_per_s', 0):.0f}", refresh=False)
        self._bar.update(n)

    def note(self, text: str) -> None:
        """A line above the bar (or the log when there is none)."""
        if self._bar is not None:
            self._bar.write(text)
        else:
            logger.info(text)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        self._file.close()
