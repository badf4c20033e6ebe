"""Fox's page-OCR files (`en_page_ocr.json`, `cn_page_ocr.json`) as `Page`s.

The format (../shared/RESEARCH.md §3): a JSON list of entries

    {"image": "en_1.png", "len": 826,
     "conversations": [{"from": "human", "value": "<image>\\nOCR this image: "},
                       {"from": "gpt", "value": GROUND TRUTH}]}

Rules:

* The ground truth is the first `gpt` turn's value, kept exactly (no stripping: Fox scores the
  raw string).
* `image` is looked up in each image root in turn (default: the JSON's own folder); every
  missing image is listed in one error, so one run shows them all.
* Language: "en" for a file named `en_*`, "zh" for `cn_*`, otherwise guessed from the text.
* `len` and the human turn are kept in `Page.meta` (`fox_len`, `fox_prompt`) but not used: the
  sweep counts ground-truth tokens itself with the model's tokenizer, as the paper did, and uses
  its own prompt (the paper's Table 2 protocol is `<image>\\nFree OCR.`).
* Page ids are the `image` values; two entries naming the same image are an error.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from .errors import BenchmarkFormatError
from .pages import LoadedPages, Page, guess_language

MAX_LISTED = 5  # missing images named in one message; the count covers the rest


def _file_language(path: Path) -> str | None:
    stem = path.name.lower()
    if stem.startswith("en_"):
        return "en"
    if stem.startswith("cn_"):
        return "zh"
    return None


def _ground_truth(entry: dict, source: str) -> tuple[str, str | None]:
    turns = entry.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise BenchmarkFormatError(source, "'conversations' must be a non-empty list of turns")
    answer, question = None, None
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise BenchmarkFormatError(source, f"conversations[{k}] must be an object with a string 'value'")
        if turn.get("from") == "gpt" and answer is None:
            answer = turn["value"]
        elif turn.get("from") == "human" and question is None:
            question = turn["value"]
    if answer is None:
        raise BenchmarkFormatError(source, "no 'gpt' turn: the ground truth is the gpt turn's value")
    if not answer.strip():
        raise BenchmarkFormatError(source, "the ground truth (gpt turn) is empty")
    return answer, question


def read_fox(json_path: str | Path, *, image_roots: Sequence[str | Path] | None = None) -> LoadedPages:
    """Read one Fox page-OCR JSON file.

    Args:
        json_path: e.g. `en_page_ocr.json`.
        image_roots: folders to look for the images in, in order (default: the JSON's folder).

    Raises:
        BenchmarkFormatError: unreadable JSON, a malformed entry (named by index), duplicate
            images, or images not found (all listed).
    """
    path = Path(json_path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BenchmarkFormatError(str(path), f"cannot read Fox JSON: {exc}") from None
    if not isinstance(entries, list) or not entries:
        raise BenchmarkFormatError(str(path), "expected a non-empty JSON list of page entries")
    roots = [Path(r) for r in image_roots] if image_roots else [path.parent]
    language = _file_language(path)
    pages, missing, seen = [], [], set()
    for index, entry in enumerate(entries):
        source = f"{path}[{index}]"
        if not isinstance(entry, dict):
            raise BenchmarkFormatError(source, f"an entry must be an object, got {type(entry).__name__}")
        name = entry.get("image")
        if not isinstance(name, str) or not name.strip():
            raise BenchmarkFormatError(source, "'image' must name the page image file")
        if name in seen:
            raise BenchmarkFormatError(source, f"image {name!r} appears twice")
        seen.add(name)
        reference, question = _ground_truth(entry, source)
        found = next((r / name for r in roots if (r / name).is_file()), None)
        if found is None:
            missing.append(name)
            continue
        pages.append(Page(id=name, image=found, reference=reference, source=f"{source} ({name})",
                          language=language or guess_language(reference),
                          meta={"benchmark": "fox", "fox_len": entry.get("len"), "fox_prompt": question}))
    if missing:
        listed = ", ".join(missing[:MAX_LISTED]) + (" ..." if len(missing) > MAX_LISTED else "")
        where = ", ".join(str(r) for r in roots)
        raise BenchmarkFormatError(str(path), f"{len(missing)} of {len(entries)} page images not found in "
                                              f"{where} ({listed}); pass the folder that holds them with "
                                              "--image-root")
    return LoadedPages(pages, [])
