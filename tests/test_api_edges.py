"""Edges of the Python API (issue 12): typed errors for bad modes and prompt counts, the
command line's mode form in `mode=`, one pixel limit per size message, the dtype a checkpoint
is saved in, and the writer's resume and summary rules. No model is loaded here.
"""
from __future__ import annotations

import json
import re
import struct
import zlib
from pathlib import Path

import pytest
import torch

from deepseek_ocr import DeepseekOCR, DeepseekOCRError, ModeError, PromptError
from deepseek_ocr.errors import ImageTooLargeError, WeightsError
from deepseek_ocr.pipeline import writer
from deepseek_ocr.processing.image_io import DEFAULT_MAX_PIXELS, count_frames, load_image
from deepseek_ocr.processing.views import MODES, Mode, resolve_mode
from deepseek_ocr.weights.saving import SHARD_NAME, save_checkpoint

PIL_WARNING_LIMIT = 89478485  # Pillow's Image.MAX_IMAGE_PIXELS default; errors at twice it


@pytest.mark.parametrize("mode", ["bogus", "1024", "1024:640:tile", "a:640", "100:64", "1024:640:crop:x", 3])
def test_bad_modes_raise_a_deepseek_ocr_error(mode):
    with pytest.raises(ModeError) as info:
        resolve_mode(mode)
    assert isinstance(info.value, DeepseekOCRError) and isinstance(info.value, ValueError)
    with pytest.raises(ModeError):
        Mode(100, 640, True)


def test_modes_take_the_command_line_form():
    assert resolve_mode("1024:640:crop") == Mode(1024, 640, True, name="1024:640:crop")
    assert resolve_mode("512:512") == Mode(512, 512, False, name="512:512")
    assert resolve_mode(" Gundam ") is MODES["gundam"]
    custom = Mode(768, 512, True, max_tiles=4)
    assert resolve_mode(custom) is custom


def test_prompt_count_mismatch_is_a_prompt_error():
    ocr = object.__new__(DeepseekOCR)  # the count is checked before anything touches the model
    with pytest.raises(PromptError, match="2 inputs but 3 prompts"):
        ocr.generate(["a.png", "b.png"], prompt=["<image>\nA", "<image>\nB", "<image>\nC"])


def png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


LIMITS = {DEFAULT_MAX_PIXELS, PIL_WARNING_LIMIT, 2 * PIL_WARNING_LIMIT}


def limits_quoted(message: str) -> set[int]:
    return {int(n) for n in re.findall(r"\d{6,}", message)} & LIMITS


@pytest.mark.parametrize("side, max_pixels, limit", [
    (10_000, DEFAULT_MAX_PIXELS, DEFAULT_MAX_PIXELS),  # 100 Mpx: over Pillow's warning, refused by ours
    (100_000, DEFAULT_MAX_PIXELS, DEFAULT_MAX_PIXELS),  # 10 Gpx: Pillow's error, but ours is lower
    (100_000, 10**12, 2 * PIL_WARNING_LIMIT),  # ours allows it: Pillow's error is the limit
])
def test_a_size_message_quotes_the_one_limit_that_refused(tmp_path, side, max_pixels, limit):
    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(side, side))
    for call in (load_image, count_frames):
        with pytest.raises(ImageTooLargeError) as info:
            call(path, max_pixels=max_pixels)
        assert limits_quoted(str(info.value)) == {limit}, str(info.value)


def test_an_image_between_pillows_warning_and_ours_is_accepted_when_allowed(tmp_path):
    path = tmp_path / "scan.png"
    path.write_bytes(png_header_only(9500, 9500))  # 90.25 Mpx: a large real scan
    assert count_frames(path, max_pixels=100_000_000) == 1  # was refused by Pillow's warning


# ------------------------------------------------------------------------ saving dtype
def tensors() -> list[tuple[str, torch.Tensor]]:
    return [("a.weight", torch.randn(4, 3)), ("b.bias", torch.randn(5)), ("steps", torch.arange(3))]


def header(path: Path) -> dict:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + n])


CONFIG = {"torch_dtype": "bfloat16", "language_config": {"torch_dtype": "bfloat16", "x": 1}}


@pytest.mark.parametrize("dtype, stored, name", [(None, "F32", "float32"), ("bfloat16", "BF16", "bfloat16"),
                                                 (torch.float16, "F16", "float16"), ("float32", "F32", "float32")])
def test_checkpoints_are_stored_in_the_dtype_config_json_names(tmp_path, dtype, stored, name):
    out = save_checkpoint(tmp_path / "ckpt", tensors(), CONFIG, None, dtype=dtype)
    h = header(out / SHARD_NAME)
    assert (h["a.weight"]["dtype"], h["b.bias"]["dtype"], h["steps"]["dtype"]) == (stored, stored, "I64")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == config["language_config"]["torch_dtype"] == name
    assert config["language_config"]["x"] == 1
    size = {"F32": 4, "BF16": 2, "F16": 2}[stored]
    assert json.loads((out / "model.safetensors.index.json").read_text())["metadata"]["total_size"] == \
        (12 + 5) * size + 3 * 8


def test_an_unknown_storage_dtype_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="int8"):
        save_checkpoint(tmp_path / "ckpt", tensors(), CONFIG, None, dtype="int8")


# --------------------------------------------------------------------- writer rules
def test_run_mismatch_names_what_changed():
    record = {"run": {"mode": {"base_size": 512}, "prompt": "<image>\nA", "generation": {}}}
    assert writer.run_mismatch(record, {"mode": {"base_size": 512}, "prompt": "<image>\nA",
                                        "generation": {}}) is None
    why = writer.run_mismatch(record, {"mode": {"base_size": 640}, "prompt": "<image>\nA", "generation": {}})
    assert why == 'mode was {"base_size": 512}, now {"base_size": 640}'
    assert "older version" in writer.run_mismatch({}, {"mode": 1})
    # Values compare as they read back from json: a tuple equals the list it was saved as.
    assert writer.run_mismatch({"run": {"g": [1, 2]}}, {"g": (1, 2)}) is None


def test_bfloat16_on_a_gpu_without_it_is_refused_with_the_alternatives(monkeypatch):
    """RELIABILITY 20 (no such GPU here: the CUDA queries are stubbed): bf16, asked for or the
    GPU default, is refused naming the device and what to pass; float16 and float32 are taken."""
    from deepseek_ocr.ocr import resolve_dtype
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a, **k: "Tesla T4")
    cuda = torch.device("cuda")
    for asked in ("bfloat16", torch.bfloat16, None):
        with pytest.raises(DeepseekOCRError, match=r"Tesla T4 has no bfloat16 support; pass dtype='float16'"):
            resolve_dtype(asked, cuda)
    assert resolve_dtype("float16", cuda) == torch.float16 and resolve_dtype("float32", cuda) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
