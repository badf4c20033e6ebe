"""A folder of page images with their transcriptions beside them.

    pages/
      page1.png   page1.md
      page2.jpg   page2.txt
      page10.png  page10.md

Each image's target is the `.md` or `.txt` file with the same stem; both at once is an error
(which one is meant?), and so is an image with neither. Targets are read as UTF-8 (a BOM is
dropped); trailing whitespace and leading blank lines are removed, so an editor's final newline
does not teach the model to end every page with a line break. Samples come in natural order
(page2 before page10) of their path relative to the folder. A target file with no image beside
it is listed in the report's notes (it may be a README), not an error. All samples share the
reader's `prompt`; the dataset's default mode applies unless `mode` is given.
"""
from __future__ import annotations

from pathlib import Path

from .images import header_size
from .records import (OCR_PROMPT, DataError, DataReport, OnError, ReadResult, Sample,
                      check_answer, check_on_error, handle, natural_key, parse_mode,
                      place_image_tag)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
TARGET_SUFFIXES = (".md", ".txt")


def _read_target(path: Path, source: str) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(source, f"target {path.name} is not UTF-8: {exc}") from None
    except OSError as exc:
        raise DataError(source, f"cannot read target {path.name}: {exc}") from None
    return check_answer(text.rstrip().lstrip("\r\n"), source, f"target {path.name}")


def read_folder(folder: str | Path, *, prompt: str = OCR_PROMPT, mode: str | None = None,
                recursive: bool = False, on_error: OnError = "stop",
                check_images: bool = True) -> ReadResult:
    """Read a folder of images with `.md` / `.txt` targets (rules in the module docstring).

    Args:
        folder: the folder.
        prompt: every sample's prompt (`<image>\\n` is prefixed when it lacks `<image>`).
        mode: a mode for every sample (None: the dataset's default).
        recursive: include subfolders (each image's target sits beside it).
        on_error: "stop" raises at the first bad image; "skip" leaves it out and reports it.
        check_images: open each image's header (see `read_jsonl`).
    """
    check_on_error(on_error)
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(str(folder), "not a folder")
    sample_mode = parse_mode(mode, str(folder))
    files = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted((p for p in files if p.is_file()), key=lambda p: natural_key(p.relative_to(folder).as_posix()))
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    image_stems = {p.with_suffix("") for p in images}
    report = DataReport()
    for p in files:
        if p.suffix.lower() in TARGET_SUFFIXES and p.with_suffix("") not in image_stems:
            report.notes.append(f"{p}: no image with this name; not used")
    samples: list[Sample] = []
    for image in images:
        source = str(image)
        try:
            targets = [image.with_suffix(s) for s in TARGET_SUFFIXES if image.with_suffix(s).is_file()]
            if not targets:
                raise DataError(source, f"no target: expected {image.stem}.md or {image.stem}.txt beside it")
            if len(targets) > 1:
                raise DataError(source, f"two targets ({targets[0].name} and {targets[1].name}); keep one")
            answer = _read_target(targets[0], source)
            size = header_size(image, source) if check_images else None
            samples.append(Sample(prompt=place_image_tag(prompt, True, source), answer=answer,
                                  image=image, mode=sample_mode, source=source, image_size=size))
        except DataError as error:
            handle(error, on_error, report)
    report.kept = len(samples)
    return ReadResult(samples, report)
