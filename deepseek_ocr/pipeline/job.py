"""A whole run as the command line does it: pages of many documents, shared over ranks,
with progress, a summary and the combined document markdowns.

Single process: `run_pages` writes every page and each document's markdown as it completes,
then `summary.json` is written (also listing the pages earlier runs left in the folder, see
`writer.with_earlier_pages`). Under torchrun each rank runs its round-robin share
(`sharding.shard`), writes its pages and `summary.rank-<r>.json`; after a barrier rank 0
writes every document's markdown from the page files and merges the rank summaries into
`summary.json`; the exit code is agreed over the ranks so they all end alike.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..errors import DeepseekOCRError
from ..inputs import Document, PageRef, iter_pages
from ..inputs.selection import DocumentErrorPage, error_page  # noqa: F401 (DocumentErrorPage: re-exported)
from . import writer
from .progress import ProgressReporter
from .runner import PageOutcome, run_pages
from .sharding import DistInfo, Group, shard

logger = logging.getLogger(__name__)


def collect_pages(documents: Sequence[Document], *, pages: str | None = None, dpi: float = 144,
                  password: str | None = None, max_pages: int | None = None) -> list[PageRef]:
    """Every selected page of `documents`, in order, without rendering any.

    Args:
        documents: from `deepseek_ocr.inputs.expand_inputs`.
        pages: a page-range spec applied to every multi-page document ("1-3,5,9-").
        dpi: PDF rendering resolution.
        password: for encrypted PDFs.
        max_pages: page-count limit per document (default: the inputs module's).

    A document-level error, a page range outside a document included, becomes one
    `DocumentErrorPage` in its place. `deepseek_ocr.inputs.select_pages` is the command's
    version: missing inputs reported aside, page ranges cut at each document's end.
    """
    out: list[PageRef] = []
    extra = {} if max_pages is None else {"max_pages": max_pages}
    for doc in documents:
        try:
            out.extend(iter_pages(doc, pages=pages, dpi=dpi, password=password, **extra))
        except (DeepseekOCRError, OSError) as err:
            out.append(error_page(doc, err))
    return out


@dataclass
class JobReport:
    """The end of a run.

    Attributes:
        summary: the run summary (what summary.json holds; the merged one on rank 0).
        exit_code: 0 every page done, 1 some page failed (agreed over all ranks).
        outcomes: this rank's page outcomes, in order.
        documents: the document markdown files written.
    """

    summary: dict
    exit_code: int
    outcomes: list[PageOutcome] = field(default_factory=list)
    documents: list[Path] = field(default_factory=list)


def _merge_rank_summaries(out_dir: Path, world: int, seconds: float, extra: dict) -> dict:
    entries = []
    for rank in range(world):
        path = out_dir / f"summary.rank-{rank}.json"
        entries.extend(json.loads(path.read_text(encoding="utf-8"))["pages"])
    entries.sort(key=lambda e: e["order"])
    return writer.summarize(entries, seconds=seconds, extra=extra)


def run_job(ocr, pages: Sequence[PageRef], *, out_dir: str | os.PathLike, dist: DistInfo | None = None,
            group: Group | None = None, progress: bool = True, settings: dict | None = None,
            **run_kwargs) -> JobReport:
    """Run every page of the global list `pages` (this rank's share of it when distributed).

    Args:
        ocr: the loaded model (on this rank's device).
        pages: the global, ordered page list (identical on every rank).
        out_dir: output folder.
        dist: this process's place in the run (default: not distributed).
        group: the process group for the barrier (required when distributed).
        progress: show a progress line on stderr (rank 0 only).
        settings: recorded in the summary (model, mode, prompt, ...).
        **run_kwargs: for `run_pages` (prompt, mode, batch_size, workers, resume, generation
            arguments).

    Raises:
        KeyboardInterrupt: after writing a summary of the pages done, marked `interrupted`.
    """
    dist = dist or DistInfo()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = shard(list(enumerate(pages)), dist.rank, dist.world_size)
    reporter = ProgressReporter(len(mine), enabled=progress and dist.is_main,
                                prefix=f"[rank 0 of {dist.world_size}] " if dist.distributed else "")
    try:
        return _run(ocr, pages, mine, out_dir, dist, group, reporter, settings, run_kwargs)
    finally:
        reporter.close()  # also stops its timer thread when the run raises


def _run(ocr, pages, mine, out_dir: Path, dist: DistInfo, group: Group | None, reporter: ProgressReporter,
         settings: dict | None, run_kwargs: dict) -> JobReport:
    extra = {**(settings or {}), "world_size": dist.world_size}
    entries: list[dict] = []
    outcomes: list[PageOutcome] = []
    t0 = time.perf_counter()

    def rank_summary(**flags) -> dict:
        return writer.summarize(entries, seconds=time.perf_counter() - t0, extra={**extra, **flags})

    try:
        stream = run_pages(ocr, [p for _, p in mine], out_dir=out_dir,
                           write_documents=not dist.distributed, watch=reporter, **run_kwargs)
        for k, outcome in enumerate(stream):  # the stream first: its end writes the documents
            order = mine[k][0]
            outcomes.append(outcome)
            entry = writer.summary_entry(outcome.record, outcome.status, outcome.redone)
            entry["order"] = order
            entries.append(entry)
            reporter.update(status=outcome.status,
                            tokens=len(outcome.result.token_ids) if outcome.status == "ok" else 0)
    except KeyboardInterrupt:
        reporter.close()
        if dist.distributed:
            writer.write_summary(out_dir, rank_summary(interrupted=True), f"summary.rank-{dist.rank}.json")
        else:
            writer.write_summary(out_dir, writer.with_earlier_pages(out_dir, rank_summary(interrupted=True)))
        raise
    reporter.close()

    documents: list[Path] = []
    if not dist.distributed:
        summary = writer.with_earlier_pages(out_dir, rank_summary())
        writer.write_summary(out_dir, summary)
        documents = _document_paths(out_dir, pages)
        failed = summary["totals"]["failed"]
        return JobReport(summary, 1 if failed else 0, outcomes, documents)

    if group is None:
        raise ValueError("a distributed run needs its process group")
    writer.write_summary(out_dir, rank_summary(), f"summary.rank-{dist.rank}.json")
    group.barrier()  # every rank's pages and rank summary are on disk
    summary = rank_summary()
    code = 1 if summary["totals"]["failed"] else 0
    if dist.is_main:
        summary = _merge_rank_summaries(out_dir, dist.world_size, time.perf_counter() - t0, extra)
        summary = writer.with_earlier_pages(out_dir, summary)
        for name, numbers in _document_pages(pages).items():
            path = writer.write_document(out_dir, name, numbers)
            if path is not None:
                documents.append(path)
        writer.write_summary(out_dir, summary)
        code = 1 if summary["totals"]["failed"] else 0
    code = group.max_int(code)  # also keeps the other ranks alive until rank 0 has written
    return JobReport(summary, code, outcomes, documents)


def _document_pages(pages: Sequence[PageRef]) -> dict[str, list[int]]:
    docs: dict[str, list[int]] = {}
    for page in pages:
        docs.setdefault(page.document.name, []).append(page.number)
    return docs


def _document_paths(out_dir: Path, pages: Sequence[PageRef]) -> list[Path]:
    return [p for p in (writer.document_markdown_path(out_dir, name) for name in _document_pages(pages))
            if p.is_file()]
