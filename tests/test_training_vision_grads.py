"""Gradients through the vision tower (which the official code cannot give), against finite
differences in float64.

For parameters of SAM (a windowed and a global block, the position table), the compressor, CLIP
and the projector, the directional derivative of the training loss along a random direction v,
`(L(p + eps v) - L(p - eps v)) / 2 eps`, must equal `<grad, v>` from autograd.

The model is the tiny one of tests/tiny_model.py (the official vision architecture at small
widths) with a dense decoder: with MoE routing, a perturbation can flip an expert choice, a jump
that no finite difference of a smooth function sees (measured: 1% apart on the parity
checkpoint), while the vision code path under test is the same.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import tiny_model  # noqa: E402

PARAMS = [
    "vision.sam.blocks.0.mlp.lin1.weight",      # SAM, a windowed block
    "vision.sam.blocks.1.attn.qkv.weight",      # SAM, the global block
    "vision.sam.blocks.1.attn.rel_pos_h",       # the relative-position table
    "vision.sam.net_2.weight",                  # the compressor
    "vision.clip.transformer.layers.1.self_attn.qkv_proj.weight",
    "vision.clip.embeddings.class_embedding",
    "vision.projector.layers.weight",
    "vision.image_newline",
    "vision.view_seperator",
]


def _page() -> Image.Image:
    img = Image.new("RGB", (900, 600), "white")
    draw = ImageDraw.Draw(img)
    for i in range(8):
        draw.text((40, 40 + 60 * i), f"line {i}: total 12.50", fill=(i * 20, 0, 0))
    return img


# A global view with tiles at small sizes (Gundam's layout, at a fraction of its cost in float64).
@pytest.mark.parametrize("mode", ["512:256:crop"])
def test_vision_gradients_match_finite_differences(mode):
    model = tiny_model(dense=True)
    net = model.model.double()
    params = dict(net.named_parameters())
    missing = [p for p in PARAMS if p not in params]
    assert not missing, f"parameter names changed: {missing}"
    inp = model.prepare(_page(), "<image>\nFree OCR.", mode=mode, answer="TOTAL 12.50")
    assert inp.crops.shape[0] > 1, "the page should be cut into tiles"
    model.zero_grad()
    model.loss([inp]).loss.backward()
    gen = torch.Generator().manual_seed(0)
    for name in PARAMS:
        p = params[name]
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} received no gradient"
        v = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        v = v / v.norm()
        analytic = float((p.grad * v).sum())
        eps = 1e-5 * max(float(p.detach().norm()), 1.0)
        with torch.no_grad():
            orig = p.detach().clone()
            p.add_(eps * v)
            up = model.loss([inp]).loss.item()
            p.copy_(orig - eps * v)
            down = model.loss([inp]).loss.item()
            p.copy_(orig)
        numeric = (up - down) / (2 * eps)
        assert numeric == pytest.approx(analytic, rel=1e-6, abs=1e-12), (
            f"{name}: autograd {analytic:.12e} vs finite differences {numeric:.12e}")


def test_frozen_sam_gets_no_gradient_and_clip_does():
    from deepseek_ocr.training.trainable import set_trainable
    model = tiny_model()
    set_trainable(model.model, "paper")
    inp = model.prepare(_page(), "<image>\nFree OCR.", mode="tiny", answer="TOTAL")
    model.loss([inp]).loss.backward()
    grads = model.official_grads()
    assert not any(n.startswith("model.sam_model.") for n in grads)
    assert any(n.startswith("model.vision_model.") for n in grads)
    assert "model.projector.layers.weight" in grads and "model.layers.0.mlp.down_proj.weight" in grads


def test_the_loss_reads_uint8_levels_as_their_pixels():
    # A sample prepared with `pixel_codes` (as the server and the batch command prepare) trains
    # as the one with bf16 pixels: the same loss and gradients, alone or batched with it.
    model = tiny_model()
    page = _page()
    plain = model.prepare(page, "<image>\nFree OCR.", mode="512:256:crop", answer="TOTAL 12.50")
    coded = model.prepare(page, "<image>\nFree OCR.", mode="512:256:crop", answer="TOTAL 12.50", pixel_codes=True)
    assert coded.global_view.dtype == torch.uint8
    grads = []
    for batch in ([plain, plain], [plain, coded]):
        model.zero_grad()
        loss = model.loss(batch)
        loss.loss.backward()
        grads.append((loss.loss.item(), model.model.vision.clip.transformer.layers[1].self_attn.qkv_proj.weight.grad.clone()))
    assert grads[0][0] == grads[1][0] and torch.equal(grads[0][1], grads[1][1])
