"""A fixed-shape KV cache for the fast decode path: one sequence per row, no left padding.

`k[layer], v[layer]`: `[B, heads, capacity, head_dim]`; row b holds its own sequence at slots
0..seqlens[b]-1. Unlike `KVCache` (the reference path's, shared write position plus a padding
mask), every row here has its own length, so attention needs no mask and a decode step is a
fixed-shape computation that a CUDA graph can replay: the new token of row b is written at slot
`seqlens[b]` by an indexed store, and `seqlens` advances in place.

Rows all advance one slot per step (finished rows too, fed a pad token nobody reads), so the
host knows every row's length without asking the device: `prompt_len[b] + steps`.
"""
from __future__ import annotations

import torch


class StaticKVCache:
    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, capacity: int, *,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (batch, heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.seqlens = torch.zeros(batch, dtype=torch.int32, device=device)  # filled slots per row
        self._rows = torch.arange(batch, device=device)

    @property
    def batch(self) -> int:
        return self.seqlens.shape[0]

    @property
    def capacity(self) -> int:
        return self.k[0].shape[2]

    @staticmethod
    def nbytes_for(num_layers: int, batch: int, heads: int, head_dim: int, capacity: int,
                   dtype: torch.dtype) -> int:
        return 2 * num_layers * batch * heads * capacity * head_dim * torch.finfo(dtype).bits // 8

    def write_packed(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                     slots: torch.Tensor) -> None:
        """Prefill store: `k, v [N, heads, head_dim]` of packed tokens at `(rows[i], slots[i])`."""
        self.k[layer][rows, :, slots] = k
        self.v[layer][rows, :, slots] = v

    def write_step(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Decode store: `k, v [B, heads, head_dim]`, row b at slot `seqlens[b]` (not yet advanced)."""
        slots = self.seqlens.long()
        self.k[layer][self._rows, :, slots] = k
        self.v[layer][self._rows, :, slots] = v

    def grown(self, capacity: int) -> "StaticKVCache":
        """A copy with more slots (the filled prefix copied); the old buffers can then be freed."""
        if capacity <= self.capacity:
            return self
        b, h, _, d = self.k[0].shape
        new = StaticKVCache(len(self.k), b, h, d, capacity, dtype=self.k[0].dtype,
                            device=self.k[0].device)
        for old_t, new_t in zip(self.k + self.v, new.k + new.v):
            new_t[:, :, :self.capacity] = old_t
        new.seqlens.copy_(self.seqlens)
        return new
