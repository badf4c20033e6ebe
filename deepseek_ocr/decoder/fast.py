"""The decoder's fast schedule: packed prefill and a fixed-shape one-token step.

Same weights and the same function as `Decoder` (which stays the reference), arranged for speed:

* Prefill packs the prompts of a batch end to end (`[N, hidden]`, `cu_seqlens`), so no compute
  is spent on padding, and runs causal attention per sequence (`kernels.prefill_attention`).
* A decode step takes one token per row and reads each row's keys from the cache it is given
  (the engine's paged cache, `engine.paged_cache.PagedBatch`: `begin_step`, `rope_and_store`,
  `attend`, `advance`). Every tensor shape depends only on the batch size and the cache's
  fixed sizes, and nothing asks the host for a value, so the step can be captured in a CUDA graph.
* q, k and v are one matmul (weights concatenated once, here; the checkpoint keeps them apart).
* The residual stream is carried beside the layer outputs: each residual add is folded into the
  RMSNorm after it (`kernels.add_rms_norm`), and a decode step's rotary and KV store are one op
  (`kernels.rope_and_store`), so a layer is: add+norm, qkv GEMM, rope+store, attention, o_proj,
  add+norm, MLP. With kernels off (or on the CPU) the references compute what the plain ops
  did, bit for bit (`x + residual` is `residual + x` in IEEE arithmetic).

The MoE layers go through the same kernel seam as the reference (`kernels.moe_route`,
`kernels.moe_experts`), on the flattened tokens.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels
from .attention import rope_cos_sin, rotate_half
from .model import Decoder


class FastDecoder(nn.Module):
    """Wraps a loaded `Decoder`; holds no weights of its own except the fused q/k/v."""

    def __init__(self, decoder: Decoder):
        super().__init__()
        self.decoder = decoder
        cfg = decoder.cfg
        self.cfg = cfg
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        with torch.no_grad():
            self.qkv = [torch.cat([l.self_attn.q_proj.weight, l.self_attn.k_proj.weight,
                                   l.self_attn.v_proj.weight]) for l in decoder.layers]  # (3*nh*hd, H)

    def _rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin `[T, 1, head_dim]` for positions `[T]`: the reference's table (one position per row)."""
        return rope_cos_sin(positions[:, None], self.head_dim, self.cfg.rope_theta, dtype)

    def _qkv(self, i: int, h: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        t = h.shape[0]
        q, k, v = (h @ self.qkv[i].t()).view(t, 3, self.heads, self.head_dim).unbind(1)  # (T, nh, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        return q, k, v

    @staticmethod
    def _add_norm(norm, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`(norm(x + residual), x + residual)` for an `RMSNorm` module (residual None: no add)."""
        return kernels.add_rms_norm(x, residual, norm.weight, norm.eps)

    def _logits(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        h, _ = self._add_norm(self.decoder.norm, x, residual)
        return self.decoder.lm_head(h).float()

    @torch.inference_mode()
    def prefill(self, embeds: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int,
                cache, slots: torch.Tensor) -> torch.Tensor:
        """Run packed prompts and store their keys in rows `slots` of `cache`, from slot 0.

        Args:
            embeds: `[N, hidden]`, the B prompts end to end.
            cu_seqlens: int32 `[B+1]` on the device, prompt b is rows cu[b]..cu[b+1]-1.
            max_seqlen: the longest prompt (a Python int).
            cache: holds `write_packed(layer, k, v, rows, positions)` and `seqlens`; the rows
                must already own room for their prompts.
            slots: int64 `[B]`, the cache row of each prompt; their seqlens are set.
        Returns:
            float32 logits `[B, vocab]` at each prompt's last position.
        """
        n = embeds.shape[0]
        b = cu_seqlens.shape[0] - 1
        lengths = cu_seqlens[1:] - cu_seqlens[:-1]
        rows = torch.repeat_interleave(torch.arange(b, device=embeds.device), lengths, output_size=n)
        positions = torch.arange(n, device=embeds.device) - cu_seqlens[:-1].long()[rows]  # (N,)
        cache_rows = slots[rows]
        cos, sin = self._rope(positions, embeds.dtype)
        x, residual = embeds, None  # the layer input is x + residual (residual None: x alone)
        for i, layer in enumerate(self.decoder.layers):
            h, residual = self._add_norm(layer.input_layernorm, x, residual)
            q, k, v = self._qkv(i, h, cos, sin)
            cache.write_packed(i, k, v, cache_rows, positions)
            attn = kernels.prefill_attention(q, k, v, cu_seqlens, max_seqlen)  # (N, nh, hd)
            x = layer.self_attn.o_proj(attn.reshape(n, -1))
            h, residual = self._add_norm(layer.post_attention_layernorm, x, residual)
            x = layer.mlp(h)
        cache.seqlens[slots] = lengths.to(torch.int32)
        last = cu_seqlens[1:].long() - 1  # the final add and norm for the last rows only
        return self._logits(x[last], residual[last])

    def step(self, tokens: torch.Tensor, batch) -> torch.Tensor:
        """One token per row (`tokens [B]`) at position `batch.begin_step()`; logits `[B, V]`.

        `batch` gives the positions (`begin_step`), rotates q/k and stores k/v
        (`rope_and_store`), attends over each row's cache (`attend`) and then advances the rows
        (`advance`). Fixed shapes, no host reads: capturable.
        """
        x = self.decoder.embed_tokens(tokens)  # (B, hidden)
        b = x.shape[0]
        cos, sin = self._rope(batch.begin_step(), x.dtype)  # once per step, for every layer
        residual = None
        for i, layer in enumerate(self.decoder.layers):
            h, residual = self._add_norm(layer.input_layernorm, x, residual)
            q = batch.rope_and_store(i, h @ self.qkv[i].t(), cos, sin)  # (B, nh, hd), k/v stored
            attn = batch.attend(i, q)
            x = layer.self_attn.o_proj(attn.reshape(b, -1))
            h, residual = self._add_norm(layer.post_attention_layernorm, x, residual)
            x = layer.mlp(h)
        batch.advance()
        return self._logits(x, residual)
