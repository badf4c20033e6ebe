"""Synthetic pages with exact ground truth: chosen text rendered at a chosen page size, font,
font size and margins, cut to a target text-token count.

    pages = make_synthetic_pages("synth", targets=[700], font_sizes=[16, 20, 24], count=3,
                                 count_tokens=tokenizer_counter(), seed=0)

What is written to the folder, per page `ID` (`t700-p001-fs20`: target, text number, font size):

* `ID.png`: the page, black text on white, 8-bit greyscale;
* `ID.md`: the ground truth, exactly the rendered words: paragraphs joined by a blank line, the
  words of a paragraph by single spaces (line wrapping is layout, so the same text at another
  font size has the same ground truth and the same token count);
* `ID.json`: the page's facts: `text_tokens` (the tokenizer's count of `ID.md`'s text),
  `target_tokens`, font name and file, font size, page size, margin, lines, characters, seed;
* `synth.json` (the manifest, read by `load_pages`): the run's settings and every page's facts.

Text: generated from the seed (`synth_text.generate_paragraphs`; text number `i` of seed `s` is
seeded by `s:i`, so adding pages never changes earlier ones), or a user's text file, consumed in
order: each text takes the longest word prefix of what is left that fits its target.

Determinism: the same arguments, font file and Pillow (FreeType) build give byte-identical
files. The default font is Pillow's own built-in scalable font (`ImageFont.load_default(size=)`,
Pillow >= 10.1), present wherever Pillow is; its name is recorded with every page.
"""
from __future__ import annotations

import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from .errors import SynthError
from .synth_text import (TokenCounter, drop_words, fit_to_tokens, generate_paragraphs, paragraphs_of,
                         words_available)

MANIFEST = "synth.json"
# The official tokenizer ships with the package (deepseek_ocr/assets/tokenizer): pages can be
# cut to a token count without downloading the model.
BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"


def token_counter(folder: str | Path | None = None) -> tuple[TokenCounter, str]:
    """A function counting text tokens with the tokenizer in `folder` (a checkpoint folder;
    None: the bundled official tokenizer), and a name for it to record.

    Raises:
        TokenizerError: the folder holds no usable tokenizer.
    """
    from ..processing.tokenizer import Tokenizer
    tokenizer = Tokenizer.from_folder(folder or BUNDLED_TOKENIZER)
    name = "bundled DeepSeek-OCR tokenizer" if folder is None else f"tokenizer of {folder}"
    return (lambda text: len(tokenizer.encode(text))), name


@dataclass(frozen=True)
class PageGeometry:
    """Page size and layout, in pixels.

    Attributes:
        width: page width.
        height: page height; None makes the page as tall as its text needs.
        margin: blank border on every side.
        line_spacing: line pitch as a multiple of the font size.
    """

    width: int = 1000
    height: int | None = 1414
    margin: int = 64
    line_spacing: float = 1.3

    def __post_init__(self):
        if self.width < 1 or (self.height is not None and self.height < 1):
            raise SynthError(f"page size must be positive, got {self.width}x{self.height}")
        if self.margin < 0 or 2 * self.margin >= self.width:
            raise SynthError(f"margin {self.margin} leaves no room on a {self.width}-pixel-wide page")
        if not self.line_spacing > 0:
            raise SynthError(f"line_spacing must be positive, got {self.line_spacing}")


def load_font(path: str | Path | None, size: int):
    """The font at `size` pixels and its description for the metadata.

    Args:
        path: a TrueType/OpenType file, or None for Pillow's built-in scalable font.
        size: the font size in pixels.

    Raises:
        SynthError: an unreadable font file, or a Pillow too old for a scalable built-in font.
    """
    import PIL
    from PIL import ImageFont
    if size < 1:
        raise SynthError(f"font size must be positive, got {size}")
    if path is None:
        font = ImageFont.load_default(size=size)
        if not isinstance(font, ImageFont.FreeTypeFont):
            raise SynthError(f"Pillow {PIL.__version__} has no scalable built-in font (needs Pillow >= 10.1 "
                             "with FreeType); pass a font file (e.g. DejaVuSans.ttf)")
        file = None
    else:
        try:
            font = ImageFont.truetype(str(path), size)
        except OSError as exc:
            raise SynthError(f"cannot load the font {path}: {exc}") from None
        file = str(path)
    family, style = font.getname()
    return font, {"font": f"{family} {style}".strip(), "font_file": file or "Pillow built-in",
                  "pillow_version": PIL.__version__}


def wrap_lines(text: str, font, max_width: int) -> list[str]:
    """Greedy word wrap at `max_width` pixels; a blank line between paragraphs.

    Raises:
        SynthError: a single word wider than the line.
    """
    lines: list[str] = []
    for number, paragraph in enumerate(text.split("\n\n")):
        if number:
            lines.append("")
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}" if line else word
            if font.getlength(candidate) <= max_width:
                line = candidate
                continue
            if not line:
                raise SynthError(f"the word {word[:40]!r} is wider than the line ({max_width} px); "
                                 "use a smaller font or a wider page")
            lines.append(line)
            line = word
            if font.getlength(word) > max_width:
                raise SynthError(f"the word {word[:40]!r} is wider than the line ({max_width} px); "
                                 "use a smaller font or a wider page")
        if line:
            lines.append(line)
    return lines


def render_page(text: str, font, font_size: int, geometry: PageGeometry):
    """The page image ("L" mode) and its wrapped lines.

    Raises:
        SynthError: the text does not fit the page height.
    """
    from PIL import Image, ImageDraw
    lines = wrap_lines(text, font, geometry.width - 2 * geometry.margin)
    pitch = math.ceil(font_size * geometry.line_spacing)
    needed = 2 * geometry.margin + len(lines) * pitch
    height = geometry.height if geometry.height is not None else needed
    if needed > height:
        raise SynthError(f"{len(lines)} lines at font size {font_size} need {needed} px of height but the "
                         f"page has {height}; lower the token target or the font size, or use a taller "
                         "page (or height 'auto')")
    image = Image.new("L", (geometry.width, height), 255)
    draw = ImageDraw.Draw(image)
    for row, line in enumerate(lines):
        if line:
            draw.text((geometry.margin, geometry.margin + row * pitch), line, font=font, fill=0)
    return image, lines


def _texts(targets: Sequence[int], count: int, count_tokens: TokenCounter, seed: int,
           source_text: str | None) -> list[tuple[int, int, str]]:
    """(target, text number, text) for every target and text number (module doc)."""
    remaining = paragraphs_of(source_text) if source_text is not None else None
    if remaining is not None and not remaining:
        raise SynthError("the text file holds no words")
    out = []
    for target in targets:
        if target < 1:
            raise SynthError(f"token targets must be positive, got {target}")
        for index in range(1, count + 1):
            if remaining is None:
                paragraphs: list[str] = []
                # Generated text: enough paragraphs that the budget, not the text, is the limit
                # (these words are at least one token each, so `target` words always suffice).
                n = 4
                while words_available(paragraphs) <= target:
                    paragraphs = generate_paragraphs(f"{seed}:{target}:{index}", n)
                    n *= 2
            else:
                paragraphs = remaining
            text, used = fit_to_tokens(paragraphs, target, count_tokens)
            if not used:
                raise SynthError(f"text {index} for {target} tokens: no text left (or its first word "
                                 "exceeds the target); give a longer text file or fewer pages")
            if remaining is not None:
                remaining = drop_words(remaining, used)
            out.append((target, index, text))
    return out


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def make_synthetic_pages(folder: str | Path, *, targets: Sequence[int], count_tokens: TokenCounter,
                         font_sizes: Sequence[int] = (16,), count: int = 1,
                         geometry: PageGeometry = PageGeometry(), seed: int = 0,
                         text: str | None = None, font_path: str | Path | None = None,
                         tokenizer_name: str = "") -> list[dict[str, Any]]:
    """Render and write the pages (module doc); returns the manifest's page entries.

    Args:
        folder: output folder (created).
        targets: text-token targets; `count` texts per target.
        count_tokens: the tokenizer's count (what the ground truth is cut to).
        font_sizes: every text is rendered once per size.
        count: texts per target.
        geometry: page size, margin, line spacing.
        seed: seeds generated text.
        text: a user's text to consume instead of generated text.
        font_path: a font file (None: Pillow's built-in font).
        tokenizer_name: recorded in the manifest (which tokenizer counted).

    Raises:
        SynthError: bad sizes, a font that cannot be loaded, a text that does not fit its page.
    """
    if count < 1 or not targets or not font_sizes:
        raise SynthError("need at least one page: count >= 1, a token target and a font size")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fonts = {size: load_font(font_path, size) for size in font_sizes}
    entries = []
    for target, index, page_text in _texts(targets, count, count_tokens, seed, text):
        tokens = count_tokens(page_text)
        for size in font_sizes:
            font, font_facts = fonts[size]
            page_id = f"t{target}-p{index:03d}-fs{size}"
            image, lines = render_page(page_text, font, size, geometry)
            entry = {"id": page_id, "image": f"{page_id}.png", "text": f"{page_id}.md",
                     "text_tokens": tokens, "target_tokens": target, "text_number": index,
                     "font_size": size, **font_facts, "page_width": image.width,
                     "page_height": image.height, "margin": geometry.margin,
                     "line_spacing": geometry.line_spacing, "lines": len(lines),
                     "characters": len(page_text), "seed": seed, "language": "en",
                     "text_source": "file" if text is not None else "generated"}
            png = io.BytesIO()
            image.save(png, format="PNG")
            _write(folder / entry["image"], png.getvalue())
            _write(folder / entry["text"], page_text.encode("utf-8"))
            _write(folder / f"{page_id}.json", (json.dumps(entry, indent=1) + "\n").encode("utf-8"))
            entries.append(entry)
    manifest = {"generator": "deepseek_ocr.research.synth", "seed": seed, "targets": list(targets),
                "font_sizes": list(font_sizes), "count": count, "geometry": asdict(geometry),
                "tokenizer": tokenizer_name, "pages": entries}
    _write(folder / MANIFEST, (json.dumps(manifest, indent=1) + "\n").encode("utf-8"))
    return entries
