"""PDF pages as RGB images, through PDFium (pypdfium2), with every PDFium call under one lock.

Policies (each tested in tests/test_inputs.py):

* Resolution: 144 dpi by default, as the official DeepSeek-OCR PDF script renders
  (scale = dpi / 72 pixels per PDF point). A page whose bitmap at that dpi would exceed
  `max_pixels` is rendered at the largest lower scale that fits (logged at INFO), never refused:
  a poster-sized MediaBox still gives a page to read.
* Output: RGB (no alpha), on a white background; PDFium composites transparent content on it.
* Page count over `max_pages` -> `DocumentTooLargeError` when the document is opened, before
  any page is rendered.
* Encrypted without the right password (or with a security handler PDFium does not support)
  -> `EncryptedPDFError`. PDFium checks the password while opening, so this never waits.
* Corrupt, truncated, not a PDF at all -> `InvalidPDFError` naming the file and PDFium's reason.
  PDFium repairs what it can (a damaged cross-reference table is rebuilt by scanning the
  file), so a damaged file that still yields pages opens.
* Zero pages -> a document with `page_count == 0`; callers get an empty page list, not an
  error. (pypdfium2's own `PdfDocument` refuses such files and leaks the handle, which is why
  documents are opened here through the raw API.)
* A page that fails to load or render -> `InvalidPDFError` naming that page (1-based) only;
  the other pages of the document still render.

ThreadSafety:
    PDFium is not thread-safe: no two of its functions may run at once, even on different
    documents. Every call into it made here (open, page count, page load, render, close)
    happens while holding `PDFIUM_LOCK`, one re-entrant lock for the whole process, and every
    PDFium object is closed explicitly under that lock, so that pypdfium2's garbage-collection
    finalizers (which would call PDFium from whatever thread collects) have nothing left to
    do. Rendering is therefore serialized: threads may share `PdfDocument` objects or open
    their own, but pages render one at a time. Code elsewhere that calls pypdfium2 directly
    must take `PDFIUM_LOCK` too.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import weakref
from typing import Union

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image

from deepseek_ocr.errors import DocumentTooLargeError, EncryptedPDFError, InputNotFoundError, InvalidPDFError
from deepseek_ocr.processing.image_io import DEFAULT_MAX_PIXELS

logger = logging.getLogger(__name__)

PdfSource = Union[str, os.PathLike, bytes, bytearray]

PDFIUM_LOCK = threading.RLock()
"""Held around every PDFium call in the process (see ThreadSafety in the module docstring)."""

DEFAULT_DPI = 144
"""The official DeepSeek-OCR PDF script renders at 144 dpi (zoom 2 over PDF's 72 points/inch)."""

DEFAULT_MAX_PAGES = 2000

_POINTS_PER_INCH = 72.0

# PDFium's FPDF_GetLastError codes, worded for messages.
_LOAD_ERRORS = {
    pdfium_c.FPDF_ERR_UNKNOWN: "unknown error",
    pdfium_c.FPDF_ERR_FILE: "file not found or could not be opened",
    pdfium_c.FPDF_ERR_FORMAT: "not a PDF or corrupted (data format error)",
    pdfium_c.FPDF_ERR_PASSWORD: "password required or incorrect",
    pdfium_c.FPDF_ERR_SECURITY: "unsupported security scheme",
    pdfium_c.FPDF_ERR_PAGE: "page not found or content error",
}


def _describe(source: PdfSource) -> str:
    if isinstance(source, (bytes, bytearray)):
        return f"<{len(source)} bytes of PDF>"
    return os.fsdecode(source)


def _load_raw(source: PdfSource, password: str | None, name: str) -> tuple[object, bytes | None]:
    """Open with PDFium's raw API. Returns the FPDF_DOCUMENT and the bytes it reads from (kept alive).

    The caller holds PDFIUM_LOCK.
    """
    secret = None if password is None else (password + "\x00").encode("utf-8")
    data: bytes | None = None
    if isinstance(source, (bytes, bytearray)):
        # FPDF_LoadMemDocument64 does not copy: the bytes must outlive the document.
        data = bytes(source)
        raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), secret)
    else:
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise InputNotFoundError(f"{name}: no such PDF file")
        # fsencode: the bytes the OS knows the file by (PDFium fopen()s them), whatever the locale.
        raw = pdfium_c.FPDF_LoadDocument(os.fsencode(os.path.abspath(path)) + b"\x00", secret)
    if raw:
        return raw, data
    code = pdfium_c.FPDF_GetLastError()
    reason = _LOAD_ERRORS.get(code, f"PDFium error code {code}")
    if code == pdfium_c.FPDF_ERR_PASSWORD:
        detail = "no password was given" if password is None else "the password given is wrong"
        raise EncryptedPDFError(f"{name}: the PDF is encrypted and {detail} (PDFium: {reason})")
    if code == pdfium_c.FPDF_ERR_SECURITY:
        raise EncryptedPDFError(f"{name}: the PDF is encrypted with a scheme PDFium cannot open (PDFium: {reason})")
    raise InvalidPDFError(f"{name}: cannot open PDF (PDFium: {reason})")


def _close_quietly(doc: pdfium.PdfDocument) -> None:
    """Finalizer of an unclosed PdfDocument: close its PDFium handle under the lock."""
    with PDFIUM_LOCK:
        doc.close()


def _fit_scale(width_pt: float, height_pt: float, scale: float, max_pixels: int) -> float:
    """The largest scale <= `scale` whose bitmap, ceil(w*s) x ceil(h*s) as pypdfium2 sizes it,
    has at most `max_pixels` pixels (and at least one pixel a side)."""

    def pixels(s: float) -> int:
        return max(1, math.ceil(width_pt * s)) * max(1, math.ceil(height_pt * s))

    if pixels(scale) <= max_pixels:
        return scale
    fitted = min(scale, math.sqrt(max_pixels / (width_pt * height_pt)))
    # ceil() can add up to one row and one column: step down until the rounded size fits.
    while fitted > 0 and pixels(fitted) > max_pixels:
        fitted *= 0.999
    return fitted


def render_page(raw_doc: pdfium.PdfDocument, index: int, scale: float) -> Image.Image:
    """Render one page at `scale` pixels per point to an independent RGB PIL image.

    A module-level function so that tests can replace it to simulate a failing page. The
    caller holds PDFIUM_LOCK; every PDFium object made here is closed before returning.
    """
    page = raw_doc[index]
    try:
        # rev_byteorder: PDFium writes RGB instead of its native BGR; the default fill is
        # opaque white, so the bitmap has no alpha channel.
        bitmap = page.render(scale=scale, rev_byteorder=True, fill_color=(255, 255, 255, 255))
        try:
            # convert() copies, so the image does not point into the bitmap's buffer after close.
            return bitmap.to_pil().convert("RGB")
        finally:
            bitmap.close()
    finally:
        page.close()


class PdfDocument:
    """An open PDF; use as a context manager (or call `close`). Made by `open_pdf`.

    Attributes:
        name: the file name (or a description of the bytes) used in messages.
        page_count: the number of pages; 0 for a document without pages.
    """

    def __init__(self, doc: pdfium.PdfDocument, data: bytes | None, name: str, page_count: int):
        self._doc: pdfium.PdfDocument | None = doc
        self._data = data  # PDFium reads from these bytes until the document is closed
        self.name = name
        self.page_count = page_count
        self._finalizer = weakref.finalize(self, _close_quietly, doc)

    def __enter__(self) -> PdfDocument:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __len__(self) -> int:
        return self.page_count

    def __repr__(self) -> str:
        state = "closed" if self._doc is None else f"{self.page_count} pages"
        return f"<PdfDocument {self.name!r} {state}>"

    def close(self) -> None:
        """Release the PDFium document (idempotent)."""
        if self._doc is not None:
            self._finalizer()  # runs _close_quietly once, under the lock
            self._doc = None
            self._data = None

    def render(self, index: int, *, dpi: float = DEFAULT_DPI, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
        """Render page `index` (0-based) as an RGB image on white.

        Args:
            index: the page, 0-based.
            dpi: resolution; the bitmap is page size in points × dpi / 72.
            max_pixels: the largest width × height of the result; a page over it at `dpi` is
                rendered at the largest lower resolution that fits (logged), never refused.

        Returns:
            A new RGB image, independent of the document.

        Raises:
            IndexError: `index` outside 0..page_count-1.
            ValueError: `dpi` or `max_pixels` not positive, or the document is closed.
            InvalidPDFError: this page cannot be loaded or rendered; the message names the page.
        """
        if not dpi > 0:
            raise ValueError(f"{self.name}: dpi must be positive, got {dpi}")
        if max_pixels <= 0:
            raise ValueError(f"{self.name}: max_pixels must be positive, got {max_pixels}")
        if not 0 <= index < self.page_count:
            raise IndexError(f"{self.name}: page index {index} out of range for {self.page_count} pages")
        number = index + 1
        with PDFIUM_LOCK:
            if self._doc is None:
                raise ValueError(f"{self.name}: document is closed")
            try:
                width_pt, height_pt = self._doc.get_page_size(index)
                scale = dpi / _POINTS_PER_INCH
                if width_pt > 0 and height_pt > 0:
                    fitted = _fit_scale(width_pt, height_pt, scale, max_pixels)
                    if fitted < scale:
                        logger.info(
                            "%s page %d: %.0fx%.0f pt at %g dpi exceeds max_pixels=%d; rendering at %.1f dpi",
                            self.name, number, width_pt, height_pt, dpi, max_pixels, fitted * _POINTS_PER_INCH)
                        scale = fitted
                image = render_page(self._doc, index, scale)
            except (pdfium.PdfiumError, ValueError, OSError) as err:
                # PdfiumError: the page object cannot be loaded; ValueError: pypdfium2 refuses
                # an empty bitmap (a degenerate page box); OSError: Pillow on a bad buffer.
                raise InvalidPDFError(
                    f"{self.name}: page {number} of {self.page_count} cannot be rendered: {err}") from err
        logger.debug("rendered %s page %d at scale %.3f: %dx%d", self.name, number, scale, *image.size)
        return image


def open_pdf(source: PdfSource, *, password: str | None = None, max_pages: int = DEFAULT_MAX_PAGES) -> PdfDocument:
    """Open a PDF and count its pages, without rendering any.

    Args:
        source: a path (str or PathLike) or the file's bytes.
        password: the user or owner password of an encrypted PDF; ignored for others.
        max_pages: the most pages accepted; more raise before anything is rendered.

    Returns:
        An open `PdfDocument` (a context manager). A PDF with zero pages opens with
        `page_count == 0`.

    Raises:
        InputNotFoundError: the path is not an existing file.
        EncryptedPDFError: encrypted and `password` is missing or wrong, or an unsupported scheme.
        InvalidPDFError: not a PDF, corrupt or truncated beyond PDFium's repair; names PDFium's reason.
        DocumentTooLargeError: more than `max_pages` pages.
    """
    if max_pages <= 0:
        raise ValueError(f"open_pdf: max_pages must be positive, got {max_pages}")
    name = _describe(source)
    with PDFIUM_LOCK:
        raw, data = _load_raw(source, password, name)
        # pypdfium2 wraps an existing handle as is; from here on closing it closes the handle.
        doc = pdfium.PdfDocument(raw)
        count = pdfium_c.FPDF_GetPageCount(raw)
        if count > max_pages:
            doc.close()
            raise DocumentTooLargeError(f"{name}: {count} pages, over the limit of {max_pages} pages (max_pages)")
    logger.debug("opened %s: %d pages", name, count)
    return PdfDocument(doc, data, name, count)
