"""benchmarks/learning_run.py's view packing: the uint8 codes that cross the DataLoader pipe give
back exactly the bf16 views `make_views` made (compared with torch.equal against make_views)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from deepseek_ocr.processing.views import make_views, resolve_mode

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_script import load_benchmark  # noqa: E402


def load():
    return load_benchmark("learning_run")


def test_levels_are_every_uint8_value_normalized():
    lr = load()
    # The normalization written out independently: (u / 255 - 0.5) / 0.5, rounded to bf16.
    expected = ((torch.arange(256, dtype=torch.float32) / 255 - 0.5) / 0.5).to(torch.bfloat16)
    assert torch.equal(lr.LEVELS, expected)


def test_gray_and_color_views_round_trip_exactly():
    lr = load()
    rng = np.random.default_rng(0)
    gray = np.repeat(rng.integers(0, 256, (300, 410, 1), dtype=np.uint8), 3, axis=2)
    color = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)  # gundam: a global view and crops
    for pixels, mode, channels in ((gray, "tiny", 1), (color, "gundam", 3)):
        views = make_views(Image.fromarray(pixels), resolve_mode(mode))
        for t in (views.global_view, views.crops):
            packed = lr.pack_views(t)
            assert packed[1].dtype == np.uint8 and packed[2] == channels
            back = lr.unpack_views(packed, torch.device("cpu"))
            assert back.dtype == torch.bfloat16 and torch.equal(back, t)


def test_views_made_as_levels_unpack_to_the_bf16_views():
    lr = load()
    rng = np.random.default_rng(1)
    gray = np.repeat(rng.integers(0, 256, (300, 410, 1), dtype=np.uint8), 3, axis=2)
    color = rng.integers(0, 256, (700, 900, 3), dtype=np.uint8)
    for pixels, mode, channels in ((gray, "tiny", 1), (color, "gundam", 3)):
        codes = make_views(Image.fromarray(pixels), resolve_mode(mode), codes=True)
        views = make_views(Image.fromarray(pixels), resolve_mode(mode))
        for c, t in ((codes.global_view, views.global_view), (codes.crops, views.crops)):
            packed = lr.pack_views(c)
            assert packed[2] == channels
            assert torch.equal(lr.unpack_views(packed, torch.device("cpu")), t)


def test_a_training_sample_carries_the_bf16_views_of_its_image():
    lr = load()
    import random
    from deepseek_ocr.processing.tokenizer import Tokenizer
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        from synthetic_text import render_lines, wrap
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    tok = Tokenizer.from_folder(REPO / "deepseek_ocr" / "assets" / "tokenizer")
    lines = lr.Lines(tok, "tiny", 50, 3, 256, 24)
    inputs, text = lines.sample(random.Random(3))
    back = lr.from_numpy(lr.to_numpy(inputs))
    # The same draws again, the image made into bf16 views the plain way (`make_views`).
    rng = random.Random(3)
    words = " ".join(rng.choice(lines.words) for _ in range(rng.randint(lines.min_words, lines.max_words)))
    drawn = wrap(words, int(0.85 * 256 / (0.55 * 24)))[:lines.max_lines]
    assert " ".join(drawn) == text
    image = render_lines(drawn, size=(256, 256), font_size=24, rng=rng, jitter=lines.jitter)
    expected = make_views(image, resolve_mode("tiny"))
    assert back.global_view.dtype == torch.bfloat16 and torch.equal(back.global_view, expected.global_view)


def test_sample_round_trip_through_numpy():
    lr = load()
    from deepseek_ocr.processing.prompt import build_inputs
    from deepseek_ocr.processing.tokenizer import Tokenizer
    tok = Tokenizer.from_folder(REPO / "deepseek_ocr" / "assets" / "tokenizer")
    image = Image.fromarray(np.full((256, 256, 3), 255, dtype=np.uint8))
    mode = resolve_mode("tiny")
    inputs = build_inputs(tok, lr.PROMPT, make_views(image, mode), mode)
    back = lr.from_numpy(lr.to_numpy(inputs))
    for name in ("input_ids", "images_seq_mask", "images_spatial_crop", "global_view", "crops"):
        assert torch.equal(getattr(back, name), getattr(inputs, name)), name


def test_optimizer_groups_take_the_tower_scale_and_beta2():
    """The tower (SAM, CLIP) and the rest split into the library's decay / no-decay groups, each
    with its rate multiple, and --beta2 reaches every group; one step moves a weight by the rate
    (Adam's first step is lr * sign(g) when bias-corrected, whatever beta2)."""
    lr = load()
    model = torch.nn.Module()
    model.vision = torch.nn.Module()
    model.vision.sam = torch.nn.Linear(3, 2)
    model.vision.clip = torch.nn.Linear(3, 2)
    model.vision.projector = torch.nn.Linear(3, 2)
    model.decoder = torch.nn.Linear(3, 2)
    opt = lr.tower_and_rest_optimizer(model, 1e-2, 0.0, 0.5, beta2=0.95)
    named = {id(p): n for n, p in model.named_parameters()}
    groups = {(g["group"], g["lr_scale"]): sorted(named[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert groups == {
        ("vision_decay", 0.5): ["vision.clip.weight", "vision.sam.weight"],
        ("vision_no_decay", 0.5): ["vision.clip.bias", "vision.sam.bias"],
        ("decay", 1.0): ["decoder.weight", "vision.projector.weight"],
        ("no_decay", 1.0): ["decoder.bias", "vision.projector.bias"]}
    assert all(g["betas"] == (0.9, 0.95) for g in opt.param_groups)
    assert all(g["betas"] == (0.9, 0.999) for g in lr.tower_and_rest_optimizer(model, 1e-2, 0.0, 1.0).param_groups)
    before = model.decoder.weight.detach().clone()
    model.decoder.weight.grad = torch.full_like(before, -3.0)
    opt.step()
    torch.testing.assert_close(model.decoder.weight.detach(), before + 1e-2, rtol=0, atol=1e-6)


def test_tower_gradient_norm_is_the_norm_of_its_gradients_together():
    """The logged tower norm equals the norm of all its gradients laid end to end (float64 by
    hand); parameters without a gradient are left out, and none at all gives 0."""
    lr = load()
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(5)),
              torch.nn.Parameter(torch.randn(2, 2))]
    params[0].grad = torch.randn(4, 3)
    params[1].grad = torch.randn(5) * 100
    expected = torch.cat([params[0].grad.double().flatten(), params[1].grad.double()]).pow(2).sum().sqrt()
    got = lr.tower_grad_norm(params, torch.device("cpu"))
    assert got.shape == () and abs(float(got) - float(expected)) <= 1e-5 * float(expected)
    assert float(lr.tower_grad_norm(params[2:], torch.device("cpu"))) == 0.0
