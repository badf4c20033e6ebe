"""Parquet as Hugging Face `datasets` exports it (`Dataset.to_parquet`, the Hub's shards).

An image column holds HF's Image feature, a struct `{bytes: binary, path: string}` (bytes win
when set; a path alone is relative to `image_root`, default the file's folder), or plain binary,
or a path string; a null image makes a text-only sample. A list of such structs is taken when it
holds at most one image. The target text comes from `text_column`; an optional `prompt_column`
and `mode_column` give per-row prompts and modes (a null cell falls back to the reader's
default). Rows are named `file.parquet:row N`, N counted from 0 as `datasets` indexes them.

Images stay encoded (compressed bytes) in memory; pixels are decoded one sample at a time.
"""
from __future__ import annotations

from pathlib import Path

from .images import header_size, resolve_image
from .records import (OCR_PROMPT, DataError, DataReport, OnError, ReadResult, Sample,
                      check_answer, check_on_error, handle, natural_key, parse_mode,
                      place_image_tag)

_BATCH_ROWS = 256  # rows decoded from Arrow at a time: bounds the Python objects alive at once


def _parquet_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.glob("*.parquet"), key=lambda p: natural_key(p.name))
        if not files:
            raise DataError(str(path), "folder holds no .parquet file")
        return files
    if not path.is_file():
        raise DataError(str(path), "no such file")
    return [path]


def _row_sample(row: dict, source: str, root: Path, *, image_column: str | None, text_column: str,
                prompt_column: str | None, mode_column: str | None, default_prompt: str,
                check_images: bool) -> Sample:
    image = None
    if image_column is not None:
        cell = row[image_column]
        if isinstance(cell, list):
            cell = [c for c in cell if c is not None]
            if len(cell) > 1:
                raise DataError(source, f"column {image_column!r} holds {len(cell)} images: the model "
                                        "takes at most one image per sample")
            cell = cell[0] if cell else None
        if isinstance(cell, dict) and cell.get("bytes") is None and cell.get("path") is None:
            cell = None  # HF writes a struct of two nulls for a missing image
        if cell is not None:
            image = resolve_image({k: v for k, v in cell.items() if k in ("bytes", "path")}
                                  if isinstance(cell, dict) else cell, root, source)
    size = header_size(image, source) if image is not None and check_images else None

    prompt = row.get(prompt_column) if prompt_column is not None else None
    from_default = prompt is None
    if from_default:
        prompt = default_prompt
    elif not isinstance(prompt, str):
        raise DataError(source, f"column {prompt_column!r} must hold strings, got {type(prompt).__name__}")
    prompt = place_image_tag(prompt, image is not None, source, from_default=from_default)
    answer = check_answer(row[text_column], source, f"text column {text_column!r}")
    mode_value = row.get(mode_column) if mode_column is not None else None
    mode = parse_mode(mode_value, source)
    return Sample(prompt=prompt, answer=answer, image=image, mode=mode, source=source, image_size=size)


def read_parquet(path: str | Path, *, image_column: str | None = "image", text_column: str = "text",
                 prompt_column: str | None = None, mode_column: str | None = None,
                 default_prompt: str = OCR_PROMPT, image_root: str | Path | None = None, on_error: OnError = "stop",
                 check_images: bool = True) -> ReadResult:
    """Read a Parquet file (or every `*.parquet` of a folder, in natural order).

    Args:
        path: a `.parquet` file or a folder of shards.
        image_column: the image column (None: every row is text-only).
        text_column: the target text column.
        prompt_column, mode_column: optional per-row prompt and mode columns.
        default_prompt: the prompt of rows without one (`<image>` rule of `records.py`).
        image_root: folder that relative image paths start from (default: the file's folder).
        on_error: "stop" raises at the first bad row; "skip" leaves it out and reports it.
        check_images: open each image's header (see `read_jsonl`).

    Raises:
        DataError: a missing file or column (always, whatever `on_error`: no row can be read),
            or the first bad row with `on_error="stop"`.
    """
    try:
        import pyarrow.parquet as pq
        from pyarrow import ArrowException
    except ImportError:
        raise ImportError("reading Parquet needs pyarrow: pip install 'deepseek-ocr[train]'") from None
    check_on_error(on_error)
    path = Path(path)
    samples: list[Sample] = []
    report = DataReport()
    wanted = [c for c in (image_column, text_column, prompt_column, mode_column) if c is not None]
    for file in _parquet_files(path):
        root = Path(image_root) if image_root is not None else file.parent
        try:
            pf = pq.ParquetFile(file)
        except (ArrowException, OSError) as exc:
            raise DataError(str(file), f"not a readable Parquet file: {exc}") from None
        names = pf.schema_arrow.names
        missing = [c for c in wanted if c not in names]
        if missing:
            raise DataError(str(file), f"no column(s) {missing}; the file has {names} (choose with "
                                       "image_column / text_column / prompt_column / mode_column)")
        row_number = 0
        for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=wanted):
            for row in batch.to_pylist():
                source = f"{file}:row {row_number}"
                row_number += 1
                try:
                    samples.append(_row_sample(
                        row, source, root, image_column=image_column, text_column=text_column,
                        prompt_column=prompt_column, mode_column=mode_column,
                        default_prompt=default_prompt, check_images=check_images))
                except DataError as error:
                    handle(error, on_error, report)
    report.kept = len(samples)
    return ReadResult(samples, report)
