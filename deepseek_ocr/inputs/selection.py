"""The pages of a run, chosen before any model is loaded (the command's first step after its
arguments): what the user named, which pages of each document, and what cannot be read.

    sel = select_pages(["scans/", "report.pdf", "missing.png"], pages="16-30")
    sel.pages     # PageRefs in input order; unreadable documents as a failing page 1
    sel.missing   # the InputNotFoundError of "missing.png" (the others still run)
    sel.notes     # "report.pdf has 17 pages: --pages 16-30 reaches past its end; doing 16-17"

Policies:

* A path, folder or glob that yields nothing is reported in `missing`; the other inputs are
  still selected (the command processes them and exits 1).
* `pages` applies to PDFs and multi-page TIFFs; other images have one page and ignore it.
  Pages past a document's end are left out, with a note ("16-30" of a 17-page PDF is 16-17),
  and a document the range selects nothing of is left out with a note: a range may serve
  documents of different lengths. Whether a range that fits no input at all is an error is
  the caller's decision (`Selection.beyond_every_input`).
* A document that cannot be opened (corrupt, encrypted, an unreadable image header) becomes
  one `DocumentErrorPage` whose `load` raises its error, so it is reported, written and retried
  like any failed page, in input order. Only headers are read here; a page whose data is
  damaged fails when it is loaded.

Torch is not imported, so that a command over a mistyped path answers at once.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Sequence

from deepseek_ocr.errors import DeepseekOCRError, InputNotFoundError
from deepseek_ocr.inputs.pdf import DEFAULT_DPI, DEFAULT_MAX_PAGES
from deepseek_ocr.inputs.page_ranges import page_range_limit, parse_page_ranges
from deepseek_ocr.inputs.sources import (MULTI_PAGE_IMAGE_EXTENSIONS, Document, PageRef, expand_inputs,
                                         iter_pages, page_count)
from deepseek_ocr.processing.image_io import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocumentErrorPage(PageRef):
    """Stands for a document that could not even be opened (encrypted or corrupt PDF, unreadable
    image header): it flows through the pipeline as page 1 whose `load` raises the document's
    error, so the failure is reported in input order, written, and retried by a rerun."""

    scope: str = "document"


def _raiser(err: BaseException):
    def load():
        raise err
    return load


def error_page(doc: Document, err: BaseException) -> DocumentErrorPage:
    """The stand-in page 1 of a document that cannot be opened."""
    logger.info("%s: %s (reported as its page 1)", doc.path, err)
    return DocumentErrorPage(document=doc, index=0, number=1, load=_raiser(err))


def is_multi_page(doc: Document) -> bool:
    """Whether a page range applies to `doc` (PDFs and TIFFs; other images have one page)."""
    return doc.kind == "pdf" or doc.path.suffix.lower() in MULTI_PAGE_IMAGE_EXTENSIONS


@dataclass
class Selection:
    """What `select_pages` found.

    Attributes:
        pages: every selected page in input order (unreadable documents as `DocumentErrorPage`).
        missing: the errors of inputs that match no file (reported; the rest still runs).
        notes: page ranges cut at a document's end, in words.
        beyond: (document, page count) of documents the page range selects no page of.
    """

    pages: list[PageRef] = field(default_factory=list)
    missing: list[InputNotFoundError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    beyond: list[tuple[Document, int]] = field(default_factory=list)

    @property
    def readable(self) -> list[PageRef]:
        """The pages not already known to fail (those that need the model)."""
        return [p for p in self.pages if not isinstance(p, DocumentErrorPage)]

    @property
    def beyond_every_input(self) -> bool:
        """The page range left out every document and nothing else was selected."""
        return bool(self.beyond) and not self.pages


def _numbers(indices: Sequence[int]) -> str:
    """0-based indices as 1-based ranges: [15, 16, 19] -> "16-17,20"."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a + 1}" if a == b else f"{a + 1}-{b + 1}" for a, b in runs)


def select_pages(items: Sequence[str | os.PathLike], *, pages: str | None = None, dpi: float = DEFAULT_DPI,
                 password: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                 max_pages: int = DEFAULT_MAX_PAGES) -> Selection:
    """Expand `items` and list their selected pages without rendering any (see the module
    docstring for the policies).

    Args:
        items: files, folders, globs.
        pages: a page-range spec for the multi-page documents ("1-3,5,9-").
        dpi: PDF rendering resolution.
        password: for encrypted PDFs.
        max_pixels: images over it are refused; PDF pages over it are rendered smaller.
        max_pages: page-count limit per document.

    Raises:
        InvalidPageRangeError: `pages` is malformed (checked before any file is opened).
    """
    if pages is not None:
        parse_page_ranges(pages, max_pages, clip=True)  # the syntax, once, before any file
    sel = Selection()
    documents = expand_inputs(items, missing=sel.missing)
    limits = {"max_pixels": max_pixels, "max_pages": max_pages, "password": password}
    for doc in documents:
        try:
            count = page_count(doc, **limits)
            if pages is not None and is_multi_page(doc):
                chosen = parse_page_ranges(pages, count, clip=True)
                if not chosen:
                    sel.beyond.append((doc, count))
                    sel.notes.append(f"{doc.path.name} has {count} page(s): --pages {pages} selects none "
                                     f"of them; left out")
                    continue
                if page_range_limit(pages) > count:
                    sel.notes.append(f"{doc.path.name} has {count} page(s): --pages {pages} reaches past "
                                     f"its end; doing {_numbers(chosen)}")
                doc.pages = chosen
            sel.pages.extend(iter_pages(doc, dpi=dpi, **limits))
        except (DeepseekOCRError, OSError) as err:
            sel.pages.append(error_page(doc, err))
    return sel
