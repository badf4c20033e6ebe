"""LoRA for DeepSeek-OCR, without peft: targets, the adapted layers, merge and unload.

Targets are chosen by *official* module paths, as PEFT users write them (`q_proj` matches every
`....q_proj`; a string is a regex over the whole path; `"all-linear"` is every linear layer but
`lm_head`). `gate_proj`, `up_proj` and `down_proj` reach the dense MLP, the shared experts and
every routed expert, as they do in the official model where each expert is its own module.

Base parameters keep their names and tensors: an adapted module gets `lora_A` / `lora_B` beside
its weight and its class is swapped for a subclass whose forward adds the delta
`B(A(dropout(x))) * scale`; merge and unload swap it back, so the module tree and state_dict are
then exactly the original. LoRA factors live in float32 by default (as peft keeps them for bf16
models) and are cast to the activation dtype in the forward.

Routed experts are stacked (`gate_up [E, 2I, H]`, `down [E, H, I]`), so their factors are stacked
too: `lora_A[proj] [E, r, in]`, `lora_B[proj] [E, out, r]`. The fused Triton expert kernel knows
nothing of them, so it declines modules with `carries_lora` (kernels/moe_grouped.py) and the
forward below runs instead.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..decoder.moe import StackedExperts
from ..errors import DeepseekOCRError
from ..weights.names import official_module_name

# The Unsloth recipe's targets (TRAINING.md §3): attention and every MLP, experts included.
DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CLIP_ATTENTION_TARGETS = ("qkv_proj", "out_proj")  # model.vision_model...self_attn.*
SAM_ATTENTION_TARGETS = ("attn.qkv", "attn.proj")  # not bare "proj": that also names the patch conv
PROJECTOR_TARGETS = ("projector.layers",)  # bare "layers" would name the decoder's ModuleList
EXPERT_PROJS = ("gate_proj", "up_proj", "down_proj")
PEFT_PREFIX = "base_model.model."


class AdapterError(DeepseekOCRError, ValueError):
    """A LoRA configuration or adapter folder this model cannot use; `problems` lists each issue."""

    def __init__(self, message: str, problems: list[str] | tuple[str, ...] = ()):
        self.problems = list(problems)
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        text = message + "".join(f"\n  - {p}" for p in shown) + (f"\n  ... and {more} more" if more > 0 else "")
        super().__init__(text)


@dataclass
class LoraConfig:
    """What to adapt and how. `scale` is alpha/r, or alpha/sqrt(r) with rsLoRA."""

    r: int = 16
    alpha: float = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] | str = DECODER_TARGETS
    use_rslora: bool = False
    modules_to_save: tuple[str, ...] | None = None  # trained in full, saved with the adapter
    exclude_modules: tuple[str, ...] | str | None = None
    extra: dict = field(default_factory=dict, repr=False)  # unused adapter_config fields, kept for saving

    def __post_init__(self):
        problems = []
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            problems.append(f"r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            problems.append(f"alpha must be a positive number, got {self.alpha!r}")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.target_modules, str):
            self.target_modules = tuple(self.target_modules or ())
        if not self.target_modules:
            problems.append("target_modules is empty")
        for name in ("modules_to_save", "exclude_modules"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                setattr(self, name, tuple(value) or None)
        if isinstance(self.modules_to_save, str):
            self.modules_to_save = (self.modules_to_save,)
        if problems:
            raise AdapterError("invalid LoRA configuration:", problems)

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


def _matches(path: str, patterns) -> bool:
    """PEFT's rule: a string is a regex over the whole path, a list matches by name suffix."""
    if patterns is None:
        return False
    if isinstance(patterns, str):
        return re.fullmatch(patterns, path) is not None
    return any(path == p or path.endswith("." + p) for p in patterns)


def _selected(path: str, cfg: LoraConfig) -> bool:
    if cfg.target_modules == "all-linear":
        hit = path != "lm_head"
    else:
        hit = _matches(path, cfg.target_modules)
    return hit and not _matches(path, cfg.exclude_modules)


def root_module(model) -> nn.Module:
    """Accept a `DeepseekOCR` (its `.model`) or the `nn.Module` itself."""
    return model if isinstance(model, nn.Module) else model.model


# ------------------------------------------------------------------------------ the adapted layers
def _init_factors(a: torch.Tensor, b: torch.Tensor, fan_in: int, generator) -> None:
    # kaiming_uniform_(a=sqrt(5)) as nn.Linear (and peft) initialise A: bound 1/sqrt(fan_in).
    # Written out because a stacked [E, r, in] tensor would give kaiming the wrong fan-in.
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        a.uniform_(-bound, bound, generator=generator)
        b.zero_()  # B = 0: a fresh adapter changes nothing


class LoraLinear(nn.Linear):
    """`nn.Linear` + `lora_B(lora_A(dropout(x))) * lora_scale`; weight and bias untouched."""

    carries_lora = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        a, b = self.lora_A.weight.to(x.dtype), self.lora_B.weight.to(x.dtype)
        return out + F.linear(F.linear(self.lora_dropout(x), a), b) * self.lora_scale


class LoraStackedExperts(StackedExperts):
    """Routed experts with stacked LoRA factors for some of gate/up/down (see module docstring)."""

    carries_lora = True

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return lora_experts_forward(self, x, weights, ids)


def lora_experts_forward(m: LoraStackedExperts, x: torch.Tensor, weights: torch.Tensor,
                         ids: torch.Tensor) -> torch.Tensor:
    """The reference grouped SwiGLU of moe.py with each expert's LoRA delta added.

    Pairs are grouped by expert exactly as `StackedExperts.forward` groups them (stable sort,
    same gathers, same matmuls), so with B = 0 the result is bitwise the reference's. The deltas
    ride in the reference's one loop over the experts that received tokens: the base matmuls
    need that loop anyway, and a loop-free delta around a looped base would only add FLOPs
    (gathering per-pair factors or a block-sparse matmul costs E/k times the work).
    """
    n, k = ids.shape
    flat_ids = ids.reshape(-1)
    token_of_pair = torch.arange(n * k, device=x.device) // k
    counts = torch.bincount(flat_ids, minlength=m.gate_up.shape[0]).tolist()  # one host sync, as the reference
    order = torch.argsort(flat_ids, stable=True)
    inter = m.down.shape[-1]
    lora_a, lora_b, scale = m.lora_A, m.lora_B, m.lora_scale

    def delta(proj: str, e: int, inp: torch.Tensor) -> torch.Tensor | float:
        if proj not in lora_a:
            return 0.0
        a, b = lora_a[proj][e].to(inp.dtype), lora_b[proj][e].to(inp.dtype)
        return (m.lora_dropout(inp) @ a.t()) @ b.t() * scale

    outs, start = [], 0
    for e, c in enumerate(counts):
        if c == 0:
            continue
        pairs = order[start:start + c]
        start += c
        xe = x[token_of_pair[pairs]]  # (c, H)
        gu = xe @ m.gate_up[e].t()  # (c, 2I)
        g = gu[:, :inter] + delta("gate_proj", e, xe)
        u = gu[:, inter:] + delta("up_proj", e, xe)
        h = F.silu(g) * u
        outs.append(h @ m.down[e].t() + delta("down_proj", e, h))
    if not outs:
        return x.new_zeros(n, x.shape[-1])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    out = torch.cat(outs)[inverse]  # back to (token, slot) order, differentiably
    combined = (out.view(n, k, -1).float() * weights[..., None]).sum(dim=1)
    return combined.to(x.dtype)


# ------------------------------------------------------------------------------ apply / merge / unload
@dataclass(frozen=True)
class Target:
    module: str  # our module path
    official: str  # official path (for experts: `model.layers.L.mlp.experts`)
    projs: tuple[str, ...] = ()  # experts only: which of gate/up/down


def find_targets(model, cfg: LoraConfig) -> list[Target]:
    """The modules `cfg` selects, by official path; an expert projection is all-or-none."""
    root = root_module(model)
    targets, problems = [], []
    for name, mod in root.named_modules():
        official = official_module_name(name) if name else None
        if official is None:
            continue
        if type(mod) is nn.Linear and _selected(official, cfg):
            targets.append(Target(name, official))
        elif type(mod) is StackedExperts:
            n_exp, projs = mod.gate_up.shape[0], []
            for proj in EXPERT_PROJS:
                hits = [_selected(f"{official}.{e}.{proj}", cfg) for e in range(n_exp)]
                if all(hits):
                    projs.append(proj)
                elif any(hits):
                    problems.append(f"{official}.*.{proj}: {sum(hits)} of {n_exp} experts selected; "
                                    "stacked experts are adapted all together or not at all")
            if projs:
                targets.append(Target(name, official, tuple(projs)))
    if problems:
        raise AdapterError("LoRA targets this model cannot honour:", problems)
    if not targets:
        raise AdapterError(f"target_modules {cfg.target_modules!r} match no linear layer or expert "
                           "projection (names are official paths, e.g. model.layers.3.self_attn.q_proj)")
    return targets


def _expert_shapes(mod: StackedExperts, proj: str) -> tuple[int, int]:
    """(in, out) of one expert's projection."""
    inter, hidden = mod.down.shape[-1], mod.down.shape[1]
    return (inter, hidden) if proj == "down_proj" else (hidden, inter)


def _factor_dtype(weight: torch.Tensor, dtype: torch.dtype | None) -> torch.dtype:
    if dtype is not None:
        return dtype
    return torch.float32 if weight.dtype in (torch.float16, torch.bfloat16) else weight.dtype


def apply_lora(model, cfg: LoraConfig, *, dtype: torch.dtype | None = None,
               generator: torch.Generator | None = None) -> list[Target]:
    """Add fresh LoRA factors (A random, B zero) to every target; returns the targets.

    Only adds: which parameters train is `set_trainable(model, "lora")`'s business.
    """
    root = root_module(model)
    if has_lora(root):
        raise AdapterError("the model already carries LoRA; merge_lora or unload it first")
    targets = find_targets(root, cfg)
    for t in targets:
        mod = root.get_submodule(t.module)
        w = mod.weight if isinstance(mod, nn.Linear) else mod.gate_up
        kw = dict(device=w.device, dtype=_factor_dtype(w, dtype))
        if isinstance(mod, nn.Linear):
            mod.__class__ = LoraLinear
            mod.lora_A = nn.Linear(mod.in_features, cfg.r, bias=False, **kw)
            mod.lora_B = nn.Linear(cfg.r, mod.out_features, bias=False, **kw)
            _init_factors(mod.lora_A.weight, mod.lora_B.weight, mod.in_features, generator)
        else:
            n_exp = mod.gate_up.shape[0]
            mod.__class__ = LoraStackedExperts
            mod.lora_A, mod.lora_B = nn.ParameterDict(), nn.ParameterDict()
            for proj in t.projs:
                fan_in, fan_out = _expert_shapes(mod, proj)
                mod.lora_A[proj] = nn.Parameter(torch.empty(n_exp, cfg.r, fan_in, **kw))
                mod.lora_B[proj] = nn.Parameter(torch.empty(n_exp, fan_out, cfg.r, **kw))
                _init_factors(mod.lora_A[proj], mod.lora_B[proj], fan_in, generator)
        mod.lora_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        mod.lora_scale = cfg.scale
    root.lora_config = cfg
    return targets


def has_lora(model) -> bool:
    return any(getattr(m, "carries_lora", False) for m in root_module(model).modules())


def lora_config(model) -> LoraConfig | None:
    return getattr(root_module(model), "lora_config", None)


def _strip(mod: nn.Module) -> None:
    for attr in ("lora_A", "lora_B", "lora_dropout", "lora_scale"):
        delattr(mod, attr)
    mod.__class__ = nn.Linear if isinstance(mod, LoraLinear) else StackedExperts


def _adapted(root: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    return ((n, m) for n, m in root.named_modules() if getattr(m, "carries_lora", False))


@torch.no_grad()
def merge_lora(model) -> int:
    """Fold `B @ A * scale` into the base weights (computed in float32 or wider, stored in the
    weights' dtype) and remove every trace of LoRA; returns the number of modules merged."""
    root = root_module(model)
    merged = 0
    for _name, mod in list(_adapted(root)):
        s = mod.lora_scale
        if isinstance(mod, LoraLinear):
            _add_delta(mod.weight, mod.lora_B.weight, mod.lora_A.weight, s)
        else:
            inter = mod.down.shape[-1]
            rows = {"gate_proj": mod.gate_up[:, :inter], "up_proj": mod.gate_up[:, inter:], "down_proj": mod.down}
            for proj in mod.lora_A:
                _add_delta(rows[proj], mod.lora_B[proj], mod.lora_A[proj], s)
        _strip(mod)
        merged += 1
    if hasattr(root, "lora_config"):
        del root.lora_config
    return merged


def _add_delta(weight: torch.Tensor, b: torch.Tensor, a: torch.Tensor, scale: float) -> None:
    """weight (a view of a parameter, `[..., out, in]`) += b @ a * scale, in place."""
    wide = torch.promote_types(weight.dtype, torch.float32)
    delta = torch.matmul(b.to(wide), a.to(wide)) * scale
    weight.copy_((weight.to(wide) + delta.to(weight.device)).to(weight.dtype))


def unload(model) -> int:
    """Remove LoRA without merging: the base model as it was; returns the modules restored."""
    root = root_module(model)
    mods = [m for _n, m in _adapted(root)]
    for mod in mods:
        _strip(mod)
    if hasattr(root, "lora_config"):
        del root.lora_config
    return len(mods)


# ------------------------------------------------------------------------------ PEFT names
def adapter_views(model) -> dict[str, torch.Tensor]:
    """`{PEFT key: tensor}` for every LoRA factor, routed experts split per expert.

    The tensors are detached *views* of the model's factors (writing into them writes the
    model); keys are `base_model.model.<official module path>.lora_{A,B}.weight`.
    """
    root = root_module(model)
    out = {}
    for name, mod in _adapted(root):
        prefix = PEFT_PREFIX + official_module_name(name)
        if isinstance(mod, LoraLinear):
            out[f"{prefix}.lora_A.weight"] = mod.lora_A.weight.detach()
            out[f"{prefix}.lora_B.weight"] = mod.lora_B.weight.detach()
            continue
        for proj in mod.lora_A:
            a, b = mod.lora_A[proj].detach(), mod.lora_B[proj].detach()
            for e in range(a.shape[0]):
                out[f"{prefix}.{e}.{proj}.lora_A.weight"] = a[e]
                out[f"{prefix}.{e}.{proj}.lora_B.weight"] = b[e]
    return out


def lora_state_dict(model) -> dict[str, torch.Tensor]:
    """The adapter's tensors under PEFT keys (copies), as `save_adapter` writes them."""
    return {k: v.clone() for k, v in adapter_views(model).items()}


def lora_parameters(model) -> Iterator[tuple[str, nn.Parameter]]:
    """The model's LoRA factors (named as in `named_parameters`)."""
    for name, p in root_module(model).named_parameters():
        if ".lora_A." in name or ".lora_B." in name or name.endswith((".lora_A", ".lora_B")):
            yield name, p
