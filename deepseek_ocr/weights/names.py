"""The one table between official checkpoint names and our module names, both ways.

Most names only change prefix. The routed experts are the exception: the checkpoint stores
`model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight` per expert; we hold them stacked per
layer as `decoder.layers.L.mlp.experts.gate_up [E, 2I, H]` (gate rows, then up rows) and
`.down [E, H, I]`, fused at load time (and split again by `save_pretrained`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator

import torch

# (checkpoint prefix, module prefix); the first match wins.
PREFIXES: tuple[tuple[str, str], ...] = (
    ("model.sam_model.", "vision.sam."),
    ("model.vision_model.", "vision.clip."),
    ("model.projector.", "vision.projector."),
    ("model.image_newline", "vision.image_newline"),
    ("model.view_seperator", "vision.view_seperator"),
    ("model.embed_tokens.", "decoder.embed_tokens."),
    ("model.layers.", "decoder.layers."),
    ("model.norm.", "decoder.norm."),
    ("lm_head.", "decoder.lm_head."),
)

_EXPERT = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
_STACKED = re.compile(r"^decoder\.layers\.(\d+)\.mlp\.experts\.(gate_up|down)$")


@dataclass(frozen=True)
class Slot:
    """Where one checkpoint tensor lives in the module: a whole parameter, or a slice of a
    stacked expert parameter (`expert` index, `rows` range along dim 1 or None for all)."""

    param: str
    expert: int | None = None
    rows: tuple[int, int] | None = None


def module_name(ckpt: str) -> str | None:
    for src, dst in PREFIXES:
        if ckpt.startswith(src):
            return dst + ckpt[len(src):]
    return None


def checkpoint_name(param: str) -> str | None:
    for src, dst in PREFIXES:
        if param.startswith(dst):
            return src + param[len(dst):]
    return None


def official_module_name(path: str) -> str | None:
    """The official name of a *module* path (no parameter leaf): `decoder.lm_head` -> `lm_head`,
    `decoder.norm` -> `model.norm`. The prefixes end with a dot, so a top-level module's bare
    path would not match them."""
    name = checkpoint_name(path + ".")
    return None if name is None else name[:-1]


def slot_for(ckpt: str, moe_intermediate: int) -> Slot | None:
    """The module slot of a checkpoint tensor (None: the name is not part of the model)."""
    m = _EXPERT.match(ckpt)
    if m:
        layer, expert, part = int(m.group(1)), int(m.group(2)), m.group(3)
        base = f"decoder.layers.{layer}.mlp.experts."
        if part == "down":
            return Slot(base + "down", expert)
        lo = 0 if part == "gate" else moe_intermediate
        return Slot(base + "gate_up", expert, (lo, lo + moe_intermediate))
    name = module_name(ckpt)
    return Slot(name) if name is not None else None


def expand_param(param: str, shape: tuple[int, ...]) -> Iterator[tuple[str, tuple[int, ...], Slot]]:
    """The checkpoint tensors (name, shape, slot) that make up one module parameter."""
    m = _STACKED.match(param)
    if not m:
        yield checkpoint_name(param), tuple(shape), Slot(param)
        return
    layer, kind = m.group(1), m.group(2)
    n_experts = shape[0]
    for e in range(n_experts):
        prefix = f"model.layers.{layer}.mlp.experts.{e}."
        if kind == "down":
            yield prefix + "down_proj.weight", tuple(shape[1:]), Slot(param, e)
        else:
            inter = shape[1] // 2
            yield prefix + "gate_proj.weight", (inter, shape[2]), Slot(param, e, (0, inter))
            yield prefix + "up_proj.weight", (inter, shape[2]), Slot(param, e, (inter, 2 * inter))


def expected_tensors(model: torch.nn.Module) -> dict[str, tuple[tuple[int, ...], Slot]]:
    """Every checkpoint name the model needs, with its shape and slot (works on meta models)."""
    out = {}
    for param, tensor in model.state_dict(keep_vars=True).items():
        for name, shape, slot in expand_param(param, tuple(tensor.shape)):
            out[name] = (shape, slot)
    return out


def checkpoint_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """The model's tensors under official names, experts split again (views, no copies)."""
    for param, tensor in model.state_dict().items():
        for name, _shape, slot in expand_param(param, tuple(tensor.shape)):
            t = tensor if slot.expert is None else tensor[slot.expert]
            if slot.rows is not None:
                t = t[slot.rows[0]:slot.rows[1]]
            yield name, t


def official_gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`{official checkpoint name: gradient}` for every parameter holding one.

    Stacked experts are split per expert as the checkpoint names them (views of the stacked
    gradient). Parameters that are not part of the checkpoint (LoRA factors, say) are left out.
    """
    out = {}
    for param, tensor in model.named_parameters():
        if tensor.grad is None or checkpoint_name(param) is None or ".lora_" in param:
            continue
        for name, _shape, slot in expand_param(param, tuple(tensor.shape)):
            g = tensor.grad if slot.expert is None else tensor.grad[slot.expert]
            if slot.rows is not None:
                g = g[slot.rows[0]:slot.rows[1]]
            out[name] = g
    return out
