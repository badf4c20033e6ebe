"""The chunked output-projection cross entropy (training/chunked_ce.py) against the unchunked
expression it replaces, `F.cross_entropy(F.linear(h, W).float(), t, reduction="sum")`."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.training.chunked_ce import linear_cross_entropy_sum


def _reference(h, w, t):
    logits = F.linear(h, w)
    logits = logits if logits.dtype == torch.float64 else logits.float()
    return F.cross_entropy(logits, t, reduction="sum")


@pytest.mark.parametrize("chunk", [1, 3, 7, 64])
def test_loss_and_gradients_equal_the_unchunked_expression_in_float64(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(10, 16, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(50, 16, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 50, (10,), generator=g)
    ours = linear_cross_entropy_sum(h, w, t, chunk=chunk)
    gh, gw = torch.autograd.grad(ours * 0.37, (h, w))
    ref = _reference(h, w, t)
    rh, rw = torch.autograd.grad(ref * 0.37, (h, w))
    assert ours.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close(gh, rh, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gw, rw, rtol=1e-10, atol=1e-12)


def test_float32_gradient_against_finite_differences():
    g = torch.Generator().manual_seed(1)
    h = torch.randn(5, 6, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(9, 6, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randint(0, 9, (5,), generator=g)
    assert torch.autograd.gradcheck(lambda a, b: linear_cross_entropy_sum(a, b, t, chunk=2), (h, w))


def test_float32_and_frozen_hidden():
    g = torch.Generator().manual_seed(2)
    h = torch.randn(33, 24, generator=g)  # no gradient wanted for it
    w = torch.randn(70, 24, generator=g, requires_grad=True)
    t = torch.randint(0, 70, (33,), generator=g)
    ours = linear_cross_entropy_sum(h, w, t, chunk=8)
    (gw,) = torch.autograd.grad(ours, (w,))
    w64 = w.detach().double().requires_grad_()
    ref = _reference(h.double(), w64, t)
    (rw,) = torch.autograd.grad(ref, (w64,))
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=0)
    torch.testing.assert_close(gw.double(), rw, rtol=1e-4, atol=1e-5)


def test_bf16_autocast_matches_the_autocast_linear():
    """Under bf16 autocast the matmuls run in bf16 and the softmax in float32, as autocast runs
    `F.linear(...).float()`; the weight keeps a float32 gradient."""
    g = torch.Generator().manual_seed(3)
    h = torch.randn(20, 32, generator=g, requires_grad=True)
    w = torch.randn(40, 32, generator=g, requires_grad=True)
    t = torch.randint(0, 40, (20,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = linear_cross_entropy_sum(h, w, t, chunk=6)
        ref = _reference(h, w, t)
    gh, gw = torch.autograd.grad(ours, (h, w))
    rh, rw = torch.autograd.grad(ref, (h, w))
    assert ours.dtype == torch.float32 and gw.dtype == torch.float32 and gh.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=0)
    # bf16 gradients: the reference rounds the whole [V, H] product once, ours per chunk.
    torch.testing.assert_close(gh, rh, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw, rw, rtol=2e-2, atol=2e-2)


def test_empty_selection_is_refused():
    with pytest.raises(ValueError):
        linear_cross_entropy_sum(torch.zeros(0, 4), torch.zeros(5, 4), torch.zeros(0, dtype=torch.long))


def test_the_objective_is_the_same_chunked_or_whole(monkeypatch):
    """compute_loss on a tiny model with the chunked path forced (threshold 0) and with the
    logits held whole: the same loss and the same gradients, to float32 summation order."""
    from deepseek_ocr.training import objective
    from tiny_model import tiny_model
    ocr = tiny_model(seed=4)
    batch = [ocr.prepare(None, "Read this:", answer="one two three"),
             ocr.prepare(None, "And this one, please", answer="four five")]

    used = []
    chunked = objective.linear_cross_entropy_sum
    monkeypatch.setattr(objective, "linear_cross_entropy_sum", lambda *a, **k: used.append(1) or chunked(*a, **k))

    def run(threshold):
        monkeypatch.setattr(objective, "CHUNKED_CE_MIN_ELEMENTS", threshold)
        ocr.zero_grad()
        out = ocr.loss(batch, aux_loss=True)
        out.loss.backward()
        grads = {k: v.clone() for k, v in ocr.official_grads().items()}
        return out.ce.item(), grads

    ce_whole, g_whole = run(1 << 62)
    assert not used
    ce_chunked, g_chunked = run(0)
    assert used
    assert ce_chunked == pytest.approx(ce_whole, rel=1e-6)
    assert g_chunked.keys() == g_whole.keys()
    for k in g_whole:
        torch.testing.assert_close(g_chunked[k], g_whole[k], rtol=1e-4, atol=1e-6)
