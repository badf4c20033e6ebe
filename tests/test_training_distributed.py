"""Two ranks over gloo (CPU): DDP's reduced gradient equals one process's on the same global
batch, and FSDP2 gives the same loss and gradients (float64, so the tolerance 1e-6 of the
issue measures the algorithm and not float32 summation order).

Each rank rebuilds the same tiny random model (tests/tiny_model.py) and takes every other
sample of a global batch of four (two with images, two text-only, so one rank may have no image
while the vision tower trains); the parent computes the one-process reference.
"""
from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from tiny_model import tiny_model  # noqa: E402

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _samples(model):
    from PIL import Image
    img_a = Image.new("RGB", (300, 200), (250, 250, 250))
    img_b = Image.new("RGB", (200, 420), (30, 60, 90))
    return [
        model.prepare(img_a, "<image>\nFree OCR.", mode="tiny", answer="Invoice 42"),
        model.prepare(None, "Say hello.", answer="hello there, friend"),
        model.prepare(img_b, "<image>\nFree OCR.", mode="small", answer="TOTAL 12.50"),
        model.prepare(None, "Count:", answer="one two three"),
    ]


def _grads(net) -> dict[str, torch.Tensor]:
    out = {}
    for n, p in net.named_parameters():
        if p.grad is not None:
            g = p.grad
            if hasattr(g, "full_tensor"):  # an FSDP2 DTensor shard
                g = g.full_tensor()
            out[n] = g.detach().clone()
    return out


def _rank_main(rank: int, port: int, strategy: str, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)  # two ranks share the CI machine's two cores
    torch.manual_seed(0)
    from deepseek_ocr.training.distributed import (LossModule, all_reduce_sum, init_distributed,
                                                   rank_objective, shutdown, wrap_model)
    ctx = init_distributed("cpu")
    model = tiny_model()
    model.model.double()  # float64: the comparison then measures the algorithm, not summation order
    samples = _samples(model)[rank::WORLD]
    module = wrap_model(LossModule(model.model, model.tokenizer.pad_id), ctx, strategy)
    out = module(samples)
    global_labels = all_reduce_sum(out.num_labels, ctx)
    objective = rank_objective(out, global_labels=global_labels, num_sequences=len(samples),
                               global_sequences=all_reduce_sum(len(samples), ctx), world_size=WORLD)
    objective.backward()
    grads = _grads(model.model)  # FSDP2 shards are gathered by `_grads`
    objective_sum = all_reduce_sum(float(objective.detach()), ctx) / WORLD
    if rank == 0:
        queue.put((objective_sum, {k: v.numpy() for k, v in grads.items()}))
    shutdown()


def _reference():
    torch.manual_seed(0)
    model = tiny_model()
    model.model.double()
    out = model.loss(_samples(model))
    out.loss.backward()
    return out.loss.item(), _grads(model.model)


def _run(strategy: str):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, strategy, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        loss, grads = queue.get(timeout=600)
    finally:
        for p in procs:
            p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return loss, {k: torch.from_numpy(v) for k, v in grads.items()}


@pytest.fixture(scope="module")
def reference():
    return _reference()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_ranks_equal_one_process(strategy, reference):
    ref_loss, ref_grads = reference
    loss, grads = _run(strategy)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    # The vision tower trained: its gradients came through the ranks too.
    assert any(k.startswith("vision.clip.") for k in ref_grads) and any(k.startswith("vision.sam.") for k in ref_grads)
    assert set(grads) == set(ref_grads)
    for name, ref in ref_grads.items():
        err = float((grads[name].double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))
        assert err <= 1e-6, f"{name}: relative L2 {err:.2e}"


def _agree_main(rank: int, port: int, queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from deepseek_ocr.training.checkpoint import CheckpointWriteError
    from deepseek_ocr.training.distributed import init_distributed, raise_together, shutdown
    ctx = init_distributed("cpu")
    outcomes = []
    for failing in (None, 0, 1):  # no rank fails; rank 0 fails; rank 1 fails
        own = CheckpointWriteError(f"rank {rank}: disk full") if rank == failing else None
        try:
            raise_together(own, ctx, lambda: CheckpointWriteError(f"rank {rank}: another rank failed"))
            outcomes.append(None)
        except CheckpointWriteError as exc:
            outcomes.append(str(exc))
    queue.put((rank, outcomes))
    shutdown()


def test_a_rank_that_fails_stops_every_rank():
    """`raise_together` over two real gloo ranks: when one rank has an error, each rank raises
    (its own error, or the stand-in for the others), and nobody waits; with none, none raises."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_agree_main, args=(r, port, queue)) for r in range(WORLD)]
    for p in procs:
        p.start()
    try:
        got = dict(queue.get(timeout=300) for _ in range(WORLD))
    finally:
        for p in procs:
            p.join(timeout=60)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    assert got == {0: [None, "rank 0: disk full", "rank 0: another rank failed"],
                   1: [None, "rank 1: another rank failed", "rank 1: disk full"]}
