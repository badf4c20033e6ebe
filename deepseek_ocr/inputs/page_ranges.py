"""Page selections such as "1-3,5,9-": parsing into 0-based page indices, and the highest page
a selection names. Pure text handling (no document is opened here)."""
from __future__ import annotations

import re

from deepseek_ocr.errors import DocumentError


class InvalidPageRangeError(DocumentError, ValueError):
    """A page-range specification is malformed or names pages the document does not have."""


def _page_number(token: str, spec: str, count: int | None) -> int:
    """A 1-based page number; `count` None: any number (past-the-end pages are clipped later)."""
    if not token.isdigit():
        raise InvalidPageRangeError(f"page range {spec!r}: {token!r} is not a page number")
    number = int(token)
    if number == 0:
        raise InvalidPageRangeError(f"page range {spec!r}: pages are numbered from 1, got 0")
    if count is not None and number > count:
        raise InvalidPageRangeError(f"page range {spec!r}: page {number} out of range, the document has {count} pages")
    return number


def parse_page_ranges(spec: str, count: int, *, clip: bool = False) -> list[int]:
    """Parse a page selection such as "1-3,5,9-" into sorted unique 0-based page indices.

    Args:
        spec: comma-separated items, each `N`, `N-M` (inclusive), `N-` (N to the last page) or
            `-M` (first page to M); pages are 1-based; spaces around items and numbers are ignored.
        count: the number of pages of the document.
        clip: pages past `count` are left out instead of refused, so one range can serve
            documents of different lengths ("16-30" of a 17-page PDF is 16-17; "20-" none).

    Returns:
        The selected pages, 0-based, ascending, without duplicates (empty only when `clip`).

    Raises:
        InvalidPageRangeError: an empty item, a non-number, page 0, a reversed range (`5-3`),
            or (without `clip`) a page beyond `count`. The message quotes the spec.
    """
    if count < 0:
        raise ValueError(f"parse_page_ranges: count must be >= 0, got {count}")
    limit = None if clip else count
    selected: set[int] = set()
    for item in spec.split(","):
        item = item.strip()
        if not item:
            raise InvalidPageRangeError(f"page range {spec!r}: empty item (expected e.g. '1-3,5,9-')")
        first, dash, last = (part.strip() for part in item.partition("-"))
        if not dash:
            start = end = _page_number(first, spec, limit)
        elif not first and not last:
            raise InvalidPageRangeError(f"page range {spec!r}: '-' needs a first or last page")
        else:
            start = _page_number(first, spec, limit) if first else 1
            end = _page_number(last, spec, limit) if last else max(count, start)
            if start > end:
                raise InvalidPageRangeError(f"page range {spec!r}: {item!r} is reversed ({start} > {end})")
        selected.update(range(start - 1, min(end, count)))
    return sorted(selected)


def page_range_limit(spec: str) -> int:
    """The highest page number written in `spec` (0 when it names none, e.g. "-"); for saying
    that a range reaches past the end of a document."""
    return max([0, *(int(n) for n in re.findall(r"\d+", spec))])
