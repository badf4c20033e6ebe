"""Training data: readers for the formats users have, lazy preparation, a resumable order.

    >>> samples, report = read_dataset("train.jsonl", on_error="skip")
    >>> dataset = SampleDataset(model, samples, default_mode="gundam", max_length=4096,
    ...                         length_policy="drop")
    >>> order = SampleOrder(len(dataset), seed=0, rank=rank, world_size=world_size)
    >>> batch = [dataset[i] for i in order.take(2)]       # PreparedInputs with labels

Formats (rules in each module's docstring; the shared ones in `records.py`):

* conversations JSONL (`jsonl.read_conversations`), messages JSONL (`jsonl.read_messages`),
  both through `read_jsonl`;
* Parquet as Hugging Face datasets exports it (`parquet.read_parquet`, needs pyarrow);
* a folder of page images with `.md` / `.txt` targets (`folder.read_folder`);
* OmniDocBench's JSON, converted to messages JSONL first (`omnidocbench.convert`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .dataset import SampleDataset, count_tokens, encode_samples, image_tokens
from .folder import read_folder
from .jsonl import read_conversations, read_jsonl, read_messages
from .parquet import read_parquet
from .records import OCR_PROMPT, DataError, DataReport, ReadResult, Sample, Skipped
from .sampler import SampleOrder

__all__ = [
    "DataError", "DataReport", "OCR_PROMPT", "ReadResult", "Sample", "SampleDataset", "SampleOrder",
    "Skipped", "count_tokens", "encode_samples", "image_tokens", "read_conversations",
    "read_dataset", "read_folder", "read_jsonl", "read_messages", "read_parquet",
]


def read_dataset(path: str | Path | Sequence[str | Path], *, format: str = "auto", **options) -> ReadResult:
    """Read any supported format; "auto" picks by what `path` is.

    A folder holding `*.parquet` files is Parquet, any other folder a folder of images;
    `.parquet` is Parquet; `.jsonl` / `.json` is conversations or messages (per record).
    A list of paths reads each in turn (samples concatenated, reports merged).
    `options` go to the reader (`on_error`, `image_root`, `text_column`, `prompt`, ...).
    """
    if isinstance(path, (list, tuple)):
        samples, report = [], DataReport()
        for one in path:
            part = read_dataset(one, format=format, **options)
            samples += part.samples
            report.merge(part.report)
        return ReadResult(samples, report)
    path = Path(path)
    if format == "auto":
        if path.is_dir():
            format = "parquet" if any(path.glob("*.parquet")) else "folder"
        elif path.suffix.lower() == ".parquet":
            format = "parquet"
        elif path.suffix.lower() in (".jsonl", ".json"):
            format = "jsonl"
        else:
            raise DataError(str(path), "cannot tell the format: expected a folder, .parquet, .jsonl or .json "
                                       "(or pass format=)")
    readers = {"jsonl": read_jsonl, "conversations": read_conversations, "messages": read_messages,
               "parquet": read_parquet, "folder": read_folder}
    if format not in readers:
        raise ValueError(f"unknown format {format!r}; choose one of {sorted(readers)} or 'auto'")
    return readers[format](path, **options)
