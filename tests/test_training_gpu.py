"""The training objective on a GPU queues its work without waiting for it (CUDA only).

A host wait inside the step (a pageable copy to the GPU, `int(t.sum())` of a device tensor, a
boolean-mask index) stops the host from queueing the next kernels until the GPU has drained,
so a launch-heavy step runs as host time plus GPU time instead of the larger of the two.
CUDA's sync debug mode reports every such wait; this test runs a forward and backward pass of
the `paper` preset under it and lists where each wait came from.

    DEEPSEEK_OCR_TEST_DEVICE=cuda python -m pytest tests/test_training_gpu.py
"""
import traceback
import warnings

import pytest
import torch
from PIL import Image, ImageDraw

from conftest import TEST_DEVICE

pytestmark = pytest.mark.skipif(not (TEST_DEVICE.startswith("cuda") and torch.cuda.is_available()),
                                reason="CUDA only (DEEPSEEK_OCR_TEST_DEVICE=cuda)")


def _page(text: str) -> Image.Image:
    img = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(img).text((40, 60), text, fill="black")
    return img


def _waits_during(fn) -> list[str]:
    """Run fn under CUDA's sync debug mode ("warn"); each synchronizing call's Python stack."""
    found: list[str] = []

    def note(message, category, filename, lineno, file=None, line=None):
        if "called a synchronizing CUDA operation" in str(message):  # not the mode's own notice
            stack = [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack()[:-1]]
            found.append(f"{message}\n    " + "\n    ".join(stack[-8:]))

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = note
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return found


def test_a_training_step_does_not_wait_for_the_gpu(small_checkpoint):
    from deepseek_ocr import DeepseekOCR
    from deepseek_ocr.training.trainable import set_trainable
    ocr = DeepseekOCR.from_pretrained(small_checkpoint, device=TEST_DEVICE, dtype=torch.float32)
    set_trainable(ocr.model, "paper")
    ocr.model.train()
    batch = [ocr.prepare(_page("invoice 42"), "<image>\nFree OCR.", mode="tiny", answer="invoice 42"),
             ocr.prepare(_page("total 7"), "<image>\nFree OCR.", mode="tiny", answer="total 7", pixel_codes=True),
             # text-only in the same batch, long enough (> 3,072 tokens in all) for the embedding's
             # backward to take its sorting path rather than the one for few indices
             ocr.prepare(None, "Say hello.", answer=" ".join(["hello world"] * 1800))]

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = ocr.loss(batch)
        out.loss.backward()
        return out

    first = step()  # first use: kernels compiled, pinned buffers and workspaces allocated
    torch.cuda.synchronize()
    ocr.model.zero_grad(set_to_none=True)
    results = []
    waits = _waits_during(lambda: results.append(step()))
    torch.cuda.synchronize()
    assert not waits, f"{len(waits)} host waits in the step:\n" + "\n".join(waits)
    # The same batch, the same weights: the same loss (bf16 kernels may order sums differently).
    assert torch.isfinite(results[0].loss)
    again, before = float(results[0].ce.detach()), float(first.ce.detach())
    assert abs(again - before) <= 1e-3 * abs(before)
    assert results[0].num_labels == first.num_labels and results[0].num_tokens == first.num_tokens
    grads = [p.grad for p in ocr.model.vision.clip.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("master_weights", [False, True])
def test_compiled_layers_with_cuda_graphs_train_as_the_uncompiled_ones(tmp_path, small_checkpoint, master_weights):
    """`compile="all"` with `compile_mode="reduce-overhead"` (inductor, CLIP's and the decoder's
    layers replayed as CUDA graphs): the same loss curve as the uncompiled trainer within bf16's
    rounding while the loss falls (one batch, repeated, at a rate that moves it: wrong gradients
    would bend the curve), an evaluation at the end (generation runs the layers uncompiled), and
    the graphs' outputs never read after they were overwritten (cudagraph trees raise if they are)."""
    from deepseek_ocr import DeepseekOCR
    from deepseek_ocr.training.config import TrainConfig
    from deepseek_ocr.training.trainer import Trainer
    runs = {}
    for scope in (None, "all"):
        torch._dynamo.reset()
        ocr = DeepseekOCR.from_pretrained(small_checkpoint, device=TEST_DEVICE, dtype=torch.float32)
        items = [ocr.prepare(_page(t), "<image>\nFree OCR.", mode="tiny", answer=t) for t in ("invoice 42", "receipt 17")]
        cfg = TrainConfig(model="unused", data=["in-memory"], output_dir=str(tmp_path / f"run-{scope}"),
                          preset="paper", lr=1e-4, max_steps=5, batch_size=2, schedule="constant",
                          master_weights=master_weights, compile=scope,
                          compile_mode="reduce-overhead" if scope else "default",
                          progress=False, tensorboard=False, save_model=False, checkpoint_every=0,
                          log_every=1)
        result = Trainer(ocr, cfg, items, eval_data=items).train()
        runs[scope] = [r["loss"] for r in result.losses]
        assert result.eval is not None and result.step == 5
        del ocr
    want, got = runs[None], runs["all"]
    # The curve falls steeply (on the CPU in float32: 12.11, 6.30, 1.79, 1.23, 0.88), so wrong or
    # stale gradients would leave it by nats; bf16 rounding moves it by far less than 5% of the fall.
    fall = want[0] - want[-1]
    assert fall > 0.3 * want[0], want
    assert all(abs(g - w) <= 0.05 * fall for g, w in zip(got, want)), (got, want)
