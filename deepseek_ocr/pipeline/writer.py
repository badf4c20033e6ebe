"""Output files of a run, each written whole or not at all.

Layout under `out_dir` (one folder per document, named by `Document.name`):

    <doc>/page-0001.md            markdown (grounding removed, figures linked)
    <doc>/page-0001.raw.txt       the decoded model output exactly (`GenerationResult.raw_text`)
    <doc>/page-0001.boxes.jpg     the page with its boxes drawn
    <doc>/images/page-0001-0.jpg  figure crops
    <doc>/page-0001.json          boxes, token figures, timings; written LAST: it marks the page done
    <doc>/page-0001.error.json    instead of the above when the page failed (a rerun retries it)
    <doc>/<doc>.md                the document: every page's markdown, once all are done
    summary.json                  the run: every page's status and figures, and totals

Every file goes to a temporary name in its own folder and is then `os.replace`d onto its name,
which is atomic on POSIX and Windows within one file system: a run killed at any moment leaves
old complete files or new complete files, never a torn one (RELIABILITY.md section 22). The
temporary file is made private (0600) by `mkstemp`; it gets the mode a plain `open` would give
(0666 less the umask) before the rename, so others can read the outputs as the user expects.

A page counts as done for a later run only if it was made with the same settings (`run` in its
json: model, dtype, mode, prompt, generation arguments, and the source file's size and time);
otherwise it is redone. The document markdown and `summary.json` cover every page present in
the folder, also pages of earlier runs with other `--pages` ranges.
"""
from __future__ import annotations

import io
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Iterable

from PIL import Image

from ..generation.generate import GenerationResult
from ..postprocess import combine_pages

logger = logging.getLogger(__name__)

PAGE_FORMAT = "deepseek-ocr/page-1"
SUMMARY_FORMAT = "deepseek-ocr/summary-1"
JPEG_QUALITY = 90


# ------------------------------------------------------------------------ atomic writes
def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    # Elsewhere the only way is to set it and set it back; a file another thread creates in
    # between would get mode 0o022's complement, which is why /proc is tried first.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    Args:
        path: destination; its folder is created if missing.
        data: the whole content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp's 0600 would hide outputs from others
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=1) + "\n")


def atomic_write_jpeg(path: str | os.PathLike, image: Image.Image) -> Path:
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return atomic_write_bytes(path, buf.getvalue())


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------------ names
def page_stem(number: int) -> str:
    """`page-0001` for page 1 (four digits keep a folder listing in page order up to 9999)."""
    return f"page-{number:04d}"


def document_dir(out_dir: str | os.PathLike, doc_name: str) -> Path:
    return Path(out_dir) / doc_name


def page_json_path(out_dir: str | os.PathLike, doc_name: str, number: int) -> Path:
    return document_dir(out_dir, doc_name) / f"{page_stem(number)}.json"


def page_error_path(out_dir: str | os.PathLike, doc_name: str, number: int) -> Path:
    return document_dir(out_dir, doc_name) / f"{page_stem(number)}.error.json"


def document_markdown_path(out_dir: str | os.PathLike, doc_name: str) -> Path:
    return document_dir(out_dir, doc_name) / f"{doc_name}.md"


# ------------------------------------------------------------------------------ pages
def token_figures(result: GenerationResult) -> dict:
    """The token counts of one result, as stored in the page json and the summary."""
    return {"prompt": result.prompt_tokens, "vision": result.vision_tokens,
            "valid_vision": result.valid_vision_tokens, "text": len(result.token_ids),
            "compression_ratio": result.compression_ratio}


def write_page(out_dir: str | os.PathLike, record: dict, result: GenerationResult, render) -> dict:
    """Write one done page: markdown, raw text, drawn page, crops, then the json.

    Args:
        out_dir: the run's output folder.
        record: the page's json content without `files` (see `runner._page_record`); must hold
            `document` and `page`.
        result: the generation result.
        render: its `postprocess.PageRender`.

    Returns:
        The record as written (with `files` added).
    """
    folder = document_dir(out_dir, record["document"])
    stem = page_stem(record["page"])
    files = {"markdown": f"{stem}.md", "raw": f"{stem}.raw.txt", "boxes_image": f"{stem}.boxes.jpg",
             "crops": [name for name, _ in render.crops]}
    atomic_write_text(folder / files["markdown"], render.markdown)
    atomic_write_text(folder / files["raw"], result.raw_text)
    if render.drawn is not None:
        atomic_write_jpeg(folder / files["boxes_image"], render.drawn)
    else:
        files["boxes_image"] = None
    for name, picture in render.crops:
        atomic_write_jpeg(folder / name, picture)
    record = {**record, "files": files}
    atomic_write_json(folder / f"{stem}.json", record)  # last: from here on the page is done
    _remove(folder / f"{stem}.error.json")  # a failure of an earlier run is now superseded
    return record


def write_page_error(out_dir: str | os.PathLike, record: dict) -> dict:
    """Record a failed page (`page-0001.error.json`); drop an older done-marker of it so that a
    rerun retries the page instead of trusting outputs this run could not reproduce."""
    folder = document_dir(out_dir, record["document"])
    stem = page_stem(record["page"])
    atomic_write_json(folder / f"{stem}.error.json", record)
    _remove(folder / f"{stem}.json")
    return record


def read_done_page(out_dir: str | os.PathLike, doc_name: str, number: int
                   ) -> tuple[dict, GenerationResult] | None:
    """The record and result of a page an earlier run finished, or None when it must be (re)done.

    A page counts as done when its json parses, says `ok`, and its raw text is there; anything
    else (a json from another format, a hand-deleted file) is treated as not done. Whether it
    was done with this run's settings is `run_mismatch`'s question.
    """
    path = page_json_path(out_dir, doc_name, number)
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        raw = (path.parent / record["files"]["raw"]).read_text(encoding="utf-8")
        tokens = record["tokens"]
        result = GenerationResult(
            text=raw.strip(), token_ids=list(record["token_ids"]), finish_reason=record["finish_reason"],
            prompt_tokens=tokens["prompt"], vision_tokens=tokens["vision"],
            valid_vision_tokens=tokens["valid_vision"], error=None, raw_text=raw)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as err:
        logger.warning("%s: not reusable (%s); the page will be redone", path, err)
        return None
    if record.get("format") != PAGE_FORMAT or record.get("status") != "ok":
        return None
    return record, result


def _as_json(value: Any) -> Any:
    """`value` as it reads back from json (tuples become lists, keys strings), for comparing."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def run_mismatch(record: dict, run: dict) -> str | None:
    """Why a done page's settings differ from this run's (`None`: the page can be reused).

    Args:
        record: the page's json (its `run` holds the settings it was made with).
        run: this run's settings for the page (see `runner._run_settings`).
    """
    before = record.get("run")
    if not isinstance(before, dict):
        return "made by an older version that did not record its settings"
    now = _as_json(run)
    before = _as_json(before)
    changed = [key for key in sorted(set(now) | set(before)) if now.get(key) != before.get(key)]
    if not changed:
        return None

    def show(value) -> str:
        text = json.dumps(value, ensure_ascii=False, sort_keys=True) if not isinstance(value, str) else value
        return text if len(text) <= 60 else text[:57] + "..."

    return "; ".join(f"{key} was {show(before.get(key))}, now {show(now.get(key))}" for key in changed)


# -------------------------------------------------------------------------- documents
_PAGE_JSON = re.compile(r"page-(\d{4,})\.json")


def present_pages(out_dir: str | os.PathLike, doc_name: str) -> list[int]:
    """Numbers of the pages of `doc_name` done in `out_dir` (by this run or an earlier one)."""
    folder = document_dir(out_dir, doc_name)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    return sorted(int(m.group(1)) for m in map(_PAGE_JSON.fullmatch, names) if m)


def write_document(out_dir: str | os.PathLike, doc_name: str, numbers: Iterable[int]) -> Path | None:
    """Write `<doc>/<doc>.md` from the pages' markdown files, if every one of `numbers` is done.

    The document holds every done page of the folder in page order: the pages of `numbers`
    and those an earlier run left (e.g. with another page range), so that a second run over
    other pages does not shrink the document to its own.

    Args:
        out_dir: the run's output folder.
        doc_name: the document's output name.
        numbers: the document's selected pages in this run (1-based).

    Returns:
        The path written, or None when a page of `numbers` is missing or failed.
    """
    folder = document_dir(out_dir, doc_name)
    wanted = set(numbers)
    texts = []
    for number in sorted(wanted | set(present_pages(out_dir, doc_name))):
        stem = page_stem(number)
        try:
            if not (folder / f"{stem}.json").is_file():
                raise FileNotFoundError(folder / f"{stem}.json")
            texts.append((folder / f"{stem}.md").read_text(encoding="utf-8"))
        except FileNotFoundError:
            if number in wanted:
                return None
            continue  # an earlier page deleted by hand since the listing: not part of the document
    if not texts:
        return None
    return atomic_write_text(document_markdown_path(out_dir, doc_name), combine_pages(texts))


# ---------------------------------------------------------------------------- summary
def summary_entry(record: dict, status: str, redone: str | None = None) -> dict:
    """The summary's line for one page: status, error and figures, without boxes or ids.

    Args:
        record: the page's json content.
        status: "ok", "failed" or "skipped".
        redone: why an earlier result of the page was not reused, if it was redone.
    """
    keep = ("document", "source", "page", "index", "scope", "error", "error_type",
            "finish_reason", "tokens", "seconds", "problems")
    entry = {k: record[k] for k in keep if k in record}
    entry["status"] = status
    if redone is not None:
        entry["redone"] = redone
    if status != "failed":
        entry["json"] = f"{record['document']}/{page_stem(record['page'])}.json"
    return entry


def summarize(entries: list[dict], *, seconds: float, extra: dict | None = None) -> dict:
    """A run summary: the page entries (in run order) and totals.

    Args:
        entries: from `summary_entry`.
        seconds: wall time of the run.
        extra: run settings to include (model, mode, prompt, ...).
    """
    worked = [e for e in entries if e["status"] == "ok"]
    text_tokens = sum(e.get("tokens", {}).get("text", 0) for e in worked)
    totals = {
        "pages": len(entries),
        "ok": len(worked),
        "failed": sum(e["status"] == "failed" for e in entries),
        "skipped": sum(e["status"] == "skipped" for e in entries),
        "redone": sum("redone" in e for e in entries),
        "text_tokens": text_tokens,
        "prompt_tokens": sum(e.get("tokens", {}).get("prompt", 0) for e in worked),
        "seconds": round(seconds, 3),
        "pages_per_s": round(len(worked) / seconds, 4) if seconds > 0 else None,
        "tokens_per_s": round(text_tokens / seconds, 2) if seconds > 0 else None,
    }
    return {"format": SUMMARY_FORMAT, **(extra or {}), "totals": totals, "pages": entries}


def _entry_files_exist(out_dir: Path, entry: dict) -> bool:
    try:
        stem = page_stem(int(entry["page"]))
        folder = document_dir(out_dir, str(entry["document"]))
    except (KeyError, TypeError, ValueError):
        return False
    return (folder / f"{stem}.json").is_file() or (folder / f"{stem}.error.json").is_file()


def with_earlier_pages(out_dir: str | os.PathLike, summary: dict, name: str = "summary.json") -> dict:
    """`summary` plus the entries of the summary already in `out_dir` for pages this run did not
    touch whose files are still there (marked `"earlier": true`, counted in `totals.earlier`).

    Pages come in document order (this run's documents first), by page number within one. The
    totals other than `earlier` stay this run's.
    """
    out_dir = Path(out_dir)
    try:
        old = json.loads((out_dir / name).read_text(encoding="utf-8"))
        old_entries = old["pages"] if old.get("format") == SUMMARY_FORMAT else []
    except FileNotFoundError:
        old_entries = []
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        logger.warning("%s: unreadable (%s); it lists only this run's pages now", out_dir / name, err)
        old_entries = []
    mine = summary["pages"]
    done_here = {(e["document"], e["page"]) for e in mine}
    earlier = [{**e, "earlier": True} for e in old_entries
               if isinstance(e, dict) and (e.get("document"), e.get("page")) not in done_here
               and _entry_files_exist(out_dir, e)]
    docs: dict[str, int] = {}
    for e in [*mine, *earlier]:
        docs.setdefault(e["document"], len(docs))
    merged = sorted([*mine, *earlier], key=lambda e: (docs[e["document"]], e["page"]))
    return {**summary, "totals": {**summary["totals"], "earlier": len(earlier)}, "pages": merged}


def write_summary(out_dir: str | os.PathLike, summary: dict, name: str = "summary.json") -> Path:
    return atomic_write_json(Path(out_dir) / name, summary)
