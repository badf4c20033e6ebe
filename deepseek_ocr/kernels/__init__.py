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
import torch.nn.functional as F

from ._common import HAVE_TRITON, interpreting, launchable, triton_on_cpu  # noqa: F401

logger = logging.getLogger(__name__)

_IMPLS: dict[str, list[Callable]] = {}
_enabled = os.environ.get("DEEPSEEK_OCR_KERNELS", "on").lower() not in ("0", "off", "false", "no")


def set_enabled(flag: bool) -> None:
    global _enabled
    _enabled = bool(flag)


def enabled() -> bool:
    return _enabled


def register(op: str, impl: Callable) -> None:
    """Register `impl(*args) -> Tensor | None` for `op`; returning None means "not applicable".

    `impl` receives the seam function's arguments (for the MoE ops, the module first).
    """
    _IMPLS.setdefault(op, []).append(impl)


def _dispatch(op: str, reference: Callable, *args):
    if _enabled:
        for impl in _IMPLS.get(op, ()):
            out = impl(*args)
            if out is not None:
                return out
    return reference(*args)


def _call_forward(module: torch.nn.Module, *args):
    return module.forward(*args)


def moe_experts(experts: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
    """Routed-expert SwiGLU for tokens `x [N, H]` with routing `weights, ids [N, k]`."""
    return _dispatch("moe_experts", _call_forward, experts, x, weights, ids)


def moe_route(router: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Router: float32 softmax over the experts, greedy top-k -> (weights fp32, ids) `[N, k]`."""
    return _dispatch("moe_route", _call_forward, router, x)


def _prefill_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                       max_seqlen: int) -> torch.Tensor:
    """Causal attention within each packed sequence; q, k, v `[N, heads, head_dim]`."""
    out = torch.empty_like(q)
    bounds = cu_seqlens.tolist()  # a host sync: acceptable here, the reference runs once per prompt
    for s, e in zip(bounds[:-1], bounds[1:]):
        qs, ks, vs = (t[s:e].transpose(0, 1)[None] for t in (q, k, v))  # (1, heads, T, hd)
        out[s:e] = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1)
    return out


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                      max_seqlen: int) -> torch.Tensor:
    """Causal attention over packed sequences: q, k, v `[N, heads, head_dim]`, `cu_seqlens [B+1]`."""
    return _dispatch("attention_prefill", _prefill_reference, q, k, v, cu_seqlens, max_seqlen)


def paged_decode_attention(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                           block_table: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
    """One query per row over a paged cache: q `[B, heads, hd]`, pools `[num_blocks, heads,
    block_size, hd]`, int32 `block_table [B, max_blocks]` and `seqlens [B]`; no host sync.

    Row b's slot s is at block `block_table[b, s // block_size]`, offset `s % block_size`.
    """
    # Imported here, not at the top: the module imports this package (register), and its
    # reference is needed even where Triton (and so the kernel-module import below) is absent.
    from .attention_paged import paged_decode_attention_reference
    return _dispatch("attention_paged_decode", paged_decode_attention_reference,
                     q, k_pool, v_pool, block_table, seqlens)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(rms_norm(x + residual), x + residual)` over the last dim, the sum rounded to x's dtype;
    `residual=None` gives `(rms_norm(x), x)`. The norm is `decoder.model.RMSNorm`'s: float32
    statistics, cast to x's dtype, times `weight` `[hidden]`."""
    from .norm_rope import add_rms_norm_reference  # lazily, as paged_decode_attention's
    return _dispatch("add_rms_norm", add_rms_norm_reference, x, residual, weight, eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`decoder.model.RMSNorm` with this weight and eps, through the `add_rms_norm` seam."""
    return add_rms_norm(x, None, weight, eps)[0]


def rope_and_store(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_pool: torch.Tensor,
                   v_pool: torch.Tensor, block_table: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
    """One decode step's rotary and paged KV store: qkv `[B, 3*heads*head_dim]` (before rotary),
    cos/sin `[B, head_dim]` (or `[B, 1, head_dim]`) in qkv's dtype, pools `[num_blocks, heads,
    block_size, head_dim]`, int32 `block_table [B, max_blocks]` and `seqlens [B]`.

    Rotates q and k (rotate-half), writes k and v at row r's slot `seqlens[r]` (block
    `block_table[r, s // block_size]`, offset `s % block_size`), returns rotated q
    `[B, heads, head_dim]`; no host sync.
    """
    from .norm_rope import rope_and_store_reference
    return _dispatch("rope_and_store", rope_and_store_reference, qkv, cos, sin, k_pool, v_pool,
                     block_table, seqlens)


def sam_rel_attention(reference: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """SAM attention with decomposed relative positions: q, k, v `[B, heads, h*w, head_dim]`.

    `reference` is the caller's plain-torch math (vision/sam.py), used when no kernel applies.
    """
    return _dispatch("sam_attention", reference, q, k, v, rel_pos_h, rel_pos_w, hw)


# Kernel modules register themselves on import. Their names differ from the seam functions
# above on purpose: importing a submodule binds its name on this package. A missing Triton (or a module that fails to
# import on this platform) leaves the reference path in place; it is logged, never fatal.
_KERNEL_MODULES: tuple[str, ...] = ("moe_routing", "moe_grouped", "attention_prefill", "attention_decode",
                                    "attention_paged", "sam_attention", "norm_rope")

if HAVE_TRITON:
    for _name in _KERNEL_MODULES:
        try:
            importlib.import_module(f"{__name__}.{_name}")
        except ImportError as exc:  # pragma: no cover - platform dependent
            logger.warning("kernel module %s unavailable (%s); using the reference path", _name, exc)

# The differentiable grouped-GEMM expert path for training (plain torch, so it registers with or
# without Triton). Imported here, after the inference kernels, because the seam tries
# implementations in registration order: the Triton kernels keep first place for no-grad calls,
# and this one (which declines unless autograd records) answers the calls they decline. Importing
# it from the package that defines the seam is what makes it active wherever the model is used.
importlib.import_module("deepseek_ocr.training.grouped_experts")
