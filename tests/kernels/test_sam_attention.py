"""The SAM attention kernel (relative-position bias inside the kernel) against independent math.

The main reference here is `dense_f64`: float64, the bias built per (query, key) pair from the
full `[N, N, C]` relative embeddings (not the decomposed einsum the kernel and `rel_pos_bias`
use), explicit softmax. The kernel is also checked against `sam_attention_reference` (the
model's `rel_pos_bias` + SDPA) and against `SamAttention.forward` itself, and on a 2-token case
whose answer is worked out by hand.

Without a GPU the kernel runs through the Triton interpreter (the conftest sets
TRITON_INTERPRET=1), in float32 and float16 only, at 2-3 heads. The GPU-only tests run the real
sizes in bfloat16.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.errors import KernelError
from deepseek_ocr.kernels import HAVE_TRITON, interpreting

pytestmark = pytest.mark.skipif(
    not HAVE_TRITON or not (interpreting() or torch.cuda.is_available()),
    reason="needs Triton with CUDA, or TRITON_INTERPRET=1 for the CPU interpreter")

if HAVE_TRITON:
    from deepseek_ocr.kernels.sam_attention import (
        _launch, _rel_tables, _seam_impl, sam_attention, sam_attention_reference)
from deepseek_ocr.vision.sam import SamAttention, get_rel_pos, rel_pos_bias

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="real sizes need a GPU")

# Max abs error against the float64 answer for outputs of size ~1: float32 differs only by
# summation order; float16 rounds the inputs' products, the two bias terms (computed in the
# input dtype, as the official code does), the probabilities before P.V and the output (half an
# ulp at 2 is 1e-3): measured <= 1.5e-3 (5.8e-4 to 8.7e-4 with the terms in float32). The
# references round the whole bias to the input dtype, hence their wider float16 bound.
KERNEL_ATOL = {torch.float32: 2e-5, torch.float16: 4e-3}
REFERENCE_ATOL = {torch.float32: 2e-5, torch.float16: 8e-3}


def dense_f64(q, k, v, table_h, table_w, hw):
    """softmax(q.k^T / sqrt(C) + q.(R_h[qy, ky] + R_w[qx, kx])) v in float64, bias pair by pair."""
    h, w = hw
    q, k, v = q.double(), k.double(), v.double()
    r_h = get_rel_pos(h, h, table_h.double())  # (h, h, C)
    r_w = get_rel_pos(w, w, table_w.double())  # (w, w, C)
    tok = torch.arange(h * w, device=q.device)
    ty, tx = tok // w, tok % w
    rel = r_h[ty][:, ty] + r_w[tx][:, tx]  # (N, N, C): the embedding of each (query, key) pair
    logits = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    logits = logits + torch.einsum("bnqc,qkc->bnqk", q, rel)
    return torch.softmax(logits, dim=-1) @ v


def make_inputs(b, heads, hw, table_rows, dtype, seed, head_dim=64):
    """q, k, v `[b, heads, h*w, head_dim]` and tables with `table_rows` rows (each of h, w)."""
    g = torch.Generator().manual_seed(seed)
    n = hw[0] * hw[1]
    q, k, v = (torch.randn(b, heads, n, head_dim, generator=g) for _ in range(3))
    # Tables of 0.15 std give bias terms of std ~1-2, as large as the scaled q.k: both matter.
    tables = [0.15 * torch.randn(rows, head_dim, generator=g) for rows in table_rows]
    return [t.to(device=DEVICE, dtype=dtype) for t in (q, k, v, *tables)]


def max_err(a, b):
    return (a.double() - b.double()).abs().max().item()


# (grid, batch, heads, table rows (h, w), dtype): windows, a 7x7 grid, a global 16x16, a 10x10,
# a non-square 6x9, the global 32x32 of a 1024 view (which the CPU end-to-end test leaves to the
# reference); table rows 2*S-1 (trained size) or another count (get_rel_pos resizes).
CASES = [
    ((14, 14), 1, 2, (27, 27), torch.float32),
    ((14, 14), 3, 2, (27, 27), torch.float16),
    ((7, 7), 3, 3, (27, 27), torch.float32),
    ((7, 7), 1, 2, (13, 13), torch.float16),
    ((16, 16), 1, 2, (31, 31), torch.float32),
    ((16, 16), 1, 3, (127, 127), torch.float16),
    ((10, 10), 3, 2, (127, 127), torch.float16),
    ((10, 10), 1, 2, (19, 19), torch.float32),
    ((6, 9), 1, 2, (11, 17), torch.float32),
    ((32, 32), 1, 1, (63, 63), torch.float32),  # a 1024 view's global grid (one head: its cost)
]


CASE_IDS = [f"{h}x{w}-B{b}-L{rows[0]}-{str(dt)[6:]}" for (h, w), b, _, rows, dt in CASES]


@pytest.mark.parametrize("hw,b,heads,rows,dtype", CASES, ids=CASE_IDS)
def test_matches_float64_and_reference(hw, b, heads, rows, dtype):
    q, k, v, th, tw = make_inputs(b, heads, hw, rows, dtype, seed=1000 * b + 10 * hw[0] + hw[1])
    want = dense_f64(q, k, v, th, tw, hw)
    got = sam_attention(q, k, v, th, tw, hw)
    assert got.shape == q.shape and got.dtype == dtype
    assert max_err(got, want) < KERNEL_ATOL[dtype]
    ref = sam_attention_reference(q, k, v, th, tw, hw)
    assert max_err(ref, want) < REFERENCE_ATOL[dtype]
    assert max_err(got, ref) < KERNEL_ATOL[dtype] + REFERENCE_ATOL[dtype]
    # The same through the model's own pieces, spelled out: rel_pos_bias on [B*heads, N, C] + SDPA.
    n = q.shape[2]
    bias = rel_pos_bias(q.reshape(b * heads, n, -1), th, tw, hw).view(b, heads, n, n)
    sdpa = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    assert max_err(got, sdpa) < KERNEL_ATOL[dtype] + REFERENCE_ATOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_rel_tables_layout_and_dtype(dtype):
    """The two bias terms in the layouts the kernel reads them (rel_h [qy, ky, b, n, qx], rel_w
    [qx, qy, b, n, kx]) from q as the model passes it (a strided view of qkv), computed in q's
    dtype: float64 to rounding, 16-bit types within one rounding of the exact products' sum."""
    hw, b, heads, c = (6, 9), 2, 3, 64
    h, w = hw
    g = torch.Generator().manual_seed(11)
    qkv = torch.randn(b, h * w, 3, heads, c, generator=g, dtype=torch.float64).permute(2, 0, 3, 1, 4)
    th, tw = (0.15 * torch.randn(rows, c, generator=g, dtype=torch.float64) for rows in (11, 17))
    q, th, tw = (t.to(device=DEVICE, dtype=dtype) for t in (qkv[0], th, tw))
    rel_h, rel_w = _rel_tables(q, th, tw, hw)
    assert rel_h.dtype == rel_w.dtype == dtype
    assert rel_h.shape == (h, h, b, heads, w) and rel_w.shape == (w, h, b, heads, w)
    grid = q.double().reshape(b, heads, h, w, c)
    want_h = torch.einsum("bnyxc,ykc->ykbnx", grid, get_rel_pos(h, h, th.double()))
    want_w = torch.einsum("bnyxc,xkc->xybnk", grid, get_rel_pos(w, w, tw.double()))
    for got, want in ((rel_h, want_h), (rel_w, want_w)):
        err = (got.double() - want).abs()
        if dtype == torch.float64:
            assert err.max().item() <= 1e-12
        else:
            ulp = 2.0 ** -(23 if dtype == torch.float32 else 7 if dtype == torch.bfloat16 else 10)
            assert (err <= ulp * want.abs() + 1e-5).all()


@pytest.mark.parametrize("hw", [(1, 2), (2, 1)], ids=["row", "column"])
def test_hand_made_values(hw):
    """Two tokens, every score worked out by hand: checks the table's orientation and that the
    1/sqrt(64) scale touches q.k but not the bias.

    q = e0 for both tokens; k0 = 8 ln2 e0 (scaled q.k = ln2), k1 = 0; v0 = e0, v1 = e1. The
    relative table along the 2-token axis has column 0 = [ln3, 0, ln5], the other table is 0;
    R[i, j] = table[i - j + 1]. Token 0: logits [ln2 + 0, 0 + ln3] -> weights [2, 3] / 5.
    Token 1: [ln2 + ln5, 0 + 0] -> [10, 1] / 11.
    """
    d = 64
    q = torch.zeros(1, 1, 2, d)
    q[..., 0] = 1.0
    k = torch.zeros(1, 1, 2, d)
    k[0, 0, 0, 0] = 8 * math.log(2)
    v = torch.zeros(1, 1, 2, d)
    v[0, 0, 0, 0] = v[0, 0, 1, 1] = 1.0
    axis = torch.zeros(3, d)
    axis[:, 0] = torch.tensor([math.log(3), 0.0, math.log(5)])
    other = torch.zeros(1, d)
    th, tw = (axis, other) if hw == (2, 1) else (other, axis)
    want = torch.zeros(1, 1, 2, d)
    want[0, 0, 0, :2] = torch.tensor([2 / 5, 3 / 5])
    want[0, 0, 1, :2] = torch.tensor([10 / 11, 1 / 11])
    got = sam_attention(*(t.to(DEVICE) for t in (q, k, v, th, tw)), hw)
    assert max_err(got.cpu(), want) < 1e-6


def test_module_forward_through_kernel():
    """`SamAttention.forward` (materialised bias) equals the forward proposed for the seam: qkv
    views straight into the kernel, its (B, N, heads, C) output reshaped without a copy."""
    torch.manual_seed(7)
    heads, hw, b = 2, (14, 14), 2
    attn = SamAttention(dim=heads * 64, heads=heads, rel_size=14).to(DEVICE)
    with torch.no_grad():
        attn.rel_pos_h.normal_(0, 0.15)
        attn.rel_pos_w.normal_(0, 0.15)
        x = torch.randn(b, *hw, heads * 64, device=DEVICE)
        want = attn(x)
        n = hw[0] * hw[1]
        qkv = attn.qkv(x).reshape(b, n, 3, heads, 64).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, C) each, non-contiguous views
        out = sam_attention(q, k, v, attn.rel_pos_h, attn.rel_pos_w, hw)
        assert out.transpose(1, 2).is_contiguous()
        got = attn.proj(out.transpose(1, 2).reshape(b, *hw, -1))
    assert max_err(got, want) < 2e-5


@pytest.mark.parametrize("hw,config", [((14, 14), {"BLOCK_M": 64}), ((4, 20), {"BLOCK_N": 16})],
                         ids=["query-tail", "row-in-chunks"])
def test_other_tilings(hw, config):
    """A last query tile with 4 of its 64 rows used (the GPU's window tiling), and grid rows
    longer than a key tile (20 keys in chunks of 16), which real grids reach only past 2048 px."""
    q, k, v, th, tw = make_inputs(1, 1, hw, (2 * hw[0] - 1, 2 * hw[1] - 1), torch.float32, seed=3)
    got = _launch(q, k, v, th, tw, *hw, config=config)
    assert max_err(got, dense_f64(q, k, v, th, tw, hw)) < KERNEL_ATOL[torch.float32]


def test_invalid_inputs_raise_kernel_error():
    q, k, v, th, tw = make_inputs(1, 1, (4, 4), (7, 7), torch.float32, seed=0)
    with pytest.raises(KernelError, match="hw=.*16 tokens"):
        sam_attention(q[:, :, :12], k[:, :, :12], v[:, :, :12], th, tw, (4, 4))
    with pytest.raises(KernelError, match="one shape"):
        sam_attention(q, k[:, :, :8], v, th, tw, (4, 4))
    with pytest.raises(KernelError, match="head_dim must be one of"):
        sam_attention(q[..., :48], k[..., :48], v[..., :48], th[:, :48], tw[:, :48], (4, 4))
    with pytest.raises(KernelError, match="share a dtype"):
        sam_attention(q, k.half(), v, th, tw, (4, 4))
    with pytest.raises(KernelError, match=r"rel_pos_w must be \[L, 64\]"):
        sam_attention(q, k, v, th, tw[:, :32], (4, 4))
    for bad_hw in ((16,), 16, (4.0, 4), (-4, -4)):
        with pytest.raises(KernelError, match="hw must be two positive ints"):
            sam_attention(q, k, v, th, tw, bad_hw)
    with pytest.raises(KernelError, match=r"\[B, heads, N, head_dim\]"):
        sam_attention(q[0], k[0], v[0], th, tw, (4, 4))


def test_seam_impl_declines_what_it_cannot_do():
    q, k, v, th, tw = make_inputs(1, 2, (4, 4), (7, 7), torch.float32, seed=1)
    assert _seam_impl(q, k, v, th, tw, (3, 5)) is None  # 15 tokens: not this q
    th_grad = th.clone().requires_grad_(True)
    assert _seam_impl(q, k, v, th_grad, tw, (4, 4)) is None  # no backward: the reference runs
    with torch.no_grad():
        assert _seam_impl(q, k, v, th_grad, tw, (4, 4)) is not None
    if interpreting():
        assert _seam_impl(*(t.bfloat16() for t in (q, k, v, th, tw)), (4, 4)) is None
    got = _seam_impl(q, k, v, th, tw, (4, 4))
    assert max_err(got, dense_f64(q, k, v, th, tw, (4, 4))) < KERNEL_ATOL[torch.float32]


def test_custom_op_checks_and_fake():
    """The op passes torch.library.opcheck (schema, fake tensor, AOT dispatch), and its fake,
    which torch.compile traces through, has the real output's shape, dtype and strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    q, k, v, th, tw = make_inputs(2, 2, (4, 4), (7, 7), torch.float16, seed=2)
    torch.library.opcheck(torch.ops.deepseek_ocr.sam_attention.default, (q, k, v, th, tw, 4, 4))
    real = torch.ops.deepseek_ocr.sam_attention(q, k, v, th, tw, 4, 4)
    with FakeTensorMode() as mode:
        fake = torch.ops.deepseek_ocr.sam_attention(
            *(mode.from_tensor(t) for t in (q, k, v, th, tw)), 4, 4)
    assert (fake.shape, fake.dtype, fake.stride()) == (real.shape, real.dtype, real.stride())


# ---------------------------------------------------------------- GPU only, real sizes, bf16

def _check_real_size(b, hw, table_rows):
    """bf16 kernel and bf16 reference against the float32 reference on the same bf16 inputs."""
    torch.manual_seed(11)
    n = hw[0] * hw[1]
    q, k, v = (torch.randn(b, 12, n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    th, tw = (0.15 * torch.randn(table_rows, 64, device="cuda", dtype=torch.bfloat16)
              for _ in range(2))
    with torch.no_grad():
        want = sam_attention_reference(*(t.float() for t in (q, k, v, th, tw)), hw)
        got = sam_attention(q, k, v, th, tw, hw)
        ref = sam_attention_reference(q, k, v, th, tw, hw)
    err, ref_err = ((t.float() - want).abs() for t in (got, ref))
    # bf16 keeps 8 bits: half an ulp at |out| ~ 2-4 is 8e-3-1.6e-2. The kernel rounds the two
    # bias terms to bf16 as the reference does but adds them in float32 (the reference rounds
    # their sum as well), so it must not be worse than the reference. (A torch emulation of the
    # kernel's roundings on the CPU: max 1.4e-2 / 2.3e-2 / 2.0e-2 and mean 3.1e-4 / 3.8e-4 /
    # 6.7e-4 for these three cases, the CPU bf16 reference's mean 5.9e-4 / 5.5e-4 / 1.2e-3.)
    assert err.max().item() < 3e-2, err.max().item()
    assert err.mean().item() < 2e-3, err.mean().item()
    assert err.mean().item() <= 1.1 * ref_err.mean().item() + 1e-4


@cuda_only
def test_real_global_1024_view():
    _check_real_size(1, (64, 64), 127)


@cuda_only
def test_real_global_six_640_tiles():
    _check_real_size(6, (40, 40), 127)  # the table trained at 64 is resized to 79 rows


@cuda_only
def test_real_windows_of_a_1024_view():
    _check_real_size(25, (14, 14), 27)  # 64x64 padded to 70x70: 5x5 windows of 196 tokens


def test_batches_past_the_grid_limit_are_split(monkeypatch):
    """B * heads over CUDA's 65,535 second grid dimension (hundreds of pages' windows at once)
    runs in chunks; here the limit is lowered so that a small case exercises the split."""
    import deepseek_ocr.kernels.sam_attention as sa
    torch.manual_seed(0)
    q, k, v = (torch.randn(5, 2, 16, 16).to(DEVICE) for _ in range(3))
    rh, rw = torch.randn(7, 16).to(DEVICE), torch.randn(7, 16).to(DEVICE)
    whole = sa.sam_attention_reference(q, k, v, rh, rw, (4, 4))
    monkeypatch.setattr(sa, "_MAX_GRID_Y", 4)  # 2 rows of the batch per launch
    out = sa._launch(q, k, v, rh, rw, 4, 4)
    torch.testing.assert_close(out, whole, rtol=1e-4, atol=1e-4)
