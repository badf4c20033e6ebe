"""Sweep settings: a named resolution mode, and the vision-token figures it gives a page.

A setting is a label plus a `Mode`: `tiny` ... `gundam`, or a custom `BASE:IMAGE[:crop]` as the
command line writes it (`768:512:crop`), optionally labelled (`wide=1024:640:crop`). The label
keys the records, so one label always means one mode within a results folder.

Vision-token figures of a page in a setting (computed from the image size alone, with the same
geometry the preprocessing uses, so that predictors without a model, like the oracle, report
what the model would have seen):

* `vision_tokens`: the paper's count, the tokens of every view's grid: q² for a single view
  (64 tiny, 100 small, 256 base, 400 large), q_base² + tiles · q_tile² with tiles (Gundam).
* `layout_tokens`: the `<image>` positions in the prompt (grid rows each end with a newline
  token, plus one separator): what the decoder actually attends to.
* `valid_vision_tokens`: the tokens that carry page content (padding excluded; the official
  `test_compress` figure and the denominator of the paper's compression ratio).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from ..errors import ModeError
from ..processing.prompt import image_layout_length
from ..processing.views import MODES, Mode, choose_grid, resolve_mode, tokens_per_side, valid_vision_tokens
from .errors import SettingError


@dataclass(frozen=True)
class Setting:
    """A labelled mode.

    Attributes:
        name: the label (records and tables use it).
        mode: the resolution mode.
    """

    name: str
    mode: Mode

    def describe(self) -> dict[str, Any]:
        """JSON-ready: the label and every field of the mode (for the protocol and records)."""
        fields = asdict(self.mode)
        fields.pop("name")
        return {"name": self.name, **fields}


@dataclass(frozen=True)
class VisionFigures:
    """The token figures of one page in one setting (module doc)."""

    vision_tokens: int
    layout_tokens: int
    valid_vision_tokens: int
    tiles: tuple[int, int]


def parse_setting(spec: str) -> Setting:
    """`tiny`, `768:512:crop`, or `LABEL=SPEC`.

    Raises:
        SettingError: an empty label, or a mode `resolve_mode` refuses (its message kept).
    """
    label, sep, mode_spec = spec.partition("=")
    if not sep:
        label, mode_spec = spec.strip(), spec
    label = label.strip()
    if not label:
        raise SettingError(f"setting {spec!r}: the label before '=' is empty")
    try:
        mode = resolve_mode(mode_spec.strip())
    except ModeError as exc:
        raise SettingError(f"setting {spec!r}: {exc}") from None
    return Setting(label.lower() if label.lower() in MODES and not sep else label, mode)


def parse_settings(modes: str | None, custom: Sequence[str] = ()) -> list[Setting]:
    """`--modes tiny,small` plus every `--mode SPEC`, in that order.

    Raises:
        SettingError: no setting at all, or one label used for two settings.
    """
    specs = [s for s in (modes or "").split(",") if s.strip()] + list(custom)
    settings = [parse_setting(s) for s in specs]
    if not settings:
        raise SettingError("no setting: give --modes (e.g. tiny,small) and/or --mode BASE:IMAGE[:crop]")
    seen: dict[str, Mode] = {}
    for s in settings:
        if s.name in seen:
            raise SettingError(f"the label {s.name!r} is used twice; labels key the records")
        seen[s.name] = s.mode
    return settings


def setting_from_description(d: dict[str, Any]) -> Setting:
    """Inverse of `Setting.describe` (used when reading a protocol back)."""
    try:
        mode = Mode(int(d["base_size"]), int(d["image_size"]), bool(d["crop"]),
                    int(d.get("min_tiles", 2)), int(d.get("max_tiles", 9)), name=str(d["name"]))
        return Setting(str(d["name"]), mode)
    except (KeyError, TypeError, ValueError) as exc:
        raise SettingError(f"not a setting description: {d!r:.120} ({exc})") from None


def vision_figures(mode: Mode, size: tuple[int, int]) -> VisionFigures:
    """The token figures of a `size` = (width, height) page in `mode` (module doc)."""
    width, height = size
    if not mode.crop:
        q = tokens_per_side(mode.image_size)
        return VisionFigures(q * q, image_layout_length(mode, (1, 1), False),
                             valid_vision_tokens(mode, size, 0), (1, 1))
    tile = mode.image_size
    if width <= tile and height <= tile:
        grid = (1, 1)
    else:
        grid = choose_grid(width, height, tile, mode.min_tiles, mode.max_tiles)
    # A 1x1 grid carries no detail beyond the global view, so the preprocessing drops it.
    n_tiles = 0 if grid == (1, 1) else grid[0] * grid[1]
    qb, qt = tokens_per_side(mode.base_size), tokens_per_side(mode.image_size)
    return VisionFigures(qb * qb + n_tiles * qt * qt, image_layout_length(mode, grid, n_tiles > 0),
                         valid_vision_tokens(mode, size, n_tiles), grid)
