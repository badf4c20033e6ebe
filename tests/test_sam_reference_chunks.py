"""SAM's reference attention (vision/sam.py) splits a call whose `[B*heads, N, N]` bias would be
too large (805 MB for one 1024 view's global block in float32) by views and by query rows.

Splitting must not change a number where it matters (float32 inference: the parity tests compare
Gundam pages against recorded outputs) and must stay within rounding elsewhere (float64, and the
gradients of k and v, which sum over query rows in another order). The budget is lowered here so
that small inputs take the split paths; the SDPA calls are counted, so a test cannot pass by
never splitting. The unsplit result is itself checked against plain float64 math with the bias
built from offsets directly (no `get_rel_pos`, no decomposition).
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.vision import sam

GRID, HEADS, HEAD_DIM = 9, 2, 16  # N = 81 tokens; the tables have 2 * 9 - 1 rows (no resizing)
N = GRID * GRID


def qkv_and_tables(views: int, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # q, k, v as SamAttention makes them: strided views of one qkv projection
    qkv = torch.randn(views, N, 3, HEADS, HEAD_DIM, generator=g, dtype=dtype).permute(2, 0, 3, 1, 4)
    tables = [0.3 * torch.randn(2 * GRID - 1, HEAD_DIM, generator=g, dtype=dtype) for _ in range(2)]
    return (*qkv.unbind(0), *tables)


def run(args, budget, monkeypatch, grad=False):
    """Output (and gradients of a fixed weighting of it) with the bias budget set to `budget`
    elements; also the SDPA calls made, as (views, query rows) per call."""
    monkeypatch.setattr(sam, "_MAX_BIAS_ELEMENTS", budget)
    calls = []
    real = F.scaled_dot_product_attention

    def counting(q, k, v, attn_mask=None, **kw):
        assert attn_mask.numel() <= budget, "a call materialised more bias than the budget"
        calls.append((q.shape[0], q.shape[2]))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    leaves = [a.detach().clone().requires_grad_(grad) for a in args]
    out = sam.attention_with_rel_pos(*leaves, (GRID, GRID))
    grads = []
    if grad:
        weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)
        (out * weight).sum().backward()
        grads = [a.grad for a in leaves]
    monkeypatch.undo()
    return out.detach(), grads, calls


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


UNSPLIT = 10**9
ONE_VIEW = HEADS * N * N  # the bias of one view
SPLITS = {
    "two views per call": (2 * ONE_VIEW + 7, [(2, N), (2, N), (1, N)]),
    "rows of one view": (ONE_VIEW // 3, [(1, 27)] * 15),  # 81 rows in 3 equal parts, for 5 views
    # at most 20 rows a call: 81 rows in 5 parts of 17 (the last 13)
    "uneven rows": (HEADS * N * 20, ([(1, 17)] * 4 + [(1, 13)]) * 5),
}


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_split_float32_forward_is_bitwise_the_single_call(split, monkeypatch):
    budget, want_calls = SPLITS[split]
    args = qkv_and_tables(5, torch.float32)
    whole, _, whole_calls = run(args, UNSPLIT, monkeypatch)
    assert whole_calls == [(5, N)]
    parts, _, calls = run(args, budget, monkeypatch)
    assert calls == want_calls
    assert torch.equal(parts, whole)


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_split_float64_and_gradients_within_rounding(split, monkeypatch):
    budget, want_calls = SPLITS[split]
    for dtype, tol in ((torch.float64, 1e-13), (torch.float32, 1e-6)):
        args = qkv_and_tables(5, dtype, seed=1)
        whole, whole_grads, _ = run(args, UNSPLIT, monkeypatch, grad=True)
        parts, grads, calls = run(args, budget, monkeypatch, grad=True)
        assert calls == want_calls
        assert rel(parts, whole) <= tol
        for name, got, want in zip(("q", "k", "v", "rel_pos_h", "rel_pos_w"), grads, whole_grads):
            assert got is not None and rel(got, want) <= tol, (dtype, name)


def test_single_call_matches_plain_float64_math(monkeypatch):
    q, k, v, table_h, table_w = qkv_and_tables(2, torch.float64, seed=2)
    got, _, _ = run((q, k, v, table_h, table_w), UNSPLIT, monkeypatch)
    ys, xs = torch.meshgrid(torch.arange(GRID), torch.arange(GRID), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()  # the grid position of each token, row-major
    r_h = table_h[ys[:, None] - ys[None, :] + GRID - 1]  # (N query, N key, C): offset in rows
    r_w = table_w[xs[:, None] - xs[None, :] + GRID - 1]  # offset in columns
    bias = torch.einsum("bnqc,qkc->bnqk", q, r_h) + torch.einsum("bnqc,qkc->bnqk", q, r_w)
    logits = q @ k.transpose(-1, -2) / math.sqrt(HEAD_DIM) + bias
    want = torch.softmax(logits, dim=-1) @ v
    assert rel(got, want) <= 1e-13
