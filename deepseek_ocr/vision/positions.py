"""Relative-position tables of SAM, and the resized position tables, computed once per table, size and weights version at inference.

SAM's absolute and relative tables and CLIP's position table are resized for every view size
other than the one they were trained at (Gundam's 640-pixel tiles: every call). The resize is a
pure function of the table and the size, so at inference it is remembered: keyed by the table
tensor itself (weakly: a dropped model frees its entries), its in-place version (an optimizer
step or a load changes it), and the arguments. While autograd records through the table (it is
being trained), nothing is remembered: the result must carry the graph.
"""
from __future__ import annotations

import weakref
from typing import Callable

import torch
import torch.nn.functional as F

# id(table) -> (weak reference to the table, {key: result}). Keyed by id with the reference
# checked, not a WeakKeyDictionary: that compares keys with ==, which tensors answer elementwise.
_CACHE: dict[int, tuple[weakref.ref, dict]] = {}


def _entries(table: torch.Tensor) -> dict:
    ident = id(table)
    slot = _CACHE.get(ident)
    if slot is None or slot[0]() is not table:
        ref = weakref.ref(table, lambda _r, ident=ident: _CACHE.pop(ident, None))
        slot = _CACHE[ident] = (ref, {})
    return slot[1]


def remembered(fn: Callable[..., torch.Tensor], table: torch.Tensor, *args) -> torch.Tensor:
    """`fn(table, *args)`, from the cache when the same table (same version) was resized so before."""
    if torch.is_grad_enabled() and table.requires_grad:
        return fn(table, *args)
    if table.is_inference():  # no version counter to notice an update by: compute afresh
        return fn(table, *args)
    entries = _entries(table)
    key = (fn.__qualname__, table._version, args)
    out = entries.get(key)
    if out is None:
        if len(entries) >= 8:  # old versions' results, or many sizes: start over
            entries.clear()
        with torch.inference_mode(False), torch.no_grad():
            out = fn(table, *args)
        entries[key] = out
    return out


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings `[q_size, k_size, C]` for every (query, key) offset.

    The table has `2*S-1` rows for the size `S` it was trained at; for another size it is
    linearly resized to `2*max(q, k)-1` rows.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        table = F.interpolate(rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1),
                              size=max_rel_dist, mode="linear")
        table = table.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        table = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return table[relative.long()]


def _square_rel_pos(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    return get_rel_pos(size, size, rel_pos)


def rel_pos_table(rel_pos: torch.Tensor, size: int) -> torch.Tensor:
    """`get_rel_pos(size, size, rel_pos)`, remembered at inference."""
    return remembered(_square_rel_pos, rel_pos, size)
