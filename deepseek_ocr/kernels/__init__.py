"""The seam where fast kernels plug in.

Each op here has one signature and a plain-torch reference implementation (the module's own
`forward`, which stays the definition of correctness). A faster implementation registers
itself with `register`; `DEEPSEEK_OCR_KERNELS=off` (or `set_enabled(False)`) forces the
reference everywhere. Until the Triton kernels land, every op dispatches to the reference.
"""
from __future__ import annotations

import logging
import os
from typing import Callable

import torch

logger = logging.getLogger(__name__)

_IMPLS: dict[str, list[Callable]] = {}
_enabled = os.environ.get("DEEPSEEK_OCR_KERNELS", "on").lower() not in ("0", "off", "false", "no")


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    return _enabled


def register(op: str, impl: Callable) -> None:
    """Register `impl(*args) -> Tensor | None` for `op`; returning None means "not applicable"."""
    _IMPLS.setdefault(op, []).append(impl)


def _dispatch(op: str, reference: Callable, *args):
    if _enabled:
        for impl in _IMPLS.get(op, ()):
            out = impl(*args)
            if out is not None:
                return out
    return reference(*args)


def moe_experts(experts: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
    """Routed-expert SwiGLU for tokens `x [N, H]` with routing `weights, ids [N, k]`."""
    return _dispatch("moe_experts", experts.forward, x, weights, ids)
