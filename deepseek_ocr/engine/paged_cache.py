"""A paged KV cache: fixed-size blocks from one pool, and a block table per engine slot.

Memory follows the tokens actually held: a request owns ceil(length / block_size) blocks, taken
from a free list as it grows and returned the moment it ends, instead of a row of the longest
possible length. Per layer the pools are `[num_blocks, heads, block_size, head_dim]` (a block of
one head is a contiguous tile for the attention kernel). Slot s of row r lives at block
`table[r, s // block_size]`, offset `s % block_size`.

Block 0 is never handed out: rows without a request (the padding of a CUDA-graph bucket) point
every table entry at it, so their writes land there and nobody reads them.

The host owns allocation (a Python free list); the device holds the table and the lengths, so a
decode step reads and writes them without asking the host (CUDA-graph capturable).
"""
from __future__ import annotations

import torch

from .. import kernels
from .transfer import to_device


class CacheFullError(RuntimeError):
    """No free block: the engine preempts a request (internal, never reaches a user)."""


class PagedKVCache:
    def __init__(self, num_layers: int, slots: int, heads: int, head_dim: int, *, num_blocks: int,
                 block_size: int, context: int, dtype: torch.dtype, device: torch.device | str):
        if block_size < 1 or block_size & (block_size - 1):
            raise ValueError(f"block_size must be a power of two, got {block_size}")
        if num_blocks < 2:
            raise ValueError(f"the pool needs at least 2 blocks (block 0 is scratch), got {num_blocks}")
        self.block_size, self.num_blocks, self.slots = block_size, num_blocks, slots
        self.max_blocks = -(-context // block_size)
        shape = (num_blocks, heads, block_size, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.table = torch.zeros(slots, self.max_blocks, dtype=torch.int32, device=device)
        self.seqlens = torch.zeros(slots, dtype=torch.int32, device=device)  # filled slots per row
        self.active = torch.zeros(slots, dtype=torch.int32, device=device)  # 1: advances per step
        self._free = list(range(num_blocks - 1, 0, -1))  # pop() hands out low ids first
        self._owned: list[list[int]] = [[] for _ in range(slots)]

    @staticmethod
    def bytes_per_block(num_layers: int, heads: int, head_dim: int, block_size: int, dtype: torch.dtype) -> int:
        return 2 * num_layers * heads * block_size * head_dim * torch.finfo(dtype).bits // 8

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def owned(self, slot: int) -> int:
        return len(self._owned[slot])

    def reserve(self, slot: int, tokens: int) -> None:
        """Make row `slot` hold blocks for `tokens` slots; CacheFullError (nothing taken) if the
        pool cannot."""
        want = self.blocks_for(tokens)
        if want > self.max_blocks:
            raise ValueError(f"{tokens} tokens exceed the context of {self.max_blocks * self.block_size}")
        have = self._owned[slot]
        extra = want - len(have)
        if extra <= 0:
            return
        if extra > len(self._free):
            raise CacheFullError(f"{extra} blocks wanted, {len(self._free)} free")
        new = [self._free.pop() for _ in range(extra)]
        self.table[slot, len(have):want] = to_device(new, torch.int32, self.table.device)
        have.extend(new)

    def grow(self, num_blocks: int) -> None:
        """Enlarge the pool to `num_blocks` blocks: new K/V tensors with the old blocks copied
        in, so the tables stay valid (torch.OutOfMemoryError, nothing changed, if they do not
        fit). The tensors' addresses change: anything that captured the old ones is stale."""
        if num_blocks <= self.num_blocks:
            return
        k = [torch.zeros((num_blocks,) + t.shape[1:], dtype=t.dtype, device=t.device) for t in self.k]
        v = [torch.zeros((num_blocks,) + t.shape[1:], dtype=t.dtype, device=t.device) for t in self.v]
        for dst, src in zip(k + v, self.k + self.v):
            dst[:self.num_blocks] = src
        self._free[:0] = list(range(num_blocks - 1, self.num_blocks - 1, -1))  # after the old free ones
        self.k, self.v, self.num_blocks = k, v, num_blocks

    def release(self, slot: int) -> None:
        """Give row `slot`'s blocks back and point it at the scratch block."""
        self._free.extend(reversed(self._owned[slot]))
        self._owned[slot] = []
        self.table[slot].zero_()
        self.seqlens[slot] = 0
        self.active[slot] = 0

    # ------------------------------------------------------------------ the decoder's side
    def write_packed(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor,
                     positions: torch.Tensor) -> None:
        """Prefill store: `k, v [N, heads, head_dim]` of packed tokens; token i belongs to table
        row `rows[i]` at logical slot `positions[i]`."""
        blocks = self.table[rows, positions // self.block_size].long()
        offsets = positions % self.block_size
        self.k[layer][blocks, :, offsets] = k
        self.v[layer][blocks, :, offsets] = v


class PagedBatch:
    """The first `rows` table rows seen as one decode batch (views: stable addresses for graphs).

    The protocol `FastDecoder.step` uses: `begin_step`, `rope_and_store` (or `write_step`),
    `attend`, `advance`.
    """

    def __init__(self, cache: PagedKVCache, rows: int, blocks: int | None = None):
        """`blocks`: read only the first `blocks` table columns (an eager step whose rows the
        host knows to be shorter; a captured step reads them all)."""
        self.cache, self.rows = cache, rows
        self.seqlens = cache.seqlens[:rows]
        self.table = cache.table[:rows] if blocks is None else cache.table[:rows, :blocks]
        self.active = cache.active[:rows]
        self._row_ids = torch.arange(rows, device=cache.table.device)
        self._visible: torch.Tensor | None = None  # this step's attended lengths, see begin_step

    def positions(self) -> torch.Tensor:
        return self.seqlens

    def begin_step(self) -> torch.Tensor:
        """Start a decode step: the new tokens' positions (`seqlens`, not yet advanced).

        Also computes, once for every layer of the step, the lengths attention reads (the new
        slot included): one kernel per step instead of one per layer. Called inside the step, so
        a captured graph recomputes them on each replay.
        """
        self._visible = self.seqlens + 1
        return self.seqlens

    def rope_and_store(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotary on the step's fused `qkv [rows, 3*heads*head_dim]`, k/v stored at each row's
        slot `seqlens[r]` (as `write_step`); returns rotated q `[rows, heads, head_dim]`."""
        c = self.cache
        return kernels.rope_and_store(qkv, cos, sin, c.k[layer], c.v[layer], self.table, self.seqlens)

    def write_step(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Row r's new k/v at its slot `seqlens[r]` (not yet advanced)."""
        c = self.cache
        pos = self.seqlens.long()
        blocks = self.table[self._row_ids, pos // c.block_size].long()
        offsets = pos % c.block_size
        c.k[layer][blocks, :, offsets] = k
        c.v[layer][blocks, :, offsets] = v

    def attend(self, layer: int, q: torch.Tensor) -> torch.Tensor:
        c = self.cache
        visible = self._visible if self._visible is not None else self.seqlens + 1
        return kernels.paged_decode_attention(q, c.k[layer], c.v[layer], self.table, visible)

    def advance(self) -> None:
        self.seqlens.add_(self.active)
        self._visible = None


def default_pool_blocks(cfg, device: torch.device, dtype: torch.dtype, slots: int, block_size: int) -> tuple[int, int]:
    """(initial blocks, most blocks): start with room for every slot at 1,024 tokens (on the CPU,
    for 4 such requests: memory there is the process's own, and the pool doubles on demand); grow
    up to what every slot at the full context needs, or 60% of the memory free now on a GPU."""
    per_block = PagedKVCache.bytes_per_block(cfg.num_layers, cfg.num_heads, cfg.head_dim, block_size, dtype)
    full = slots * (-(-cfg.max_position_embeddings // block_size)) + 1
    most = full
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        most = max(2, min(full, int(free * 0.6) // per_block))
    initial = min(most, (slots if device.type == "cuda" else min(slots, 4)) * (-(-1024 // block_size)) + 1)
    return initial, most
