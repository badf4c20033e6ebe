"""Feed-forward blocks of the decoder: the dense SwiGLU MLP and the Mixture of Experts.

MoE, per token: router logits in float32, softmax over all routed experts, greedy top-k,
weights *not* renormalized (`norm_topk_prob: false`) and scaled by `routed_scaling_factor`;
output = sum_i w_i * expert_i(x) + shared(x). The routed experts are stored stacked, fused at
load time from the checkpoint's per-expert tensors (see `weights/names.py`):
`gate_up [E, 2*I, H]` (gate rows first, then up rows) and `down [E, H, I]`.

This is the reference path: plain torch, one matmul pair per expert that received tokens.
`deepseek_ocr.kernels` is the seam where a fused implementation plugs in.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import DecoderConfig
from ..kernels import moe_experts, moe_route


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); the dense layer-0 MLP and the shared experts."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Router(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x `[N, H]` -> (weights `[N, k]` float32, expert ids `[N, k]` int64)."""
        # Autocast (bf16 training on CUDA) would run this F.linear in bf16 despite the float()
        # casts and change which experts win near ties; the official router scores in float32.
        with torch.autocast(x.device.type, enabled=False):
            logits = F.linear(x.float(), self.weight.float())  # (N, E) in float32
            scores = logits.softmax(dim=-1)
            weights, ids = torch.topk(scores, self.cfg.num_experts_per_tok, dim=-1)
            if self.cfg.norm_topk_prob:
                weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights * self.cfg.routed_scaling_factor, ids


class StackedExperts(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        e, h, i = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up = nn.Parameter(torch.zeros(e, 2 * i, h))
        self.down = nn.Parameter(torch.zeros(e, h, i))

    def forward(self, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Reference grouped SwiGLU: x `[N, H]`, weights/ids `[N, k]` -> `[N, H]`.

        Each (token, slot) pair is computed by its expert; the k results are weighted and
        summed in float32, then cast back (as the official combine does).
        """
        n, k = ids.shape
        flat_ids = ids.reshape(-1)  # (N*k,)
        out = torch.zeros(n * k, x.shape[-1], dtype=x.dtype, device=x.device)
        token_of_pair = torch.arange(n * k, device=x.device) // k
        counts = torch.bincount(flat_ids, minlength=self.gate_up.shape[0]).tolist()
        order = torch.argsort(flat_ids, stable=True)
        inter = self.down.shape[-1]
        start = 0
        for e, c in enumerate(counts):
            if c == 0:
                continue
            pairs = order[start:start + c]
            start += c
            xe = x[token_of_pair[pairs]]  # (c, H)
            gu = xe @ self.gate_up[e].t()  # (c, 2I)
            h = F.silu(gu[:, :inter]) * gu[:, inter:]
            out[pairs] = h @ self.down[e].t()
        combined = (out.view(n, k, -1).float() * weights[..., None]).sum(dim=1)
        return combined.to(x.dtype)


class MoE(nn.Module):
    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.gate = Router(cfg)
        self.experts = StackedExperts(cfg)
        self.shared_experts = (SwiGLU(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts)
                               if cfg.n_shared_experts else None)

    def forward(self, x: torch.Tensor, taps: dict | None = None) -> torch.Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        weights, ids = moe_route(self.gate, flat)  # the kernel seam
        if taps is not None:
            taps["topk_ids"], taps["topk_weights"] = ids, weights
            if taps.get("want_router_scores"):
                # The training objective's balance loss needs the full float32 softmax, with its
                # gradient. Computed here, inside the layer's forward, where a sharded (FSDP)
                # router weight is gathered; the routing above took the same scores.
                with torch.autocast(flat.device.type, enabled=False):
                    taps["router_scores"] = F.linear(flat.float(), self.gate.weight.float()).softmax(dim=-1)
        y = moe_experts(self.experts, flat, weights, ids)  # the kernel seam
        if self.shared_experts is not None:
            y = y + self.shared_experts(flat)
        return y.view(shape)
