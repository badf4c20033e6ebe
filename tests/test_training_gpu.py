"""The training objective on a GPU: its forward is queued without waiting for the device.

The host-bound learning run (benchmarks/RESULTS.md, fourth round) showed the cost of a wait in the
middle of the step: the host stops launching until the GPU catches up, so their work does not
overlap. The objective counts image positions and picks the scored positions from the batch's
host-side masks instead; this test holds it to that under CUDA's sync debug mode.
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA sync debug mode: GPU only")

REPO = Path(__file__).resolve().parents[1]


def test_loss_forward_never_waits_for_the_gpu(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from learning_run import Lines
    from synthetic_text import smoke_checkpoint

    from deepseek_ocr import DeepseekOCR
    from deepseek_ocr.training.trainable import set_trainable

    folder = smoke_checkpoint(tmp_path / "m", layers=2, experts=4, topk=2, hidden_size=64, heads=2,
                              intermediate_size=128, moe_intermediate_size=32)
    ocr = DeepseekOCR.from_pretrained(folder, device="cuda", dtype=torch.float32)
    set_trainable(ocr.model, "all")
    lines = Lines(ocr.tokenizer, "256:256", 20, 3, 256, 32, min_words=1, max_lines=1)
    rng = random.Random(0)
    batch = [lines.sample(rng)[0] for _ in range(3)] + [ocr.prepare(None, "Hello", answer="world")]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        reference = ocr.loss(batch)  # warm-up (lazy initialisations may synchronise once)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = ocr.loss(batch)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    out.loss.backward()
    assert torch.isfinite(out.loss).item()
    assert out.ce.item() == pytest.approx(reference.ce.item(), rel=1e-3)
    assert out.num_labels == reference.num_labels and out.num_tokens == reference.num_tokens
