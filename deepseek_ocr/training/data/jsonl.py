"""JSONL readers: the conversations format (MindSpeed-MM, Fox) and the messages format
(ms-swift, Unsloth). One record per line; blank lines are allowed; a `.json` file holding one
JSON list of records is read too (its records are named `file.json:record N`, counted from 1).

Conversations (TRAINING.md §3)::

    {"id": "p1", "conversations": [
        {"role": "<|User|>", "content": "Free OCR.", "images": ["a.jpg"]},
        {"role": "<|Assistant|>", "content": "..."}]}

Messages::

    {"messages": [{"role": "user", "content": "<image>Free OCR."},
                  {"role": "assistant", "content": "..."}],
     "images": ["a.jpg" | {"bytes": "<base64>"} | "data:image/png;base64,..."]}

Rules (both formats; any record may use either key):

* Roles: `<|User|>`, `user`, `human` and `<|Assistant|>`, `assistant`, `gpt` (any case);
  `role`/`content` or Fox's `from`/`value`. A system turn is an error: the official template
  has no system prompt, and silently dropping it would train on another prompt than written.
* One exchange per record: an optional user turn, then exactly one assistant turn. Multi-turn
  records are an error (split them into records): DeepSeek-OCR is trained on single-turn OCR,
  and one sample per assistant turn would repeat the page's image tokens per turn.
* Images: a list `images` or a single `image`, at the record's top level or in the user turn
  (Unsloth puts them there), not both; paths are relative to `image_root` (default: the
  file's folder). At most one image per record; none makes a text-only sample.
* The prompt is the user turn's content, with the `<image>` rule of `records.py`. A record
  without a user turn takes its `"prompt"` field, else the reader's `default_prompt`; a record
  with both a user turn and `"prompt"` is an error (two prompts).
* `"mode"` (tiny ... gundam, `BASE:IMAGE[:crop]`) overrides the dataset's default mode.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Literal

from .images import header_size, resolve_image
from .records import (OCR_PROMPT, DataError, DataReport, OnError, ReadResult, Sample,
                      check_answer, check_on_error, handle, parse_mode, place_image_tag)

USER_ROLES = frozenset({"<|user|>", "user", "human"})
ASSISTANT_ROLES = frozenset({"<|assistant|>", "assistant", "gpt"})
JsonlFormat = Literal["auto", "conversations", "messages"]


def iter_json_records(path: Path) -> Iterator[tuple[str, object]]:
    """`(source, parsed record or DataError)` per record of a JSONL file (or a `.json` list)."""
    if not path.is_file():
        raise DataError(str(path), "no such file")
    if path.suffix.lower() == ".json":
        with open(path, encoding="utf-8-sig") as f:
            head = f.read(4096).lstrip()
        if head.startswith("["):
            try:
                records = json.loads(path.read_text(encoding="utf-8-sig"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise DataError(str(path), f"not valid JSON: {exc}") from None
            for i, record in enumerate(records, 1):
                yield f"{path}:record {i}", record
            return
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            source = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield source, DataError(source, f"not UTF-8: {exc}")
                continue
            if not line.strip():
                continue
            try:
                yield source, json.loads(line)
            except json.JSONDecodeError as exc:
                yield source, DataError(source, f"not valid JSON: {exc.msg} at column {exc.colno}")


def _images_of(holder: dict, where: str, source: str) -> list | None:
    """The `images` list or single `image` of a record or turn; None when it has neither."""
    if "images" in holder and "image" in holder:
        raise DataError(source, f"{where} has both 'images' and 'image'; give one")
    if "images" in holder:
        images = holder["images"]
        if images is None:
            return []
        if not isinstance(images, list):
            raise DataError(source, f"{where}: 'images' must be a list, got {type(images).__name__}")
        return images
    if "image" in holder:
        image = holder["image"]
        return [] if image is None else image if isinstance(image, list) else [image]
    return None


def _turns(record: dict, key: str, source: str) -> tuple[dict | None, dict]:
    """Validate the turn list; return (user turn or None, assistant turn)."""
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        raise DataError(source, f"'{key}' must be a non-empty list of turns")
    roles = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise DataError(source, f"{key}[{i}] must be an object, got {type(turn).__name__}")
        role = turn.get("role", turn.get("from"))
        if not isinstance(role, str):
            raise DataError(source, f"{key}[{i}] has no 'role' (or 'from') string")
        if "content" not in turn and "value" not in turn:
            raise DataError(source, f"{key}[{i}] has no 'content' (or 'value')")
        r = role.strip().lower()
        if r in USER_ROLES:
            roles.append("user")
        elif r in ASSISTANT_ROLES:
            roles.append("assistant")
        elif r == "system":
            raise DataError(source, f"{key}[{i}]: system turns are not supported (the DeepSeek-OCR "
                                    "template has no system prompt); put the instruction in the user turn")
        else:
            raise DataError(source, f"{key}[{i}]: unknown role {role!r}; expected <|User|>/user/human "
                                    "or <|Assistant|>/assistant/gpt")
    if roles == ["user", "assistant"]:
        return turns[0], turns[1]
    if roles == ["assistant"]:
        return None, turns[0]
    raise DataError(source, f"turns {roles}: a record must be one user turn followed by one assistant "
                            "turn (multi-turn records are not supported; split them into records)")


def _content(turn: dict) -> object:
    return turn["content"] if "content" in turn else turn["value"]


def parse_record(record: object, source: str, root: Path, *, fmt: JsonlFormat = "auto",
                 default_prompt: str = OCR_PROMPT, check_images: bool = True) -> Sample:
    """One JSON record -> Sample, or DataError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise DataError(source, f"a record must be a JSON object, got {type(record).__name__}")
    keys = [k for k in ("conversations", "messages") if k in record]
    if len(keys) != 1:
        found = "both 'conversations' and 'messages'" if keys else f"keys {sorted(record)}"
        raise DataError(source, f"expected a 'conversations' or 'messages' list, found {found}")
    key = keys[0]
    if fmt != "auto" and key != fmt:
        raise DataError(source, f"expected the {fmt} format ('{fmt}' list), found '{key}'")
    user, assistant = _turns(record, key, source)
    if _images_of(assistant, "the assistant turn", source):
        raise DataError(source, "the assistant turn carries images; images belong to the user turn or the record")

    top = _images_of(record, "the record", source)
    in_turn = _images_of(user, "the user turn", source) if user is not None else None
    if top and in_turn:
        raise DataError(source, "images are given both in the record and in the user turn; give them once")
    images = top or in_turn or []
    if len(images) > 1:
        raise DataError(source, f"{len(images)} images: the model takes at most one image per sample "
                                "(one <image> slot); split the record or stitch the pages")
    image = resolve_image(images[0], root, source) if images else None
    size = header_size(image, source) if image is not None and check_images else None

    if user is not None and "prompt" in record:
        raise DataError(source, "the record has both a user turn and a 'prompt' field; give one prompt")
    if user is not None:
        prompt, from_default = _content(user), False
    elif "prompt" in record:
        prompt, from_default = record["prompt"], False
    else:
        prompt, from_default = default_prompt, True
    if not isinstance(prompt, str):
        raise DataError(source, f"the prompt (user content) must be a string, got {type(prompt).__name__}")
    prompt = place_image_tag(prompt, image is not None, source, from_default=from_default)
    answer = check_answer(_content(assistant), source, "assistant content")
    mode = parse_mode(record.get("mode"), source)
    rid = record.get("id")
    return Sample(prompt=prompt, answer=answer, image=image, mode=mode, source=source,
                  image_size=size, id=None if rid is None else str(rid))


def read_jsonl(path: str | Path, *, fmt: JsonlFormat = "auto", image_root: str | Path | None = None,
               default_prompt: str = OCR_PROMPT, on_error: OnError = "stop",
               check_images: bool = True) -> ReadResult:
    """Read a conversations or messages JSONL file (see the module docstring for the rules).

    Args:
        path: the `.jsonl` file (or a `.json` list of records).
        fmt: "conversations" or "messages" to require one format, "auto" to take both.
        image_root: folder that relative image paths start from (default: the file's folder).
        default_prompt: the prompt of records with neither a user turn nor a `"prompt"` field.
        on_error: "stop" raises `DataError` at the first bad record (file and line in the
            message); "skip" leaves it out and lists it in the report.
        check_images: open each image's header (catches non-images at their line and records
            the size the length pass needs without decoding pixels).
    """
    check_on_error(on_error)
    path = Path(path)
    root = Path(image_root) if image_root is not None else path.parent
    samples: list[Sample] = []
    report = DataReport()
    for source, record in iter_json_records(path):
        try:
            if isinstance(record, DataError):
                raise record
            samples.append(parse_record(record, source, root, fmt=fmt, default_prompt=default_prompt,
                                        check_images=check_images))
        except DataError as error:
            handle(error, on_error, report)
    report.kept = len(samples)
    return ReadResult(samples, report)


def read_conversations(path: str | Path, **options) -> ReadResult:
    """`read_jsonl(path, fmt="conversations", ...)`: the MindSpeed-MM / Fox format."""
    return read_jsonl(path, fmt="conversations", **options)


def read_messages(path: str | Path, **options) -> ReadResult:
    """`read_jsonl(path, fmt="messages", ...)`: the ms-swift / Unsloth format."""
    return read_jsonl(path, fmt="messages", **options)
