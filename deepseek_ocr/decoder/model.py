"""The DeepSeek-V2 MoE decoder: embeddings, 12 pre-norm layers, final norm, untied lm_head."""
from __future__ import annotations

import torch
from torch import nn

from ..config import DecoderConfig
from .attention import Attention, attention_mask, rope_cos_sin
from .kv_cache import KVCache
from .moe import MoE, SwiGLU


class RMSNorm(nn.Module):
    """RMS normalization computed in float32 (float64 for float64 inputs), scaled in the input dtype."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        xf = x.to(torch.promote_types(x.dtype, torch.float32))  # float32, or float64 as given
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(dtype)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: DecoderConfig, index: int):
        super().__init__()
        self.index = index
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(index) else SwiGLU(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x, cos, sin, cache, start, mask, taps=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, self.index, start, mask)
        h = self.post_attention_layernorm(x)
        h = self.mlp(h, taps) if isinstance(self.mlp, MoE) else self.mlp(h)
        return x + h


class Decoder(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)

    def new_cache(self, batch: int, max_len: int, capacity: int | None = None) -> KVCache:
        """A cache for up to `max_len` positions, allocated for `capacity` (grows on demand)."""
        w = self.lm_head.weight
        return KVCache(self.cfg.num_layers, batch, self.cfg.num_heads, self.cfg.head_dim, max_len,
                       dtype=w.dtype, device=w.device, capacity=capacity)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                valid: torch.Tensor | None = None, taps: dict | None = None,
                last_only: bool = False) -> torch.Tensor:
        """Run the decoder over new positions and return float32 logits.

        Args:
            embeds: `[B, T, hidden]` input embeddings of the new positions.
            positions: `[B, T]` rotary positions (per row, so left padding keeps real tokens at 0..).
            cache: KV cache to append to (None: a self-contained causal pass, no padding).
            valid: `[B, T]` bool, False for padding slots (default: all valid).
            taps: optional dict receiving per-layer hidden states and layer routing.
            last_only: compute logits for the last position only (`[B, 1, V]`).
        Returns:
            logits `[B, T, vocab]` (or `[B, 1, vocab]`), float32.
        """
        b, t, _ = embeds.shape
        cos, sin = rope_cos_sin(positions, self.cfg.head_dim, self.cfg.rope_theta, embeds.dtype)
        start, mask = 0, None
        if cache is not None:
            if valid is None:
                valid = torch.ones(b, t, dtype=torch.bool, device=embeds.device)
            start, _ = cache.reserve(t, valid)
            mask = attention_mask(cache, start, t)
        x = embeds
        for layer in self.layers:
            ltaps = {} if taps is not None else None
            x = layer(x, cos, sin, cache, start, mask, ltaps)
            if taps is not None:
                taps[f"layer{layer.index}_out"] = x
                for k, v in ltaps.items():
                    taps[f"layer{layer.index}_{k}"] = v
        if last_only:
            x = x[:, -1:]
        return self.lm_head(self.norm(x)).float()
