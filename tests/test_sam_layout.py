"""SAM's layout work without copies of whole activations: each piece against the plain spelling it
replaces (the official code's), in float64 on random inputs.

- the patch embedding as patches x weight (one matmul) against `F.conv2d` (kernel = stride = 16);
- `window_partition` / `window_unpartition` by strided copies of the overlapping parts against
  `F.pad` + permute + `reshape` (equal: both only move values), gradients included;
- `LayerNorm2d` as `F.layer_norm` on a channels-last view against mean / variance spelled out;
- a windowed `SamBlock` with `proj` after the windows are put back against `proj` on the windows.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.config import SamConfig
from deepseek_ocr.vision import sam


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("size", [(64, 64), (48, 80), (50, 37)], ids=["square", "oblong", "remainder"])
def test_patch_embed_matmul_is_the_convolution(size):
    g = _gen(0)
    embed = sam.PatchEmbed(SamConfig()).double()
    with torch.no_grad():
        embed.proj.weight.normal_(0, 0.05, generator=g)
        embed.proj.bias.normal_(0, 0.5, generator=g)
    x = torch.randn(2, 3, *size, generator=g, dtype=torch.float64)
    got = embed(x)
    want = F.conv2d(x, embed.proj.weight, embed.proj.bias, stride=16).permute(0, 2, 3, 1)
    assert got.shape == want.shape == (2, size[0] // 16, size[1] // 16, 768)
    assert got.is_contiguous()
    assert (got - want).abs().max().item() <= 1e-12 * want.abs().max().item()


def _partition_reference(x, window):
    b, h, w, c = x.shape
    pad_h, pad_w = (window - h % window) % window, (window - w % window) % window
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // window, window, wp // window, window, c)
    return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)


def _unpartition_reference(windows, window, padded, hw):
    hp, wp = padded
    b = windows.shape[0] // ((hp // window) * (wp // window))
    x = windows.reshape(b, hp // window, wp // window, window, window, -1)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(b, hp, wp, -1)
    return x[:, :hw[0], :hw[1]].contiguous()


# (H, W): no padding, both padded (a 640 tile's 40 -> 42, a 1024 view's 64 -> 70), one padded
GRIDS = [(28, 14), (40, 40), (64, 64), (15, 28), (14, 3)]


@pytest.mark.parametrize("hw", GRIDS, ids=[f"{h}x{w}" for h, w in GRIDS])
def test_window_partition_and_back(hw):
    g = _gen(1)
    x = torch.randn(2, *hw, 8, generator=g, dtype=torch.float64)
    windows, padded = sam.window_partition(x, 14)
    want, want_padded = _partition_reference(x, 14)
    assert padded == want_padded and windows.is_contiguous()
    assert torch.equal(windows, want)  # the padding included: zeros
    back = sam.window_unpartition(windows, 14, padded, hw)
    assert back.is_contiguous() and torch.equal(back, x)
    # trailing dimensions of any strides: the attention output as (B*nw, win, win, heads, hd),
    # a transposed view
    heads = windows.view(*windows.shape[:3], 2, 4).transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not heads.is_contiguous()
    assert torch.equal(sam.window_unpartition(heads, 14, padded, hw).flatten(3), x)


def test_window_partition_gradients():
    g = _gen(2)
    x = torch.randn(1, 40, 29, 6, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(1, 40, 29, 6, generator=g, dtype=torch.float64)
    grads = []
    for part, unpart in ((sam.window_partition, sam.window_unpartition),
                         (_partition_reference, _unpartition_reference)):
        windows, padded = part(x, 14)
        out = unpart(windows.sin(), 14, padded, (40, 29))
        grads.append(torch.autograd.grad((out * weight).sum(), x)[0])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("channels_last", [True, False], ids=["channels-last", "contiguous"])
def test_layer_norm_2d_is_the_official_formula(channels_last):
    g = _gen(3)
    norm = sam.LayerNorm2d(16, eps=1e-6).double()
    with torch.no_grad():
        norm.weight.normal_(1, 0.2, generator=g)
        norm.bias.normal_(0, 0.2, generator=g)
    x = 3 + 2 * torch.randn(2, 16, 5, 7, generator=g, dtype=torch.float64)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    mean = x.mean(1, keepdim=True)
    var = (x - mean).pow(2).mean(1, keepdim=True)
    want = norm.weight[:, None, None] * (x - mean) / torch.sqrt(var + 1e-6) + norm.bias[:, None, None]
    got = norm(x)
    assert got.shape == x.shape
    assert (got - want).abs().max().item() <= 1e-12


def test_windowed_block_projects_after_unpartition():
    """`proj` on the H*W real tokens after the windows are put back equals `proj` on every
    window (padding included) followed by the unpartition, as the official code orders it."""
    g = _gen(4)
    cfg = SamConfig(width=128, heads=2, mlp_dim=256)
    block = sam.SamBlock(cfg, window=14).double()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0, 0.1, generator=g)
    x = torch.randn(2, 17, 30, 128, generator=g, dtype=torch.float64)
    with torch.no_grad():
        got = block(x)
        h = block.norm1(x)
        windows, padded = _partition_reference(h, 14)
        h = _unpartition_reference(block.attn(windows), 14, padded, (17, 30))
        h = x + h
        want = h + block.mlp(block.norm2(h))
    assert (got - want).abs().max().item() <= 1e-12
