"""Gradients through the vision tower (which the official code cannot give), against finite
differences in float64.

For a few parameter tensors of SAM, the compressor, CLIP and the projector, the directional
derivative of the training loss along a random direction v, `(L(p + eps v) - L(p - eps v)) / 2 eps`,
must equal `<grad, v>` from autograd. The whole model runs in float64 (the session model is
converted in place and back: float32 -> float64 -> float32 is exact).
"""
from __future__ import annotations

import pytest
import torch

PARAMS = [
    "vision.sam.blocks.1.mlp.lin1.weight",      # SAM, a windowed block
    "vision.sam.blocks.11.attn.qkv.weight",     # SAM, the last global block
    "vision.sam.net_2.weight",                  # the compressor
    "vision.clip.transformer.layers.3.self_attn.qkv_proj.weight",
    "vision.projector.layers.weight",
    "vision.image_newline",
]


@pytest.fixture(scope="module")
def model64(small_model):
    net = small_model.model
    net.double()
    try:
        yield small_model
    finally:
        net.float()
        small_model.zero_grad()


def test_vision_gradients_match_finite_differences(model64, shared_dir):
    model = model64
    net = model.model
    params = dict(net.named_parameters())
    missing = [p for p in PARAMS if p not in params]
    assert not missing, f"parameter names changed: {missing}"
    inp = model.prepare(shared_dir / "images/receipt_small.jpg", "<image>\nFree OCR.", mode="tiny",
                        answer="TOTAL 12.50")
    inp.global_view = inp.global_view.double()
    model.zero_grad()
    model.loss([inp]).loss.backward()
    gen = torch.Generator().manual_seed(0)
    for name in PARAMS:
        p = params[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} received no gradient"
        v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        v = v / v.norm()
        analytic = float((p.grad * v).sum())
        eps = 1e-4 * float(p.detach().norm()) if p.dim() > 1 else 1e-4
        with torch.no_grad():
            orig = p.detach().clone()
            p.add_(eps * v)
            up = model.loss([inp]).loss.item()
            p.copy_(orig - eps * v)
            down = model.loss([inp]).loss.item()
            p.copy_(orig)
        numeric = (up - down) / (2 * eps)
        assert numeric == pytest.approx(analytic, rel=1e-5, abs=1e-9), (
            f"{name}: autograd {analytic:.10e} vs finite differences {numeric:.10e}")
