"""The small elementwise work of a decode layer in two launches: add + RMSNorm, rotary + KV store.

A batch-1 decode step is bound by launches, not bytes: in plain torch an RMSNorm is eight
kernels (cast, pow, mean, add, rsqrt, mul, cast, mul), the rotary embedding of q and k ten
(slices, neg, cat, muls, adds) and the paged-cache write seven (index arithmetic, two
index_put), each 1-3 us on an H200 for a few KB of data. Here:

* `add_rms_norm`: one program per row adds the residual (rounded to the input dtype, as torch's
  add) and normalises: float32 statistics, `x * rsqrt(mean(x^2) + eps)` cast to the input dtype,
  times the weight, rounded once more (`decoder.model.RMSNorm`). It returns the sum too, so the
  decoder carries its residual stream through the layers (`residual=None`: a plain norm).
* `rope_and_store`: one program per (row, head) takes q, k, v of one decode step from the fused
  projection `[B, 3*heads*head_dim]`, rotates q and k with the rotate-half convention
  (`decoder.attention`), writes k and v into the paged pools at the row's slot `seqlens[r]`, and
  returns q. cos/sin are inputs (computed once per step for all layers): an in-kernel cos/sin
  would not equal torch's bit for bit.

The references below are the definitions (the same torch ops, in the same order, as the model
and the cache compute them). The rotary kernel reproduces their rounding exactly: every product
and the sum rounded to the activation dtype, and no FMA contraction (`enable_fp_fusion=False`),
which would skip the rounding of a float32 product. The norm matches to a rounding: its sum of
squares runs in another order than torch's mean. No kernel reads anything back to the host, so
both are CUDA-graph capturable.
"""
from __future__ import annotations

import torch

from ..errors import KernelError
from . import register
from ._common import HAVE_TRITON, launchable

if HAVE_TRITON:
    import triton
    import triton.language as tl

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_MAX_COLS = 16384  # one row in one program's registers; wider rows take the reference


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    """The custom ops have no backward: calls autograd would record take the reference."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


# ---------------------------------------------------------------------------- references


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                           eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`(norm(x + residual), x + residual)`; with `residual=None`, `(norm(x), x)`.

    The norm is `decoder.model.RMSNorm.forward` op for op (so equal to it bit for bit): float32
    statistics (float64 for float64 inputs), cast to the input dtype, times the weight.
    """
    res = x if residual is None else x + residual
    dtype = res.dtype
    xf = res.to(torch.promote_types(dtype, torch.float32))
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(dtype), res


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    # decoder.attention.rotate_half (tests check they agree); not imported: the decoder imports
    # this package, and the kernels do not depend on the model's modules.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_and_store_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                             k_pool: torch.Tensor, v_pool: torch.Tensor, block_table: torch.Tensor,
                             seqlens: torch.Tensor) -> torch.Tensor:
    """Rotary on q and k of one decode step, k and v stored in the paged pools; returns q.

    Args:
        qkv: `[B, 3*heads*head_dim]` (q, k, v, each heads x head_dim), before rotary.
        cos, sin: `[B, head_dim]` or `[B, 1, head_dim]`, in qkv's dtype (`rope_cos_sin`).
        k_pool, v_pool: `[num_blocks, heads, block_size, head_dim]`; written in place.
        block_table: int32 `[B, max_blocks]`; seqlens: int32 `[B]`, row r's new slot.

    Returns:
        rotated q `[B, heads, head_dim]`. Row r's k/v go to block `block_table[r, s // block_size]`
        at offset `s % block_size`, `s = seqlens[r]` (what `FastDecoder` and `PagedBatch.write_step`
        did before this op existed).
    """
    b = qkv.shape[0]
    heads, block_size, head_dim = k_pool.shape[1], k_pool.shape[2], k_pool.shape[3]
    q, k, v = qkv.view(b, 3, heads, head_dim).unbind(1)  # (B, heads, hd)
    cos, sin = cos.reshape(b, 1, head_dim), sin.reshape(b, 1, head_dim)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    pos = seqlens.long()
    blocks = block_table[torch.arange(b, device=qkv.device), pos // block_size].long()
    offsets = pos % block_size
    k_pool[blocks, :, offsets] = k
    v_pool[blocks, :, offsets] = v
    return q


# ---------------------------------------------------------------------------- kernels

if HAVE_TRITON:
    @triton.jit
    def _add_rms_norm_kernel(X, R, W, H_OUT, R_OUT, eps, n_cols, stride_x, stride_r, stride_h, stride_ro,
                             HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.arange(0, BLOCK)
        ok = offs < n_cols
        x = tl.load(X + row * stride_x + offs, mask=ok, other=0.0)
        if HAS_RESIDUAL:
            r = tl.load(R + row * stride_r + offs, mask=ok, other=0.0)
            # torch adds half types in float32 and rounds the sum once: the same here.
            x = (x.to(tl.float32) + r.to(tl.float32)).to(R_OUT.dtype.element_ty)
            tl.store(R_OUT + row * stride_ro + offs, x, mask=ok)
        xf = x.to(tl.float32)
        mean_sq = tl.sum(xf * xf, axis=0) / n_cols  # masked columns are 0: they add nothing
        normed = (xf * tl.rsqrt(mean_sq + eps)).to(H_OUT.dtype.element_ty)  # RMSNorm's cast back
        w = tl.load(W + offs, mask=ok, other=0.0)
        # `weight * normed` in the input dtype: a float32 product rounded once, as torch does.
        tl.store(H_OUT + row * stride_h + offs,
                 (normed.to(tl.float32) * w.to(tl.float32)).to(H_OUT.dtype.element_ty), mask=ok)

    @triton.jit
    def _rope_store_kernel(QKV, COS, SIN, K_POOL, V_POOL, TABLE, SEQLENS, Q_OUT, max_blocks,
                           stride_x, stride_cos, stride_sin, stride_pn, stride_ph, stride_pt,
                           stride_vn, stride_vh, stride_vt, stride_tb, stride_ts, stride_qb, stride_qh,
                           HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_HALF: tl.constexpr,
                           BLOCK_SIZE: tl.constexpr):
        row = tl.program_id(0)
        head = tl.program_id(1)
        dtype = Q_OUT.dtype.element_ty
        HALF: tl.constexpr = HEAD_DIM // 2
        offs = tl.arange(0, BLOCK_HALF)
        ok = offs < HALF
        # Each half of cos/sin is loaded as given: the kernel does not assume the table repeats.
        cos_row = COS + row.to(tl.int64) * stride_cos
        sin_row = SIN + row.to(tl.int64) * stride_sin
        c1 = tl.load(cos_row + offs, mask=ok, other=0.0).to(tl.float32)
        c2 = tl.load(cos_row + HALF + offs, mask=ok, other=0.0).to(tl.float32)
        s1 = tl.load(sin_row + offs, mask=ok, other=0.0).to(tl.float32)
        s2 = tl.load(sin_row + HALF + offs, mask=ok, other=0.0).to(tl.float32)

        q_in = QKV + row.to(tl.int64) * stride_x + head * HEAD_DIM
        k_in = q_in + HEADS * HEAD_DIM
        v_in = k_in + HEADS * HEAD_DIM
        # `x * cos + rotate_half(x) * sin`, rotate_half(x) = [-x2, x1]: each product and the sum
        # rounded to the activation dtype, as torch's separate kernels round them.
        x1 = tl.load(q_in + offs, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(q_in + HALF + offs, mask=ok, other=0.0).to(tl.float32)
        q1 = ((x1 * c1).to(dtype).to(tl.float32) + (-x2 * s1).to(dtype).to(tl.float32)).to(dtype)
        q2 = ((x2 * c2).to(dtype).to(tl.float32) + (x1 * s2).to(dtype).to(tl.float32)).to(dtype)
        x1 = tl.load(k_in + offs, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(k_in + HALF + offs, mask=ok, other=0.0).to(tl.float32)
        k1 = ((x1 * c1).to(dtype).to(tl.float32) + (-x2 * s1).to(dtype).to(tl.float32)).to(dtype)
        k2 = ((x2 * c2).to(dtype).to(tl.float32) + (x1 * s2).to(dtype).to(tl.float32)).to(dtype)
        q_out = Q_OUT + row.to(tl.int64) * stride_qb + head * stride_qh
        tl.store(q_out + offs, q1, mask=ok)
        tl.store(q_out + HALF + offs, q2, mask=ok)

        # The row's new slot. A slot past the table (out of contract: the reference would fail
        # on the index) stores nothing rather than write through a stray table read.
        slot = tl.load(SEQLENS + row)
        col = slot // BLOCK_SIZE
        inside = (slot >= 0) & (col < max_blocks)
        block = tl.load(TABLE + row.to(tl.int64) * stride_tb + col * stride_ts, mask=inside, other=0)
        # int64: a pool may hold more than 2**31 elements.
        k_dst = (K_POOL + block.to(tl.int64) * stride_pn + head.to(tl.int64) * stride_ph
                 + (slot % BLOCK_SIZE).to(tl.int64) * stride_pt)
        v_dst = (V_POOL + block.to(tl.int64) * stride_vn + head.to(tl.int64) * stride_vh
                 + (slot % BLOCK_SIZE).to(tl.int64) * stride_vt)
        # The store mask as a bound (0 when not inside): the interpreter cannot use the mask
        # `ok & inside` (a vector and a scalar) for a store.
        st = offs < HALF * inside.to(tl.int32)
        tl.store(k_dst + offs, k1, mask=st)
        tl.store(k_dst + HALF + offs, k2, mask=st)
        v1 = tl.load(v_in + offs, mask=ok, other=0.0)
        v2 = tl.load(v_in + HALF + offs, mask=ok, other=0.0)
        tl.store(v_dst + offs, v1.to(dtype), mask=st)
        tl.store(v_dst + HALF + offs, v2.to(dtype), mask=st)


def _row_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def add_rms_norm_triton(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch the norm kernel on `[..., H]` inputs (checked by the caller); new output tensors.

    With `residual=None` the second value is `x` itself, as in the reference.
    """
    shape = x.shape
    cols = shape[-1]
    x2 = _row_contiguous(x.reshape(-1, cols))
    rows = x2.shape[0]
    h = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
    if residual is None:
        r2, res = x2, x
    else:
        r2 = _row_contiguous(residual.reshape(-1, cols))
        res = torch.empty((rows, cols), dtype=x.dtype, device=x.device)
    if rows:
        block = max(16, triton.next_power_of_2(cols))  # no 1-element tiles: masked lanes are free
        # 4 warps keep 16 float32 values per thread at the decoder's width (1280 -> 2048).
        warps = 4 if block <= 2048 else (8 if block <= 8192 else 16)
        _add_rms_norm_kernel[(rows,)](
            x2, r2, weight, h, res, float(eps), cols, x2.stride(0), r2.stride(0), h.stride(0),
            res.stride(0) if residual is not None else 0,
            HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=warps, enable_fp_fusion=False)
    return h.view(shape), (res if residual is None else res.view(shape))


def rope_and_store_triton(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_pool: torch.Tensor,
                          v_pool: torch.Tensor, block_table: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
    """Launch the rotary/store kernel (inputs checked by the caller); returns a new q tensor."""
    b = qkv.shape[0]
    heads, block_size, head_dim = k_pool.shape[1], k_pool.shape[2], k_pool.shape[3]
    qkv = _row_contiguous(qkv)
    cos, sin = (_row_contiguous(t.reshape(b, head_dim)) for t in (cos, sin))
    q = torch.empty((b, heads, head_dim), dtype=qkv.dtype, device=qkv.device)
    if b:
        half = head_dim // 2
        _rope_store_kernel[(b, heads)](
            qkv, cos, sin, k_pool, v_pool, block_table, seqlens, q, block_table.shape[1],
            qkv.stride(0), cos.stride(0), sin.stride(0), k_pool.stride(0), k_pool.stride(1), k_pool.stride(2),
            v_pool.stride(0), v_pool.stride(1), v_pool.stride(2), block_table.stride(0), block_table.stride(1),
            q.stride(0), q.stride(1), HEADS=heads, HEAD_DIM=head_dim, BLOCK_HALF=max(16, triton.next_power_of_2(half)),
            BLOCK_SIZE=block_size, num_warps=1 if half <= 64 else 2, enable_fp_fusion=False)
    return q


# One opaque node each for torch.compile, capturable in CUDA graphs (outputs allocated inside).
# The plain norm is its own op: a custom op's output may not alias an input (the reference's `x`).
@torch.library.custom_op("deepseek_ocr::add_rms_norm", mutates_args=())
def _add_rms_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return add_rms_norm_triton(x, residual, weight, eps)


@_add_rms_norm_op.register_fake
def _(x, residual, weight, eps):
    return x.new_empty(x.shape), x.new_empty(x.shape)


@torch.library.custom_op("deepseek_ocr::rms_norm", mutates_args=())
def _rms_norm_op(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return add_rms_norm_triton(x, None, weight, eps)[0]


@_rms_norm_op.register_fake
def _(x, weight, eps):
    return x.new_empty(x.shape)


@torch.library.custom_op("deepseek_ocr::rope_and_store", mutates_args=("k_pool", "v_pool"))
def _rope_store_op(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_pool: torch.Tensor,
                   v_pool: torch.Tensor, block_table: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor:
    return rope_and_store_triton(qkv, cos, sin, k_pool, v_pool, block_table, seqlens)


@_rope_store_op.register_fake
def _(qkv, cos, sin, k_pool, v_pool, block_table, seqlens):
    return qkv.new_empty((qkv.shape[0], k_pool.shape[1], k_pool.shape[3]))


# ---------------------------------------------------------------------------- the seam


def _norm_or_none(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor,
                  eps: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`add_rms_norm` implementation: the kernel, or None (the reference) for float64, mixed
    dtypes (the reference would promote), rows wider than `_MAX_COLS`, or autograd."""
    others = (weight,) if residual is None else (residual, weight)
    if not launchable(x, *others) or x.dtype not in _DTYPES or _needs_grad(x, *others):
        return None
    if x.dim() == 0 or any(t.dtype != x.dtype for t in others) or x.shape[-1] > _MAX_COLS:
        return None
    if weight.shape != (x.shape[-1],) or (residual is not None and residual.shape != x.shape):
        raise KernelError(f"add_rms_norm: x {tuple(x.shape)} needs residual of the same shape and "
                          f"weight [{x.shape[-1]}], got {None if residual is None else tuple(residual.shape)} "
                          f"and {tuple(weight.shape)}")
    weight = weight.contiguous()
    if residual is None:
        return torch.ops.deepseek_ocr.rms_norm(x, weight, float(eps)), x
    return torch.ops.deepseek_ocr.add_rms_norm(x, residual, weight, float(eps))


def _check_rope(qkv, cos, sin, k_pool, v_pool, block_table, seqlens) -> None:
    """Raise KernelError for shapes outside the op's contract (never reads values: no sync)."""
    where = "rope_and_store"
    if k_pool.dim() != 4 or v_pool.shape != k_pool.shape:
        raise KernelError(f"{where}: pools must be equal [num_blocks, heads, block_size, head_dim], "
                          f"got {tuple(k_pool.shape)} and {tuple(v_pool.shape)}")
    _, heads, _, head_dim = k_pool.shape
    b = qkv.shape[0] if qkv.dim() == 2 else -1
    if qkv.dim() != 2 or qkv.shape[1] != 3 * heads * head_dim:
        raise KernelError(f"{where}: qkv must be [B, 3*{heads}*{head_dim}], got {tuple(qkv.shape)}")
    if head_dim % 2:
        raise KernelError(f"{where}: head_dim must be even, got {head_dim}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.numel() != b * head_dim or t.shape[0] != b or t.shape[-1] != head_dim:
            raise KernelError(f"{where}: {name} must be [{b}, {head_dim}] (or [{b}, 1, {head_dim}]), "
                              f"got {tuple(t.shape)}")
    if block_table.dim() != 2 or block_table.shape[0] != b or block_table.dtype != torch.int32:
        raise KernelError(f"{where}: block_table must be int32 [{b}, max_blocks], got "
                          f"{block_table.dtype} {tuple(block_table.shape)}")
    if seqlens.shape != (b,) or seqlens.dtype != torch.int32:
        raise KernelError(f"{where}: seqlens must be int32 [{b}], got {seqlens.dtype} {tuple(seqlens.shape)}")


def _rope_or_none(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_pool: torch.Tensor,
                  v_pool: torch.Tensor, block_table: torch.Tensor, seqlens: torch.Tensor) -> torch.Tensor | None:
    """`rope_and_store` implementation: the kernel, or None (the reference) for float64, mixed
    dtypes (the reference would promote or cast on store), or pools whose last dim is strided."""
    tensors = (qkv, cos, sin, k_pool, v_pool, block_table, seqlens)
    if not launchable(*tensors) or qkv.dtype not in _DTYPES or _needs_grad(qkv, cos, sin):
        return None
    if any(t.dtype != qkv.dtype for t in (cos, sin, k_pool, v_pool)):
        return None
    _check_rope(*tensors)
    if k_pool.stride(-1) != 1 or v_pool.stride(-1) != 1:
        return None
    return torch.ops.deepseek_ocr.rope_and_store(*tensors)


register("add_rms_norm", _norm_or_none)
register("rope_and_store", _rope_or_none)
