"""Tokens chosen on the device, on their way to the host without stalling the GPU.

The engine launches a step, then reads the *previous* step's tokens: the copy to pinned host
memory and an event are queued behind each step, so by the time the host asks, the copy is long
done and the GPU is already busy with the next step.
"""
from __future__ import annotations

import torch

from .request import Request


class Launch:
    """Tokens chosen on the device for some requests, on their way to the host."""

    def __init__(self, rows: list[tuple[int, Request, int]], ids: torch.Tensor, bad: torch.Tensor,
                 pinned: bool):
        self.rows = rows  # (row of ids, request, request epoch at launch)
        if pinned:
            self.ids = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
            self.bad = torch.empty(bad.shape, dtype=bad.dtype, pin_memory=True)
            self.ids.copy_(ids, non_blocking=True)
            self.bad.copy_(bad, non_blocking=True)
            self.event = torch.cuda.Event()
            self.event.record()
        else:
            self.ids, self.bad, self.event = ids, bad, None

    def read(self) -> tuple[list[int], list[bool]]:
        if self.event is not None:
            self.event.synchronize()
        return self.ids.tolist(), self.bad.tolist()
