"""Tests for deepseek_ocr.inputs: PDF rendering policies, page ranges, input discovery and naming.

Every PDF is written here by hand (objects, xref table, trailer), so expected sizes and colours
follow from the bytes of the test, not from the code under test. The encrypted one implements
the PDF standard security handler (revision 2, RC4 40-bit) from the specification.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from deepseek_ocr.errors import (DocumentError, DocumentTooLargeError, EncryptedPDFError, InputNotFoundError,
                                 InvalidImageError, InvalidPDFError)
from deepseek_ocr.inputs import (DocumentErrorPage, InvalidPageRangeError, expand_inputs, iter_pages, open_pdf,
                                 parse_page_ranges, select_pages)
from deepseek_ocr.inputs import pdf as pdf_module

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)

# ---------------------------------------------------------------- hand-made PDFs


def write_pdf(objects: list[bytes], trailer: bytes = b"") -> bytes:
    """A PDF whose object i+1 is objects[i], with a correct xref table; object 1 is the catalog."""
    out = b"%PDF-1.4\n"
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R %s>>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, trailer, xref)
    return out


def fill_left_half(width: float, height: float, rgb: tuple[int, int, int]) -> bytes:
    """Content stream painting the left half of the page in `rgb` (the right half stays empty)."""
    r, g, b = (c / 255 for c in rgb)
    return b"%g %g %g rg 0 0 %g %g re f" % (r, g, b, width / 2, height)


def simple_pdf(pages: list[tuple[float, float, bytes | None]], page_extra: bytes = b"") -> bytes:
    """Pages (width pt, height pt, content stream or None): catalog 1, page tree 2, then a page
    object and its content stream per page."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    kids = []
    for width, height, content in pages:
        page_number = len(objects) + 1
        kids.append(b"%d 0 R" % page_number)
        contents = b"/Contents %d 0 R " % (page_number + 1) if content is not None else b""
        objects.append(b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %g %g] %s%s>>"
                       % (width, height, contents, page_extra))
        if content is not None:
            objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(kids), len(pages))
    return write_pdf(objects)


THREE_PAGES = [(100, 200, RED), (300, 150, GREEN), (50, 50, BLUE)]


def three_page_pdf(path: Path) -> Path:
    path.write_bytes(simple_pdf([(w, h, fill_left_half(w, h, c)) for w, h, c in THREE_PAGES]))
    return path


# -- standard security handler, revision 2 (PDF 1.7 spec, algorithms 3.1-3.4)

_PASSWORD_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")


def _rc4(key: bytes, data: bytes) -> bytes:
    state = list(range(256))
    j = 0
    for i in range(256):
        j = (j + state[i] + key[i % len(key)]) % 256
        state[i], state[j] = state[j], state[i]
    i = j = 0
    out = bytearray()
    for byte in data:
        i = (i + 1) % 256
        j = (j + state[i]) % 256
        state[i], state[j] = state[j], state[i]
        out.append(byte ^ state[(state[i] + state[j]) % 256])
    return bytes(out)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def encrypted_pdf(user: bytes, owner: bytes) -> bytes:
    """A 100 x 100 pt page whose (RC4-encrypted) content paints the bottom-left 50 x 50 pt black."""
    padded = lambda pw: (pw + _PASSWORD_PAD)[:32]  # noqa: E731
    permissions, file_id = -4, bytes(range(16))
    o_entry = _rc4(_md5(padded(owner))[:5], padded(user))                                  # algorithm 3.3
    key = _md5(padded(user) + o_entry + struct.pack("<i", permissions) + file_id)[:5]      # algorithm 3.2
    u_entry = _rc4(key, _PASSWORD_PAD)                                                     # algorithm 3.4
    object_key = _md5(key + (4).to_bytes(3, "little") + (0).to_bytes(2, "little"))[:10]    # algorithm 3.1
    content = _rc4(object_key, b"0 0 0 rg 0 0 50 50 re f")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 100 100] /Contents 4 0 R >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content),
        b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>"
        % (o_entry.hex().encode(), u_entry.hex().encode(), permissions),
    ]
    ident = file_id.hex().encode()
    return write_pdf(objects, trailer=b"/Encrypt 5 0 R /ID [<%s> <%s>] " % (ident, ident))


def _close(pixel, expected, tol=3):
    return all(abs(int(a) - int(b)) <= tol for a, b in zip(pixel, expected))


# ---------------------------------------------------------------- rendering


@pytest.mark.parametrize("dpi", [72, 144])
def test_three_pages_in_order_with_sizes_and_colours(tmp_path, dpi):
    path = three_page_pdf(tmp_path / "three.pdf")
    doc = expand_inputs([path])[0]
    pages = iter_pages(doc, dpi=dpi)
    assert [(p.index, p.number) for p in pages] == [(0, 1), (1, 2), (2, 3)]
    zoom = dpi / 72
    for page, (width, height, colour) in zip(pages, THREE_PAGES):
        image = page.load()
        assert image.mode == "RGB"
        assert image.size == (round(width * zoom), round(height * zoom))
        w, h = image.size
        assert _close(image.getpixel((w // 4, h // 2)), colour)         # painted left half
        assert image.getpixel((3 * w // 4, h // 2)) == WHITE            # unpainted: white background


def test_default_dpi_is_144(tmp_path):
    path = three_page_pdf(tmp_path / "three.pdf")
    with open_pdf(path) as pdf:
        assert pdf.page_count == 3
        assert pdf.render(0).size == (200, 400)


def test_rotated_page(tmp_path):
    path = tmp_path / "rot.pdf"
    path.write_bytes(simple_pdf([(100, 200, None)], page_extra=b"/Rotate 90 "))
    with open_pdf(path) as pdf:
        assert pdf.render(0, dpi=72).size == (200, 100)


def test_page_ranges_select_pages(tmp_path):
    doc = expand_inputs([three_page_pdf(tmp_path / "three.pdf")])[0]
    pages = iter_pages(doc, pages="3,1", dpi=72)
    assert [p.number for p in pages] == [1, 3]
    assert [p.load().size for p in pages] == [(100, 200), (50, 50)]
    doc.pages = [1]
    assert [p.number for p in iter_pages(doc)] == [2]
    doc.pages = [5]
    with pytest.raises(InvalidPageRangeError):
        iter_pages(doc)
    with pytest.raises(InvalidPageRangeError, match="out of range"):
        iter_pages(doc, pages="2-4")


@pytest.mark.parametrize("spec, count, expected", [
    ("1-3,5,9-", 10, [0, 1, 2, 4, 8, 9]),
    ("3", 5, [2]),
    (" 2 - 4 , 1 ", 5, [0, 1, 2, 3]),
    ("-2", 5, [0, 1]),
    ("4-", 5, [3, 4]),
    ("2,2,1-2", 3, [0, 1]),
    ("5-5", 5, [4]),
])
def test_parse_page_ranges(spec, count, expected):
    assert parse_page_ranges(spec, count) == expected


@pytest.mark.parametrize("spec, count, message", [
    ("0", 5, "numbered from 1"),
    ("5-3", 5, "reversed"),
    ("x", 5, "not a page number"),
    ("6", 5, "out of range"),
    ("3-9", 5, "out of range"),
    ("9-", 5, "out of range"),
    ("1", 0, "out of range"),
    ("", 5, "empty item"),
    ("1,,2", 5, "empty item"),
    ("-", 5, "first or last"),
    ("1-2-3", 5, "not a page number"),
    ("1.5", 5, "not a page number"),
    ("-1", 5, None),  # valid: first page to page 1
])
def test_bad_page_ranges(spec, count, message):
    if message is None:
        assert parse_page_ranges(spec, count) == [0]
        return
    with pytest.raises(InvalidPageRangeError, match=message) as info:
        parse_page_ranges(spec, count)
    assert isinstance(info.value, ValueError) and isinstance(info.value, DocumentError)


@pytest.mark.parametrize("spec, count, expected", [
    ("16-30", 17, [15, 16]),  # the 17-page specification
    ("99-", 17, []),
    ("-30", 3, [0, 1, 2]),
    ("1-2,5,9-", 6, [0, 1, 4]),
    ("4,7", 3, []),
    ("2", 3, [1]),
])
def test_clipped_page_ranges_stop_at_the_end(spec, count, expected):
    assert parse_page_ranges(spec, count, clip=True) == expected


@pytest.mark.parametrize("spec", ["0", "5-3", "x", "", "-"])
def test_clipping_keeps_the_syntax_checks(spec):
    with pytest.raises(InvalidPageRangeError):
        parse_page_ranges(spec, 100, clip=True)


def test_missing_inputs_are_collected_and_the_rest_expanded(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    missing: list = []
    docs = expand_inputs([str(tmp_path / "nope.png"), str(tmp_path / "a.png"), str(tmp_path / "*.jpg")],
                         missing=missing)
    assert [d.name for d in docs] == ["a"]
    assert [type(e) for e in missing] == [InputNotFoundError, InputNotFoundError]
    assert "nope.png" in str(missing[0]) and "*.jpg" in str(missing[1])
    with pytest.raises(InputNotFoundError):
        expand_inputs([str(tmp_path / "nope.png"), str(tmp_path / "a.png")])  # without the list: raises


def test_select_pages_cuts_ranges_and_reports_what_it_left(tmp_path):
    (tmp_path / "long.pdf").write_bytes(simple_pdf([(72, 72, None)] * 5))
    (tmp_path / "short.pdf").write_bytes(simple_pdf([(72, 72, None)] * 2))
    (tmp_path / "bad.pdf").write_bytes(b"%PDF-1.4 not really")
    Image.new("RGB", (8, 8)).save(tmp_path / "img.png")
    sel = select_pages([str(tmp_path / n) for n in ("long.pdf", "short.pdf", "bad.pdf", "img.png", "gone.png")],
                       pages="4-9")
    assert [(p.document.name, p.number) for p in sel.pages] == [("long", 4), ("long", 5), ("bad", 1), ("img", 1)]
    assert isinstance(sel.pages[2], DocumentErrorPage) and sel.readable == [sel.pages[i] for i in (0, 1, 3)]
    with pytest.raises(InvalidPDFError):
        sel.pages[2].load()
    assert sel.notes == ["long.pdf has 5 page(s): --pages 4-9 reaches past its end; doing 4-5",
                         "short.pdf has 2 page(s): --pages 4-9 selects none of them; left out"]
    assert [(d.name, n) for d, n in sel.beyond] == [("short", 2)] and not sel.beyond_every_input
    assert [str(e) for e in sel.missing] == [f"{tmp_path / 'gone.png'}: no such file or folder"]
    only_short = select_pages([str(tmp_path / "short.pdf")], pages="3-")
    assert only_short.pages == [] and only_short.beyond_every_input
    with pytest.raises(InvalidPageRangeError):
        select_pages([str(tmp_path / "long.pdf")], pages="3-1")


@pytest.mark.parametrize("password", [None, "wrong", ""])
def test_encrypted_without_right_password(tmp_path, password):
    path = tmp_path / "locked.pdf"
    path.write_bytes(encrypted_pdf(b"secret", b"boss"))
    start = time.monotonic()
    with pytest.raises(EncryptedPDFError, match="locked.pdf"):
        open_pdf(path, password=password)
    with pytest.raises(EncryptedPDFError):
        iter_pages(expand_inputs([path])[0], password=password)
    assert time.monotonic() - start < 5  # fails fast, no prompt, no hang


@pytest.mark.parametrize("password", ["secret", "boss"])  # user and owner password both open it
def test_encrypted_with_password_decrypts(tmp_path, password):
    path = tmp_path / "locked.pdf"
    path.write_bytes(encrypted_pdf(b"secret", b"boss"))
    (page,) = iter_pages(expand_inputs([path])[0], password=password, dpi=72)
    image = page.load()
    assert image.size == (100, 100)
    # The decrypted content paints the bottom-left quarter black; the rest stays white.
    assert image.getpixel((10, 90)) == BLACK and image.getpixel((90, 10)) == WHITE


def _truncated(tmp_path):
    data = simple_pdf([(100, 100, fill_left_half(100, 100, RED))])
    return data[: len(data) // 3]


@pytest.mark.parametrize("make", [
    lambda tmp: bytes(random.Random(0).randrange(256) for _ in range(2000)),
    lambda tmp: b"This is a plain text file, not a PDF.\n" * 20,
    _truncated,
    lambda tmp: b"",
], ids=["random-bytes", "text-named-pdf", "truncated", "empty"])
def test_not_a_pdf(tmp_path, make):
    path = tmp_path / "broken.pdf"
    path.write_bytes(make(tmp_path))
    with pytest.raises(InvalidPDFError, match=r"broken\.pdf.*PDFium"):
        open_pdf(path)
    with pytest.raises(InvalidPDFError, match=r"broken\.pdf"):
        iter_pages(expand_inputs([path])[0])


def test_pdf_from_bytes(tmp_path):
    with open_pdf(simple_pdf([(10, 20, None)])) as pdf:
        assert pdf.render(0, dpi=72).size == (10, 20)
    with pytest.raises(InvalidPDFError, match="bytes"):
        open_pdf(b"garbage")


def test_zero_pages_is_empty(tmp_path):
    path = tmp_path / "empty.pdf"
    path.write_bytes(write_pdf([b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [] /Count 0 >>"]))
    with open_pdf(path) as pdf:
        assert pdf.page_count == 0
    assert iter_pages(expand_inputs([path])[0]) == []


def test_huge_mediabox_rendered_under_pixel_cap(tmp_path, caplog):
    path = tmp_path / "poster.pdf"
    path.write_bytes(simple_pdf([(20000, 20000, fill_left_half(20000, 20000, RED)), (20000, 5000, None)]))
    doc = expand_inputs([path])[0]
    square, _ = iter_pages(doc, max_pixels=250_000)
    with caplog.at_level(logging.INFO, logger="deepseek_ocr.inputs.pdf"):
        image = square.load()
    # 40000 x 40000 px at 144 dpi; the largest square of at most 250000 px is 500 x 500.
    assert image.size == (500, 500)
    assert _close(image.getpixel((125, 250)), RED) and image.getpixel((375, 250)) == WHITE
    assert "exceeds max_pixels=250000" in caplog.text
    # 4:1 page under a 1 Mpx cap: 2000 x 500 (ceil rounding may cost a pixel a side).
    _, wide = iter_pages(doc, max_pixels=1_000_000)
    width, height = wide.load().size
    assert width * height <= 1_000_000 and width >= 1998 and height >= 499


def test_small_page_not_scaled_up(tmp_path):
    path = tmp_path / "small.pdf"
    path.write_bytes(simple_pdf([(100, 100, None)]))
    with open_pdf(path) as pdf:
        assert pdf.render(0, max_pixels=40_000).size == (200, 200)   # exactly at the cap: kept
        assert pdf.render(0, max_pixels=39_999).size[0] < 200         # one pixel over: scaled


def test_too_many_pages_refused_before_rendering(tmp_path, monkeypatch):
    path = three_page_pdf(tmp_path / "three.pdf")

    def must_not_render(*args, **kwargs):
        raise AssertionError("a page was rendered")

    monkeypatch.setattr(pdf_module, "render_page", must_not_render)
    with pytest.raises(DocumentTooLargeError, match="3 pages, over the limit of 2"):
        open_pdf(path, max_pages=2)
    with pytest.raises(DocumentTooLargeError):
        iter_pages(expand_inputs([path])[0], max_pages=2)
    assert len(iter_pages(expand_inputs([path])[0], max_pages=3)) == 3


def test_broken_middle_page(tmp_path):
    # The page tree's second kid points to object 9, which does not exist: PDFium counts three
    # pages but cannot load the second.
    path = tmp_path / "hole.pdf"
    path.write_bytes(write_pdf([
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R 9 0 R 4 0 R] /Count 3 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 20 30] >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 40 50] >>",
    ]))
    pages = iter_pages(expand_inputs([path])[0], dpi=72)
    assert len(pages) == 3
    assert pages[0].load().size == (20, 30)
    with pytest.raises(InvalidPDFError, match=r"hole\.pdf: page 2 of 3"):
        pages[1].load()
    assert pages[2].load().size == (40, 50)


def test_render_failure_is_per_page(tmp_path, monkeypatch):
    path = three_page_pdf(tmp_path / "three.pdf")
    real = pdf_module.render_page

    def fail_on_second(doc, index, scale):
        if index == 1:
            raise pdf_module.pdfium.PdfiumError("simulated render failure")
        return real(doc, index, scale)

    monkeypatch.setattr(pdf_module, "render_page", fail_on_second)
    pages = iter_pages(expand_inputs([path])[0], dpi=72)
    assert pages[0].load().size == (100, 200)
    with pytest.raises(InvalidPDFError, match="page 2 of 3.*simulated render failure"):
        pages[1].load()
    assert pages[2].load().size == (50, 50)


def test_concurrent_rendering_matches_serial(tmp_path, monkeypatch):
    paths = [three_page_pdf(tmp_path / "three.pdf")]
    for k, colour in enumerate([RED, BLUE, GREEN]):
        path = tmp_path / f"doc{k}.pdf"
        path.write_bytes(simple_pdf([(60 + 10 * k, 80, fill_left_half(60 + 10 * k, 80, colour)), (80, 40 + k, None)]))
        paths.append(path)
    refs = [page for doc in expand_inputs(paths) for page in iter_pages(doc, dpi=72)]
    serial = [ref.load().tobytes() for ref in refs]

    # Wrap the renderer to catch two renders overlapping: the lock must make that impossible.
    real, active, overlaps = pdf_module.render_page, [0], []

    def watched(doc, index, scale):
        active[0] += 1
        if active[0] > 1:
            overlaps.append(index)
        try:
            time.sleep(0.0005)  # widen the window an overlap would need
            return real(doc, index, scale)
        finally:
            active[0] -= 1

    monkeypatch.setattr(pdf_module, "render_page", watched)
    shared = open_pdf(paths[0])  # one document shared by all threads, besides per-page opens

    def job(n):
        out = []
        for k in range(len(refs)):
            i = (k + n) % len(refs)  # each thread starts elsewhere, so documents interleave
            out.append((i, refs[i].load().tobytes()))
        out.append((-1, shared.render(n % 3, dpi=72).tobytes()))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(job, range(8)))
    shared.close()
    assert not overlaps
    for n, out in enumerate(results):
        for i, data in out:
            assert data == (serial[n % 3] if i == -1 else serial[i])


def test_closed_document(tmp_path):
    pdf = open_pdf(three_page_pdf(tmp_path / "three.pdf"))
    pdf.close()
    pdf.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        pdf.render(0)
    with pytest.raises(IndexError):
        open_pdf(tmp_path / "three.pdf").render(3)


# ---------------------------------------------------------------- discovery and naming


def _touch_image(path: Path, size=(8, 8), colour=RED) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".png": "PNG", ".webp": "WEBP", ".tiff": "TIFF", ".tif": "TIFF", ".gif": "GIF"}
    Image.new("RGB", size, colour).save(path, fmt[path.suffix.lower()])
    return path


@pytest.fixture()
def tree(tmp_path):
    root = tmp_path / "in"
    for rel in ["b.png", "a.jpg", "p10.png", "p2.png", "sub/e.webp", "sub/deeper/d.TIFF", ".hidden.png",
                ".cache/z.png"]:
        _touch_image(root / rel)
    three_page_pdf(root / "sub" / "c.pdf")
    (root / "notes.txt").write_text("not an input")
    (root / "sub" / "data.json").write_text("{}")
    return root


def _rel(docs, root):
    return [d.path.relative_to(root.resolve()).as_posix() for d in docs]


def test_folder_expansion(tree):
    docs = expand_inputs([tree])
    assert _rel(docs, tree) == ["a.jpg", "b.png", "p2.png", "p10.png", "sub/c.pdf", "sub/deeper/d.TIFF", "sub/e.webp"]
    assert [d.kind for d in docs] == ["image"] * 4 + ["pdf", "image", "image"]
    assert all(d.pages is None and d.path.is_absolute() for d in docs)
    assert _rel(expand_inputs([tree], recursive=False), tree) == ["a.jpg", "b.png", "p2.png", "p10.png"]


def test_globs(tree):
    assert _rel(expand_inputs([str(tree / "*.png")]), tree) == ["b.png", "p2.png", "p10.png"]
    assert _rel(expand_inputs([str(tree / "**" / "*.pdf")]), tree) == ["sub/c.pdf"]
    assert _rel(expand_inputs([str(tree / "su?")]), tree) == ["sub/c.pdf", "sub/deeper/d.TIFF", "sub/e.webp"]
    with pytest.raises(InputNotFoundError, match="nothing"):
        expand_inputs([str(tree / "nothing*.png")])
    with pytest.raises(InputNotFoundError):
        expand_inputs([str(tree / "*.txt")])  # matches only unsupported files


def test_duplicates_removed_first_position_kept(tree):
    link = tree.parent / "link.png"
    os.symlink(tree / "b.png", link)
    relative = os.path.relpath(tree / "a.jpg")
    docs = expand_inputs([tree / "p2.png", relative, tree, str(tree / "*.png"), link])
    assert _rel(docs, tree) == ["p2.png", "a.jpg", "b.png", "p10.png", "sub/c.pdf", "sub/deeper/d.TIFF", "sub/e.webp"]


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputNotFoundError, match="missing.pdf") as info:
        expand_inputs([tmp_path / "missing.pdf"])
    assert isinstance(info.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputNotFoundError, match="empty"):
        expand_inputs([tmp_path / "empty"])
    with pytest.raises(InputNotFoundError):
        open_pdf(tmp_path / "missing.pdf")


def test_unique_names(tmp_path):
    a, b = _touch_image(tmp_path / "a" / "x.png"), _touch_image(tmp_path / "b" / "x.png")
    png = _touch_image(tmp_path / "c" / "x.png")
    pdf = three_page_pdf(tmp_path / "c" / "x.pdf")
    solo = _touch_image(tmp_path / "c" / "page.png")
    assert [d.name for d in expand_inputs([a, b])] == ["a_x", "b_x"]
    assert [d.name for d in expand_inputs([pdf, png])] == ["x_pdf", "x_png"]
    docs = expand_inputs([a, b, png, pdf, solo])
    assert [d.name for d in docs] == ["a_x", "b_x", "c_x_png", "c_x_pdf", "page"]
    assert [d.name for d in expand_inputs([a, b, png, pdf, solo])] == [d.name for d in docs]  # stable
    # Same stem in folders with the same name: more parent folders are added.
    deep1, deep2 = _touch_image(tmp_path / "p" / "scan" / "x.png"), _touch_image(tmp_path / "q" / "scan" / "x.png")
    assert [d.name for d in expand_inputs([deep1, deep2])] == ["p_scan_x", "q_scan_x"]
    # A flat name equal to a widened one is numbered rather than overwritten.
    flat = _touch_image(tmp_path / "a_x.png")
    assert [d.name for d in expand_inputs([a, b, flat])] == ["a_x", "b_x", "a_x-2"]
    assert [d.name for d in expand_inputs([flat, a, b])] == ["a_x", "a_x-2", "b_x"]


def test_explicit_file_with_unknown_extension(tmp_path):
    pdf = tmp_path / "scan.bin"
    pdf.write_bytes(simple_pdf([(10, 10, None)]))
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    assert [d.kind for d in expand_inputs([pdf, text])] == ["pdf", "image"]
    with pytest.raises(InvalidImageError, match="notes.txt"):
        iter_pages(expand_inputs([text])[0])


def test_multipage_tiff_one_page_per_frame(tmp_path):
    path = tmp_path / "scan.tiff"
    frames = [Image.new("RGB", (30 + 10 * i, 20), colour) for i, colour in enumerate([RED, GREEN, BLUE])]
    frames[0].save(path, "TIFF", save_all=True, append_images=frames[1:])
    pages = iter_pages(expand_inputs([path])[0])
    assert [(p.index, p.number) for p in pages] == [(0, 1), (1, 2), (2, 3)]
    for page, (i, colour) in zip(pages, enumerate([RED, GREEN, BLUE])):
        image = page.load()
        assert image.size == (30 + 10 * i, 20) and image.getpixel((5, 5)) == colour
    assert [p.number for p in iter_pages(expand_inputs([path])[0], pages="2-")] == [2, 3]
    with pytest.raises(DocumentTooLargeError):
        iter_pages(expand_inputs([path])[0], max_pages=2)


def test_animated_gif_is_one_page(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (10, 10), colour) for colour in (RED, BLUE)]
    frames[0].save(path, "GIF", save_all=True, append_images=frames[1:])
    (page,) = iter_pages(expand_inputs([path])[0])
    assert page.load().getpixel((5, 5)) == RED
