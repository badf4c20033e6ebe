"""Grounding spans in model output: find them, parse their boxes (without `eval`), scale them.

With a `<|grounding|>` prompt DeepSeek-OCR writes, before each block of text,

    <|ref|>label<|/ref|><|det|>[[x1, y1, x2, y2], ...]<|/det|>

with corners normalised to 0..999 of the page's width and height. The official code finds spans
with the regex `<|ref|>(.*?)<|/ref|><|det|>(.*?)<|/det|>` and `eval`s the box list. We scan the
tags ourselves so that what does not fit the grammar is reported rather than silently dropped:

* A well-formed span is `<|ref|>` LABEL `<|/ref|><|det|>` BOXES `<|/det|>`, where LABEL and BOXES
  contain no tag and no line break (the regex above, without DOTALL, does not cross lines
  either), and BOXES is a strict `[[int, int, int, int], ...]` (see `parse_box_list`).
* Anything else built from these tags is a `MalformedSpan`: an unclosed `<|ref|>` or `<|det|>`
  (output cut at `max_new_tokens` ends this way), `<|ref|>...<|/ref|>` with no `<|det|>`, a stray
  closing tag, or a box list that is not four integers per box (non-numeric values, three
  numbers, nested brackets, ...). Callers keep malformed spans as text and report them.
* Box values are kept as written. Values outside 0..999 and reversed corners are fixed by
  `scale_box` (clamped, ordered); `out_of_range_values` lets callers report them.

Nothing here raises on model output: any string parses into spans plus malformed spans.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Sequence

logger = logging.getLogger(__name__)

REF_OPEN, REF_CLOSE = "<|ref|>", "<|/ref|>"
DET_OPEN, DET_CLOSE = "<|det|>", "<|/det|>"
NORM_MAX = 999
"""The model's coordinates run over 0..999 of the page size (pixel = v / 999 * size)."""

_TAG = re.compile(r"<\|/?(?:ref|det)\|>")

Box = tuple[int, int, int, int]


@dataclass
class GroundingSpan:
    """One well-formed `<|ref|>label<|/ref|><|det|>[[...]]<|/det|>` span.

    Args:
        label: what the model calls the region ("title", "text", "image", "table", or the
            phrase of a Locate prompt).
        boxes: the boxes as written by the model, normalised 0..999, not clamped or ordered.
        start: offset of the span's first character in the parsed text.
        end: offset one past its last character (`text[start:end] == raw`).
        raw: the span exactly as written.
        text: what follows the span up to the next span (well-formed or malformed) or the end,
            stripped: the content the box belongs to.
    """

    label: str
    boxes: list[Box]
    start: int
    end: int
    raw: str
    text: str = ""


@dataclass
class MalformedSpan:
    """Grounding markup that does not fit the grammar; it stays in the text as written.

    Args:
        raw: the offending characters (`text[start:end]`).
        start: offset of the first one in the parsed text.
        end: offset one past the last one.
        reason: what is wrong, for the report.
    """

    raw: str
    start: int
    end: int
    reason: str


class BoxListSyntaxError(ValueError):
    """A `<|det|>` body is not a strict `[[int, int, int, int], ...]` list (internal)."""


def parse_box_list(body: str) -> list[Box]:
    """Parse `[[x1, y1, x2, y2], ...]` strictly: integers only, four per box, at least one box.

    Whitespace is allowed between tokens; an optional `-` before digits is accepted so that a
    negative value is reported as out of range rather than as a syntax error. Anything else
    (floats, words, three or five numbers, nested or missing brackets, trailing commas, text
    after the list) is rejected.

    Args:
        body: the text between `<|det|>` and `<|/det|>`.

    Returns:
        The boxes, as written.

    Raises:
        BoxListSyntaxError: with a message naming the problem and its offset in `body`.
    """
    pos = 0
    n = len(body)

    def skip_ws() -> None:
        nonlocal pos
        while pos < n and body[pos].isspace():
            pos += 1

    def fail(what: str) -> BoxListSyntaxError:
        found = repr(body[pos]) if pos < n else "end of text"
        return BoxListSyntaxError(f"{what} at offset {pos} of the box list, found {found}")

    def expect(char: str, what: str) -> None:
        nonlocal pos
        skip_ws()
        if pos >= n or body[pos] != char:
            raise fail(f"expected {what}")
        pos += 1

    def integer(box_index: int, value_index: int) -> int:
        nonlocal pos
        skip_ws()
        if pos < n and body[pos] == "[":
            raise fail(f"nested brackets in box {box_index}")
        begin = pos
        if pos < n and body[pos] == "-":
            pos += 1
        digits = pos
        # isdecimal() would also take other scripts' digits, which int() accepts but the model's
        # coordinates never use: ASCII only.
        while pos < n and "0" <= body[pos] <= "9":
            pos += 1
        if pos == digits or (pos < n and (body[pos].isalnum() or body[pos] in "._")):
            while pos < n and body[pos] not in ",] \t\r\n":
                pos += 1
            token = body[begin:pos] or (body[pos] if pos < n else "")
            raise BoxListSyntaxError(
                f"value {value_index + 1} of box {box_index} is not an integer: {token!r}")
        return int(body[begin:pos])

    expect("[", "'[' opening the box list")
    boxes: list[Box] = []
    while True:
        skip_ws()
        if pos < n and body[pos] == "]":
            raise fail("expected a box" + (" (trailing comma)" if boxes else " (empty list)"))
        if pos < n and body[pos] != "[":
            raise fail(f"expected '[' opening box {len(boxes)} (a flat list is not a box list)")
        expect("[", f"'[' opening box {len(boxes)}")
        values = [integer(len(boxes), 0)]
        while True:
            skip_ws()
            if pos < n and body[pos] == ",":
                pos += 1
                if len(values) == 4:
                    raise BoxListSyntaxError(f"box {len(boxes)} has more than 4 numbers")
                values.append(integer(len(boxes), len(values)))
                continue
            if pos < n and body[pos] == "]":
                pos += 1
                break
            raise fail(f"',' or ']' in box {len(boxes)}")
        if len(values) != 4:
            raise BoxListSyntaxError(f"box {len(boxes)} has {len(values)} numbers, expected 4")
        boxes.append((values[0], values[1], values[2], values[3]))
        skip_ws()
        if pos < n and body[pos] == ",":
            pos += 1
            continue
        expect("]", "',' or ']' after a box")
        break
    skip_ws()
    if pos != n:
        raise fail("end of the box list")
    return boxes


def _segment_end(text: str, begin: int, next_tag: re.Match | None) -> int:
    """Where the content starting at `begin` stops: the next tag, line break, or text end."""
    stop = len(text) if next_tag is None else next_tag.start()
    newline = text.find("\n", begin, stop)
    return stop if newline < 0 else newline


def parse_grounding(text: str) -> tuple[list[GroundingSpan], list[MalformedSpan]]:
    """Find the grounding spans in model output.

    Args:
        text: the decoded output (special tokens kept). The EOS string, if any, is best removed
            first (`render_page` does), or it ends up in the last span's `text`.

    Returns:
        `(spans, malformed)`, each in text order. Every tag occurrence belongs to exactly one of
        them. Never raises on any string.
    """
    tags = list(_TAG.finditer(text))
    spans: list[GroundingSpan] = []
    malformed: list[MalformedSpan] = []

    def bad(start: int, end: int, reason: str) -> None:
        malformed.append(MalformedSpan(raw=text[start:end], start=start, end=end, reason=reason))

    def tag_at(k: int) -> re.Match | None:
        return tags[k] if k < len(tags) else None

    i = 0
    while i < len(tags):
        tag = tags[i]
        start = tag.start()
        if tag.group() == DET_OPEN:
            # A box list with no label before it: consume through its closing tag, if any.
            closing = tag_at(i + 1)
            end = _segment_end(text, tag.end(), closing)
            if closing is not None and closing.group() == DET_CLOSE and end == closing.start():
                bad(start, closing.end(), f"{DET_OPEN} without a {REF_OPEN} label before it")
                i += 2
            else:
                bad(start, end, f"unclosed {DET_OPEN} (no {REF_OPEN} label before it either)")
                i += 1
            continue
        if tag.group() != REF_OPEN:
            bad(start, tag.end(), f"stray {tag.group()}")
            i += 1
            continue

        ref_close = tag_at(i + 1)
        label_end = _segment_end(text, tag.end(), ref_close)
        if ref_close is None or ref_close.group() != REF_CLOSE or label_end != ref_close.start():
            cut = "output truncated?" if label_end == len(text) else "label runs into "
            if label_end < len(text):
                cut += "a line break" if text[label_end] == "\n" else repr(tag_at(i + 1).group())
            bad(start, label_end, f"unclosed {REF_OPEN} ({cut})")
            i += 1
            continue
        det_open = tag_at(i + 2)
        if det_open is None or det_open.group() != DET_OPEN or det_open.start() != ref_close.end():
            bad(start, ref_close.end(), f"{REF_OPEN}...{REF_CLOSE} not followed by {DET_OPEN}")
            i += 2
            continue
        det_close = tag_at(i + 3)
        body_end = _segment_end(text, det_open.end(), det_close)
        if det_close is None or det_close.group() != DET_CLOSE or body_end != det_close.start():
            cut = "output truncated?" if body_end == len(text) else "box list runs into "
            if body_end < len(text):
                cut += "a line break" if text[body_end] == "\n" else repr(det_close.group())
            bad(start, body_end, f"unclosed {DET_OPEN} ({cut})")
            i += 3
            continue
        label = text[tag.end():ref_close.start()]
        try:
            boxes = parse_box_list(text[det_open.end():det_close.start()])
        except BoxListSyntaxError as exc:
            bad(start, det_close.end(), f"bad box list for {label!r}: {exc}")
        else:
            spans.append(GroundingSpan(label=label, boxes=boxes, start=start,
                                       end=det_close.end(), raw=text[start:det_close.end()]))
        i += 4

    # Each span's text runs to the next piece of markup of either kind.
    starts = sorted([s.start for s in spans] + [m.start for m in malformed]) + [len(text)]
    for span in spans:
        following = next(s for s in starts if s >= span.end)
        span.text = text[span.end:following].strip()
    if malformed:
        logger.debug("%d malformed grounding span(s): %s", len(malformed),
                     "; ".join(m.reason for m in malformed))
    return spans, malformed


def out_of_range_values(box: Sequence[int]) -> list[int]:
    """The values of `box` outside the model's 0..999 range (to report before clamping)."""
    return [v for v in box if not 0 <= v <= NORM_MAX]


def normalize_box(box: Sequence[int]) -> Box:
    """`box` with its values clamped to 0..999 and its corners ordered (x1 <= x2, y1 <= y2).

    Args:
        box: four normalised coordinates `(x1, y1, x2, y2)` as the model wrote them.
    """
    x1, y1, x2, y2 = (min(max(int(v), 0), NORM_MAX) for v in box)
    return min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2)


def scale_box(box: Sequence[int], width: int, height: int) -> Box:
    """The pixel box of a normalised box on a `width` x `height` page.

    Each value becomes `int(v / 999 * size)`, the official formula (float division, then
    truncation), after clamping to 0..999, so a result lies in `0..size`; corners are ordered.
    The box is the official one: PIL's `crop` treats `(x2, y2)` as exclusive.

    Args:
        box: `(x1, y1, x2, y2)` normalised to 0..999 (any order, any values).
        width: the page width in pixels.
        height: the page height in pixels.
    """
    x1, y1, x2, y2 = normalize_box(box)
    return (int(x1 / NORM_MAX * width), int(y1 / NORM_MAX * height),
            int(x2 / NORM_MAX * width), int(y2 / NORM_MAX * height))
