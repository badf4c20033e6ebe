"""The vision tower's input convention: a uint8 level per pixel and channel, normalized as the
official preprocessing does (torchvision's ToTensor then Normalize(0.5, 0.5) in float32), then
rounded to bfloat16.

A channel has 256 levels, so the normalization is computed once on the levels (`level_values`)
and a view is a lookup. Prepared inputs may carry their views as those uint8 levels ("codes",
`prepare(..., pixel_codes=True)`): half the bytes of bf16 pixels to pin and copy, and no
conversion on the preparing CPU; `pixels_from_codes` makes the same bf16 pixels, bit for bit,
wherever the codes are (on the GPU in the engine's encode).
"""
from __future__ import annotations

import torch

_TABLES: dict[torch.device, torch.Tensor] = {}


def level_values() -> torch.Tensor:
    """`[256]` bfloat16 on the CPU: level l -> bf16((l / 255 - 0.5) / 0.5), in float32 steps."""
    levels = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)
    return levels.sub(0.5).div(0.5).to(torch.bfloat16)


def pixels_from_codes(codes: torch.Tensor) -> torch.Tensor:
    """uint8 levels (any shape, any device) -> bf16 pixels of the same shape on that device."""
    if codes.dtype != torch.uint8:
        raise TypeError(f"pixel codes are uint8 levels, got {codes.dtype}")
    table = _TABLES.get(codes.device)
    if table is None:
        table = _TABLES[codes.device] = level_values().to(codes.device)
    return table[codes.int()]  # int32 indices: a quarter of the int64 ones' memory
