"""Inputs of the `deepseek-ocr` command: files, folders and globs -> documents -> pages.

    from deepseek_ocr.inputs import expand_inputs, iter_pages
    for doc in expand_inputs(["scans/", "report.pdf"]):
        for page in iter_pages(doc, pages="1-3"):
            image = page.load()  # RGB PIL image; PDF pages rendered at 144 dpi

`pdf` wraps PDFium (all calls under one lock); `sources` finds files, names outputs and lists
pages; `selection` chooses a run's pages before any model is loaded. Errors are the typed ones
of `deepseek_ocr.errors` plus `InvalidPageRangeError`. Nothing here imports torch.
"""
from .pdf import DEFAULT_DPI, DEFAULT_MAX_PAGES, PDFIUM_LOCK, PdfDocument, open_pdf
from .selection import DocumentErrorPage, Selection, select_pages
from .page_ranges import InvalidPageRangeError, page_range_limit, parse_page_ranges
from .sources import IMAGE_EXTENSIONS, PDF_EXTENSIONS, Document, PageRef, expand_inputs, iter_pages, page_count

__all__ = [
    "PdfDocument", "open_pdf", "PDFIUM_LOCK", "DEFAULT_DPI", "DEFAULT_MAX_PAGES",
    "Document", "PageRef", "InvalidPageRangeError", "expand_inputs", "iter_pages", "page_count",
    "page_range_limit", "parse_page_ranges",
    "IMAGE_EXTENSIONS", "PDF_EXTENSIONS", "select_pages", "Selection", "DocumentErrorPage",
]
