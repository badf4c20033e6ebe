"""From model output to what a user keeps: markdown, cropped figures, a drawn page.

`render_page` does for one page what the official `infer(..., save_results=True)` does after
generation:

1. strip the EOS string `<｜end▁of▁sentence｜>`;
2. find the grounding spans (`parse_grounding`, strict, no `eval`);
3. crop each box of every `image` span from the original page and put a link
   `![](images/<page>-<i>.jpg)` in place of the span; remove every other span;
4. replace `\\coloneqq` by `:=` and `\\eqqcolon` by `=:`;
5. draw every box on the page (`draw_boxes`).

Where we differ from the official code, on purpose:

* Malformed spans (unclosed tags, box lists that are not `[[int, int, int, int], ...]`) stay in
  the markdown as written and are listed in `problems`. The official regex removes any span it
  matches, then its `eval` fails and the box is silently not drawn.
* Crops are numbered per box, and an `image` span with several boxes links all of them; the
  official code numbers crop files per box but links per span, so its links and files disagree
  as soon as one span has two boxes. File names carry the page name so that the crops of all
  pages of a document can share one folder.
* Spans are replaced where they are (by offset), not with `str.replace`, which in the official
  code also rewrites any identical earlier text.
* The fix-ups are applied to every page; the official code applies them only while removing a
  non-`image` span, so a page without one keeps `\\coloneqq`.
* Only a trailing EOS is the official case; an EOS anywhere else is removed too and reported
  (the official code would instead cut the last characters of the text).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from PIL import Image

from deepseek_ocr.postprocess.drawing import draw_boxes
from deepseek_ocr.postprocess.grounding import (GroundingSpan, MalformedSpan, normalize_box,
                                                out_of_range_values, parse_grounding, scale_box)

logger = logging.getLogger(__name__)

EOS_STRING = "<｜end▁of▁sentence｜>"
PAGE_SPLIT = "\n\n<--- Page Split --->\n\n"
FIXUPS = (("\\coloneqq", ":="), ("\\eqqcolon", "=:"))
"""LaTeX macros that common markdown renderers (KaTeX/MathJax without mathtools) do not know."""


@dataclass
class PageRender:
    """Everything made from one page's output.

    Args:
        markdown: the text with grounding spans removed, `image` regions linked, fix-ups done.
        raw: the text exactly as given to `render_page`.
        boxes: one dict per box of every well-formed span, in text order: `label`, `text` (the
            span's text), `box_norm` (`[x1, y1, x2, y2]` clamped to 0..999 and ordered),
            `box` (pixels in the page), `crop` (the link of its crop, or None).
        crops: `(relative file name, picture)` for each `image` box, in link order.
        drawn: the page with every box and label drawn.
        problems: human-readable findings: malformed spans, out-of-range values, empty crops.
    """

    markdown: str
    raw: str
    boxes: list[dict] = field(default_factory=list)
    crops: list[tuple[str, Image.Image]] = field(default_factory=list)
    drawn: Image.Image | None = None
    problems: list[str] = field(default_factory=list)


def strip_eos(text: str) -> tuple[str, list[str]]:
    """Remove the EOS string; report any occurrence that is not at the end.

    Args:
        text: decoded model output.

    Returns:
        `(text without EOS, problems)`.
    """
    problems = []
    body = text[:-len(EOS_STRING)] if text.endswith(EOS_STRING) else text
    inner = body.count(EOS_STRING)
    if inner:
        problems.append(f"{inner} EOS string(s) {EOS_STRING!r} inside the output were removed")
        body = body.replace(EOS_STRING, "")
    return body, problems


def apply_fixups(text: str) -> str:
    """Replace `\\coloneqq` by `:=` and `\\eqqcolon` by `=:`, as the official code does.

    Args:
        text: markdown.
    """
    for old, new in FIXUPS:
        text = text.replace(old, new)
    return text


def build_markdown(text: str, spans: list[GroundingSpan], links: dict[int, list[str]]) -> str:
    """`text` with each span replaced by its image links (if any) or removed, then fixed up.

    Args:
        text: the text the spans were parsed from (malformed spans in it stay as they are).
        spans: its well-formed spans, in text order.
        links: for a span's index in `spans`, the relative paths of its crops.
    """
    pieces = []
    cursor = 0
    for k, span in enumerate(spans):
        pieces.append(text[cursor:span.start])
        # The official replacement for an image span is the link followed by a newline.
        pieces.extend(f"![]({link})\n" for link in links.get(k, []))
        cursor = span.end
    pieces.append(text[cursor:])
    return apply_fixups("".join(pieces))


def combine_pages(pages: list[str]) -> str:
    """Join the markdown of a document's pages with the official page separator.

    Args:
        pages: one markdown string per page, in page order.
    """
    return PAGE_SPLIT.join(pages)


def _describe(m: MalformedSpan) -> str:
    shown = m.raw if len(m.raw) <= 80 else m.raw[:77] + "..."
    return f"malformed grounding span at {m.start}..{m.end}: {m.reason}: {shown!r}"


def render_page(text: str, page: Image.Image, *, page_name: str = "page",
                images_dir: str = "images") -> PageRender:
    """Markdown, crops and the drawn page from one page's model output.

    Args:
        text: the decoded output for `page` (special tokens kept, EOS string optional).
        page: the original page image (its own size, not the model's view).
        page_name: prefix of crop file names; must be a plain file name (no path separator).
        images_dir: folder of the crops, relative to the markdown file, used in links.

    Returns:
        A `PageRender`. Never raises on model output: problems are listed in `.problems`.

    Raises:
        TypeError: `page` is not a PIL image.
        ValueError: `page_name` is empty or contains a path separator.
    """
    if not isinstance(page, Image.Image):
        raise TypeError(f"render_page: page must be a PIL.Image.Image, got {type(page).__name__}")
    if page_name in ("", ".", "..") or any(sep in page_name for sep in ("/", "\\", "\0")):
        raise ValueError(f"render_page: page_name must be a plain file name, got {page_name!r}")
    width, height = page.size
    body, problems = strip_eos(text)
    spans, malformed = parse_grounding(body)
    problems.extend(_describe(m) for m in malformed)

    boxes: list[dict] = []
    crops: list[tuple[str, Image.Image]] = []
    links: dict[int, list[str]] = {}
    for k, span in enumerate(spans):
        for box_norm in span.boxes:
            outside = out_of_range_values(box_norm)
            if outside:
                problems.append(f"box {list(box_norm)} of {span.label!r} at {span.start}: values "
                                f"{outside} outside 0..999 were clamped")
            x1, y1, x2, y2 = box = scale_box(box_norm, width, height)
            crop_name = None
            if span.label == "image":
                if x2 > x1 and y2 > y1:
                    crop_name = f"{images_dir}/{page_name}-{len(crops)}.jpg"
                    picture = page.crop(box)
                    # JPEG holds only L and RGB; the crop is saved as .jpg by the caller.
                    if picture.mode not in ("RGB", "L"):
                        picture = picture.convert("RGB")
                    crops.append((crop_name, picture))
                    links.setdefault(k, []).append(crop_name)
                else:
                    problems.append(f"image box {list(box_norm)} at {span.start} is empty on a "
                                    f"{width}x{height} page ({list(box)}): not cropped")
            boxes.append({"label": span.label, "text": span.text,
                          "box_norm": list(normalize_box(box_norm)), "box": list(box),
                          "crop": crop_name})

    drawn = draw_boxes(page, [(b["label"], b["box"]) for b in boxes])
    for problem in problems:
        logger.info("%s: %s", page_name, problem)
    return PageRender(markdown=build_markdown(body, spans, links), raw=text, boxes=boxes,
                      crops=crops, drawn=drawn, problems=problems)
