"""One new query per row over a contiguous KV cache (flash-decoding).

The engine's decode step reads a paged cache (`attention_paged.py`, which reuses this module's
combine kernel and split-size rule); this contiguous op remains for callers with a per-row cache
and for the kernel benchmarks. It is not a seam of the model.

The cache is `k_cache, v_cache [B, heads, L_max, head_dim]`; row b holds its sequence at slots
`0 .. seqlens[b]-1` (no left padding), the new token's k/v already written at `seqlens[b]-1`.

Two kernels. The first splits each row's keys into chunks of `split` slots and gives every
(split, head, row) a program that writes its partial max, sum of exponentials and unnormalised
output; a batch-1 step has only 10 heads, so without the split 10 programs would stream the whole
cache on 10 of the GPU's SMs. The second combines a row's splits. The number of splits depends on
L_max, B and heads only (host ints), so shapes are fixed and the call is CUDA-graph capturable;
splits past a row's length return at once and the combine reads only the ones that ran.
"""
from __future__ import annotations

import math

import torch

from ..errors import KernelError
from . import enabled
from ._common import HAVE_TRITON, launchable

if HAVE_TRITON:
    import triton
    import triton.language as tl

_LOG2E = 1.4426950408889634  # the kernels work in base 2: exp(x) = exp2(x * log2(e))
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def decode_attention_reference(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                               seqlens: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """Plain-torch definition: softmax over each row's first `seqlens[b]` slots, in float32 (float64
    inputs: float64).

    Masks instead of slicing, so it reads no length back to the host (no sync; capturable).
    Lengths are clamped to L_max; a row of length 0 gives zeros.

    Args:
        q: `[B, heads, head_dim]`.
        k_cache, v_cache: `[B, heads, L_max, head_dim]`.
        seqlens: int32 `[B]`.
        scale: softmax scale, default `1/sqrt(head_dim)`.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty_like(q)
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    slots = torch.arange(k_cache.shape[2], device=q.device)
    for b in range(q.shape[0]):  # one row at a time: a float32 copy of the whole cache may not fit
        visible = slots < seqlens[b]  # (L_max,)
        scores = torch.einsum("hd,hld->hl", q[b].to(acc), k_cache[b].to(acc)) * scale
        probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)
        probs = torch.nan_to_num(probs, nan=0.0)  # an all-hidden row: 0 instead of NaN
        out[b] = torch.einsum("hl,hld->hd", probs, v_cache[b].to(acc)).to(q.dtype)
    return out


def _check(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
           seqlens: torch.Tensor) -> None:
    """Raise KernelError, saying what and where, for inputs outside this op's contract."""
    where = "decode_attention"
    if q.dim() != 3 or k_cache.dim() != 4:
        raise KernelError(f"{where}: q must be [B, heads, head_dim] and the caches [B, heads, L_max, "
                          f"head_dim], got {tuple(q.shape)} and {tuple(k_cache.shape)}")
    b, h, d = q.shape
    if v_cache.shape != k_cache.shape or (k_cache.shape[0], k_cache.shape[1], k_cache.shape[3]) != (b, h, d):
        raise KernelError(f"{where}: caches {tuple(k_cache.shape)}, {tuple(v_cache.shape)} do not match "
                          f"q {tuple(q.shape)} as [B, heads, L_max, head_dim]")
    if q.dtype not in _DTYPES or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        raise KernelError(f"{where}: q and the caches must share one of float16/bfloat16/float32, got "
                          f"{q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if d < 16 or d > 256 or d & (d - 1):
        raise KernelError(f"{where}: head_dim must be a power of two in 16..256, got {d}")
    if seqlens.shape != (b,) or seqlens.dtype != torch.int32:
        raise KernelError(f"{where}: seqlens must be int32 [{b}], got {seqlens.dtype} "
                          f"shape {tuple(seqlens.shape)}")
    devices = {t.device for t in (q, k_cache, v_cache, seqlens)}
    if len(devices) != 1:
        raise KernelError(f"{where}: q, caches and seqlens must be on one device, "
                          f"got {sorted(map(str, devices))}")


def decode_split_size(batch: int, heads: int, l_max: int) -> int:
    """Cache slots per split, from host-known sizes only (never the lengths: that would sync).

    The lengths are unknown, so this plans for rows about L_max/8 long (1024 of an 8192 cache)
    and aims at ~2048 programs that do work (16 per SM of an H100), rounding the split down to a
    power of two: batch 1 gets 64-slot splits (16 splits x 10 heads at length 1000), batch 64
    256, batch 256 512. Larger splits also keep the partial buffers [B, heads, splits, head_dim]
    small. A power of two in 64..512, lowered to L_max rounded up (at least 16) for tiny caches.
    """
    per_row = max(1, 2048 // max(1, batch * heads))  # splits wanted per (row, head)
    want = max(1, l_max // 8) // per_row
    split = 64
    while split * 2 <= want and split < 512:
        split *= 2
    return min(split, max(16, 1 << (l_max - 1).bit_length()))


if HAVE_TRITON:
    @triton.jit
    def _decode_split_kernel(Q, K, V, SEQLENS, M_PART, L_PART, O_PART, qk_scale, l_max,
                             stride_qb, stride_qh, stride_kb, stride_kh, stride_kt,
                             stride_vb, stride_vh, stride_vt,
                             HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr, BLOCK_N: tl.constexpr):
        split = tl.program_id(0)
        head = tl.program_id(1)
        row = tl.program_id(2)
        num_splits = tl.num_programs(0)
        heads = tl.num_programs(1)
        seq_len = tl.minimum(tl.load(SEQLENS + row), l_max)  # clamped: never read past the cache
        lo = split * SPLIT
        if lo >= seq_len:  # this split lies past the row's end: nothing to do, nothing written
            return
        hi = tl.minimum(lo + SPLIT, seq_len)

        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        q = tl.load(Q + row.to(tl.int64) * stride_qb + head * stride_qh + offs_d).to(tl.float32)
        k_base = K + row.to(tl.int64) * stride_kb + head.to(tl.int64) * stride_kh + offs_d[None, :]
        v_base = V + row.to(tl.int64) * stride_vb + head.to(tl.int64) * stride_vh + offs_d[None, :]

        # Running max / sum as 0-d tensors (reductions of a block), so their type is loop-stable.
        m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
        acc = tl.zeros([HEAD_DIM], tl.float32)
        # A compile-time trip count (the split's blocks), masked past `hi`: masked loads move no
        # data, and the interpreter cannot take a run-time `range` bound (numpy >= 2.4).
        for i in range(SPLIT // BLOCK_N):
            cols = lo + i * BLOCK_N + offs_n
            col_ok = cols < hi
            k = tl.load(k_base + cols[:, None].to(tl.int64) * stride_kt, mask=col_ok[:, None], other=0.0)
            # One query: a dot of 1 x BLOCK_N is below tl.dot's 16-row minimum; a broadcast
            # multiply and row sum does it, and this step is bound by reading K and V anyway.
            s = tl.sum(q[None, :] * k.to(tl.float32), 1) * qk_scale  # (BLOCK_N,)
            s = tl.where(col_ok, s, float("-inf"))
            # A block wholly past `hi` has max -inf: keep the old max so alpha = 1 and p = 0
            # (the first block always holds slot lo < hi, so m_i is finite from then on).
            m_new = tl.maximum(m_i, tl.max(s, 0))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new)
            v = tl.load(v_base + cols[:, None].to(tl.int64) * stride_vt, mask=col_ok[:, None], other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), 0)
            l_i = l_i * alpha + tl.sum(p, 0)
            m_i = m_new

        part = (row * heads + head) * num_splits + split  # index into [B, heads, splits]
        tl.store(M_PART + part, m_i)
        tl.store(L_PART + part, l_i)
        tl.store(O_PART + part.to(tl.int64) * HEAD_DIM + offs_d, acc)

    @triton.jit
    def _decode_combine_kernel(M_PART, L_PART, O_PART, SEQLENS, OUT, l_max, stride_ob, stride_oh,
                               HEAD_DIM: tl.constexpr, SPLIT: tl.constexpr,
                               NUM_SPLITS: tl.constexpr, CHUNK: tl.constexpr,
                               NUM_CHUNKS: tl.constexpr):
        head = tl.program_id(0)
        row = tl.program_id(1)
        heads = tl.num_programs(0)
        seq_len = tl.minimum(tl.load(SEQLENS + row), l_max)
        ran = (seq_len + SPLIT - 1) // SPLIT  # the splits that wrote partials (0 for an empty row)
        offs_d = tl.arange(0, HEAD_DIM)
        offs_c = tl.arange(0, CHUNK)
        base = (row * heads + head) * NUM_SPLITS

        # Pass 1: the row's global max over the splits that ran.
        m_all = tl.max(tl.full([CHUNK], float("-inf"), tl.float32), 0)
        for c in range(NUM_CHUNKS):  # compile-time trip count, masked past `ran`
            ids = c * CHUNK + offs_c
            m_all = tl.maximum(m_all, tl.max(tl.load(M_PART + base + ids, mask=ids < ran,
                                                     other=float("-inf")), 0))
        # Pass 2: rescale each split's sum and output to that max and add them up. Splits that
        # did not run are masked: their weight is 0 and their (unset) partials are never loaded.
        l_all = tl.sum(tl.zeros([CHUNK], tl.float32), 0)
        acc = tl.zeros([HEAD_DIM], tl.float32)
        for c in range(NUM_CHUNKS):  # compile-time trip count, masked past `ran`
            ids = c * CHUNK + offs_c
            ok = ids < ran
            m_s = tl.load(M_PART + base + ids, mask=ok, other=0.0)
            w = tl.where(ok, tl.exp2(m_s - m_all), 0.0)  # (CHUNK,)
            l_all += tl.sum(w * tl.load(L_PART + base + ids, mask=ok, other=0.0), 0)
            o = tl.load(O_PART + (base + ids)[:, None].to(tl.int64) * HEAD_DIM + offs_d[None, :],
                        mask=ok[:, None], other=0.0)  # (CHUNK, hd)
            acc += tl.sum(w[:, None] * o, 0)
        out = acc / tl.where(l_all > 0, l_all, 1.0)  # an empty row (no split ran) gives zeros
        tl.store(OUT + row.to(tl.int64) * stride_ob + head * stride_oh + offs_d, out.to(OUT.dtype.element_ty))


def decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                            seqlens: torch.Tensor, scale: float, split_size: int = 0) -> torch.Tensor:
    """Launch both kernels (no checks beyond making last dims contiguous); returns a new tensor.

    `split_size` 0 picks `decode_split_size(B, heads, L_max)`; tests pass small powers of two to
    get many splits from small caches.
    """
    q, k_cache, v_cache = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k_cache, v_cache))
    batch, heads, head_dim = q.shape
    l_max = k_cache.shape[2]
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (B, nh, hd)
    if batch == 0 or l_max == 0:
        return out.zero_()
    split = split_size or decode_split_size(batch, heads, l_max)
    num_splits = triton.cdiv(l_max, split)
    f32 = dict(dtype=torch.float32, device=q.device)
    # Partials [B, heads, splits(, head_dim)], float32; slots of splits that do not run stay unset
    # and are never read.
    m_part = torch.empty(batch, heads, num_splits, **f32)
    l_part = torch.empty(batch, heads, num_splits, **f32)
    o_part = torch.empty(batch, heads, num_splits, head_dim, **f32)
    _decode_split_kernel[(num_splits, heads, batch)](
        q, k_cache, v_cache, seqlens, m_part, l_part, o_part, scale * _LOG2E, l_max,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HEAD_DIM=head_dim, SPLIT=split, BLOCK_N=min(64, split), num_warps=4)
    _decode_combine_kernel[(heads, batch)](
        m_part, l_part, o_part, seqlens, out, l_max, out.stride(0), out.stride(1),
        HEAD_DIM=head_dim, SPLIT=split, NUM_SPLITS=num_splits, CHUNK=16,
        NUM_CHUNKS=triton.cdiv(num_splits, 16), num_warps=4)
    return out


# A custom op: one opaque node for torch.compile, capturable in CUDA graphs (the outputs and the
# partial buffers are allocated inside, from the graph's pool when capturing).
@torch.library.custom_op("deepseek_ocr::attention_decode", mutates_args=())
def _decode_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, seqlens: torch.Tensor,
               scale: float, split_size: int) -> torch.Tensor:
    return decode_attention_triton(q, k_cache, v_cache, seqlens, scale, split_size)


@_decode_op.register_fake
def _(q, k_cache, v_cache, seqlens, scale, split_size):
    return q.new_empty(q.shape)


def _kernel_or_none(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    seqlens: torch.Tensor, scale: float | None = None,
                    split_size: int = 0) -> torch.Tensor | None:
    """The seam's implementation: the kernels where they can launch, else None (the reference runs)."""
    if not launchable(q, k_cache, v_cache, seqlens):
        return None
    _check(q, k_cache, v_cache, seqlens)
    if split_size and (split_size < 16 or split_size & (split_size - 1)):
        raise KernelError(f"decode_attention: split_size must be 0 or a power of two >= 16, got {split_size}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.deepseek_ocr.attention_decode(q, k_cache, v_cache, seqlens, scale, int(split_size))


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                     seqlens: torch.Tensor, scale: float | None = None,
                     split_size: int = 0) -> torch.Tensor:
    """Attention of one new query per row over that row's cached slots: the Triton kernels when
    they can launch and kernels are enabled, else the reference.

    Args:
        q: `[B, heads, head_dim]`, RoPE applied; head_dim a power of two (64, 128 tested).
        k_cache, v_cache: `[B, heads, L_max, head_dim]`, any strides with the last dim contiguous.
        seqlens: int32 `[B]`: row b attends to slots `0..seqlens[b]-1` (clamped to L_max; 0 gives
            zeros). Read on the device only.
        scale: softmax scale, default `1/sqrt(head_dim)`.
        split_size: cache slots per split (a power of two >= 16), 0 for `decode_split_size`.

    Returns:
        `[B, heads, head_dim]`, contiguous, in q's dtype.
    """
    _check(q, k_cache, v_cache, seqlens)
    if enabled():
        out = _kernel_or_none(q, k_cache, v_cache, seqlens, scale, split_size)
        if out is not None:
            return out
    return decode_attention_reference(q, k_cache, v_cache, seqlens, scale)

