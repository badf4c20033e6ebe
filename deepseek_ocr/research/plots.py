"""Plots of records (matplotlib, the optional extra `research`).

matplotlib is imported when a plot is drawn, never with the package, and through its object
API (`Figure` with the Agg canvas) rather than pyplot, so drawing changes no global state and
needs no display. Without matplotlib every function raises `PlotDependencyError` naming the
extra; the tables do not need it.

* `plot_precision_vs_ratio`: each page in each setting as a faint point (compression ratio,
  precision), and per setting a line through the text-token bucket means (Table 2's cells).
* `plot_edit_distance_vs_vision_tokens`: per setting, the page set's edit distance against
  the mean valid vision tokens (Table 3's rows), each page a faint point; log x axis.
* `plot_precision_by_meta`: mean precision against a numeric page fact (font size), a line
  per setting.
* `plot_forgetting`: precision against round age, and against the tokens a round saves.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

from .errors import PLOT_EXTRA_HINT, PlotDependencyError
from .scoring import PRECISIONS
from .tables import mean, set_ned, setting_order, usable


def _new_figure(width: float = 7.0, height: float = 4.5):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotDependencyError(f"plots need matplotlib, which is not installed: {PLOT_EXTRA_HINT} "
                                  "(or pass --no-plots; the tables do not need it)") from exc
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


def plot_precision_vs_ratio(records: Sequence[dict[str, Any]], path: str | Path, *, precision: str = "edit",
                            bucket_width: int = 100) -> Path:
    """Precision (%) against compression ratio, per setting (module doc)."""
    field_name = PRECISIONS[precision]
    good, _ = usable(records)
    figure = _new_figure()
    axes = figure.add_subplot()
    for name in setting_order(good):
        group = [r for r in good if r["setting"] == name and r["compression_ratio"] is not None]
        points = axes.scatter([r["compression_ratio"] for r in group],
                              [100 * r["metrics"][field_name] for r in group], s=10, alpha=0.3)
        buckets: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in group:
            buckets[r["text_tokens"] // bucket_width].append(r)
        means = sorted((mean(r["compression_ratio"] for r in b), 100 * mean(r["metrics"][field_name] for r in b))
                       for b in buckets.values())
        axes.plot([m[0] for m in means], [m[1] for m in means], marker="o", label=name,
                  color=points.get_facecolor()[0][:3])
    axes.set_xlabel("compression ratio (text tokens / valid vision tokens)")
    axes.set_ylabel(f"precision ({precision}), %")
    axes.set_title(f"Precision against compression (lines: means per {bucket_width} text tokens)")
    axes.grid(alpha=0.3)
    axes.legend(title="setting")
    return _save(figure, path)


def plot_edit_distance_vs_vision_tokens(records: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Edit distance against valid vision tokens, per setting (module doc)."""
    good, _ = usable(records)
    figure = _new_figure()
    axes = figure.add_subplot()
    for name in setting_order(good):
        group = [r for r in good if r["setting"] == name]
        points = axes.scatter([r["valid_vision_tokens"] for r in group], [r["metrics"]["ned"] for r in group],
                              s=10, alpha=0.25)
        x, y = mean(r["valid_vision_tokens"] for r in group), set_ned(group)
        axes.scatter([x], [y], s=60, marker="D", color=points.get_facecolor()[0][:3], label=name)
        axes.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5))
    axes.set_xscale("log")
    axes.set_xlabel("valid vision tokens (log scale)")
    axes.set_ylabel("normalized edit distance")
    axes.set_title("Edit distance against vision tokens (diamonds: page set, dots: pages)")
    axes.grid(alpha=0.3)
    axes.legend(title="setting")
    return _save(figure, path)


def plot_precision_by_meta(records: Sequence[dict[str, Any]], key: str, path: str | Path, *,
                           precision: str = "edit") -> Path:
    """Mean precision against a numeric `page_meta[key]`, a line per setting (module doc)."""
    field_name = PRECISIONS[precision]
    good, _ = usable(records)
    good = [r for r in good if isinstance((r.get("page_meta") or {}).get(key), (int, float))]
    figure = _new_figure()
    axes = figure.add_subplot()
    for name in setting_order(good):
        by_value: dict[float, list[float]] = defaultdict(list)
        for r in good:
            if r["setting"] == name:
                by_value[r["page_meta"][key]].append(100 * r["metrics"][field_name])
        values = sorted(by_value)
        axes.plot(values, [mean(by_value[v]) for v in values], marker="o", label=name)
    axes.set_xlabel(key.replace("_", " "))
    axes.set_ylabel(f"precision ({precision}), %")
    axes.set_title(f"Precision by {key.replace('_', ' ')}")
    axes.grid(alpha=0.3)
    axes.legend(title="setting")
    return _save(figure, path)


def plot_forgetting(rows: Sequence[dict[str, Any]], path: str | Path, *, precision: str = "edit") -> Path:
    """Two panels: precision against round age, and against tokens saved (module doc).

    Args:
        rows: one per round, with `age`, `tokens_saved`, `precision` (0..1) and `setting`.
    """
    figure = _new_figure(10.0, 4.2)
    by_age, by_saved = figure.subplots(1, 2)
    rows = sorted(rows, key=lambda r: r["age"])
    by_age.plot([r["age"] for r in rows], [100 * r["precision"] for r in rows], marker="o")
    for r in rows:
        by_age.annotate(r["setting"], (r["age"], 100 * r["precision"]), textcoords="offset points",
                        xytext=(3, 5), fontsize=8)
    by_age.set_xlabel("round age (rounds ago)")
    by_age.set_ylabel(f"precision ({precision}), %")
    by_age.set_title("Reconstruction by age")
    by_saved.scatter([r["tokens_saved"] for r in rows], [100 * r["precision"] for r in rows])
    by_saved.set_xlabel("tokens saved (text tokens - valid vision tokens)")
    by_saved.set_ylabel(f"precision ({precision}), %")
    by_saved.set_title("Reconstruction against tokens saved")
    for axes in (by_age, by_saved):
        axes.grid(alpha=0.3)
    return _save(figure, path)
