"""The fast decode path (packed prefill, static cache, on-device rules) against the references.

On the CPU the loop runs eagerly (no CUDA graphs); the same code is captured on a GPU, where
tests/test_fast_decode.py::test_graph_* run (skipped here).
"""
from __future__ import annotations

import random

import pytest
import torch

from deepseek_ocr.decoder.static_cache import StaticKVCache
from deepseek_ocr.generation.device_ngram import DeviceNoRepeatNGram
from deepseek_ocr.generation.fast_loop import bucket_for
from deepseek_ocr.generation.logits_processors import _reference_banned_ngram_tokens

CASES = ["tiny_receipt", "small_receipt", "base_page", "gundam_page", "gundam_tall"]


@pytest.mark.parametrize("n", [2, 3, 5, 20])
def test_device_ngram_matches_the_host_rule(n):
    """Bans after every appended token equal the plain rule on prompt + output, per row."""
    rng = random.Random(n)
    vocab = 6  # a small alphabet makes repeats (and bans) frequent
    prompts = [[rng.randrange(vocab) for _ in range(length)] for length in (1, 9, 40, 3)]
    prompts[2][:20] = prompts[2][20:40]  # a long exact repeat inside the prompt
    rule = DeviceNoRepeatNGram(n, len(prompts), 128, vocab, torch.device("cpu"))
    rule.reset(prompts)
    seqs = [list(p) for p in prompts]
    for _ in range(60):
        banned = torch.isinf(rule.ban(torch.zeros(len(seqs), vocab)))
        for b, seq in enumerate(seqs):
            expected = _reference_banned_ngram_tokens(seq, n)
            assert set(torch.nonzero(banned[b]).flatten().tolist()) == expected, (b, len(seq))
        toks = [rng.randrange(vocab) for _ in seqs]
        for seq, t in zip(seqs, toks):
            seq.append(t)
        rule.append(torch.tensor(toks))


def test_static_cache_writes_and_grows():
    cache = StaticKVCache(2, 3, 2, 4, 8, dtype=torch.float32, device="cpu")
    k = torch.randn(5, 2, 4)
    rows, slots = torch.tensor([0, 0, 1, 2, 2]), torch.tensor([0, 1, 0, 0, 1])
    cache.write_packed(1, k, -k, rows, slots)
    cache.seqlens[:] = torch.tensor([2, 1, 2], dtype=torch.int32)
    step = torch.randn(3, 2, 4)
    cache.write_step(1, step, step)
    assert torch.equal(cache.k[1][0, :, 1], k[1]) and torch.equal(cache.v[1][2, :, 0], -k[3])
    assert torch.equal(cache.k[1][0, :, 2], step[0]) and torch.equal(cache.k[1][1, :, 1], step[1])
    big = cache.grown(20)
    assert big.capacity == 20 and torch.equal(big.k[1][:, :, :8], cache.k[1])
    assert torch.equal(big.seqlens, cache.seqlens) and not big.k[1][:, :, 8:].any()


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


def test_fast_loop_reproduces_the_recorded_tokens(small_model, golden, prepared_all):
    """All five official cases in one packed batch: 12 greedy tokens each, exactly as recorded."""
    f, cases = golden
    results = small_model.generate(prepared_all, max_new_tokens=12, no_repeat_ngram_size=35, fast=True)
    for name, res in zip(CASES, results):
        assert res.token_ids == f.get_tensor(f"{name}.output_ids").tolist(), name
        assert res.text == cases[name]["text"] and res.finish_reason == "length"


def test_fast_loop_equals_reference_loop_with_rules(small_model, prepared_all):
    """Longer runs with the default n-gram rule, EOS forced mid-way for one row, sampling seeded."""
    batch = prepared_all[:2]
    ref = small_model.generate(batch, max_new_tokens=24, fast=False)
    fast = small_model.generate(batch, max_new_tokens=24, fast=True)
    assert [r.token_ids for r in ref] == [r.token_ids for r in fast]
    kw = dict(max_new_tokens=20, temperature=0.8, top_p=0.9, seed=3)
    assert small_model.generate(batch[0], **kw, fast=True).token_ids == \
        small_model.generate(batch[0], **kw, fast=True).token_ids


def test_fast_loop_stops_rows_at_eos(small_model, prepared_all, monkeypatch):
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
