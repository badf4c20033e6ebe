"""Differentiable grouped SwiGLU for the routed experts: the training path of `kernels.moe_experts`.

The reference (`StackedExperts.forward`) loops in Python over the experts that received tokens:
64 pairs of small matmuls per layer, each with its own launches and a host sync for the counts.
The Triton kernels (kernels/moe_grouped.py) have no backward and decline when autograd records.
This module fills that gap, and only that gap: it registers at the `moe_experts` seam and
returns None unless autograd is recording, so inference keeps today's kernels or reference.

The computation, per layer:
  1. the (token, slot) pairs are sorted by expert once (stable argsort, as the reference) and
     the tokens gathered in that order; the group ends come from `searchsorted` on the sorted
     ids (no host sync, unlike `bincount` on CUDA);
  2. the SwiGLU runs over all experts at once:
     (a) `grouped`: `torch._grouped_mm` (CUTLASS grouped GEMMs on sm90, with autograd) for
         gate_up and down, on CUDA in bfloat16 when the dims keep the 16-byte alignment those
         kernels need (H, I and the LoRA rank multiples of 8); no padding, no host sync;
     (b) `padded`: otherwise every expert's pairs are placed in a `[E, C, H]` batch (C the
         largest group, one host sync) and multiplied with `torch.bmm`; padding rows are zeros
         and their results are dropped. Costs E*C rows instead of N*k (random routing: ~1.5-2x).
  3. the per-pair results are put back in (token, slot) order and combined exactly as the
     reference does: product per pair in the activation dtype, weighted and summed over the k
     slots in float32, cast to x's dtype.

Under autocast the matmuls run in the autocast dtype (the weights are cast explicitly, because
`_grouped_mm` is not on every torch's autocast list), as the reference's `@` would under autocast.

LoRA'd experts (training/lora.py `LoraStackedExperts`) are supported: the rank-r deltas
`B_e(A_e(dropout(x))) * scale` go through the same grouping (two thin grouped GEMMs per adapted
projection), which is what `lora_experts_forward` computes expert by expert. Any other subclass
with its own forward is declined (None), so its forward runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import DeepseekOCRError
from ..kernels import enabled, register

_PROJS = ("gate_proj", "up_proj", "down_proj")


class GroupedExpertsError(DeepseekOCRError, ValueError):
    """Inputs the grouped expert path cannot take (shapes or devices that do not agree)."""


def has_grouped_mm() -> bool:
    return hasattr(torch, "_grouped_mm")


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the matmuls run in: autocast's when it is on for x's device, else x's."""
    dev = x.device.type
    try:
        on = torch.is_autocast_enabled(dev)
    except TypeError:  # torch < 2.4 takes no device argument (CUDA only)
        on = dev == "cuda" and torch.is_autocast_enabled()
    if on and x.is_floating_point():
        return torch.get_autocast_dtype(dev) if hasattr(torch, "get_autocast_dtype") else torch.bfloat16
    return x.dtype


def _lora_of(experts: torch.nn.Module):
    """`(lora_A, lora_B, dropout, scale)` of a LoRA'd experts module, else None."""
    if not getattr(experts, "carries_lora", False):
        return None
    return experts.lora_A, experts.lora_B, experts.lora_dropout, float(experts.lora_scale)


def grouped_mm_applies(x: torch.Tensor, gate_up: torch.Tensor, cdt: torch.dtype, lora=None) -> bool:
    """Path (a)'s preconditions: CUDA, bfloat16 compute, `_grouped_mm` present, aligned dims."""
    if not (has_grouped_mm() and x.is_cuda and cdt == torch.bfloat16):
        return False
    dims = [gate_up.shape[-1], gate_up.shape[1] // 2]
    if lora is not None:
        dims += [a.shape[1] for a in lora[0].values()]
    return all(d % 8 == 0 for d in dims)  # 16-byte rows of bf16: CUTLASS's TMA alignment


def _check(x, weights, ids, gate_up, down) -> None:
    if x.dim() != 2 or ids.dim() != 2 or ids.shape[0] != x.shape[0] or weights.shape != ids.shape:
        raise GroupedExpertsError(f"expected x [N, H] and weights/ids [N, k], got {tuple(x.shape)}, "
                                  f"{tuple(weights.shape)}, {tuple(ids.shape)}")
    e, two_i, h = gate_up.shape
    if h != x.shape[1] or tuple(down.shape) != (e, h, two_i // 2):
        raise GroupedExpertsError(f"expert weights gate_up {tuple(gate_up.shape)} / down {tuple(down.shape)} "
                                  f"do not fit x [N, {x.shape[1]}]")


def _group(ids: torch.Tensor, n_experts: int):
    """(order, sorted expert ids, cumulative group ends `[E]` int64), all on ids' device."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)  # the reference's order within each expert
    sorted_ids = flat[order]
    ends = torch.searchsorted(sorted_ids, torch.arange(n_experts, device=ids.device, dtype=sorted_ids.dtype),
                              right=True)
    return order, sorted_ids, ends


def _gmm(a: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Rows of `a` [P, in] (grouped by `offs`) times each group's `w[e]` `[out, in]` transposed."""
    return torch._grouped_mm(a, w.transpose(-2, -1), offs=offs)


def _grouped_path(xs, sorted_ids, ends, gate_up, down, lora, cdt):
    offs = ends.to(torch.int32)
    inter = down.shape[-1]

    def delta(proj, inp):
        a, b = lora[0][proj].to(cdt), lora[1][proj].to(cdt)
        mid = _gmm(lora[2](inp), a, offs)  # (P, r)
        return _gmm(mid, b, offs) * lora[3]

    gu = _gmm(xs, gate_up.to(cdt), offs)  # (P, 2I)
    g, u = gu[:, :inter], gu[:, inter:]
    if lora is not None and "gate_proj" in lora[0]:
        g = g + delta("gate_proj", xs)
    if lora is not None and "up_proj" in lora[0]:
        u = u + delta("up_proj", xs)
    h = F.silu(g) * u
    y = _gmm(h, down.to(cdt), offs)
    if lora is not None and "down_proj" in lora[0]:
        y = y + delta("down_proj", h)
    return y


def _padded_path(xs, sorted_ids, ends, gate_up, down, lora, cdt):
    n_exp, p = gate_up.shape[0], xs.shape[0]
    counts = torch.diff(ends, prepend=ends.new_zeros(1))
    cap = int(counts.max())  # the one host sync of this path: the batch shape depends on it
    rank = torch.arange(p, device=xs.device) - (ends - counts)[sorted_ids]
    slot = sorted_ids * cap + rank  # row of each sorted pair in the [E*C] batch
    xb = xs.new_zeros(n_exp * cap, xs.shape[1]).index_copy(0, slot, xs).view(n_exp, cap, -1)
    inter = down.shape[-1]

    def mm(a, w):  # [E, C, in] x [E, out, in]^T; autocast (if on) applies to bmm itself
        return torch.bmm(a, w.to(a.dtype).transpose(1, 2))

    def delta(proj, inp):
        return mm(mm(lora[2](inp), lora[0][proj]), lora[1][proj]) * lora[3]

    gu = mm(xb, gate_up)
    g, u = gu[..., :inter], gu[..., inter:]
    if lora is not None and "gate_proj" in lora[0]:
        g = g + delta("gate_proj", xb)
    if lora is not None and "up_proj" in lora[0]:
        u = u + delta("up_proj", xb)
    h = F.silu(g) * u
    y = mm(h, down)
    if lora is not None and "down_proj" in lora[0]:
        y = y + delta("down_proj", h)
    return y.reshape(n_exp * cap, -1)[slot]


def grouped_swiglu(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor,
                   down: torch.Tensor, lora=None, impl: str = "auto") -> torch.Tensor:
    """Routed-expert SwiGLU, differentiable, without a Python loop over the experts.

    Args:
        x: `[N, H]` tokens. weights: `[N, k]` routing weights (float32 from the router).
        ids: `[N, k]` expert ids. gate_up: `[E, 2I, H]`. down: `[E, H, I]`.
        lora: `(lora_A, lora_B, dropout, scale)` with dicts keyed by gate_proj/up_proj/down_proj
            of `[E, r, in]` / `[E, out, r]` factors, or None.
        impl: "grouped" (`torch._grouped_mm`), "padded" (`torch.bmm`), or "auto" (grouped where
            `grouped_mm_applies`, else padded).

    Returns:
        `[N, H]` in x's dtype, the reference's combine order (see module docstring).
    """
    _check(x, weights, ids, gate_up, down)
    n, k = ids.shape
    cdt = compute_dtype(x)
    if impl == "auto":
        impl = "grouped" if grouped_mm_applies(x, gate_up, cdt, lora) else "padded"
    if impl not in ("grouped", "padded"):
        raise GroupedExpertsError(f"impl must be 'auto', 'grouped' or 'padded', got {impl!r}")
    if n == 0:
        return x.new_zeros(0, x.shape[1])
    order, sorted_ids, ends = _group(ids, gate_up.shape[0])
    # Cast before gathering: under autocast x is float32 and the gathered copy is k times larger.
    xs = x.to(cdt)[torch.div(order, k, rounding_mode="floor")]  # (P, H), sorted by expert
    if impl == "grouped":
        y_sorted = _grouped_path(xs, sorted_ids, ends, gate_up, down, lora, cdt)
    else:
        y_sorted = _padded_path(xs, sorted_ids, ends, gate_up, down, lora, cdt)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    out = y_sorted[inverse].to(x.dtype)  # (token, slot) order; a gather, deterministic backward
    combined = (out.view(n, k, -1).float() * weights[..., None]).sum(dim=1)
    return combined.to(x.dtype)


def _records_grad(experts: torch.nn.Module, *tensors: torch.Tensor) -> bool:
    if not torch.is_grad_enabled():
        return False
    return any(t.requires_grad for t in tensors) or any(p.requires_grad for p in experts.parameters())


def _experts_seam(experts: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor | None:
    """`kernels.moe_experts` implementation for training; None (decline) when autograd does not
    record, for modules whose forward is not one this path reproduces, and for empty inputs."""
    if not enabled() or x.shape[0] == 0 or not _records_grad(experts, x, weights):
        return None
    # Imported here: this module is loaded at the end of kernels/__init__.py, while decoder/moe.py
    # (which imports the kernels package) may still be initializing.
    from ..decoder.moe import StackedExperts
    if not isinstance(experts, StackedExperts):
        return None
    forward = type(experts).forward
    lora = None
    if forward is not StackedExperts.forward:
        from .lora import LoraStackedExperts
        if forward is not LoraStackedExperts.forward:
            return None  # a subclass with its own math: let it run
        lora = _lora_of(experts)
    return grouped_swiglu(x, weights, ids, experts.gate_up, experts.down, lora)


register("moe_experts", _experts_seam)
