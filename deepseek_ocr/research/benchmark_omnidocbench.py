"""OmniDocBench (`OmniDocBench.json` + its page images) as `Page`s, with one of two targets.

The format (../shared/RESEARCH.md §3): a JSON list of pages, each with `page_info` (`image_path`,
`width`, `height`, `page_attribute` with `language`, `data_source`, `layout`), `layout_dets`
(blocks with `category_type`, `order` for reading order, `text` / `latex` / `html`, `ignore`)
and `extra.relation` (`truncated` links between blocks that continue each other).

Targets:

* "text" (default): the page's text blocks in reading order: every category except tables,
  isolated formulas and figures, and except page furniture (headers, footers, page numbers,
  `abandon`); titles without a `#`. Blocks are joined by a blank line; blocks linked by a
  `truncated` relation become one. This is a page-level reading of OmniDocBench's *text* score,
  not its official block matching: the sweep compares the whole page text against the whole
  prediction, which is what a compression study needs (one number per page and setting).
* "markdown": the full page as markdown (tables as HTML, formulas as `\\[...\\]`, titles as
  `# ...`), the same target the fine-tuning converter writes.

Both are built by `deepseek_ocr.training.data.omnidocbench.convert_page` (one reader of the
format in the package); its page errors come back as `BenchmarkFormatError`s. A page whose text
target is empty (only a table, say) is left out with a note, not an error: it has nothing to read.

Language: `page_attribute.language` "english" -> "en", "simplified_chinese" -> "zh", any other
value kept as it is (e.g. "en_ch_mixed"); Table 3 reports English and Chinese apart as the paper
does. `data_source` and `layout` go to `Page.meta`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .errors import BenchmarkFormatError
from .pages import LoadedPages, Page, find_image

TARGETS = ("text", "markdown")
NON_TEXT = frozenset({"table", "equation_isolated", "figure"})
LANGUAGES = {"english": "en", "simplified_chinese": "zh"}


def _text_only(page: dict) -> dict:
    blocks = page.get("layout_dets")
    if not isinstance(blocks, list):
        return page  # convert_page reports the missing list
    kept = [b for b in blocks if not (isinstance(b, dict) and b.get("category_type") in NON_TEXT)]
    return {**page, "layout_dets": kept}


def _has_text(page: dict) -> bool:
    """Whether a text-target page has a block to read: in reading order, not furniture, and not
    an ignored block without text. (A non-ignored block missing its text counts, so that
    `convert_page` reports it as the format error it is.)"""
    from ..training.data.omnidocbench import FURNITURE
    for block in page.get("layout_dets") or []:
        if not isinstance(block, dict) or block.get("category_type") in FURNITURE or block.get("order") is None:
            continue
        text = block.get("text")
        if not block.get("ignore") or (isinstance(text, str) and text.strip()):
            return True
    return False


def read_omnidocbench(json_path: str | Path, *, image_roots: Sequence[str | Path] | None = None,
                      target: str = "text") -> LoadedPages:
    """Read OmniDocBench.json.

    Args:
        json_path: OmniDocBench.json.
        image_roots: folders holding the page images (default: `images/` beside the JSON).
        target: "text" or "markdown" (module doc).

    Raises:
        BenchmarkFormatError: unreadable JSON, a malformed page (named by index and image), a
            missing image, or an unknown target.
    """
    from ..training.data.omnidocbench import convert_page
    from ..training.data.records import DataError, DataReport
    if target not in TARGETS:
        raise BenchmarkFormatError(str(json_path), f"target must be one of {TARGETS}, got {target!r}")
    path = Path(json_path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkFormatError(str(path), f"cannot read OmniDocBench JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise BenchmarkFormatError(str(path), "expected a non-empty JSON list of pages")
    roots = [Path(r) for r in image_roots] if image_roots else [path.parent / "images"]
    pages, notes, seen = [], [], set()
    report = DataReport()
    for index, entry in enumerate(entries):
        source = f"{path}[{index}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("page_info"), dict):
            raise BenchmarkFormatError(source, "a page must be an object with a 'page_info' object")
        info = entry["page_info"]
        name = info.get("image_path")
        if not isinstance(name, str) or not name.strip():
            raise BenchmarkFormatError(source, "page_info has no image_path")
        source = f"{source} ({name})"
        if name in seen:
            raise BenchmarkFormatError(source, f"image_path {name!r} appears twice")
        seen.add(name)
        page = _text_only(entry) if target == "text" else entry
        if target == "text" and isinstance(page.get("layout_dets"), list) and not _has_text(page):
            notes.append(f"{source}: no text block in reading order; left out")
            continue
        try:
            reference = convert_page(page, source, title_prefix="" if target == "text" else "# ",
                                     report=report)
        except DataError as exc:
            raise BenchmarkFormatError(exc.source, exc.reason) from None
        attributes = info.get("page_attribute") if isinstance(info.get("page_attribute"), dict) else {}
        language = attributes.get("language")
        pages.append(Page(id=name, image=find_image(name, roots, source), reference=reference,
                          source=source, language=LANGUAGES.get(language, language),
                          meta={"benchmark": "omnidocbench", "target": target,
                                "data_source": attributes.get("data_source"),
                                "layout": attributes.get("layout")}))
    return LoadedPages(pages, notes + report.notes)
