"""Random-weight checkpoints in the exact official layout, of any decoder size.

For tests, benchmarks and a first run without the 6.7 GB download. The vision tower keeps its
fixed official sizes; `layers`, `experts` and `topk` shrink the decoder. Every tensor is drawn
from a generator seeded by (seed, name), so a checkpoint is reproducible on one torch version,
and scaled like a trained network (norms near 1, matrices ~ 1/sqrt(fan_in)) so activations
stay finite through 12 layers in bf16.
"""
from __future__ import annotations

import math
import os
import zlib
from dataclasses import replace
from pathlib import Path

import torch

from ..config import ModelConfig
from ..modeling import DeepseekOCRModel
from .names import expected_tensors
from .saving import save_checkpoint

BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tokenizer"


def _draw(name: str, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + zlib.crc32(name.encode()))
    x = torch.randn(shape, generator=g, dtype=torch.float32)
    leaf = name.rsplit(".", 1)[-1]
    if ("norm" in name or "neck.1" in name or "neck.3" in name) and leaf == "weight":
        return 1.0 + 0.1 * x
    if leaf == "bias" or leaf.startswith("rel_pos") or leaf == "pos_embed":
        return 0.02 * x
    if name.endswith(("embed_tokens.weight", "position_embedding.weight")):
        return 0.5 * x
    if len(shape) == 1:
        return x / math.sqrt(shape[0])
    return x / math.sqrt(math.prod(shape[1:]))


def random_config(layers: int = 12, experts: int = 64, topk: int = 6,
                  dtype: str = "bfloat16", *, hidden_size: int | None = None,
                  heads: int | None = None, intermediate_size: int | None = None,
                  moe_intermediate_size: int | None = None, vision_depth: int | None = None) -> ModelConfig:
    """The official configuration with a smaller decoder.

    `hidden_size`, `heads`, `intermediate_size` (dense MLP) and `moe_intermediate_size` (each
    expert) shrink the decoder's width too (None keeps the official value); the projector
    follows `hidden_size`. A narrow decoder is what a CPU test can train in seconds.
    `vision_depth` (None: the official 12 SAM and 24 CLIP blocks) gives SAM and CLIP that many
    blocks at their official widths, SAM keeping the official global-attention blocks below it
    (or its last block global): a shallow tower for CPU smoke runs and tests.
    """
    base = ModelConfig()
    width = {k: v for k, v in (("hidden_size", hidden_size), ("num_heads", heads),
                               ("num_kv_heads", heads), ("intermediate_size", intermediate_size),
                               ("moe_intermediate_size", moe_intermediate_size)) if v is not None}
    decoder = replace(base.decoder, num_layers=layers, n_routed_experts=experts,
                      num_experts_per_tok=min(topk, experts), **width)
    cfg = replace(base, decoder=decoder, torch_dtype=dtype)
    if vision_depth is not None:
        if vision_depth < 1:
            raise ValueError(f"vision_depth must be at least 1, got {vision_depth}")
        global_blocks = tuple(i for i in base.sam.global_attn_indexes if i < vision_depth) or (vision_depth - 1,)
        cfg = replace(cfg, sam=replace(base.sam, depth=vision_depth, global_attn_indexes=global_blocks),
                      clip=replace(base.clip, depth=vision_depth))
    return ModelConfig.from_dict(cfg.to_dict(), source="random_config")


def make_random_checkpoint(folder: str | os.PathLike, *, layers: int = 12, experts: int = 64,
                           topk: int = 6, dtype: torch.dtype = torch.bfloat16, seed: int = 0,
                           tokenizer_dir: str | os.PathLike | None = None,
                           hidden_size: int | None = None, heads: int | None = None,
                           intermediate_size: int | None = None,
                           moe_intermediate_size: int | None = None, vision_depth: int | None = None) -> Path:
    """Write a random checkpoint to `folder` (config.json, index, safetensors, tokenizer).

    Args:
        layers, experts, topk: decoder size.
        vision_depth: SAM and CLIP blocks (None: the official tower; see `random_config`).
        dtype: storage dtype of the tensors.
        seed: base seed; each tensor's generator is seeded with seed + crc32(name).
        tokenizer_dir: folder with tokenizer.json etc. (default: the bundled tokenizer).
        hidden_size, heads, intermediate_size, moe_intermediate_size: decoder width (see
            `random_config`; None keeps the official sizes).
    """
    cfg = random_config(layers, experts, topk, str(dtype).replace("torch.", ""), hidden_size=hidden_size,
                        heads=heads, intermediate_size=intermediate_size,
                        moe_intermediate_size=moe_intermediate_size, vision_depth=vision_depth)
    with torch.device("meta"):
        meta = DeepseekOCRModel(cfg)
    tensors = ((name, _draw(name, shape, seed).to(dtype))
               for name, (shape, _slot) in sorted(expected_tensors(meta).items()))
    return save_checkpoint(folder, tensors, cfg.to_dict(), tokenizer_dir or BUNDLED_TOKENIZER)
