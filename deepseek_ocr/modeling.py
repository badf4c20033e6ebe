"""The whole network as one `nn.Module`: vision encoder + decoder, and the embedding merge."""
from __future__ import annotations

import torch
from torch import nn

from .config import ModelConfig
from .decoder.model import Decoder
from .vision.encoder import VisionEncoder


class DeepseekOCRModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.vision = VisionEncoder(cfg)
        self.decoder = Decoder(cfg.decoder)

    def merge_embeddings(self, input_ids: torch.Tensor, images_seq_mask: torch.Tensor | None,
                         image_rows: torch.Tensor | None, n_slots: int | None = None,
                         slots: torch.Tensor | None = None) -> torch.Tensor:
        """Token embeddings `[T, hidden]` (or `[B, T, hidden]` for ids `[B, T]`) with the image
        rows scattered, in order (row-major over a batch), into the positions where
        `images_seq_mask` is set.

        `n_slots`: the number of set positions, when the caller counted them on the host (the
        mask's CPU copy); otherwise they are counted here, which on a GPU waits for every
        queued kernel (the vision tower's) before the host may queue the decoder.
        `slots`: instead of the mask, the set positions' flat (row-major) indices on the
        device, found on the host. The rows are then placed by index, whose backward is a
        gather; masked_scatter's backward (a masked_select) waits for the GPU to size its output."""
        embeds = self.decoder.embed_tokens(input_ids)
        if slots is not None:
            n_slots = slots.numel()
        elif n_slots is None:
            n_slots = int(images_seq_mask.sum())
        n_rows = 0 if image_rows is None else image_rows.shape[0]
        if n_slots != n_rows:
            raise ValueError(f"{n_slots} <image> positions in the prompt but {n_rows} vision rows")
        if n_rows and slots is not None:
            flat = embeds.reshape(-1, embeds.shape[-1]).index_put((slots,), image_rows.to(embeds.dtype))
            embeds = flat.view(embeds.shape)
        elif n_rows:
            embeds = embeds.masked_scatter(images_seq_mask[..., None], image_rows.to(embeds.dtype))
        return embeds
