"""What the user named -> documents -> pages: input discovery and lazy page loading (page
ranges are parsed in `page_ranges`).

Policies (each tested in tests/test_inputs.py):

* Kinds by extension, case-insensitive: `.pdf` is a PDF; `.png .jpg .jpeg .webp .bmp .tif .tiff
  .gif` are images. A file named explicitly with another extension is still taken: as a PDF if
  it starts with `%PDF-`, else as an image (loading then says whether it is one). Inside a
  folder or a glob, files of other extensions are skipped (logged at DEBUG).
* Folders are walked recursively (`recursive=False`: top level only), without following
  symlinked folders (no cycles) and skipping hidden entries (`.name`, e.g. macOS `._x.png`
  resource forks, which are not images). Files come in natural order of their relative path
  (`p2.png` before `p10.png`), case-insensitive.
* Globs (`*`, `?`, `[...]`, `**`) are expanded when the text is not an existing path; matched
  folders are walked as folders.
* A path that does not exist, or a folder or glob that yields no supported file, raises
  `InputNotFoundError` naming it. Duplicates (the same file reached twice, also through a
  symlink or another spelling) are kept once, at their first position.
* Output names are unique among the inputs (compared case-insensitively, for case-insensitive
  file systems) and depend only on the list of paths: the file's stem; files whose stems
  collide add their extension where two share a folder (`x_pdf`, `x_png`), and all of them
  add as many nearest parent folders as it takes to tell them apart (`a_x`, `b_x`; with
  `c/x.png` and `c/x.pdf` too: `a_x`, `b_x`, `c_x_png`, `c_x_pdf`). A name still equal to
  an earlier one gets `-2`, `-3`, ... in input order.
* Pages: a PDF has its pages; a TIFF has one page per frame; other images have one page (the
  first frame, `load_image`'s policy, also for animated GIFs). `iter_pages` counts pages
  without rendering; `PageRef.load()` renders or decodes one page when called.
"""

from __future__ import annotations

import functools
import glob
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from PIL import Image

from deepseek_ocr.errors import DocumentTooLargeError, InputNotFoundError, InvalidPDFError
from deepseek_ocr.inputs.page_ranges import InvalidPageRangeError, parse_page_ranges
from deepseek_ocr.inputs.pdf import DEFAULT_DPI, DEFAULT_MAX_PAGES, open_pdf
from deepseek_ocr.processing.image_io import DEFAULT_MAX_PIXELS, count_frames, load_image

logger = logging.getLogger(__name__)

PDF_EXTENSIONS = frozenset({".pdf"})
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
MULTI_PAGE_IMAGE_EXTENSIONS = frozenset({".tif", ".tiff"})  # every frame is a page

_GLOB_CHARS = re.compile(r"[*?\[]")
_UNSAFE_NAME_CHARS = re.compile(r'[\x00-\x1f<>:"/\\|?*]')  # not allowed in a file name somewhere


@dataclass
class Document:
    """One input file.

    Attributes:
        path: the file (absolute, symlinks not resolved).
        kind: "pdf" or "image".
        name: an output name, unique among the inputs it was expanded with.
        pages: 0-based pages to process; None for all.
    """

    path: Path
    kind: str
    name: str
    pages: list[int] | None = None


@dataclass(frozen=True)
class PageRef:
    """One page of a document, not yet rendered.

    Attributes:
        document: the document it belongs to.
        index: 0-based page (PDF page or TIFF frame).
        number: 1-based page, for messages and output names.
        load: renders (PDF) or decodes (image) the page into a new RGB image on each call;
            raises InvalidPDFError / InvalidImageError / ImageTooLargeError for this page.
    """

    document: Document
    index: int
    number: int
    load: Callable[[], Image.Image] = field(repr=False, compare=False)


# ---------------------------------------------------------------- discovery


def _natural_key(relative: str) -> tuple:
    """Sort key: per path component, digit runs compare as numbers, text case-insensitively."""
    parts = relative.replace(os.sep, "/").split("/")
    # (0, number, text) sorts digit runs numerically; (1, 0, text) never meets a number.
    return tuple(
        tuple((0, int(run), run) if run.isdigit() else (1, 0, run.casefold())
              for run in re.split(r"(\d+)", part) if run)
        for part in parts
    ), relative


def _kind_of_listed(path: str) -> str | None:
    """Kind of a file found in a folder or glob, or None to skip it."""
    ext = os.path.splitext(path)[1].lower()
    if ext in PDF_EXTENSIONS:
        return "pdf"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def _kind_of_explicit(path: str) -> str:
    """Kind of a file the user named: by extension, else by content."""
    kind = _kind_of_listed(path)
    if kind is not None:
        return kind
    try:
        with open(path, "rb") as f:
            head = f.read(5)
    except OSError:
        head = b""  # unreadable: loading it as an image will report why
    kind = "pdf" if head == b"%PDF-" else "image"
    logger.warning("%s: unknown extension, treating it as %s", path, "a PDF" if kind == "pdf" else "an image")
    return kind


def _walk_folder(folder: str, recursive: bool) -> list[tuple[str, str]]:
    """(path, kind) of every supported, non-hidden file under `folder`, in natural order."""
    found: list[tuple[str, str]] = []
    for root, dirs, files in os.walk(folder):  # followlinks=False: symlinked folders are not entered
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        for file_name in files:
            path = os.path.join(root, file_name)
            kind = None if file_name.startswith(".") else _kind_of_listed(file_name)
            if kind is None or not os.path.isfile(path):
                logger.debug("skipping %s: hidden, not a regular file, or not an image/PDF extension", path)
                continue
            found.append((path, kind))
    found.sort(key=lambda item: _natural_key(os.path.relpath(item[0], folder)))
    return found


def _expand_one(item: str, recursive: bool) -> list[tuple[str, str]]:
    """(path, kind) pairs for one user-given item; raises InputNotFoundError when it yields none."""
    path = os.path.expanduser(item)
    if os.path.isdir(path):
        found = _walk_folder(path, recursive)
        what = "folder"
    elif os.path.isfile(path):
        return [(path, _kind_of_explicit(path))]
    elif os.path.exists(path):
        raise InputNotFoundError(f"{item}: not a regular file or folder")
    elif _GLOB_CHARS.search(path):
        found = []
        for match in sorted(glob.glob(path, recursive=recursive), key=_natural_key):
            if os.path.isdir(match):
                found.extend(_walk_folder(match, recursive))
            elif os.path.isfile(match) and _kind_of_listed(match) is not None:
                found.append((match, _kind_of_listed(match)))
            else:
                logger.debug("skipping %s (matched %s): not an image or PDF", match, item)
        what = "pattern"
    else:
        raise InputNotFoundError(f"{item}: no such file or folder")
    if not found:
        extensions = " ".join(sorted(IMAGE_EXTENSIONS | PDF_EXTENSIONS))
        raise InputNotFoundError(f"{item}: {what} holds no image or PDF ({extensions}; hidden files skipped)")
    return found


def _folders(path: Path) -> list[str]:
    return [part for part in path.parent.parts if part != path.anchor]


def _widen(paths: Sequence[Path]) -> list[str]:
    """Names for files that share a stem: the fewest nearest parent folders that tell them
    apart, plus the extension for files that share a folder (e.g. `a_x`, `c_x_png`, `c_x_pdf`)."""
    def same_folder(i: int, j: int) -> bool:
        return str(paths[i].parent).casefold() == str(paths[j].parent).casefold()

    with_ext = [any(j != i and same_folder(i, j) for j in range(len(paths))) for i in range(len(paths))]
    stems = [p.stem + ("_" + p.suffix.lstrip(".") if ext and p.suffix else "") for p, ext in zip(paths, with_ext)]
    deepest = max(len(_folders(p)) for p in paths)
    for depth in range(deepest + 1):
        keys = [tuple(x.casefold() for x in [*(_folders(p)[-depth:] if depth else []), stem])
                for p, stem in zip(paths, stems)]
        if len(set(keys)) == len(keys):
            break
    return ["_".join([*(_folders(p)[-depth:] if depth else []), stem]) for p, stem in zip(paths, stems)]


def _unique_names(paths: Sequence[Path]) -> list[str]:
    """Output names per the module policy: stems, widened only where stems collide."""
    names = [p.stem for p in paths]
    groups: dict[str, list[int]] = {}
    for i, path in enumerate(paths):
        groups.setdefault(path.stem.casefold(), []).append(i)
    for members in groups.values():
        if len(members) > 1:
            for i, name in zip(members, _widen([paths[i] for i in members])):
                names[i] = name
    # Whatever still collides (e.g. "a_x.png" beside "a/x.png", or x.png beside x.PNG) is
    # numbered in input order; the first keeps its name.
    seen: set[str] = set()
    result = []
    for name in names:
        name = _UNSAFE_NAME_CHARS.sub("_", name) or "document"
        unique, n = name, 1
        while unique.casefold() in seen:
            n += 1
            unique = f"{name}-{n}"
        seen.add(unique.casefold())
        result.append(unique)
    return result


def expand_inputs(items: Sequence[str | os.PathLike], *, recursive: bool = True,
                  missing: list[InputNotFoundError] | None = None) -> list[Document]:
    """Turn files, folders and globs into documents, in input order, without duplicates.

    Args:
        items: paths of files or folders, or glob patterns; `~` is expanded.
        recursive: walk folders (and `**` in globs) recursively.
        missing: when given, an item that yields nothing has its error appended here and the
            other items are still expanded (the command reports it and goes on); when None it
            raises.

    Returns:
        One `Document` per distinct file, with a unique output name and `pages=None`.

    Raises:
        InputNotFoundError: an item does not exist, is not a file or folder, or is a folder or
            glob holding no supported file. Names the item. Not raised when `missing` is given.
    """
    if isinstance(items, (str, os.PathLike)):
        items = [items]  # one path given bare: not a sequence of one-character paths
    found: list[tuple[str, str]] = []
    for item in items:
        try:
            found.extend(_expand_one(os.fspath(item), recursive))
        except InputNotFoundError as err:
            if missing is None:
                raise
            missing.append(err)
    seen: set[str] = set()
    unique: list[tuple[Path, str]] = []
    for path, kind in found:
        key = os.path.normcase(os.path.realpath(path))
        if key in seen:
            logger.debug("skipping %s: given twice", path)
            continue
        seen.add(key)
        unique.append((Path(os.path.abspath(path)), kind))
    names = _unique_names([path for path, _ in unique]) if unique else []
    return [Document(path=path, kind=kind, name=name) for (path, kind), name in zip(unique, names)]


# ---------------------------------------------------------------- pages


def _load_pdf_page(path: Path, index: int, dpi: float, max_pixels: int, password: str | None,
                   max_pages: int) -> Image.Image:
    """Open the PDF, render one page, close it: no PDFium handle outlives the call."""
    with open_pdf(path, password=password, max_pages=max_pages) as pdf:
        if index >= pdf.page_count:  # the file changed since its pages were counted
            raise InvalidPDFError(f"{path}: page {index + 1} no longer exists (now {pdf.page_count} pages)")
        return pdf.render(index, dpi=dpi, max_pixels=max_pixels)


def _selected(doc: Document, pages: str | None, count: int, clip: bool) -> Iterable[int]:
    if pages is not None:
        return parse_page_ranges(pages, count, clip=clip)
    if doc.pages is None:
        return range(count)
    bad = [i for i in doc.pages if not 0 <= i < count]
    if bad:
        raise InvalidPageRangeError(f"{doc.path}: pages {bad} (0-based) out of range, the document has {count} pages")
    return sorted(set(doc.pages))


def page_count(doc: Document, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_pages: int = DEFAULT_MAX_PAGES,
               password: str | None = None) -> int:
    """How many pages `doc` has (PDF pages; TIFF frames; 1 for other images), without rendering.

    Raises:
        EncryptedPDFError, InvalidPDFError, DocumentTooLargeError: document-level PDF problems.
        InvalidImageError, ImageTooLargeError: the image's header cannot be read or is too large.
    """
    if doc.kind == "pdf":
        with open_pdf(doc.path, password=password, max_pages=max_pages) as pdf:
            return pdf.page_count
    if doc.kind == "image":
        # count_frames reads the header: an unreadable or oversized image fails here, early.
        frames = count_frames(doc.path, max_pixels=max_pixels)
        count = frames if doc.path.suffix.lower() in MULTI_PAGE_IMAGE_EXTENSIONS else 1
        if count > max_pages:
            raise DocumentTooLargeError(f"{doc.path}: {count} frames, over the limit of {max_pages} pages (max_pages)")
        return count
    raise ValueError(f"{doc.path}: unknown document kind {doc.kind!r} (expected 'pdf' or 'image')")


def iter_pages(doc: Document, *, pages: str | None = None, dpi: float = DEFAULT_DPI,
               max_pixels: int = DEFAULT_MAX_PIXELS, max_pages: int = DEFAULT_MAX_PAGES,
               password: str | None = None, clip: bool = False) -> list[PageRef]:
    """List the pages of a document without rendering them.

    Args:
        doc: the document (from `expand_inputs`).
        pages: a page-range spec ("1-3,5,9-", see `parse_page_ranges`); overrides `doc.pages`.
        dpi: PDF rendering resolution (images keep their own size).
        max_pixels: PDF pages over it are rendered smaller; images over it are refused.
        max_pages: the most pages (PDF pages, TIFF frames) a document may have.
        password: for encrypted PDFs.
        clip: pages of `pages` past the document's end are left out instead of refused.

    Returns:
        The selected pages in order; empty for a PDF without pages (or, with `clip`, a range
        wholly past the end).

    Raises:
        EncryptedPDFError, InvalidPDFError, DocumentTooLargeError: document-level PDF problems.
        InvalidImageError, ImageTooLargeError: the image's header cannot be read or is too large.
        InvalidPageRangeError: `pages` (or `doc.pages`) names pages the document lacks.
    """
    if not dpi > 0:
        raise ValueError(f"iter_pages: dpi must be positive, got {dpi}")
    if max_pixels <= 0:
        raise ValueError(f"iter_pages: max_pixels must be positive, got {max_pixels}")
    count = page_count(doc, max_pixels=max_pixels, max_pages=max_pages, password=password)
    if doc.kind == "pdf":
        load = functools.partial(_load_pdf_page, doc.path, dpi=dpi, max_pixels=max_pixels,
                                 password=password, max_pages=max_pages)
        make = lambda i: functools.partial(load, i)  # noqa: E731
    else:
        make = lambda i: functools.partial(load_image, doc.path, max_pixels=max_pixels, frame=i)  # noqa: E731
    return [PageRef(document=doc, index=i, number=i + 1, load=make(i)) for i in _selected(doc, pages, count, clip)]
