"""Multi-head self-attention with rotary positions and the KV cache (DeepSeek-V2, `use_mla: false`)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from .kv_cache import KVCache


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float, dtype: torch.dtype
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin `[B, T, head_dim]` for integer positions `[B, T]` (rotate-half layout).

    Computed in float32 and cast to the activation dtype, as the official rotary table is.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32,
                                             device=positions.device) / head_dim))
    freqs = positions.to(torch.float32)[..., None] * inv_freq  # (B, T, hd/2)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x `[B, H, T, D]`, cos/sin `[B, T, D]`."""
    cos, sin = cos[:, None], sin[:, None]
    return x * cos + rotate_half(x) * sin


def attention_mask(cache: KVCache, q_start: int, q_len: int) -> torch.Tensor:
    """Boolean `[B, 1, q_len, kv_len]`: causal, with padding slots hidden.

    Every query may also see its own slot: a left-padding query would otherwise see no key at
    all, and an all-masked softmax row is NaN. Its output is never read, but keeping it finite
    keeps the NaN/Inf checks on real rows meaningful, at no cost.
    """
    kv_len = q_start + q_len
    device = cache.key_valid.device
    q_pos = torch.arange(q_start, kv_len, device=device)[:, None]
    k_pos = torch.arange(kv_len, device=device)[None, :]
    causal = k_pos <= q_pos  # (q, k)
    allowed = causal[None] & cache.key_valid[:, None, :kv_len]  # (B, q, k)
    allowed = allowed | (k_pos == q_pos)[None]
    return allowed[:, None]


class Attention(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.q_proj = nn.Linear(h, cfg.num_heads * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(h, cfg.num_heads * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(h, cfg.num_heads * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.num_heads * cfg.head_dim, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                cache: KVCache | None, layer: int, start: int,
                mask: torch.Tensor | None) -> torch.Tensor:
        """Args:
            x: `[B, T, hidden]`; cos/sin: `[B, T, head_dim]`.
            cache: the KV cache (None: attend within `x` only, causally, no padding).
            start: the cache slot of x's first position.
            mask: boolean `[B, 1, T, start+T]` from `attention_mask` (None with no cache).
        """
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = self.k_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is None:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k_all, v_all = cache.write(layer, start, k, v)
            out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
