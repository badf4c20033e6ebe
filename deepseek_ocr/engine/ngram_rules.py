"""The n-gram ban rules on the device, one row per engine slot, each row with its own settings.

Both rules the engine offers are one computation with different parameters:

* the official `no_repeat_ngram_size` n: no n-gram may occur twice in prompt + output;
* vLLM's windowed rule (n, window, whitelist): over generated ids only, no n-gram may repeat
  one that starts within the last `window` ids; whitelisted ids are never banned.

Per row the state is the id history `s` and a match-length vector

    match[j] = length of the longest common suffix of s[..j] and s[..L-1]  (j < L-1, capped at n-1)

where L is the row's length. Token s[t] is banned next when match[t-1] >= n-1 (the n-1 ids
before t equal the last n-1 ids), t < L, and, for the windowed rule, the n-gram's start
t-n+1 >= L - window. Appending id x: match'[j] = min(match[j-1] + 1, n-1) if s[j] == x else 0.
No data-dependent shapes and no host reads, so a step stays asynchronous. A row with n = 0 bans
nothing. Tested against the host rules (`generation.logits_processors`) on random sequences.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .transfer import to_device

_NO_WINDOW = 1 << 30


class SlotNGramRule:
    """One ban rule for up to `slots` rows of `capacity` ids each."""

    def __init__(self, slots: int, capacity: int, vocab: int, device: torch.device | str):
        self.vocab, self.capacity = vocab, capacity
        self.history = torch.full((slots, capacity), -1, dtype=torch.long, device=device)
        self.match = torch.zeros(slots, capacity, dtype=torch.int32, device=device)
        self.lengths = torch.zeros(slots, dtype=torch.long, device=device)
        self.n = torch.zeros(slots, dtype=torch.int32, device=device)  # 0: the row bans nothing
        self.window = torch.full((slots,), _NO_WINDOW, dtype=torch.long, device=device)
        self.whitelist: torch.Tensor | None = None  # bool [slots, vocab], made on first use
        self._pos = torch.arange(capacity, device=device)

    def load(self, slot: int, n: int, ids: Sequence[int], window: int | None = None,
             whitelist: Sequence[int] = ()) -> None:
        """Start row `slot` with history `ids` (n = 0: off). Host-to-device copies only."""
        ids = list(ids)
        if len(ids) > self.capacity:
            raise ValueError(f"{len(ids)} ids exceed the n-gram buffer of {self.capacity}")
        dev = self.history.device
        self.history[slot].fill_(-1)
        self.match[slot].zero_()
        self.n[slot] = n
        self.window[slot] = _NO_WINDOW if window is None else window
        self.lengths[slot] = len(ids)
        if self.whitelist is not None:
            self.whitelist[slot].zero_()
        if whitelist:
            if self.whitelist is None:
                self.whitelist = torch.zeros(self.history.shape[0], self.vocab, dtype=torch.bool, device=dev)
            self.whitelist[slot, to_device(list(whitelist), torch.long, dev)] = True
        if not ids or n <= 0:
            if ids:
                self.history[slot, :len(ids)] = to_device(ids, torch.long, dev)
            return
        hist = to_device(ids, torch.long, dev)
        self.history[slot, :len(ids)] = hist
        # match[j] from scratch: the common-suffix length of s[..j] and s[..last], up to n-1:
        # the number of leading k = 0, 1, ... with s[j-k] == s[last-k], all k at once (a few
        # kernels per request rather than a handful per k).
        last = len(ids) - 1
        depth = min(n - 1, last + 1)
        if depth <= 0:
            return
        j = torch.arange(len(ids), device=dev)
        k = torch.arange(depth, device=dev)[:, None]
        src = j[None, :] - k  # (depth, L)
        same = (src >= 0) & (hist[src.clamp(min=0)] == hist[last - k])
        total = torch.cumprod(same.int(), dim=0).sum(dim=0).int() * (j < last)
        self.match[slot, :len(ids)] = total

    def ban(self, logits: torch.Tensor, slots: torch.Tensor | None = None, width: int | None = None
            ) -> torch.Tensor:
        """Set the banned ids of each row to -inf in place; row r of `logits` is slot `slots[r]`
        (default: slot r). `width`: no row holds more than `width - 1` ids (the host knows; the
        work then covers those columns only)."""
        rows = logits.shape[0]
        w = self.capacity if width is None else min(width, self.capacity)
        pick = (lambda t: t[:rows]) if slots is None else (lambda t: t.index_select(0, slots))
        history, match = pick(self.history[:, :w]), pick(self.match[:, :w])
        lengths = pick(self.lengths)
        n, window = pick(self.n).long(), pick(self.window)
        before = torch.nn.functional.pad(match[:, :-1], (1, 0))  # match[t-1]; 0 at t = 0
        t = self._pos[None, :w]
        hit = (n[:, None] > 0) & (before >= (n - 1)[:, None]) & (t < lengths[:, None])
        hit &= t - n[:, None] + 1 >= lengths[:, None] - window[:, None]
        cols = torch.where(hit, history, self.vocab)  # column `vocab` absorbs the misses
        banned = torch.zeros(rows, self.vocab + 1, dtype=torch.bool, device=logits.device)
        banned.scatter_(1, cols, True)
        banned = banned[:, :self.vocab]
        if self.whitelist is not None:
            banned &= ~pick(self.whitelist)
        return logits.masked_fill_(banned, float("-inf"))

    def append(self, tokens: torch.Tensor, slots: torch.Tensor | None = None, width: int | None = None) -> None:
        """Append one id per row (`tokens [R]`) to slots `slots` (default 0..R-1); `width` as
        for `ban` (every row shorter than `width` ids before the append)."""
        rows = tokens.shape[0]
        w = self.capacity if width is None else min(width, self.capacity)
        if slots is None:
            slots = torch.arange(rows, device=tokens.device)
        history = self.history[:, :w].index_select(0, slots)
        match = self.match[:, :w].index_select(0, slots)
        n = self.n.index_select(0, slots)
        eq = history == tokens[:, None]  # slots at or past the length hold -1, never equal
        shifted = torch.nn.functional.pad(match[:, :-1], (1, 0))
        cap = (n - 1).clamp(min=0)[:, None]
        new = torch.where(eq, torch.minimum(shifted + 1, cap), 0).to(torch.int32)
        self.match[:, :w].index_copy_(0, slots, new)
        pos = self.lengths.index_select(0, slots).clamp(max=self.capacity - 1)
        self.history.index_put_((slots, pos), tokens)
        self.lengths.index_add_(0, slots, torch.ones_like(pos))
