"""The sweep: every (page, setting) work item through a predictor, one scored record each.

    store = RecordStore("results")
    result = run_sweep(work_items(pages, settings), predictor, store,
                       count_tokens=predictor.count_tokens, batch_size=8)

Items are run setting by setting (pages of one setting share view sizes, so a batch encodes
them together), `batch_size` pages per predictor call; items whose record is already done are
skipped, so rerunning the same command resumes. Each batch's records are appended and synced
before the next batch starts.

A record (one JSON line of `records.jsonl`) holds:

* who: `page_id`, `setting`, `mode` (the setting's mode, every field), `source`, `language`,
  `page_meta` (what the reader knew: font size, document type, round age ...);
* the texts: `reference` (ground truth as given) and `prediction` (raw);
* the token figures: `text_tokens` (ground truth, counted with the tokenizer given),
  `output_tokens`, `vision_tokens`, `layout_tokens`, `valid_vision_tokens`, `prompt_tokens`,
  and `compression_ratio` = text_tokens / valid_vision_tokens (the paper's ratio);
* how it went: `finish_reason`, `error`, `seconds` (the page's share of its batch's wall time),
  `extras` (the predictor's own facts);
* `metrics`: `scoring.score_prediction` of the pair (None for a failed page).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from .errors import ResearchError
from .pages import Page
from .predictors import Prediction, Predictor, WorkItem
from .records import RECORD_VERSION, RecordStore
from .scoring import score_prediction
from .settings import Setting

ProgressCallback = Callable[[int, int, dict[str, Any]], None]


def work_items(pages: Sequence[Page], settings: Sequence[Setting]) -> list[WorkItem]:
    """Every page in every setting, setting by setting."""
    return [(page, setting) for setting in settings for page in pages]


def build_record(page: Page, setting: Setting, prediction: Prediction, text_tokens: int,
                 segmenter: str = "auto") -> dict[str, Any]:
    """The record of one work item (module doc)."""
    valid = prediction.valid_vision_tokens
    failed = prediction.error is not None or prediction.finish_reason == "error"
    return {
        "version": RECORD_VERSION,
        "page_id": page.id, "setting": setting.name, "mode": setting.describe(),
        "source": page.source, "language": page.language, "page_meta": page.meta,
        "reference": page.reference, "prediction": prediction.text,
        "text_tokens": text_tokens, "output_tokens": prediction.output_tokens,
        "vision_tokens": prediction.vision_tokens, "layout_tokens": prediction.layout_tokens,
        "valid_vision_tokens": valid, "prompt_tokens": prediction.prompt_tokens,
        "compression_ratio": text_tokens / valid if valid else None,
        "finish_reason": prediction.finish_reason,
        "error": (prediction.error or "generation failed") if failed else None,
        "seconds": prediction.seconds, "extras": prediction.extras,
        "metrics": None if failed else score_prediction(prediction.text, page.reference, segmenter=segmenter),
    }


@dataclass
class SweepResult:
    """What one call of `run_sweep` did.

    Attributes:
        predicted: work items run now.
        skipped: items already done in the folder (resumed past).
        failed: items run now whose record carries an error.
        records: the records written now.
    """

    predicted: int = 0
    skipped: int = 0
    failed: int = 0
    records: list[dict[str, Any]] = field(default_factory=list)


def _batches(items: list[WorkItem], size: int) -> Iterable[list[WorkItem]]:
    start = 0
    while start < len(items):
        setting = items[start][1].name
        batch = [items[start]]
        start += 1
        # A batch never mixes settings: one setting's views share a size and encode together.
        while start < len(items) and len(batch) < size and items[start][1].name == setting:
            batch.append(items[start])
            start += 1
        yield batch


def run_sweep(items: Sequence[WorkItem], predictor: Predictor, store: RecordStore, *,
              count_tokens: Callable[[str], int], batch_size: int = 8, segmenter: str = "auto",
              on_progress: ProgressCallback | None = None) -> SweepResult:
    """Run every work item not yet done in `store` (module doc).

    Args:
        items: (page, setting) pairs, e.g. `work_items(pages, settings)`.
        predictor: any callable of the `Predictor` shape.
        store: the results folder's records.
        count_tokens: counts a ground truth's text tokens (the model's tokenizer).
        batch_size: items per predictor call.
        segmenter: Chinese segmentation of Fox's word sets.
        on_progress: called after each record with (items done, items to do, record).

    Raises:
        ResearchError: the predictor returned the wrong number of predictions.
    """
    if batch_size < 1:
        raise ResearchError(f"batch_size must be at least 1, got {batch_size}")
    result = SweepResult()
    pending = []
    for page, setting in items:
        if store.done(page.id, setting.name):
            result.skipped += 1
        else:
            pending.append((page, setting))
    text_tokens: dict[str, int] = {}
    for batch in _batches(pending, batch_size):
        predictions = predictor(batch)
        if len(predictions) != len(batch):
            raise ResearchError(f"the predictor returned {len(predictions)} predictions for {len(batch)} items")
        records = []
        for (page, setting), prediction in zip(batch, predictions):
            if page.id not in text_tokens:
                text_tokens[page.id] = count_tokens(page.reference)
            records.append(build_record(page, setting, prediction, text_tokens[page.id], segmenter))
        store.append(records)
        for record in records:
            result.predicted += 1
            result.failed += record["error"] is not None
            result.records.append(record)
            if on_progress is not None:
                on_progress(result.predicted, len(pending), record)
    return result
