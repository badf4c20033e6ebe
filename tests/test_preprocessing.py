"""Preprocessing: modes, tiling, token layout, compression figures, prompt errors.

Expected numbers come from DESIGN.md section 2 (the official layout table) or are worked out
by hand in the comments, never from the code under test.
"""
from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from deepseek_ocr import Mode, PromptError
from deepseek_ocr.processing.prompt import build_inputs, image_layout_length
from deepseek_ocr.processing.tokenizer import Tokenizer
from deepseek_ocr.processing.views import (MODES, candidate_grids, choose_grid, make_views,
                                           valid_vision_tokens)

from conftest import need_shared


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_folder(need_shared() / "tokenizer")


def page(w, h, color=(200, 30, 30)):
    img = Image.new("RGB", (w, h), "white")
    img.paste(Image.new("RGB", (max(1, w // 2), h), color), (0, 0))
    return img


@pytest.mark.parametrize("mode,expected", [("tiny", 73), ("small", 111), ("base", 273), ("large", 421)])
def test_no_crop_layout_lengths(mode, expected, tokenizer):
    """DESIGN.md's table: q*(q+1)+1 ids for q = 8, 10, 16, 20."""
    views = make_views(page(700, 900), MODES[mode])
    inp = build_inputs(tokenizer, "<image>\nFree OCR.", views, MODES[mode])
    assert inp.num_vision_tokens == expected
    assert inp.images_spatial_crop.tolist() == [[1, 1]]
    assert inp.crops.shape[0] == 0
    side = MODES[mode].image_size
    assert tuple(inp.global_view.shape) == (1, 3, side, side)
    assert inp.global_view.dtype == torch.bfloat16
    # BOS, the image ids, then "\nFree OCR." = 201 21431 126041 16 (parity README table)
    assert inp.input_ids[0].item() == tokenizer.bos_id
    assert inp.input_ids[-4:].tolist() == [201, 21431, 126041, 16]


def test_gundam_layout_with_tiles(tokenizer):
    # 1000 x 3000 has aspect 1/3; the only grid with that aspect is (1 col, 3 rows).
    views = make_views(page(1000, 3000), MODES["gundam"])
    assert views.tiles == (1, 3) and views.crops.shape == (3, 3, 640, 640)
    inp = build_inputs(tokenizer, "<image>\nFree OCR.", views, MODES["gundam"])
    # global 16*17+1 = 273, tiles (10*3) rows of (10*1 + 1) = 330
    assert inp.num_vision_tokens == 273 + 330
    assert inp.images_spatial_crop.tolist() == [[1, 3]]


def test_gundam_small_image_has_no_tiles(tokenizer):
    views = make_views(page(640, 500), MODES["gundam"])
    assert views.tiles == (1, 1) and views.crops.shape[0] == 0
    assert tuple(views.global_view.shape) == (1, 3, 1024, 1024)


def test_grid_choice_and_tie_break():
    # Candidates are ordered by tile count; (2,2) has aspect 1 and comes before (3,3).
    grids = candidate_grids(2, 9)
    assert grids.index((2, 2)) < grids.index((3, 3))
    assert all(2 <= a * b <= 9 for a, b in grids) and len(grids) == len(set(grids))
    # A square of 1000^2 = 1.0M px: the tie with (3,3) needs > 0.5*640^2*9 = 1.84M px -> stays (2,2).
    assert choose_grid(1000, 1000, 640, 2, 9) == (2, 2)
    # 2000^2 = 4M px > 1.84M px -> the later candidate (3,3) wins the tie.
    assert choose_grid(2000, 2000, 640, 2, 9) == (3, 3)
    # Wide 3000 x 1000: aspect 3 -> (3, 1).
    assert choose_grid(3000, 1000, 640, 2, 9) == (3, 1)
    # max_tiles caps the search (vLLM's default of 6): 1 x 9 aspect falls back to (1, 6).
    assert choose_grid(100, 900, 640, 2, 6) == (1, 6)


def test_tiles_are_cut_row_by_row():
    img = Image.new("RGB", (1280, 1280), "white")
    img.paste(Image.new("RGB", (640, 640), (255, 0, 0)), (640, 0))  # top-right quadrant red
    views = make_views(img, Mode(1024, 640, True, max_tiles=4))
    assert views.tiles == (2, 2)
    # red has green = 0 -> -1 after normalization; white has green +1
    red = [(c[1] < -0.9).float().mean().item() for c in views.crops.float()]
    assert red[1] > 0.99 and max(red[0], red[2], red[3]) < 0.01


def test_compression_figures():
    # base: int(256 * r), r = 850/1100 -> int(197.8...) = 197
    assert valid_vision_tokens(MODES["base"], (850, 1100), 0) == 197
    assert valid_vision_tokens(MODES["large"], (850, 1100), 0) == int(400 * 850 / 1100)
    assert valid_vision_tokens(MODES["tiny"], (850, 1100), 0) == 64
    assert valid_vision_tokens(MODES["small"], (850, 1100), 0) == 100
    assert valid_vision_tokens(MODES["gundam"], (850, 1100), 6) == 197 + 600


def test_compression_ratio_on_inputs(tokenizer):
    views = make_views(page(850, 1100), MODES["base"])
    inp = build_inputs(tokenizer, "<image>\nFree OCR.", views, MODES["base"])
    assert inp.valid_vision_tokens == 197
    assert inp.compression_ratio(394) == pytest.approx(2.0)


def test_custom_mode_layout(tokenizer):
    mode = Mode(base_size=768, image_size=512, crop=True, min_tiles=2, max_tiles=4)
    views = make_views(page(1600, 800), mode)  # aspect 2 -> (2, 1)
    assert views.tiles == (2, 1) and views.crops.shape == (2, 3, 512, 512)
    # global q = ceil(48/4) = 12 -> 12*13+1 = 157; tiles q = 8 -> (8*1) rows of (8*2 + 1) = 136
    assert image_layout_length(mode, views.tiles, True) == 157 + 136
    inp = build_inputs(tokenizer, "<image>", views, mode)
    assert inp.num_vision_tokens == 293


def test_custom_mode_validation():
    with pytest.raises(ValueError):
        Mode(base_size=1000, image_size=640, crop=True)  # not a multiple of 16
    with pytest.raises(ValueError):
        Mode(base_size=1024, image_size=640, crop=True, min_tiles=5, max_tiles=2)


@pytest.mark.parametrize("size", [(1, 1), (1, 50000), (50000, 1), (3, 2000)])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_degenerate_sizes_never_crash(size, mode, tokenizer):
    views = make_views(Image.new("RGB", size, (10, 200, 10)), MODES[mode])
    inp = build_inputs(tokenizer, "<image>\nFree OCR.", views, MODES[mode])
    assert inp.num_vision_tokens == image_layout_length(MODES[mode], views.tiles, views.crops.shape[0] > 0)
    assert torch.isfinite(inp.global_view.float()).all()


def test_exif_rotation_matches_rotated_pixels(tokenizer):
    from deepseek_ocr.processing.image_io import load_image
    upright = page(300, 500)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what a camera stores for orientation 6
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, format="PNG", exif=exif)
    loaded = load_image(buf.getvalue())
    assert loaded.size == (300, 500)
    a = make_views(loaded, MODES["base"]).global_view
    b = make_views(upright, MODES["base"]).global_view
    assert torch.equal(a, b)


def test_prompt_errors(tokenizer):
    views = make_views(page(100, 100), MODES["tiny"])
    with pytest.raises(PromptError, match="exactly once"):
        build_inputs(tokenizer, "Free OCR.", views, MODES["tiny"])
    with pytest.raises(PromptError, match="found 2"):
        build_inputs(tokenizer, "<image><image>Free OCR.", views, MODES["tiny"])
    with pytest.raises(PromptError, match="no image"):
        build_inputs(tokenizer, "<image>\nFree OCR.", None, None)


def test_text_only_prompt(tokenizer):
    inp = build_inputs(tokenizer, "The capital of France is", None, None)
    # parity README: "The capital of France is" -> 671 6102 294 8760 344
    assert inp.input_ids.tolist() == [tokenizer.bos_id, 671, 6102, 294, 8760, 344]
    assert not inp.images_seq_mask.any() and inp.global_view is None


def test_pixels_equal_the_float32_normalization_bit_for_bit():
    """`to_pixels` looks each level up; the official steps are ToTensor then Normalize(0.5, 0.5)
    in float32, then bf16. Every level 0..255 in every channel, a random view, a gray one."""
    import numpy as np
    from deepseek_ocr.processing.views import to_pixels

    def official(views):
        x = torch.stack([torch.from_numpy(np.array(v.convert("RGB"))).permute(2, 0, 1) for v in views])
        return ((x.to(torch.float32) / 255 - 0.5) / 0.5).to(torch.bfloat16)

    rng = np.random.default_rng(7)
    ramp = np.stack([np.arange(256, dtype=np.uint8).reshape(16, 16),
                     np.arange(255, -1, -1, dtype=np.uint8).reshape(16, 16),
                     rng.permutation(256).astype(np.uint8).reshape(16, 16)], axis=-1)
    noisy = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    views = [Image.fromarray(ramp), Image.fromarray(noisy), Image.fromarray(noisy[:, :, 0], "L")]
    ours = to_pixels(views)
    assert ours.dtype == torch.bfloat16 and tuple(ours.shape) == (3, 3, 16, 16) and ours.is_contiguous()
    assert torch.equal(ours.view(torch.int16), official(views).view(torch.int16))
    # the same views as uint8 levels, converted where the vision tower runs
    from deepseek_ocr.processing.views import to_codes
    from deepseek_ocr.vision.pixels import pixels_from_codes
    codes = to_codes(views)
    assert codes.dtype == torch.uint8 and tuple(codes.shape) == (3, 3, 16, 16)
    assert torch.equal(codes[0].permute(1, 2, 0), torch.from_numpy(ramp))
    assert torch.equal(pixels_from_codes(codes).view(torch.int16), official(views).view(torch.int16))
    with pytest.raises(TypeError, match="uint8"):
        pixels_from_codes(ours)
    assert ours[0, 0, 0, 0].item() == -1.0 and ours[0, 0, -1, -1].item() == 1.0
