"""The engine's admission and cache room: which waiting requests join the running batch, and
the KV blocks they need (the pool grows, or the youngest running request is pushed back).

A mixin of `Engine` (engine.py), kept apart so each file holds one part of the scheduler: it
reads and changes the engine's `waiting`, `running`, `cache`, `stats` and admission settings,
which `Engine.__init__` sets up.
"""
from __future__ import annotations

import logging

import torch

from .paged_cache import CacheFullError
from .request import RUNNING, WAITING, Request

logger = logging.getLogger(__name__)


class AdmissionMixin:
    """Admission (`_admit`) and cache room (`_reserve`, `_grow_pool`, `_preempt`, `_release`)."""

    def _free_slots(self) -> list[int]:
        return [s for s in range(self.max_slots) if s not in self.running]

    def _admit(self) -> list[Request]:
        admitted: list[Request] = []
        free = self._free_slots()
        if not self.waiting or not free:
            return admitted
        if self.running:
            # A fuller group later costs one encode instead of several: wait while too few
            # slots are free for the waiting group (up to admit_wait_steps), or, with
            # admit_gather_steps, while fewer than a group are waiting (requests arriving one
            # by one, as a burst of HTTP requests reaches the engine through preparation).
            few_slots = (len(free) < min(self.admit_group, len(self.waiting))
                         and self._admit_waited < self.admit_wait_steps)
            few_waiting = len(self.waiting) < self.admit_group and self._admit_waited < self.admit_gather_steps
            if few_slots or few_waiting:
                self._admit_waited += 1
                return admitted
        self._admit_waited = 0
        tokens = 0
        while self.waiting and free:
            req = self.waiting[0]
            length = req.prompt_tokens + len(req.token_ids)
            if admitted and tokens + length > self.prefill_tokens:
                break
            slot = free[0]
            if not self._reserve(slot, length + 1, preempt=False):
                if not self.running and not admitted:  # alone, and still too big: it never fits
                    self.waiting.popleft()
                    req.error = (f"the KV cache pool ({self.cache.num_blocks} blocks of "
                                 f"{self.cache.block_size}) cannot hold this request's {length} tokens")
                    self._finish(req, "error")
                    continue
                break
            self.waiting.popleft()
            free.pop(0)
            req.slot, req.state = slot, RUNNING
            req.cache_length = length
            self.running[slot] = req
            admitted.append(req)
            tokens += length
        return admitted

    def _reserve(self, slot: int, tokens: int, preempt: bool) -> bool:
        """Blocks for `tokens` slots of row `slot`: grow the pool, or (when `preempt`) push the
        youngest running request back to the queue, which may be the one asking (then False)."""
        while True:
            try:
                self.cache.reserve(slot, tokens)
                return True
            except CacheFullError:
                if self._grow_pool():
                    continue
                if not preempt or not self.running:
                    return False
                victim = max(self.running.values(), key=lambda r: r.submitted_at)
                self._preempt(victim)
                if victim.slot is None and slot not in self.running:
                    return False

    def _grow_pool(self) -> bool:
        c = self.cache
        if c.num_blocks >= self.max_pool_blocks:
            return False
        new_n = min(self.max_pool_blocks, 2 * c.num_blocks)
        try:
            c.grow(new_n)
        except torch.OutOfMemoryError:
            self.max_pool_blocks = c.num_blocks
            logger.warning("KV cache pool cannot grow past %d blocks (out of memory)", c.num_blocks)
            return False
        self.graphs.clear()  # the captured steps read the old pools
        self.stats["pool_growths"] += 1
        logger.info("KV cache pool grown to %d blocks of %d slots", new_n, c.block_size)
        return True

    def _preempt(self, req: Request) -> None:
        logger.info("preempting %s (cache full) after %d tokens", req.id, len(req.token_ids))
        self._release(req)
        req.state, req.epoch = WAITING, req.epoch + 1
        req.launched = len(req.token_ids)
        self.waiting.appendleft(req)
        self.stats["preemptions"] += 1

    def _release(self, req: Request) -> None:
        if req.slot is not None:
            self.cache.release(req.slot)
            del self.running[req.slot]
            req.slot = None
