"""A static key/value cache for the decoder.

One preallocated buffer per layer, `[B, heads, max_len, head_dim]`, filled left to right: the
prompt is written once at prefill and every decode step appends one position. A static shape
(rather than concatenation) keeps memory flat over a long generation and is what a
graph-captured decode step needs later. Rows of a batch share the write position; left
padding is expressed by `key_valid`, which masks the padded slots out of attention.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, max_len: int,
                 *, dtype: torch.dtype, device: torch.device | str):
        shape = (batch, heads, max_len, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # key_valid[b, t]: slot t of row b holds a real token (False for left padding).
        self.key_valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.length = 0  # positions filled so far (shared by every row)
        self.max_len = max_len

    def reserve(self, n: int, valid: torch.Tensor) -> tuple[int, int]:
        """Claim the next `n` slots, marking which hold real tokens (`valid`: `[B, n]` bool)."""
        start, end = self.length, self.length + n
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions > capacity {self.max_len}")
        self.key_valid[:, start:end] = valid
        self.length = end
        return start, end

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store `k`, `v` `[B, H, n, D]` at `start` and return the filled prefix of the layer."""
        end = start + k.shape[2]
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]
