"""The engine (packed prefill, paged cache, on-device rules) against the references, on the
recorded parity cases, and its n-gram rules against the host rules.

On the CPU the engine runs eagerly; the same code is captured as CUDA graphs on a GPU, where
tests/test_engine_gpu.py runs (skipped here).
"""
from __future__ import annotations

import random

import pytest
import torch

from deepseek_ocr.engine.graphs import bucket_for
from deepseek_ocr.engine.ngram_rules import SlotNGramRule
from deepseek_ocr.generation.logits_processors import WindowedNoRepeatNGram, _reference_banned_ngram_tokens

CASES = ["tiny_receipt", "small_receipt", "base_page", "gundam_page", "gundam_tall"]


def test_slot_rule_matches_the_official_host_rule_per_row():
    """Rows with different n (and one off) in one rule; bans after every appended token equal the
    plain rule on prompt + output, row by row; rows loaded at different times."""
    rng = random.Random(0)
    vocab = 6  # a small alphabet makes repeats (and bans) frequent
    sizes = [2, 3, 5, 20, 0, 1]
    prompts = [[rng.randrange(vocab) for _ in range(length)] for length in (1, 9, 40, 3, 7, 4)]
    prompts[2][:20] = prompts[2][20:40]  # a long exact repeat inside the prompt
    rule = SlotNGramRule(len(prompts) + 2, 128, vocab, torch.device("cpu"))
    slots = [7, 0, 3, 1, 5, 2]  # rows live in arbitrary slots
    for slot, n, p in zip(slots, sizes, prompts):
        rule.load(slot, n, p)
    seqs = [list(p) for p in prompts]
    index = torch.tensor(slots)
    for _ in range(60):
        # Only the columns in use (as the engine passes them): the longest row plus room for one.
        width = max(len(seq) for seq in seqs) + 1
        banned = torch.isinf(rule.ban(torch.zeros(len(seqs), vocab), index, width))
        for b, (seq, n) in enumerate(zip(seqs, sizes)):
            expected = _reference_banned_ngram_tokens(seq, n) if n else set()
            assert set(torch.nonzero(banned[b]).flatten().tolist()) == expected, (b, len(seq))
        toks = [rng.randrange(vocab) for _ in seqs]
        for seq, t in zip(seqs, toks):
            seq.append(t)
        rule.append(torch.tensor(toks), index, width)


@pytest.mark.parametrize("n,window", [(3, 10), (2, 5), (4, 90)])
def test_slot_rule_matches_the_windowed_host_rule(n, window):
    rng = random.Random(n * window)
    vocab = 5
    whitelist = [1]
    host = WindowedNoRepeatNGram(n, window, whitelist)
    host.reset([[9, 9, 9]] * 3)  # the prompt does not count for this rule
    rule = SlotNGramRule(3, 256, vocab, torch.device("cpu"))
    for slot in range(3):
        rule.load(slot, n, [], window=window, whitelist=whitelist)
    for _ in range(120):
        got = torch.isinf(rule.ban(torch.zeros(3, vocab)))
        for b in range(3):
            assert set(torch.nonzero(got[b]).flatten().tolist()) == host.banned_tokens(b)
        toks = [rng.randrange(vocab) for _ in range(3)]
        host.append(toks)
        rule.append(torch.tensor(toks))


def test_buckets():
    assert [bucket_for(b) for b in (1, 3, 5, 17, 64, 65, 300, 600)] == [1, 4, 8, 24, 64, 96, 384, 768]


@pytest.fixture(scope="module")
def prepared_all(small_model, golden, shared_dir, encoded_views):
    _, cases = golden
    batch = []
    for name in CASES:
        c = cases[name]
        inp = small_model.prepare(shared_dir / c["image"], c["prompt"], mode=c["mode"])
        inp.vision_rows = encoded_views(c["image"], c["mode"])[0]  # encoded once per session
        batch.append(inp)
    return batch


def test_engine_reproduces_the_recorded_tokens(small_model, golden, prepared_all):
    """All five official cases in one packed batch: 12 greedy tokens each, exactly as recorded."""
    f, cases = golden
    results = small_model.generate(prepared_all, max_new_tokens=12, no_repeat_ngram_size=35, fast=True)
    for name, res in zip(CASES, results):
        assert res.token_ids == f.get_tensor(f"{name}.output_ids").tolist(), name
        assert res.text == cases[name]["text"] and res.finish_reason == "length"


def test_engine_equals_reference_loop_with_rules(small_model, prepared_all):
    """Longer runs with the default n-gram rule, EOS forced mid-way for one row, sampling seeded."""
    batch = prepared_all[:2]
    ref = small_model.generate(batch, max_new_tokens=24, fast=False)
    fast = small_model.generate(batch, max_new_tokens=24, fast=True)
    assert [r.token_ids for r in ref] == [r.token_ids for r in fast]
    kw = dict(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3)
    assert small_model.generate(batch[0], **kw, fast=True).token_ids == \
        small_model.generate(batch[0], **kw, fast=True).token_ids


def test_engine_stops_rows_at_eos(small_model, prepared_all, monkeypatch):
    """With EOS redefined as a token one row produces early, that row ends with "stop" before it
    (as on the reference loop) and the other row is unaffected."""
    inp = prepared_all[0]
    first = small_model.generate(inp, max_new_tokens=6, fast=True).token_ids
    monkeypatch.setattr(small_model.tokenizer, "eos_id", first[3])
    batch = [inp, prepared_all[1]]
    fast = small_model.generate(batch, max_new_tokens=6, fast=True)
    ref = small_model.generate(batch, max_new_tokens=6, fast=False)
    assert fast[0].finish_reason == "stop" and fast[0].token_ids == first[:first.index(first[3])]
    assert [(r.token_ids, r.finish_reason) for r in fast] == [(r.token_ids, r.finish_reason) for r in ref]
