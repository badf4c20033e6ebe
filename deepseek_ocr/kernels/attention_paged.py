"""One new query per row over a paged KV cache: the decode step of a block-table engine.

The cache of one layer is a pool of fixed-size blocks, `k_pool, v_pool [num_blocks, heads,
block_size, head_dim]`; a (block, head) pair is one contiguous `[block_size, head_dim]` tile.
Row b's logical slot s lives in block `block_table[b, s // block_size]` at offset
`s % block_size`; the row holds `seqlens[b]` slots, the new token's k/v already written at slot
`seqlens[b]-1`. Table entries past a row's last block may hold anything and are never read (the
engine leaves stale ids there, and padding rows of a CUDA-graph bucket have length 0).

The kernels follow `attention_decode` (flash-decoding): the split kernel gives each (split, head,
row) a program over a whole number of blocks (a power of two of them), which it walks in tiles
of up to 128 slots, finding each slot's block through the table; the combine is
`attention_decode`'s own, since the partials have the same layout ([B, heads, splits], a split
being `blocks x block_size` slots) and it needs only the lengths, never the table.
The grid depends on B, heads, max_blocks and block_size only (host ints), and nothing is read
back to the host, so the call is CUDA-graph capturable: splits past a row's length return at
once, and the combine reads only the splits that ran.
"""
from __future__ import annotations

import math

import torch

from ..errors import KernelError
from . import register
from ._common import HAVE_TRITON, launchable
from .attention_decode import decode_split_size

if HAVE_TRITON:
    import triton
    import triton.language as tl

    from .attention_decode import _decode_combine_kernel

_LOG2E = 1.4426950408889634  # the split kernel works in base 2: exp(x) = exp2(x * log2(e))
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_WHERE = "paged_decode_attention"


def _power_of_two_in(n: int, lo: int, hi: int) -> bool:
    return lo <= n <= hi and n & (n - 1) == 0


def _check(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor,
           seqlens: torch.Tensor, dtypes: tuple[torch.dtype, ...] = _DTYPES) -> None:
    """Raise KernelError, saying what and where, for inputs outside this op's contract.

    Shapes, dtypes and devices only: checking the table's ids or the lengths would read them
    back to the host (a sync, and impossible while a CUDA graph is being captured).
    """
    if q.dim() != 3 or k_pool.dim() != 4:
        raise KernelError(f"{_WHERE}: q must be [B, heads, head_dim] and the pools [num_blocks, heads, "
                          f"block_size, head_dim], got {tuple(q.shape)} and {tuple(k_pool.shape)}")
    batch, heads, head_dim = q.shape
    if v_pool.shape != k_pool.shape or (k_pool.shape[1], k_pool.shape[3]) != (heads, head_dim):
        raise KernelError(f"{_WHERE}: pools {tuple(k_pool.shape)}, {tuple(v_pool.shape)} do not match q "
                          f"{tuple(q.shape)} as [num_blocks, heads, block_size, head_dim]")
    if k_pool.shape[0] < 1:
        raise KernelError(f"{_WHERE}: the pools hold no blocks (shape {tuple(k_pool.shape)})")
    block_size = k_pool.shape[2]
    if not _power_of_two_in(block_size, 16, 256):
        raise KernelError(f"{_WHERE}: block_size (dim 2 of the pools) must be a power of two in 16..256, "
                          f"got {block_size}")
    if not _power_of_two_in(head_dim, 16, 256):
        raise KernelError(f"{_WHERE}: head_dim must be a power of two in 16..256, got {head_dim}")
    if q.dtype not in dtypes or k_pool.dtype != q.dtype or v_pool.dtype != q.dtype:
        names = "/".join(str(d).removeprefix("torch.") for d in dtypes)
        raise KernelError(f"{_WHERE}: q and the pools must share one of {names}, got "
                          f"{q.dtype}, {k_pool.dtype}, {v_pool.dtype}")
    if block_table.dim() != 2 or block_table.shape[0] != batch or block_table.dtype != torch.int32:
        raise KernelError(f"{_WHERE}: block_table must be int32 [{batch}, max_blocks], got "
                          f"{block_table.dtype} shape {tuple(block_table.shape)}")
    if seqlens.shape != (batch,) or seqlens.dtype != torch.int32:
        raise KernelError(f"{_WHERE}: seqlens must be int32 [{batch}], got {seqlens.dtype} "
                          f"shape {tuple(seqlens.shape)}")
    devices = {t.device for t in (q, k_pool, v_pool, block_table, seqlens)}
    if len(devices) != 1:
        raise KernelError(f"{_WHERE}: q, pools, block_table and seqlens must be on one device, "
                          f"got {sorted(map(str, devices))}")


def paged_decode_attention_reference(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                     block_table: torch.Tensor, seqlens: torch.Tensor,
                                     scale: float | None = None) -> torch.Tensor:
    """Plain-torch definition: softmax over each row's first `seqlens[b]` slots, gathered through
    its block table, in float32 (float64 inputs: float64).

    Masks instead of slicing, so no length or id is read back to the host (no sync). Table
    entries of blocks past a row's length are replaced by block 0 before the gather, and the
    slots past the length (those stand-ins, the tail of the last block) are masked out of both
    the scores and the values, so whatever they hold (stale data, inf, NaN) cannot reach the
    output. Lengths are clamped to the table's capacity `max_blocks * block_size`; a row of
    length 0 gives zeros.

    Args:
        q: `[B, heads, head_dim]`.
        k_pool, v_pool: `[num_blocks, heads, block_size, head_dim]`.
        block_table: int32 `[B, max_blocks]`.
        seqlens: int32 `[B]`.
        scale: softmax scale, default `1/sqrt(head_dim)`.

    Returns:
        `[B, heads, head_dim]`, contiguous, in q's dtype.
    """
    _check(q, k_pool, v_pool, block_table, seqlens, dtypes=_DTYPES + (torch.float64,))
    batch, heads, head_dim = q.shape
    block_size = k_pool.shape[2]
    max_blocks = block_table.shape[1]
    capacity = max_blocks * block_size
    scale = 1.0 / math.sqrt(head_dim) if scale is None else scale
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    slots = torch.arange(capacity, device=q.device)
    block_starts = torch.arange(max_blocks, device=q.device) * block_size
    for b in range(batch):  # one row at a time: a float32 copy of every row's blocks may not fit
        visible = slots < seqlens[b]  # (capacity,)
        used = block_starts < seqlens[b]  # (max_blocks,) the blocks holding visible slots
        ids = torch.where(used, block_table[b], 0).long()  # stale ids may be out of range
        # (max_blocks, heads, block_size, hd) -> (heads, capacity, hd), slots in logical order.
        k = k_pool[ids].to(acc).transpose(0, 1).reshape(heads, capacity, head_dim)
        v = v_pool[ids].to(acc).transpose(0, 1).reshape(heads, capacity, head_dim)
        # Zero hidden values rather than rely on a zero weight: 0 * NaN would still be NaN.
        v = torch.where(visible[None, :, None], v, 0.0)
        scores = torch.einsum("hd,hld->hl", q[b].to(acc), k) * scale
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)  # an all-hidden row: 0 instead of NaN
        out[b] = torch.einsum("hl,hld->hd", probs, v).to(q.dtype)
    return out


def paged_split_blocks(batch: int, heads: int, max_blocks: int, block_size: int) -> int:
    """Blocks per split, from host-known sizes only (never the lengths: that would sync).

    The contiguous kernel's slot plan (`decode_split_size` on the table's capacity), rounded to
    whole blocks: a split may not end inside a block, since its program looks up each block's
    id once. Both are powers of two, so a split is max(planned slots, one block).
    """
    slots = decode_split_size(batch, heads, max(1, max_blocks * block_size))
    return max(1, slots // block_size)


if HAVE_TRITON:
    @triton.jit
    def _paged_split_kernel(Q, K, V, TABLE, SEQLENS, M_PART, L_PART, O_PART, qk_scale, capacity,
                            stride_qb, stride_qh, stride_kn, stride_kh, stride_kt,
                            stride_vn, stride_vh, stride_vt, stride_tb, stride_ts,
                            HEAD_DIM: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                            SPLIT: tl.constexpr, BLOCK_N: tl.constexpr):
        split = tl.program_id(0)
        head = tl.program_id(1)
        row = tl.program_id(2)
        num_splits = tl.num_programs(0)
        heads = tl.num_programs(1)
        seq_len = tl.minimum(tl.load(SEQLENS + row), capacity)  # clamped: never past the table
        lo = split * SPLIT  # a multiple of BLOCK_SIZE: the split starts on a block boundary
        if lo >= seq_len:  # the split lies past the row's end: nothing to do, nothing written
            return

        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + row.to(tl.int64) * stride_qb + head * stride_qh + offs_d).to(tl.float32)
        table_row = TABLE + row.to(tl.int64) * stride_tb
        k_head = K + head.to(tl.int64) * stride_kh + offs_d[None, :]
        v_head = V + head.to(tl.int64) * stride_vh + offs_d[None, :]

        # Running max / sum as 0-d tensors (reductions of a block), so their type is loop-stable.
        m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
        acc = tl.zeros([HEAD_DIM], tl.float32)
        # A compile-time trip count (the split's tiles), masked past the row's end: masked loads
        # move no data, and the interpreter cannot take a run-time `range` bound (numpy >= 2.4).
        for i in range(SPLIT // BLOCK_N):
            start = lo + i * BLOCK_N
            cols = start + offs_n  # logical slots of this tile
            col_ok = cols < seq_len
            # Table entries past the row's end may be stale or out of range: their loads are
            # masked (giving block 0), and so is every k/v load of the slots behind them.
            if BLOCK_SIZE >= BLOCK_N:
                # The tile lies inside one block (lo is block-aligned): one table entry, and the
                # rows at fixed strides from the block's start, as in the contiguous op.
                phys = tl.load(table_row + (start // BLOCK_SIZE) * stride_ts, mask=start < seq_len,
                               other=0).to(tl.int64)
                rows = (i * BLOCK_N) % BLOCK_SIZE + offs_n  # offsets within the block
                k_ptrs = k_head + phys * stride_kn + rows[:, None] * stride_kt
                v_ptrs = v_head + phys * stride_vn + rows[:, None] * stride_vt
            else:
                # Blocks smaller than a tile: it spans BLOCK_N // BLOCK_SIZE of them, each slot's
                # block id gathered from the table, so a step loads as much as with large blocks
                # (16-slot tiles, one per 16-slot block, streamed at half the speed on an H200).
                phys = tl.load(table_row + (cols // BLOCK_SIZE) * stride_ts, mask=col_ok,
                               other=0).to(tl.int64)
                k_ptrs = k_head + (phys * stride_kn + (cols % BLOCK_SIZE) * stride_kt)[:, None]
                v_ptrs = v_head + (phys * stride_vn + (cols % BLOCK_SIZE) * stride_vt)[:, None]
            k = tl.load(k_ptrs, mask=col_ok[:, None], other=0.0)
            # One query: a dot of 1 x BLOCK_N is below tl.dot's 16-row minimum; a broadcast
            # multiply and row sum does it, and the step is bound by reading K and V anyway.
            s = tl.sum(q[None, :] * k.to(tl.float32), 1) * qk_scale  # (BLOCK_N,)
            s = tl.where(col_ok, s, float("-inf"))
            # A tile wholly past the end has max -inf: keep the old max so alpha = 1 and p = 0
            # (the first tile holds slot lo < seq_len, so m_i is finite from then on).
            m_new = tl.maximum(m_i, tl.max(s, 0))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)
            v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
            l_i = l_i * alpha + tl.sum(p, 0)
            m_i = m_new

        part = (row * heads + head) * num_splits + split  # index into [B, heads, splits]
        tl.store(M_PART + part, m_i)
        tl.store(L_PART + part, l_i)
        tl.store(O_PART + part.to(tl.int64) * HEAD_DIM + offs_d, acc)


def paged_decode_attention_triton(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor,
                                  block_table: torch.Tensor, seqlens: torch.Tensor, scale: float,
                                  split_blocks: int = 0) -> torch.Tensor:
    """Launch both kernels (no checks beyond making last dims contiguous); returns a new tensor.

    `split_blocks` (blocks per split, a power of two) 0 picks `paged_split_blocks(B, heads,
    max_blocks, block_size)`; tests pass 1 or 2 to get many splits from small tables.
    """
    q, k_pool, v_pool = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k_pool, v_pool))
    batch, heads, head_dim = q.shape
    block_size = k_pool.shape[2]
    max_blocks = block_table.shape[1]
    capacity = max_blocks * block_size
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, nh, hd)
    if batch == 0 or max_blocks == 0:
        return out.zero_()
    per_split = split_blocks or paged_split_blocks(batch, heads, max_blocks, block_size)
    split = per_split * block_size  # slots per split: whole blocks, a power of two
    num_splits = triton.cdiv(max_blocks, per_split)
    # Slots per loop step. On an H200 (bf16, 10 heads x 128, B 64-256, rows ~1200) 128-slot tiles
    # streamed 2800-3600 GB/s for block sizes 16/64/256 and 64-slot tiles 1850-3100 (the
    # contiguous op: ~2700-3000); with head_dim 256 a 128 x 256 fp32 tile would not fit in
    # registers, so 64 there (not measured).
    tile = 128 if head_dim <= 128 else 64
    f32 = dict(dtype=torch.float32, device=q.device)
    # Partials [B, heads, splits(, head_dim)], float32; slots of splits that do not run stay
    # unset and are never read.
    m_part = torch.empty(batch, heads, num_splits, **f32)
    l_part = torch.empty(batch, heads, num_splits, **f32)
    o_part = torch.empty(batch, heads, num_splits, head_dim, **f32)
    _paged_split_kernel[(num_splits, heads, batch)](
        q, k_pool, v_pool, block_table, seqlens, m_part, l_part, o_part, scale * _LOG2E, capacity,
        q.stride(0), q.stride(1), k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
        v_pool.stride(0), v_pool.stride(1), v_pool.stride(2), block_table.stride(0), block_table.stride(1),
        HEAD_DIM=head_dim, BLOCK_SIZE=block_size, SPLIT=split, BLOCK_N=min(tile, split), num_warps=4)
    # The combine needs only the split length in slots and the clamp; it never sees the table.
    _decode_combine_kernel[(heads, batch)](
        m_part, l_part, o_part, seqlens, out, capacity, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, SPLIT=split, NUM_SPLITS=num_splits, CHUNK=16,
        NUM_CHUNKS=triton.cdiv(num_splits, 16), num_warps=4)
    return out


# A custom op: one opaque node for torch.compile, capturable in CUDA graphs (the output and the
# partial buffers are allocated inside, from the graph's pool when capturing).
@torch.library.custom_op("deepseek_ocr::attention_paged_decode", mutates_args=())
def _paged_op(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor,
              seqlens: torch.Tensor, scale: float, split_blocks: int) -> torch.Tensor:
    return paged_decode_attention_triton(q, k_pool, v_pool, block_table, seqlens, scale, split_blocks)


@_paged_op.register_fake
def _(q, k_pool, v_pool, block_table, seqlens, scale, split_blocks):
    return q.new_empty(q.shape)


def _kernel_or_none(q: torch.Tensor, k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor,
                    seqlens: torch.Tensor, scale: float | None = None,
                    split_blocks: int = 0) -> torch.Tensor | None:
    """The seam's implementation: the kernels for CUDA tensors (and CPU tensors inside
    `triton_on_cpu()` under the interpreter), else None so the reference runs."""
    if not launchable(q, k_pool, v_pool, block_table, seqlens):
        return None
    _check(q, k_pool, v_pool, block_table, seqlens)
    if split_blocks < 0 or split_blocks & (split_blocks - 1):
        raise KernelError(f"{_WHERE}: split_blocks must be 0 (automatic) or a power of two, "
                          f"got {split_blocks}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.deepseek_ocr.attention_paged_decode(q, k_pool, v_pool, block_table, seqlens,
                                                         scale, int(split_blocks))


register("attention_paged_decode", _kernel_or_none)
