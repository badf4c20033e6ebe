"""Tests for deepseek_ocr.processing.image_io: every input is built here with Pillow in tmp_path."""

from __future__ import annotations

import io
import random
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from deepseek_ocr.errors import ImageTooLargeError, InvalidImageError
from deepseek_ocr.processing.image_io import DEFAULT_MAX_PIXELS, count_frames, load_image

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _close(pixel, expected, tol=12):
    """JPEG is lossy: compare colours with a tolerance."""
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


def _noisy_rgb(width=256, height=256, seed=0):
    """A picture with real entropy, so that half of its encoded bytes is missing real data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), "RGB")


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG with a valid IHDR (correct CRC) and no pixel data: tiny, but claims any size."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_exif_orientation(tmp_path, orientation):
    # 40 x 20, red left half, blue right half.
    image = Image.new("RGB", (40, 20), BLUE)
    image.paste(RED, (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.jpg"
    image.save(path, "JPEG", quality=95, exif=exif.tobytes())

    out = load_image(path)
    assert out.mode == "RGB"
    if orientation in (1, 3):
        assert out.size == (40, 20)
        left, right = out.getpixel((5, 10)), out.getpixel((34, 10))
        red_side, blue_side = (left, right) if orientation == 1 else (right, left)  # 3: 180 degrees
    else:
        assert out.size == (20, 40)  # width and height swapped
        top, bottom = out.getpixel((10, 5)), out.getpixel((10, 34))
        # 6: turned 90 degrees clockwise, so the left edge goes to the top; 8: to the bottom.
        red_side, blue_side = (top, bottom) if orientation == 6 else (bottom, top)
    assert _close(red_side, RED) and _close(blue_side, BLUE)


# ---------------------------------------------------------------- modes


def test_cmyk(tmp_path):
    path = tmp_path / "cmyk.tiff"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path)
    assert load_image(path).getpixel((3, 3)) == (255, 0, 0)


def test_palette_with_transparency_gives_palette_colour(tmp_path):
    image = Image.new("P", (8, 8), 1)
    image.putpalette([0, 0, 0, 200, 100, 50] + [0] * (256 * 3 - 6))
    path = tmp_path / "p.png"
    image.save(path, transparency=1)
    with Image.open(path) as check:
        assert check.info.get("transparency") == 1
    out = load_image(path)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (200, 100, 50)


def test_palette_without_transparency(tmp_path):
    image = Image.new("P", (8, 8), 2)
    image.putpalette([0, 0, 0, 255, 255, 255, 12, 34, 56] + [0] * (256 * 3 - 9))
    path = tmp_path / "p.gif"
    image.save(path)
    assert load_image(path).getpixel((4, 4)) == (12, 34, 56)


def test_rgba_alpha_is_dropped_not_white(tmp_path):
    image = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    image.putpixel((1, 1), (200, 210, 220, 255))
    path = tmp_path / "rgba.png"
    image.save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (10, 20, 30)  # fully transparent, colour kept (official policy)
    assert out.getpixel((1, 1)) == (200, 210, 220)


def test_la(tmp_path):
    path = tmp_path / "la.png"
    Image.new("LA", (4, 4), (100, 0)).save(path)
    assert load_image(path).getpixel((2, 2)) == (100, 100, 100)


def test_one_bit(tmp_path):
    image = Image.new("1", (8, 8), 0)
    image.putpixel((3, 3), 1)
    path = tmp_path / "bw.png"
    image.save(path)
    out = load_image(path)
    assert out.getpixel((3, 3)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 0)


def test_16bit_grey_keeps_gradient(tmp_path):
    values = (np.arange(256, dtype=np.uint16) * 257)[None, :].repeat(4, axis=0)  # 0 .. 65535
    source = Image.fromarray(values)
    assert source.mode == "I;16"
    path = tmp_path / "g16.png"
    source.save(path)
    # Plain .convert("RGB") clips: most of the page would be white. We rescale instead.
    with Image.open(path) as plain:
        assert plain.convert("RGB").getpixel((128, 0)) == (255, 255, 255)
    out = np.asarray(load_image(path))
    assert out.shape == (4, 256, 3)
    assert np.array_equal(out[0, :, 0], np.arange(256))  # (x * 257) >> 8 == x
    assert (np.diff(out[0, :, 0].astype(int)) >= 0).all()
    mid = Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16))
    assert abs(load_image(mid).getpixel((0, 0))[0] - 128) <= 1


def test_16bit_big_endian_tiff(tmp_path):
    values = np.full((4, 4), 0x8000, dtype=">u2")
    image = Image.frombuffer("I;16B", (4, 4), values.tobytes(), "raw", "I;16B", 0, 1)
    path = tmp_path / "g16b.tiff"
    image.save(path)
    assert load_image(path).getpixel((0, 0)) == (128, 128, 128)


def test_32bit_int_and_float_grey():
    wide = Image.fromarray(np.array([[0, 32768, 65535]], dtype=np.int32), "I")
    assert [load_image(wide).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    wide_f = Image.fromarray(np.array([[0.0, 32768.0, 65535.0]], dtype=np.float32), "F")
    assert [load_image(wide_f).getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]
    # Already in 8-bit range: plain convert, as the official loader does.
    narrow = Image.fromarray(np.array([[0, 100, 255]], dtype=np.int32), "I")
    assert [load_image(narrow).getpixel((x, 0))[0] for x in range(3)] == [0, 100, 255]


# ---------------------------------------------------------------- broken input


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    buffer = io.BytesIO()
    _noisy_rgb().save(buffer, fmt)
    data = buffer.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidImageError, match="cut"):
        load_image(path)
    with pytest.raises(InvalidImageError):
        load_image(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "name, content",
    [
        ("empty.png", b""),
        ("random.png", random.Random(0).randbytes(4096)),
        ("text.png", b"This is a plain text file, not a PNG.\n" * 20),
    ],
)
def test_not_an_image(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidImageError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    with pytest.raises(InvalidImageError):
        load_image(content)


def test_missing_path_and_directory(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(InvalidImageError) as info:
        load_image(missing)
    assert str(missing) in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with pytest.raises(InvalidImageError) as info:
        load_image(str(tmp_path))
    assert str(tmp_path) in str(info.value)


def test_wrong_source_type():
    with pytest.raises(TypeError):
        load_image(12345)  # type: ignore[arg-type]


# ---------------------------------------------------------------- size limits


def test_header_claims_gigapixels(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(100_000, 100_000))
    assert path.stat().st_size < 100
    limit_before = Image.MAX_IMAGE_PIXELS
    # The file holds no pixel data: reaching the decoder would give InvalidImageError instead.
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        load_image(path)
    with pytest.raises(ImageTooLargeError):
        load_image(path, max_pixels=10**12)  # Pillow's hard limit still applies
    with pytest.raises(ImageTooLargeError):
        count_frames(path)
    assert Image.MAX_IMAGE_PIXELS == limit_before


def test_own_limit_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_header_only(5000, 5000))  # 25 Mpx: under Pillow's limits
    with pytest.raises(ImageTooLargeError, match=r"5000x5000 = 25000000 pixels.*1000000"):
        load_image(path, max_pixels=1_000_000)
    # Under the limit the size check passes and decoding then fails on the missing data.
    with pytest.raises(InvalidImageError):
        load_image(path)


def test_pillow_warning_zone(tmp_path):
    path = tmp_path / "warn.png"
    path.write_bytes(_png_header_only(10_000, 10_000))  # 100 Mpx: Pillow warns, does not refuse
    assert 10_000 * 10_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageTooLargeError):
        load_image(path)
    # A caller who raises the limit overrides Pillow's warning; the empty file then fails to decode.
    with pytest.raises(InvalidImageError):
        load_image(path, max_pixels=150_000_000)


def test_custom_limit_just_over_and_under(tmp_path):
    over, under = tmp_path / "over.png", tmp_path / "under.png"
    Image.new("RGB", (7, 143), RED).save(over)  # 1001 pixels
    Image.new("RGB", (27, 37), RED).save(under)  # 999 pixels
    with pytest.raises(ImageTooLargeError, match="1001"):
        load_image(over, max_pixels=1000)
    assert load_image(under, max_pixels=1000).size == (27, 37)
    assert load_image(over, max_pixels=1001).size == (7, 143)
    with pytest.raises(ImageTooLargeError):
        load_image(Image.new("RGB", (7, 143)), max_pixels=1000)  # PIL input is checked too
    with pytest.raises(ValueError):
        load_image(under, max_pixels=0)


# ---------------------------------------------------------------- frames and sizes


def test_animated_gif_first_frame(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 10), RED), Image.new("RGB", (10, 10), BLUE)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert load_image(path).getpixel((5, 5)) == RED
    assert count_frames(path) == 2
    assert load_image(path, frame=1).getpixel((5, 5)) == BLUE
    with pytest.raises(InvalidImageError, match="frame 2"):
        load_image(path, frame=2)


def test_multipage_tiff_first_page(tmp_path):
    path = tmp_path / "pages.tiff"
    pages = [Image.new("RGB", (6, 6), BLUE), Image.new("RGB", (6, 6), RED)]
    pages[0].save(path, save_all=True, append_images=pages[1:])
    assert count_frames(path) == 2
    assert load_image(path).getpixel((0, 0)) == BLUE
    assert load_image(path, frame=1).getpixel((0, 0)) == RED


@pytest.mark.parametrize("size", [(1, 1), (1, 50000), (50000, 1)])
def test_degenerate_sizes(tmp_path, size):
    path = tmp_path / "thin.png"
    Image.new("L", size, 77).save(path)
    out = load_image(path)
    assert out.size == size and out.mode == "RGB" and out.getpixel((0, 0)) == (77, 77, 77)


# ---------------------------------------------------------------- source kinds


def test_bytes_and_file_object_sources(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (5, 3), RED).save(buffer, "PNG")
    data = buffer.getvalue()
    assert load_image(data).size == (5, 3)
    assert load_image(bytearray(data)).getpixel((0, 0)) == RED
    assert load_image(memoryview(data)).size == (5, 3)
    stream = io.BytesIO(data)
    assert load_image(stream).size == (5, 3)
    assert not stream.closed  # the caller's file stays open
    path = tmp_path / "f.png"
    path.write_bytes(data)
    with open(path, "rb") as handle:
        assert load_image(handle).getpixel((4, 2)) == RED
    with open(path, "rb") as handle:
        assert count_frames(handle) == 1


def test_pil_image_input_is_converted_and_left_alone():
    image = Image.new("RGBA", (3, 2), (10, 20, 30, 0))
    out = load_image(image)
    assert out.mode == "RGB" and out.size == (3, 2) and out.getpixel((0, 0)) == (10, 20, 30)
    assert image.mode == "RGBA" and out is not image


def test_result_outlives_file(tmp_path):
    path = tmp_path / "x.png"
    Image.new("RGB", (4, 4), BLUE).save(path)
    out = load_image(path)
    path.unlink()  # the returned image is fully decoded and independent of the file
    assert out.getpixel((3, 3)) == BLUE
