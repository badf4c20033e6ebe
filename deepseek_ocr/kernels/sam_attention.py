"""SAM attention with the decomposed relative-position bias added inside a flash-style kernel.

SAM's attention logits are `scale * q.k + q.R_h[qy, ky] + q.R_w[qx, kx]` over an `h x w` grid
(the bias uses the *unscaled* query). The reference materialises that bias as `[B*heads, N, N]`
(400 MB in bf16 for one 1024 view's global block) and hands it to SDPA. Here only the two small
decomposed terms are computed, with one batched matmul each (in the activation's dtype):

    rel_h[qy, ky, b, n, qx] = q . R_h[qy, ky]      one value per query and key row
    rel_w[qx, qy, b, n, kx] = q . R_w[qx, kx]      one value per query and key column

(the layouts the two matmuls write; the kernel takes a stride for each of qy and qx, so neither
is rearranged), and the kernel walks the keys one grid row at a time: a key tile is row `ky` (`w`
keys padded to a power of two), so its bias is `rel_h[.., ky, .., q]` (one value per query) plus
the `rel_w` tile, which is the same for every key row and is loaded once per program. No gather
and no N x N tensor.
Padding a row to a power of two wastes compute where `w` is not one (40 -> 64 for a 640 tile);
the tails are masked with -inf through the bias.

Entry points: `sam_attention` (the Triton kernel, validating its inputs with `KernelError`),
`sam_attention_reference` (the model's own math: `rel_pos_bias` + SDPA), and the seam
registration at the bottom, which falls back to the reference for inputs the kernel does not take.
"""
from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..errors import KernelError
from ..vision.positions import rel_pos_table
from ._common import HAVE_TRITON, interpreting, launchable

if HAVE_TRITON:
    import triton
    import triton.language as tl

logger = logging.getLogger(__name__)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_HEAD_DIMS = (16, 32, 64, 128)
# A key tile is at most this wide; a longer grid row is walked in chunks (w > 128: 2048+ px).
_MAX_BLOCK_N = 128


def _rel_tables(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The decomposed bias terms, in q's dtype: `rel_h [h, kh, B, nh, w]` (index qy, ky, b, n,
    qx) and `rel_w [w, h, B, nh, kw]` (index qx, qy, b, n, kx), both contiguous.

    Computed as the official code does, in the activation dtype: bf16/fp16 products accumulated
    in float32 by the matmul and rounded once to the dtype (float32 stays float32). One copy of
    q, into `[qy, b, n, qx, C]`, serves both matmuls without any further rearranging: as
    `[qy, (b, n, qx), C]` for R_h (batched over qy) and, viewed `[qx, (qy, b, n), C]`, for R_w
    (batched over qx). Their outputs are used in the layout the matmuls write them in.
    """
    h, w = hw
    b, nh, n, c = q.shape
    r_h = rel_pos_table(rel_pos_h, h).to(q.dtype)  # (qy, ky, C)
    r_w = rel_pos_table(rel_pos_w, w).to(q.dtype)  # (qx, kx, C)
    grid_q = q.unflatten(2, (h, w)).permute(2, 0, 1, 3, 4).contiguous()  # (qy, B, nh, qx, C)
    rel_h = torch.bmm(r_h, grid_q.view(h, b * nh * w, c).transpose(1, 2))  # (qy, ky, B*nh*qx)
    rel_w = torch.bmm(grid_q.view(h * b * nh, w, c).transpose(0, 1),
                      r_w.transpose(1, 2))  # (qx, qy*B*nh, kx)
    return rel_h.view(h, h, b, nh, w), rel_w.view(w, h, b, nh, w)


def sam_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                            rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                            hw: tuple[int, int]) -> torch.Tensor:
    """The model's own math: materialised `[B*heads, N, N]` bias, then SDPA.

    Args:
        q, k, v: `[B, heads, N, head_dim]`, `N = h * w` tokens of the grid in row-major order.
        rel_pos_h, rel_pos_w: the block's raw tables `[L, head_dim]` (resized by `get_rel_pos`).
        hw: the grid `(h, w)`.
    Returns:
        `[B, heads, N, head_dim]`.
    """
    from ..vision.sam import rel_pos_bias  # lazy for the same import cycle as in `_rel_tables`
    b, nh, n, c = q.shape
    bias = rel_pos_bias(q.reshape(b * nh, n, c), rel_pos_h, rel_pos_w, hw)  # (B*nh, N, N)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(b, nh, n, n))


def _problem(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
             rel_pos_w: torch.Tensor, hw) -> str | None:
    """What makes these inputs unfit for the kernel, or None when they fit."""
    if q.dim() != 4:
        return f"q must be [B, heads, N, head_dim], got shape {tuple(q.shape)}"
    if k.shape != q.shape or v.shape != q.shape:
        return (f"q, k, v must have one shape, got {tuple(q.shape)}, {tuple(k.shape)}, "
                f"{tuple(v.shape)}")
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return f"q, k, v must share a dtype among {_DTYPES}, got {q.dtype}, {k.dtype}, {v.dtype}"
    devices = {t.device for t in (q, k, v, rel_pos_h, rel_pos_w)}
    if len(devices) != 1:
        return f"all inputs must be on one device, got {sorted(map(str, devices))}"
    head_dim = q.shape[-1]
    if head_dim not in _HEAD_DIMS:
        return f"head_dim must be one of {_HEAD_DIMS}, got {head_dim}"
    if (not isinstance(hw, (tuple, list)) or len(hw) != 2
            or not all(isinstance(s, (int, torch.SymInt)) and s > 0 for s in hw)):
        return f"hw must be two positive ints (h, w), got {hw!r}"
    h, w = hw
    if h * w != q.shape[2]:
        return f"hw={tuple(hw)} gives {h * w} tokens but q has N={q.shape[2]}"
    for name, table in (("rel_pos_h", rel_pos_h), ("rel_pos_w", rel_pos_w)):
        if table.dim() != 2 or table.shape[1] != head_dim or table.shape[0] < 1:
            return f"{name} must be [L, {head_dim}], got shape {tuple(table.shape)}"
        if not table.is_floating_point():
            return f"{name} must be floating point, got {table.dtype}"
    return None


if HAVE_TRITON:
    @triton.jit
    def _sam_attention_kernel(
        Q, K, V, RH, RW, Out,
        stride_qb, stride_qh, stride_qn,
        stride_kb, stride_kh, stride_kn,
        stride_vb, stride_vh, stride_vn,
        stride_rhb, stride_rhh, stride_rhk, stride_rhy, stride_rhx,
        stride_rwb, stride_rwh, stride_rwy, stride_rwx, stride_rwk,
        stride_ob, stride_oh, stride_on,
        heads, qk_scale,
        GRID_H: tl.constexpr, GRID_W: tl.constexpr, HEAD_DIM: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, W_CHUNKS: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """One program: BLOCK_M queries of one (batch, head) against every key, row by row.

        The grid is a compile-time constant: the model sees a handful of grids (64x64, 40x40,
        14x14 windows), the key loop's trip count is then known, and the Triton interpreter
        (numpy 2.4) cannot take a run-time loop bound at all.
        """
        LOG2E: tl.constexpr = 1.4426950408889634
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = (pid_bh // heads).to(tl.int64)
        hd = (pid_bh % heads).to(tl.int64)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.arange(0, BLOCK_N)
        offs_d = tl.arange(0, HEAD_DIM)
        m_valid = offs_m < GRID_H * GRID_W
        # each query's grid row and column: the bias terms take a stride for each
        qy = (offs_m // GRID_W).to(tl.int64)
        qx = (offs_m % GRID_W).to(tl.int64)

        q_ptrs = Q + b * stride_qb + hd * stride_qh + offs_m[:, None] * stride_qn + offs_d[None, :]
        q = tl.load(q_ptrs, mask=m_valid[:, None], other=0.0)  # (BLOCK_M, D)
        k_base = K + b * stride_kb + hd * stride_kh
        v_base = V + b * stride_vb + hd * stride_vh
        rh_base = RH + b * stride_rhb + hd * stride_rhh + qy * stride_rhy + qx * stride_rhx  # (BLOCK_M,)
        rw_base = RW + b * stride_rwb + hd * stride_rwh + (qy * stride_rwy + qx * stride_rwx)[:, None]

        # exp2 softmax: scores in log2 units, so q.k takes scale*log2(e) and the bias log2(e).
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
        if W_CHUNKS == 1:
            # The q.R_w term depends on the key's column only: one tile serves every key row.
            # Padding columns get -inf here, which masks them out of every score tile.
            kx_ok = offs_n < GRID_W
            rw = tl.load(rw_base + offs_n[None, :] * stride_rwk,
                         mask=m_valid[:, None] & kx_ok[None, :], other=0.0).to(tl.float32)
            rw = tl.where(kx_ok[None, :], rw * LOG2E, float("-inf"))  # (BLOCK_M, BLOCK_N)
        for ky in range(GRID_H):
            rh = tl.load(rh_base + ky * stride_rhk, mask=m_valid, other=0.0).to(tl.float32)
            rh = rh * LOG2E  # (BLOCK_M,): q.R_h[qy, ky] is one value per query for this key row
            for chunk in tl.static_range(W_CHUNKS):
                kx = chunk * BLOCK_N + offs_n
                kx_ok = kx < GRID_W
                if W_CHUNKS > 1:
                    rw = tl.load(rw_base + kx[None, :] * stride_rwk,
                                 mask=m_valid[:, None] & kx_ok[None, :], other=0.0).to(tl.float32)
                    rw = tl.where(kx_ok[None, :], rw * LOG2E, float("-inf"))
                key = ky * GRID_W + kx  # (BLOCK_N,) token index of each key
                k = tl.load(k_base + key[:, None] * stride_kn + offs_d[None, :],
                            mask=kx_ok[:, None], other=0.0)  # (BLOCK_N, D)
                s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * qk_scale
                s = s + rw + rh[:, None]  # (BLOCK_M, BLOCK_N); kx = 0 is always valid: max finite
                m_new = tl.maximum(m_i, tl.max(s, 1))
                alpha = tl.exp2(m_i - m_new)
                p = tl.exp2(s - m_new[:, None])
                l_i = l_i * alpha + tl.sum(p, 1)
                vv = tl.load(v_base + key[:, None] * stride_vn + offs_d[None, :],
                             mask=kx_ok[:, None], other=0.0)  # (BLOCK_N, D)
                acc = acc * alpha[:, None] + tl.dot(p.to(vv.dtype), vv, input_precision=PRECISION)
                m_i = m_new
        acc = acc / l_i[:, None]
        o_base = Out + b * stride_ob + hd * stride_oh
        o_ptrs = o_base + offs_m[:, None] * stride_on + offs_d[None, :]
        tl.store(o_ptrs, acc.to(Out.dtype.element_ty), mask=m_valid[:, None])


def _config(n: int, w: int, dtype: torch.dtype) -> dict:
    """Tile sizes and launch options for an `N`-token grid `w` keys wide.

    BLOCK_N is one grid row rounded up to a power of two (16 at least, for tl.dot). Chosen so
    that sm_90 code does not spill (register counts from an offline compile, `cuobjdump
    -res-usage`): 128 queries x 64 keys needs 8 warps (211 registers; 4 warps spill), 128-wide
    rows (80x80 grids) take 64 queries, windows (196 tokens) 64 x 16 at 137 registers, and
    float32's IEEE dot only fits 32 queries. Not yet timed against each other on a GPU:
    `benchmarks/bench_sam_attention.py --sweep` does that.
    """
    block_n = min(max(16, triton.next_power_of_2(w)), _MAX_BLOCK_N)
    if interpreting():
        # The interpreter costs ~20 ms per tile step whatever the tile's size: few, big tiles
        # (one for a 14x14 window) keep the CPU tests fast.
        block_m = min(256, max(16, triton.next_power_of_2(n)))
        return {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 1}
    if dtype == torch.float32:
        return {"BLOCK_M": 32, "BLOCK_N": block_n, "num_warps": 4, "num_stages": 2}
    if n < 1024:
        return {"BLOCK_M": 64, "BLOCK_N": block_n, "num_warps": 4 if block_n <= 64 else 8,
                "num_stages": 2}
    return {"BLOCK_M": 128 if block_n <= 64 else 64, "BLOCK_N": block_n, "num_warps": 8,
            "num_stages": 3}


_MAX_GRID_Y = 65535


def _launch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
            rel_pos_w: torch.Tensor, h: int, w: int, config: dict | None = None) -> torch.Tensor:
    """Compute the bias terms and run the kernel; inputs already validated."""
    b, nh, n, d = q.shape
    max_b = _MAX_GRID_Y // nh
    if b > max_b:  # a CUDA grid's second dimension holds at most 65,535 programs (B * heads)
        return torch.cat([_launch(q[s:s + max_b], k[s:s + max_b], v[s:s + max_b], rel_pos_h,
                                  rel_pos_w, h, w, config) for s in range(0, b, max_b)])
    q, k, v = (t if t.stride(-1) == 1 else t.contiguous() for t in (q, k, v))
    rel_h, rel_w = _rel_tables(q, rel_pos_h, rel_pos_w, (h, w))  # (qy, ky, B, nh, qx), (qx, qy, B, nh, kx)
    # (B, N, nh, D) memory seen as (B, nh, N, D): the caller's transpose(1, 2).reshape is free.
    out = torch.empty((b, n, nh, d), device=q.device, dtype=q.dtype).transpose(1, 2)
    cfg = dict(_config(n, w, q.dtype), **(config or {}))
    w_chunks = triton.cdiv(w, cfg["BLOCK_N"])
    grid = (triton.cdiv(n, cfg["BLOCK_M"]), b * nh)
    _sam_attention_kernel[grid](
        q, k, v, rel_h, rel_w, out,
        q.stride(0), q.stride(1), q.stride(2),
        k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        rel_h.stride(2), rel_h.stride(3), rel_h.stride(1), rel_h.stride(0), rel_h.stride(4),
        rel_w.stride(2), rel_w.stride(3), rel_w.stride(1), rel_w.stride(0), rel_w.stride(4),
        out.stride(0), out.stride(1), out.stride(2),
        nh, d ** -0.5 * math.log2(math.e),
        GRID_H=h, GRID_W=w, HEAD_DIM=d, W_CHUNKS=w_chunks,
        # fp32 inputs keep full precision (the reference is exact fp32); 16-bit ones ignore this.
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        **cfg)
    return out


@torch.library.custom_op("deepseek_ocr::sam_attention", mutates_args=())
def _sam_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
                      rel_pos_w: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return _launch(q, k, v, rel_pos_h, rel_pos_w, h, w)


@_sam_attention_op.register_fake
def _sam_attention_fake(q, k, v, rel_pos_h, rel_pos_w, h, w):
    b, nh, n, d = q.shape
    return q.new_empty((b, n, nh, d)).transpose(1, 2)  # the same strides as `_launch`'s output


def sam_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
                  rel_pos_w: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """SAM attention with the decomposed relative-position bias, by the Triton kernel.

    Equal to `sam_attention_reference` up to rounding: softmax(scale * q.k^T + bias) @ v with
    `bias[q, k] = q . R_h[qy, ky] + q . R_w[qx, kx]` (unscaled q), online softmax in float32.

    Args:
        q, k, v: `[B, heads, N, head_dim]` float16/bfloat16/float32 on one CUDA device (or
            CPU in `triton_on_cpu()` under `TRITON_INTERPRET=1`); any strides whose last one
            is 1, e.g. views of a fused qkv.
        rel_pos_h, rel_pos_w: the raw tables `[L, head_dim]`; `get_rel_pos` resizes them when
            `L != 2*h-1` (resp. `2*w-1`).
        hw: the grid `(h, w)` with `h * w == N`, tokens in row-major order.
    Returns:
        `[B, heads, N, head_dim]` in q's dtype, a transposed view of `[B, N, heads, head_dim]`.
    Raises:
        KernelError: for inputs the kernel cannot take (shape, dtype, device, no Triton).
    """
    problem = _problem(q, k, v, rel_pos_h, rel_pos_w, hw)
    if problem is not None:
        raise KernelError(f"sam_attention: {problem}")
    if not launchable(q, k, v, rel_pos_h, rel_pos_w):
        raise KernelError(f"sam_attention: Triton cannot run on {q.device} tensors here (needs "
                          "Triton and CUDA tensors, or CPU ones inside `triton_on_cpu()` with "
                          "TRITON_INTERPRET=1)")
    h, w = hw
    return _sam_attention_op(q, k, v, rel_pos_h, rel_pos_w, int(h), int(w))


def _seam_impl(q, k, v, rel_pos_h, rel_pos_w, hw):
    """The seam's implementation: the kernel's result, or None to let the reference run."""
    if not launchable(q, k, v, rel_pos_h, rel_pos_w):
        return None
    if q.dtype == torch.bfloat16 and interpreting():
        return None  # the interpreter computes bfloat16 wrongly (numpy has no bfloat16)
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v, rel_pos_h, rel_pos_w)):
        return None  # forward-only op: training keeps the differentiable reference
    problem = _problem(q, k, v, rel_pos_h, rel_pos_w, hw)
    if problem is not None:
        logger.debug("sam_attention kernel not used: %s", problem)
        return None
    return sam_attention(q, k, v, rel_pos_h, rel_pos_w, hw)


from . import register  # noqa: E402  (the package is initialised before its kernel modules)

register("sam_attention", _seam_impl)
