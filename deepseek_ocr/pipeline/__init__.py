"""Batch OCR of many pages: the library API behind the `deepseek-ocr` command.

    from deepseek_ocr.pipeline import run_pages
    for outcome in run_pages(ocr, pages, mode="gundam", out_dir="ocr-output"):
        ...

`runner` (batching, look-ahead, fault isolation), `writer` (atomic output files, resume),
`progress` (the stderr progress line), `sharding` (torchrun shares and the final meeting),
`job` (a whole run with summary and documents, as the command does it).
"""
from .job import DocumentErrorPage, JobReport, collect_pages, run_job
from .progress import ProgressReporter
from .runner import OutOfMemoryError, PageOutcome, run_pages
from .sharding import DistInfo, Group, device_for, dist_from_env, shard
from .writer import (atomic_write_bytes, atomic_write_json, atomic_write_text, page_stem,
                     read_done_page, write_document)

__all__ = [
    "run_pages", "PageOutcome", "OutOfMemoryError", "run_job", "JobReport", "collect_pages",
    "DocumentErrorPage", "ProgressReporter", "DistInfo", "Group", "dist_from_env", "shard",
    "device_for", "atomic_write_bytes", "atomic_write_text", "atomic_write_json", "page_stem",
    "read_done_page", "write_document",
]
