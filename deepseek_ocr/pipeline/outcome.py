"""What became of a page of `run_pages`: its `PageOutcome`, and how a finished slot becomes one
(post-processing, the page's json record, its files)."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from ..generation.generate import GenerationResult
from ..inputs import PageRef
from ..postprocess import PageRender, render_page
from ..processing.views import Mode
from . import writer
from .feed import _Slot


@dataclass
class PageOutcome:
    """What became of one page.

    Attributes:
        page: the input page.
        result: the generation result (read back from its json for a skipped page; None when
            the page failed before generating).
        render: markdown, boxes, crops (None for skipped and failed pages).
        error: what went wrong, or None.
        error_type: the exception's class name (e.g. "InvalidImageError", "OutOfMemoryError").
        skipped: done by an earlier run (`resume=True`) and not redone.
        seconds: time spent on this page: its loading and preparation, its share of the batch's
            generation, rendering and writing.
        record: the page's json content (as written, or as read back when skipped).
        redone: why an earlier run's result of this page was not reused (other settings), or None.
    """

    page: PageRef
    result: GenerationResult | None
    render: PageRender | None
    error: str | None = None
    error_type: str | None = None
    skipped: bool = False
    seconds: float = 0.0
    record: dict = field(default_factory=dict)
    redone: str | None = None

    @property
    def status(self) -> str:
        """"ok", "failed" or "skipped"."""
        if self.skipped:
            return "skipped"
        return "ok" if self.error is None else "failed"


def _base_record(slot: _Slot) -> dict:
    page = slot.page
    return {"format": writer.PAGE_FORMAT, "document": page.document.name,
            "source": str(page.document.path), "kind": page.document.kind,
            "page": page.number, "index": page.index,
            "scope": getattr(page, "scope", "page"), "run": slot.run}


def finish_page(slot: _Slot, *, mode: Mode, prompt: str, out_dir: Path | None) -> PageOutcome:
    """A page's outcome once its generation is over (or it failed, or an earlier run did it):
    the official post-processing of its text, its json record, and its files under `out_dir`
    (none when `out_dir` is None). The continuous path runs it on its finishing threads."""
    page = slot.page
    if slot.skipped is not None:
        record, result = slot.skipped
        return PageOutcome(page, result, None, skipped=True, seconds=0.0, record=record)
    render = None
    if slot.error is None:
        t0 = time.perf_counter()
        # The official post-processing works on the stripped text (`result.text`); the
        # exact decoded ids go to page-XXXX.raw.txt.
        render = render_page(slot.result.text, slot.image, page_name=writer.page_stem(page.number),
                             images_dir="images")
        slot.timings["render_s"] = time.perf_counter() - t0
    seconds = sum(v for k, v in slot.timings.items() if k.endswith("_s"))
    record = _base_record(slot)
    if slot.error is not None:
        error_type, message = slot.error
        record.update(status="failed", error=message, error_type=error_type, seconds=round(seconds, 4))
        if slot.result is not None:
            record.update(finish_reason=slot.result.finish_reason, tokens=writer.token_figures(slot.result))
        if out_dir is not None:
            writer.write_page_error(out_dir, record)
        return PageOutcome(page, slot.result, None, message, error_type, seconds=seconds, record=record,
                           redone=slot.redone)
    result = slot.result
    record.update(
        status="ok", error=None, width=slot.image.width, height=slot.image.height,
        mode={"name": mode.name, "base_size": mode.base_size,
              "image_size": mode.image_size, "crop": mode.crop},
        prompt=prompt, finish_reason=result.finish_reason,
        tokens=writer.token_figures(result), token_ids=list(result.token_ids),
        boxes=render.boxes, problems=render.problems,
        timings={k: round(v, 4) if isinstance(v, float) else v for k, v in slot.timings.items()},
        seconds=round(seconds, 4))
    if out_dir is not None:
        t0 = time.perf_counter()
        record = writer.write_page(out_dir, record, result, render)
        seconds += time.perf_counter() - t0
    return PageOutcome(page, result, render, seconds=seconds, record=record, redone=slot.redone)
