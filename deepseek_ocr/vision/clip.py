"""CLIP-L/14 transformer that reads SAM's compressed map as its patch embeddings.

DeepSeek-OCR never runs CLIP's own 14x14 patch convolution: the `[B, 1024, g, g]` map from
SAM's compressor is flattened into `g*g` tokens, a class token is prepended, and the 16x16
position table (trained at 224 px) is resized bicubically to `g x g`. The checkpoint still
carries `embeddings.patch_embedding.weight`; we keep it as an unused parameter so that a
saved checkpoint round-trips byte for byte.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ClipConfig
from .positions import remembered


def resize_clip_pos(pos: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Position table `[1 + G*G, C]` -> `[num_tokens, C]` (class row kept, grid resized)."""
    if pos.shape[0] == num_tokens:
        return pos
    cls_pos, grid_pos = pos[:1], pos[1:]
    src = int(math.isqrt(grid_pos.shape[0]))
    dst = int(math.isqrt(num_tokens - 1))
    x = grid_pos.reshape(1, src, src, -1).permute(0, 3, 1, 2)
    x = x.to(torch.promote_types(x.dtype, torch.float32))  # float32 (float64 stays)  (1, C, G, G)
    x = F.interpolate(x, size=(dst, dst), mode="bicubic", antialias=True, align_corners=False)
    x = x.to(pos.dtype).permute(0, 2, 3, 1).reshape(dst * dst, -1)
    return torch.cat([cls_pos, x], dim=0)


class ClipEmbeddings(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.zeros(cfg.width))
        self.patch_embedding = nn.Conv2d(3, cfg.width, cfg.patch_size, cfg.patch_size, bias=False)
        self.position_embedding = nn.Embedding(cfg.num_positions, cfg.width)

    def forward(self, sam_map: torch.Tensor) -> torch.Tensor:
        b = sam_map.shape[0]
        patches = sam_map.flatten(2).transpose(1, 2)  # (B, g*g, C)
        cls = self.class_embedding.expand(b, 1, -1).to(patches.dtype)
        x = torch.cat([cls, patches], dim=1)  # (B, 1+g*g, C)
        return x + remembered(resize_clip_pos, self.position_embedding.weight, x.shape[1])


class ClipAttention(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv_proj = nn.Linear(cfg.width, 3 * cfg.width)
        self.out_proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv_proj(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, nh, N, hd)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class ClipMLP(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        return self.fc2(h * torch.sigmoid(1.702 * h))  # quick-GELU


class ClipLayer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.self_attn = ClipAttention(cfg)
        self.layer_norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = ClipMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class ClipTransformer(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.layers = nn.ModuleList(ClipLayer(cfg) for _ in range(cfg.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


class ClipEncoder(nn.Module):
    """SAM map `[B, 1024, g, g]` -> `[B, 1 + g*g, 1024]` (class token first, no final norm)."""

    def __init__(self, cfg: ClipConfig):
        super().__init__()
        self.embeddings = ClipEmbeddings(cfg)
        self.pre_layrnorm = nn.LayerNorm(cfg.width, eps=cfg.eps)  # sic: the checkpoint's spelling
        self.transformer = ClipTransformer(cfg)

    def forward(self, sam_map: torch.Tensor) -> torch.Tensor:
        return self.transformer(self.pre_layrnorm(self.embeddings(sam_map)))
