"""MoE routing on the device: router top-k, then grouping the (token, slot) pairs by expert.

Routing (`route`): logits `x.float() @ W.float().T` in float32, softmax over the E experts,
greedy top-k (ties go to the lower expert id), optional renormalisation of the k weights, times
a scaling factor: the contract of `decoder.moe.Router`. One program handles BLOCK_T tokens.

Grouping (`group_pairs`): the grouped expert GEMMs want the N*k pairs sorted by expert, with each
expert's run padded to a multiple of BLOCK_M so a block of rows never mixes experts. Nothing here
reads data back to the host: every buffer is sized by a worst-case bound from N, k, E and BLOCK_M
alone (`max_blocks`), unused blocks are marked expert -1 and unused rows hold the sentinel N*k,
and the GEMM kernels skip them. Two launches, each over chunks of CHUNK pairs:
  1. `_chunk_count_kernel`: per-chunk expert histograms `[num_chunks, E]`;
  2. `_scatter_kernel`: each chunk sums the histograms (all chunks: totals and padded offsets;
     earlier chunks: its base), ranks its pairs within the chunk (a cumsum of one-hot rows, so
     the order is stable: pair index order within an expert, as `argsort(stable=True)`), and
     writes their sorted positions; it also fills its slice of padding rows and block experts.
A single-program version would serialise 2 passes over all N*k pairs (~100 chunks at N=4096).
Loops whose trip count depends on N are `while` loops: the Triton 3.6 interpreter cannot take a
runtime scalar as a `range` bound (numpy 2 refuses int() of its 1-element arrays); nothing in
them benefits from software pipelining anyway.
Counts that follow the batch (tokens, pairs, chunks, blocks) are `do_not_specialize`: Triton
otherwise compiles a variant per combination of "== 1" and "divisible by 16" of each, and a
server admitting pages of every length compiled new ones for minutes (py-spy on the H200: 7.3 s
of the engine thread's time in Triton's compiler at concurrency 256). Nothing here gains from
those hints (the counts only bound masks and loops).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..errors import KernelError

_ROUTE_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_EXPERTS = 256  # one [BLOCK_T, E] tile of logits; the model has 64


class Grouping(NamedTuple):
    """Pairs grouped by expert. Pair p is (token p // k, slot p % k).

    sorted_pairs: int32 `[max_blocks * block_m]`, pair indices sorted by expert, each expert's
        run starting at a multiple of block_m; padding rows hold N*k.
    block_expert: int32 `[max_blocks]`, the expert of each block of rows, -1 for unused blocks.
    counts: int32 `[E]`, pairs per expert.
    padded_offsets: int32 `[E + 1]`, where each expert's run starts (block-aligned), then the end.
    block_m: rows per block.
    """
    sorted_pairs: torch.Tensor
    block_expert: torch.Tensor
    counts: torch.Tensor
    padded_offsets: torch.Tensor
    block_m: int


def max_blocks(num_pairs: int, num_experts: int, block_m: int) -> int:
    """Worst-case number of blocks: sum_e ceil(c_e / M) <= (P + used * (M - 1)) / M, used <= min(E, P)."""
    return (num_pairs + min(num_experts, num_pairs) * (block_m - 1)) // block_m


# ----------------------------------------------------------------------------------------------
# Plain-torch references (they may synchronise; they define correctness)
# ----------------------------------------------------------------------------------------------

def route_reference(x: torch.Tensor, router_weight: torch.Tensor, top_k: int,
                    norm_topk_prob: bool = False, scaling: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """`decoder.moe.Router.forward` as a function.

    Args:
        x: `[N, H]` tokens. router_weight: `[E, H]`. top_k: experts per token.
        norm_topk_prob: divide the k weights by their sum. scaling: multiply the weights.

    Returns:
        (weights `[N, k]` float32, ids `[N, k]` int64).
    """
    scores = (x.float() @ router_weight.float().t()).softmax(dim=-1)  # (N, E)
    weights, ids = torch.topk(scores, top_k, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights * scaling, ids


def group_pairs_reference(ids: torch.Tensor, num_experts: int, block_m: int) -> Grouping:
    """The grouping computed with a host loop over experts (same layout as `group_pairs`)."""
    flat = ids.reshape(-1).long()  # (N*k,)
    num_pairs = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)[:num_experts]
    order = torch.argsort(flat, stable=True)
    nblocks = max_blocks(num_pairs, num_experts, block_m)
    sorted_pairs = torch.full((nblocks * block_m,), num_pairs, dtype=torch.int32)
    block_expert = torch.full((nblocks,), -1, dtype=torch.int32)
    offsets = [0]
    src = 0
    for e, c in enumerate(counts.tolist()):
        start = offsets[-1]
        sorted_pairs[start:start + c] = order[src:src + c].to(torch.int32).cpu()
        block_expert[start // block_m:(start + c + block_m - 1) // block_m] = e
        src += c
        offsets.append(start + (c + block_m - 1) // block_m * block_m)
    dev = ids.device
    return Grouping(sorted_pairs.to(dev), block_expert.to(dev), counts.to(torch.int32),
                    torch.tensor(offsets, dtype=torch.int32, device=dev), block_m)


# ----------------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["n_tokens"])
def _route_kernel(x_ptr, w_ptr, weights_ptr, ids_ptr, n_tokens, n_experts, scaling,
                  stride_x, stride_w, HIDDEN: tl.constexpr,
                  TOP_K: tl.constexpr, RENORM: tl.constexpr, BLOCK_T: tl.constexpr,
                  BLOCK_E: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_K: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    experts = tl.arange(0, BLOCK_E)
    row_ok = rows < n_tokens
    exp_ok = experts < n_experts
    logits = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for h0 in range(0, HIDDEN, BLOCK_H):  # HIDDEN is constexpr: a model constant
        cols = h0 + tl.arange(0, BLOCK_H)
        col_ok = cols < HIDDEN
        xt = tl.load(x_ptr + rows[:, None].to(tl.int64) * stride_x + cols[None, :],
                     mask=row_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
        wt = tl.load(w_ptr + experts[None, :] * stride_w + cols[:, None],
                     mask=exp_ok[None, :] & col_ok[:, None], other=0.0).to(tl.float32)  # (BH, BE)
        # IEEE float32: TF32 would move logits by ~1e-3 and change which experts win.
        logits = tl.dot(xt, wt, logits, input_precision="ieee")
    logits = tl.where(exp_ok[None, :], logits, float("-inf"))
    top = tl.max(logits, axis=1)
    p = tl.exp(logits - top[:, None])
    scores = p / tl.sum(p, axis=1)[:, None]  # (BT, BE); padded experts are 0
    scores = tl.where(exp_ok[None, :], scores, -1.0)  # below every probability: never picked
    slots = tl.arange(0, BLOCK_K)
    top_w = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.float32)  # the k winners, kept in registers
    top_i = tl.zeros((BLOCK_T, BLOCK_K), dtype=tl.int32)
    # Greedy top-k, one winner per round; the lowest id among equal scores wins (torch.topk
    # does not promise an order for ties, we fix one).
    for j in tl.static_range(TOP_K):
        best = tl.max(scores, axis=1)
        pick = tl.min(tl.where(scores == best[:, None], experts[None, :], BLOCK_E), axis=1)
        pick = tl.minimum(pick, n_experts - 1)  # a NaN row matches nothing: keep ids in range, NaN weights
        top_w = tl.where(slots[None, :] == j, best[:, None], top_w)
        top_i = tl.where(slots[None, :] == j, pick[:, None], top_i)
        scores = tl.where(experts[None, :] == pick[:, None], -2.0, scores)
    if RENORM:
        top_w = top_w / tl.sum(top_w, axis=1)[:, None]  # unused slots hold 0
    out = rows[:, None].to(tl.int64) * TOP_K + slots[None, :]
    ok = row_ok[:, None] & (slots[None, :] < TOP_K)
    tl.store(weights_ptr + out, top_w * scaling, mask=ok)
    tl.store(ids_ptr + out, top_i.to(tl.int64), mask=ok)


@triton.jit(do_not_specialize=["n_pairs"])
def _chunk_count_kernel(ids_ptr, chunk_counts_ptr, n_pairs, n_experts,
                        CHUNK: tl.constexpr, BLOCK_E: tl.constexpr):
    c = tl.program_id(0)
    pairs = c * CHUNK + tl.arange(0, CHUNK)
    experts = tl.arange(0, BLOCK_E)
    eid = tl.load(ids_ptr + pairs, mask=pairs < n_pairs, other=-1).to(tl.int32)
    # masked rows and ids outside 0..E-1 match no column, so they count nowhere
    onehot = ((eid[:, None] == experts[None, :]) & (experts[None, :] < n_experts)).to(tl.int32)
    tl.store(chunk_counts_ptr + c * BLOCK_E + experts, tl.sum(onehot, axis=0))


@triton.jit(do_not_specialize=["n_pairs", "n_chunks", "n_blocks", "rows_per_prog", "blocks_per_prog"])
def _scatter_kernel(ids_ptr, chunk_counts_ptr, sorted_pairs_ptr, block_expert_ptr, counts_ptr,
                    offsets_ptr, n_pairs, n_experts, n_chunks, n_blocks, rows_per_prog,
                    blocks_per_prog, CHUNK: tl.constexpr, BLOCK_E: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_M: tl.constexpr):
    c = tl.program_id(0)
    experts = tl.arange(0, BLOCK_E)
    # Totals over all chunks and the base of this chunk (the sum over earlier chunks).
    total = tl.zeros((BLOCK_E,), dtype=tl.int32)
    before = tl.zeros((BLOCK_E,), dtype=tl.int32)
    c0 = 0
    while c0 < n_chunks:
        chunks = c0 + tl.arange(0, BLOCK_C)
        tile = tl.load(chunk_counts_ptr + chunks[:, None] * BLOCK_E + experts[None, :],
                       mask=(chunks < n_chunks)[:, None], other=0)  # (BC, BE)
        total += tl.sum(tile, axis=0)
        before += tl.sum(tl.where((chunks < c)[:, None], tile, 0), axis=0)
        c0 += BLOCK_C
    padded = (total + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    ends = tl.cumsum(padded, axis=0)  # (BE,) padded end of each expert's run
    starts = ends - padded
    used_rows = tl.sum(padded, axis=0)
    if c == 0:
        tl.store(counts_ptr + experts, total, mask=experts < n_experts)
        tl.store(offsets_ptr + experts, starts, mask=experts < n_experts)
        tl.store(offsets_ptr + n_experts, used_rows)

    # This chunk's pairs: position = run start + pairs of the expert in earlier chunks + rank here.
    pairs = c * CHUNK + tl.arange(0, CHUNK)
    pair_ok = pairs < n_pairs
    eid = tl.load(ids_ptr + pairs, mask=pair_ok, other=-1).to(tl.int32)
    pair_ok = pair_ok & (eid >= 0) & (eid < n_experts)
    onehot = ((eid[:, None] == experts[None, :]) & pair_ok[:, None]).to(tl.int32)  # (CHUNK, BE)
    rank = tl.sum(tl.cumsum(onehot, axis=0) * onehot, axis=1) - 1  # (CHUNK,)
    base = tl.sum(onehot * (starts + before)[None, :], axis=1)
    tl.store(sorted_pairs_ptr + base + rank, pairs, mask=pair_ok)

    # Padding rows in this program's slice get the sentinel; they are disjoint from the rows
    # any program scatters to, so no ordering between programs is needed.
    r0 = 0
    while r0 < rows_per_prog:
        pos = c * rows_per_prog + r0 + tl.arange(0, CHUNK)
        in_slice = (r0 + tl.arange(0, CHUNK) < rows_per_prog) & (pos < n_blocks * BLOCK_M)
        owner = tl.sum((ends[None, :] <= pos[:, None]).to(tl.int32), axis=1)  # expert whose run holds pos
        owner_start = tl.sum(tl.where(experts[None, :] == owner[:, None], starts[None, :], 0), axis=1)
        owner_count = tl.sum(tl.where(experts[None, :] == owner[:, None], total[None, :], 0), axis=1)
        is_pad = (owner >= n_experts) | (pos - owner_start >= owner_count)
        tl.store(sorted_pairs_ptr + pos, tl.full((CHUNK,), 0, tl.int32) + n_pairs, mask=in_slice & is_pad)
        r0 += CHUNK
    b0 = 0
    while b0 < blocks_per_prog:
        blk = c * blocks_per_prog + b0 + tl.arange(0, CHUNK)
        in_slice = (b0 + tl.arange(0, CHUNK) < blocks_per_prog) & (blk < n_blocks)
        row0 = blk * BLOCK_M
        owner = tl.sum((ends[None, :] <= row0[:, None]).to(tl.int32), axis=1)
        owner = tl.where(row0 < used_rows, owner, -1)
        tl.store(block_expert_ptr + blk, owner, mask=in_slice)
        b0 += CHUNK


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

def _experts_tile(num_experts: int) -> int:
    return max(16, triton.next_power_of_2(num_experts))


def route(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, norm_topk_prob: bool = False,
          scaling: float = 1.0, block_t: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Router top-k with the Triton kernel (no host synchronisation).

    Args:
        x: `[N, H]` float16/bfloat16/float32, last dim contiguous.
        router_weight: `[E, H]`, E <= 256, any of those dtypes, on x's device.
        top_k: experts per token, 1..E. norm_topk_prob, scaling: as `route_reference`.
        block_t: tokens per program, a power of two >= 16 (16: tl.dot's smallest tile; decode
            wastes 15 rows of a tiny matmul; tests pass more to run fewer interpreted programs).

    Returns:
        (weights `[N, k]` float32, ids `[N, k]` int64), both contiguous.
    """
    check_route_inputs(x, router_weight, top_k)
    x = x if x.stride(-1) == 1 else x.contiguous()
    router_weight = router_weight if router_weight.stride(-1) == 1 else router_weight.contiguous()
    n, hidden = x.shape
    n_experts = router_weight.shape[0]
    weights = torch.empty((n, top_k), dtype=torch.float32, device=x.device)
    ids = torch.empty((n, top_k), dtype=torch.int64, device=x.device)
    if n == 0:
        return weights, ids
    block_e = _experts_tile(n_experts)
    block_h = 64 if block_e <= 64 else 32  # keeps the (BLOCK_E, BLOCK_H) weight tile small
    _route_kernel[(triton.cdiv(n, block_t),)](
        x, router_weight, weights, ids, n, n_experts, float(scaling),
        x.stride(0), router_weight.stride(0), HIDDEN=hidden,
        TOP_K=top_k, RENORM=bool(norm_topk_prob), BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_H=block_h,
        BLOCK_K=max(2, triton.next_power_of_2(top_k)),
        num_warps=4)
    return weights, ids


def group_pairs(ids: torch.Tensor, num_experts: int, block_m: int) -> Grouping:
    """Group the N*k (token, slot) pairs by expert, block-aligned, on the device.

    Args:
        ids: `[N, k]` integer expert ids in 0..num_experts-1. Out-of-range ids are not checked
            (that would need a sync): such pairs join no run and their results are undefined.
        num_experts: E <= 256.
        block_m: rows per block of the grouped GEMM (a power of two >= 16).

    Returns:
        A `Grouping` whose sizes depend on N, k, E and block_m only.
    """
    if ids.dim() != 2 or ids.dtype not in (torch.int32, torch.int64):
        raise KernelError(f"group_pairs: ids must be int32/int64 [N, k], got {ids.dtype} {tuple(ids.shape)}")
    if not 0 < num_experts <= MAX_EXPERTS:
        raise KernelError(f"group_pairs: num_experts must be in 1..{MAX_EXPERTS}, got {num_experts}")
    if block_m < 16 or block_m & (block_m - 1):
        raise KernelError(f"group_pairs: block_m must be a power of two >= 16, got {block_m}")
    flat = ids.reshape(-1)  # (N*k,) a view of contiguous ids
    if not flat.is_contiguous():
        flat = flat.contiguous()
    n_pairs = flat.numel()
    dev = ids.device
    n_blocks = max_blocks(n_pairs, num_experts, block_m)
    sorted_pairs = torch.empty((n_blocks * block_m,), dtype=torch.int32, device=dev)
    block_expert = torch.empty((n_blocks,), dtype=torch.int32, device=dev)
    counts = torch.empty((num_experts,), dtype=torch.int32, device=dev)
    offsets = torch.empty((num_experts + 1,), dtype=torch.int32, device=dev)
    if n_pairs == 0:
        counts.zero_()
        offsets.zero_()
        return Grouping(sorted_pairs, block_expert, counts, offsets, block_m)
    block_e = _experts_tile(num_experts)
    chunk = 256 if block_e <= 64 else 64  # the (CHUNK, BLOCK_E) one-hot tile stays ~16K values
    # A decode step has a few pairs: a 256-row scan tile for 6 pairs made this 45 us per layer
    # on an H100 (benchmarks/profile_step.py); size the tile to the pairs instead.
    chunk = min(chunk, max(16, triton.next_power_of_2(n_pairs)))
    n_chunks = triton.cdiv(n_pairs, chunk)
    chunk_counts = torch.empty((n_chunks, block_e), dtype=torch.int32, device=dev)
    _chunk_count_kernel[(n_chunks,)](flat, chunk_counts, n_pairs, num_experts,
                                     CHUNK=chunk, BLOCK_E=block_e, num_warps=4)
    _scatter_kernel[(n_chunks,)](
        flat, chunk_counts, sorted_pairs, block_expert, counts, offsets, n_pairs, num_experts,
        n_chunks, n_blocks, triton.cdiv(n_blocks * block_m, n_chunks), triton.cdiv(n_blocks, n_chunks),
        CHUNK=chunk, BLOCK_E=block_e, BLOCK_C=16, BLOCK_M=block_m, num_warps=4)
    return Grouping(sorted_pairs, block_expert, counts, offsets, block_m)


def check_route_inputs(x: torch.Tensor, router_weight: torch.Tensor, top_k: int) -> None:
    """Raise KernelError, naming the argument, for inputs outside the routing kernel's contract."""
    where = "moe route"
    if x.dim() != 2:
        raise KernelError(f"{where}: x must be [N, H], got shape {tuple(x.shape)}")
    if router_weight.dim() != 2 or router_weight.shape[1] != x.shape[1]:
        raise KernelError(f"{where}: router_weight must be [E, H={x.shape[1]}], "
                          f"got {tuple(router_weight.shape)}")
    if not 0 < router_weight.shape[0] <= MAX_EXPERTS:
        raise KernelError(f"{where}: the number of experts must be in 1..{MAX_EXPERTS}, "
                          f"got {router_weight.shape[0]}")
    if not isinstance(top_k, int) or not 0 < top_k <= router_weight.shape[0]:
        raise KernelError(f"{where}: top_k must be an int in 1..{router_weight.shape[0]}, got {top_k!r}")
    for name, t in (("x", x), ("router_weight", router_weight)):
        if t.dtype not in _ROUTE_DTYPES:
            raise KernelError(f"{where}: {name} must be float16/bfloat16/float32, got {t.dtype}")
    if x.device != router_weight.device:
        raise KernelError(f"{where}: x is on {x.device} but router_weight on {router_weight.device}")


# One opaque node for torch.compile, capturable in CUDA graphs (outputs allocated inside).
@torch.library.custom_op("deepseek_ocr::moe_route", mutates_args=())
def _moe_route_op(x: torch.Tensor, router_weight: torch.Tensor, top_k: int, norm_topk_prob: bool,
                  scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    return route(x, router_weight, top_k, norm_topk_prob, scaling)


@_moe_route_op.register_fake
def _(x, router_weight, top_k, norm_topk_prob, scaling):
    n = x.shape[0]
    return (x.new_empty((n, top_k), dtype=torch.float32), x.new_empty((n, top_k), dtype=torch.int64))


# The model's routing is one rule at every batch size: `decoder.moe.Router` (a float32 GEMM,
# softmax, `torch.topk`). The kernel above is not registered at the `moe_route` seam: it was used
# from 128 tokens up, with its own tie rule and summation order, so a page's experts could change
# with the size of the batch it was in (and below 128 tokens cuBLAS's GEMV was faster anyway).
# It remains for `moe_grouped.fused_moe` (routing and experts without a host sync, for kernels
# benchmarks) and is tested against `route_reference`.
