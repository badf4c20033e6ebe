"""What is trained: presets that set `requires_grad`, and a per-part summary the CLI prints.

- `decoder`: the language model only (what every public recipe does).
- `paper`: the paper's stage 2: SAM and its compressor (`neck`, `net_2`, `net_3`, all inside
  `vision.sam`) frozen; CLIP, the projector, `image_newline`, `view_seperator` and the decoder
  trained.
- `all`: everything.
- `lora`: only the LoRA factors (and the adapter's `modules_to_save`); needs `apply_lora` first.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import DeepseekOCRError
from .lora import has_lora, lora_config, lora_parameters, root_module

PRESETS = ("decoder", "paper", "all", "lora")

# Top-level parts, by parameter-name prefix; the first match wins.
PARTS = (("vision.sam.", "sam"), ("vision.clip.", "clip"), ("vision.projector.", "projector"),
         ("vision.", "vision_tokens"), ("decoder.", "decoder"))


class PresetError(DeepseekOCRError, ValueError):
    """An unknown trainable preset, or `lora` on a model that carries no LoRA."""


@dataclass(frozen=True)
class TrainableSummary:
    """Per part (`sam`, `clip`, `projector`, `vision_tokens`, `decoder`): (trainable, total)."""

    preset: str
    parts: dict[str, tuple[int, int]]

    @property
    def trainable(self) -> int:
        return sum(t for t, _ in self.parts.values())

    @property
    def total(self) -> int:
        return sum(n for _, n in self.parts.values())

    def lines(self) -> list[str]:
        out = [f"trainable parameters ({self.preset}): {self.trainable:,} of {self.total:,} "
               f"({100.0 * self.trainable / max(self.total, 1):.2f}%)"]
        out += [f"  {part:<14} {t:>14,} / {n:,}" for part, (t, n) in self.parts.items()]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


def part_of(name: str) -> str:
    for prefix, part in PARTS:
        if name.startswith(prefix):
            return part
    return "other"


def _wanted(preset: str, name: str, lora_names: set[str]) -> bool:
    if preset == "all":
        return True
    if preset == "decoder":
        return name.startswith("decoder.")
    if preset == "paper":
        return not name.startswith("vision.sam.")
    return name in lora_names


def set_trainable(model, preset: str) -> TrainableSummary:
    """Set `requires_grad` on every parameter of the model for `preset`; returns the summary."""
    if preset not in PRESETS:
        raise PresetError(f"unknown trainable preset {preset!r}; choose one of {', '.join(PRESETS)}")
    root = root_module(model)
    lora_names: set[str] = set()
    if preset == "lora":
        if not has_lora(root):
            raise PresetError("preset 'lora' needs LoRA on the model (apply_lora or load_adapter first)")
        lora_names = {n for n, _ in lora_parameters(root)}
        lora_names |= _modules_to_save_names(root)
    for name, p in root.named_parameters():
        p.requires_grad_(_wanted(preset, name, lora_names))
    return summarize(root, preset)


def _modules_to_save_names(root) -> set[str]:
    cfg = lora_config(root)
    if cfg is None or not cfg.modules_to_save:
        return set()
    from .adapter import saved_module_tensors  # the adapter module owns the modules_to_save rule
    return {pname for _key, pname, _t in saved_module_tensors(root, cfg)}


def summarize(model, preset: str = "current") -> TrainableSummary:
    """Trainable and total parameter counts per top-level part."""
    parts: dict[str, list[int]] = {}
    for name, p in root_module(model).named_parameters():
        entry = parts.setdefault(part_of(name), [0, 0])
        entry[1] += p.numel()
        if p.requires_grad:
            entry[0] += p.numel()
    return TrainableSummary(preset, {k: (v[0], v[1]) for k, v in parts.items()})
