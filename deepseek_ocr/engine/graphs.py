"""The decode step over the first B engine slots, captured as a CUDA graph per batch bucket.

A graph reads its inputs from tensors whose addresses never change: the engine's token buffer
and the paged cache's table, lengths and active flags (views of the first B rows). It is keyed
by everything that changes what it computes: the bucket, the cache pools (they are replaced when
the pool grows), whether kernels are on (`kernels.set_enabled`), and whether the step is compiled.
Changing any of them captures anew; nothing stale is replayed.
"""
from __future__ import annotations

import torch

from .. import kernels
from .paged_cache import PagedBatch, PagedKVCache

BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def bucket_for(rows: int) -> int:
    for b in BUCKETS:
        if rows <= b:
            return b
    return -(-rows // 256) * 256


class _Captured:
    def __init__(self, step_fn, tokens: torch.Tensor, batch: PagedBatch):
        self.tokens, self.batch = tokens, batch
        device = tokens.device
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        saved = batch.seqlens.clone()
        with torch.cuda.stream(side), torch.inference_mode():
            for _ in range(2):  # warm-up off the capture: autotuning, compilation, allocations
                step_fn(tokens, batch)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.inference_mode():
            self.logits = step_fn(tokens, batch)
        # Warm-up and capture advanced the active rows and wrote scratch keys at their next slot
        # (never read: the real step writes there first). Lengths go back to where they were.
        batch.seqlens.copy_(saved)

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.logits


class DecodeGraphs:
    """Runs the step for the first `rows` slots: replayed from a graph on CUDA, eager elsewhere."""

    def __init__(self, step_fn, use_graphs: bool, compiled: bool):
        self.step_fn, self.use_graphs, self.compiled = step_fn, use_graphs, compiled
        self._graphs: dict[tuple, _Captured] = {}

    def clear(self) -> None:
        self._graphs.clear()

    def run(self, cache: PagedKVCache, tokens: torch.Tensor, rows: int, longest: int) -> torch.Tensor:
        """Logits `[rows, V]` for `tokens[:rows]`; `longest`: no row holds more cache slots after
        this step (the host knows; an eager step reads only the blocks that reach it)."""
        # With kernels off (`kernels.set_enabled(False)`) the step runs eagerly: the reference
        # experts read their routing counts back to the host, which a graph cannot capture.
        if not self.use_graphs or not kernels.enabled():
            return self.step_fn(tokens[:rows], PagedBatch(cache, rows, cache.blocks_for(longest)))
        key = (rows, id(cache.k[0]), kernels.enabled(), self.compiled)
        g = self._graphs.get(key)
        if g is None:
            stale = [k for k in self._graphs if k[1] != key[1] or k[2] != key[2]]
            for k in stale:
                del self._graphs[k]
            g = self._graphs[key] = _Captured(self.step_fn, tokens[:rows], PagedBatch(cache, rows))
        return g.replay()

    def capture_all(self, cache: PagedKVCache, tokens: torch.Tensor, max_rows: int) -> int:
        """Capture (and replay once) the step of every bucket up to `max_rows` now, so that no
        request later waits for a capture; the number of buckets captured. Call it with no row
        active (the engine checks): the step then reads and writes only the scratch block."""
        if not self.use_graphs or not kernels.enabled():
            return 0
        rows = sorted({min(bucket_for(n), max_rows) for n in range(1, max_rows + 1)})  # as the engine picks
        with torch.inference_mode():
            for r in rows:
                self.run(cache, tokens, r, 1)
        return len(rows)
