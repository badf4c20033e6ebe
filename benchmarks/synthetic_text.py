"""Synthetic text for the training benchmarks: words, rendered lines and pages, sized answers.

Everything is drawn from a seeded `random.Random`, and rendered with Pillow's bundled FreeType
font (`ImageFont.load_default(size=...)`, Pillow >= 10.1), so a line image is the same on every
machine whatever fonts are installed.
"""
from __future__ import annotations

import random
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont


def word_list(tokenizer, count: int = 2000, min_len: int = 3, max_len: int = 9) -> list[str]:
    """Lower-case ASCII words that are single tokens with a leading space (byte-level BPE's
    `Ġ`), in vocabulary order: the most frequent English words the tokenizer knows."""
    words, seen = [], set()
    for i in range(min(tokenizer.vocab_size, 60000)):
        tok = tokenizer.id_to_token(i)
        if not tok or not tok.startswith("Ġ"):
            continue
        w = tok[1:]
        if min_len <= len(w) <= max_len and w.isascii() and w.isalpha() and w.islower() and w not in seen:
            seen.add(w)
            words.append(w)
            if len(words) >= count:
                break
    return words


def answer_of_tokens(tokenizer, rng: random.Random, words: list[str], n_tokens: int) -> str:
    """Random words whose encoding is exactly `n_tokens` long (words are added while they fit,
    then one-token digits fill the rest)."""
    text, n = "", 0
    for _ in range(10 * n_tokens + 10):
        cand = (text + " " + rng.choice(words)) if text else rng.choice(words)
        m = len(tokenizer.encode(cand))
        if m > n_tokens:
            break
        text, n = cand, m
    while n < n_tokens:  # digits: one token each in this tokenizer, even when adjacent
        cand = text + str(rng.randrange(10))
        m = len(tokenizer.encode(cand))
        if m != n + 1:
            cand = text + " " + str(rng.randrange(10))
            m = len(tokenizer.encode(cand))
            if m != n + 1:
                break
        text, n = cand, m
    return text


@lru_cache(maxsize=8)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def render_lines(lines: list[str], *, size: tuple[int, int], font_size: int, margin: int = 16,
                 rng: random.Random | None = None, jitter: int = 0) -> Image.Image:
    """Black text lines on white, top-left aligned with `margin`, optionally shifted by up to
    `jitter` pixels (a little position variety for the learning run)."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    f = font(font_size)
    dx = rng.randint(0, jitter) if rng is not None and jitter else 0
    dy = rng.randint(0, jitter) if rng is not None and jitter else 0
    step = int(font_size * 1.3)
    for i, line in enumerate(lines):
        draw.text((margin + dx, margin + dy + i * step), line, fill="black", font=f)
    return img


def wrap(text: str, width_chars: int) -> list[str]:
    out, cur = [], ""
    for w in text.split():
        if cur and len(cur) + 1 + len(w) > width_chars:
            out.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}" if cur else w
    if cur:
        out.append(cur)
    return out


def line_image(text: str, width: int = 1024, height: int = 128, font_size: int = 28) -> Image.Image:
    """One text line (wrapped if needed) on a wide strip: the "lines" workload's sample."""
    return render_lines(wrap(text, int(width / (0.55 * font_size)))[:3], size=(width, height),
                        font_size=font_size, margin=8)


def page_image(text: str, width: int = 1240, height: int = 1754, font_size: int = 22) -> Image.Image:
    """An A4 page at 150 dpi filled with the text (Gundam: 2 x 3 tiles of 640 + the 1024 view)."""
    lines = wrap(text, int((width - 120) / (0.55 * font_size)))
    return render_lines(lines[: (height - 120) // int(font_size * 1.3)], size=(width, height),
                        font_size=font_size, margin=60)


def smoke_checkpoint(folder, **decoder):
    """A float32 random checkpoint with a shallow vision tower (SAM and CLIP of 2 blocks each,
    official widths) for the CPU smoke runs: the official 24-layer CLIP makes float32 AdamW need
    ~6 GB and a step take a minute on a shared 2-core CPU."""
    import torch

    from deepseek_ocr.weights.random import make_random_checkpoint

    return make_random_checkpoint(folder, dtype=torch.float32, vision_depth=2, **decoder)
