"""Image references in records: paths, base64 bytes, data URLs, `{"bytes", "path"}` structs.

Readers turn each into `bytes` or a `Path` (never decoded pixels: a large dataset should not
hold decoded pages) and, when asked, open the header to check that it is an image and to learn
its size. Pixels are decoded later, one sample at a time, by `DeepseekOCR.prepare`.
"""
from __future__ import annotations

import base64
import binascii
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image

from .records import DataError, ImageRef

# EXIF orientations 5..8 rotate by 90 or 270 degrees: width and height swap after
# `ImageOps.exif_transpose`, which `load_image` applies.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_ORIENTATION_TAG = 0x0112
_PIL_HEADER_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error,
                      IndexError, KeyError)


def _decode_base64(text: str, source: str) -> bytes:
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(source, f"image: undecodable base64 ({exc})") from None
    if not data:
        raise DataError(source, "image: base64 string decodes to no bytes")
    return data


def resolve_image(value: object, root: Path, source: str) -> ImageRef:
    """One record's image entry -> bytes or an existing file's Path.

    Accepted: a path string (absolute, or relative to `root`); `"data:image/...;base64,..."`;
    `{"bytes": base64 string or raw bytes, "path": ...}` (bytes win when both are set, as in
    Hugging Face's Image feature); `{"path": ...}`; raw bytes (Parquet binary columns).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        if not value:
            raise DataError(source, "image: empty bytes")
        return bytes(value)
    if isinstance(value, dict):
        unknown = set(value) - {"bytes", "path"}
        if unknown:
            raise DataError(source, f"image: unknown key(s) {sorted(unknown)}; expected 'bytes' and/or 'path'")
        data = value.get("bytes")
        if data is not None:
            if isinstance(data, str):
                return _decode_base64(data, source)
            return resolve_image(data, root, source)
        if value.get("path") is not None:
            return resolve_image(value["path"], root, source)
        raise DataError(source, "image: neither 'bytes' nor 'path' is set")
    if not isinstance(value, str):
        raise DataError(source, f"image must be a path, a data URL or a {{'bytes': ...}} object, "
                                f"got {type(value).__name__}")
    if value.startswith("data:"):
        head, sep, payload = value.partition(",")
        if not sep or not head.endswith(";base64"):
            raise DataError(source, "image: a data URL must be 'data:image/...;base64,<data>'")
        return _decode_base64(payload, source)
    if value.startswith(("http://", "https://")):
        raise DataError(source, f"image: URLs are not fetched ({value!r}); download the images first")
    if not value.strip():
        raise DataError(source, "image: empty path")
    path = Path(os.path.expanduser(value))
    if not path.is_absolute():
        path = root / path
    if not path.is_file():
        raise DataError(source, f"image file not found: {path}")
    return path


def header_size(image: bytes | Path, source: str) -> tuple[int, int]:
    """`(width, height)` as `load_image` will see it (after EXIF orientation), from the header.

    `Image.open` reads the header only; the orientation comes from the EXIF the header carries.
    (A PNG whose eXIf chunk follows the pixel data is the one case this cannot see without
    decoding; the dataset checks the real length when it prepares the sample.)
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # size limits: load_image's job
            opened = Image.open(io.BytesIO(image) if isinstance(image, bytes) else image)
            with opened as img:
                width, height = img.size
                # The base class method reads the EXIF already parsed from the header; PNG's
                # override would decode the whole image to look for a late eXIf chunk.
                orientation = Image.Image.getexif(img).get(_ORIENTATION_TAG)
    except (Image.DecompressionBombError,) as exc:
        raise DataError(source, f"image too large: {exc}") from None
    except _PIL_HEADER_ERRORS as exc:
        raise DataError(source, f"not a readable image: {type(exc).__name__}: {exc}") from None
    if width < 1 or height < 1:
        raise DataError(source, f"image has no pixels ({width}x{height})")
    if orientation in _SWAPPING_ORIENTATIONS:
        return height, width
    return width, height
