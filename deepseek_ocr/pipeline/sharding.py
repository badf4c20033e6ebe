"""Splitting a run over several processes (`torchrun`), and the meeting point at its end.

Every rank expands the same inputs into the same global page list (inputs are sorted, page
ranges are resolved the same way), then takes a round-robin share: page i goes to rank
i % world_size. Round-robin rather than contiguous blocks because the pages of one document
tend to cost alike, so blocks would give one rank all the dense pages of a long report;
interleaving keeps ranks within one page of each other and never assigns a page twice.

Ranks meet through `torch.distributed` with the gloo backend (CPU tensors only, so it works
with or without GPUs and needs no NCCL set-up): a barrier once every rank has written its
pages, then rank 0 merges and the exit code is agreed with an all-reduce (MAX), so that no
rank exits early with an error while rank 0 is still writing (torchrun stops the whole group
as soon as one worker fails).
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Sequence, TypeVar

import torch

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Ranks can wait long for each other at the end of a big run (one slow page per rank), far
# past gloo's default 30 minutes.
BARRIER_TIMEOUT = datetime.timedelta(hours=12)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands in a multi-process run.

    Attributes:
        rank: global rank (0 when not distributed).
        world_size: number of processes (1 when not distributed).
        local_rank: rank on this host, which picks the GPU (`cuda:local_rank`).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_from_env(environ: dict | None = None) -> DistInfo:
    """Read `WORLD_SIZE`, `RANK`, `LOCAL_RANK` (as torchrun sets them).

    Args:
        environ: the environment to read (default `os.environ`).

    Raises:
        ValueError: the variables are not integers or are inconsistent.
    """
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError as err:
        raise ValueError(f"WORLD_SIZE/RANK/LOCAL_RANK must be integers: {err}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ValueError(f"inconsistent distributed environment: WORLD_SIZE={world} RANK={rank} "
                         f"LOCAL_RANK={local}")
    return DistInfo(rank, world, local)


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's round-robin share of `items`: items[rank], items[rank + world], ...

    Args:
        items: the global list, identical on every rank.
        rank: 0 <= rank < world_size.
        world_size: number of ranks (>= 1).
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
    return list(items[rank::world_size])


def device_for(info: DistInfo, requested: str | None) -> str | None:
    """The device a rank runs its model on.

    Distributed, a request of None or plain "cuda" becomes `cuda:LOCAL_RANK` (CPU when there is no
    GPU, so the pipeline can be tried with torchrun on a laptop); an explicit device is kept.
    """
    if not info.distributed:
        return requested
    if requested in (None, "cuda"):
        return f"cuda:{info.local_rank}" if torch.cuda.is_available() else "cpu"
    return requested


class Group:
    """The gloo process group of a torchrun job (a no-op object when not distributed)."""

    def __init__(self, info: DistInfo):
        self.info = info
        self._owned = False
        if not info.distributed:
            return
        import torch.distributed as dist
        if not dist.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        if not dist.is_initialized():
            if "MASTER_ADDR" not in os.environ:
                raise RuntimeError("WORLD_SIZE > 1 but MASTER_ADDR is not set: launch with torchrun "
                                   "(python -m torch.distributed.run --nproc_per_node N -m deepseek_ocr ...)")
            dist.init_process_group("gloo", rank=info.rank, world_size=info.world_size,
                                    timeout=BARRIER_TIMEOUT)
            self._owned = True

    def barrier(self) -> None:
        if self.info.distributed:
            import torch.distributed as dist
            dist.barrier()

    def max_int(self, value: int) -> int:
        """The maximum of `value` over all ranks (the value itself when not distributed)."""
        if not self.info.distributed:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def close(self) -> None:
        if self._owned:
            import torch.distributed as dist
            dist.destroy_process_group()
            self._owned = False
