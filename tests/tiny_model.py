"""A tiny random DeepseekOCR built in memory (seconds, ~100 MB): small SAM, CLIP and decoder
through the same config fields the official config.json uses, deterministic for a seed.

For tests of machinery (distributed training, loops) where the real sizes only cost time;
parity tests use the recorded 3-layer checkpoint instead.
"""
from __future__ import annotations

import math
import shutil
import zlib
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
TOKENIZER = REPO / "deepseek_ocr" / "assets" / "tokenizer"


def tiny_config_dict(dense: bool = False) -> dict:
    """`dense`: every decoder layer a plain MLP (no routing), for tests that need the loss to be
    a smooth function of the weights (finite differences: a routing flip is a jump)."""
    return {
        "language_config": {
            "vocab_size": 129280, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 4, "intermediate_size": 128, "moe_intermediate_size": 32,
            "n_routed_experts": 4, "n_shared_experts": 1, "num_experts_per_tok": 2,
            "first_k_dense_replace": 2 if dense else 1, "topk_method": "greedy", "scoring_func": "softmax",
        },
        "vision_config": {"image_size": 1024, "width": {
            "sam_vit_b": {"width": 32, "layers": 2, "heads": 2, "global_attn_indexes": [1],
                          "downsample_channels": [32, 64]},
            "clip-l-14-224": {"width": 64, "layers": 2, "heads": 2, "image_size": 224, "patch_size": 14},
        }},
        "projector_config": {"projector_type": "linear", "n_embed": 64, "input_dim": 128},
        "torch_dtype": "float32",
    }


def tiny_model(seed: int = 0, dense: bool = False):
    from deepseek_ocr import DeepseekOCR, ModelConfig
    from deepseek_ocr.modeling import DeepseekOCRModel
    from deepseek_ocr.processing.tokenizer import Tokenizer
    cfg = ModelConfig.from_dict(tiny_config_dict(dense), source="tiny")
    net = DeepseekOCRModel(cfg)
    with torch.no_grad():
        for name, p in net.named_parameters():
            g = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
            x = torch.randn(p.shape, generator=g)
            if name.endswith("norm.weight") or "layer_norm" in name or "layernorm" in name or "norm1" in name \
                    or "norm2" in name or name.endswith("neck.1.weight") or name.endswith("neck.3.weight"):
                x = 1.0 + 0.1 * x
            elif p.dim() == 1:
                x = 0.02 * x
            else:
                x = x / math.sqrt(math.prod(p.shape[1:]))
            p.copy_(x)
    tok = Tokenizer.from_folder(TOKENIZER)
    return DeepseekOCR(net.eval(), tok)


def save_tiny_checkpoint(folder: str | Path, seed: int = 0) -> Path:
    """The tiny model written as a checkpoint folder in float32 (~70 MB), for tests that load
    models through `from_pretrained`. `save_pretrained` copies the tokenizer files of the folder
    a model was loaded from; this one was built in memory, so the bundled ones are copied."""
    folder = tiny_model(seed).save_pretrained(folder, dtype=torch.float32)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder
