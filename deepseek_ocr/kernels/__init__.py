"""The seam where fast kernels plug in.

Each op here has one signature and a plain-torch reference implementation (the module's own
`forward`, or a function beside the kernel), which stays the definition of correctness. A
faster implementation registers itself with `register`; it may return None for inputs it does
not handle, and the next implementation (finally the reference) runs. `DEEPSEEK_OCR_KERNELS=off`
(or `set_enabled(False)`) forces the reference everywhere.

Triton kernels are used for CUDA tensors only; on CPU tensors (and without Triton installed)
the reference runs. Tests drive the kernels on the CPU through the Triton interpreter by calling
their launchers directly.
"""
from __future__ import annotations

import importlib
import logging
import os
from typing import Callable

import torch

from ._common import HAVE_TRITON, interpreting, launchable  # noqa: F401

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


# Kernel modules register themselves on import. A missing Triton (or a module that fails to
# import on this platform) leaves the reference path in place; it is logged, never fatal.
_KERNEL_MODULES: tuple[str, ...] = ()

if HAVE_TRITON:
    for _name in _KERNEL_MODULES:
        try:
            importlib.import_module(f"{__name__}.{_name}")
        except ImportError as exc:  # pragma: no cover - platform dependent
            logger.warning("kernel module %s unavailable (%s); using the reference path", _name, exc)
