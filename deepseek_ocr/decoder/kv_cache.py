"""A key/value cache for the decoder.

One buffer per layer, `[B, heads, capacity, head_dim]`, filled left to right: the prompt is
written once at prefill and every decode step appends one position. Buffers (rather than a
concatenation per step) keep a long generation from reallocating every token. The capacity
starts at what the prompt plus `initial_new` tokens need and doubles on demand up to `max_len`,
so a batch asking for "whatever fits in the context" does not reserve 8k positions per row up
front (64 rows x 8192 positions would be ~32 GB in bf16). A graph-captured decode step will
want `initial_new=max_len` (a fixed shape). Rows of a batch share the write position; left
padding is expressed by `key_valid`, which masks the padded slots out of attention.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, heads: int, head_dim: int, max_len: int,
                 *, dtype: torch.dtype, device: torch.device | str, capacity: int | None = None):
        capacity = max_len if capacity is None else max(1, min(capacity, max_len))
        shape = (batch, heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        # key_valid[b, t]: slot t of row b holds a real token (False for left padding).
        self.key_valid = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.length = 0  # positions filled so far (shared by every row)
        self.max_len = max_len

    @property
    def capacity(self) -> int:
        return self.key_valid.shape[1]

    def _grow(self, needed: int) -> None:
        new = min(self.max_len, max(needed, 2 * self.capacity))
        extra = new - self.capacity

        def pad(t: torch.Tensor) -> torch.Tensor:
            return torch.cat([t, t.new_zeros(*t.shape[:2], extra, *t.shape[3:])], dim=2)

        self.k = [pad(t) for t in self.k]
        self.v = [pad(t) for t in self.v]
        self.key_valid = torch.cat([self.key_valid, self.key_valid.new_zeros(self.key_valid.shape[0], extra)], 1)

    def reserve(self, n: int, valid: torch.Tensor) -> tuple[int, int]:
        """Claim the next `n` slots, marking which hold real tokens (`valid`: `[B, n]` bool)."""
        start, end = self.length, self.length + n
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions > limit {self.max_len}")
        if end > self.capacity:
            self._grow(end)
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
