"""Small host values to the device without stopping the pipeline.

`torch.tensor(values, device="cuda")` and `.to("cuda")` of a pageable tensor copy and then
synchronise the stream: the host waits until the GPU has finished everything queued before it
(a whole decode step), and the GPU then idles while the host prepares the next one. The engine
sends block ids, slots, prompt lengths and n-gram histories this way on every admission and at
every block boundary, so each of those copies goes through pinned memory, asynchronously: the
copy is ordered on the stream like the kernels that read it, and the caching host allocator
keeps the pinned buffer alive until the copy is done.
"""
from __future__ import annotations

from typing import Sequence

import torch


def to_device(values: Sequence[int] | torch.Tensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A new `dtype` tensor on `device` holding `values`, without a host-device synchronisation."""
    host = values.to(dtype) if isinstance(values, torch.Tensor) else torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def pin_views(inputs, device: torch.device | str):
    """Moves a prepared input's pixel views into pinned host memory when `device` is CUDA
    (returns the same `PreparedInputs`). Call it where the input is prepared, on a preparing
    thread: the engine's thread then starts the copies to the GPU without first copying each
    page's ~21 MB of Gundam pixels into pinned memory itself, one page after another, while
    every decoding row waits for the admission."""
    if torch.device(device).type != "cuda":
        return inputs
    for name in ("global_view", "crops"):
        t = getattr(inputs, name)
        if t is not None and t.numel() and not t.is_pinned():
            setattr(inputs, name, t.pin_memory())
    return inputs
