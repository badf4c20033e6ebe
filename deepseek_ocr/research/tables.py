"""Tables from records: the paper's Table 2 and Table 3 layouts, and precision by a page fact.

Every number is recomputed from per-page records (`records.jsonl`), so a table can be rebuilt
with other buckets or another precision at any time (`deepseek-ocr research report`). Failed
records (an `error`) are left out of every cell and counted in the notes.

* Table 2 (precision against compression): rows are text-token buckets of `bucket_width`
  (the ground truth's token count, the same in every setting), columns the settings; a cell is
  the mean over its pages of the chosen precision (`scoring.PRECISIONS`) and the mean
  compression ratio (text tokens / valid vision tokens), as "96.5% / 10.5×". Means over pages
  (each page one vote) follow Fox's script, which averages per-page scores.
* Table 3 (edit distance per setting): the page set's normalized edit distance,
  Σ edits / Σ max(prediction, reference length) on OmniDocBench-normalized text (OmniDocBench's
  aggregation), overall and per language, with the mean vision and valid vision tokens.
* `table_by_meta` (e.g. font size of synthetic pages): rows are the values of one `page_meta`
  field, columns the settings, cells mean precision and page count.

Each table has a markdown form (for reading) and a CSV form (long format, one row per cell,
every precision definition and the raw means, for re-plotting).
"""
from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..evaluation import EditCounts, set_normalized_edit_distance
from .errors import ResearchError
from .scoring import PRECISION_DEFINITIONS, PRECISIONS

LANGUAGE_ORDER = ("en", "zh")


@dataclass
class Table:
    """A table in both forms.

    Attributes:
        title: a line above the markdown table.
        header: markdown column names.
        rows: markdown cells, already formatted.
        csv_header: CSV column names.
        csv_rows: CSV values (numbers unformatted).
        notes: lines below the markdown table (definitions, left-out records).
    """

    title: str
    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[Any]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        lines = [f"{self.title}", "", "| " + " | ".join(self.header) + " |",
                 "| " + " | ".join("---" for _ in self.header) + " |"]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.csv_header)
        writer.writerows(self.csv_rows)
        return buffer.getvalue()

    def write(self, folder: str | Path, stem: str) -> list[Path]:
        """`folder/stem.md` and `folder/stem.csv`; returns both paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        md, sheet = folder / f"{stem}.md", folder / f"{stem}.csv"
        md.write_text(self.markdown(), encoding="utf-8")
        sheet.write_text(self.csv(), encoding="utf-8")
        return [md, sheet]


def usable(records: Iterable[dict[str, Any]]) -> tuple[list[dict[str, Any]], int]:
    """Records with metrics, and how many were left out for an error."""
    good, failed = [], 0
    for r in records:
        if r.get("error") or r.get("metrics") is None:
            failed += 1
        else:
            good.append(r)
    return good, failed


def setting_order(records: Sequence[dict[str, Any]], settings: Sequence[str] | None = None) -> list[str]:
    """`settings` when given (those present), else the order settings first appear in."""
    present = list(dict.fromkeys(r["setting"] for r in records))
    return [s for s in settings if s in present] if settings else present


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else math.nan


def set_ned(records: Iterable[dict[str, Any]]) -> float:
    """Σ edits / Σ max lengths of the records' character counts (OmniDocBench's aggregate)."""
    return set_normalized_edit_distance(
        EditCounts(r["metrics"]["char_edits"], r["metrics"]["prediction_chars"],
                   r["metrics"]["reference_chars"], "char") for r in records)


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ResearchError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _cell_stats(group: list[dict[str, Any]]) -> list[Any]:
    """The CSV values every grouped table shares, for one cell's records."""
    return [len(group)] + [mean(r["metrics"][f] for r in group) for f in PRECISIONS.values()] + [
        mean(r["compression_ratio"] for r in group if r["compression_ratio"] is not None),
        set_ned(group), mean(r["vision_tokens"] for r in group),
        mean(r["valid_vision_tokens"] for r in group)]


_STATS_HEADER = (["pages"] + list(PRECISIONS.values())
                 + ["compression_ratio_mean", "ned_set", "vision_tokens_mean", "valid_vision_tokens_mean"])


def _vision_label(group: list[dict[str, Any]]) -> str:
    counts = {r["vision_tokens"] for r in group}
    return f"{counts.pop()} vision tokens" if len(counts) == 1 else f"{mean(r['vision_tokens'] for r in group):.0f} vision tokens (mean)"


def _failed_note(failed: int) -> list[str]:
    return [f"{failed} record(s) failed and are left out (their `error` is in records.jsonl)"] if failed else []


def table2(records: Iterable[dict[str, Any]], *, bucket_width: int = 100, precision: str = "edit",
           settings: Sequence[str] | None = None) -> Table:
    """Table 2's layout (module doc)."""
    if bucket_width < 1:
        raise ResearchError(f"bucket_width must be at least 1, got {bucket_width}")
    field_name = _check_precision(precision)
    good, failed = usable(records)
    names = setting_order(good, settings)
    cells: dict[tuple[int, str], list[dict[str, Any]]] = defaultdict(list)
    pages: dict[int, set[str]] = defaultdict(set)
    for r in good:
        bucket = r["text_tokens"] // bucket_width
        cells[bucket, r["setting"]].append(r)
        pages[bucket].add(r["page_id"])
    header = ["text tokens"]
    for name in names:
        group = [r for r in good if r["setting"] == name]
        header.append(f"{name} ({_vision_label(group)}): precision / ratio")
    header.append("pages")
    rows, csv_rows = [], []
    for bucket in sorted(pages):
        low, high = bucket * bucket_width, (bucket + 1) * bucket_width
        row = [f"{low}–{high}"]
        for name in names:
            group = cells.get((bucket, name), [])
            if not group:
                row.append("–")
                continue
            cell = (f"{100 * mean(r['metrics'][field_name] for r in group):.1f}% / "
                    f"{mean(r['compression_ratio'] for r in group):.1f}×")
            row.append(cell if len(group) == len(pages[bucket]) else f"{cell} ({len(group)})")
            csv_rows.append([low, high, name] + _cell_stats(group))
        rows.append(row + [str(len(pages[bucket]))])
    notes = [f"precision ({precision}): {PRECISION_DEFINITIONS[precision]}; mean over the cell's pages",
             "ratio: mean over the cell's pages of ground-truth text tokens / valid vision tokens",
             "a cell's (n) is its page count where it differs from the row's"] + _failed_note(failed)
    return Table(f"Precision / compression ratio by ground-truth text tokens (buckets of {bucket_width})",
                 header, rows, ["tokens_low", "tokens_high", "setting"] + _STATS_HEADER, csv_rows, notes)


def table3(records: Iterable[dict[str, Any]], *, settings: Sequence[str] | None = None) -> Table:
    """Table 3's layout (module doc)."""
    good, failed = usable(records)
    names = setting_order(good, settings)
    found = {r["language"] for r in good if r.get("language")}
    languages = [lang for lang in LANGUAGE_ORDER if lang in found] + sorted(found - set(LANGUAGE_ORDER))
    header = ["setting", "vision tokens", "valid vision tokens", "pages", "edit distance (all)"]
    header += [f"edit distance ({lang})" for lang in languages]
    rows, csv_rows = [], []
    for name in names:
        group = [r for r in good if r["setting"] == name]
        by_language = [[r for r in group if r.get("language") == lang] for lang in languages]
        row = [name, f"{mean(r['vision_tokens'] for r in group):.0f}",
               f"{mean(r['valid_vision_tokens'] for r in group):.0f}", str(len(group)), f"{set_ned(group):.3f}"]
        row += [f"{set_ned(part):.3f} ({len(part)})" if part else "–" for part in by_language]
        rows.append(row)
        csv_rows.append([name, "all"] + _cell_stats(group))
        csv_rows += [[name, lang] + _cell_stats(part) for lang, part in zip(languages, by_language) if part]
    notes = ["edit distance: Σ edits / Σ max(prediction, reference) characters over the pages, on "
             "OmniDocBench-normalized text; (n) is the page count",
             "vision tokens: every view's grid (64 tiny, 100 small, 256 base, 400 large); valid: "
             "without padding (the compression ratio's denominator); both means over pages"] + _failed_note(failed)
    return Table("Edit distance by setting", header, rows, ["setting", "language"] + _STATS_HEADER,
                 csv_rows, notes)


def table_by_meta(records: Iterable[dict[str, Any]], key: str, *, precision: str = "edit",
                  settings: Sequence[str] | None = None) -> Table | None:
    """Precision by the value of `page_meta[key]` and setting (None when no record has `key`)."""
    field_name = _check_precision(precision)
    good, failed = usable(records)
    good = [r for r in good if (r.get("page_meta") or {}).get(key) is not None]
    if not good:
        return None
    names = setting_order(good, settings)
    values = sorted({r["page_meta"][key] for r in good}, key=lambda v: (isinstance(v, str), v))
    rows, csv_rows = [], []
    for value in values:
        row = [str(value)]
        for name in names:
            group = [r for r in good if r["setting"] == name and r["page_meta"][key] == value]
            row.append(f"{100 * mean(r['metrics'][field_name] for r in group):.1f}% ({len(group)})" if group else "–")
            if group:
                csv_rows.append([value, name] + _cell_stats(group))
        rows.append(row)
    notes = [f"precision ({precision}): {PRECISION_DEFINITIONS[precision]}; mean over pages, (n) pages"]
    return Table(f"Precision by {key}", [key] + names, rows, [key, "setting"] + _STATS_HEADER, csv_rows,
                 notes + _failed_note(failed))
