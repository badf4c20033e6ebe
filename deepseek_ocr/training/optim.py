"""AdamW over the trainable parameters, with weight decay only where it regularizes.

Decay applies to matrices (and stacked expert tensors, LoRA factors): weight decay on norm
gains pulls them towards 0, not towards their trained value of ~1, and decay on biases and
other vectors only shrinks offsets, so parameters with fewer than 2 dimensions, and any named
`norm` or `bias`, form a group without decay (common practice since BERT).

On CUDA the fused kernel (one launch for all parameters) is used; on CPU the default
implementation (`foreach`), whose results are reproducible run to run.
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn


def no_decay(name: str, param: torch.Tensor) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or "norm" in name or leaf == "bias"


def param_groups(named: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
                 substitute: Callable[[nn.Parameter], torch.Tensor] | None = None) -> list[dict]:
    """Two AdamW groups of the trainable parameters: `decay` and `no_decay` (names kept in
    `names` so the optimizer state can be saved by parameter name). `substitute(p)` gives the
    tensor stepped in `p`'s place (its float32 master, precision.py)."""
    decay, plain = {"params": [], "names": [], "weight_decay": weight_decay, "group": "decay"}, \
        {"params": [], "names": [], "weight_decay": 0.0, "group": "no_decay"}
    for name, p in named:
        if not p.requires_grad:
            continue
        group = plain if no_decay(name, p) else decay
        group["params"].append(substitute(p) if substitute is not None else p)
        group["names"].append(name)
    return [g for g in (decay, plain) if g["params"]]


def build_optimizer(model: nn.Module, *, lr: float, weight_decay: float = 0.0,
                    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                    substitute: Callable[[nn.Parameter], torch.Tensor] | None = None) -> torch.optim.AdamW:
    """AdamW on `model`'s trainable parameters (see the module docstring for the groups;
    `substitute` as in `param_groups`)."""
    groups = param_groups(model.named_parameters(), weight_decay, substitute)
    if not groups:
        raise ValueError("no trainable parameter: set a preset or LoRA before building the optimizer")
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_cuda and p.dtype.is_floating_point for p in params)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                             fused=fused or None)
