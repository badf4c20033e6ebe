"""The training loop: mixed precision, accumulation, clipping, checkpoints, evaluation, stops.

    >>> trainer = Trainer(ocr, cfg, train_samples, eval_samples, resume=None)
    >>> result = trainer.train()          # TrainResult: steps, losses, interrupted, paths

Precision: float32 master weights and AdamW state always; on CUDA the forward runs under bf16
autocast (the MoE router and RMSNorm compute in float32 inside it); on CPU everything is
float32 (bf16 matmuls are slow there and would make CPU runs inexact) unless dtype="bfloat16"
asks for bf16 autocast there too. With bf16 compute in one process, a frozen decoder base (LoRA)
is held in bf16 where that is exact, and with `master_weights` (off by default) the trainable
matmul weights hold bf16 copies of their float32 masters between steps (`precision.MasterWeights`;
checkpoints and evaluations see the float32 values) instead of autocast's cast at every use.

Stops: SIGINT/SIGTERM set a flag checked between steps; the loop then writes a checkpoint and
returns `interrupted=True` (a second SIGINT aborts at once). A NaN/Inf loss or gradient norm
raises `NonFiniteLossError` naming the step and its samples (or, with `on_nonfinite="skip"`, the
step's update is dropped and its record says why: nonfinite.py), and CUDA running out of memory
raises `TrainingOOMError` with the batch's shape and advice; neither writes a checkpoint, so
the last good one stays the latest.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..engine.gil import short_gil_turns
from ..processing.prompt import IGNORE_INDEX, PreparedInputs
from .checkpoint import (CheckpointWriteError, TrainState, gather_sharded, load_optimizer, load_weights, read_state,
                         restore_rng, save_checkpoint, train_state)
from .config import TrainConfig, resume_differences
from .compiled import layer_compiler
from .data.sampler import SampleOrder
from .precision import Precision
from .prefetch import StepPrefetcher
from .distributed import all_reduce_sum, for_training, raise_together, world
from .errors import NonFiniteLossError, TrainingError, TrainingOOMError  # noqa: F401 (the first is re-exported)
from .evaluate import evaluate
from .export import export_run
from .lora import LoraConfig, apply_lora
from .monitor import Monitor
from .nonfinite import NonFiniteSteps, find_non_finite
from .optim import build_optimizer
from .schedule import lr_at
from .trainable import set_trainable

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """`step`: updates done; `losses`: one record per update of the whole run; `interrupted`:
    stopped by a signal (a checkpoint was written); `checkpoint`: the latest checkpoint written;
    `adapter_dir` / `model_dir`: the final LoRA adapter and official-layout model, when written;
    `eval`: the last evaluation's summary."""

    step: int
    losses: list[dict]
    interrupted: bool = False
    checkpoint: Path | None = None
    adapter_dir: Path | None = None
    model_dir: Path | None = None
    eval: dict | None = None
    extras: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------- the loop
def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _labels(inp: PreparedInputs) -> int:
    # compute_loss scores labels[1:]; labels[0] is BOS (always -100), so this is its count.
    return int((inp.labels != IGNORE_INDEX).sum())


class Trainer:
    """Fine-tune `ocr` (a `DeepseekOCR` with float32 weights) as `cfg` says.

    Args:
        ocr: the base model (no LoRA on it yet); LoRA and `requires_grad` are set here.
        cfg: the run's `TrainConfig`.
        train_data: a sequence of `PreparedInputs` with labels (a `SampleDataset`).
        eval_data: held-out samples, or None.
        resume: a checkpoint folder to continue from (see `checkpoint.resolve_resume`).
        on_step: called as `on_step(trainer, record)` after every update (tests, tooling).
    """

    def __init__(self, ocr, cfg: TrainConfig, train_data: Sequence[PreparedInputs],
                 eval_data: Sequence[PreparedInputs] | None = None, *, resume: str | os.PathLike | None = None,
                 on_step: Callable[["Trainer", dict], None] | None = None):
        self.ocr, self.cfg, self.train_data, self.eval_data, self.on_step = ocr, cfg, train_data, eval_data, on_step
        self.rank, self.world_size = world()
        self.output_dir = Path(cfg.output_dir)
        self.device = ocr.device
        root = ocr.model
        if any(p.dtype != torch.float32 for p in root.parameters()):
            raise TrainingError("training needs float32 master weights: load the model with dtype='float32' "
                                "(bf16 compute comes from autocast on CUDA)")
        _seed_everything(cfg.seed)
        saved = None
        if resume is not None:
            saved = read_state(resume)
            diffs = resume_differences(saved["config"], cfg)
            if diffs:
                raise TrainingError(f"{resume} was trained with other settings; resume with the same ones "
                                    "(or start a new run):\n  " + "\n  ".join(diffs))
            load_weights(resume, root, lora=cfg.uses_lora)
        elif cfg.uses_lora:
            gen = torch.Generator(device=self.device).manual_seed(cfg.seed)
            apply_lora(root, self.lora_config(), generator=gen)
        self.summary = set_trainable(root, cfg.trainable_preset)
        self.params = [p for p in root.parameters() if p.requires_grad]
        self.vision_frozen = not any(p.requires_grad for p in root.vision.parameters())
        root.train()
        self.module, self.dist = for_training(ocr, cfg)
        self.non_finite = NonFiniteSteps(cfg.on_nonfinite)
        self.precision = Precision(cfg.dtype, self.device, root, master_weights=cfg.master_weights,
                                   bf16_frozen_base=cfg.bf16_frozen_base, distributed=self.dist.enabled,
                                   vision_cached=cfg.cache_vision and self.vision_frozen)
        self.compiler = layer_compiler(cfg, root, self.device, distributed=self.dist.enabled)
        # Clipping and the optimizer work on the float32 masters where there are some.
        self.step_params = [self.precision.stepped(p) for p in self.params]
        if self.dist.enabled and cfg.strategy == "fsdp" and eval_data and cfg.eval_every:
            raise TrainingError("evaluation during FSDP training is not supported (generation runs on rank 0 "
                                "alone, the weights are sharded over all ranks): set eval_every = 0 and run "
                                "`deepseek-ocr eval` on the saved model")
        self.optimizer = build_optimizer(root, lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                         betas=tuple(cfg.betas), eps=cfg.eps,
                                         substitute=self.precision.substitute,
                                         vision_lr_scale=cfg.vision_lr_scale)
        self.order = SampleOrder(len(train_data), seed=cfg.seed, rank=self.rank, world_size=self.world_size)
        self.state = TrainState(config=cfg.to_dict())
        if saved is not None:
            load_optimizer(resume, self.optimizer)
            self.state = train_state(saved)
            self.state.config = cfg.to_dict()
            self.order.load_state_dict(self.state.sampler)
            restore_rng(resume, saved)
        self.total_steps = cfg.total_steps(len(self.order))
        self.last_checkpoint: Path | None = Path(resume) if resume is not None else None
        self._saved_step = self.state.step if resume is not None else -1
        self._stop_signal: int | None = None
        self._rows: dict[int, torch.Tensor] = {}

    def lora_config(self) -> LoraConfig:
        c = self.cfg
        kw = {} if c.lora_targets is None else {"target_modules": c.lora_targets}
        if c.lora_modules_to_save:
            kw["modules_to_save"] = tuple(c.lora_modules_to_save)
        return LoraConfig(r=c.lora_r, alpha=c.lora_alpha if c.lora_alpha is not None else c.lora_r,
                          dropout=c.lora_dropout, use_rslora=c.lora_rslora, **kw)

    # ------------------------------------------------------------------------------- pieces
    def autocast(self):
        """bf16 autocast where the run computes in bf16 (precision.Precision); else nothing."""
        return self.precision.autocast()

    def lr(self, step: int) -> float:
        return lr_at(step, self.cfg.learning_rate, total=self.total_steps, warmup=self.cfg.warmup_steps,
                     schedule=self.cfg.schedule, min_ratio=self.cfg.min_lr_ratio)

    def request_stop(self, signum: int = signal.SIGINT) -> None:
        """Ask the loop to checkpoint and return after the current step (what a signal does)."""
        self._stop_signal = signum

    def _attach_rows(self, batch: list[PreparedInputs], indices: list[int]) -> None:
        """With a frozen vision tower and `cache_vision`, encode each sample's image once."""
        if not (self.cfg.cache_vision and self.vision_frozen):
            return
        todo = [(inp, i) for inp, i in zip(batch, indices) if inp.has_image and inp.vision_rows is None]
        fresh = [(inp, i) for inp, i in todo if i not in self._rows]
        if fresh:
            rows = self.ocr.encode_images([inp for inp, _ in fresh])
            for (_inp, i), r in zip(fresh, rows):
                self._rows[i] = r.clone()  # out of inference mode, so autograd may use it
        for inp, i in todo:
            inp.vision_rows = self._rows[i]

    def _next_batches(self, prefetch: StepPrefetcher) -> tuple[list[list[PreparedInputs]], list[int], dict]:
        b = self.cfg.batch_size
        # `position` is the data position of *this* step (taken with its indices, before the
        # next step is read ahead): a checkpoint written after training on it resumes with the next.
        more = self.state.step + 1 < self.total_steps and self._stop_signal is None
        items, indices, position = prefetch.next(more)
        self._attach_rows(items, indices)
        return [items[j:j + b] for j in range(0, len(items), b)], indices, position

    def _oom(self, micro: list[PreparedInputs]) -> TrainingOOMError:
        lengths = [inp.num_tokens for inp in micro]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        c = self.cfg
        return TrainingOOMError(
            f"out of memory at step {self.state.step + 1} on {self.device} with batch_size={c.batch_size} "
            f"(grad_accum={c.grad_accum}), sequence lengths {lengths} (longest {max(lengths)} tokens). "
            "Try: a smaller batch_size with a larger grad_accum (same samples per step), "
            "gradient_checkpointing=true, a smaller mode or max_length, or LoRA instead of full fine-tuning. "
            f"The last good checkpoint is {self.last_checkpoint or 'none (no checkpoint written yet)'}.")

    def _step(self, micro: list[list[PreparedInputs]], indices: list[int]) -> dict:
        """One optimizer update over the accumulated micro-batches; returns its record."""
        # Normalization: the update must equal one step on the whole accumulated batch, whose
        # objective (as the official code defines it) is the cross entropy averaged over every
        # labelled token of the batch. A micro-batch's `ce` is the mean over its own labels, so
        # it is weighted by its share of the step's labels (n_i / N; summed over ranks, and
        # times world_size because DDP averages gradients). Averaging micro-batch means instead
        # would over-weight the tokens of short answers. The balance loss is a mean over
        # sequences, so it is weighted by the micro-batch's share of the step's sequences.
        n_labels = [sum(_labels(inp) for inp in mb) for mb in micro]
        total_labels = int(all_reduce_sum(sum(n_labels), self.dist))  # float64: exact below 2**53
        total_seqs = sum(len(mb) for mb in micro) * self.world_size
        step = self.state.step
        tokens = 0
        # The losses stay on the device until the step's one wait for the GPU, after the gradient
        # norm (read at once, the host could not queue the backward pass until the forward had run);
        # a non-finite loss is still found before the optimizer touches the weights.
        losses, ces, auxes = [], [], []
        for j, mb in enumerate(micro):
            # DDP: reduce gradients once, after the last micro-batch of the step.
            no_sync = j < len(micro) - 1 and hasattr(self.module, "no_sync")
            sync = self.module.no_sync() if no_sync else contextlib.nullcontext()
            sync.__enter__()  # left in the `finally` below, after this micro-batch's backward
            # With `compile`: the layers compiled for the forward and its backward (compiled.py).
            compiled = self.compiler.active(step + 1) if self.compiler else contextlib.nullcontext()
            try:
                with compiled:
                    with self.autocast():
                        out = self.module(mb, aux_loss=self.cfg.aux_loss,
                                          gradient_checkpointing=self.cfg.gradient_checkpointing)
                    objective = out.ce * (out.num_labels * self.world_size / total_labels)
                    if self.cfg.aux_loss:
                        objective = objective + out.aux * (len(mb) * self.world_size / total_seqs)
                    objective.backward()
                self.precision.after_backward()
            except torch.OutOfMemoryError:
                raise self._oom(mb) from None
            finally:
                sync.__exit__(None, None, None)
            losses.append(out.loss.detach())
            ces.append(out.ce.detach() * out.num_labels)
            auxes.append(out.aux.detach() * len(mb))
            tokens += out.num_tokens
        max_norm = self.cfg.max_grad_norm if self.cfg.max_grad_norm > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.step_params, max_norm)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
        values = torch.stack([v.float().reshape(()).to(norm.device) for v in (*losses, *ces, *auxes, norm)]).tolist()
        n = len(micro)
        ce_sum, aux_sum, grad_norm = sum(values[n:2 * n]), sum(values[2 * n:3 * n]), values[-1]
        error = find_non_finite(values[:n], grad_norm, micro, indices, self.cfg.batch_size, step + 1,
                                self.last_checkpoint)
        lr = self.lr(step)
        error = self.non_finite.skip(error, step + 1, self.dist)  # raises under "stop", or ten skips in a row
        if error is not None:  # the weights stay; the step counts (its samples are consumed)
            self.optimizer.zero_grad(set_to_none=True)
            return {"step": step + 1, "skipped": str(error), "loss": None, "ce": None, "aux": None, "lr": lr,
                    "grad_norm": grad_norm if math.isfinite(grad_norm) else str(grad_norm),  # JSON has no NaN
                    "tokens": int(all_reduce_sum(tokens, self.dist)),
                    "samples": len(indices) * self.world_size}
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.after_step()
        ce = ce_sum / max(sum(n_labels), 1)
        aux = aux_sum / sum(len(mb) for mb in micro)
        if self.world_size > 1:  # the record describes the whole step, every rank's samples
            ce = all_reduce_sum(ce_sum, self.dist) / max(total_labels, 1)
            aux = all_reduce_sum(aux_sum, self.dist) / total_seqs
            tokens = int(all_reduce_sum(tokens, self.dist))
        return {"step": step + 1, "loss": ce + aux if self.cfg.aux_loss else ce, "ce": ce, "aux": aux,
                "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "samples": len(indices) * self.world_size}

    # --------------------------------------------------------------------------- checkpoints
    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; once per step). Under FSDP2 every
        rank takes part in gathering the sharded tensors; the files hold whole tensors, so a
        run resumes on any number of ranks."""
        if self._saved_step == self.state.step:
            return self.last_checkpoint
        failed = None
        if self.rank != 0:
            if self.dist.enabled and self.cfg.strategy == "fsdp":
                gather_sharded(self.ocr.model, self.optimizer)
        else:
            try:
                with self.precision.float32(frozen=False):  # a checkpoint holds only trained tensors
                    self.last_checkpoint = save_checkpoint(
                        self.output_dir, model=self.ocr.model, optimizer=self.optimizer, state=self.state,
                        lora=self.cfg.uses_lora, keep=self.cfg.keep_checkpoints, base_model=self.cfg.model)
            except CheckpointWriteError as exc:
                failed = exc
        step = self.state.step
        # Rank 0's failure to write (a full disk) stops every rank, not rank 0 alone.
        raise_together(failed, self.dist, lambda: CheckpointWriteError(
            f"rank 0 could not write the checkpoint of step {step} (its error says why); rank {self.rank} "
            "stops with it. Free space and resume with --resume auto."))
        self._saved_step = step
        return self.last_checkpoint

    def run_eval(self, monitor: Monitor | None = None) -> dict | None:
        if not self.eval_data or self.rank != 0:
            return None
        c = self.cfg
        with self.precision.float32():
            result = evaluate(self.ocr, self.eval_data, batch_size=c.eval_batch_size or c.batch_size,
                              max_new_tokens=c.eval_max_new_tokens, autocast=self.autocast,
                              predictions_path=self.output_dir / "eval" / f"step-{self.state.step:06d}.jsonl")
        summary = result.to_dict()
        if monitor is not None:
            monitor.write({"step": self.state.step, "eval": summary})
            monitor.note(f"step {self.state.step}: eval loss {summary['loss']:.4f}, cer {summary.get('cer', float('nan')):.4f}, "
                         f"repetition {summary.get('repetition', 0)}")
        return summary

    # ----------------------------------------------------------------------------------- run
    def _install_signals(self) -> dict:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, _frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: stop now, without a checkpoint
            self._stop_signal = signum
            logger.warning("signal %d: writing a checkpoint after this step, then stopping", signum)

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def train(self) -> TrainResult:
        """Run until `total_steps` (or a stop signal); see the module docstring for errors."""
        c = self.cfg
        self.output_dir.mkdir(parents=True, exist_ok=True)
        monitor = Monitor(self.output_dir, total=self.total_steps, initial=self.state.step,
                          enabled=self.rank == 0, progress=c.progress, tensorboard=c.tensorboard)
        monitor.write({"event": "resume" if self._saved_step >= 0 else "start", "step": self.state.step,
                       "total_steps": self.total_steps, "trainable": self.summary.trainable})
        old_handlers = self._install_signals()
        cleanup = contextlib.ExitStack()
        prefetch = StepPrefetcher(self.train_data, self.order, c.batch_size * c.grad_accum, c.prepare_workers)
        cleanup.callback(prefetch.close)
        # The preparing threads take the GIL in parts; short turns keep the training thread's
        # kernel launches from waiting 5 ms each time it wants it back (engine/gil.py).
        cleanup.enter_context(short_gil_turns())
        self.precision.start()  # bf16 copies in with master weights; float32 back however it ends
        cleanup.callback(self.precision.finish)
        last_eval = None
        window_start, window_tokens, window_samples = time.perf_counter(), 0, 0
        try:
            while self.state.step < self.total_steps:
                if self._stop_signal is not None:
                    break
                t0 = time.perf_counter()
                micro, indices, position = self._next_batches(prefetch)
                record = self._step(micro, indices)
                self.state.step += 1
                self.state.sampler = position
                self.state.tokens_seen += record["tokens"]
                self.state.samples_seen += record["samples"]
                self.state.elapsed_s += time.perf_counter() - t0
                window_tokens += record["tokens"]
                window_samples += record["samples"]
                short = {k: record[k] for k in ("step", "loss", "ce", "aux", "lr", "grad_norm")}
                self.state.losses.append(short)
                step = self.state.step
                if step % c.log_every == 0 or step == self.total_steps or "skipped" in record:
                    dt = max(time.perf_counter() - window_start, 1e-9)
                    record.update(tokens_per_s=window_tokens / dt, samples_per_s=window_samples / dt,
                                  epoch=position["epoch"])
                    monitor.write(record)
                    window_start, window_tokens, window_samples = time.perf_counter(), 0, 0
                monitor.advance(1, record)
                if c.checkpoint_every and step % c.checkpoint_every == 0:
                    self.save()
                if c.eval_every and step % c.eval_every == 0 and step < self.total_steps:
                    last_eval = self.run_eval(monitor)
                if self.on_step is not None:  # last: it sees the step's checkpoint and evaluation
                    self.on_step(self, record)
            interrupted = self._stop_signal is not None and self.state.step < self.total_steps
            self.save()
            result = TrainResult(self.state.step, list(self.state.losses), interrupted, self.last_checkpoint)
            if interrupted:
                monitor.write({"event": "interrupted", "step": self.state.step, "signal": self._stop_signal,
                               "checkpoint": str(self.last_checkpoint)})
                return result
            result.eval = self.run_eval(monitor) or last_eval
            self.precision.finish()
            result.adapter_dir, result.model_dir = export_run(
                self.ocr, self.module, self.cfg, rank=self.rank,
                fsdp=self.dist.enabled and self.cfg.strategy == "fsdp", output_dir=self.output_dir)
            monitor.write({"event": "end", "step": self.state.step, "elapsed_s": self.state.elapsed_s})
            return result
        finally:
            cleanup.close()
            for s, h in old_handlers.items():
                signal.signal(s, h)
            monitor.close()
