"""Grouped SwiGLU expert GEMMs for the MoE layers, routing given (or fused with `route`).

For tokens `x [N, H]` and routing `weights, ids [N, k]`, with stacked weights
`gate_up [E, 2I, H]` (gate rows, then up rows) and `down [E, H, I]`:
    y[t] = sum_j weights[t, j] * down[e] @ (silu(gate[e] @ x[t]) * up[e] @ x[t]),  e = ids[t, j]
the k terms summed in float32, then cast to x's dtype (as `StackedExperts.forward`).

Three launches after the grouping (`moe_routing.group_pairs`), all over padded, data-independent
grids (no host sync, CUDA-graph capturable):
  A `_gate_up_kernel`: per (block of BLOCK_M pairs of one expert, BLOCK_N columns of I) both the
    gate and the up tile, so x is read once for both; writes `silu(gate) * up` `[rows, I]` in the
    sorted row order, rounded once to x's dtype.
  B `_down_kernel`: per (block of pairs, BLOCK_N columns of H) multiplies by `down[e]` and writes
    the product, rounded to x's dtype, at its pair's row of `[N*k, H]`.
  C `_combine_kernel`: weights each token's k rows by their float32 routing weights and sums them
    in float32 (the reference's order: unweighted product rounded, weighted sum in float32). Deterministic, unlike float32 atomics
    into `[N, H]`, whose order of additions would change from run to run.
Programs of unused blocks (expert -1) return at once. Grid order puts the row blocks fastest, so
programs that run together share one weight tile in L2 when an expert has several blocks.
The row and token counts are `do_not_specialize` (see `moe_routing`): one compiled variant per
tile configuration, whatever the batch.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ..errors import KernelError
from . import enabled, register
from ._common import interpreting, launchable
from .moe_routing import group_pairs, route_reference  # also defines the moe_route op

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass(frozen=True)
class ExpertTiles:
    """Block sizes: rows per block (shared by A and B), and per kernel (BLOCK_N, BLOCK_K, warps, stages)."""
    block_m: int
    a: tuple[int, int, int, int]
    b: tuple[int, int, int, int]


def pick_tiles(n_tokens: int, top_k: int, n_experts: int) -> ExpertTiles:
    """Tiles by the mean number of pairs per expert.

    Up to a few hundred tokens the layer is bound by reading the experts' weights (440 MB of
    bf16 for 64 experts at full size), so each expert should be one block of rows (weights
    read once) and the grid wide enough to keep every SM streaming: narrow BLOCK_N. Thousands
    of tokens make it compute-bound: tensor-core tiles of 128 rows. These are first choices,
    not yet tuned on the device (see benchmarks/bench_moe.py).
    """
    per_expert = n_tokens * top_k / max(n_experts, 1)
    if per_expert <= 1:  # decode, a few tokens: 16 rows is the smallest tl.dot tile
        return ExpertTiles(16, (32, 128, 4, 4), (32, 128, 4, 4))
    if per_expert <= 12:
        return ExpertTiles(16, (64, 128, 4, 4), (64, 128, 4, 4))
    if per_expert <= 48:
        return ExpertTiles(64, (64, 64, 4, 3), (64, 128, 4, 3))
    return ExpertTiles(128, (64, 64, 8, 4), (128, 64, 8, 4))


def moe_experts_reference(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                          gate_up: torch.Tensor, down: torch.Tensor) -> torch.Tensor:
    """Plain torch, one matmul pair per expert that received pairs (`StackedExperts.forward`).

    Args:
        x: `[N, H]`. weights: `[N, k]` float32. ids: `[N, k]` integer.
        gate_up: `[E, 2I, H]`. down: `[E, H, I]`.
    """
    n, k = ids.shape
    inter = down.shape[-1]
    flat = ids.reshape(-1).long()  # (N*k,)
    out = torch.zeros(n * k, x.shape[-1], dtype=x.dtype, device=x.device)
    token_of_pair = torch.arange(n * k, device=x.device) // k
    for e in range(gate_up.shape[0]):
        pairs = (flat == e).nonzero().squeeze(1)
        if pairs.numel() == 0:
            continue
        gu = x[token_of_pair[pairs]] @ gate_up[e].t()  # (c, 2I)
        out[pairs] = (F.silu(gu[:, :inter]) * gu[:, inter:]) @ down[e].t()  # (c, H)
    return (out.view(n, k, -1).float() * weights[..., None]).sum(dim=1).to(x.dtype)


@triton.jit(do_not_specialize=["n_mblocks", "n_pairs"])
def _gate_up_kernel(x_ptr, w_ptr, h_ptr, sorted_pairs_ptr, block_expert_ptr, n_mblocks, n_pairs,
                    stride_x, stride_we, stride_wr, stride_h,
                    HIDDEN: tl.constexpr, INTER: tl.constexpr, TOP_K: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    EVEN_K: tl.constexpr, IEEE: tl.constexpr):
    pid = tl.program_id(0)
    pid_m = pid % n_mblocks
    pid_n = pid // n_mblocks
    e = tl.load(block_expert_ptr + pid_m)
    if e < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_pairs_ptr + rows)
    valid = pair < n_pairs
    token = (pair // TOP_K).to(tl.int64)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < INTER
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + token[:, None] * stride_x + ks[None, :]  # (BM, BK) gathered token rows
    g_ptrs = w_ptr + e.to(tl.int64) * stride_we + cols[None, :] * stride_wr + ks[:, None]  # (BK, BN)
    u_ptrs = g_ptrs + INTER * stride_wr
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
            g = tl.load(g_ptrs, mask=col_ok[None, :], other=0.0)
            u = tl.load(u_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = ks < HIDDEN - k0
            a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
            g = tl.load(g_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
            u = tl.load(u_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if IEEE:
            acc_g = tl.dot(a, g, acc_g, input_precision="ieee")
            acc_u = tl.dot(a, u, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(a, g, acc_g)
            acc_u = tl.dot(a, u, acc_u)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    h = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(gate) * up in float32
    tl.store(h_ptr + rows[:, None].to(tl.int64) * stride_h + cols[None, :],
             h.to(h_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["n_mblocks", "n_pairs"])
def _down_kernel(h_ptr, w_ptr, out_ptr, sorted_pairs_ptr, block_expert_ptr, n_mblocks,
                 n_pairs, stride_h, stride_we, stride_wr, stride_o,
                 HIDDEN: tl.constexpr, INTER: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 EVEN_K: tl.constexpr, IEEE: tl.constexpr):
    pid = tl.program_id(0)
    pid_m = pid % n_mblocks
    pid_n = pid // n_mblocks
    e = tl.load(block_expert_ptr + pid_m)
    if e < 0:
        return
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pair = tl.load(sorted_pairs_ptr + rows)
    valid = pair < n_pairs
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # output columns, in H
    col_ok = cols < HIDDEN
    ks = tl.arange(0, BLOCK_K)
    a_ptrs = h_ptr + rows[:, None].to(tl.int64) * stride_h + ks[None, :]  # (BM, BK)
    b_ptrs = w_ptr + e.to(tl.int64) * stride_we + cols[None, :] * stride_wr + ks[:, None]  # (BK, BN)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, INTER, BLOCK_K):
        if EVEN_K:
            a = tl.load(a_ptrs, mask=valid[:, None], other=0.0)
            b = tl.load(b_ptrs, mask=col_ok[None, :], other=0.0)
        else:
            k_ok = ks < INTER - k0
            a = tl.load(a_ptrs, mask=valid[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    # Unweighted, rounded once to x's dtype (the reference's `h @ down[e]`); the float32 routing
    # weight is applied in the combine, as the reference weights and sums in float32.
    tl.store(out_ptr + pair[:, None].to(tl.int64) * stride_o + cols[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & col_ok[None, :])


@triton.jit(do_not_specialize=["n_tokens"])
def _combine_kernel(src_ptr, weights_ptr, y_ptr, n_tokens, HIDDEN: tl.constexpr, TOP_K: tl.constexpr,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    tokens = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    ok = (tokens < n_tokens)[:, None] & (cols < HIDDEN)[None, :]
    rows = tokens.to(tl.int64) * TOP_K  # (BT,) first pair row of each token in [N*k, H]
    acc = tl.zeros((BLOCK_T, BLOCK_H), dtype=tl.float32)
    for j in tl.static_range(TOP_K):  # fixed order: the same sum every run
        part = tl.load(src_ptr + (rows + j)[:, None] * HIDDEN + cols[None, :], mask=ok, other=0.0)
        w = tl.load(weights_ptr + rows + j, mask=tokens < n_tokens, other=0.0)  # (BT,) float32
        acc += part.to(tl.float32) * w[:, None]
    tl.store(y_ptr + tokens.to(tl.int64)[:, None] * HIDDEN + cols[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=ok)


def check_expert_inputs(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                        gate_up: torch.Tensor, down: torch.Tensor) -> None:
    """Raise KernelError, naming the argument, for inputs outside the kernels' contract."""
    where = "moe_experts"
    if x.dim() != 2:
        raise KernelError(f"{where}: x must be [N, H], got shape {tuple(x.shape)}")
    n, hidden = x.shape
    if gate_up.dim() != 3 or gate_up.shape[2] != hidden or gate_up.shape[1] % 2:
        raise KernelError(f"{where}: gate_up must be [E, 2I, H={hidden}], got {tuple(gate_up.shape)}")
    n_experts, inter = gate_up.shape[0], gate_up.shape[1] // 2
    if tuple(down.shape) != (n_experts, hidden, inter):
        raise KernelError(f"{where}: down must be [E={n_experts}, H={hidden}, I={inter}], "
                          f"got {tuple(down.shape)}")
    if ids.dim() != 2 or ids.shape[0] != n or ids.dtype not in (torch.int32, torch.int64):
        raise KernelError(f"{where}: ids must be int32/int64 [N={n}, k], got {ids.dtype} {tuple(ids.shape)}")
    if tuple(weights.shape) != tuple(ids.shape) or weights.dtype != torch.float32:
        raise KernelError(f"{where}: weights must be float32 {tuple(ids.shape)} like ids, got "
                          f"{weights.dtype} {tuple(weights.shape)}")
    if not 0 < ids.shape[1] <= n_experts:
        raise KernelError(f"{where}: k (ids.shape[1]) must be in 1..E={n_experts}, got {ids.shape[1]}")
    if x.dtype not in _DTYPES or gate_up.dtype != x.dtype or down.dtype != x.dtype:
        raise KernelError(f"{where}: x, gate_up, down must share one of float16/bfloat16/float32, got "
                          f"{x.dtype}, {gate_up.dtype}, {down.dtype}")
    if not (gate_up.is_contiguous() and down.is_contiguous()):
        raise KernelError(f"{where}: gate_up and down must be contiguous (copying them per call would "
                          "cost more than the layer)")
    devices = {t.device for t in (x, weights, ids, gate_up, down)}
    if len(devices) != 1:
        raise KernelError(f"{where}: all tensors must be on one device, got {sorted(map(str, devices))}")


def moe_experts_triton(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor,
                       down: torch.Tensor, tiles: ExpertTiles | None = None) -> torch.Tensor:
    """Launch grouping + kernels A, B, C. Same arguments as `moe_experts`; `tiles` overrides `pick_tiles`."""
    check_expert_inputs(x, weights, ids, gate_up, down)
    x, weights, ids = (t.contiguous() for t in (x, weights, ids))
    n, hidden = x.shape
    top_k = ids.shape[1]
    n_experts, inter = gate_up.shape[0], gate_up.shape[1] // 2
    y = torch.empty((n, hidden), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    tiles = tiles or pick_tiles(n, top_k, n_experts)
    grouping = group_pairs(ids, n_experts, tiles.block_m)
    n_mblocks = grouping.block_expert.numel()
    n_pairs = n * top_k
    ieee = x.dtype == torch.float32  # float32 means float32 products (no TF32), like the reference
    h = torch.empty((n_mblocks * tiles.block_m, inter), dtype=x.dtype, device=x.device)  # sorted rows
    bn, bk, warps, stages = tiles.a
    _gate_up_kernel[(n_mblocks * triton.cdiv(inter, bn),)](
        x, gate_up, h, grouping.sorted_pairs, grouping.block_expert, n_mblocks, n_pairs,
        x.stride(0), gate_up.stride(0), gate_up.stride(1), h.stride(0),
        HIDDEN=hidden, INTER=inter, TOP_K=top_k, BLOCK_M=tiles.block_m, BLOCK_N=bn, BLOCK_K=bk,
        EVEN_K=hidden % bk == 0, IEEE=ieee, num_warps=warps, num_stages=stages)
    per_pair = torch.empty((n_pairs, hidden), dtype=x.dtype, device=x.device)  # (N*k, H), unweighted
    bn, bk, warps, stages = tiles.b
    _down_kernel[(n_mblocks * triton.cdiv(hidden, bn),)](
        h, down, per_pair, grouping.sorted_pairs, grouping.block_expert, n_mblocks, n_pairs,
        h.stride(0), down.stride(0), down.stride(1), per_pair.stride(0),
        HIDDEN=hidden, INTER=inter, BLOCK_M=tiles.block_m, BLOCK_N=bn, BLOCK_K=bk,
        EVEN_K=inter % bk == 0, IEEE=ieee, num_warps=warps, num_stages=stages)
    # The interpreter pays per program, not per element: fewer, larger tiles there.
    block_t, block_h = (64 if interpreting() else 8), min(triton.next_power_of_2(hidden), 256)
    _combine_kernel[(triton.cdiv(n, block_t), triton.cdiv(hidden, block_h))](
        per_pair, weights, y, n, HIDDEN=hidden, TOP_K=top_k, BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4)
    return y


# One opaque node for torch.compile, capturable in CUDA graphs (every buffer is allocated inside,
# from shapes alone).
@torch.library.custom_op("deepseek_ocr::moe_experts", mutates_args=())
def _moe_experts_op(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor,
                    down: torch.Tensor) -> torch.Tensor:
    return moe_experts_triton(x, weights, ids, gate_up, down)


@_moe_experts_op.register_fake
def _(x, weights, ids, gate_up, down):
    return x.new_empty(x.shape)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """The custom ops have no backward: calls that autograd would record take the reference."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def _applies(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """The kernels' preconditions that make the seam fall back instead of raising."""
    return (launchable(x, *others) and x.dim() == 2 and x.dtype in _DTYPES
            and all(t.is_contiguous() for t in others[-2:]) and not needs_grad(x, *others))


def moe_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate_up: torch.Tensor,
                down: torch.Tensor) -> torch.Tensor:
    """Routed-expert SwiGLU with routing given: the kernels where they can launch, else the reference.

    Args:
        x: `[N, H]` float16/bfloat16/float32. weights: `[N, k]` float32. ids: `[N, k]` int32/int64
            in 0..E-1 (not checked on the device: that would need a sync).
        gate_up: `[E, 2I, H]`, contiguous, x's dtype. down: `[E, H, I]`, contiguous, x's dtype.

    Returns:
        `[N, H]` in x's dtype.
    """
    check_expert_inputs(x, weights, ids, gate_up, down)
    if enabled() and _applies(x, weights, ids, gate_up, down):
        return torch.ops.deepseek_ocr.moe_experts(x, weights, ids, gate_up, down)
    return moe_experts_reference(x, weights, ids, gate_up, down)


def fused_moe(x: torch.Tensor, router_weight: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
              top_k: int, norm_topk_prob: bool = False, scaling: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Routing then routed experts (no shared experts), all on the device without a host sync.

    Args:
        x: `[N, H]`. router_weight: `[E, H]`. gate_up, down: as `moe_experts`.
        top_k, norm_topk_prob, scaling: the router's `num_experts_per_tok`, `norm_topk_prob`,
            `routed_scaling_factor`.

    Returns:
        (y `[N, H]` in x's dtype, weights `[N, k]` float32, ids `[N, k]` int64).
    """
    if enabled() and _applies(x, router_weight, gate_up, down):
        weights, ids = torch.ops.deepseek_ocr.moe_route(x, router_weight, top_k, bool(norm_topk_prob),
                                                        float(scaling))
    else:
        weights, ids = route_reference(x, router_weight, top_k, norm_topk_prob, scaling)
    return moe_experts(x, weights, ids, gate_up, down), weights, ids


def _experts_seam(experts: torch.nn.Module, x: torch.Tensor, weights: torch.Tensor,
                  ids: torch.Tensor) -> torch.Tensor | None:
    """`kernels.moe_experts` implementation: `StackedExperts` -> the kernels, or None (reference)."""
    if getattr(experts, "carries_lora", False):
        return None  # LoRA'd experts (training/lora.py): the kernel would ignore their factors
    gate_up, down = experts.gate_up, experts.down
    if not _applies(x, weights, ids, gate_up, down):
        return None
    if gate_up.dtype != x.dtype or down.dtype != x.dtype or weights.dtype != torch.float32:
        return None
    check_expert_inputs(x, weights, ids, gate_up, down)
    return torch.ops.deepseek_ocr.moe_experts(x, weights, ids, gate_up, down)


register("moe_experts", _experts_seam)
