"""DeepEncoder: SAM + compressor + CLIP + projector, and the row layout of the features.

For each view, CLIP's tokens (class token dropped) and SAM's compressed map are concatenated
per position, CLIP first (2048 channels), and projected to the decoder width. The features of
one image are then laid out exactly as the `<image>` ids of the prompt expect them:

    local tiles (if any): (h_tiles*q) rows of (w_tiles*q) tokens, each row + image_newline
    global view:          q rows of q tokens, each row + image_newline
    view_seperator        (one row; the checkpoint's spelling)
"""
from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from .clip import ClipEncoder
from .pixels import pixels_from_codes
from .sam import SamEncoder


class VisionEncoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sam = SamEncoder(cfg.sam)
        self.clip = ClipEncoder(cfg.clip)
        self.projector = nn.Module()
        self.projector.layers = nn.Linear(cfg.projector_input_dim, cfg.n_embed)
        self.image_newline = nn.Parameter(torch.zeros(cfg.n_embed))
        self.view_seperator = nn.Parameter(torch.zeros(cfg.n_embed))

    @property
    def dtype(self) -> torch.dtype:
        return self.projector.layers.weight.dtype

    def encode_views(self, pixels: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        """Square views `[N, 3, S, S]` (bf16-rounded pixels, or their uint8 levels: see
        pixels.py) -> projected tokens `[N, q*q, n_embed]`, q = S/64."""
        if pixels.dtype == torch.uint8:
            pixels = pixels_from_codes(pixels)
        pixels = pixels.to(self.dtype)
        sam_map = self.sam(pixels, taps)  # (N, 1024, q, q)
        clip_out = self.clip(sam_map)  # (N, 1 + q*q, 1024)
        fused = torch.cat([clip_out[:, 1:], sam_map.flatten(2).transpose(1, 2)], dim=-1)
        out = self.projector.layers(fused)  # (N, q*q, n_embed)
        if taps is not None:
            taps.update(sam_out=sam_map, clip_out=clip_out, projector_out=out)
        return out

    def layout(self, global_tokens: torch.Tensor, local_tokens: torch.Tensor | None,
               tiles: tuple[int, int]) -> torch.Tensor:
        """Arrange one image's features into prompt order.

        Args:
            global_tokens: `[q*q, C]` of the global view.
            local_tokens: `[w_tiles*h_tiles, q2*q2, C]` of the tiles in reading order, or None.
            tiles: `(w_tiles, h_tiles)`.
        Returns:
            `[n_rows, C]` matching the image's `<image>` ids one to one.
        """
        c = global_tokens.shape[-1]
        newline = self.image_newline.to(global_tokens.dtype)
        q = int(round(global_tokens.shape[0] ** 0.5))
        g = global_tokens.view(q, q, c)
        g = torch.cat([g, newline.expand(q, 1, c)], dim=1).reshape(-1, c)  # (q*(q+1), C)
        parts = []
        if local_tokens is not None and local_tokens.shape[0] > 0:
            w_tiles, h_tiles = tiles
            q2 = int(round(local_tokens.shape[1] ** 0.5))
            loc = local_tokens.view(h_tiles, w_tiles, q2, q2, c)
            loc = loc.permute(0, 2, 1, 3, 4).reshape(h_tiles * q2, w_tiles * q2, c)
            loc = torch.cat([loc, newline.expand(h_tiles * q2, 1, c)], dim=1).reshape(-1, c)
            parts.append(loc)
        parts += [g, self.view_seperator.to(g.dtype)[None, :]]
        return torch.cat(parts, dim=0)

    def forward(self, global_views: torch.Tensor, crops: list[torch.Tensor | None],
                tiles: list[tuple[int, int]], taps: dict | None = None) -> list[torch.Tensor]:
        """Encode a batch of images; returns each image's laid-out rows.

        Args:
            global_views: `[B, 3, S, S]`, one global view per image (all the same size).
            crops: per image, `[n_i, 3, s, s]` tiles or None.
            tiles: per image, `(w_tiles, h_tiles)`.
        """
        gtaps = {} if taps is not None else None
        global_tokens = self.encode_views(global_views, gtaps)
        local_tokens: list[torch.Tensor | None] = [None] * len(crops)
        with_crops = [i for i, c in enumerate(crops) if c is not None and c.shape[0] > 0]
        if with_crops:
            ltaps = {} if taps is not None else None
            stacked = torch.cat([crops[i] for i in with_crops], dim=0)
            encoded = self.encode_views(stacked, ltaps)
            for i, chunk in zip(with_crops, encoded.split([crops[i].shape[0] for i in with_crops])):
                local_tokens[i] = chunk
            if taps is not None:
                taps.update({f"crops.{k}": v for k, v in ltaps.items()})
        if taps is not None:
            taps.update({f"global.{k}": v for k, v in gtaps.items()})
        return [self.layout(global_tokens[i], local_tokens[i], tiles[i]) for i in range(len(crops))]
