"""The training objective's host-to-GPU copy of the views (pinned and asynchronous on CUDA)."""
from __future__ import annotations

import pytest
import torch

from deepseek_ocr.training.objective import _views_to


def test_cpu_views_are_stacked_as_torch_cat():
    views = [torch.randn(1, 3, 8, 8), torch.randn(3, 3, 8, 8)]
    assert torch.equal(_views_to(torch.device("cpu"), views), torch.cat(views))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned host memory and async copies: CUDA")
def test_pinned_async_copy_delivers_the_same_views_on_the_gpu():
    device = torch.device("cuda")
    for dtype in (torch.float32, torch.bfloat16):
        views = [torch.randn(n, 3, 64, 64).to(dtype) for n in (1, 6, 2)]
        out = _views_to(device, views)
        # Later work on the default stream sees the copied values (the copy is ordered on it).
        assert out.device.type == "cuda" and out.dtype == dtype
        assert torch.equal(out.cpu(), torch.cat(views))
        del views  # the host buffers may go; the copy must already own its data
        torch.cuda.synchronize()
