"""The vision encode of many prepared inputs at once, and their prompt embeddings.

Pages whose global views have one size are encoded in one call (their tiles stacked), so a group
of Gundam pages admitted together costs one SAM/CLIP pass per view size instead of one per page.
Pixels travel in the model's dtype (the prepared views are already bf16-rounded, so the cast is
exact), or as uint8 levels (`prepare(..., pixel_codes=True)`: half the bytes, converted on the
device by the vision tower) from pinned host memory with asynchronous copies: the host goes on preparing the next
group while the copy and the encode run. Callers that prepare on other threads pin the views
there (`transfer.pin_views`), so the engine's thread does not copy pixels at all.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..modeling import DeepseekOCRModel
from ..processing.prompt import PreparedInputs
from ..vision.pixels import pixels_from_codes


def _to_device(t: torch.Tensor, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    codes = t.dtype == torch.uint8  # uint8 levels travel as they are and become pixels there
    if not codes:
        t = t.to(dtype)
    if device.type == "cuda":
        # Views pinned where they were prepared (`transfer.pin_views`) go as they are.
        t = (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    else:
        t = t.to(device)
    return pixels_from_codes(t).to(dtype) if codes else t


@torch.inference_mode()
def encode_prepared(model: DeepseekOCRModel, batch: Sequence[PreparedInputs]) -> list[torch.Tensor | None]:
    """Vision rows `[n_i, hidden]` per input (None for text-only), batching equal view sizes.

    Inputs that carry `vision_rows` already are not encoded again.
    """
    w = model.decoder.lm_head.weight
    device, dtype = w.device, w.dtype
    out: list[torch.Tensor | None] = [None] * len(batch)
    groups: dict[tuple, list[int]] = {}
    for i, inp in enumerate(batch):
        if inp.vision_rows is not None:
            out[i] = inp.vision_rows.to(device=device, dtype=dtype)
        elif inp.has_image:
            groups.setdefault(tuple(inp.global_view.shape[-2:]), []).append(i)
    for idx in groups.values():
        # Each page's global view is sent on its own and joined on the device: joining them
        # on the host first would copy every page again, on the engine's thread.
        views = torch.cat([_to_device(batch[i].global_view, device, dtype) for i in idx])
        crops = [_to_device(batch[i].crops, device, dtype) if batch[i].crops is not None else None
                 for i in idx]
        tiles = [tuple(batch[i].images_spatial_crop[0].tolist()) for i in idx]
        for i, rows in zip(idx, model.vision(views, crops, tiles)):
            out[i] = rows
    return out


@torch.inference_mode()
def prompt_embeddings(model: DeepseekOCRModel, inputs: PreparedInputs,
                      vision_rows: torch.Tensor | None) -> torch.Tensor:
    """Input embeddings `[T, hidden]`: token embeddings with the vision rows in place."""
    device = model.decoder.lm_head.weight.device
    ids = inputs.input_ids.to(device, non_blocking=True)
    mask = inputs.images_seq_mask
    return model.merge_embeddings(ids, mask.to(device, non_blocking=True), vision_rows,
                                  n_slots=int(mask.sum()) if mask.device.type == "cpu" else None)
