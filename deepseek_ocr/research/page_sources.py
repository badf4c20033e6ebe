"""One entry point for every page source a study can run on: `load_pages(paths, format=...)`.

Formats:

* "fox": Fox's page-OCR JSON (`benchmark_fox`).
* "omnidocbench": OmniDocBench.json (`benchmark_omnidocbench`).
* "synth": a folder written by `deepseek-ocr research synth` (its `synth.json` manifest lists
  every page with its font, font size and exact token count, which go to `Page.meta`).
* "folder", "jsonl", "conversations", "messages", "parquet": the fine-tuning data formats,
  read by `deepseek_ocr.training.data.read_dataset` (a folder of images with `.md` / `.txt`
  beside them, conversations / messages JSONL, Parquet). The record's answer is the ground
  truth; text-only records are left out with a note; a record's own prompt and mode are not
  used (the sweep's prompt and settings are the experiment).
* "auto" (default): a folder with `synth.json` is "synth", another folder "folder"; a `.json`
  file is Fox when its first entry has `image` and `conversations`, OmniDocBench when it has
  `page_info` and `layout_dets`, otherwise a fine-tuning JSON(L); `.jsonl` and `.parquet` are
  fine-tuning files.

Page ids must be unique across all paths (they key the records); `max_pages` keeps a seeded
random subset, in the original order.
"""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Sequence

from .benchmark_fox import read_fox
from .benchmark_omnidocbench import read_omnidocbench
from .errors import BenchmarkFormatError
from .pages import LoadedPages, Page, guess_language
from .synth import MANIFEST as SYNTH_MANIFEST

FORMATS = ("auto", "fox", "omnidocbench", "synth", "folder", "jsonl", "conversations", "messages",
           "parquet")


def detect_format(path: Path) -> str:
    """The format "auto" picks for `path` (module doc)."""
    if path.is_dir():
        return "synth" if (path / SYNTH_MANIFEST).is_file() else "folder"
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".jsonl":
        return "jsonl"
    if suffix != ".json":
        raise BenchmarkFormatError(str(path), "cannot tell the format: expected a folder, .json, .jsonl "
                                              "or .parquet (or pass --format)")
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkFormatError(str(path), f"cannot read JSON: {exc}") from None
    first = data[0] if isinstance(data, list) and data else None
    if isinstance(first, dict) and "image" in first and "conversations" in first:
        return "fox"
    if isinstance(first, dict) and "page_info" in first and "layout_dets" in first:
        return "omnidocbench"
    return "jsonl"


def read_synth_folder(folder: str | Path) -> LoadedPages:
    """A folder written by `make_synthetic_pages`, through its manifest.

    Raises:
        BenchmarkFormatError: a missing or malformed manifest, or a page file it names missing.
    """
    folder = Path(folder)
    manifest_path = folder / SYNTH_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        entries = manifest["pages"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise BenchmarkFormatError(str(manifest_path), f"not a synthetic-page manifest: {exc}") from None
    pages = []
    for index, entry in enumerate(entries):
        source = f"{manifest_path}[{index}]"
        try:
            image, text = folder / entry["image"], folder / entry["text"]
            reference = text.read_text(encoding="utf-8")
        except (KeyError, TypeError) as exc:
            raise BenchmarkFormatError(source, f"entry lacks {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise BenchmarkFormatError(source, f"cannot read its ground truth: {exc}") from None
        if not image.is_file():
            raise BenchmarkFormatError(source, f"page image not found: {image}")
        meta = {k: v for k, v in entry.items() if k not in ("id", "image", "text", "language")}
        pages.append(Page(id=str(entry.get("id", image.stem)), image=image, reference=reference,
                          source=source, language=entry.get("language", "en"),
                          meta={"benchmark": "synthetic", **meta}))
    return LoadedPages(pages, [])


def _sample_id(sample, path: Path) -> str:
    """The record's own id; else its image's path relative to the data (folder, or the data
    file's folder); else where it was read (`file.jsonl:LINE`)."""
    if sample.id:
        return str(sample.id)
    if isinstance(sample.image, Path):
        base = path if path.is_dir() else path.parent
        try:
            return sample.image.resolve().relative_to(base.resolve()).as_posix()
        except ValueError:  # an image outside the data's folder: its own path
            return str(sample.image)
    return sample.source


def read_training_format(path: Path, fmt: str) -> LoadedPages:
    """The fine-tuning formats through `read_dataset` (module doc)."""
    from ..training.data import read_dataset
    from ..training.data.records import DataError
    try:
        samples, report = read_dataset(path, format=fmt)
    except DataError as exc:
        raise BenchmarkFormatError(exc.source, exc.reason) from None
    pages, notes = [], list(report.notes)
    for sample in samples:
        if sample.image is None:
            notes.append(f"{sample.source}: text-only record; left out")
            continue
        pages.append(Page(id=_sample_id(sample, path), image=sample.image, reference=sample.answer,
                          source=sample.source, language=guess_language(sample.answer),
                          meta={"benchmark": fmt}))
    return LoadedPages(pages, notes)


def load_pages(paths: Sequence[str | Path], *, format: str = "auto",
               image_roots: Sequence[str | Path] | None = None, omnidocbench_target: str = "text",
               max_pages: int | None = None, seed: int = 0) -> LoadedPages:
    """Every page of every path, in order.

    Args:
        paths: files or folders.
        format: one of `FORMATS` (module doc), applied to every path.
        image_roots: where Fox and OmniDocBench images are looked for (default: their own).
        omnidocbench_target: "text" or "markdown".
        max_pages: keep a seeded random subset of this many pages (None: all).
        seed: the subset's seed.

    Raises:
        BenchmarkFormatError: an unknown format, a malformed file, duplicate page ids, no pages.
    """
    if format not in FORMATS:
        raise BenchmarkFormatError("--format", f"must be one of {FORMATS}, got {format!r}")
    pages: list[Page] = []
    notes: list[str] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise BenchmarkFormatError(str(path), "no such file or folder")
        fmt = detect_format(path) if format == "auto" else format
        if fmt == "fox":
            part = read_fox(path, image_roots=image_roots)
        elif fmt == "omnidocbench":
            part = read_omnidocbench(path, image_roots=image_roots, target=omnidocbench_target)
        elif fmt == "synth":
            part = read_synth_folder(path)
        else:
            part = read_training_format(path, fmt)
        pages += part.pages
        notes += part.notes
    ids: dict[str, str] = {}
    for page in pages:
        if page.id in ids:
            raise BenchmarkFormatError(page.source, f"page id {page.id!r} is also {ids[page.id]}: ids key "
                                                    "the records, so they must be unique across inputs")
        ids[page.id] = page.source
    if not pages:
        raise BenchmarkFormatError(", ".join(map(str, paths)), "no pages to run")
    if max_pages is not None and max_pages < len(pages):
        keep = set(random.Random(seed).sample(range(len(pages)), max_pages))
        notes.append(f"{max_pages} of {len(pages)} pages kept (seeded subset, seed {seed})")
        pages = [p for i, p in enumerate(pages) if i in keep]
    return LoadedPages(pages, notes)
