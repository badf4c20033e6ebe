"""The optimizer's groups (training/optim.py): weight decay where it regularizes, and the vision
tower at its own rate multiple (`vision_lr_scale`), through the trainer and the command.

The reference for the rates is Adam's first update: from zero moments, bias-corrected, it moves
every weight by lr * g / (|g| + eps), i.e. by the rate itself wherever |g| >> eps, so the largest
move of a parameter after one step is the rate its group was given.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from deepseek_ocr.commands.train import build_parser, config_from_args
from deepseek_ocr.training.trainer import Trainer
from deepseek_ocr.training.config import TrainConfig, TrainConfigError, resume_differences
from deepseek_ocr.training.optim import build_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tiny_model import tiny_model  # noqa: E402


def _toy() -> nn.Module:
    model = nn.Module()
    model.vision = nn.Module()
    model.vision.sam = nn.Linear(3, 2)
    model.vision.clip = nn.LayerNorm(3)
    model.vision.projector = nn.Linear(3, 2)
    model.decoder = nn.Linear(3, 2)
    return model


def _groups(opt, model) -> dict:
    names = {id(p): n for n, p in model.named_parameters()}
    return {g["group"]: (g["lr_scale"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
            for g in opt.param_groups}


def test_the_tower_gets_groups_of_its_own_only_when_scaled():
    model = _toy()
    assert _groups(build_optimizer(model, lr=1e-3, weight_decay=0.1), model) == {
        "decay": (1.0, 0.1, ["decoder.weight", "vision.projector.weight", "vision.sam.weight"]),
        "no_decay": (1.0, 0.0, ["decoder.bias", "vision.clip.bias", "vision.clip.weight", "vision.projector.bias",
                                "vision.sam.bias"])}
    assert _groups(build_optimizer(model, lr=1e-3, weight_decay=0.1, vision_lr_scale=0.3), model) == {
        "decay": (1.0, 0.1, ["decoder.weight", "vision.projector.weight"]),
        "no_decay": (1.0, 0.0, ["decoder.bias", "vision.projector.bias"]),
        "vision_decay": (0.3, 0.1, ["vision.sam.weight"]),
        "vision_no_decay": (0.3, 0.0, ["vision.clip.bias", "vision.clip.weight", "vision.sam.bias"])}


def test_a_scale_with_no_tower_to_scale_is_an_error():
    model = _toy()
    model.vision.requires_grad_(False)  # the decoder preset, as far as the optimizer sees
    with pytest.raises(TrainConfigError, match="vision_lr_scale 0.3 has nothing to scale"):
        build_optimizer(model, lr=1e-3, vision_lr_scale=0.3)
    build_optimizer(model, lr=1e-3)  # unscaled: fine


def test_config_and_command_line():
    with pytest.raises(TrainConfigError, match="vision_lr_scale must be positive, got 0"):
        TrainConfig(data=["d"], max_steps=1, vision_lr_scale=0)
    args = build_parser().parse_args(["--data", "d", "--max-steps", "1", "--preset", "paper", "--vision-lr-scale", "0.3"])
    cfg = config_from_args(args)
    assert cfg.vision_lr_scale == 0.3
    # It changes what the optimizer does: a resumed run may not change it.
    assert resume_differences(TrainConfig(data=["d"], max_steps=1).to_dict(), cfg) == [
        "preset: checkpoint None, now 'paper'", "vision_lr_scale: checkpoint 1.0, now 0.3"]
    # A checkpoint written before the setting existed trained at its default (1): it resumes as
    # it was, and not with another scale.
    older = TrainConfig(data=["d"], max_steps=1, preset="paper").to_dict()
    del older["vision_lr_scale"]
    assert resume_differences(older, TrainConfig(data=["d"], max_steps=1, preset="paper")) == []
    assert resume_differences(older, cfg) == ["vision_lr_scale: checkpoint 1.0, now 0.3"]


def _paper_run(tmp_path, name: str, **kw):
    """The tiny model under the paper preset (CLIP, projector and decoder trained; SAM frozen),
    float32 on the CPU, with an image sample and a text-only one, and a run's configuration."""
    ocr = tiny_model(seed=5)
    img = Image.new("RGB", (500, 300), "white")
    ImageDraw.Draw(img).text((20, 20), "total 12.50", fill="black")
    data = [ocr.prepare(img, "<image>\nFree OCR.", mode="512:256:crop", answer="total 12.50"),
            ocr.prepare(None, "Say hi.", answer="hi")]
    settings = dict(model="unused", data=["in-memory"], output_dir=str(tmp_path / name), preset="paper",
                    checkpoint_every=0, save_model=False, progress=False, tensorboard=False, batch_size=1)
    return ocr, data, TrainConfig(**{**settings, **kw})


def test_one_step_of_the_trainer_moves_clip_at_the_scaled_rate(tmp_path):
    # No clipping, no decay, constant rate: after one update each parameter's largest move is its
    # group's rate (module docstring).
    lr, scale = 1e-3, 0.25
    ocr, data, cfg = _paper_run(tmp_path, "run", lr=lr, vision_lr_scale=scale, max_steps=1, batch_size=2,
                                schedule="constant", max_grad_norm=0.0)
    trainer = Trainer(ocr, cfg, data)
    before = {n: p.detach().clone() for n, p in ocr.model.named_parameters() if p.requires_grad}
    assert any(n.startswith("vision.clip.") for n in before) and not any(n.startswith("vision.sam.") for n in before)
    result = trainer.train()
    assert result.step == 1 and result.losses[0]["lr"] == lr
    moves = {n: (p.detach() - before[n]).abs().max().item() for n, p in ocr.model.named_parameters() if n in before}
    checked = {"clip": 0, "rest": 0}
    for name, move in moves.items():
        if move == 0:  # no gradient reached it (an expert no token chose, the image newline of a crop-free view)
            continue
        expected = lr * scale if name.startswith("vision.clip.") else lr
        assert move == pytest.approx(expected, rel=1e-3), name
        checked["clip" if name.startswith("vision.clip.") else "rest"] += 1
    assert checked["clip"] > 10 and checked["rest"] > 10, checked


def test_resume_keeps_the_towers_rate(tmp_path):
    # Four steps with warm-up and cosine decay against the same run stopped after two (the
    # checkpoint a signal writes) and continued from it in a fresh model: the same losses and bitwise the same weights (the vision groups and their
    # scale come back from the checkpoint's optimizer state).
    common = dict(lr=2e-3, vision_lr_scale=0.3, max_steps=4, warmup_steps=1, weight_decay=0.01)
    ocr, data, cfg = _paper_run(tmp_path, "ref", **common)
    ref = Trainer(ocr, cfg, data).train()
    ref_weights = {n: p.detach().clone() for n, p in ocr.model.named_parameters() if p.requires_grad}

    ocr, data, cfg = _paper_run(tmp_path, "cut", **common)
    first = Trainer(ocr, cfg, data, on_step=lambda t, record: record["step"] == 2 and t.request_stop()).train()
    assert first.interrupted and first.step == 2
    ocr, data, cfg = _paper_run(tmp_path, "cut", **common)
    resumed = Trainer(ocr, cfg, data, resume=first.checkpoint).train()
    assert resumed.step == 4 and resumed.losses == ref.losses
    for name, p in ocr.model.named_parameters():
        if name in ref_weights:
            assert torch.equal(p.detach(), ref_weights[name]), name
