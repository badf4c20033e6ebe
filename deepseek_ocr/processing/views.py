"""Resolution modes and the views an image is cut into (DESIGN.md section 2).

A mode fixes the global view's side (`base_size`), the tile side (`image_size`) and whether
the image is tiled (`crop`). The five named modes are the official ones; `Mode(...)` with other
numbers is for compression-ratio ablations. All geometry is done with PIL exactly as the
official preprocessing does (same calls, same resampling, same order), because the pixels are
compared bit for bit after rounding to bfloat16.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps

from ..errors import InvalidImageError, ModeError

if TYPE_CHECKING:  # torch is imported where pixels are made, so that parsing a mode (the
    import torch   # command line's first check) does not wait seconds for it

PAD_COLOR = (127, 127, 127)  # int(0.5 * 255) per channel: the normalization mean, i.e. 0 after it


@dataclass(frozen=True)
class Mode:
    """A resolution setting.

    Args:
        base_size: side of the global view.
        image_size: side of each tile (crop mode), or of the only view (no crop).
        crop: tile the image (Gundam) or not.
        min_tiles, max_tiles: the tile-count range of crop mode (official: 2..9).
        name: label for reports.
    """

    base_size: int
    image_size: int
    crop: bool
    min_tiles: int = 2
    max_tiles: int = 9
    name: str = "custom"

    def __post_init__(self):
        for field in ("base_size", "image_size"):
            v = getattr(self, field)
            if isinstance(v, bool) or not isinstance(v, int) or v < 64 or v % 16:
                raise ModeError(f"Mode.{field} must be a multiple of 16 and >= 64, got {v!r}")
        if self.crop and not 1 <= self.min_tiles <= self.max_tiles:
            raise ModeError(f"Mode needs 1 <= min_tiles <= max_tiles, got {self.min_tiles}..{self.max_tiles}")


MODES: dict[str, Mode] = {
    "tiny": Mode(512, 512, False, name="tiny"),
    "small": Mode(640, 640, False, name="small"),
    "base": Mode(1024, 1024, False, name="base"),
    "large": Mode(1280, 1280, False, name="large"),
    "gundam": Mode(1024, 640, True, name="gundam"),
}


def resolve_mode(mode: str | Mode) -> Mode:
    """A `Mode`, a mode name ("tiny" ... "gundam", any case), or `BASE:IMAGE[:crop]` such as
    "1024:640:crop" (the command line's form: global view side, tile side, tiling on).

    Raises:
        ModeError: an unknown name or a malformed or invalid `BASE:IMAGE[:crop]`.
    """
    if isinstance(mode, Mode):
        return mode
    if not isinstance(mode, str):
        raise ModeError(f"mode must be a mode name, 'BASE:IMAGE[:crop]' or a Mode, got {type(mode).__name__}")
    named = MODES.get(mode.strip().lower())
    if named is not None:
        return named
    parts = mode.strip().split(":")
    expected = f"one of {sorted(MODES)}, BASE:IMAGE or BASE:IMAGE:crop (e.g. 1024:640:crop)"
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() != "crop"):
        raise ModeError(f"unknown mode {mode!r}; expected {expected}")
    if not all(p.strip().isdigit() for p in parts[:2]):
        raise ModeError(f"mode {mode!r}: BASE and IMAGE must be whole numbers of pixels; expected {expected}")
    return Mode(int(parts[0]), int(parts[1]), len(parts) == 3, name=mode.strip())


def candidate_grids(min_tiles: int, max_tiles: int) -> list[tuple[int, int]]:
    """Tile grids (cols, rows) with min <= cols*rows <= max, in the official order.

    The official code sorts a Python *set* by tile count; the order among grids of equal count
    is the set's iteration order, which CPython fixes for small int tuples. Building the same
    set the same way reproduces it, and with it the official tie-breaking.
    """
    grids = set((i, j) for n in range(min_tiles, max_tiles + 1)
                for i in range(1, n + 1) for j in range(1, n + 1)
                if min_tiles <= i * j <= max_tiles)
    return sorted(grids, key=lambda g: g[0] * g[1])


def choose_grid(width: int, height: int, tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """The grid whose aspect is closest to the image's; on an exact tie the later candidate
    wins when the image has more than half the grid's pixel area."""
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in candidate_grids(min_tiles, max_tiles):
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * tile * tile * cols * rows:
            best = (cols, rows)
    return best


def tile_image(image: Image.Image, tile: int, min_tiles: int, max_tiles: int
               ) -> tuple[list[Image.Image], tuple[int, int]]:
    """Resize to the chosen grid and cut into tiles row by row; returns (tiles, (cols, rows))."""
    cols, rows = choose_grid(image.width, image.height, tile, min_tiles, max_tiles)
    resized = image.resize((tile * cols, tile * rows))  # PIL default resampling (bicubic)
    tiles = [resized.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile))
             for r in range(rows) for c in range(cols)]
    return tiles, (cols, rows)


def pad_to_square(image: Image.Image, size: int) -> Image.Image:
    """`ImageOps.pad(image, (size, size), color=grey)`: fit keeping aspect, centre on grey.

    Pillow would compute a zero-pixel side for extreme strips (1x50000) and fail; there we
    keep one pixel instead, the only case where we leave the official path (which crashes).
    """
    w, h = image.size
    if w >= h:
        inner = (size, round(h / w * size))
    else:
        inner = (round(w / h * size), size)
    if min(inner) >= 1:
        return ImageOps.pad(image, (size, size), color=PAD_COLOR)
    inner = (max(1, inner[0]), max(1, inner[1]))
    canvas = Image.new(image.mode, (size, size), PAD_COLOR)
    resized = image.resize(inner, Image.Resampling.BICUBIC)
    canvas.paste(resized, ((size - inner[0]) // 2, (size - inner[1]) // 2))
    return canvas


def to_pixels(views: list[Image.Image]) -> torch.Tensor:
    """RGB views -> `[N, 3, S, S]` bfloat16 in [-1, 1]: ToTensor, normalize(0.5, 0.5), bf16.

    The official preprocessing computes (uint8 / 255 - 0.5) / 0.5 in float32 (torchvision's
    ToTensor and Normalize) and rounds to bf16. A uint8 channel has 256 levels, so those float32
    steps are taken once on the 256 levels (`level_bits`) and every pixel is then a lookup of
    its level's bf16 bit pattern: the same values, bit for bit, in one pass over the pixels
    instead of five float32 passes: a Gundam page's seven views take 19 ms instead of 39 on one
    core of the development machine (`benchmarks/bench_prepare.py`).
    """
    import torch
    bits = level_bits()
    out = np.empty((len(views), 3, views[0].height, views[0].width), dtype=np.int16)
    for i, c, plane in _channel_planes(views, "to_pixels"):
        np.take(bits, plane, out=out[i, c])
    return torch.from_numpy(out).view(torch.bfloat16)


def _channel_planes(views: list[Image.Image], caller: str):
    """(view index, channel, `[S, S]` uint8 plane) of RGB views of one size. One plane per channel
    (PIL splits them): each is read and written contiguously, and lands channels first."""
    for i, view in enumerate(views):
        if view.size != views[0].size:
            raise ValueError(f"{caller} stacks views of one size: view {i} is {view.size}, view 0 {views[0].size}")
        if view.mode != "RGB":
            view = view.convert("RGB")
        for c, plane in enumerate(view.split()):
            yield i, c, np.asarray(plane, dtype=np.uint8)


_LEVEL_BITS: np.ndarray | None = None


def level_bits() -> np.ndarray:
    """The int16 bit patterns of the bf16 values of the 256 uint8 levels, computed with the
    official float32 steps (uint8 / 255, then - 0.5, then / 0.5, then to bf16;
    `vision.pixels.level_values`)."""
    global _LEVEL_BITS
    if _LEVEL_BITS is None:
        import torch
        from ..vision.pixels import level_values
        _LEVEL_BITS = level_values().view(torch.int16).numpy()
    return _LEVEL_BITS


def to_codes(views: list[Image.Image]) -> torch.Tensor:
    """RGB views -> `[N, 3, S, S]` uint8: each pixel's level per channel, the input of
    `vision.pixels.pixels_from_codes` (which gives `to_pixels(views)` bit for bit). A sixth of
    `to_pixels`' time (3 vs 16 ms for a Gundam page's seven views): the planes are copied, not
    looked up, and the lookup happens where the pixels are used."""
    import torch
    out = np.empty((len(views), 3, views[0].height, views[0].width), dtype=np.uint8)
    for i, c, plane in _channel_planes(views, "to_codes"):
        out[i, c] = plane
    return torch.from_numpy(out)


@dataclass
class Views:
    """The pixel views of one image and the facts the prompt layout needs."""

    global_view: torch.Tensor  # (1, 3, B, B) bf16 (uint8 levels with `codes`)
    crops: torch.Tensor  # (n, 3, S, S) bf16 (uint8 levels with `codes`), n = 0 without tiles
    tiles: tuple[int, int]  # (w_tiles, h_tiles); (1, 1) without tiles
    original_size: tuple[int, int]  # (width, height) of the loaded image


def make_views(image: Image.Image, mode: Mode, *, codes: bool = False) -> Views:
    """Cut a loaded RGB image into the views of `mode` (DESIGN.md section 2): bf16 pixels, or
    with `codes` their uint8 levels (`to_codes`; the vision tower converts them)."""
    import torch
    convert = to_codes if codes else to_pixels
    kind = torch.uint8 if codes else torch.bfloat16
    if image.width < 1 or image.height < 1:
        raise InvalidImageError(f"image has no pixels ({image.width}x{image.height})")
    size = image.size
    if not mode.crop:
        if mode.image_size <= 640:
            image = image.resize((mode.image_size, mode.image_size))  # aspect not kept (official)
        view = pad_to_square(image, mode.image_size)
        empty = torch.zeros(0, 3, mode.image_size, mode.image_size, dtype=kind)
        return Views(convert([view]), empty, (1, 1), size)
    tile = mode.image_size
    if image.width <= tile and image.height <= tile:
        tiles, grid = [], (1, 1)
    else:
        tiles, grid = tile_image(image, tile, mode.min_tiles, mode.max_tiles)
    global_view = convert([pad_to_square(image, mode.base_size)])
    if grid == (1, 1):  # a 1x1 grid (possible with min_tiles=1) carries no extra detail
        tiles = []
    crops = convert(tiles) if tiles else torch.zeros(0, 3, tile, tile, dtype=kind)
    return Views(global_view, crops, grid, size)


def tokens_per_side(view_size: int, patch: int = 16, downsample: int = 4) -> int:
    return math.ceil((view_size // patch) / downsample)


def valid_vision_tokens(mode: Mode, original_size: tuple[int, int], n_tiles: int) -> int:
    """Vision tokens that carry image content (the official `test_compress` figure).

    A padded view wastes the strips of grey: only `r = short/long` of its `q*q` tokens count.
    A view resized to a square (no-crop modes of side <= 640) has no padding. Each tile counts
    in full. Named modes give the official numbers: tiny 64, small 100, base int(256 r),
    large int(400 r), gundam int(256 r) + 100 per tile.
    """
    w, h = original_size
    r = min(w, h) / max(w, h)
    if not mode.crop:
        q = tokens_per_side(mode.image_size)
        return q * q if mode.image_size <= 640 else int(q * q * r)
    qb, qt = tokens_per_side(mode.base_size), tokens_per_side(mode.image_size)
    return int(qb * qb * r) + n_tiles * qt * qt
