"""Several processes (torchrun): DDP or FSDP2 around the training objective.

One process per device, started by `torchrun --nproc-per-node N` (or any launcher that sets
RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT). NCCL on CUDA, gloo on the CPU.

Why a wrapper module: DDP and FSDP2 do their work (gradient bucketing, parameter all-gathers) in
hooks around a module's `forward`. The objective (`compute_loss`) reaches into the model's parts
rather than calling one forward, so `LossModule.forward(batch)` *is* the objective and is what
gets wrapped.

The loss across ranks: the official objective is a token mean over the whole global batch. DDP
averages gradients over ranks, so each rank's cross-entropy *sum* is divided by the global
number of labels and multiplied by the world size; the balance loss (a mean over sequences) is
weighted by the rank's share of sequences times the world size. With that, the reduced gradient
equals the gradient of the one-process objective on the concatenated batch.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..errors import DeepseekOCRError
from ..processing.prompt import PreparedInputs
from .errors import TrainingError
from .objective import LossOutput, compute_loss


class DistributedError(DeepseekOCRError, RuntimeError):
    """The process group cannot be set up, or a strategy does not fit the model."""


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_with_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device: str | torch.device | None = None, timeout_s: float = 1800) -> DistContext:
    """Join the process group described by the environment (a no-op context in one process).

    Args:
        device: "cuda" (each rank takes cuda:LOCAL_RANK), "cpu", or None for CUDA when present.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise DistributedError(f"rank {rank}: LOCAL_RANK {local} but only "
                                   f"{torch.cuda.device_count()} CUDA device(s) are visible")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing:
            raise DistributedError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start with torchrun")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank=rank, world_size=world, local_rank=local, device=device)


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world() -> tuple[int, int]:
    """(rank, world_size) from torchrun's environment; (0, 1) in a plain process."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def all_reduce_sum(value: float, ctx: DistContext) -> float:
    """The sum over ranks of a host number (one tiny collective)."""
    if not ctx.enabled:
        return value
    t = torch.tensor([float(value)], dtype=torch.float64,
                     device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item())


def raise_together(error: Exception | None, ctx: DistContext, others: Callable[[], Exception]) -> None:
    """Every rank raises when any rank has an `error`: its own, or `others()` where it had none.
    Without this, the ranks that did not fail would go on into the next step's collectives, which
    the failed rank never joins, and wait there until the launcher kills them (torchrun stops the
    others when one exits) or the process group times out, with no message of their own. One tiny
    collective; in one process it only raises `error`."""
    if ctx.enabled and all_reduce_sum(0.0 if error is None else 1.0, ctx) > 0 and error is None:
        error = others()
    if error is not None:
        raise error


def agree_view_sizes(ctx: DistContext) -> Callable[[set[int]], list[int]]:
    """The union over ranks of the view sizes in each rank's micro-batch (sizes are multiples
    of 16 up to 8192: a bitmap reduced with MAX, no pickled objects)."""
    def agree(local: set[int]) -> list[int]:
        slots = torch.zeros(8192 // 16 + 1, dtype=torch.int32,
                            device=ctx.device if ctx.device.type == "cuda" else "cpu")
        for size in local:
            if size % 16 or not 0 < size <= 8192:
                raise DistributedError(f"view size {size} is not a multiple of 16 up to 8192")
            slots[size // 16] = 1
        dist.all_reduce(slots, op=dist.ReduceOp.MAX)
        return [int(i) * 16 for i in torch.nonzero(slots).flatten().tolist()]
    return agree


class LossModule(nn.Module):
    """`forward(batch)` runs the official objective on `net` (what DDP / FSDP2 wrap).

    Args:
        net: the `DeepseekOCRModel`.
        pad_id: the tokenizer's pad id.
    """

    def __init__(self, net: nn.Module, pad_id: int):
        super().__init__()
        self.net = net
        self.pad_id = pad_id
        # Set by `wrap_model` for FSDP2: every rank must call the sharded tower alike.
        self.agree_sizes: Callable[[set[int]], list[int]] | None = None

    def forward(self, batch: Sequence[PreparedInputs], aux_loss: bool = True,
                gradient_checkpointing: bool = False) -> LossOutput:
        return compute_loss(self.net, batch, pad_id=self.pad_id, aux_loss=aux_loss,
                            gradient_checkpointing=gradient_checkpointing,
                            agree_sizes=self.agree_sizes)


def rank_objective(out: LossOutput, *, global_labels: float, num_sequences: int,
                   global_sequences: float, world_size: int, aux_loss: bool = True) -> torch.Tensor:
    """The tensor to differentiate on one rank so that the gradient averaged over ranks equals
    the gradient of the whole global batch's objective (see the module docstring).

    In one process (`world_size` 1, globals equal to the locals) this is `out.loss` exactly.
    """
    ce_sum = out.ce * out.num_labels
    objective = ce_sum * (world_size / global_labels)
    if aux_loss:
        objective = objective + out.aux * (num_sequences * world_size / global_sequences)
    return objective


def _vision_trainable(net: nn.Module) -> bool:
    return any(p.requires_grad for p in net.vision.parameters())


def wrap_model(module: LossModule, ctx: DistContext, strategy: str = "ddp") -> nn.Module:
    """Wrap the loss module for several ranks (identity in one process).

    Args:
        strategy: "ddp" (every rank holds the whole model; LoRA or full fine-tuning) or "fsdp"
            (FSDP2 `fully_shard` per decoder layer and per CLIP layer, then the root: parameters,
            gradients and optimizer state sharded, for full fine-tuning).
    """
    if not ctx.enabled:
        return module
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        # A rank whose micro-batch is text-only leaves the vision tower unused, and experts that
        # receive no token stay out of the graph with the reference path: let DDP look for
        # unused parameters whenever the vision side trains (the decoder's stacked parameters
        # are always used).
        find_unused = _vision_trainable(module.net)
        return DDP(module, device_ids=None, find_unused_parameters=find_unused)
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard
        except ImportError as err:  # torch < 2.6
            raise DistributedError(f"FSDP2 needs torch >= 2.6 (fully_shard): {err}") from err
        from torch.distributed.device_mesh import init_device_mesh
        mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
        # A rank without images (or with other view sizes) still runs every CLIP layer, in the
        # same order as the others: the all-gathers and reduce-scatters must pair up.
        module.agree_sizes = agree_view_sizes(ctx)
        for layer in module.net.decoder.layers:
            fully_shard(layer, mesh=mesh)
        for layer in module.net.vision.clip.transformer.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
        return module
    raise DistributedError(f"unknown strategy {strategy!r}; choose 'ddp' or 'fsdp'")


def unwrap(module: nn.Module) -> LossModule:
    """The `LossModule` inside a DDP wrapper (FSDP2 modifies modules in place)."""
    return module.module if hasattr(module, "module") and isinstance(module.module, LossModule) else module


def for_training(ocr, cfg) -> tuple[nn.Module, DistContext]:
    """The module the loop runs forward/backward through, and the process group's context.

    One process: the objective itself (`LossModule`, the same as `ocr.loss`). Under torchrun:
    joined to the process group and wrapped in DDP (`strategy = "ddp"`, every rank holds the
    model: LoRA or full fine-tuning) or sharded with FSDP2 (`"fsdp"`: per decoder layer and
    per CLIP layer, for full fine-tuning of models that do not fit one device with AdamW).
    """
    ctx = init_distributed(ocr.device) if launched_with_torchrun() else DistContext(device=ocr.device)
    module = LossModule(ocr.model, ocr.tokenizer.pad_id)
    if cfg.strategy == "fsdp" and cfg.uses_lora and ctx.enabled:
        raise TrainingError("strategy 'fsdp' is for full fine-tuning; LoRA trains with 'ddp'")
    return wrap_model(module, ctx, cfg.strategy), ctx
