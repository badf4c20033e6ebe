"""The unit of every study: a page image with its exact ground truth.

Readers (`benchmark_fox`, `benchmark_omnidocbench`, `page_sources`) turn benchmark files into
`Page`s; the sweep runs each page in each setting and keeps `Page.meta` in every record, so a
result can later be grouped by anything a reader knew (font size, document type, round age).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from ..evaluation import is_fox_chinese
from .errors import BenchmarkFormatError


@dataclass
class Page:
    """One page to read back.

    Attributes:
        id: unique within a run; the key of its records (with the setting's name).
        image: the page image, a path or encoded bytes (what `DeepseekOCR.prepare` takes).
        reference: the ground-truth text, exactly as the benchmark gives it.
        source: where it came from (file and entry), for messages.
        language: "en", "zh", or another benchmark label; Table 3 splits by it.
        meta: JSON-ready facts about the page (benchmark, font size, document type ...).
    """

    id: str
    image: Path | bytes
    reference: str
    source: str
    language: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)


class LoadedPages(NamedTuple):
    """What every reader returns: the pages, and notes on what was left out and why."""

    pages: list[Page]
    notes: list[str]


def guess_language(text: str) -> str:
    """"zh" when `text` holds a CJK ideograph (Fox's test, U+4E00..U+9FA5), otherwise "en".

    Used where a benchmark does not label its pages; "en" then means "not Chinese".
    """
    return "zh" if is_fox_chinese(text) else "en"


def image_size(page: Page) -> tuple[int, int]:
    """(width, height) of the page image as the model will see it (EXIF orientation applied),
    read from the header only.

    Raises:
        BenchmarkFormatError: the image is missing or unreadable.
    """
    from ..training.data.images import header_size
    from ..training.data.records import DataError
    if isinstance(page.image, Path) and not page.image.is_file():
        raise BenchmarkFormatError(page.source, f"page image not found: {page.image}")
    try:
        return header_size(page.image, page.source)
    except DataError as exc:
        raise BenchmarkFormatError(exc.source, exc.reason) from None


def find_image(name: str, roots: list[Path], source: str) -> Path:
    """The first `root / name` that is a file.

    Raises:
        BenchmarkFormatError: naming every folder looked in.
    """
    for root in roots:
        candidate = root / name
        if candidate.is_file():
            return candidate
    where = ", ".join(str(r) for r in roots)
    raise BenchmarkFormatError(source, f"page image {name!r} not found in {where}; pass the folder "
                                       "that holds the page images with --image-root")
