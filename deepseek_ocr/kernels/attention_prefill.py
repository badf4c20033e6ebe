"""Causal attention over packed ("varlen") sequences: the decoder's prefill.

`q, k, v [total_tokens, heads, head_dim]` hold B sequences back to back; sequence b is rows
`cu_seqlens[b] .. cu_seqlens[b+1]-1` and attends causally within itself only. RoPE is already
applied by the caller; there is no GQA (as many k/v heads as q heads).

The Triton kernel is flash-attention style: one program per (block of BLOCK_M queries, sequence,
head) streams the sequence's keys in blocks of BLOCK_N with an online softmax, accumulating in
float32. Its grid comes from `max_seqlen`, a Python int the caller knows, so nothing is read back
from the device; programs whose query block starts past their sequence's end return at once.
"""
from __future__ import annotations

import math

import torch

from ..errors import KernelError
from . import enabled, register
from ._common import HAVE_TRITON, interpreting, launchable

if HAVE_TRITON:
    import triton
    import triton.language as tl

_LOG2E = 1.4426950408889634  # the kernel works in base 2: exp(x) = exp2(x * log2(e))
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def prefill_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                cu_seqlens: torch.Tensor, max_seqlen: int,
                                scale: float | None = None) -> torch.Tensor:
    """Plain-torch definition: one explicit causal softmax per sequence, in float32 (float64 inputs:
    float64).

    Reads `cu_seqlens` back to the host (a sync); `max_seqlen` is unused here.

    Args:
        q, k, v: `[total_tokens, heads, head_dim]`.
        cu_seqlens: int32 `[B+1]`, the sequences' start rows then total_tokens.
        max_seqlen: the longest sequence (kept for the same signature as the kernel).
        scale: softmax scale, default `1/sqrt(head_dim)`.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = torch.empty_like(q)
    acc = torch.promote_types(q.dtype, torch.float32)  # float32, or float64 for float64 inputs
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end <= start:
            continue
        qs, ks, vs = (x[start:end].to(acc).transpose(0, 1) for x in (q, k, v))  # (nh, T, hd)
        scores = qs @ ks.transpose(1, 2) * scale  # (nh, T, T)
        t = end - start
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        probs = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        out[start:end] = (probs @ vs).transpose(0, 1).to(q.dtype)  # (T, nh, hd)
    return out


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
           max_seqlen: int) -> None:
    """Raise KernelError, saying what and where, for inputs outside this op's contract."""
    where = "prefill_attention"
    if q.dim() != 3:
        raise KernelError(f"{where}: q must be [total_tokens, heads, head_dim], got shape {tuple(q.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise KernelError(f"{where}: q, k, v must have one shape, got {tuple(q.shape)}, "
                          f"{tuple(k.shape)}, {tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        raise KernelError(f"{where}: q, k, v must share one of float16/bfloat16/float32, got "
                          f"{q.dtype}, {k.dtype}, {v.dtype}")
    head_dim = q.shape[-1]
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        raise KernelError(f"{where}: head_dim must be a power of two in 16..256, got {head_dim}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2 or cu_seqlens.dtype != torch.int32:
        raise KernelError(f"{where}: cu_seqlens must be int32 [B+1] with B >= 1, got "
                          f"{cu_seqlens.dtype} shape {tuple(cu_seqlens.shape)}")
    devices = {t.device for t in (q, k, v, cu_seqlens)}
    if len(devices) != 1:
        raise KernelError(f"{where}: q, k, v, cu_seqlens must be on one device, "
                          f"got {sorted(map(str, devices))}")
    if not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise KernelError(f"{where}: max_seqlen must be a non-negative Python int, got {max_seqlen!r}")


if HAVE_TRITON:
    @triton.jit
    def _attend_block(acc, m_i, l_i, q, k_ptrs, v_ptrs, offs_m, cols, seq_len, qk_scale,
                      MASKED: tl.constexpr, IEEE: tl.constexpr):
        """One online-softmax step over a block of keys; scores are in base 2 (scaled by log2 e)."""
        if MASKED:
            col_ok = cols < seq_len
            k = tl.load(k_ptrs, mask=col_ok[:, None], other=0.0)  # (BLOCK_N, hd)
            v = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
            v = tl.load(v_ptrs)
        if IEEE:  # float32 inputs: a true float32 product, not TF32 (parity runs in float32)
            s = tl.dot(q, tl.trans(k), input_precision="ieee")
        else:
            s = tl.dot(q, tl.trans(k))
        s = s * qk_scale  # (BLOCK_M, BLOCK_N)
        if MASKED:
            visible = (cols[None, :] <= offs_m[:, None]) & col_ok[None, :]
            s = tl.where(visible, s, float("-inf"))
        # Every row sees a finite score in its first block (the diagonal block holds the row's own
        # key, the off-diagonal ones are fully visible), so m_new is finite and alpha never NaN.
        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        if IEEE:
            acc = acc * alpha[:, None] + tl.dot(p, v, input_precision="ieee")
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        return acc, m_new, l_i

    @triton.jit
    def _attend_range(acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, offs_n,
                      lo, hi, seq_len, qk_scale, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
                      IEEE: tl.constexpr, INTERPRET: tl.constexpr):
        """Key blocks lo, lo+BLOCK_N, .. < hi. Compiled, a `for` loop (software-pipelined); under
        the interpreter a `while` loop, as Triton 3.6's interpreter cannot take a run-time `range`
        bound with numpy >= 2.4 (it calls int() on a 1-element array). Same body either way."""
        if INTERPRET:
            n_start = lo
            while n_start < hi:
                cols = n_start + offs_n
                acc, m_i, l_i = _attend_block(acc, m_i, l_i, q,
                                              k_base + cols[:, None].to(tl.int64) * stride_kt,
                                              v_base + cols[:, None].to(tl.int64) * stride_vt,
                                              offs_m, cols, seq_len, qk_scale, MASKED, IEEE)
                n_start += BLOCK_N
        else:
            for n_start in range(lo, hi, BLOCK_N):
                cols = n_start + offs_n
                acc, m_i, l_i = _attend_block(acc, m_i, l_i, q,
                                              k_base + cols[:, None].to(tl.int64) * stride_kt,
                                              v_base + cols[:, None].to(tl.int64) * stride_vt,
                                              offs_m, cols, seq_len, qk_scale, MASKED, IEEE)
        return acc, m_i, l_i

    @triton.jit
    def _prefill_kernel(Q, K, V, O, CU, qk_scale,
                        stride_qt, stride_qh, stride_kt, stride_kh,
                        stride_vt, stride_vh, stride_ot, stride_oh,
                        HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        IEEE: tl.constexpr, INTERPRET: tl.constexpr):
        pid_m = tl.program_id(0)
        seq = tl.program_id(1)
        head = tl.program_id(2)
        start = tl.load(CU + seq)
        seq_len = tl.load(CU + seq + 1) - start
        m_start = pid_m * BLOCK_M
        if m_start >= seq_len:  # the grid is sized for max_seqlen; shorter sequences stop here
            return

        offs_m = m_start + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        row_ok = offs_m < seq_len
        rows = (start + offs_m).to(tl.int64)  # int64: packs of many pages pass 2**31 elements
        q = tl.load(Q + rows[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=row_ok[:, None], other=0.0)  # (BLOCK_M, hd)
        k_base = K + start.to(tl.int64) * stride_kt + head * stride_kh + offs_d[None, :]
        v_base = V + start.to(tl.int64) * stride_vt + head * stride_vh + offs_d[None, :]

        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        # Keys before the query block are visible to all its rows and lie inside the sequence
        # (BLOCK_M is a multiple of BLOCK_N): no mask needed.
        acc, m_i, l_i = _attend_range(acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt,
                                      offs_m, offs_n, 0, m_start, seq_len, qk_scale,
                                      BLOCK_N, False, IEEE, INTERPRET)
        # The diagonal: causal mask and the sequence's end.
        acc, m_i, l_i = _attend_range(acc, m_i, l_i, q, k_base, v_base, stride_kt, stride_vt,
                                      offs_m, offs_n, m_start, tl.minimum(m_start + BLOCK_M, seq_len),
                                      seq_len, qk_scale, BLOCK_N, True, IEEE, INTERPRET)
        acc = acc / l_i[:, None]
        tl.store(O + rows[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
                 acc.to(O.dtype.element_ty), mask=row_ok[:, None])


def _prefill_config(max_seqlen: int, batch: int, heads: int, head_dim: int,
                    elem_size: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) from host-known sizes only.

    128-query blocks halve the K/V re-reads, but one 913-token page then makes only 8 x 10 = 80
    programs, fewer than an H100's 132 SMs; below ~2 programs per SM the 64-query blocks win.
    Shared memory holds the Q block plus num_stages K and V blocks; the sizes are kept near 128
    KiB of the H100's 227 (float32 and head_dim 256 would pass it at the 16-bit sizes).
    Untuned: these are the usual flash-attention starting points, not measured here.
    """
    if head_dim * elem_size > 256:  # float32 x 128, or 16-bit x 256
        return 64, 32, 4, 2
    if triton.cdiv(max_seqlen, 128) * batch * heads >= 264:
        return 128, 64, 8, 3
    return 64, 64, 4, 3


def prefill_attention_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                             cu_seqlens: torch.Tensor, max_seqlen: int, scale: float) -> torch.Tensor:
    """Launch the kernel (no checks beyond making the last dim contiguous); returns a new tensor."""
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # (total, nh, hd), contiguous
    batch = cu_seqlens.numel() - 1
    total, heads, head_dim = q.shape
    if total == 0 or max_seqlen == 0 or batch == 0:
        return out
    block_m, block_n, warps, stages = _prefill_config(max_seqlen, batch, heads, head_dim,
                                                      q.element_size())
    grid = (triton.cdiv(max_seqlen, block_m), batch, heads)
    _prefill_kernel[grid](q, k, v, out, cu_seqlens, scale * _LOG2E,
                          q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                          v.stride(0), v.stride(1), out.stride(0), out.stride(1),
                          HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_N=block_n,
                          IEEE=q.dtype == torch.float32, INTERPRET=interpreting(),
                          num_warps=warps, num_stages=stages)
    return out


# A custom op makes the launch one opaque node for torch.compile and keeps it capturable in CUDA
# graphs (its output is allocated inside, from the graph's pool).
@torch.library.custom_op("deepseek_ocr::attention_prefill", mutates_args=())
def _prefill_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                max_seqlen: int, scale: float) -> torch.Tensor:
    return prefill_attention_triton(q, k, v, cu_seqlens, max_seqlen, scale)


@_prefill_op.register_fake
def _(q, k, v, cu_seqlens, max_seqlen, scale):
    return q.new_empty(q.shape)


def _kernel_or_none(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                    max_seqlen: int, scale: float | None = None) -> torch.Tensor | None:
    """The seam's implementation: the kernel where it can launch, else None (the reference runs)."""
    if not launchable(q, k, v, cu_seqlens):
        return None
    _check(q, k, v, cu_seqlens, max_seqlen)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return torch.ops.deepseek_ocr.attention_prefill(q, k, v, cu_seqlens, max_seqlen, scale)


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens: torch.Tensor,
                      max_seqlen: int, scale: float | None = None) -> torch.Tensor:
    """Causal attention within each packed sequence: the Triton kernel when it can launch and
    kernels are enabled, else the reference.

    Args:
        q, k, v: `[total_tokens, heads, head_dim]`, RoPE applied; any strides with the last dim
            contiguous (others are copied). head_dim a power of two (64 and 128 are the tested ones).
        cu_seqlens: int32 `[B+1]` on the same device: sequence b is rows `cu[b]..cu[b+1]-1`.
        max_seqlen: Python int >= every sequence's length (it sizes the grid; a longer sequence
            would be left partly uncomputed, and checking would need a device sync).
        scale: softmax scale, default `1/sqrt(head_dim)`.

    Returns:
        `[total_tokens, heads, head_dim]`, contiguous, in q's dtype.
    """
    _check(q, k, v, cu_seqlens, max_seqlen)
    if enabled():
        out = _kernel_or_none(q, k, v, cu_seqlens, max_seqlen, scale)
        if out is not None:
            return out
    return prefill_attention_reference(q, k, v, cu_seqlens, max_seqlen, scale)


register("attention_prefill", _kernel_or_none)
