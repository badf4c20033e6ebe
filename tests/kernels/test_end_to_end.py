"""The whole model through our Triton kernels (interpreted on the CPU) against the recorded outputs.

The autouse fixture of this folder routes CPU tensors to the kernels, so vision (SAM attention),
prefill and paged decode attention, the decoder's norms, rotary and KV store, and the MoE experts
all run as Triton programs here (routing
is the Router's torch path at every size);
the greedy tokens must equal those the official code recorded (float32). The same test runs
compiled on a GPU (`DEEPSEEK_OCR_TEST_DEVICE=cuda`).
"""
from __future__ import annotations

import pytest
import torch

from deepseek_ocr import kernels
from deepseek_ocr.kernels import _common

pytestmark = pytest.mark.skipif(not _common.HAVE_TRITON, reason="triton is not installed")


@pytest.mark.parametrize("name", ["tiny_receipt"])
def test_triton_path_reproduces_recorded_tokens(name, small_model, golden, shared_dir, monkeypatch):
    f, cases = golden
    c = cases[name]
    calls: dict[str, int] = {}
    for op, impls in kernels._IMPLS.items():  # count the kernel launches that did not decline
        wrapped = []
        for impl in impls:
            def counting(*args, _impl=impl, _op=op):
                out = _impl(*args)
                if out is not None:
                    calls[_op] = calls.get(_op, 0) + 1
                return out
            wrapped.append(counting)
        monkeypatch.setitem(kernels._IMPLS, op, wrapped)
    # Graphs captured earlier in the session replay without Python: capture anew under the count.
    from deepseek_ocr.engine import engine_for
    engine_for(small_model.model, small_model.tokenizer).graphs.clear()
    inp = small_model.prepare(shared_dir / c["image"], c["prompt"], mode=c["mode"])
    # Two tokens: the prefill and one decode step already run every kernel; each interpreted
    # step costs tens of seconds on a 2-core CI machine (all 12 are compared on the GPU suite).
    n = 2 if not torch.cuda.is_available() else 12
    res = small_model.generate(inp, max_new_tokens=n, no_repeat_ngram_size=35, fast=True)
    assert set(calls) == {"moe_experts", "attention_prefill", "attention_paged_decode",
                          "sam_attention", "add_rms_norm", "rope_and_store"}, calls
    assert res.token_ids == f.get_tensor(f"{name}.output_ids").tolist()[:n]
    if n == 12:
        assert res.text == c["text"]
