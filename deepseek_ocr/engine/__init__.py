"""The inference engine: continuous batching over a paged KV cache (see `engine.Engine`).

`engine_for(model, tokenizer)` keeps one engine per model and builds a new one when what it
copied from the model changed: the fused q/k/v weights (an optimizer step, an adapter merged, a
load, a `.to()`), or the `DEEPSEEK_OCR_COMPILE` switch.
"""
from __future__ import annotations

import os

import torch

from .engine import Engine
from .options import GenerationOptions
from .request import FINISH_REASONS, Request

__all__ = ["Engine", "GenerationOptions", "Request", "FINISH_REASONS", "engine_for", "supports_model"]


def supports_model(model) -> bool:
    """False while LoRA factors are attached unmerged: the fast step fuses the plain q/k/v
    weights and would silently leave the adapter out (the reference loop honours it)."""
    return not any(getattr(m, "carries_lora", False) for m in model.decoder.modules())


_SAMPLE_STRIDE = 61  # a prime: every row of a q/k/v weight is sampled, ~21 times at width 1280


def _signature(model) -> tuple:
    """What the engine's copies depend on: which q/k/v tensors, where, their version counters,
    and a sample of their content.

    The version counter catches in-place edits made through autograd's view of the tensor; it
    misses updates that bypass it, and torch's fused AdamW (`AdamW(fused=True)`, the default
    training optimizer on CUDA) is one: an engine kept on that evidence decodes with the
    attention weights of before training while everything else has moved on. Such updates
    touch every element, so the float64 sum and sum of squares of every 61st element (all rows
    sampled; one reduction and one host read per call, ~10 ms for the full model on a CPU
    against ~140 ms for every element) see them.
    """
    sig: list = [os.environ.get("DEEPSEEK_OCR_COMPILE", "0")]
    weights = [w for layer in model.decoder.layers
               for w in (layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight)]
    sig += [(id(w), w._version, w.device, w.dtype) for w in weights]
    if weights:
        with torch.no_grad():
            samples = [w.detach().reshape(-1)[::_SAMPLE_STRIDE] for w in weights]
            sums = torch.stack([torch.stack((x.sum(dtype=torch.float64), x.square().sum(dtype=torch.float64)))
                                for x in samples])
        sig.append(tuple(sums.flatten().tolist()))
    return tuple(sig)


def engine_for(model, tokenizer, **engine_kwargs) -> Engine:
    """The model's engine (made on first use; rebuilt when its copied weights are stale).

    `engine_kwargs` (see `Engine`) apply when an engine is built; a different set rebuilds it.
    """
    sig = (_signature(model), tuple(sorted(engine_kwargs.items())))
    eng = getattr(model, "_engine", None)
    if eng is None or getattr(model, "_engine_signature", None) != sig or eng.tokenizer is not tokenizer:
        if eng is not None and (eng.waiting or eng.running):
            from ..errors import GenerationError
            raise GenerationError("the model's weights changed while its engine still had requests running")
        model._engine = None  # drop the old engine's cache before allocating the new one
        eng = Engine(model, tokenizer, **engine_kwargs)
        model._engine, model._engine_signature = eng, sig
    return eng
