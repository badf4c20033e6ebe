"""The continuous-batching engine on a tiny random model (CPU, float32).

References: the plain reference loop (`fast=False`, a static batch with host-side rules) run on
each request alone, a contiguous-cache attention written with `scaled_dot_product_attention`,
and the documented contracts (slots freed, finish reasons).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from deepseek_ocr.engine import Engine, GenerationOptions, engine_for
from deepseek_ocr.engine.paged_cache import PagedBatch, PagedKVCache
from deepseek_ocr.errors import GenerationError
from tiny_model import tiny_model

PROMPTS = ["The capital of France is", "def main():\n\tpass", "year 2026, price $1299.99",
           "<|User|>: hello<|Assistant|>:", "a b c d e f g h i j k l m n o p", "Zebra"]


@pytest.fixture(scope="module")
def ocr():
    return tiny_model(seed=3)


def alone(ocr, prompt: str, **kw):
    """The reference loop on one request: the definition the engine must reproduce."""
    return ocr.generate(None, prompt=prompt, fast=False, **kw)


def options(**kw) -> GenerationOptions:
    return GenerationOptions(**kw)


@contextlib.contextmanager
def edited_logits(ocr, edit):
    """`edit(logits)` on every lm_head output (hooks run: the CPU engine is eager)."""
    handle = ocr.model.decoder.lm_head.register_forward_hook(lambda m, i, out: edit(out))
    try:
        yield
    finally:
        handle.remove()


def test_paged_cache_matches_a_contiguous_cache():
    """Prefill and step writes through block tables, then attention read through them, against
    the same keys kept contiguously per row and attended with SDPA."""
    torch.manual_seed(0)
    heads, hd, bs = 2, 16, 16
    cache = PagedKVCache(1, 4, heads, hd, num_blocks=40, block_size=bs, context=256,
                         dtype=torch.float32, device="cpu")
    lengths = [5, 16, 33, 1]
    for slot, n in enumerate(lengths):
        cache.reserve(slot, n + 1)
    # Interleave ownership so that rows own non-contiguous blocks.
    cache.reserve(2, 70)
    cache.reserve(0, 40)
    rows = torch.cat([torch.full((n,), s) for s, n in enumerate(lengths)])
    positions = torch.cat([torch.arange(n) for n in lengths])
    k, v = torch.randn(len(rows), heads, hd), torch.randn(len(rows), heads, hd)
    cache.write_packed(0, k, v, rows, positions)
    cache.seqlens[:] = torch.tensor(lengths, dtype=torch.int32)
    cache.active[:] = 1
    batch = PagedBatch(cache, 4)
    k_new, v_new, q = (torch.randn(4, heads, hd) for _ in range(3))
    batch.write_step(0, k_new, v_new)
    out = batch.attend(0, q)
    batch.advance()
    assert cache.seqlens.tolist() == [n + 1 for n in lengths]
    start = 0
    for s, n in enumerate(lengths):
        ks = torch.cat([k[start:start + n], k_new[s:s + 1]]).transpose(0, 1)  # (heads, n+1, hd)
        vs = torch.cat([v[start:start + n], v_new[s:s + 1]]).transpose(0, 1)
        ref = F.scaled_dot_product_attention(q[s][:, None].double(), ks.double(), vs.double())[:, 0]
        torch.testing.assert_close(out[s].double(), ref, rtol=1e-6, atol=1e-6)
        start += n
    blocks = set()
    for s in range(4):
        owned = cache.table[s, :cache.owned(s)].tolist()
        assert 0 not in owned and not blocks & set(owned)  # block 0 is scratch; no sharing
        blocks |= set(owned)
    free = cache.free_blocks
    cache.release(2)
    assert cache.free_blocks == free + cache.blocks_for(70) and cache.table[2].eq(0).all()


def test_requests_joining_and_leaving_mid_run(ocr, monkeypatch):
    """Requests admitted while others decode, one cancelled, one ending at EOS, one at its
    limit, one faulted with NaN: every survivor's tokens equal its run alone."""
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=4, use_graphs=False)
    limits = [9, 4, 12, 7, 6, 5]
    refs = [alone(ocr, p, max_new_tokens=n) for p, n in zip(PROMPTS, limits)]
    prep = [ocr.prepare(None, p) for p in PROMPTS]
    first = [eng.submit(prep[i], options(max_new_tokens=limits[i])) for i in range(3)]
    for _ in range(3):
        eng.step()
    # Token 2 of request 3 becomes its EOS: it must stop there ("stop", EOS not in the output).
    eos_for_3 = refs[3].token_ids[2]
    late = [eng.submit(prep[i], options(max_new_tokens=limits[i])) for i in range(3, 6)]
    eng.cancel(first[1])
    nan_target = late[2]
    seen = {"steps": 0}

    def poison(logits):  # late[2]'s 3rd decode row becomes NaN
        if nan_target.slot is not None and len(nan_target.token_ids) >= 2 and logits.shape[0] > nan_target.slot:
            logits[nan_target.slot, 0] = float("nan")
        seen["steps"] += 1

    monkeypatch.setattr(ocr.tokenizer, "eos_id", eos_for_3)
    with edited_logits(ocr, poison):
        eng.run(first + late)
    assert first[1].finish_reason == "cancelled" and first[1].slot is None
    for i in (0, 2, 4):
        req = (first + late)[i]
        assert req.token_ids == refs[i].token_ids and req.finish_reason == "length", i
    assert late[0].finish_reason == "stop" and late[0].token_ids == refs[3].token_ids[:2]
    assert late[2].finish_reason == "error" and "NaN" in late[2].error
    assert late[2].token_ids == refs[5].token_ids[:len(late[2].token_ids)]
    assert not eng.running and not eng.waiting and eng.cache.free_blocks == eng.cache.num_blocks - 1


def test_per_request_rules_and_sampling_in_one_batch(ocr):
    """Four settings side by side: the official rule with its own n, vLLM's windowed rule with a
    whitelist, seeded sampling, and no rule at all; each equals its run alone."""
    td = ocr.tokenizer.token_to_id("<td>")
    settings = [dict(no_repeat_ngram_size=3),
                dict(no_repeat_ngram_size=None, windowed_ngram_size=2, ngram_window=8, ngram_whitelist=[td]),
                dict(temperature=0.9, top_p=0.8, top_k=40, seed=11),
                dict(no_repeat_ngram_size=None)]
    favourite = 777

    def prefer(logits):  # repeating one token is what the rules must stop
        logits[..., favourite] += 30.0

    with edited_logits(ocr, prefer):
        refs = [alone(ocr, PROMPTS[i], max_new_tokens=10, **kw) for i, kw in enumerate(settings)]
        eng = engine_for(ocr.model, ocr.tokenizer)
        reqs = [eng.submit(ocr.prepare(None, PROMPTS[i]), options(max_new_tokens=10, **kw))
                for i, kw in enumerate(settings)]
        eng.run(reqs)
    assert [r.token_ids for r in reqs] == [r.token_ids for r in refs]
    assert refs[3].token_ids == [favourite] * 10  # without a rule the preference wins every time
    assert refs[0].token_ids.count(favourite) < 10 and refs[1].token_ids.count(favourite) < 10


def test_seeded_request_is_the_same_alone_in_a_batch_and_in_a_padded_bucket(ocr):
    # top_k keeps the draw clear of float32 noise: a batched and a single matmul may differ in the
    # last bit, which over 129k near-equal probabilities (random weights) can move a boundary.
    kw = dict(max_new_tokens=12, temperature=0.8, top_k=20, seed=5)
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=8, use_graphs=False)
    solo = eng.submit(ocr.prepare(None, PROMPTS[0]), options(**kw))
    eng.run([solo])
    trio = [eng.submit(ocr.prepare(None, p), options(**{**kw, "seed": s}))
            for p, s in ((PROMPTS[1], 1), (PROMPTS[0], 5), (PROMPTS[2], 2))]
    eng.run(trio)
    # Slots 0..4 busy with others: the request lands in slot 5 of a bucket of 8 (rows 6, 7 padding).
    others = [eng.submit(ocr.prepare(None, p), options(max_new_tokens=20)) for p in PROMPTS[1:6]]
    eng.step()
    padded = eng.submit(ocr.prepare(None, PROMPTS[0]), options(**kw))
    eng.run(others + [padded])
    assert trio[1].token_ids == solo.token_ids == padded.token_ids
    assert trio[0].token_ids != solo.token_ids
    assert alone(ocr, PROMPTS[0], **kw).token_ids == solo.token_ids  # = the reference loop, seeded


def test_cache_growth_and_preemption_keep_outputs(ocr):
    """A pool of 4 blocks of 16 that may grow to 9: six requests of ~20 tokens plus 24 new ones
    cannot all fit, so the pool grows, then requests are preempted and prefilled again; every
    output still equals its run alone."""
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=6, block_size=16, initial_blocks=4, max_blocks=9,
                 use_graphs=False)
    refs = [alone(ocr, p, max_new_tokens=24, no_repeat_ngram_size=None) for p in PROMPTS]
    reqs = [eng.submit(ocr.prepare(None, p), options(max_new_tokens=24, no_repeat_ngram_size=None))
            for p in PROMPTS]
    eng.run(reqs)
    assert eng.stats["pool_growths"] >= 1 and eng.stats["preemptions"] >= 1
    assert [r.token_ids for r in reqs] == [r.token_ids for r in refs]
    assert all(r.finish_reason == "length" for r in reqs)


def test_a_request_larger_than_the_whole_pool_fails_alone(ocr):
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=2, block_size=16, initial_blocks=2, max_blocks=2,
                 use_graphs=False)
    big = eng.submit(ocr.prepare(None, PROMPTS[4] * 3), options(max_new_tokens=4))
    small = eng.submit(ocr.prepare(None, "Hi"), options(max_new_tokens=4))
    eng.run([big, small])
    assert big.finish_reason == "error" and "cannot hold" in big.error
    assert small.finish_reason == "length" and len(small.token_ids) == 4


def test_an_oversized_first_pool_is_capped_and_the_step_times_are_counted(ocr):
    """`initial_blocks` beyond `max_blocks` starts the pool at the cap (what `serve` asks for to
    preallocate), and a run adds up its host time per phase in `stats`."""
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=2, block_size=16, initial_blocks=2**31, max_blocks=7,
                 use_graphs=False)
    assert eng.cache.num_blocks == 7
    req = eng.submit(ocr.prepare(None, "Hi"), options(max_new_tokens=3))
    eng.run([req])
    st = eng.stats
    assert st["admitted"] == 1 and st["steps"] >= 2 and st["pool_growths"] == 0
    assert all(st[k] > 0 for k in ("admit_s", "decode_s", "read_s"))
    assert st["encode_s"] == 0  # a text-only request has nothing to encode


def test_stream_through_the_engine_equals_generate(ocr):
    stream = ocr.stream(None, prompt=PROMPTS[2], max_new_tokens=8)
    text = "".join(stream)
    ref = alone(ocr, PROMPTS[2], max_new_tokens=8)
    assert stream.result.token_ids == ref.token_ids and text == ref.raw_text


def test_options_are_validated_not_dropped():
    with pytest.raises(GenerationError, match="windowed_ngram_size"):
        GenerationOptions(ngram_window=50)
    with pytest.raises(GenerationError, match="windowed_ngram_size"):
        GenerationOptions(ngram_whitelist=[1])
    with pytest.raises(GenerationError, match="temperature"):
        GenerationOptions(temperature=-1)
    with pytest.raises(TypeError, match="unknown generation argument"):
        GenerationOptions.from_kwargs({"beams": 2})


def test_engine_is_rebuilt_when_weights_change(ocr):
    eng = engine_for(ocr.model, ocr.tokenizer)
    assert engine_for(ocr.model, ocr.tokenizer) is eng
    before = ocr.generate(None, prompt=PROMPTS[0], max_new_tokens=4).token_ids
    q = ocr.model.decoder.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        saved = q.clone()
        q.mul_(3.0)  # an in-place update, as an optimizer step makes
    try:
        assert engine_for(ocr.model, ocr.tokenizer) is not eng
        assert ocr.generate(None, prompt=PROMPTS[0], max_new_tokens=4).token_ids == \
            alone(ocr, PROMPTS[0], max_new_tokens=4).token_ids
    finally:
        with torch.no_grad():
            q.copy_(saved)
    assert ocr.generate(None, prompt=PROMPTS[0], max_new_tokens=4).token_ids == before


def test_engine_is_rebuilt_after_a_fused_optimizer_step(ocr):
    # torch's fused AdamW updates the weights in place without bumping their version counter:
    # an engine that trusted the counter kept the q/k/v weights of before the step.
    q = ocr.model.decoder.layers[0].self_attn.q_proj.weight
    saved = q.detach().clone()
    eng = engine_for(ocr.model, ocr.tokenizer)
    q.grad = torch.full_like(q, 1.0)
    opt = torch.optim.AdamW([q], lr=0.5, fused=True)
    version = q._version
    try:
        opt.step()
        assert not torch.equal(q.detach(), saved)
        assert engine_for(ocr.model, ocr.tokenizer) is not eng, f"version {version} -> {q._version}"
        assert ocr.generate(None, prompt=PROMPTS[0], max_new_tokens=4).token_ids == \
            alone(ocr, PROMPTS[0], max_new_tokens=4).token_ids
    finally:
        q.grad = None
        with torch.no_grad():
            q.copy_(saved)


def test_a_failing_listener_cancels_only_its_request(ocr):
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=4, use_graphs=False)

    def broken(req, ids):
        if ids:
            raise RuntimeError("client went away")

    bad = eng.submit(ocr.prepare(None, PROMPTS[0]), options(max_new_tokens=6), listener=broken)
    good = eng.submit(ocr.prepare(None, PROMPTS[1]), options(max_new_tokens=6))
    eng.run([bad, good])
    assert bad.finish_reason == "cancelled" and "listener" in bad.error and bad.slot is None
    assert good.token_ids == alone(ocr, PROMPTS[1], max_new_tokens=6).token_ids


def test_weights_may_change_once_every_request_is_done(ocr):
    """A finished call can leave the last step's read-back in flight (nothing of it is needed):
    changing the weights then rebuilds the engine instead of refusing (as training between two
    generate calls does)."""
    calls = [0]

    def eos_second(logits):  # the 2nd token is EOS: the request ends while a step is in flight
        if calls[0] == 1:
            logits[..., ocr.tokenizer.eos_id] = 1e4
        calls[0] += 1

    with edited_logits(ocr, eos_second):
        r = ocr.generate(None, prompt=PROMPTS[0], max_new_tokens=6)
    assert r.finish_reason == "stop" and len(r.token_ids) == 1
    q = ocr.model.decoder.layers[0].self_attn.q_proj.weight
    with torch.no_grad():
        q.add_(0.0)  # an in-place update: the version changes, the values do not
    assert ocr.generate(None, prompt=PROMPTS[0], max_new_tokens=3).token_ids == \
        alone(ocr, PROMPTS[0], max_new_tokens=3).token_ids


def _admission_trace(ocr, wait_steps: int):
    """Three slots, admission in groups of two: A ends early, B and C run long, D and E wait.
    Returns (step at which D started, free slots when it did, outputs by prompt)."""
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=3, admit_group=2, admit_wait_steps=wait_steps)
    lengths = [3, 24, 24, 6, 6]
    reqs = [eng.submit(ocr.prepare(None, p), options(max_new_tokens=n, ignore_eos=True, no_repeat_ngram_size=None))
            for p, n in zip(PROMPTS, lengths)]
    step, started = 0, None
    while eng.has_work:
        free_before = eng.max_slots - len(eng.running)
        eng.step()
        step += 1
        if started is None and reqs[3].slot is not None:
            started = (step, free_before)
    return started, [r.token_ids for r in reqs]


def test_admission_waits_for_a_group_of_free_slots_while_others_decode(ocr):
    """With requests decoding, one free slot does not admit a page when two are waiting: the
    engine waits until two slots are free (here: when B and C end), unless it has waited
    `admit_wait_steps`; the outputs are the same either way (each equals its request alone)."""
    (step_grouped, free_grouped), outs = _admission_trace(ocr, wait_steps=1000)
    (step_capped, free_capped), outs_capped = _admission_trace(ocr, wait_steps=2)
    assert free_grouped >= 2  # D started only with room for the group
    assert free_capped == 1  # the cap admitted D into A's slot, alone
    assert step_capped < step_grouped
    assert outs == outs_capped
    for prompt, n, got in zip(PROMPTS, [3, 24, 24, 6, 6], outs):
        assert got == alone(ocr, prompt, max_new_tokens=n, ignore_eos=True, no_repeat_ngram_size=None).token_ids


def test_admission_can_gather_arrivals_into_a_group(ocr):
    """`admit_gather_steps`: with a request decoding, one newly arrived request waits (up to that
    many steps) for a second one, and both start together; with nothing running, or without the
    option, a lone arrival starts at once. Outputs are each request's alone."""
    def trace(gather):
        eng = Engine(ocr.model, ocr.tokenizer, max_slots=8, admit_group=2, admit_gather_steps=gather)
        opts = options(max_new_tokens=30, ignore_eos=True, no_repeat_ngram_size=None)
        first = eng.submit(ocr.prepare(None, PROMPTS[0]), opts)
        eng.step()  # nothing running: admitted at once whatever the setting
        assert first.slot is not None
        late = [eng.submit(ocr.prepare(None, PROMPTS[1]), opts)]
        started = {}
        for step in range(1, 40):
            if step == 4:  # a second arrival three steps later
                late.append(eng.submit(ocr.prepare(None, PROMPTS[2]), opts))
            eng.step()
            for i, r in enumerate(late):
                if r.slot is not None and i not in started:
                    started[i] = step
        while eng.has_work:
            eng.step()
        return started, [r.token_ids for r in [first, *late]]

    eager, outs_eager = trace(0)
    assert eager == {0: 1, 1: 4}  # each admitted at its first step
    gathered, outs = trace(10)
    assert gathered == {0: 4, 1: 4}  # the first waited three steps for the second
    capped, outs_capped = trace(2)
    assert capped == {0: 3, 1: 6}  # each waited its two steps, then went alone
    assert outs == outs_eager == outs_capped
    for prompt, got in zip(PROMPTS, outs):
        assert got == alone(ocr, prompt, max_new_tokens=30, ignore_eos=True, no_repeat_ngram_size=None).token_ids


def test_capturing_graphs_is_a_no_op_without_cuda_graphs(ocr):
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=4, use_graphs=False)
    assert eng.capture_graphs() == 0 and not eng.graphs._graphs


def test_growing_the_pool_keeps_every_block_and_hands_out_old_free_blocks_first():
    from deepseek_ocr.engine.paged_cache import CacheFullError, PagedKVCache
    c = PagedKVCache(2, 3, 2, 4, num_blocks=4, block_size=2, context=16, dtype=torch.float32, device="cpu")
    c.reserve(0, 4)  # blocks 1, 2
    for layer in range(2):
        c.k[layer].copy_(torch.randn_like(c.k[layer]))
        c.v[layer].copy_(torch.randn_like(c.v[layer]))
    before_k, before_v = [t.clone() for t in c.k], [t.clone() for t in c.v]
    table = c.table.clone()
    with pytest.raises(CacheFullError):
        c.reserve(1, 4)  # one block free, two wanted
    c.grow(3)  # smaller than now: nothing changes
    assert c.num_blocks == 4 and c.k[0].shape[0] == 4
    c.grow(7)
    assert c.num_blocks == 7 and c.free_blocks == 4 and torch.equal(c.table, table)
    for layer in range(2):
        assert torch.equal(c.k[layer][:4], before_k[layer]) and torch.equal(c.v[layer][:4], before_v[layer])
        assert not c.k[layer][4:].any() and not c.v[layer][4:].any()
    c.reserve(1, 4)
    assert c.table[1, :2].tolist() == [3, 4]  # the old free block first, then the new ones in order


def test_capturing_graphs_is_refused_while_requests_run(ocr):
    """A capture replays each step once: on a busy engine it would advance running requests."""
    eng = Engine(ocr.model, ocr.tokenizer, max_slots=4, use_graphs=False)
    req = eng.submit(ocr.prepare(None, "Hi"), options(max_new_tokens=4))
    eng.step()
    assert eng.running
    with pytest.raises(GenerationError, match="idle engine"):
        eng.capture_graphs()
    eng.run([req])
    assert eng.capture_graphs() == 0 and req.finish_reason == "length"


def test_pin_views_leaves_inputs_alone_off_cuda():
    """Off CUDA there is nothing to pin for: the same inputs back, their views untouched."""
    from deepseek_ocr.engine.transfer import pin_views
    from deepseek_ocr.processing.prompt import PreparedInputs
    view = torch.zeros(1, 3, 4, 4, dtype=torch.bfloat16)
    inputs = PreparedInputs(input_ids=torch.zeros(3, dtype=torch.long), images_seq_mask=torch.zeros(3, dtype=torch.bool),
                            images_spatial_crop=torch.ones(1, 2, dtype=torch.long), global_view=view, crops=None,
                            prompt="<image>")
    assert pin_views(inputs, "cpu") is inputs and inputs.global_view is view and inputs.crops is None


def test_views_as_uint8_levels_read_as_the_bf16_pixels(ocr):
    """The server and the batch command prepare views as uint8 levels (`pixel_codes=True`); the
    vision encode must give the rows of the bf16 pixels bit for bit, and generation the same ids."""
    from PIL import Image, ImageDraw
    page = Image.new("RGB", (700, 420), "white")
    ImageDraw.Draw(page).text((30, 40), "total 12.50 due", fill=(20, 30, 200))
    plain = ocr.prepare(page, "<image>\nFree OCR.", mode="512:256:crop")
    coded = ocr.prepare(page, "<image>\nFree OCR.", mode="512:256:crop", pixel_codes=True)
    assert coded.global_view.dtype == torch.uint8 and coded.crops.shape[0] > 1
    assert coded.global_view.element_size() * 2 == plain.global_view.element_size()
    rows_plain, rows_coded = ocr.encode_images([plain, coded])
    assert torch.equal(rows_plain, rows_coded)
    outs = ocr.generate([plain, coded], max_new_tokens=12)
    assert outs[0].token_ids == outs[1].token_ids
