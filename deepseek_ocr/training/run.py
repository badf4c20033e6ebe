"""A whole run from a `TrainConfig`: load the model, read the data, train (what `deepseek-ocr
train` calls).

    >>> result = run_training(TrainConfig(model="ckpt/", data=["pages/"], lora_r=16, max_steps=500,
    ...                                   output_dir="run"), resume="auto")
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from .checkpoint import resolve_resume
from .config import TrainConfig
from .data import SampleDataset, read_dataset
from .data.records import DataReport
from .distributed import world
from .trainer import Trainer, TrainingError, TrainResult

logger = logging.getLogger(__name__)


def _reader_options(path: str, cfg_format: str, prompt: str | None, image_root: str | None,
                    on_error: str) -> dict:
    """The reader options that apply to `path` (the readers name their prompt option differently)."""
    p = Path(path)
    is_folder = cfg_format == "folder" or (cfg_format == "auto" and p.is_dir() and not any(p.glob("*.parquet")))
    options: dict = {"on_error": on_error}
    if prompt is not None:
        options["prompt" if is_folder else "default_prompt"] = prompt
    if image_root is not None and not is_folder:
        options["image_root"] = image_root
    return options


def load_dataset(ocr, cfg: TrainConfig, paths: list[str], *, limit: int | None = None
                 ) -> tuple[SampleDataset, DataReport]:
    """Read `paths` with the run's reader settings into a lazy `SampleDataset`."""
    samples, report = [], DataReport()
    for path in paths:
        part = read_dataset(path, format=cfg.data_format,
                            **_reader_options(path, cfg.data_format, cfg.prompt, cfg.image_root, cfg.on_error))
        samples += part.samples
        report.merge(part.report)
    if limit is not None:
        samples = samples[:limit]
    if not samples:
        raise TrainingError(f"no usable sample in {', '.join(paths)}:\n{report.summary()}")
    dataset = SampleDataset(ocr, samples, default_mode=cfg.mode, max_length=cfg.max_length,
                            length_policy=cfg.length_policy)
    report.merge(dataset.report)
    report.kept = len(dataset)
    return dataset, report


def load_base_model(cfg: TrainConfig):
    """The base model with float32 master weights on the run's device (LoRA comes later)."""
    from ..ocr import DeepseekOCR
    device = cfg.device
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return DeepseekOCR.from_pretrained(cfg.model, device=device, dtype="float32")


def build_trainer(cfg: TrainConfig, *, resume: str | None = None, ocr=None,
                  on_step: Callable | None = None, on_report: Callable[[str], None] | None = None) -> Trainer:
    """Load everything `cfg` names and return the ready `Trainer` (`resume`: a checkpoint path,
    "auto" for the latest in `output_dir` (a fresh start when there is none), or None)."""
    checkpoint = resolve_resume(resume, cfg.output_dir)
    if ocr is None:
        ocr = load_base_model(cfg)
    train_set, report = load_dataset(ocr, cfg, cfg.data)
    if on_report is not None:
        on_report(f"training data: {report.summary()}")
    eval_set = None
    if cfg.eval_data:
        eval_set, eval_report = load_dataset(ocr, cfg, cfg.eval_data, limit=cfg.eval_max_samples)
        if on_report is not None:
            on_report(f"evaluation data: {eval_report.summary()}")
    trainer = Trainer(ocr, cfg, train_set, eval_set, resume=checkpoint, on_step=on_step)
    if on_report is not None:
        on_report(str(trainer.summary))
        on_report(f"{trainer.total_steps} steps of {cfg.samples_per_step} sample(s) per rank "
                  f"({len(train_set)} samples, world size {world()[1]})"
                  + (f"; resuming from {checkpoint} at step {trainer.state.step}" if checkpoint else ""))
    if world()[0] == 0:
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n", encoding="utf-8")
    return trainer


def run_training(cfg: TrainConfig, *, resume: str | None = None, ocr=None,
                 on_report: Callable[[str], None] | None = None) -> TrainResult:
    return build_trainer(cfg, resume=resume, ocr=ocr, on_report=on_report).train()
