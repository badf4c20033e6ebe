"""The generate loop on the 3-layer checkpoint: batching, streaming, sampling, stops, limits.

References: the single-sequence run for the batched one, the official n-gram rules written
plainly in this file, the tokenizer's EOS id, and logits forced through a hook on `lm_head`.
"""
from __future__ import annotations

import contextlib

import pytest
import torch

from deepseek_ocr import ContextLengthError, GenerationError, PromptError

TEXT_PROMPTS = ["The capital of France is", "def main():\n\tpass", "year 2026, price $1299.99"]


@contextlib.contextmanager
def forced_logits(model, edit):
    """Apply `edit(call_index, logits)` to the last-position logits `[B, V]` of every lm_head call
    (call 0 is the prefill), on the reference loop and on the fast loop alike.

    Python hooks do not run when a CUDA graph replays, so the engine runs uncaptured here.
    """
    from deepseek_ocr.engine import engine_for
    calls = [0]

    def hook(_module, _inp, out):
        edit(calls[0], out[:, -1] if out.dim() == 3 else out)
        calls[0] += 1
        return out

    handle = model.model.decoder.lm_head.register_forward_hook(hook)
    graphs = engine_for(model.model, model.tokenizer).graphs
    saved, graphs.use_graphs = graphs.use_graphs, False
    try:
        yield
    finally:
        handle.remove()
        graphs.use_graphs = saved


FAST = pytest.mark.parametrize("fast", [False, True], ids=["reference_loop", "engine"])


@pytest.fixture(scope="module")
def tiny_inputs(small_model, shared_dir):
    inp = small_model.prepare(shared_dir / "images/receipt_tall.jpg", "<image>\nFree OCR.", mode="tiny")
    inp.vision_rows = small_model.encode_images([inp])[0]
    return inp


def test_text_only_generation(small_model):
    r = small_model.generate(None, prompt=TEXT_PROMPTS[0], max_new_tokens=4)
    assert len(r.token_ids) == 4 and r.finish_reason == "length"
    assert r.vision_tokens == 0 and r.compression_ratio is None
    assert r.raw_text == small_model.tokenizer.decode(r.token_ids)


def test_greedy_first_token_is_prefill_argmax(small_model, tiny_inputs):
    logits = small_model.logits(tiny_inputs)
    r = small_model.generate(tiny_inputs, max_new_tokens=1, no_repeat_ngram_size=None)
    assert r.token_ids == [int(logits[-1].argmax())]


def test_batch_equals_single(small_model, tiny_inputs):
    """Left padding and per-row positions make each row compute what it computes alone."""
    singles = [small_model.generate(tiny_inputs, max_new_tokens=5)]
    singles += [small_model.generate(None, prompt=p, max_new_tokens=5) for p in TEXT_PROMPTS]
    batch = small_model.generate([tiny_inputs, None, None, None], prompt=[tiny_inputs.prompt] + TEXT_PROMPTS,
                                 max_new_tokens=5)
    assert [b.token_ids for b in batch] == [s.token_ids for s in singles]
    assert [b.prompt_tokens for b in batch] == [s.prompt_tokens for s in singles]


def test_stream_pieces_join_to_text(small_model, tiny_inputs):
    stream = small_model.stream(tiny_inputs, max_new_tokens=8)
    pieces = list(stream)
    ref = small_model.generate(tiny_inputs, max_new_tokens=8)
    assert "".join(pieces) == ref.raw_text
    assert stream.result.token_ids == ref.token_ids and stream.result.finish_reason == "length"


def test_sampling_is_seeded(small_model):
    kw = dict(prompt=TEXT_PROMPTS[1], max_new_tokens=6, temperature=1.0, top_p=0.95, top_k=50)
    a = small_model.generate(None, seed=7, **kw)
    b = small_model.generate(None, seed=7, **kw)
    c = small_model.generate(None, seed=8, **kw)
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


@FAST
def test_eos_stops_one_row_only(small_model, fast):
    eos = small_model.tokenizer.eos_id

    def edit(call, logits):  # the batch's first row emits EOS at its 3rd generated token
        if call == 2:
            logits[0, eos] = 1e4

    with forced_logits(small_model, edit):
        a, b = small_model.generate([None, None], prompt=TEXT_PROMPTS[:2], max_new_tokens=5, fast=fast)
    assert a.finish_reason == "stop" and len(a.token_ids) == 2 and eos not in a.token_ids
    assert b.finish_reason == "length" and len(b.token_ids) == 5


@FAST
def test_ignore_eos(small_model, fast):
    eos = small_model.tokenizer.eos_id

    def edit(call, logits):
        logits[:, eos] = 1e4

    with forced_logits(small_model, edit):
        r = small_model.generate(None, prompt=TEXT_PROMPTS[0], max_new_tokens=3, ignore_eos=True,
                                 no_repeat_ngram_size=None, fast=fast)
    assert r.token_ids == [eos] * 3 and r.finish_reason == "length"


@FAST
def test_nan_fails_only_its_row(small_model, fast):
    def edit(call, logits):
        if call == 1:
            logits[1, 5] = float("nan")

    with forced_logits(small_model, edit):
        a, b = small_model.generate([None, None], prompt=TEXT_PROMPTS[:2], max_new_tokens=4, fast=fast)
    assert a.finish_reason == "length" and len(a.token_ids) == 4
    assert b.finish_reason == "error" and "NaN" in b.error and len(b.token_ids) == 1


def brute_force_ngram_ok(ids, n):
    grams = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) == len(set(grams))


@FAST
def test_official_no_repeat_ngram_rule(small_model, fast):
    favourite = 1234

    def edit(call, logits):  # without a ban, greedy would repeat one token forever
        logits[:, favourite] = 1e4

    with forced_logits(small_model, edit):
        r = small_model.generate(None, prompt=TEXT_PROMPTS[0], max_new_tokens=12, no_repeat_ngram_size=3, fast=fast)
        free = small_model.generate(None, prompt=TEXT_PROMPTS[0], max_new_tokens=5, no_repeat_ngram_size=None, fast=fast)
    assert free.token_ids == [favourite] * 5
    prompt_ids = small_model.prepare(None, TEXT_PROMPTS[0]).input_ids.tolist()
    assert brute_force_ngram_ok(prompt_ids + r.token_ids, 3)
    assert r.token_ids.count(favourite) >= 4  # it still prefers the token whenever allowed


def test_windowed_rule_and_whitelist(small_model):
    td = small_model.tokenizer.token_to_id("<td>")

    def edit(call, logits):
        logits[:, td] = 1e4

    with forced_logits(small_model, edit):
        r = small_model.generate(None, prompt=TEXT_PROMPTS[0], max_new_tokens=10, no_repeat_ngram_size=None,
                                 windowed_ngram_size=3, ngram_window=90, ngram_whitelist=[])
        wl = small_model.generate(None, prompt=TEXT_PROMPTS[0], max_new_tokens=6, no_repeat_ngram_size=None,
                                  windowed_ngram_size=3)  # default whitelist: <td>, </td>
    assert brute_force_ngram_ok(r.token_ids, 3)
    assert wl.token_ids == [td] * 6


def test_repetition_is_detected(small_model, monkeypatch):
    """The loop stops a row whose tail is one block repeated. The detector's own rule and its
    defaults (a 200-id tail) are tested in test_logits_processors.py; here a 20-id tail, so the
    loop runs 20 steps instead of 200 (~2 s instead of ~18 on the CI machine)."""
    import functools

    from deepseek_ocr.engine import request
    from deepseek_ocr.generation import generate as generate_module
    from deepseek_ocr.generation.logits_processors import RepetitionDetector
    short = functools.partial(RepetitionDetector, min_length=20)
    monkeypatch.setattr(request, "RepetitionDetector", short)  # the engine's requests
    monkeypatch.setattr(generate_module, "RepetitionDetector", short)  # the reference loop

    def edit(call, logits):
        logits[:, 4321] = 1e4

    for fast in (True, False):
        with forced_logits(small_model, edit):
            r = small_model.generate(None, prompt=TEXT_PROMPTS[0], max_new_tokens=400, fast=fast,
                                     no_repeat_ngram_size=None, stop_on_repetition=True)
        # Period 1 from the first id: the tail is periodic with 20 ids after the 20th.
        assert r.finish_reason == "repetition" and r.token_ids == [4321] * 20, (fast, r.token_ids[:30])


def test_limits(small_model):
    with pytest.raises(GenerationError, match="max_new_tokens"):
        small_model.generate(None, prompt="Hello", max_new_tokens=0)
    long_prompt = "hello " * 8000  # "hello" repeated: about 8000 tokens
    inp = small_model.prepare(None, long_prompt)
    with pytest.raises(ContextLengthError, match=rf"prompt \({inp.num_tokens} tokens\)"):
        small_model.generate(inp, max_new_tokens=1000)
    with pytest.raises(ContextLengthError, match="more than the model's context of 8192"):
        small_model.generate(None, prompt="hello " * 9000, max_new_tokens=1)
    with pytest.raises(TypeError, match="unknown generation argument"):
        small_model.generate(None, prompt="Hello", max_tokens=3)


def test_prompt_errors_through_the_api(small_model, shared_dir):
    with pytest.raises(PromptError):
        small_model.prepare(shared_dir / "images/receipt_small.jpg", "Free OCR.", mode="tiny")
    with pytest.raises(PromptError):
        small_model.prepare(shared_dir / "images/receipt_small.jpg", "<image><image>", mode="tiny")


def test_custom_modes_run_end_to_end(small_model):
    """Other grids than the pretrained ones: SAM's absolute and relative positions and CLIP's
    position table are interpolated, windows padded (16 -> 28, 8 -> 14), tiles laid out; the
    vision rows must line up one to one with the prompt's <image> ids."""
    from PIL import Image

    from deepseek_ocr import Mode
    img = Image.new("RGB", (600, 300), (250, 250, 250))
    for mode in (Mode(base_size=256, image_size=128, crop=True, max_tiles=4), Mode(192, 192, False)):
        inp = small_model.prepare(img, "<image>\nFree OCR.", mode=mode)
        # 600x300 is wider than a 128 tile, aspect 2 -> a (2 cols, 1 row) grid
        assert inp.images_spatial_crop.tolist() == ([[2, 1]] if mode.crop else [[1, 1]])
        rows = small_model.encode_images([inp])[0]
        assert rows.shape == (inp.num_vision_tokens, small_model.config.n_embed)
        assert torch.isfinite(rows).all()
        r = small_model.generate(inp, max_new_tokens=2)
        assert len(r.token_ids) == 2
