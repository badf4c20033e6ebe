"""The training record every reader produces, the data error, and the read report.

Rules shared by every reader (each one enforced per record, so that a bad record is reported
with its file and line and never silently dropped or cut):

* At most one image per sample: the model's prompt has one `<image>` slot (one global view and
  its tiles). A record with two or more images is an error, not a sample to split.
* The `<image>` rule: a prompt for a sample *with* an image that has no `<image>` gets
  `"<image>\\n"` prefixed (where the official template puts it, and what ms-swift does for a
  prompt without the tag); a prompt with one `<image>` is kept as written; two or more, or any
  `<image>` in a sample without an image, is an error. A *dataset default* prompt (not one
  written in the record) used for a text-only sample has its `<image>` (and the line break after
  it) removed instead, so one default serves image and text-only rows alike.
* The answer is the target text; an empty (or whitespace-only) answer is an error: the model
  would only learn to stop.
* Modes: a name (tiny, small, base, large, gundam), `BASE:IMAGE[:crop]`, or a `Mode`; resolved
  when the record is read, so a bad mode is reported at its line.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, Union

from ...errors import DeepseekOCRError
from ...processing.prompt import IMAGE_PLACEHOLDER
from ...processing.views import Mode, resolve_mode

logger = logging.getLogger(__name__)

OnError = Literal["stop", "skip"]
ImageRef = Union[bytes, Path, None]

OCR_PROMPT = "<image>\nFree OCR."
"""The default prompt of readers whose records carry only a target (folders, Parquet)."""


class DataError(DeepseekOCRError, ValueError):
    """A training record (or a whole data file) is malformed.

    Attributes:
        source: where: `file.jsonl:LINE`, `file.parquet:row N`, or an image path.
        reason: what is wrong, in words.
    """

    def __init__(self, source: str, reason: str):
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass
class Sample:
    """One training sample: at most one image, a prompt, and the answer the model must write.

    Attributes:
        prompt: the user turn with `<image>` placed (see the module's `<image>` rule).
        answer: the target text (its ids and EOS become the labels).
        image: encoded image bytes, a path, or None for a text-only sample.
        mode: the record's own resolution mode, or None for the dataset's default.
        source: where the record came from, for every later message about it.
        image_size: `(width, height)` after EXIF orientation, read from the image header by
            the reader (None for text-only samples or when the reader did not check images).
        id: the record's own id, when it has one.
    """

    prompt: str
    answer: str
    image: ImageRef
    mode: Mode | None
    source: str
    image_size: tuple[int, int] | None = None
    id: str | None = None

    @property
    def has_image(self) -> bool:
        return self.image is not None


@dataclass
class Skipped:
    """A record left out of the data, and why."""

    source: str
    reason: str


@dataclass
class DataReport:
    """What a reader (or a length pass) kept and what it left out, record by record.

    Attributes:
        kept: records turned into samples.
        skipped: every record left out, with its source and reason (`on_error="skip"`, or the
            length policy "drop").
        notes: things worth knowing that are not record errors (e.g. a target file with no
            image beside it).
    """

    kept: int = 0
    skipped: list[Skipped] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_skip(self, error: DataError) -> None:
        self.skipped.append(Skipped(error.source, error.reason))
        logger.warning("skipped %s: %s", error.source, error.reason)

    def merge(self, other: "DataReport") -> None:
        self.kept += other.kept
        self.skipped.extend(other.skipped)
        self.notes.extend(other.notes)

    def summary(self) -> str:
        lines = [f"{self.kept} sample(s) kept, {len(self.skipped)} left out"]
        lines += [f"  {s.source}: {s.reason}" for s in self.skipped]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


class ReadResult(NamedTuple):
    """What every reader returns: `samples, report = read_...(...)`."""

    samples: list[Sample]
    report: DataReport


def check_on_error(on_error: str) -> None:
    if on_error not in ("stop", "skip"):
        raise ValueError(f"on_error must be 'stop' or 'skip', got {on_error!r}")


def handle(error: DataError, on_error: OnError, report: DataReport) -> None:
    """Raise (stop) or record (skip) one record's error."""
    if on_error == "stop":
        raise error
    report.add_skip(error)


def parse_mode(value: object, source: str) -> Mode | None:
    """A record's mode field: None (dataset default), a name, `BASE:IMAGE[:crop]`, or a Mode."""
    if value is None or isinstance(value, Mode):
        return value
    if not isinstance(value, str):
        raise DataError(source, f"'mode' must be a string such as 'gundam' or '1024:640:crop', "
                                f"got {type(value).__name__}")
    try:
        return resolve_mode(value)
    except ValueError as exc:  # ModeError derives from ValueError
        raise DataError(source, f"bad mode: {exc}") from None


def place_image_tag(prompt: str, has_image: bool, source: str, *, from_default: bool = False) -> str:
    """Apply the `<image>` rule of this module's docstring to one prompt."""
    count = prompt.count(IMAGE_PLACEHOLDER)
    if has_image:
        if count == 0:
            return IMAGE_PLACEHOLDER + "\n" + prompt
        if count == 1:
            return prompt
        raise DataError(source, f"the prompt has {count} '<image>' tags but a sample takes at most "
                                "one image (the model has one image slot per sample)")
    if count == 0:
        return prompt
    if from_default:
        stripped = prompt.replace(IMAGE_PLACEHOLDER + "\n", "").replace(IMAGE_PLACEHOLDER, "")
        if stripped.strip():
            return stripped
        raise DataError(source, f"text-only sample: the default prompt {prompt!r} is only '<image>'; "
                                "give the record a prompt")
    raise DataError(source, f"the prompt has {count} '<image>' tag(s) but the sample has no image")


def check_answer(answer: object, source: str, what: str = "answer") -> str:
    if not isinstance(answer, str):
        raise DataError(source, f"the {what} must be a string, got {type(answer).__name__}")
    if not answer.strip():
        raise DataError(source, f"the {what} is empty: nothing to learn")
    return answer


def natural_key(text: str) -> list:
    """Sort key putting page2 before page10 (digit runs compared as numbers)."""
    # re.split with a capturing group alternates text, digits, text...: positions compare alike.
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", text))]
