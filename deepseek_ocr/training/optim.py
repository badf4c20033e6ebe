"""AdamW over the trainable parameters, with weight decay only where it regularizes.

Decay applies to matrices (and stacked expert tensors, LoRA factors): weight decay on norm
gains pulls them towards 0, not towards their trained value of ~1, and decay on biases and
other vectors only shrinks offsets, so parameters with fewer than 2 dimensions, and any named
`norm` or `bias`, form a group without decay (common practice since BERT).

`vision_lr_scale` puts the vision tower's parameters (SAM and CLIP, what `paper` and `all`
train of it) in groups of their own whose rate is that multiple of the rest's (the projector and
the decoder): a ViT trained at a language model's rate is a common source of loss spikes, and
the learning run of benchmarks/RESULTS.md (twelfth round) read 0.024 CER at 10 minutes with CLIP
at 0.3x, where seven runs at 1x read 0.243-0.560. Each group carries `lr_scale`; the trainer sets
`lr = schedule rate * lr_scale`.

On CUDA the fused kernel (one launch for all parameters) is used; on CPU the default
implementation (`foreach`), whose results are reproducible run to run.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn

from .errors import TrainConfigError


def no_decay(name: str, param: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or "norm" in name or leaf == "bias"


VISION_TOWER = ("vision.sam.", "vision.clip.")  # parameter-name prefixes of the tower (not the projector)


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 substitute: Callable[[nn.Parameter], torch.Tensor] | None = None,
                 vision_lr_scale: float = 1.0) -> list[dict]:
    """AdamW groups of the trainable parameters: `decay` and `no_decay` (names kept in `names` so
    the optimizer state can be saved by parameter name), and with `vision_lr_scale` != 1 the
    tower's `vision_decay` and `vision_no_decay` at that rate multiple (`lr_scale`; 1 in the
    others). `substitute(p)` gives the tensor stepped in `p`'s place (its float32 master,
    precision.py)."""
    groups: dict[str, dict] = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        tower = vision_lr_scale != 1.0 and name.startswith(VISION_TOWER)
        kind = ("vision_" if tower else "") + ("no_decay" if no_decay(name, p) else "decay")
        group = groups.setdefault(kind, {"params": [], "names": [], "group": kind,
                                         "weight_decay": 0.0 if kind.endswith("no_decay") else weight_decay,
                                         "lr_scale": vision_lr_scale if tower else 1.0})
        group["params"].append(substitute(p) if substitute is not None else p)
        group["names"].append(name)
    order = ("decay", "no_decay", "vision_decay", "vision_no_decay")
    return [groups[k] for k in order if k in groups]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    substitute: Callable[[nn.Parameter], torch.Tensor] | None = None,
                    vision_lr_scale: float = 1.0) -> torch.optim.AdamW:
    """AdamW on `model`'s trainable parameters (see the module docstring for the groups;
    `substitute` and `vision_lr_scale` as in `param_groups`)."""
    groups = param_groups(model.named_parameters(), weight_decay, substitute, vision_lr_scale)
    if not groups:
        raise ValueError("no trainable parameter: set a preset or LoRA before building the optimizer")
    if vision_lr_scale != 1.0 and not any(g["group"].startswith("vision_") for g in groups):
        raise TrainConfigError(f"vision_lr_scale {vision_lr_scale:g} has nothing to scale: no SAM or CLIP "
                               f"parameter trains (use the paper or all preset, or LoRA with vision targets)")
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_cuda and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             fused=fused or None)
