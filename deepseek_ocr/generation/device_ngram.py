"""The official `no_repeat_ngram_size` rule, kept on the device so a decode step needs no host sync.

The host version (`logits_processors.NoRepeatNGram`) keeps per-row dicts of n-grams; this one
keeps, per row, the token history and a match-length vector:

    match[j] = length of the longest common suffix of s[..j] and s[..p]   (j < p, capped at n-1)

where s[..p] is the sequence so far. The next token may not be s[j+1] for any j with
match[j] >= n-1: that is exactly "the last n-1 tokens occurred before, followed by s[j+1]".
Appending a token t updates the vector in O(length) with no data-dependent shapes:

    match'[j] = min(match[j-1] + 1, n-1)  if s[j] == t  else 0

The bans are scattered into a `[B, V+1]` mask whose last column absorbs the "no ban" entries.
Tested against the host rule on random sequences (tests/test_fast_decode.py).
"""
from __future__ import annotations

from typing import Sequence

import torch


class DeviceNoRepeatNGram:
    def __init__(self, n: int, batch: int, capacity: int, vocab: int, device: torch.device):
        if n < 2:
            raise ValueError(f"the device n-gram rule needs n >= 2, got {n}")
        self.n, self.vocab = n, vocab
        self.history = torch.full((batch, capacity), -1, dtype=torch.long, device=device)
        self.match = torch.zeros(batch, capacity, dtype=torch.int32, device=device)
        self.lengths = torch.zeros(batch, dtype=torch.long, device=device)
        self._rows = torch.arange(batch, device=device)
        self._banned = torch.zeros(batch, vocab + 1, dtype=torch.bool, device=device)

    def reset(self, prompts: Sequence[Sequence[int]]) -> None:
        """Load each row's prompt ids (rows past len(prompts) keep an empty history)."""
        self.history.fill_(-1)
        self.match.zero_()
        self.lengths.zero_()
        cap = self.history.shape[1]
        for b, ids in enumerate(prompts):
            if len(ids) > cap:
                raise ValueError(f"prompt of {len(ids)} tokens exceeds the n-gram buffer of {cap}")
            self.history[b, :len(ids)] = torch.as_tensor(list(ids), dtype=torch.long)
            self.lengths[b] = len(ids)
        # match[j] from scratch: count k = 0, 1, .. while s[j-k] == s[last-k], up to n-1.
        last = self.lengths - 1  # (B,)
        j = torch.arange(cap, device=self.history.device)[None, :]  # (1, cap)
        run = (j < last[:, None]) & (last[:, None] >= 0)  # only j < last count
        total = torch.zeros_like(self.match)
        for k in range(self.n - 1):
            src = j - k
            tail = (last - k)[:, None]
            ok = (src >= 0) & (tail >= 0)
            sj = self.history.gather(1, src.clamp(min=0).expand_as(self.history))
            st = self.history.gather(1, tail.clamp(min=0))
            run = run & ok & (sj == st)
            total += run.int()
        self.match.copy_(total)

    def ban(self, logits: torch.Tensor) -> torch.Tensor:
        """Set the banned next tokens of every row to -inf (in place); returns `logits`."""
        hit = self.match[:, :-1] >= self.n - 1  # (B, cap-1): position j bans s[j+1]
        idx = torch.where(hit, self.history[:, 1:], self.vocab)
        self._banned.zero_()
        self._banned.scatter_(1, idx, True)
        return logits.masked_fill_(self._banned[:, :self.vocab], float("-inf"))

    def append(self, tokens: torch.Tensor) -> None:
        """Append one token per row (`[B]`); the position is each row's current length."""
        eq = self.history == tokens[:, None]  # (B, cap); slots at or past the length hold -1
        shifted = torch.nn.functional.pad(self.match[:, :-1], (1, 0))  # match[j-1], 0 at j = 0
        self.match.copy_(torch.where(eq, (shifted + 1).clamp(max=self.n - 1), 0))
        pos = self.lengths.clamp(max=self.history.shape[1] - 1)
        self.history[self._rows, pos] = tokens
        self.lengths.add_(1)
