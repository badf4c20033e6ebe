"""The one place images enter the package: open, check, decode, orient and convert to RGB.

`load_image` follows the official DeepSeek-OCR loader, `Image.open` → `ImageOps.exif_transpose`
→ `.convert("RGB")`, so that pixel values match it, and adds the checks that loader lacks.

Policies (each deliberate, each tested in tests/test_image_io.py):

* Alpha is dropped, not composited on white. `.convert("RGB")` keeps the colour channels of
  RGBA/LA/PA pixels and discards alpha, so a fully transparent (10, 20, 30, 0) pixel comes back
  as (10, 20, 30). Palette images with transparency give their palette colour. This is what
  the official loader does, and parity follows it.
* 16-bit and 32-bit greyscale (`I;16`, `I;16B`, `I`, `F`): Pillow's `.convert("RGB")` clips
  these to 0..255, which turns nearly every pixel of a 16-bit scan white. We rescale to 8 bits
  first: `I;16*` by `value >> 8`; `I` and `F` by `value / 256` when their maximum exceeds 255
  (assumed 16-bit range, clipped), and as plain `.convert` when it does not (values already in
  8-bit range, where the official result is right). This deviates from the official loader,
  which would return a white page.
* Multi-frame files (animated GIF, multi-page TIFF): the first frame, as the official loader
  gives. `count_frames` and the `frame=` argument let a caller treat frames as pages.
* Size: the pixel count in the header is checked after `Image.open` (which reads only the
  header) and before any decoding, against `max_pixels` (default `DEFAULT_MAX_PIXELS`,
  64 megapixels, about 8000 × 8000; overridable per call). That is the one limit: Pillow's
  decompression-bomb warning (above `Image.MAX_IMAGE_PIXELS`) is ignored, since our check
  follows at once. Pillow's error (above twice that value, raised while opening) becomes
  `ImageTooLargeError` quoting the limit that refused the image. Pillow's global
  `Image.MAX_IMAGE_PIXELS` is never changed, so a `max_pixels` above twice that value is still
  capped by Pillow.
* Decoding is forced here (`.load()`), so truncated or corrupt files fail in this function
  with `InvalidImageError`; `ImageFile.LOAD_TRUNCATED_IMAGES` is left as it is (False).
* Degenerate sizes (1 × 1, 1 × 50000) load; rejecting or tiling them is the caller's job.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import warnings
import zlib
from typing import BinaryIO, Union

from PIL import Image, ImageOps

from deepseek_ocr.errors import ImageTooLargeError, InvalidImageError

logger = logging.getLogger(__name__)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO, Image.Image]

DEFAULT_MAX_PIXELS = 64 * 1024 * 1024
"""Default pixel limit: 64 Mpx, far above any page scan at 300 dpi (A3 is about 17.4 Mpx)."""

# What Pillow's decoders raise on malformed data. Listed rather than `except Exception`, so that
# programming errors (and our own ImageError) still propagate as they are.
_PIL_DATA_ERRORS: tuple[type[BaseException], ...] = (
    OSError,  # includes UnidentifiedImageError, FileNotFoundError, IsADirectoryError
    SyntaxError,  # some plugins signal a bad header this way
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    IndexError,
    KeyError,
)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _describe(source: object) -> str:
    """A short name for `source`, used in every error message."""
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    if isinstance(source, Image.Image):
        return f"<PIL image {source.mode} {source.width}x{source.height}>"
    name = getattr(source, "name", None)
    return f"<file object {name!r}>" if name else f"<file object {type(source).__name__}>"


def _check_pixels(image: Image.Image, max_pixels: int, name: str) -> None:
    """Raise ImageTooLargeError when the declared size exceeds the limit (no decoding)."""
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {max_pixels} pixels (max_pixels)"
        )


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert to RGB like `.convert("RGB")`, except that >8-bit greyscale is rescaled, not clipped."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES:
        # `v * (1/256)` on an "I" image truncates, i.e. exactly `v >> 8` for 0..65535.
        return image.convert("I").point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    if mode in ("I", "F"):
        _, high = image.getextrema()
        if high > 255:
            # Values beyond 8 bits: treat as 16-bit range; convert("L") clips the rest.
            return image.point(lambda v: v * (1 / 256)).convert("L").convert("RGB")
    return image.convert("RGB")


def _open(source: ImageSource, name: str) -> tuple[Image.Image, bool]:
    """Open `source` lazily (header only). Returns the image and whether we own its file."""
    if isinstance(source, Image.Image):
        return source, False
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise InvalidImageError(f"{name}: empty input, not an image")
        return Image.open(io.BytesIO(bytes(source))), True
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path):
            raise InvalidImageError(f"{name}: is a directory, not an image file")
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            raise InvalidImageError(f"{name}: empty file, not an image")
        return Image.open(path), True
    if hasattr(source, "read"):
        # The caller's file object: Pillow does not close it and neither do we.
        return Image.open(source), False
    raise TypeError(
        f"load_image: expected a path, bytes, a binary file object or a PIL image, "
        f"got {type(source).__name__}"
    )


def _bomb_error(name: str, max_pixels: int, pil_limit: int | None) -> ImageTooLargeError:
    """Pillow refused to open an image over twice `Image.MAX_IMAGE_PIXELS`: say which limit that
    was for the caller, quoting one number (Pillow's own message names another)."""
    hard = 2 * pil_limit if pil_limit is not None else None
    if hard is None or max_pixels < hard:
        return ImageTooLargeError(f"{name}: image is over the limit of {max_pixels} pixels (max_pixels); "
                                  f"its header was refused before any pixel was decoded")
    return ImageTooLargeError(
        f"{name}: image is over {hard} pixels, where Pillow refuses to open images whatever "
        f"max_pixels allows (twice PIL.Image.MAX_IMAGE_PIXELS; raise that to read it)")


def load_image(
    source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS, frame: int = 0
) -> Image.Image:
    """Load an image as the official loader does and return a fully decoded RGB image.

    Args:
        source: a path (str or PathLike), raw bytes, a binary file object open for reading
            (read from its current position, left open), or a PIL image. A PIL image gets
            the same treatment (size check, decode, exif_transpose, convert); if `frame`
            differs from its current frame it is seeked, which moves the caller's image.
        max_pixels: the largest width × height accepted, checked before decoding.
        frame: which frame of a multi-frame file to load; 0 (the first) is the policy.

    Returns:
        A new RGB image, independent of any file (safe to use after the file is closed).

    Raises:
        ImageTooLargeError: the declared size exceeds `max_pixels` or Pillow's bomb limit.
        InvalidImageError: missing, empty, unreadable, truncated or undecodable input, or a
            frame out of range. The message names the source.
    """
    if max_pixels <= 0:
        raise ValueError(f"load_image: max_pixels must be positive, got {max_pixels}")
    name = _describe(source)
    pil_limit = Image.MAX_IMAGE_PIXELS
    image: Image.Image | None = None
    owned = False
    # catch_warnings restores the filter list on exit, so nothing leaks to the caller.
    with warnings.catch_warnings():
        # Our limit rules, checked right after the header is read (see the module docstring).
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        # Dropping palette transparency is the stated policy, so Pillow's hint to use RGBA is noise.
        warnings.filterwarnings("ignore", message="Palette images with Transparency", category=UserWarning)
        try:
            image, owned = _open(source, name)
            _check_pixels(image, max_pixels, name)
            if frame != image.tell():
                n_frames = getattr(image, "n_frames", 1)
                if not 0 <= frame < n_frames:
                    raise InvalidImageError(f"{name}: frame {frame} requested, image has {n_frames}")
                image.seek(frame)
                _check_pixels(image, max_pixels, name)  # frames may declare their own size
            image.load()  # decode now: truncation and corrupt data fail here, not later
            oriented = ImageOps.exif_transpose(image)
            result = _to_rgb(oriented)
        except Image.DecompressionBombError as err:
            raise _bomb_error(name, max_pixels, pil_limit) from err
        except (InvalidImageError, ImageTooLargeError):
            raise  # ours, already worded; must not be re-wrapped by the ValueError clause below
        except _PIL_DATA_ERRORS as err:
            raise InvalidImageError(f"{name}: cannot load image: {type(err).__name__}: {err}") from err
        finally:
            if owned and image is not None:
                image.close()
    logger.debug("loaded %s: %s %dx%d -> RGB %dx%d", name, image.mode, *image.size, *result.size)
    return result


def count_frames(source: ImageSource, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> int:
    """Number of frames (GIF frames, TIFF pages) in `source`; 1 for single-frame formats.

    Reads headers only, with the same size limit and error types as `load_image`. A file
    object is read from its current position; rewind it before calling `load_image` after.
    """
    name = _describe(source)
    image: Image.Image | None = None
    owned = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # as in load_image
        try:
            image, owned = _open(source, name)
            _check_pixels(image, max_pixels, name)
            return int(getattr(image, "n_frames", 1))
        except Image.DecompressionBombError as err:
            raise _bomb_error(name, max_pixels, Image.MAX_IMAGE_PIXELS) from err
        except (InvalidImageError, ImageTooLargeError):
            raise
        except _PIL_DATA_ERRORS as err:
            raise InvalidImageError(f"{name}: cannot read image: {type(err).__name__}: {err}") from err
        finally:
            if owned and image is not None:
                image.close()
