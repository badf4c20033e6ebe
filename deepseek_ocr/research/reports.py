"""The files a compression study writes beside its records, all rebuilt from `records.jsonl`.

    results/
      records.jsonl                 one record per (page, setting): see `sweep`
      protocol.json                 prompt, predictor, generation options, seed, metric definitions
      table2.md, table2.csv         precision / compression ratio by text-token bucket and setting
      table3.md, table3.csv         edit distance by setting (overall and per language)
      table_font_size.md/.csv       precision by font size (when pages carry one: synthetic pages)
      precision_vs_ratio.png        precision against compression ratio, per setting
      edit_distance_vs_vision_tokens.png
      precision_vs_font_size.png    (with font sizes)

`write_compression_reports` is what the sweep calls at its end and what
`deepseek-ocr research report` calls on an existing folder (with other buckets, say).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from . import plots
from .tables import table2, table3, table_by_meta

META_TABLES = ("font_size",)
"""Page facts that get their own table and plot when records carry them."""


def write_compression_reports(folder: str | Path, records: Sequence[dict[str, Any]], *,
                              bucket_width: int = 100, precision: str = "edit",
                              settings: Sequence[str] | None = None, make_plots: bool = True) -> list[Path]:
    """Write the tables (and plots) of the module doc; returns the paths written.

    Raises:
        PlotDependencyError: plots asked for without matplotlib (the tables are written first).
    """
    folder = Path(folder)
    written = table2(records, bucket_width=bucket_width, precision=precision,
                     settings=settings).write(folder, "table2")
    written += table3(records, settings=settings).write(folder, "table3")
    present = []
    for key in META_TABLES:
        table = table_by_meta(records, key, precision=precision, settings=settings)
        if table is not None:
            written += table.write(folder, f"table_{key}")
            present.append(key)
    if make_plots:
        written.append(plots.plot_precision_vs_ratio(records, folder / "precision_vs_ratio.png",
                                                     precision=precision, bucket_width=bucket_width))
        written.append(plots.plot_edit_distance_vs_vision_tokens(records,
                                                                 folder / "edit_distance_vs_vision_tokens.png"))
        for key in present:
            written.append(plots.plot_precision_by_meta(records, key, folder / f"precision_vs_{key}.png",
                                                        precision=precision))
    return written
