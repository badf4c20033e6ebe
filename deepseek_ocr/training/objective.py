"""The official training objective: token-mean cross entropy plus the MoE balance loss.

What the official code computes (`../shared/TRAINING.md` §1), and what this module equals:

- a batch of training sequences (prompt, image layout, answer ids, EOS), right-padded; positions
  0..n-1 per sequence;
- float32 logits; `CrossEntropy(logits[:, :-1], labels[:, 1:])` averaged over every labelled
  token of the whole batch (not a mean of per-sample means);
- per MoE layer, the sequence-level balance loss `alpha * mean_b sum_e f[b,e] * P[b,e]` with
  `f[b,e]` = picks of expert e in sequence b / (T*k/E) (no gradient) and `P[b,e]` = the mean
  softmax score of e over the sequence (its gradient flows into the hidden states). The official
  code adds it to the backward pass but reports only the cross entropy; `.ce` is that report,
  `.loss` the objective that is differentiated.

Two deliberate differences, both invisible on unpadded sequences:
- the balance statistics exclude padded positions (the official code counts pads as tokens);
- logits are only computed where a label is scored (identical loss and gradients, and a
  `[T, 129280]` float32 tensor per sequence is never made).

Unlike the official forward, the vision tower runs with autograd: CLIP, the projector and (when
not frozen) SAM receive gradients. A part whose parameters are all frozen runs without
recording, so frozen vision costs no activation memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..decoder.attention import rope_cos_sin
from ..decoder.moe import MoE
from ..errors import DeepseekOCRError
from ..modeling import DeepseekOCRModel
from ..processing.prompt import IGNORE_INDEX, PreparedInputs


class TrainingInputError(DeepseekOCRError, ValueError):
    """A batch given to the loss cannot be trained on (no labels, empty batch, nothing scored)."""


@dataclass
class LossOutput:
    """`loss`: the differentiable objective (`ce` + `aux` when the balance loss is on).
    `ce`: token-mean cross entropy over every label of the batch (what the official code reports).
    `aux`: the summed MoE balance loss of every MoE layer (0 when off).
    `num_labels`: scored tokens; `num_tokens`: every real (unpadded) sequence token."""

    loss: torch.Tensor
    ce: torch.Tensor
    aux: torch.Tensor
    num_labels: int
    num_tokens: int


def _requires_grad(module: torch.nn.Module) -> bool:
    return any(p.requires_grad for p in module.parameters())


def encode_vision(model: DeepseekOCRModel, batch: Sequence[PreparedInputs]) -> list[torch.Tensor | None]:
    """Vision rows per sample (None for text-only), with autograd where vision is trainable.

    Samples whose global views have the same size are encoded together (tiles of every sample
    in the group in one pass), as at inference. Precomputed `vision_rows` are used only when
    the tower is frozen.
    """
    vision = model.vision
    device = vision.projector.layers.weight.device
    trainable = torch.is_grad_enabled() and _requires_grad(vision)
    out: list[torch.Tensor | None] = [None] * len(batch)
    groups: dict[tuple, list[int]] = {}
    for i, inp in enumerate(batch):
        if inp.vision_rows is not None and not trainable:
            # Rows computed earlier (`DeepseekOCR.encode_images`) are exact for a frozen tower;
            # with a trainable one they would carry no gradient, so they are recomputed.
            out[i] = inp.vision_rows.to(device)
        elif inp.has_image:
            groups.setdefault(tuple(inp.global_view.shape[-2:]), []).append(i)
    if not groups:
        return out
    with torch.set_grad_enabled(trainable):
        for idx in groups.values():
            views = torch.cat([batch[i].global_view for i in idx]).to(device)
            crops = [batch[i].crops.to(device) if batch[i].crops is not None else None for i in idx]
            tiles = [tuple(batch[i].images_spatial_crop[0].tolist()) for i in idx]
            for i, rows in zip(idx, vision(views, crops, tiles)):
                out[i] = rows
    return out


def balance_loss(router_input: torch.Tensor, gate_weight: torch.Tensor, topk_ids: torch.Tensor,
                 valid: torch.Tensor, alpha: float) -> torch.Tensor:
    """The sequence-level balance loss of one MoE layer (`seq_aux: true`).

    Args:
        router_input: `[B*T, H]` the MoE input (the router recomputes its float32 scores from
            it, differentiably; the routing itself was already taken with these same scores).
        gate_weight: `[E, H]` the router weight.
        topk_ids: `[B*T, k]` the chosen experts.
        valid: `[B, T]` bool, False on padding (excluded from both statistics).
        alpha: `aux_loss_alpha`.
    """
    b, t = valid.shape
    n_experts = gate_weight.shape[0]
    k = topk_ids.shape[-1]
    scores = F.linear(router_input.float(), gate_weight.float()).softmax(dim=-1).view(b, t, n_experts)
    mask = valid.to(scores.dtype)  # (B, T)
    lengths = mask.sum(dim=1).clamp_min(1.0)  # (B,)
    # f: picks per expert per sequence, normalized so a uniform router gives 1 per expert.
    picks = torch.zeros(b, n_experts, dtype=torch.float32, device=scores.device)
    ids = topk_ids.view(b, t * k)
    picks.scatter_add_(1, ids, mask.repeat_interleave(k, dim=1))
    f = picks / (lengths[:, None] * k / n_experts)
    p = (scores * mask[..., None]).sum(dim=1) / lengths[:, None]  # (B, E)
    return alpha * (f * p).sum(dim=1).mean()


def _pad_batch(model: DeepseekOCRModel, batch: Sequence[PreparedInputs],
               vision_rows: list[torch.Tensor | None], pad_id: int
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded `(embeds [B, T, H], labels [B, T], valid [B, T])`."""
    device = model.decoder.embed_tokens.weight.device
    lengths = [inp.num_tokens for inp in batch]
    t_max = max(lengths)
    embeds, labels, valid = [], [], torch.zeros(len(batch), t_max, dtype=torch.bool, device=device)
    for i, (inp, rows) in enumerate(zip(batch, vision_rows)):
        n = lengths[i]
        ids = torch.full((t_max,), pad_id, dtype=torch.int64)
        ids[:n] = inp.input_ids
        mask = torch.zeros(t_max, dtype=torch.bool)
        mask[:n] = inp.images_seq_mask
        embeds.append(model.merge_embeddings(ids.to(device), mask.to(device), rows))
        lab = torch.full((t_max,), IGNORE_INDEX, dtype=torch.int64)
        lab[:n] = inp.labels
        labels.append(lab)
        valid[i, :n] = True
    return torch.stack(embeds), torch.stack(labels).to(device), valid


def _layer_step(layer, x, cos, sin, valid, aux_alpha: float | None):
    """One decoder layer without a cache (causal attention; right padding never reaches a real
    token), returning `(x, balance loss or 0)`. A function of tensors only, so it can be
    recomputed by gradient checkpointing."""
    taps: dict | None = {} if aux_alpha is not None and isinstance(layer.mlp, MoE) else None
    x = layer(x, cos, sin, None, 0, None, taps)
    if taps:
        aux = balance_loss(taps["router_input"], layer.mlp.gate.weight, taps["topk_ids"], valid, aux_alpha)
    else:
        aux = x.new_zeros((), dtype=torch.float32)
    return x, aux


def compute_loss(model: DeepseekOCRModel, batch: Sequence[PreparedInputs], *, pad_id: int,
                 aux_loss: bool = True, gradient_checkpointing: bool = False) -> LossOutput:
    """The official objective on a batch of prepared training samples (see the module docstring).

    Args:
        model: the network (train or eval mode; dropout-free either way).
        batch: `PreparedInputs` carrying `labels` (from `prepare(..., answer=...)`); image and
            text-only samples mix freely.
        pad_id: the id written into padded slots (never scored, never attended to by real tokens).
        aux_loss: add the MoE balance loss to `.loss` (`aux_loss_alpha` of the config).
        gradient_checkpointing: recompute each decoder layer in the backward pass.
    """
    if not batch:
        raise TrainingInputError("the loss needs at least one sample")
    for i, inp in enumerate(batch):
        if inp.labels is None:
            raise TrainingInputError(f"sample {i} has no labels: prepare it with answer=...")
    cfg = model.decoder.cfg
    vision_rows = encode_vision(model, batch)
    embeds, labels, valid = _pad_batch(model, batch, vision_rows, pad_id)
    b, t, _ = embeds.shape
    positions = torch.arange(t, device=embeds.device)[None].expand(b, t)
    cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, embeds.dtype)
    alpha = cfg.aux_loss_alpha if aux_loss else None
    x = embeds
    aux_total = torch.zeros((), dtype=torch.float32, device=embeds.device)
    for layer in model.decoder.layers:
        if gradient_checkpointing and torch.is_grad_enabled():
            x, aux = checkpoint(_layer_step, layer, x, cos, sin, valid, alpha, use_reentrant=False)
        else:
            x, aux = _layer_step(layer, x, cos, sin, valid, alpha)
        aux_total = aux_total + aux
    # Position p predicts token p+1: score only where that next token is labelled.
    targets = labels[:, 1:]
    scored = targets != IGNORE_INDEX
    num_labels = int(scored.sum())
    if num_labels == 0:
        raise TrainingInputError("no labelled token in the batch (every answer is empty?)")
    hidden = x[:, :-1][scored]  # (n_labels, H)
    logits = model.decoder.lm_head(model.decoder.norm(hidden)).float()
    ce = F.cross_entropy(logits, targets[scored], reduction="mean")
    loss = ce + aux_total if aux_loss else ce
    return LossOutput(loss=loss, ce=ce, aux=aux_total, num_labels=num_labels, num_tokens=int(valid.sum()))
