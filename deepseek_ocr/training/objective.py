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
- logits are only computed where a label is scored, a chunk of positions at a time and again
  in the backward pass (`chunked_ce`: identical loss and gradients up to float summation order;
  a `[T, 129280]` float32 tensor per sequence is never made).

Unlike the official forward, the vision tower runs with autograd: CLIP, the projector and (when
not frozen) SAM receive gradients. A part whose parameters are all frozen runs without
recording, so frozen vision costs no activation memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..decoder.attention import rope_cos_sin
from ..decoder.moe import MoE
from ..errors import DeepseekOCRError
from ..modeling import DeepseekOCRModel
from ..processing.prompt import IGNORE_INDEX, PreparedInputs
from ..vision.pixels import pixels_from_codes
from .chunked_ce import linear_cross_entropy_sum


# Below this many logits (256 MB in float32: ~2,000 scored positions of the 129,280-word
# vocabulary) the loss keeps them whole: chunking saves memory only by recomputing the logits
# in the backward pass, a third more output-projection work, which small batches do not need.
CHUNKED_CE_MIN_ELEMENTS = 1 << 26


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


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`t` on `device`, without making the host wait for the GPU.

    A plain copy from pageable host memory to a GPU waits for every kernel already queued
    (torch synchronizes the stream around it), so each one in the step stopped the host from
    queueing the next kernels until the GPU had drained. Copied from page-locked memory with
    `non_blocking`, it is queued like a kernel; the pinned buffer is kept until the copy ran
    (torch's caching host allocator records it on the stream)."""
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return (t if t.is_pinned() else t.pin_memory()).to(device, non_blocking=True)
    return t.to(device)


def encode_vision(model: DeepseekOCRModel, batch: Sequence[PreparedInputs],
                  agree_sizes: Callable[[set[int]], list[int]] | None = None
                  ) -> tuple[list[torch.Tensor | None], torch.Tensor | None]:
    """Vision rows per sample (None for text-only), with autograd where vision is trainable.

    Every view of one side length (global views and tiles alike) goes through the tower in one
    pass, in ascending order of size; then each sample's rows are laid out as at inference.
    Precomputed `vision_rows` are used only when the tower is frozen.

    Args:
        agree_sizes: for sharded training (FSDP), where every rank must run the same sequence of
            tower calls: maps this rank's view sizes to the sizes of all ranks. A size this rank
            lacks is run on one blank view whose output enters the loss times zero, so its
            forward and backward collectives happen on every rank.
    Returns:
        the rows per sample, and that zero-valued keep-alive term (None when none was needed).
    """
    vision = model.vision
    device = vision.projector.layers.weight.device
    trainable = torch.is_grad_enabled() and _requires_grad(vision)
    out: list[torch.Tensor | None] = [None] * len(batch)
    todo = []
    for i, inp in enumerate(batch):
        if inp.vision_rows is not None and not trainable:
            # Rows computed earlier (`DeepseekOCR.encode_images`) are exact for a frozen tower;
            # with a trainable one they would carry no gradient, so they are recomputed.
            out[i] = inp.vision_rows.to(device)
        elif inp.has_image:
            todo.append(i)
    # Every view to encode, by side length: (sample, "global" or "crops", tensor).
    by_size: dict[int, list[tuple[int, str, torch.Tensor]]] = {}
    for i in todo:
        g = batch[i].global_view
        by_size.setdefault(int(g.shape[-1]), []).append((i, "global", g))
        c = batch[i].crops
        if c is not None and c.shape[0] > 0:
            by_size.setdefault(int(c.shape[-1]), []).append((i, "crops", c))
    sizes = sorted(by_size) if agree_sizes is None else sorted(agree_sizes(set(by_size)))
    encoded: dict[tuple[int, str], torch.Tensor] = {}
    keep_alive = None
    with torch.set_grad_enabled(trainable):
        for size in sizes:
            views = by_size.get(size)
            if views is None:  # another rank has this size; run it too (see agree_sizes)
                blank = torch.zeros(1, 3, size, size, device=device)
                # Through the layout too, so the newline and separator rows get their gradient
                # (zero) on this rank as on the others.
                term = vision.layout(vision.encode_views(blank)[0], None, (1, 1)).sum() * 0.0
                keep_alive = term if keep_alive is None else keep_alive + term
                continue
            # (views prepared as uint8 levels become their bf16 pixels on the device, after the
            # copy of half the bytes: a batch may mix both)
            tokens = vision.encode_views(torch.cat([pixels_from_codes(to_device(v, device)) if v.dtype == torch.uint8
                                                    else to_device(v, device) for _, _, v in views]))
            for (i, kind, v), chunk in zip(views, tokens.split([v.shape[0] for _, _, v in views])):
                encoded[(i, kind)] = chunk
        for i in todo:
            tiles = tuple(batch[i].images_spatial_crop[0].tolist())
            out[i] = vision.layout(encoded[(i, "global")][0], encoded.get((i, "crops")), tiles)
    return out, keep_alive


def balance_loss(scores: torch.Tensor, topk_ids: torch.Tensor, valid: torch.Tensor,
                 alpha: float) -> torch.Tensor:
    """The sequence-level balance loss of one MoE layer (`seq_aux: true`).

    Args:
        scores: `[B*T, E]` the router's float32 softmax scores (with their gradient).
        topk_ids: `[B*T, k]` the chosen experts.
        valid: `[B, T]` bool, False on padding (excluded from both statistics).
        alpha: `aux_loss_alpha`.
    """
    b, t = valid.shape
    n_experts = scores.shape[-1]
    k = topk_ids.shape[-1]
    scores = scores.view(b, t, n_experts)
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
    """Right-padded `(embeds [B, T, H] on the model's device, labels [B, T], valid [B, T])`;
    labels and valid stay on the host, where the loss counts and selects without a GPU wait."""
    device = model.decoder.embed_tokens.weight.device
    lengths = [inp.num_tokens for inp in batch]
    t_max = max(lengths)
    ids = torch.full((len(batch), t_max), pad_id, dtype=torch.int64)
    mask = torch.zeros(len(batch), t_max, dtype=torch.bool)
    labels = torch.full((len(batch), t_max), IGNORE_INDEX, dtype=torch.int64)
    valid = torch.zeros(len(batch), t_max, dtype=torch.bool)
    for i, inp in enumerate(batch):
        n = lengths[i]
        ids[i, :n] = inp.input_ids
        mask[i, :n] = inp.images_seq_mask
        labels[i, :n] = inp.labels
        valid[i, :n] = True
    rows = [r for r in vision_rows if r is not None]
    # One embedding lookup for the whole batch: its backward makes one dense [vocab, hidden]
    # gradient (a lookup per sample made one each, summed: three vocab-sized tensors at once).
    # The image positions are filled in row-major order: sample by sample, in order.
    slots = to_device(mask.reshape(-1).nonzero().squeeze(1), device)  # found on the host: no GPU wait
    embeds = model.merge_embeddings(to_device(ids, device), None, torch.cat(rows) if rows else None, slots=slots)
    return embeds, labels, valid


def _layer_step(layer, x, cos, sin, valid, aux_alpha: float | None):
    """One decoder layer without a cache (causal attention; right padding never reaches a real
    token), returning `(x, balance loss or 0)`. A function of tensors only, so it can be
    recomputed by gradient checkpointing."""
    moe = aux_alpha is not None and isinstance(layer.mlp, MoE)
    taps: dict | None = {"want_router_scores": True} if moe else None
    x = layer(x, cos, sin, None, 0, None, taps)
    if moe:
        aux = balance_loss(taps["router_scores"], taps["topk_ids"], valid, aux_alpha)
    else:
        aux = x.new_zeros((), dtype=torch.float32)
    return x, aux


def compute_loss(model: DeepseekOCRModel, batch: Sequence[PreparedInputs], *, pad_id: int,
                 aux_loss: bool = True, gradient_checkpointing: bool = False,
                 agree_sizes: Callable[[set[int]], list[int]] | None = None) -> LossOutput:
    """The official objective on a batch of prepared training samples (see the module docstring).

    Args:
        model: the network (train or eval mode; dropout-free either way).
        batch: `PreparedInputs` carrying `labels` (from `prepare(..., answer=...)`); image and
            text-only samples mix freely.
        pad_id: the id written into padded slots (never scored, never attended to by real tokens).
        aux_loss: add the MoE balance loss to `.loss` (`aux_loss_alpha` of the config).
        gradient_checkpointing: recompute each decoder layer in the backward pass.
        agree_sizes: see `encode_vision` (sharded training only).
    """
    if not batch:
        raise TrainingInputError("the loss needs at least one sample")
    for i, inp in enumerate(batch):
        if inp.labels is None:
            raise TrainingInputError(f"sample {i} has no labels: prepare it with answer=...")
    cfg = model.decoder.cfg
    vision_rows, keep_alive = encode_vision(model, batch, agree_sizes)
    embeds, labels, valid_host = _pad_batch(model, batch, vision_rows, pad_id)
    valid = to_device(valid_host, embeds.device)
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
    # Position p predicts token p+1: score only where that next token is labelled. Counted and
    # selected from the host's labels (a boolean mask on the GPU would wait for the decoder).
    scored = labels[:, 1:] != IGNORE_INDEX
    num_labels = int(scored.sum())
    if num_labels == 0:
        raise TrainingInputError("no labelled token in the batch (every answer is empty?)")
    rows_b, rows_p = scored.nonzero(as_tuple=True)  # row-major, as boolean indexing orders them
    flat = to_device(rows_b * t + rows_p, x.device)  # positions in x viewed as [B*T, H]
    targets = to_device(labels[rows_b, rows_p + 1], x.device)
    hidden = model.decoder.norm(x.reshape(b * t, -1).index_select(0, flat))  # (n_labels, H)
    head = model.decoder.lm_head
    if (type(head) is torch.nn.Linear and head.bias is None
            and num_labels * head.out_features >= CHUNKED_CE_MIN_ELEMENTS):
        # Float32 logits as the official code (a float64 model keeps float64), a chunk of
        # positions at a time (chunked_ce: the [n, vocab] logits are never held whole).
        ce = linear_cross_entropy_sum(hidden, head.weight, targets) / num_labels
    else:  # small enough to hold (no recomputation), or a replaced head: its own forward
        logits = head(hidden)
        logits = logits if logits.dtype == torch.float64 else logits.float()
        ce = F.cross_entropy(logits, targets, reduction="mean")
    loss = ce + aux_total if aux_loss else ce
    if keep_alive is not None:
        loss = loss + keep_alive
        ce = ce + keep_alive
    return LossOutput(loss=loss, ce=ce, aux=aux_total, num_labels=num_labels, num_tokens=int(valid_host.sum()))
