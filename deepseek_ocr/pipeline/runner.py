"""`run_pages`: many pages through one model, several per forward, in input order.

    from deepseek_ocr import DeepseekOCR
    from deepseek_ocr.inputs import expand_inputs, iter_pages
    from deepseek_ocr.pipeline import run_pages

    ocr = DeepseekOCR.from_pretrained("deepseek-ai/DeepSeek-OCR")
    pages = [p for doc in expand_inputs(["scans/"]) for p in iter_pages(doc)]
    for outcome in run_pages(ocr, pages, mode="gundam", out_dir="ocr-output"):
        print(outcome.page.document.name, outcome.page.number, outcome.status)

How the work overlaps: a thread pool (`workers`) decodes or renders the next pages and runs
`ocr.prepare` on them while the calling thread runs the model on the current batch. The pool
never runs more than a bounded look-ahead of pages ahead of the model (`batch_size + workers`:
the next batch is ready when the current one ends), so memory stays flat on a 2000-page PDF. PIL, PDFium (under its lock) and the
tokenizer release the GIL for their heavy parts, which is what makes threads worth it here.

Resume: with an `out_dir`, a page whose files an earlier run left is reused only when that run
had the same settings (model folder and dtype, mode, prompt, generation arguments, `settings`
such as the PDF dpi, and the source file's size and modification time); otherwise it is redone
and its outcome says why (`PageOutcome.redone`).

Faults (RELIABILITY.md sections 21-23): a page whose loading or preparation raises a
`DeepseekOCRError` or `OSError` gets that error and the others go on. A batch that runs out of
memory, or fails with a `DeepseekOCRError` (e.g. one page too long for the context), is split
in halves and retried, down to a single page which then fails alone.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..engine.transfer import pin_views
from ..errors import DeepseekOCRError, PromptError
from ..generation.generate import generate
from ..inputs import PageRef
from ..ocr import DEFAULT_PROMPT
from ..processing.views import Mode, resolve_mode
from . import writer
from .continuous import OutOfMemoryError, run_continuous, runs_on_engine
from .feed import PAGE_ERRORS, _Feed, _Immediate, _Slot
from .outcome import PageOutcome, finish_page
from .progress import NullWatch

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def _steps_to(ocr, watch) -> Iterator[None]:
    """Tell `watch` of every decoder forward while the block runs (the prefill, then one per
    generated token), so a long batch shows its progress. A forward hook sees the reference
    loop; a CUDA-graph replay runs no Python, so there the display shows the batch's time only."""
    decoder = getattr(getattr(ocr, "model", None), "decoder", None)
    if not isinstance(decoder, torch.nn.Module) or isinstance(watch, NullWatch):
        yield
        return
    handle = decoder.register_forward_hook(lambda *_: watch.step())
    try:
        yield
    finally:
        handle.remove()


def _describe_page(page: PageRef) -> str:
    return f"{page.document.path} page {page.number}"


class _Runner:
    def __init__(self, ocr, *, prompt: str, mode: Mode, batch_size: int, workers: int,
                 out_dir: Path | None, resume: bool, on_page, write_documents: bool, gen_kwargs: dict,
                 page_settings, watch):
        self.ocr = ocr
        self.prompt = prompt
        self.mode = mode
        self.batch_size = batch_size
        self.workers = workers
        self.out_dir = out_dir
        self.resume = resume
        self.on_page = on_page
        self.write_documents = write_documents and out_dir is not None
        self.gen_kwargs = gen_kwargs
        self.watch = watch
        # What a page's result depends on besides its source file (see `_run_settings`).
        folder = getattr(ocr, "folder", None)
        self.settings = {
            "model": str(folder) if folder is not None else None,
            "dtype": str(getattr(ocr, "dtype", "")).replace("torch.", ""),
            "mode": {"base_size": mode.base_size, "image_size": mode.image_size, "crop": mode.crop,
                     "min_tiles": mode.min_tiles, "max_tiles": mode.max_tiles},
            "prompt": prompt, "generation": gen_kwargs}
        self.page_settings = page_settings if callable(page_settings) else (lambda page: dict(page_settings))
        self.lookahead = batch_size + workers
        # Documents seen so far: name -> [page numbers in order]; `_open_doc` is the one the
        # stream is in (see `_track_document` for when a document's markdown is written).
        self._docs: dict[str, list[int]] = {}
        self._written: dict[str, int] = {}
        self._open_doc: str | None = None
        self._expected: dict[str, int] | None = None  # pages per document, when known up front

    # ---------------------------------------------------------------------- preparation
    def _prepare(self, page: PageRef):
        t0 = time.perf_counter()
        image = page.load()
        # Pinned here, on the preparing thread, so the engine's thread only starts the copy.
        # uint8 levels: half the bytes of bf16 pixels to pin and copy, converted on the device
        inputs = pin_views(self.ocr.prepare(image, self.prompt, self.mode, pixel_codes=True), self.ocr.device)
        return image, inputs, time.perf_counter() - t0

    def _run_settings(self, page: PageRef) -> dict:
        """The settings a page's result depends on: the run's, and its source file as it is now."""
        try:
            st = os.stat(page.document.path)
            source = {"path": str(page.document.path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        except OSError:  # gone or unreadable: loading it will fail and say why
            source = {"path": str(page.document.path)}
        return {**self.settings, **self.page_settings(page), "source": {**source, "page_index": page.index}}

    def _new_slot(self, page: PageRef, pool: ThreadPoolExecutor | None) -> _Slot:
        slot = _Slot(page)
        slot.run = self._run_settings(page)
        if self.out_dir is not None and self.resume:
            done = writer.read_done_page(self.out_dir, page.document.name, page.number)
            if done is not None:
                slot.redone = writer.run_mismatch(done[0], slot.run)
                if slot.redone is None:
                    slot.skipped = done
                    return slot
                logger.info("%s: redone, the earlier result had other settings: %s",
                            _describe_page(page), slot.redone)
        slot.future = pool.submit(self._prepare, page) if pool is not None else _Immediate(self._prepare, page)
        return slot

    @staticmethod
    def _resolve(slot: _Slot) -> None:
        """Wait for the slot's preparation; a bad input becomes the slot's error."""
        try:
            slot.image, slot.inputs, slot.timings["prepare_s"] = slot.future.result()
        except PAGE_ERRORS as err:
            slot.fail(type(err).__name__, str(err))
            logger.warning("%s: %s: %s", _describe_page(slot.page), type(err).__name__, err)
        slot.future = None

    # ------------------------------------------------------------------------ generation
    def _generate(self, slots: list[_Slot]) -> None:
        """Generate for `slots`, halving the batch on out-of-memory or a per-input error."""
        t0 = time.perf_counter()
        failure = None
        try:
            with self.watch.batch(len(slots)), _steps_to(self.ocr, self.watch):
                results = self.ocr.generate([s.inputs for s in slots], **self.gen_kwargs)
        except OutOfMemoryError as err:
            failure = ("OutOfMemoryError", f"out of memory in a batch of {len(slots)}: {err}")
        except DeepseekOCRError as err:
            failure = (type(err).__name__, str(err))
        if failure is None:
            share = (time.perf_counter() - t0) / len(slots)
            for slot, result in zip(slots, results):
                slot.result = result
                slot.timings.update(generate_s=share, batch_size=len(slots))
                if result.error is not None or result.finish_reason == "error":
                    slot.fail("GenerationError", result.error or "generation failed")
            return
        # Retried outside the `except` block: the exception's traceback holds the frames (and
        # the activations they reference) alive until the block ends.
        if self.ocr.device.type == "cuda":
            torch.cuda.empty_cache()
        if len(slots) == 1:
            logger.warning("%s: %s: %s", _describe_page(slots[0].page), *failure)
            slots[0].fail(*failure)
            return
        logger.warning("batch of %d failed (%s); retrying in halves", len(slots), failure[0])
        half = (len(slots) + 1) // 2
        self._generate(slots[:half])
        self._generate(slots[half:])

    # -------------------------------------------------------------------------- finishing
    def _finish(self, slot: _Slot) -> PageOutcome:
        return finish_page(slot, mode=self.mode, prompt=self.prompt, out_dir=self.out_dir)

    def _track_document(self, outcome: PageOutcome) -> None:
        """Write a document's markdown as soon as its last page is through: known from the page
        list when `pages` is a sequence, else when the stream moves on to another document."""
        name = outcome.page.document.name
        if name != self._open_doc:
            if self._expected is None:
                self._close_document(self._open_doc)
            self._open_doc = name
        seen = self._docs.setdefault(name, [])
        seen.append(outcome.page.number)
        if self._expected is not None and len(seen) == self._expected.get(name, -1):
            self._close_document(name)

    def _close_document(self, name: str | None) -> None:
        if name is None or not self.write_documents:
            return
        numbers = self._docs.get(name, [])
        if self._written.get(name) == len(numbers):
            return
        path = writer.write_document(self.out_dir, name, numbers)
        if path is not None:
            self._written[name] = len(numbers)
            logger.info("wrote %s", path)

    def _emit(self, slot: _Slot) -> PageOutcome:
        slot.finishing = _Immediate(self._finish, slot)
        return self._emit_finished(slot)

    def _emit_finished(self, slot: _Slot) -> PageOutcome:
        """Report a slot whose `_finish` ran (here or in a finishing thread): documents, the
        callback, in input order."""
        outcome = slot.finishing.result()
        slot.image = slot.inputs = None  # free the pixels before the next window
        self._track_document(outcome)
        if self.on_page is not None:
            self.on_page(outcome)
        return outcome

    # ------------------------------------------------------------------------------ loop
    def run(self, pages: Iterable[PageRef]) -> Iterator[PageOutcome]:
        if isinstance(pages, Sequence):
            self._expected = {}
            for page in pages:
                self._expected[page.document.name] = self._expected.get(page.document.name, 0) + 1
        if runs_on_engine(self):
            return run_continuous(self, pages)
        return self._run_static(pages)

    def _feed(self, pages: Iterable[PageRef]) -> "_Feed":
        """The pages ahead of the model, being prepared by the worker threads."""
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="deepseek-ocr-prepare") \
            if self.workers > 0 else None
        return _Feed(iter(pages), pool, self._new_slot, self.lookahead)

    def _finish_later(self, slot: _Slot, executor: ThreadPoolExecutor | None):
        """`_finish(slot)` in `executor` (a future), or now (`executor` None)."""
        return executor.submit(self._finish, slot) if executor is not None else _Immediate(self._finish, slot)

    def _run_static(self, pages: Iterable[PageRef]) -> Iterator[PageOutcome]:
        """Windows of `batch_size` pages, one `ocr.generate` call each (the reference loop's way)."""
        feed = self._feed(pages)
        pending, fill = feed.pending, feed.fill

        try:
            while True:
                fill()
                if not pending:
                    break
                # A window: pages in input order up to `batch_size` that need the model, plus
                # the skipped and failed ones among them, reported in their place. Skipped or
                # failed pages before the first one that needs the model go out at once, so a
                # resumed run reports its done pages without waiting for a forward.
                window: list[_Slot] = []
                batch: list[_Slot] = []
                while pending and len(batch) < self.batch_size:
                    slot = pending.popleft()
                    if slot.future is not None:
                        self._resolve(slot)
                    needs_model = slot.skipped is None and slot.error is None
                    if needs_model:
                        batch.append(slot)
                    if window or needs_model:
                        window.append(slot)
                    else:
                        yield self._emit(slot)
                    fill()  # keep the pool busy with the pages after this window
                if batch:
                    self._generate(batch)
                for slot in window:
                    yield self._emit(slot)
            # Whatever is still open, or got pages again after being written (pages of a
            # document not contiguous in the stream), is written with all its pages now.
            for name in list(self._docs):
                self._close_document(name)
        finally:
            feed.close()


def run_pages(ocr, pages: Iterable[PageRef], *, prompt: str = DEFAULT_PROMPT, mode: str | Mode = "gundam",
              batch_size: int = 8, workers: int = 2, out_dir: str | os.PathLike | None = None,
              resume: bool = True, on_page: Callable[[PageOutcome], None] | None = None,
              write_documents: bool = True, page_settings: dict | Callable[[PageRef], dict] | None = None,
              watch=None,
              **gen_kwargs) -> Iterator[PageOutcome]:
    """Run `ocr` over `pages`, yielding one `PageOutcome` per page in input order.

    Args:
        ocr: a loaded `DeepseekOCR` (None only when no page reaches the model, e.g. every page
            is a `DocumentErrorPage`: the command then loads no model).
        pages: `PageRef`s (from `deepseek_ocr.inputs.iter_pages`), consumed lazily.
        prompt: the prompt for every page (must contain `<image>` once).
        mode: "tiny", "small", "base", "large", "gundam" or a `Mode`.
        batch_size: pages per `ocr.generate` call (>= 1).
        workers: threads loading and preparing pages ahead of the model (0: in this thread).
        out_dir: where to write the files (see `writer`); None writes nothing.
        resume: skip pages whose `page-XXXX.json` exists in `out_dir` and was made with the same
            settings (others are redone; `PageOutcome.redone` says what differed).
        on_page: called with each outcome (after its files are written), before it is yielded.
        write_documents: write `<doc>/<doc>.md` once a document's pages are all done (off for
            a rank of a distributed run, whose share of a document is partial).
        page_settings: more json-able settings the results depend on, recorded in each page's
            json and compared on resume: a dict, or a function of the page (e.g. the dpi, for
            PDF pages only).
        watch: told when a batch starts and when each decode step of it ends (the progress
            display); see `progress.BatchWatch`. Default: nobody.
        **gen_kwargs: passed to `ocr.generate` (max_new_tokens, temperature, no_repeat_ngram_size,
            ignore_eos, ...).

    Raises:
        ValueError / TypeError: bad arguments, at the call (not at the first page).
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"workers must be a non-negative integer, got {workers!r}")
    if "<image>" not in prompt:
        raise PromptError(f"the prompt must contain <image>: {prompt!r}")
    # Unknown generation arguments fail now, not after the first page: `generate` checks its
    # arguments before it looks at the (here empty) batch or the model.
    generate(ocr, [], **gen_kwargs)
    runner = _Runner(ocr, prompt=prompt, mode=resolve_mode(mode), batch_size=batch_size,
                     workers=workers, out_dir=Path(out_dir) if out_dir is not None else None,
                     resume=resume, on_page=on_page, write_documents=write_documents,
                     gen_kwargs=gen_kwargs, page_settings=page_settings or {},
                     watch=watch if watch is not None else NullWatch())
    return runner.run(pages)
