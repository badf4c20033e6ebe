from __future__ import annotations

import random

import pytest
import torch

from deepseek_ocr.errors import GenerationError
from deepseek_ocr.generation.logits_processors import (
    NoRepeatNGram,
    RepetitionDetector,
    WindowedNoRepeatNGram,
    _reference_banned_ngram_tokens,
)

VOCAB = 5


def _brute_windowed(generated: list[int], n: int, window: int, whitelist: set[int]) -> set[int]:
    """The vLLM rule written out plainly: scan every n-gram start in the window."""
    length = len(generated)
    if length < n:
        return set()
    prefix = generated[length - (n - 1) :]
    banned = set()
    for i in range(max(0, length - window), length - n + 1):
        if generated[i : i + n - 1] == prefix:
            banned.add(generated[i + n - 1])
    return banned - whitelist


def _hf_style_banned(history: list[int], n: int) -> set[int]:
    """Independent check of the reference: HF builds all n-grams, then looks up the prefix."""
    if len(history) + 1 < n:
        return set()
    table: dict[tuple[int, ...], set[int]] = {}
    for i in range(len(history) - n + 1):
        gram = history[i : i + n]
        table.setdefault(tuple(gram[:-1]), set()).add(gram[-1])
    return table.get(tuple(history[len(history) - n + 1 :]), set())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_no_repeat_ngram_matches_reference(n: int) -> None:
    rng = random.Random(n)
    prompts = [[rng.randrange(VOCAB) for _ in range(length)] for length in (0, 1, 3, 7, 12)]
    proc = NoRepeatNGram(n)
    proc.reset(prompts)
    histories = [list(p) for p in prompts]
    for _ in range(120):
        logits = torch.zeros(len(prompts), VOCAB)
        out = proc(logits)
        assert out is logits  # in place
        new = []
        for b, hist in enumerate(histories):
            expected = _reference_banned_ngram_tokens(hist, n)
            assert expected == _hf_style_banned(hist, n)
            assert proc.banned_tokens(b) == expected
            banned_now = set(torch.nonzero(torch.isneginf(out[b])).flatten().tolist())
            assert banned_now == expected
            # Mostly respect the ban (like a real loop), sometimes not, to reach every state.
            allowed = [t for t in range(VOCAB) if t not in expected] or list(range(VOCAB))
            new.append(rng.choice(allowed) if rng.random() < 0.7 else rng.randrange(VOCAB))
        proc.append(torch.tensor(new))
        for hist, tok in zip(histories, new):
            hist.append(tok)


def test_no_repeat_ngram_hf_length_guard() -> None:
    # cur_len + 1 < n: nothing banned even though the short history repeats itself.
    assert _reference_banned_ngram_tokens([1, 1], 4) == set()
    assert _reference_banned_ngram_tokens([1, 2, 1, 2], 3) == {1}
    proc = NoRepeatNGram(3)
    proc.reset([[1, 2, 1]])
    assert proc.banned_tokens(0) == set()  # prefix (2, 1) never seen followed by anything
    proc.append([2])
    assert proc.banned_tokens(0) == {1}


def test_inactive_rows_are_frozen() -> None:
    proc = NoRepeatNGram(2)
    proc.reset([[3], [3]])
    proc.append([4, 0], active=[True, False])
    proc.append([3, 0], active=torch.tensor([True, False]))
    assert proc.banned_tokens(0) == {4}
    assert proc.banned_tokens(1) == set()  # still only the prompt [3]
    proc.select_rows([1, 0])
    assert proc.banned_tokens(1) == {4}


@pytest.mark.parametrize("n,window", [(2, 4), (3, 5), (3, 3), (4, 12), (5, 3), (1, 6), (3, 200)])
def test_windowed_matches_brute_force(n: int, window: int) -> None:
    rng = random.Random(100 * n + window)
    whitelist = {1}
    batch = 4
    proc = WindowedNoRepeatNGram(n=n, window=window, whitelist=whitelist)
    # Prompts must be ignored: give them content that would ban things if counted.
    proc.reset([[0, 0, 0, 0, 0, 0]] * batch)
    generated: list[list[int]] = [[] for _ in range(batch)]
    for step in range(300):
        logits = torch.randn(batch, VOCAB)
        out = proc(logits.clone())
        for b in range(batch):
            expected = _brute_windowed(generated[b], n, window, whitelist)
            assert proc.banned_tokens(b) == expected, (step, b)
            assert set(torch.nonzero(torch.isneginf(out[b])).flatten().tolist()) == expected
        # Low-entropy tokens so n-grams repeat often, including across the window edge.
        new = [rng.choice([0, 1, 2]) if rng.random() < 0.8 else rng.randrange(VOCAB) for _ in range(batch)]
        proc.append(new)
        for b in range(batch):
            generated[b].append(new[b])


def test_windowed_window_boundary_and_whitelist() -> None:
    n, window = 3, 6
    proc = WindowedNoRepeatNGram(n=n, window=window, whitelist=[9])
    proc.reset([[]])
    # The n-gram (7, 8, 5) starts at index 0; with L generated, starts >= L - window count.
    seq = [7, 8, 5, 2, 3, 4]
    proc.append([seq[0]])
    for tok in seq[1:]:
        proc.append([tok])
    for tok in [7, 8]:
        proc.append([tok])
    # L = 8: window starts at index 2, so the n-gram at index 0 no longer counts.
    assert proc.banned_tokens(0) == set()
    proc2 = WindowedNoRepeatNGram(n=n, window=8, whitelist=[9])
    proc2.reset([[]])
    for tok in seq + [7, 8]:
        proc2.append([tok])
    assert proc2.banned_tokens(0) == {5}  # window 8 still covers index 0
    proc3 = WindowedNoRepeatNGram(n=n, window=8, whitelist=[5])
    proc3.reset([[]])
    for tok in seq + [7, 8]:
        proc3.append([tok])
    assert proc3.banned_tokens(0) == set()  # whitelisted


def test_logits_shape_checked() -> None:
    proc = NoRepeatNGram(2)
    proc.reset([[1], [2]])
    with pytest.raises(GenerationError):
        proc(torch.zeros(3, VOCAB))
    with pytest.raises(GenerationError):
        proc.append([1, 2, 3])
    with pytest.raises(GenerationError):
        NoRepeatNGram(0)
    with pytest.raises(GenerationError):
        WindowedNoRepeatNGram(n=3, window=0)


def test_repetition_detector_fires_on_periodic_tail() -> None:
    rng = random.Random(0)
    det = RepetitionDetector(max_period=50, min_repeats=5, min_length=200)
    default = RepetitionDetector()  # what `stop_on_repetition` builds: these thresholds
    assert (default.max_period, default.min_repeats, default.min_length) == (50, 5, 200)
    det.reset(3)
    block = [rng.randrange(1000) for _ in range(37)]
    intro = [rng.randrange(1000) for _ in range(100)]
    rows = [intro + block * 20, intro + [42] * 300, [rng.randrange(1000) for _ in range(2000)]]
    fired_at = [None, None, None]
    for step in range(2000):
        toks = [row[step] if step < len(row) else 0 for row in rows]
        active = [step < len(row) for row in rows]
        flags = det.append(toks, active=active)
        for b in range(3):
            if flags[b] and fired_at[b] is None:
                fired_at[b] = step
    # Period 37: needs max(200, 5*37) = 200 periodic ids, i.e. 163 matches at lag 37.
    assert fired_at[0] == len(intro) + 200 - 1
    assert fired_at[1] == len(intro) + 200 - 1
    assert fired_at[2] is None


def test_repetition_detector_ignores_long_period_and_short_runs() -> None:
    rng = random.Random(1)
    det = RepetitionDetector(max_period=50, min_repeats=5, min_length=200)
    det.reset(2)
    long_block = [rng.randrange(1000) for _ in range(80)]  # period beyond max_period
    rows = [long_block * 6, [5] * 150 + [rng.randrange(1000) for _ in range(300)]]
    for step in range(480):
        flags = det.append([row[step % len(row)] for row in rows])
    assert flags == [False, False]
