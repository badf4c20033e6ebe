"""The forgetting experiment (paper §5): older dialogue rounds kept as ever smaller images.

A long multi-round text is split into rounds. The most recent `keep` rounds (ages 0 .. keep-1,
age 0 being the current round) stay as text. Every older round is rendered to an image and read
back in the schedule's setting for its age: age `keep` gets the first setting, age `keep + 1`
the second, and so on, the last setting serving every older age. With the default schedule
large, base, small, tiny each step back in time is a smaller view (1280, 1024, 640, 512
pixels): the text blurs and costs fewer tokens, the paper's forgetting curve. The paper leaves
this as early work without numbers; this module measures it.

Per round the study reports its age, the form it is kept in (text, or the setting), its text
tokens, the tokens it costs in the context (its text tokens, or its valid vision tokens), the
tokens saved (the difference), and how well it is read back (precision, as in Table 2; a round
kept as text is exact by definition, precision 1).

Rounds come from a text file (blocks separated by a line `---`, each block one round, kept
whole), or are generated from the seed (`User: ...` then `Assistant: ...`, cut to
`round_tokens` tokens). Rendering uses `synth.render_page` at the given width, font and
margins, the page as tall as the round needs.

Files, beside the records and protocol: `rounds/round-NN.png` and `.md` (every round's image
and ground truth; kept rounds too, for inspection), `rounds.json` (every round's facts),
`forgetting.md` / `.csv` (one row per round, then means by age), `forgetting.png`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .compression import StudyResult, protocol_fixed, run_context, seed_everything
from .errors import ResearchError
from .pages import Page
from .plots import plot_forgetting
from .predictors import Predictor
from .records import RecordStore, load_records, read_protocol, write_protocol
from .scoring import PRECISION_DEFINITIONS, PRECISIONS
from .settings import Setting
from .sweep import ProgressCallback, run_sweep
from .synth import PageGeometry, load_font, render_page
from .synth_text import fit_to_tokens, generate_paragraphs
from .tables import Table, mean

ROUNDS_FILE = "rounds.json"
ROUND_SEPARATOR = "---"


@dataclass(frozen=True)
class ForgettingPlan:
    """The experiment's shape.

    Attributes:
        rounds: number of rounds.
        keep: most recent rounds kept as text.
        round_tokens: token budget of a generated round.
        font_size, width, margin: how a round is rendered (height follows the text).
    """

    rounds: int = 8
    keep: int = 2
    round_tokens: int = 250
    font_size: int = 20
    width: int = 1024
    margin: int = 32

    def __post_init__(self):
        if self.rounds < 1 or not 0 <= self.keep <= self.rounds:
            raise ResearchError(f"need rounds >= 1 and 0 <= keep <= rounds, got {self.rounds} and {self.keep}")
        if self.round_tokens < 1:
            raise ResearchError(f"round_tokens must be positive, got {self.round_tokens}")


def setting_for_age(age: int, keep: int, schedule: Sequence[Setting]) -> Setting | None:
    """The setting a round of `age` is read in; None for a round kept as text."""
    if age < keep:
        return None
    return schedule[min(age - keep, len(schedule) - 1)]


def split_rounds(text: str) -> list[str]:
    """A file's rounds: blocks between lines that are exactly `---` (module doc)."""
    blocks, current = [], []
    for line in text.replace("\r\n", "\n").split("\n"):
        if line.strip() == ROUND_SEPARATOR:
            blocks.append("\n".join(current).strip())
            current = []
        else:
            current.append(line)
    blocks.append("\n".join(current).strip())
    return [b for b in blocks if b]


def generated_rounds(plan: ForgettingPlan, count_tokens: Callable[[str], int], seed: int) -> list[str]:
    """`plan.rounds` generated dialogue rounds of at most `plan.round_tokens` tokens each."""
    rounds = []
    for number in range(1, plan.rounds + 1):
        question, *answer = generate_paragraphs(f"forgetting:{seed}:{number}", 1 + 2 * max(1, plan.round_tokens // 60))
        first_question = question.split(". ")[0].rstrip(".") + "?"
        text, _ = fit_to_tokens([f"User: {first_question}", "Assistant: " + answer[0], *answer[1:]],
                                plan.round_tokens, count_tokens)
        rounds.append(text)
    return rounds


def prepare_rounds(folder: str | Path, plan: ForgettingPlan, schedule: Sequence[Setting], *,
                   count_tokens: Callable[[str], int], seed: int = 0, text: str | None = None,
                   font_path: str | Path | None = None) -> tuple[list[dict[str, Any]], list[tuple[Page, Setting]]]:
    """Render every round, write `rounds/` and `rounds.json`; returns the round facts and the
    work items (old rounds with their settings).

    Raises:
        ResearchError: an empty schedule, or a text file with fewer rounds than asked for.
        SynthError: a round that cannot be rendered (a word wider than the page).
    """
    if not schedule:
        raise ResearchError("the schedule needs at least one setting")
    texts = split_rounds(text) if text is not None else generated_rounds(plan, count_tokens, seed)
    if len(texts) < plan.rounds:
        raise ResearchError(f"the text holds {len(texts)} round(s) (blocks between '---' lines) but "
                            f"{plan.rounds} were asked for")
    texts = texts[len(texts) - plan.rounds:]  # the most recent rounds of a longer dialogue
    folder = Path(folder)
    (folder / "rounds").mkdir(parents=True, exist_ok=True)
    font, font_facts = load_font(font_path, plan.font_size)
    geometry = PageGeometry(width=plan.width, height=None, margin=plan.margin)
    rounds, items = [], []
    for number, round_text in enumerate(texts, 1):
        age = plan.rounds - number
        setting = setting_for_age(age, plan.keep, schedule)
        image, lines = render_page(round_text, font, plan.font_size, geometry)
        stem = folder / "rounds" / f"round-{number:02d}"
        image.save(stem.with_suffix(".png"), format="PNG")
        stem.with_suffix(".md").write_text(round_text, encoding="utf-8")
        facts = {"round": number, "age": age, "form": setting.name if setting else "text",
                 "text_tokens": count_tokens(round_text), "page_width": image.width,
                 "page_height": image.height, "font_size": plan.font_size, **font_facts}
        rounds.append(facts)
        if setting is not None:
            items.append((Page(id=f"round-{number:02d}", image=stem.with_suffix(".png"), reference=round_text,
                               source=str(stem.with_suffix(".md")), language="en",
                               meta={"benchmark": "forgetting", **facts}), setting))
    manifest = {"plan": asdict(plan), "schedule": [s.describe() for s in schedule], "seed": seed,
                "rounds": rounds}
    (folder / ROUNDS_FILE).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    return rounds, items


def forgetting_table(rounds: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]], *,
                     precision: str = "edit") -> tuple[Table, list[dict[str, Any]]]:
    """One row per round, then the means by age; and the plot's rows (module doc)."""
    field_name = PRECISIONS[precision]
    by_page = {r["page_id"]: r for r in records if r["setting"] == r["page_meta"].get("form")}
    header = ["round", "age", "kept as", "text tokens", "context tokens", "tokens saved", "ratio", "precision"]
    rows, csv_rows, plotted = [], [], []
    for facts in sorted(rounds, key=lambda f: f["round"]):
        page_id = f"round-{facts['round']:02d}"
        if facts["form"] == "text":
            cost, value, ratio = facts["text_tokens"], 1.0, None
        else:
            record = by_page.get(page_id)
            if record is None or record.get("error"):
                rows.append([str(facts["round"]), str(facts["age"]), facts["form"], str(facts["text_tokens"]),
                             "–", "–", "–", "failed" if record else "not run"])
                continue
            cost, value = record["valid_vision_tokens"], record["metrics"][field_name]
            ratio = record["compression_ratio"]
        saved = facts["text_tokens"] - cost
        rows.append([str(facts["round"]), str(facts["age"]), facts["form"], str(facts["text_tokens"]), str(cost),
                     str(saved), f"{ratio:.1f}×" if ratio else "1×", f"{100 * value:.1f}%"])
        csv_rows.append([facts["round"], facts["age"], facts["form"], facts["text_tokens"], cost, saved, ratio, value])
        plotted.append({"age": facts["age"], "setting": facts["form"], "tokens_saved": saved, "precision": value})
    total_text = sum(row[3] for row in csv_rows)
    total_cost = sum(row[4] for row in csv_rows)
    notes = [f"precision ({precision}): {PRECISION_DEFINITIONS[precision]}; rounds kept as text are exact (100%)",
             f"context: {total_cost} tokens hold {total_text} text tokens ({total_text - total_cost} saved; "
             "rounds not run or failed left out)",
             f"mean precision of the rounds read back: {100 * mean(p['precision'] for p in plotted if p['setting'] != 'text'):.1f}%"]
    table = Table("Forgetting: reconstruction of each round by age", header, rows,
                  ["round", "age", "kept_as", "text_tokens", "context_tokens", "tokens_saved",
                   "compression_ratio", field_name], csv_rows, notes)
    return table, plotted


def run_forgetting_study(folder: str | Path, plan: ForgettingPlan, schedule: Sequence[Setting],
                         predictor: Predictor, *, count_tokens: Callable[[str], int], tokenizer: str,
                         seed: int = 0, text: str | None = None, font_path: str | Path | None = None,
                         batch_size: int = 8, fresh: bool = False, precision: str = "edit",
                         make_plots: bool = True, context: dict[str, Any] | None = None,
                         on_progress: ProgressCallback | None = None) -> StudyResult:
    """Render the rounds, read the old ones back, write the table and plot (module doc).

    Raises:
        ProtocolMismatchError: the folder was made under another protocol or plan.
        PlotDependencyError: the plot without matplotlib (the table is written first).
    """
    folder = Path(folder)
    store = RecordStore(folder, fresh=fresh)
    fixed = protocol_fixed("forgetting", predictor, seed=seed, tokenizer=tokenizer, plan=asdict(plan),
                           text="file" if text is not None else "generated",
                           font=str(font_path) if font_path else "Pillow built-in")
    write_protocol(folder, fixed, [s.describe() for s in schedule], run_context(**(context or {})), fresh=fresh)
    rounds, items = prepare_rounds(folder, plan, schedule, count_tokens=count_tokens, seed=seed, text=text,
                                   font_path=font_path)
    seed_everything(seed)
    sweep = run_sweep(items, predictor, store, count_tokens=count_tokens, batch_size=batch_size,
                      on_progress=on_progress)
    wanted = {(page.id, setting.name) for page, setting in items}
    records = [r for r in store if (r["page_id"], r["setting"]) in wanted]
    table, plotted = forgetting_table(rounds, records, precision=precision)
    files = table.write(folder, "forgetting")
    if make_plots and plotted:
        files.append(plot_forgetting(plotted, folder / "forgetting.png", precision=precision))
    return StudyResult(sweep, records, files, list(store.notes))


def rebuild_forgetting_report(folder: str | Path, *, precision: str = "edit", make_plots: bool = True) -> list[Path]:
    """The table and plot again, from the folder's `rounds.json` and records.

    Raises:
        RecordFileError: no records in the folder.
        ResearchError: no readable `rounds.json`.
    """
    folder = Path(folder)
    try:
        rounds = json.loads((folder / ROUNDS_FILE).read_text(encoding="utf-8"))["rounds"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ResearchError(f"{folder / ROUNDS_FILE}: cannot read the rounds: {exc}") from None
    protocol = read_protocol(folder) or {}
    names = {s["name"] for s in protocol.get("settings", [])} or None
    records = [r for r in load_records(folder) if names is None or r["setting"] in names]
    table, plotted = forgetting_table(rounds, records, precision=precision)
    files = table.write(folder, "forgetting")
    if make_plots and plotted:
        files.append(plot_forgetting(plotted, folder / "forgetting.png", precision=precision))
    return files
