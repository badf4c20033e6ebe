"""SAM ViT-B image encoder with the neck and DeepSeek-OCR's 16x convolutional compressor.

A view of side `S` becomes an `(S/16)^2` patch grid (64x64 at 1024), runs through 12 blocks
(windowed 14x14 attention except the global blocks 2, 5, 8, 11) with decomposed relative
positions, then the neck (768 -> 256) and two stride-2 convolutions (256 -> 512 -> 1024) that
leave `(S/64)^2` tokens of 1024 channels: 16x16 for a 1024 view, 10x10 for a 640 tile.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import kernels
from ..config import SamConfig
from .positions import get_rel_pos, rel_pos_table, remembered  # noqa: F401  (get_rel_pos: public here before)


def resize_abs_pos(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """Resize the `[1, G, G, C]` absolute position table to `[1, grid, grid, C]`.

    Bicubic with antialias in float32, as the official encoder does for inputs other than 1024.
    """
    if pos.shape[1] == grid:
        return pos
    x = pos.permute(0, 3, 1, 2)
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 (float64 stays)  (1, C, G, G)
    x = F.interpolate(x, size=(grid, grid), mode="bicubic", antialias=True, align_corners=False)
    return x.to(pos.dtype).permute(0, 2, 3, 1)


def rel_pos_terms(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                  hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The two decomposed terms `[B, h*w, kh]` and `[B, h*w, kw]` of the bias of `rel_pos_bias`
    (query rows in row-major grid order), from the *unscaled* query `[B, h*w, C]`."""
    h, w = hw
    r_h = rel_pos_table(rel_pos_h, h)  # (h, h, C)
    r_w = rel_pos_table(rel_pos_w, w)  # (w, w, C)
    b, _, c = q.shape
    r_q = q.reshape(b, h, w, c)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, r_h)  # (B, h, w, kh)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, r_w)  # (B, h, w, kw)
    return bias_h.reshape(b, h * w, h), bias_w.reshape(b, h * w, w)


def _bias_rows(bias_h: torch.Tensor, bias_w: torch.Tensor) -> torch.Tensor:
    """`[B, rows, kh*kw]` bias of some query rows from their two terms (B, rows, kh), (B, rows, kw)."""
    b, rows, kh = bias_h.shape
    bias = bias_h[:, :, :, None] + bias_w[:, :, None, :]  # (B, rows, kh, kw)
    return bias.reshape(b, rows, kh * bias_w.shape[-1])


def rel_pos_bias(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                 hw: tuple[int, int]) -> torch.Tensor:
    """Decomposed relative-position bias `[B, h*w, h*w]` from the *unscaled* query `[B, h*w, C]`."""
    return _bias_rows(*rel_pos_terms(q, rel_pos_h, rel_pos_w, hw))


# The reference materialises the bias, `[B*heads, N, N]` floats: 805 MB in float32 for the
# global blocks of one 1024 view (N = 4096), and SDPA adds N x N buffers of its own. Rows of
# softmax(q.k / sqrt(d) + bias) v are independent, so a call whose bias would pass this many
# elements is split by views and by query rows. That bounds the memory without changing the
# float32 forward on the CPU (bitwise, real sizes included); float64 and the gradients of k and
# v (summed over rows in another order) agree to rounding (tests/test_sam_reference_chunks.py).
_MAX_BIAS_ELEMENTS = 2**25  # 128 MB of float32 bias per SDPA call


def attention_with_rel_pos(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, rel_pos_h: torch.Tensor,
                           rel_pos_w: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """The reference: softmax(q.k / sqrt(d) + bias) v with the materialised `[N, N]` bias.

    q, k, v `[B, nh, N, hd]`; the bias comes from the unscaled query. At most
    `_MAX_BIAS_ELEMENTS` of bias exist at once (whole views, or one view's query rows, per call).
    """
    b, nh, n, hd = q.shape
    bias_h, bias_w = rel_pos_terms(q.reshape(b * nh, n, hd), rel_pos_h, rel_pos_w, hw)  # (B*nh, N, k)
    if b * nh * n * n <= _MAX_BIAS_ELEMENTS:
        bias = _bias_rows(bias_h, bias_w)  # (B*nh, N, N)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.view(b, nh, n, n))
    bias_h, bias_w = bias_h.reshape(b, nh, n, -1), bias_w.reshape(b, nh, n, -1)
    views = max(1, _MAX_BIAS_ELEMENTS // (nh * n * n))  # whole views per call
    rows = n
    if views == 1:  # query rows per call: at most the budget's, in equal parts
        calls = -(-n // max(1, _MAX_BIAS_ELEMENTS // (nh * n)))
        rows = -(-n // calls)
    out = []
    for v0 in range(0, b, views):
        v1 = min(b, v0 + views)
        parts = []
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            bias = _bias_rows(bias_h[v0:v1, :, r0:r1].flatten(0, 1), bias_w[v0:v1, :, r0:r1].flatten(0, 1))
            parts.append(F.scaled_dot_product_attention(
                q[v0:v1, :, r0:r1], k[v0:v1], v[v0:v1], attn_mask=bias.view(v1 - v0, nh, r1 - r0, n)))
        out.append(torch.cat(parts, dim=2) if len(parts) > 1 else parts[0])
    return torch.cat(out) if len(out) > 1 else out[0]


def _window_parts(size: int, window: int) -> list[tuple[slice, slice, slice, int, int]]:
    """The rectangular parts of one axis of `size` tokens cut into windows: for the full windows,
    then the partial last one (if any), `(token slice, window slice, in-window slice, windows,
    tokens per window)`."""
    full, rem = divmod(size, window)
    parts = []
    if full:
        parts.append((slice(0, full * window), slice(0, full), slice(0, window), full, window))
    if rem:
        parts.append((slice(full * window, size), slice(full, full + 1), slice(0, rem), 1, rem))
    return parts


def _copy_windows(tokens: torch.Tensor, grid: torch.Tensor, window: int, to_grid: bool) -> None:
    """Copy between `tokens [B, H, W, *rest]` and `grid [B, H', window, W', window, *rest]` (the
    windows seen as padded rows and columns) where the two overlap: one strided copy per part
    (1, 2 or 4 of them), so every value moves once and no padded intermediate is made."""
    for rows, wy, iy, ny, ty in _window_parts(tokens.shape[1], window):
        for cols, wx, ix, nx, tx in _window_parts(tokens.shape[2], window):
            t = tokens[:, rows, cols].unflatten(1, (ny, ty)).unflatten(3, (nx, tx))
            g = grid[:, wy, iy, wx, ix]
            if to_grid:
                g.copy_(t)
            else:
                t.copy_(g)


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split `[B, H, W, C]` into `[B*nw, window, window, C]`, zero-padding H, W to multiples.

    One pass over `x` (the zeros are written into the padding only): the same values as padding
    with `F.pad` and permuting, without the padded `[B, Hp, Wp, C]` copy in between.
    """
    b, h, w, c = x.shape
    nh, nw = -(-h // window), -(-w // window)
    hp, wp = nh * window, nw * window
    if hp == h and wp == w:  # no padding: a view and one permuting copy
        x = x.unflatten(1, (nh, window)).unflatten(3, (nw, window))
        return x.permute(0, 1, 3, 2, 4, 5).reshape(-1, window, window, c), (hp, wp)
    windows = x.new_empty(b, nh, nw, window, window, c)
    grid = windows.permute(0, 1, 3, 2, 4, 5)  # (B, nh, window, nw, window, C): padded rows, columns
    if hp != h:
        grid[:, -1, window - (hp - h):].zero_()
    if wp != w:
        grid[:, :, :, -1, window - (wp - w):].zero_()
    _copy_windows(x, grid, window, to_grid=True)
    return windows.view(-1, window, window, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window: int, padded: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of `window_partition`: back to `[B, H, W, *rest]`, dropping the padding.

    `windows` is `[B*nw, window, window, *rest]` with any strides that allow splitting its first
    dimension (e.g. the attention output as `[B*nw, window, window, heads, head_dim]`, a
    transposed view); the result is contiguous, made by one pass over the kept values.
    """
    hp, wp = padded
    h, w = hw
    nh, nw = hp // window, wp // window
    b = windows.shape[0] // (nh * nw)
    grid = windows.unflatten(0, (b, nh, nw)).transpose(2, 3)  # (B, nh, window, nw, window, *rest)
    out = windows.new_empty(b, h, w, *windows.shape[3:])
    _copy_windows(out, grid, window, to_grid=False)
    return out


class SamAttention(nn.Module):
    def __init__(self, dim: int, heads: int, rel_size: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * rel_size - 1, self.head_dim))

    def attend(self, x: torch.Tensor) -> torch.Tensor:
        """The attention before `proj`: `[B, h, w, C]` -> `[B, h*w, heads, head_dim]`.

        Whatever strides the attention left: the kernel writes `[B, N, heads, head_dim]`
        memory (contiguous here), the reference's SDPA `[B, heads, N, head_dim]` (transposed).
        """
        b, h, w, _ = x.shape
        n = h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hd) each: strided views of qkv
        out = kernels.sam_rel_attention(attention_with_rel_pos, q, k, v, self.rel_pos_h,
                                        self.rel_pos_w, (h, w))  # (B, nh, N, hd)
        return out.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        # free for the kernel's [B, N, heads, head_dim] output, a copy for SDPA's
        return self.proj(self.attend(x).reshape(b, h, w, -1))


class SamMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))


class SamBlock(nn.Module):
    def __init__(self, cfg: SamConfig, window: int):
        super().__init__()
        self.window = window  # 0 = global attention
        rel_size = window if window else cfg.pretrain_grid
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = SamAttention(cfg.width, cfg.heads, rel_size)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = SamMLP(cfg.width, cfg.mlp_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H, W, C)
        shortcut = x
        x = self.norm1(x)
        if self.window:
            # `proj` works token by token, so it runs after the windows are put back: one copy
            # of the attention output (whatever its strides) in grid order, padding dropped,
            # and `proj` on the H*W real tokens only.
            b, h, w, _ = x.shape
            x, padded = window_partition(x, self.window)
            o = self.attn.attend(x).unflatten(1, (self.window, self.window))  # (B*nw, win, win, nh, hd)
            x = self.attn.proj(window_unpartition(o, self.window, padded, (h, w)).view(b, h, w, -1))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channels of a `[B, C, H, W]` map."""

    def __init__(self, channels: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The official code spells out mean, biased variance, (x - mean) / sqrt(var + eps), the
        # affine: the same function as F.layer_norm over the channels. That runs on a
        # channels-last view: the neck's input is one (SAM's [B, H, W, C] permuted), its
        # convolutions keep that layout, so no copy and one kernel instead of eight. (In bf16
        # F.layer_norm keeps its statistics in float32 where the spelled-out ops round each
        # step to bf16. In float32 on the parity images, the neck's relative L2 error against
        # the recorded outputs went from 9.7e-7 to 1.0e-6: rounding, as the formula is the same.)
        y = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), self.weight, self.bias, self.eps)
        return y.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.proj = nn.Conv2d(3, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels `[B, 3, H, W]` -> `[B, H/16, W/16, C]` (contiguous).

        The convolution (kernel = stride = 16) over non-overlapping patches is one matmul: the
        pixels cut into `[B, H/16, W/16, 3*16*16]` patches (one copy, in the (channel, y, x)
        order of the weight's flattening) times the weight as `[C, 3*16*16]`, plus the bias.
        cuDNN's implicit-GEMM convolution ran it at ~11 TFLOP/s in bf16; the matmul also leaves
        the tokens channels-last, where the convolution's `[B, C, h, w]` output had to be
        permuted (and every later op of the residual stream saw that permuted layout). On the
        CPU in float32 the recorded parity outputs stay as close as with the convolution
        (largest relative L2 error 1.94e-6 either way), so this is the one path everywhere.
        """
        p = self.proj.kernel_size[0]
        b, c, hgt, wid = x.shape
        gh, gw = hgt // p, wid // p
        x = x[:, :, :gh * p, :gw * p]  # as the convolution: a remainder under one patch is dropped
        patches = x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b, gh, gw, c * p * p)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class SamEncoder(nn.Module):
    """Pixels `[B, 3, S, S]` -> compressed map `[B, 1024, S/64, S/64]`."""

    def __init__(self, cfg: SamConfig):
        super().__init__()
        self.cfg = cfg
        g = cfg.pretrain_grid
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, cfg.width))
        self.blocks = nn.ModuleList(
            SamBlock(cfg, 0 if i in cfg.global_attn_indexes else cfg.window_size)
            for i in range(cfg.depth))
        n = cfg.neck_channels
        self.neck = nn.Sequential(
            nn.Conv2d(cfg.width, n, kernel_size=1, bias=False), LayerNorm2d(n, cfg.eps),
            nn.Conv2d(n, n, kernel_size=3, padding=1, bias=False), LayerNorm2d(n, cfg.eps))
        c1, c2 = cfg.downsample_channels
        self.net_2 = nn.Conv2d(n, c1, kernel_size=3, stride=2, padding=1, bias=False)
        self.net_3 = nn.Conv2d(c1, c2, kernel_size=3, stride=2, padding=1, bias=False)

    def forward(self, pixels: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        """Args:
            pixels: `[B, 3, S, S]` normalized to [-1, 1].
            taps: optional dict filled with intermediate tensors (for stage-by-stage checks).
        """
        x = self.patch_embed(pixels)
        x = x + remembered(resize_abs_pos, self.pos_embed, x.shape[1])
        for i, block in enumerate(self.blocks):
            x = block(x)
            if taps is not None:
                taps[f"sam_block{i}"] = x
        x = self.neck(x.permute(0, 3, 1, 2))  # (B, 256, H, W)
        if taps is not None:
            taps["sam_neck"] = x
        return self.net_3(self.net_2(x))
