"""Resized position tables remembered at inference: the same values as computing them afresh,
recomputed after an in-place weight update, and never remembered while autograd records."""
from __future__ import annotations

import torch

from deepseek_ocr.vision.clip import resize_clip_pos
from deepseek_ocr.vision.positions import get_rel_pos, rel_pos_table, remembered
from deepseek_ocr.vision.sam import resize_abs_pos


def test_remembered_tables_equal_fresh_ones_and_follow_updates():
    pos = torch.nn.Parameter(torch.randn(1, 16, 16, 8))
    with torch.no_grad():
        first = remembered(resize_abs_pos, pos, 10)
        assert torch.equal(first, resize_abs_pos(pos, 10))
        assert remembered(resize_abs_pos, pos, 10) is first  # remembered, not recomputed
        pos.mul_(2.0)  # an optimizer step: the version changes
        second = remembered(resize_abs_pos, pos, 10)
        assert second is not first and torch.equal(second, resize_abs_pos(pos, 10))
    clip = torch.randn(1 + 16 * 16, 8)
    assert torch.equal(remembered(resize_clip_pos, clip, 1 + 10 * 10), resize_clip_pos(clip, 1 + 10 * 10))
    rel = torch.randn(2 * 14 - 1, 4)
    assert torch.equal(rel_pos_table(rel, 9), get_rel_pos(9, 9, rel))


def test_nothing_is_remembered_while_training():
    pos = torch.nn.Parameter(torch.randn(1, 16, 16, 8))
    out = remembered(resize_abs_pos, pos, 10)
    assert out.requires_grad and out.grad_fn is not None
    out.sum().backward()
    assert pos.grad is not None and pos.grad.abs().sum() > 0
    assert remembered(resize_abs_pos, pos, 10) is not out


def test_inference_mode_results_stay_usable_outside_it():
    """A table first resized under inference_mode is a normal tensor: a frozen SAM can then feed
    a trained CLIP (autograd records) without 'inference tensors cannot be saved' errors."""
    pos = torch.randn(1, 16, 16, 8)
    with torch.inference_mode():
        remembered(resize_abs_pos, pos, 10)
    w = torch.randn(8, requires_grad=True)
    (remembered(resize_abs_pos, pos, 10) * w).sum().backward()
    assert w.grad is not None
