"""bf16 compute copies of the trainable matmul weights, their float32 values kept as masters.

Under bf16 autocast a float32 weight is cast to bf16 every time an op uses it (and again when
gradient checkpointing recomputes the op), and its bf16 gradient is cast back and added to a
float32 `.grad`: on the `paper` preset that is ~1,600 copy kernels per step, and in one
measurement the step took 0.295 s with float32 weights against 0.228 s with bf16 ones
(benchmarks/RESULTS.md, seventh round). `MasterWeights` makes the casts once per optimizer step:

* `to_compute()` (at the start of training) gives each selected parameter a bf16 copy of its
  float32 value as `.data`; the float32 tensor stays here as the master and is what the
  optimizer updates. The bf16 values are those autocast would have computed, so the forward
  pass is the same arithmetic.
* after each backward, `gather_grads()` adds the bf16 gradients into float32 buffers (one
  multi-tensor launch per dtype pair) and drops them, so accumulation over micro-batches
  happens in float32, as autocast's cast-backward does;
* after the optimizer step, `refresh()` rounds the masters back into the bf16 copies;
* `float32()` (a context) puts the masters back as the parameters' data for checkpoints and
  evaluations, which then see exactly the model they would have seen without this class;
  `to_master()` does so for good (the end of training).

Selected: the trainable weights and biases of `nn.Linear` and `nn.Conv2d` and the stacked routed
experts (autocast casts all of them to bf16 where they are used), other than the output
projection (its gradient is summed over chunks of positions in its own buffer, chunked_ce.py,
and it is cast once per pass anyway). Norm gains and biases, embeddings and the router stay
float32: autocast leaves them float32 (or the code computes them in float32), so holding them in
bf16 would change the arithmetic, not save casts.

Frozen matmul weights (a LoRA run's base; the vision tower's frozen part, such as SAM under the
`paper` preset) get no master: where bf16 holds their float32 values exactly (the official
checkpoint is bf16) they are stored in bf16 while training, widened back exactly by `float32()`
and `to_master()`; that is the same arithmetic, half the memory of the base and none of its
casts (on `paper` they were 204 of the ~6,450 operators of a step's forward and backward,
benchmarks/op_census.py). The vision tower's are left alone when its rows are cached
(`cache_vision`): those are encoded outside autocast, where the weights' dtype would decide the
arithmetic.

Single process only: DDP buckets gradients by the parameters' dtype when it wraps the model,
so their data cannot change dtype afterwards (under DDP or FSDP the trainer keeps autocast).
"""
from __future__ import annotations

import contextlib
from typing import Callable, ContextManager, Iterator

import torch
from torch import nn

from ..decoder.moe import StackedExperts

_MATMUL_MODULES = (nn.Linear, nn.Conv2d, StackedExperts)


def matmul_weights(model: nn.Module, *, exclude: tuple[nn.Module, ...] = (),
                   trainable: bool = True) -> list[tuple[str, nn.Parameter]]:
    """The float32 matmul weights and biases of `model` (see the module docstring), by name: the
    trainable ones, or with `trainable=False` the frozen ones."""
    skip = {id(m) for m in exclude}
    out = []
    for mod_name, mod in model.named_modules():
        if not isinstance(mod, _MATMUL_MODULES) or id(mod) in skip:
            continue
        for name, p in mod.named_parameters(recurse=False):
            if p.requires_grad != trainable or p.dtype != torch.float32:
                continue
            out.append((f"{mod_name}.{name}" if mod_name else name, p))
    return out


class MasterWeights:
    """Float32 masters of `params`, which train on bf16 (or float16) copies. See the module
    docstring for the life cycle; `masters[i]` is what the optimizer must step for `params[i]`."""

    def __init__(self, params: list[nn.Parameter], dtype: torch.dtype = torch.bfloat16,
                 frozen: list[nn.Parameter] = ()):
        if len({id(p) for p in [*params, *frozen]}) != len(params) + len(frozen):
            raise ValueError("a parameter is listed twice")
        self.params = list(params)
        self.dtype = dtype
        # Frozen weights need no master: those whose float32 values bf16 holds exactly (the
        # official checkpoint is bf16) are simply stored in bf16 while training, which is what
        # autocast would compute from them, and widened back, exactly, afterwards. For LoRA that
        # halves the base's memory and drops its casts.
        self.frozen = [p for p in frozen if torch.equal(p.detach(), p.detach().to(dtype).float())]
        # The masters are the parameters' own float32 tensors: no copy until `to_compute()`.
        self.masters = [p.detach() for p in self.params]
        self._master_of = {id(p): m for p, m in zip(self.params, self.masters)}
        self._compute: list[torch.Tensor] | None = None

    def master_of(self, p: torch.Tensor) -> torch.Tensor:
        """The tensor the optimizer steps for `p` (its master, or `p` itself when not held here)."""
        return self._master_of.get(id(p), p)

    @property
    def active(self) -> bool:
        """True while the parameters hold their bf16 copies."""
        return self._compute is not None

    # ------------------------------------------------------------------ the parameters' data
    def to_compute(self) -> None:
        """Parameters -> bf16 copies of the masters (a no-op if they already are)."""
        if self._compute is None:
            self._compute = [m.to(self.dtype) for m in self.masters]
        for p, c in zip(self.params, self._compute):
            p.data = c
        for p in self.frozen:
            p.data = p.data.to(self.dtype)

    def to_master(self) -> None:
        """Parameters -> their float32 masters, for good (the bf16 copies are freed)."""
        for p, m in zip(self.params, self.masters):
            p.data = m
        for p in self.frozen:
            p.data = p.data.float()
        self._compute = None

    @contextlib.contextmanager
    def float32(self, frozen: bool = True) -> Iterator[None]:
        """The parameters hold their float32 masters inside the block (checkpoints, evaluation).
        The frozen bf16 weights are widened too unless `frozen` is False (a checkpoint writes only
        trained tensors); one at a time, each bf16 copy freed as its float32 one is made, so the
        block needs no more memory than a float32 base did."""
        if self._compute is None:
            yield
            return
        for p, m in zip(self.params, self.masters):
            p.data = m
        widened = self.frozen if frozen else []
        for p in widened:  # exact: bf16 held these values
            p.data = p.data.float()
        try:
            yield
        finally:
            for p, c in zip(self.params, self._compute):
                p.data = c
            for p in widened:
                p.data = p.data.to(self.dtype)

    # ---------------------------------------------------------------------------- one step
    def gather_grads(self) -> None:
        """Adds each parameter's (bf16) gradient into its master's float32 gradient and drops
        it. Call after every backward of a step (micro-batches accumulate in float32). The
        float32 gradients live from here to the optimizer's `zero_grad`, as autocast's did: no
        buffer is kept between steps, so the backward pass has that memory free."""
        fresh_dst, fresh_src, add_dst, add_src = [], [], [], []
        for p, m in zip(self.params, self.masters):
            g = p.grad
            if g is None:
                continue
            if m.grad is None:  # the step's first gradient for this weight
                m.grad = torch.empty_like(m)
                fresh_dst.append(m.grad)
                fresh_src.append(g)
            else:
                add_dst.append(m.grad)
                add_src.append(g)
            p.grad = None
        if fresh_dst:
            torch._foreach_copy_(fresh_dst, fresh_src)
        if add_dst:
            # g.float() per tensor: the add itself is one launch; the upcast is what autocast's
            # cast-backward would have done.
            torch._foreach_add_(add_dst, [g.float() for g in add_src])

    def refresh(self) -> None:
        """After the optimizer step: the masters' new values rounded into the bf16 copies."""
        if self._compute:  # None before training; [] when only a frozen base is held here
            torch._foreach_copy_(self._compute, self.masters)

    def zero_grad(self) -> None:
        """Forget the step's gradients (the optimizer's `zero_grad(set_to_none=True)` does the same
        for the masters)."""
        for m in self.masters:
            m.grad = None
        for p in self.params:
            p.grad = None


class Precision:
    """The trainer's mixed precision, from its `dtype` setting ("auto", "bfloat16", "float32"):
    bf16 autocast on CUDA ("auto" or "bfloat16") and anywhere with "bfloat16"; with bf16 compute
    and one process, the trainable matmul weights of `model` (its output projection aside) train
    as bf16 copies of float32 masters (`MasterWeights`) when `master_weights` is on (off by
    default: on the H200 the copies, their refresh and the gradients' gather cost more than the
    casts they save, benchmarks/RESULTS.md, eighth round), and the frozen ones (a LoRA run's base,
    the vision tower's frozen part unless `vision_cached`) are held in bf16 where that is exact
    when `bf16_frozen_base` is on."""

    def __init__(self, dtype: str, device: torch.device, model: nn.Module, *, master_weights: bool,
                 distributed: bool, bf16_frozen_base: bool = True, vision_cached: bool = False):
        self.device = torch.device(device)
        bf16 = dtype == "bfloat16" or (dtype == "auto" and self.device.type == "cuda")
        self.compute_dtype = torch.bfloat16 if bf16 else None
        self.masters: MasterWeights | None = None
        if bf16 and not distributed:
            chosen = matmul_weights(model, exclude=(model.decoder.lm_head,)) if master_weights else []
            # The vision tower's too, unless its rows are cached (`cache_vision`): those are
            # encoded outside autocast, where the weights' dtype would decide the arithmetic.
            roots = [model.decoder] + ([] if vision_cached else [model.vision])
            frozen = ([w for root in roots
                       for w in matmul_weights(root, exclude=(model.decoder.lm_head,), trainable=False)]
                      if bf16_frozen_base else [])
            if chosen or frozen:
                self.masters = MasterWeights([p for _, p in chosen], self.compute_dtype,
                                             frozen=[p for _, p in frozen])

    def autocast(self) -> ContextManager:
        """bf16 autocast when the compute is bf16; nothing otherwise."""
        if self.compute_dtype is not None:
            return torch.autocast(self.device.type, dtype=self.compute_dtype)
        return contextlib.nullcontext()

    def stepped(self, p: nn.Parameter) -> torch.Tensor:
        """What the optimizer steps (and clipping reads) for `p`: its master, or `p`."""
        return self.masters.master_of(p) if self.masters else p

    @property
    def substitute(self) -> Callable[[nn.Parameter], torch.Tensor] | None:
        return self.masters.master_of if self.masters else None

    def float32(self, frozen: bool = True) -> ContextManager:
        """A block in which the model holds its float32 weights (evaluation; checkpoints, which
        write only trained tensors, pass `frozen=False`)."""
        return self.masters.float32(frozen) if self.masters else contextlib.nullcontext()

    def start(self) -> None:
        """Training begins: bf16 copies in (with master weights)."""
        if self.masters:
            self.masters.to_compute()

    def finish(self) -> None:
        """Training ends (or fails): the float32 weights back for good."""
        if self.masters:
            self.masters.to_master()

    def after_backward(self) -> None:
        if self.masters:  # into float32 after every micro-batch, as autocast's cast-backward adds
            self.masters.gather_grads()

    def after_step(self) -> None:
        if self.masters:
            self.masters.refresh()
