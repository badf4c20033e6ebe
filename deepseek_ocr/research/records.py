"""The results folder's two files of record: `records.jsonl` and `protocol.json`.

`records.jsonl` holds one JSON object per (page, setting), appended as batches finish and synced
to disk, so an interrupted run loses at most the batch in flight. A record is keyed by
`(page_id, setting)`; when a key appears twice (a failed page retried) the last line wins.
Records with an `error` are not "done": a rerun tries them again. Only the file's last line may
be damaged (a write cut short); it is dropped, with a note, before anything is appended.

`protocol.json` is everything that makes two records comparable: the experiment, the predictor
(model folder and dtype, or the oracle's rate), prompt, generation options, seed, metric
definitions, normalization, package version. A rerun in the same folder must agree on the
protocol's `fixed` part (otherwise `ProtocolMismatchError` names the differences); the settings
may grow (a new setting adds records), but a label may not change its mode.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

from .errors import ProtocolMismatchError, RecordFileError

RECORDS_FILE = "records.jsonl"
PROTOCOL_FILE = "protocol.json"
RECORD_VERSION = 1


def record_key(record: dict[str, Any]) -> tuple[str, str]:
    return record["page_id"], record["setting"]


class RecordStore:
    """Append-only records of one results folder (module doc).

    Args:
        folder: the results folder (created if needed).
        fresh: start over: the existing records file is emptied.
    """

    def __init__(self, folder: str | Path, *, fresh: bool = False):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / RECORDS_FILE
        self.notes: list[str] = []
        if fresh and self.path.exists():
            self.path.unlink()
        self._records: dict[tuple[str, str], dict[str, Any]] = {}
        for record in self._read_and_repair():
            self._records[record_key(record)] = record

    def _read_and_repair(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        records, good_bytes = [], 0
        for number, line in enumerate(lines, 1):
            if not line.strip():
                good_bytes += len(line) + 1
                continue
            try:
                record = json.loads(line)
                record_key(record)
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
                if any(rest.strip() for rest in lines[number:]):
                    raise RecordFileError(f"{self.path}:{number}: not a record ({exc}); the file is damaged "
                                          "before its last line: move it away to start over") from None
                self.notes.append(f"{self.path}:{number}: incomplete last line dropped (a write cut short)")
                with open(self.path, "r+b") as f:
                    f.truncate(good_bytes)
                break
            records.append(record)
            good_bytes += len(line) + 1
        return records

    def done(self, page_id: str, setting: str) -> bool:
        """Whether a record without error exists for this key."""
        record = self._records.get((page_id, setting))
        return record is not None and not record.get("error")

    def append(self, records: Iterable[dict[str, Any]]) -> None:
        """Write records at the end of the file and sync them to disk."""
        lines = []
        for record in records:
            self._records[record_key(record)] = record
            lines.append(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n")
        if not lines:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write("".join(lines))
            f.flush()
            os.fsync(f.fileno())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._records.values()))

    def __len__(self) -> int:
        return len(self._records)


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """The current records of a results folder (last line per key), in file order."""
    path = Path(folder) / RECORDS_FILE
    if not path.exists():
        raise RecordFileError(f"{path}: no records here (is this a results folder?)")
    return list(RecordStore(folder))


def _differences(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} before, {b!r} now")
    return out


def write_protocol(folder: str | Path, fixed: dict[str, Any], settings: list[dict[str, Any]],
                   context: dict[str, Any], *, fresh: bool = False) -> dict[str, Any]:
    """Check a rerun against the folder's protocol and write the merged one.

    Args:
        folder: the results folder.
        fixed: what every record of the folder must share (module doc).
        settings: `Setting.describe()` of this run's settings.
        context: facts recorded but not enforced (device, start time, torch version, data
            paths); each run's are appended to the protocol's `runs`.
        fresh: ignore an existing protocol (a `--no-resume` run).

    Returns:
        The protocol written.

    Raises:
        ProtocolMismatchError: the fixed part differs, or a label now names another mode.
    """
    path = Path(folder) / PROTOCOL_FILE
    # Through JSON once, so that tuples and lists (and other JSON-equal values) compare equal.
    fixed = json.loads(json.dumps(fixed, default=str))
    merged = list(settings)
    if path.exists() and not fresh:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ProtocolMismatchError(f"{path}: unreadable ({exc}); use another --out or --no-resume") from None
        diffs = _differences(old.get("fixed", {}), fixed)
        by_name = {s["name"]: s for s in old.get("settings", [])}
        for s in settings:
            if s["name"] in by_name and by_name[s["name"]] != s:
                diffs.append(f"setting {s['name']!r}: {by_name[s['name']]} before, {s} now")
        if diffs:
            raise ProtocolMismatchError(
                f"{folder} holds records made under another protocol:\n  " + "\n  ".join(diffs)
                + "\nUse another --out, or --no-resume to discard the old records.")
        merged = list(old.get("settings", [])) + [s for s in settings if s["name"] not in by_name]
        runs = list(old.get("runs", []))
    else:
        runs = []
    protocol = {"fixed": fixed, "settings": merged, "runs": runs + [context]}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(protocol, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return protocol


def read_protocol(folder: str | Path) -> dict[str, Any] | None:
    path = Path(folder) / PROTOCOL_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RecordFileError(f"{path}: unreadable: {exc}") from None
