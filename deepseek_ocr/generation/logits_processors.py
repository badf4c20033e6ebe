"""Per-step anti-loop rules: n-gram bans on the logits, and a detector of periodic tails.

The generate loop drives every piece the same way, once per decoding step on the batch:

    proc.reset(batch_prompt_ids)          # once, before the first step
    logits = proc(logits)                 # bans applied in place, (B, V)
    next_ids = select_next_tokens(logits, ...)
    proc.append(next_ids, active=~finished_before_this_step)

Finished rows: `append` takes an `active` mask; a row whose flag is False ignores the token given
for it (the loop may pass a pad id there), so its state stays frozen. `__call__` still bans
tokens in frozen rows, which is harmless because the loop discards their logits. If the loop
drops finished rows from the batch instead, it calls `select_rows(kept_indices)`.

State lives on the host (Python dicts): the n-gram bookkeeping is branchy, and the loop needs the
new ids on the host anyway for EOS checks and detokenization, so `append` with a tensor costs one
`.tolist()` that the loop pays regardless.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Iterable, Sequence

import torch
from torch import Tensor

from deepseek_ocr.errors import GenerationError

logger = logging.getLogger(__name__)

_IdsLike = Sequence[int] | Tensor
_MaskLike = Sequence[bool] | Tensor | None


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise GenerationError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _active_tokens(tokens: _IdsLike, active: _MaskLike, batch: int) -> list[tuple[int, int]]:
    """(row, id) pairs for the rows that are active this step."""
    def as_list(values, what: str) -> list:
        if isinstance(values, Tensor):
            values = values.reshape(-1).tolist()  # host sync; see the module docstring
        if len(values) != batch:
            raise GenerationError(f"{what} has {len(values)} entries, the batch has {batch} rows")
        return list(values)

    toks = as_list(tokens, "tokens")
    flags = [True] * batch if active is None else as_list(active, "active")
    return [(b, int(t)) for b, (t, f) in enumerate(zip(toks, flags)) if f]


def _select(items: list, indices: Sequence[int]) -> list:
    # Distinct, because duplicated rows would share (and doubly update) one mutable state.
    if len(set(indices)) != len(indices):
        raise GenerationError(f"select_rows needs distinct indices, got {list(indices)}")
    return [items[i] for i in indices]


def _reference_banned_ngram_tokens(history: Sequence[int], n: int) -> set[int]:
    """Plain O(len) `no_repeat_ngram_size` rule on one row's prompt + generated ids (for tests)."""
    cur_len = len(history)
    if cur_len + 1 < n:  # the Hugging Face guard: no complete n-gram can end at the next token
        return set()
    prefix = tuple(history[cur_len - n + 1 :])
    return {history[i + n - 1] for i in range(cur_len - n + 1) if tuple(history[i : i + n - 1]) == prefix}


class LogitsProcessor:
    """Base of the ban rules: per-row state, the batch bookkeeping, and the masking of logits."""

    def __init__(self) -> None:
        self._rows: list = []

    def _new_row(self, prompt: list[int]):  # -> an object with append(id) and banned()
        raise NotImplementedError

    def reset(self, batch_prompts: Sequence[Sequence[int]]) -> None:
        """Start a new batch: one list of prompt ids per row (lengths may differ)."""
        self._rows = [self._new_row([int(t) for t in p]) for p in batch_prompts]

    def append(self, tokens: _IdsLike, active: _MaskLike = None) -> None:
        """Record the token each row produced this step.

        Args:
            tokens: (B,) ids, a list or a LongTensor on any device.
            active: optional (B,) flags; rows with False (already finished) ignore their token.
        """
        for b, tok in _active_tokens(tokens, active, len(self._rows)):
            self._rows[b].append(tok)

    def select_rows(self, indices: Sequence[int]) -> None:
        """Keep only the rows at these distinct indices, in that order (batch compaction)."""
        self._rows = _select(self._rows, indices)

    def banned_tokens(self, row: int) -> set[int]:
        """The ids that row `row` may not produce at the next step."""
        return set(self._rows[row].banned())

    def __call__(self, logits: Tensor) -> Tensor:
        """Set banned entries of `logits` (B, V) to -inf, in place; returns the same tensor."""
        if logits.dim() != 2 or logits.shape[0] != len(self._rows):
            raise GenerationError(f"logits must be ({len(self._rows)}, vocab), got {tuple(logits.shape)}")
        row_idx: list[int] = []
        col_idx: list[int] = []  # ids to ban, flattened over the batch
        for i, row in enumerate(self._rows):
            banned = row.banned()
            row_idx.extend([i] * len(banned))
            col_idx.extend(banned)
        if col_idx:
            # One scatter for the whole batch; the index lists travel host->device once.
            rows_t = torch.tensor(row_idx, dtype=torch.long, device=logits.device)
            cols_t = torch.tensor(col_idx, dtype=torch.long, device=logits.device)
            logits[rows_t, cols_t] = float("-inf")
        return logits


class _NGramRow:
    """One row of `NoRepeatNGram`: prefix (n-1 ids) -> the ids that followed it anywhere."""

    def __init__(self, n: int, prompt: list[int]) -> None:
        self.n, self.length = n, 0
        self.tail: deque[int] = deque(maxlen=n - 1)  # the last n-1 ids; empty forever when n == 1
        self.followers: dict[tuple[int, ...], set[int]] = {}
        for tok in prompt:
            self.append(tok)

    def append(self, tok: int) -> None:
        if self.length >= self.n - 1:  # the tail is a full prefix: record the n-gram it completes
            self.followers.setdefault(tuple(self.tail), set()).add(tok)
        if self.n > 1:
            self.tail.append(tok)
        self.length += 1

    def banned(self) -> Iterable[int]:
        if self.length + 1 < self.n:
            return ()
        return self.followers.get(tuple(self.tail), ())


class NoRepeatNGram(LogitsProcessor):
    """Hugging Face `no_repeat_ngram_size`: no n-gram may occur twice in prompt + generated ids.

    Each step costs O(n) per row (hashing the n-1 prefix), independent of the sequence length.

    Args:
        n: the n-gram size (the official DeepSeek-OCR setting is 20, 35 in its eval mode).
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = _positive_int("no_repeat_ngram_size", n)

    def _new_row(self, prompt: list[int]) -> _NGramRow:
        return _NGramRow(self.n, prompt)


class _WindowRow:
    """One row of `WindowedNoRepeatNGram`: counts of the n-grams whose start is in the window."""

    def __init__(self, n: int, window: int, whitelist: frozenset[int]) -> None:
        self.n, self.window, self.whitelist = n, window, whitelist
        self.ids: list[int] = []
        self.lo = self.hi = 0  # n-grams starting at i in [lo, hi) are counted
        self.counts: dict[tuple[int, ...], dict[int, int]] = {}

    def _ngram(self, i: int) -> tuple[tuple[int, ...], int]:
        return tuple(self.ids[i : i + self.n - 1]), self.ids[i + self.n - 1]

    def append(self, tok: int) -> None:
        self.ids.append(tok)
        length = len(self.ids)
        new_lo = max(0, length - self.window)
        new_hi = max(new_lo, length - self.n + 1)
        # Both bounds only move forward, so each n-gram is added once and removed once.
        for i in range(self.lo, min(self.hi, new_lo)):
            prefix, last = self._ngram(i)
            bucket = self.counts[prefix]
            bucket[last] -= 1
            if bucket[last] == 0:
                del bucket[last]
                if not bucket:
                    del self.counts[prefix]
        for i in range(max(self.hi, new_lo), new_hi):
            prefix, last = self._ngram(i)
            bucket = self.counts.setdefault(prefix, {})
            bucket[last] = bucket.get(last, 0) + 1
        self.lo, self.hi = new_lo, new_hi

    def banned(self) -> Iterable[int]:
        length = len(self.ids)
        if length < self.n:
            return ()
        bucket = self.counts.get(tuple(self.ids[length - self.n + 1 :]), {})
        return [t for t in bucket if t not in self.whitelist]


class WindowedNoRepeatNGram(LogitsProcessor):
    """vLLM's recommended DeepSeek-OCR rule: no n-gram may repeat inside a recent window.

    Only generated ids count, not the prompt. The token that would complete a copy of an n-gram
    starting within the last `window` generated ids is banned, unless whitelisted.

    Args:
        n: the n-gram size (vLLM recommends 30).
        window: how many of the most recent generated ids may start an n-gram (vLLM: 90).
        whitelist: ids never banned, e.g. the tokenizer's `<td>` and `</td>` (cells repeat).
    """

    def __init__(self, n: int = 30, window: int = 90, whitelist: Iterable[int] = frozenset()) -> None:
        super().__init__()
        self.n = _positive_int("ngram size", n)
        self.window = _positive_int("window", window)
        self.whitelist = frozenset(int(t) for t in whitelist)

    def _new_row(self, prompt: list[int]) -> _WindowRow:
        return _WindowRow(self.n, self.window, self.whitelist)


class RepetitionDetector:
    """Flags rows whose generated tail is one short block repeated, so the loop can stop them.

    A row fires when, for some period p <= `max_period`, its last L generated ids are p-periodic
    with L >= max(`min_length`, p * `min_repeats`). The defaults (200+ ids, a block of <= 50 ids
    repeated >= 5 times) stop a loop long before `max_new_tokens` 8192 is burned, but genuinely
    periodic text (a long run of empty table cells) can trip it too: the loop should make it opt-in.
    Incremental: for each p it keeps the run length of positions i with x[i] == x[i-p] (the tail of
    length run + p is then p-periodic), so a step costs O(max_period) per row.

    Args:
        max_period: longest block length looked for.
        min_repeats: fewest copies of the block.
        min_length: fewest ids in the periodic tail.
    """

    def __init__(self, max_period: int = 50, min_repeats: int = 5, min_length: int = 200) -> None:
        self.max_period = _positive_int("max_period", max_period)
        self.min_repeats = _positive_int("min_repeats", min_repeats)
        self.min_length = _positive_int("min_length", min_length)
        # A run of r matches at lag p means a periodic tail of r + p ids.
        self._need = [max(min_length, p * min_repeats) - p for p in range(1, max_period + 1)]
        self._recent: list[deque[int]] = []
        self._runs: list[list[int]] = []
        self._fired: list[bool] = []

    def reset(self, batch_size: int) -> None:
        """Start a new batch of `batch_size` rows, none generated yet."""
        # Filled with -1 (never an id), so lags longer than the history never match.
        self._recent = [deque([-1] * self.max_period, maxlen=self.max_period) for _ in range(batch_size)]
        self._runs = [[0] * self.max_period for _ in range(batch_size)]
        self._fired = [False] * batch_size

    def append(self, tokens: _IdsLike, active: _MaskLike = None) -> list[bool]:
        """Record this step's ids (as `LogitsProcessor.append`); returns per-row sticky loop flags."""
        for b, tok in _active_tokens(tokens, active, len(self._runs)):
            if self._fired[b]:
                continue
            recent = self._recent[b]
            # reversed(recent)[k] is the id at lag k+1, matching runs[k] for period k+1.
            runs = [r + 1 if prev == tok else 0 for r, prev in zip(self._runs[b], reversed(recent))]
            self._runs[b] = runs
            recent.append(tok)
            if any(r >= need for r, need in zip(runs, self._need)):
                self._fired[b] = True
                logger.debug("row %d: generated tail is periodic, flagging repetition", b)
        return list(self._fired)

    def select_rows(self, indices: Sequence[int]) -> None:
        """Keep only the given rows, in that order."""
        self._recent = _select(self._recent, indices)
        self._runs = _select(self._runs, indices)
        self._fired = _select(self._fired, indices)
