"""Choosing the next token of every row from its logits: greedy, or temperature/top-k/top-p sampling.

Everything runs on the logits' device with no host synchronisation: argument checks look only at
Python scalars, and `torch.multinomial` draws on the device. Faulty rows (see `check_finite`) are
replaced by a uniform row before sampling, because on CUDA a NaN reaching `multinomial` is a
device-side assert that poisons the whole context; the loop then fails those rows on its own.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import Tensor

from deepseek_ocr.errors import GenerationError

logger = logging.getLogger(__name__)

# Slack on the nucleus threshold. Probabilities that sum to exactly `top_p` in real arithmetic
# (0.5 + 0.3 vs 0.8) land a few ulps either side in float32; without it the boundary token would
# be kept or dropped by rounding luck. 1e-6 is ~10 float32 ulps at 1.0.
_TOP_P_SLACK = 1e-6


def check_finite(logits: Tensor) -> Tensor:
    """Mark the rows whose logits are numerically faulty.

    A row is faulty if it holds a NaN anywhere, a +inf anywhere, or no finite entry at all.
    -inf entries alone are legal: they are banned tokens.

    Args:
        logits: (B, V) float logits.

    Returns:
        (B,) bool tensor on the logits' device; True marks a FAULTY row.
    """
    if logits.dim() != 2:
        raise GenerationError(f"logits must be (batch, vocab), got shape {tuple(logits.shape)}")
    has_nan = torch.isnan(logits).any(dim=-1)
    has_pos_inf = torch.isposinf(logits).any(dim=-1)
    none_finite = ~torch.isfinite(logits).any(dim=-1)
    return has_nan | has_pos_inf | none_finite


def _validate(temperature: float | None, top_k: int | None, top_p: float | None) -> None:
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or math.isnan(temperature)
        or temperature < 0
    ):
        raise GenerationError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise GenerationError(f"top_k must be an integer >= 1 or None, got {top_k!r}")
    if top_p is not None and (
        isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0
    ):
        raise GenerationError(f"top_p must be in (0, 1] or None, got {top_p!r}")


def _nucleus_mask(sorted_scores: Tensor, top_p: float) -> Tensor:
    """True where an entry of descending-sorted scores (B, N) falls outside the top-p nucleus."""
    sorted_probs = torch.softmax(sorted_scores, dim=-1)
    # Mass strictly before each entry: an entry is needed while that mass is still short of top_p.
    # The first entry has mass 0 before it, so at least one token always survives.
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    return mass_before >= top_p - _TOP_P_SLACK


def select_next_tokens(
    logits: Tensor,
    *,
    temperature: float | None = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one next token per row.

    With temperature 0 or None this is greedy argmax (ties go to the lowest id; top_k/top_p are
    then irrelevant and ignored). Otherwise the logits are divided by the temperature, cut to the
    top-k, cut to the top-p nucleus, and one id is drawn with `torch.multinomial`. top_k == 1 is
    exactly greedy. Rows flagged by `check_finite` get an arbitrary (uniformly drawn) id: the
    caller is expected to fail them.

    Args:
        logits: (B, V) logits (cast to float32); -inf marks banned tokens. Not modified.
        temperature: 0/None for greedy, else > 0.
        top_k: keep only the k most likely ids (None: no cut).
        top_p: nucleus mass in (0, 1] (None or 1.0: no cut).
        generator: a `torch.Generator` on the logits' device, for reproducible draws.

    Returns:
        (B,) int64 tensor of ids, on the logits' device.
    """
    _validate(temperature, top_k, top_p)
    if logits.dim() != 2:
        raise GenerationError(f"logits must be (batch, vocab), got shape {tuple(logits.shape)}")
    if not temperature or top_k == 1:
        return torch.argmax(logits, dim=-1)

    scores = logits.float() / float(temperature)  # (B, V), a new tensor: the input is untouched
    # Checked after scaling, so a tiny temperature that overflows to +inf also counts as a fault.
    faulty = check_finite(scores)
    scores = scores.masked_fill(faulty[:, None], 0.0)
    vocab = scores.shape[-1]
    # Candidates sorted best first, so top-p works on k entries after a top-k cut, not on all V.
    ids = None
    if top_k is not None and top_k < vocab:
        scores, ids = torch.topk(scores, top_k, dim=-1)  # (B, k), descending
    elif top_p is not None and top_p < 1.0:
        scores, ids = torch.sort(scores, dim=-1, descending=True)  # (B, V)
    if top_p is not None and top_p < 1.0:
        scores = scores.masked_fill(_nucleus_mask(scores, top_p), float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    choice = torch.multinomial(probs, 1, generator=generator)  # (B, 1), position among candidates
    return (choice if ids is None else ids.gather(-1, choice)).squeeze(-1)
