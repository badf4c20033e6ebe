"""The page with the model's boxes drawn on it, as the official `draw_bounding_boxes` makes it.

Each box gets a translucent fill, an outline (4 px for `title`, 2 px otherwise) and its label
above the top-left corner on a white background. Differences from the official picture, each
deliberate:

* Colours are a function of the label (a CRC-32 of it), not `np.random`, so that every `text`
  box has the same colour on every page and runs are reproducible. Channels keep the official
  ranges (red, green < 200, blue < 256), dark enough to read on white.
* The fill is composited first and the outline and label drawn over it (the official code pastes
  the fill last, tinting the outlines).
* The font is Pillow's built-in default at `LABEL_FONT_SIZE` px: no font file is needed.

Everything drawn lies inside a box (outline drawn inwards, fill) or in its label rectangle,
which sits on the `label_height()` rows above the box (below its top edge when the box touches
the top of the page).
"""

from __future__ import annotations

import zlib
from functools import lru_cache
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

LABEL_FONT_SIZE = 14
FILL_ALPHA = 20
"""Opacity (of 255) of the fill; the official value."""
TITLE_OUTLINE = 4
OUTLINE = 2


def label_color(label: str) -> tuple[int, int, int]:
    """A colour that depends only on `label` (same label, same colour, across pages and runs).

    Args:
        label: the span's label.
    """
    h = zlib.crc32(label.encode("utf-8"))
    return (h & 0xFF) % 200, ((h >> 8) & 0xFF) % 200, (h >> 16) & 0xFF


@lru_cache(maxsize=1)
def _font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Without FreeType, Pillow ignores the size and returns its small bitmap font; either way
    # no font file is read from disk.
    return ImageFont.load_default(size=LABEL_FONT_SIZE)


def label_height() -> int:
    """Rows the label background takes above a box (text ascent + descent, plus 1 px)."""
    _, top, _, bottom = _font().getbbox("Ag")
    return int(bottom) + 1 if top >= 0 else int(bottom - top) + 1


def draw_boxes(page: Image.Image, boxes: Sequence[tuple[str, Sequence[int]]]) -> Image.Image:
    """Draw labelled pixel boxes on a copy of `page`.

    Args:
        page: the page image (any mode; the result is RGB).
        boxes: `(label, (x1, y1, x2, y2))` in pixels of `page`, corners ordered (as
            `scale_box` returns them); `(x2, y2)` is drawn inclusive, like PIL's rectangle.

    Returns:
        A new RGB image; `page` is not modified.
    """
    drawn = page.convert("RGB") if page.mode != "RGB" else page.copy()
    if not boxes:
        return drawn
    overlay = Image.new("RGBA", drawn.size, (0, 0, 0, 0))
    fill = ImageDraw.Draw(overlay)
    for label, (x1, y1, x2, y2) in boxes:
        fill.rectangle((x1, y1, x2, y2), fill=label_color(label) + (FILL_ALPHA,))
    drawn.paste(overlay, (0, 0), overlay)

    draw = ImageDraw.Draw(drawn)
    font = _font()
    tall = label_height()
    for label, (x1, y1, x2, y2) in boxes:
        color = label_color(label)
        draw.rectangle((x1, y1, x2, y2), outline=color,
                       width=TITLE_OUTLINE if label == "title" else OUTLINE)
        if not label:
            continue
        left, _, right, _ = draw.textbbox((0, 0), label, font=font)
        ty = max(0, y1 - tall)
        draw.rectangle((x1, ty, x1 + int(right - left), ty + tall - 1), fill=(255, 255, 255))
        draw.text((x1 - left, ty), label, font=font, fill=color)
    return drawn
