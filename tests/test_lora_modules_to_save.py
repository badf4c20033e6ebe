"""`modules_to_save` on the top-level modules PEFT users name most (lm_head, embed_tokens,
model.norm): trained in full with the adapter and saved under PEFT's keys. (Their bare module
paths once missed the name table's dotted prefixes and were silently ignored.)"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import tiny_model  # noqa: E402


def test_top_level_modules_to_save_are_trained_and_saved(tmp_path):
    from deepseek_ocr.training.adapter import load_adapter, save_adapter
    from deepseek_ocr.training.lora import LoraConfig, apply_lora
    from deepseek_ocr.training.trainable import set_trainable
    model = tiny_model()
    cfg = LoraConfig(r=2, alpha=2, modules_to_save=("lm_head", "embed_tokens", "model.norm"))
    apply_lora(model.model, cfg)
    set_trainable(model.model, "lora")
    trainable = {n for n, p in model.model.named_parameters() if p.requires_grad}
    assert {"decoder.lm_head.weight", "decoder.embed_tokens.weight", "decoder.norm.weight"} <= trainable
    assert not any(n.startswith("vision.") for n in trainable)
    with torch.no_grad():
        model.model.decoder.lm_head.weight.mul_(2.0)
    save_adapter(model.model, tmp_path / "adapter", cfg)
    with safe_open(str(tmp_path / "adapter" / "adapter_model.safetensors"), "pt") as f:
        keys = set(f.keys())
        assert {"base_model.model.lm_head.weight", "base_model.model.model.embed_tokens.weight",
                "base_model.model.model.norm.weight"} <= keys
        assert torch.equal(f.get_tensor("base_model.model.lm_head.weight"), model.model.decoder.lm_head.weight)
    fresh = tiny_model()
    load_adapter(fresh.model, tmp_path / "adapter")
    assert torch.equal(fresh.model.decoder.lm_head.weight, model.model.decoder.lm_head.weight)
