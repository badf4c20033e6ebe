"""Cross entropy of the output projection over chunks of positions, logits recomputed backward.

The loss needs `logits = hidden @ lm_head.T` for every scored position: `[n, 129,280]` float32,
0.5 GB per 1,000 positions, and autograd would keep a second copy (the log-softmax) for the
backward pass and make a third (its gradient) there. Here the logits exist one chunk of
positions at a time, in the forward and again in the backward, and the projection's weight
gradient is accumulated in one buffer: the memory is one chunk of logits plus the gradient,
whatever the answer's length. The arithmetic is the same as
`F.cross_entropy(F.linear(hidden, weight).float(), targets, reduction="sum")` up to the order of
the float sums across chunks.

Mixed precision: the matmuls run in the dtype autocast would give `F.linear` (bf16 under bf16
autocast on CUDA), the softmax in float32 (float64 stays float64), as the unchunked expression
computes them.
"""
from __future__ import annotations

import torch

CHUNK = 256  # positions per chunk: 256 x 129,280 float32 = 132 MB of logits


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    device = hidden.device.type
    if torch.is_autocast_enabled(device) and hidden.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def _scores(h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    logits = h @ w.t()
    return logits if logits.dtype == torch.float64 else logits.float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int,
                dtype: torch.dtype) -> torch.Tensor:
        w = weight.to(dtype)
        total = None
        for s in range(0, hidden.shape[0], chunk):
            logits = _scores(hidden[s:s + chunk].to(dtype), w)
            t = targets[s:s + chunk]
            part = (torch.logsumexp(logits, dim=-1) - logits.gather(1, t[:, None])[:, 0]).sum()
            total = part if total is None else total + part
        ctx.save_for_backward(hidden, weight, targets)
        ctx.chunk, ctx.dtype = chunk, dtype
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        hidden, weight, targets = ctx.saved_tensors
        chunk, dtype = ctx.chunk, ctx.dtype
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros_like(weight) if ctx.needs_input_grad[1] else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s:s + chunk].to(dtype)
            logits = _scores(h, w)
            # d(lse - logit_t)/d logits = softmax - onehot(t), times the incoming gradient.
            g = torch.softmax(logits, dim=-1)
            del logits
            rows = torch.arange(g.shape[0], device=g.device)
            g[rows, targets[s:s + chunk]] -= 1
            g = (g * grad_out).to(dtype)
            if grad_h is not None:
                grad_h[s:s + chunk] = (g @ w).to(hidden.dtype)
            if grad_w is not None:
                if g.dtype == grad_w.dtype:
                    grad_w.addmm_(g.t(), h)  # in place: no second weight-sized tensor
                else:
                    grad_w += (g.t() @ h).to(grad_w.dtype)
        return grad_h, grad_w, None, None, None


def linear_cross_entropy_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                             chunk: int = CHUNK) -> torch.Tensor:
    """`sum_i CE(hidden[i] @ weight.T, targets[i])` with float32 (or float64) logits.

    Args:
        hidden: `[n, H]` the final-normed hidden states of the scored positions.
        weight: `[V, H]` the output projection.
        targets: `[n]` int64 ids, all scored (no ignore index).
    """
    if hidden.shape[0] == 0:
        raise ValueError("no position to score")
    return _LinearCrossEntropy.apply(hidden, weight, targets, chunk, _compute_dtype(hidden, weight))
