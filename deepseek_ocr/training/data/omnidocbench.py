"""OmniDocBench's JSON -> training targets, one sample per page, written as messages JSONL.

    python -m deepseek_ocr.training.data.omnidocbench OmniDocBench.json train.jsonl \\
        [--images DIR] [--grounding] [--keep-furniture] [--figures]

What a page's target holds (each choice is ours and deliberate):

* Blocks in reading order (`order`); blocks without an order are not placed and are noted.
* Blocks linked by a `truncated` relation in `extra.relation` (a paragraph continued in another
  column or after a figure) become one block at the first one's place; texts are joined with a
  space, or with nothing where a CJK character meets a CJK character.
* Tables as their `html` (`table_format="latex"` takes `latex` instead); isolated formulas as
  `\\[LATEX\\]` (the `\\[ \\]` delimiters DeepSeek-OCR writes; `$$` or `\\[` already around the
  LaTeX is removed first); titles as `# TEXT`; other text blocks as their `text`.
* Headers, footers, page numbers and `abandon` blocks are dropped (`keep_furniture=True`
  keeps them); figures carry no text and are left out unless `figures=True` with grounding.
* With `grounding=True` each block is `<|ref|>LABEL<|/ref|><|det|>[[x0, y0, x1, y1]]<|/det|>`, a
  line break, then its text: the box is the `poly`'s bounding box scaled to the model's 0..999
  coordinates, `int(v / size * 999)` with `page_info`'s width and height, clamped to 0..999; a
  merged block lists one box per part. `LABELS` maps categories to the words the model uses.
  The result parses back with `deepseek_ocr.postprocess.grounding.parse_grounding`.
* Blocks marked `ignore` are kept when they carry text (it is on the page) and left out when
  they carry none.
* Blocks are separated by a blank line. A non-ignored content block without its text, a page
  without size, image path or any content is a page error (`on_error` stops or skips it):
  a target that silently misses text would teach the model to skip text.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Sequence

from ...postprocess.grounding import NORM_MAX
from .records import DataError, DataReport, OnError, check_on_error, handle

logger = logging.getLogger(__name__)

LABELS = {
    "title": "title", "text_block": "text", "table": "table", "equation_isolated": "equation",
    "figure": "image", "figure_caption": "image_caption", "figure_footnote": "image_footnote",
    "table_caption": "table_caption", "table_footnote": "table_footnote",
    "equation_caption": "equation_caption", "code_txt": "code", "code_txt_caption": "code_caption",
    "reference": "text", "page_footnote": "footnote",
    "header": "header", "footer": "footer", "page_number": "page_number", "abandon": "abandon",
}
"""OmniDocBench category -> grounding label. Unknown categories with text use "text"."""

FURNITURE = frozenset({"header", "footer", "page_number", "abandon"})
PROMPT = "<image>\nConvert the document to markdown."
GROUNDING_PROMPT = "<image>\n<|grounding|>Convert the document to markdown."
_CJK = re.compile(r"[\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uff00-\uffef]")


def scale_poly(poly: Sequence[float], width: float, height: float) -> list[int]:
    """The bounding box of `poly` (x, y pairs) in 0..999 page coordinates."""
    xs, ys = poly[0::2], poly[1::2]

    def norm(v: float, size: float) -> int:
        return min(max(int(v / size * NORM_MAX), 0), NORM_MAX)
    return [norm(min(xs), width), norm(min(ys), height), norm(max(xs), width), norm(max(ys), height)]


def _strip_math(latex: str) -> str:
    s = latex.strip()
    for open_, close in (("$$", "$$"), ("\\[", "\\]"), ("$", "$")):
        if s.startswith(open_) and s.endswith(close) and len(s) >= len(open_) + len(close):
            return s[len(open_):len(s) - len(close)].strip()
    return s


def _join(a: str, b: str) -> str:
    if a and b and _CJK.match(a[-1]) and _CJK.match(b[0]):
        return a + b
    return f"{a} {b}"


def _block_text(block: dict, table_format: str, title_prefix: str) -> str | None:
    """The markdown of one block, or None when it carries none."""
    category = block.get("category_type")
    if category == "figure":
        return ""
    if category == "table":
        value = block.get(table_format)
    elif category == "equation_isolated":
        value = block.get("latex")
        value = f"\\[{_strip_math(value)}\\]" if isinstance(value, str) and value.strip() else None
    else:
        value = block.get("text")
    if not isinstance(value, str) or not value.strip():
        return None
    value = value.strip()
    return title_prefix + value if category == "title" else value


def _truncation_groups(page: dict, blocks: list[dict], source: str, report: DataReport) -> list[list[dict]]:
    """Blocks grouped by `truncated` relations (union of chains); singletons for the rest."""
    by_id = {b.get("anno_id"): b for b in blocks if b.get("anno_id") is not None}
    parent = {id(b): id(b) for b in blocks}

    def root(k: int) -> int:
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k
    relations = (page.get("extra") or {}).get("relation") or []
    for rel in relations:
        if not isinstance(rel, dict) or "truncated" not in (rel.get("relation"), rel.get("relation_type")):
            continue
        a, b = by_id.get(rel.get("source_anno_id")), by_id.get(rel.get("target_anno_id"))
        if a is None or b is None:
            report.notes.append(f"{source}: truncated relation {rel.get('source_anno_id')} -> "
                                f"{rel.get('target_anno_id')} names a block not kept; not merged")
            continue
        if {a.get("category_type"), b.get("category_type")} & {"table", "equation_isolated", "figure"}:
            report.notes.append(f"{source}: truncated relation between {a.get('category_type')} and "
                                f"{b.get('category_type')} not merged (only text continues)")
            continue
        parent[root(id(a))] = root(id(b))
    groups: dict[int, list[dict]] = {}
    for block in blocks:  # blocks are in reading order, so each group is too
        groups.setdefault(root(id(block)), []).append(block)
    return list(groups.values())


def convert_page(page: dict, source: str, *, grounding: bool = False, keep_furniture: bool = False,
                 figures: bool = False, table_format: str = "html", title_prefix: str = "# ",
                 report: DataReport | None = None) -> str:
    """One OmniDocBench page -> its target text (rules in the module docstring)."""
    report = report if report is not None else DataReport()
    info = page.get("page_info")
    if not isinstance(info, dict):
        raise DataError(source, "no 'page_info' object")
    width, height = info.get("width"), info.get("height")
    if not all(isinstance(v, (int, float)) and v > 0 for v in (width, height)):
        raise DataError(source, f"page_info needs positive width and height, got {width!r} x {height!r}")
    dets = page.get("layout_dets")
    if not isinstance(dets, list):
        raise DataError(source, "no 'layout_dets' list")
    kept: list[dict] = []
    unordered = 0
    for i, block in enumerate(dets):
        if not isinstance(block, dict):
            raise DataError(source, f"layout_dets[{i}] is not an object")
        category = block.get("category_type")
        if category in FURNITURE and not keep_furniture:
            continue
        if category == "figure" and not (figures and grounding):
            continue
        if block.get("order") is None:
            unordered += 1
            continue
        text = _block_text(block, table_format, title_prefix)
        if text is None:
            if block.get("ignore"):
                continue  # ignored regions (e.g. illegible) may carry no text
            field = table_format if category == "table" else "latex" if category == "equation_isolated" else "text"
            raise DataError(source, f"layout_dets[{i}] ({category}, anno_id {block.get('anno_id')}) has no {field!r}")
        poly = block.get("poly")
        if grounding and not (isinstance(poly, list) and len(poly) >= 4 and len(poly) % 2 == 0
                              and all(isinstance(v, (int, float)) for v in poly)):
            raise DataError(source, f"layout_dets[{i}] ({category}): 'poly' must be x, y pairs, got {poly!r}")
        kept.append({**block, "_text": text})
    if unordered:
        report.notes.append(f"{source}: {unordered} block(s) without 'order' left out")
    kept.sort(key=lambda b: b["order"])  # stable: equal orders keep the file's order
    parts = []
    for group in _truncation_groups(page, kept, source, report):
        text = group[0]["_text"]
        for block in group[1:]:
            text = _join(text, block["_text"])
        if grounding:
            category = group[0].get("category_type")
            label = LABELS.get(category, "text")
            boxes = ", ".join("[" + ", ".join(map(str, scale_poly(b["poly"], width, height))) + "]"
                              for b in group)
            parts.append(f"<|ref|>{label}<|/ref|><|det|>[{boxes}]<|/det|>\n{text}")
        else:
            parts.append(text)
    target = "\n\n".join(parts)
    if not target.strip():
        raise DataError(source, "the page has no content to learn (every block dropped or empty)")
    return target


def convert(json_path: str | Path, out_path: str | Path, *, image_root: str | Path | None = None,
            prompt: str | None = None, grounding: bool = False, keep_furniture: bool = False,
            figures: bool = False, table_format: str = "html", title_prefix: str = "# ",
            on_error: OnError = "stop") -> DataReport:
    """Convert OmniDocBench.json to a messages JSONL that `read_messages` takes.

    Args:
        json_path: OmniDocBench.json (a list of pages).
        out_path: the JSONL to write; image paths in it are relative to its folder.
        image_root: the folder of the page images (default: `images/` beside the JSON).
        prompt: the user turn (default: the markdown prompt, with `<|grounding|>` when grounding).
        grounding, keep_furniture, figures, table_format, title_prefix: see `convert_page`.
        on_error: "stop" raises at the first bad page; "skip" leaves it out and reports it.
    """
    check_on_error(on_error)
    if table_format not in ("html", "latex"):
        raise ValueError(f"table_format must be 'html' or 'latex', got {table_format!r}")
    json_path, out_path = Path(json_path), Path(out_path)
    root = Path(image_root) if image_root is not None else json_path.parent / "images"
    prompt = prompt if prompt is not None else GROUNDING_PROMPT if grounding else PROMPT
    try:
        pages = json.loads(json_path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(str(json_path), f"cannot read OmniDocBench JSON: {exc}") from None
    if not isinstance(pages, list):
        raise DataError(str(json_path), f"expected a list of pages, got {type(pages).__name__}")
    report = DataReport()
    lines = []
    for number, page in enumerate(pages):
        source = f"{json_path}:page {number}"
        try:
            if not isinstance(page, dict):
                raise DataError(source, "a page must be an object")
            name = (page.get("page_info") or {}).get("image_path")
            if not isinstance(name, str) or not name:
                raise DataError(source, "page_info has no image_path")
            source = f"{source} ({name})"
            image = root / name
            if not image.is_file():
                raise DataError(source, f"page image not found: {image}")
            target = convert_page(page, source, grounding=grounding, keep_furniture=keep_furniture,
                                  figures=figures, table_format=table_format,
                                  title_prefix=title_prefix, report=report)
        except DataError as error:
            handle(error, on_error, report)
            continue
        lines.append(json.dumps({"id": name, "messages": [
            {"role": "<|User|>", "content": prompt}, {"role": "<|Assistant|>", "content": target}],
            "images": [os.path.relpath(image.resolve(), out_path.resolve().parent)]}, ensure_ascii=False))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    os.replace(tmp, out_path)  # a reader never sees half a file
    report.kept = len(lines)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deepseek_ocr.training.data.omnidocbench",
                                     description="OmniDocBench.json -> messages JSONL training targets")
    parser.add_argument("json", help="OmniDocBench.json")
    parser.add_argument("out", help="the JSONL to write")
    parser.add_argument("--images", help="folder of the page images (default: images/ beside the JSON)")
    parser.add_argument("--prompt", help="the user turn (default: the markdown prompt)")
    parser.add_argument("--grounding", action="store_true", help="boxed targets in 0..999 coordinates")
    parser.add_argument("--keep-furniture", action="store_true", help="keep headers, footers, page numbers")
    parser.add_argument("--figures", action="store_true", help="figure boxes (with --grounding)")
    parser.add_argument("--table-format", choices=["html", "latex"], default="html")
    parser.add_argument("--skip-bad-pages", action="store_true", help="skip and report bad pages")
    args = parser.parse_args(argv)
    try:
        report = convert(args.json, args.out, image_root=args.images, prompt=args.prompt,
                         grounding=args.grounding, keep_furniture=args.keep_furniture,
                         figures=args.figures, table_format=args.table_format,
                         on_error="skip" if args.skip_bad_pages else "stop")
    except DataError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    sys.stdout.write(report.summary() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
