"""The `/v1/ocr` upload: its form fields, and the document it holds as pages to render.

A file starting with `%PDF-` is a PDF (rendered through `inputs.pdf`, PDFium under its lock);
anything else must be an image: a TIFF's frames are its pages, as in the command; other images
are one page (the first frame of an animated GIF, `load_image`'s policy). The upload is never
written under a name the client chose: it stays in memory (or in the form parser's anonymous
spool file) and reaches PDFium and Pillow as bytes.
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from PIL import Image

from ..engine import GenerationOptions
from ..errors import DeepseekOCRError
from ..inputs.pdf import DEFAULT_MAX_PAGES, PdfDocument, open_pdf
from ..inputs.page_ranges import parse_page_ranges
from ..processing.image_io import count_frames, load_image
from ..processing.views import Mode
from ..prompts import prompt_from_spec
from .config import ServerConfig
from .errors import InvalidRequestError, MalformedRequestError, from_library_error
from .params import form_bool, form_int, form_number, form_str, mode_field

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*")
PREVIEW_SIDE = 1600  # longest side of the page pictures sent to the web page


@dataclass
class OcrRequest:
    data: bytes
    mode: Mode
    prompt: str
    pages: str | None
    dpi: float
    password: str | None
    options: GenerationOptions
    stream: bool
    deltas: bool
    page_images: bool
    crops: bool


async def parse_ocr_form(form, config: ServerConfig) -> OcrRequest:
    """Validate the form; 422 naming the field at fault (400 when there is no file)."""
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise MalformedRequestError("the form needs a 'file' field holding an image or a PDF", param="file")
    data = await upload.read()
    if not data:
        raise MalformedRequestError("the uploaded file is empty", param="file")
    spec = form_str(form, "prompt")
    try:
        prompt = prompt_from_spec(spec.strip() if spec and spec.strip() else "markdown")
    except DeepseekOCRError as err:
        raise from_library_error(err, "prompt") from None
    if "<image>" not in prompt:
        raise InvalidRequestError("the prompt must hold <image>", param="prompt")
    kwargs = dict(max_new_tokens=form_int(form, "max_tokens", minimum=1),
                  temperature=form_number(form, "temperature", low=0.0, high=2.0, default=0.0),
                  top_p=form_number(form, "top_p", low=0.0, high=1.0, low_open=True),
                  top_k=form_int(form, "top_k", minimum=1),
                  seed=form_int(form, "seed"),
                  no_repeat_ngram_size=form_int(form, "no_repeat_ngram_size", minimum=0, default=20) or None,
                  # A page read in a loop runs to the context limit: stop it (finish_reason
                  # "repetition") unless asked not to.
                  stop_on_repetition=form_bool(form, "stop_on_repetition", True),
                  ignore_eos=form_bool(form, "ignore_eos", False))
    try:
        options = GenerationOptions(**kwargs)
    except DeepseekOCRError as err:
        raise from_library_error(err) from None
    dpi = form_number(form, "dpi", low=0.0, high=config.max_dpi, low_open=True, default=config.default_dpi)
    pages = form_str(form, "pages")
    return OcrRequest(data=data, mode=mode_field(form_str(form, "mode"), config.default_mode), prompt=prompt,
                      pages=pages.strip() if pages and pages.strip() else None, dpi=dpi,
                      password=form_str(form, "password") or None, options=options,
                      stream=form_bool(form, "stream", False), deltas=form_bool(form, "deltas", False),
                      page_images=form_bool(form, "page_images", False), crops=form_bool(form, "crops", False))


class PageSource:
    """The pages of one upload. `load(index)` renders or decodes one (blocking)."""

    def __init__(self, kind: str, count: int, selected: list[int], loader, closer=None):
        self.kind, self.count, self.selected = kind, count, selected
        self._loader, self._closer = loader, closer

    def load(self, index: int) -> Image.Image:
        return self._loader(index)

    def close(self) -> None:
        if self._closer is not None:
            self._closer()


def _select(req: OcrRequest, count: int, config: ServerConfig) -> list[int]:
    if count == 0:
        raise InvalidRequestError("the document has no pages", param="file")
    if req.pages is None:
        selected = list(range(count))
    else:
        try:
            selected = parse_page_ranges(req.pages, count)
        except DeepseekOCRError as err:
            raise InvalidRequestError(str(err), param="pages") from None
    if len(selected) > config.max_pages:
        raise InvalidRequestError(f"{len(selected)} pages selected, over this server's limit of {config.max_pages} "
                                  "per request (select fewer with 'pages', e.g. 1-10)", param="pages")
    return selected


def open_source(req: OcrRequest, config: ServerConfig) -> PageSource:
    """Open the upload and choose its pages, rendering none yet (blocking: run in the pool).
    Raises library errors (an unreadable PDF or image) or InvalidRequestError."""
    if req.data[:5] == b"%PDF-":
        doc: PdfDocument = open_pdf(req.data, password=req.password, max_pages=DEFAULT_MAX_PAGES)
        try:
            selected = _select(req, doc.page_count, config)
        except BaseException:
            doc.close()
            raise
        return PageSource("pdf", doc.page_count, selected,
                          lambda i: doc.render(i, dpi=req.dpi, max_pixels=config.max_pixels), doc.close)
    frames = count_frames(req.data, max_pixels=config.max_pixels) if req.data[:4] in _TIFF_MAGIC else 1
    if frames == 1:
        # Decode now: an upload that is no image is the request's error (400), not a page's.
        first = load_image(req.data, max_pixels=config.max_pixels)
        return PageSource("image", 1, _select(req, 1, config), lambda i: first)
    return PageSource("image", frames, _select(req, frames, config),
                      lambda i: load_image(req.data, max_pixels=config.max_pixels, frame=i))


def image_data_url(image: Image.Image, max_side: int | None = PREVIEW_SIDE) -> str:
    """A JPEG `data:` URL of `image`, shrunk to `max_side` (None: as it is)."""
    if max_side is not None and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
