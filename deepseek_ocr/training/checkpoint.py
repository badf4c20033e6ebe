"""Training checkpoints: written atomically, kept K at a time, read back without pickle.

    OUTPUT/checkpoints/step-000500/
        adapter/                      LoRA runs: the adapter in the PEFT format (adapter.py)
        trainable.safetensors         other runs: every trainable tensor, by parameter name
        optimizer.safetensors         AdamW's moment tensors, keyed `<parameter name>::<slot>`
        optimizer.json                AdamW's scalars (per-parameter step) and group settings
        rng.safetensors               torch's CPU and CUDA generator states (uint8 tensors)
        state.json                    step, data position, loss history, config, python and
                                      numpy RNG states, counters

A checkpoint is written into `step-XXXXXX.tmp/`, every file and the folder are fsynced, and the
folder is renamed into place: a crash leaves either the previous checkpoints or the new one
complete, never half of one. Only tensors (safetensors) and JSON are written; nothing is ever
unpickled on load, so a checkpoint from elsewhere cannot run code.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import DeepseekOCRError
from .adapter import load_adapter, save_adapter
from .errors import TrainingError

FORMAT_VERSION = 1
CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")
SLOT_SEP = "::"


class CheckpointError(DeepseekOCRError):
    """A training checkpoint is missing, incomplete, or does not fit this run."""


class CheckpointWriteError(CheckpointError, TrainingError):
    """A checkpoint could not be written (a full disk, a lost mount): the run stops; the
    checkpoints written before stay as they were."""


@dataclass
class TrainState:
    """What the loop needs besides tensors to continue a run exactly.

    Attributes:
        step: optimizer updates done.
        sampler: `SampleOrder.state_dict()` right after the last *trained* batch was taken.
        losses: one record per update (step, loss, ce, aux, lr, grad_norm).
        tokens_seen, samples_seen: counters over the whole run (this rank).
        elapsed_s: training seconds over the whole run.
        config: the `TrainConfig` as a dict.
    """

    step: int = 0
    sampler: dict = field(default_factory=dict)
    losses: list[dict] = field(default_factory=list)
    tokens_seen: int = 0
    samples_seen: int = 0
    elapsed_s: float = 0.0
    config: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------- locations
def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints (renamed into place) of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and p.is_dir() and (p / "state.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def resolve_resume(spec: str | os.PathLike | None, output_dir: str | os.PathLike) -> Path | None:
    """`auto` -> the latest checkpoint of `output_dir` (None when it has none: a fresh start);
    a path -> that checkpoint folder (an error when it is not one)."""
    if spec is None:
        return None
    if str(spec) == "auto":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    path = Path(spec)
    if not (path / "state.json").is_file():
        raise CheckpointError(f"--resume {spec}: not a training checkpoint folder (no state.json); "
                              f"checkpoints are {Path(output_dir) / CHECKPOINTS}/step-NNNNNN")
    return path


# ------------------------------------------------------------------------------------- writing
def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def full(t: torch.Tensor) -> torch.Tensor:
    """A plain tensor: an FSDP2 shard (DTensor) is gathered whole (a collective: every rank
    must call this in the same order), anything else is returned as it is."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def trainable_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: full(p.detach()) for n, p in model.named_parameters() if p.requires_grad}


def gather_sharded(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """On ranks other than 0 under FSDP2: take part in the gathers rank 0's `save_checkpoint`
    makes (same tensors, same order), writing nothing."""
    trainable_tensors(model)
    optimizer_payload(optimizer)


def optimizer_payload(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, scalars) of AdamW's state, keyed by parameter name (param groups carry `names`)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, float]] = {}
    groups = []
    for group in optimizer.param_groups:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in group.items() if k != "params"})
        for name, p in zip(group["names"], group["params"]):
            for slot, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.ndim > 0:
                    tensors[f"{name}{SLOT_SEP}{slot}"] = full(value.detach()).cpu().contiguous()
                else:  # `step` (a 0-d tensor, or a float in older torch)
                    scalars.setdefault(name, {})[slot] = float(value)
    return tensors, {"groups": groups, "scalars": scalars}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    return tensors, {"python": [version, list(internal), gauss],
                     "numpy": [np_state[0], np_state[1].tolist(), *[float(x) if isinstance(x, float) else x
                                                                   for x in np_state[2:]]]}


def save_checkpoint(output_dir: str | os.PathLike, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, state: TrainState, lora: bool, keep: int,
                    base_model: str | None = None) -> Path:
    """Write the checkpoint of `state.step` atomically, then drop all but the `keep` latest.

    `model` is the network (`nn.Module`); with `lora` its adapter is written in the PEFT
    format, otherwise every trainable tensor. Returns the checkpoint folder.
    """
    root = Path(output_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / step_dir_name(state.step)
    tmp = root / (final.name + ".tmp")
    if tmp.exists():  # left by a crash in the middle of a write
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        # One payload at a time (the weights, then AdamW's two moments): host memory holds one.
        if lora:
            save_adapter(model, tmp / "adapter", base_model_name_or_path=base_model)
        else:
            save_file({k: v.cpu().contiguous() for k, v in trainable_tensors(model).items()},
                      str(tmp / "trainable.safetensors"), metadata={"format": "pt"})
        opt_tensors, opt_json = optimizer_payload(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"format": "pt"})
        del opt_tensors
        _write_json(tmp / "optimizer.json", opt_json)
        rng_tensors, rng_json = rng_state()
        save_file(rng_tensors, str(tmp / "rng.safetensors"), metadata={"format": "pt"})
        payload = {"format_version": FORMAT_VERSION, "lora": lora, "rng": rng_json,
                   "torch_version": torch.__version__, "saved_at": time.time(), **asdict(state)}
        _write_json(tmp / "state.json", payload)  # written last: its presence marks a full folder
        for path in tmp.rglob("*"):
            if path.is_file():
                _fsync_file(path)
        for path in [*(p for p in tmp.rglob("*") if p.is_dir()), tmp]:
            _fsync_dir(path)
    except (OSError, SafetensorError) as exc:  # a full disk, a lost mount, a read-only folder
        shutil.rmtree(tmp, ignore_errors=True)  # the partial folder: its space back, nothing to mistake
        kept = list_checkpoints(output_dir)
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {state.step} to {final}: {exc}. The checkpoints "
            f"written before are kept (latest: {kept[-1][1] if kept else 'none'}); free space and resume "
            "with --resume auto.") from None
    old = None
    if final.exists():  # the same step again (resumed from an older checkpoint, or saved twice)
        old = root / (final.name + ".old")
        if old.exists():
            shutil.rmtree(old)
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(root)
    if old is not None:
        shutil.rmtree(old)
    for _step, path in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path)
    return final


# ------------------------------------------------------------------------------------- reading
def read_state(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        data = json.loads((path / "state.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable state.json ({exc})") from None
    if data.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {data.get('format_version')!r}, this version "
                              f"reads {FORMAT_VERSION}")
    return data


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent}: incomplete checkpoint, {path.name} is missing")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def load_weights(path: str | os.PathLike, model: torch.nn.Module, *, lora: bool) -> None:
    """Put the checkpoint's trained tensors into `model` (before the optimizer is built).

    LoRA: the adapter is added to the (LoRA-free) base model. Otherwise every saved tensor must
    name a parameter of the model with the same shape; the caller sets `requires_grad` after.
    """
    path = Path(path)
    if lora:
        if not (path / "adapter").is_dir():
            raise CheckpointError(f"{path}: no adapter/ folder (was this run trained with LoRA?)")
        load_adapter(model, path / "adapter")
        return
    saved = _read_tensors(path / "trainable.safetensors")
    params = dict(model.named_parameters())
    problems = [f"{k}: no such parameter" for k in sorted(set(saved) - set(params))]
    problems += [f"{k}: shape {list(v.shape)}, the model has {list(params[k].shape)}"
                 for k, v in saved.items() if k in params and v.shape != params[k].shape]
    if problems:
        raise CheckpointError(f"{path}: the checkpoint does not fit this model:\n  " + "\n  ".join(problems[:20]))
    with torch.no_grad():
        for k, v in saved.items():
            params[k].copy_(v)


def load_optimizer(path: str | os.PathLike, optimizer: torch.optim.Optimizer) -> None:
    """Restore AdamW's state by parameter name; the groups must hold the same parameters."""
    path = Path(path)
    tensors = _read_tensors(path / "optimizer.safetensors")
    try:
        meta = json.loads((path / "optimizer.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable optimizer.json ({exc})") from None
    saved_names = [n for g in meta["groups"] for n in g["names"]]
    names = [n for g in optimizer.param_groups for n in g["names"]]
    if sorted(saved_names) != sorted(names):
        missing, extra = sorted(set(names) - set(saved_names)), sorted(set(saved_names) - set(names))
        raise CheckpointError(f"{path}: the optimizer state covers other parameters than this run trains "
                              f"(missing {missing[:5]}, extra {extra[:5]}): same preset and LoRA settings?")
    per_param: dict[str, dict] = {}
    for key, t in tensors.items():
        name, slot = key.rsplit(SLOT_SEP, 1)
        per_param.setdefault(name, {})[slot] = t
    for name, slots in meta["scalars"].items():
        for slot, value in slots.items():
            per_param.setdefault(name, {})[slot] = torch.tensor(value, dtype=torch.float32)
    # FSDP2: each moment is laid out like its (sharded) parameter, on any number of ranks.
    params = {n: p for g in optimizer.param_groups for n, p in zip(g["names"], g["params"])}
    for name, slots in per_param.items():
        p = params.get(name)
        if p is not None and hasattr(p, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor
            for slot, t in slots.items():
                if t.ndim > 0:
                    slots[slot] = distribute_tensor(t.to(p.device, p.dtype), p.device_mesh, p.placements)
    index = {n: i for i, n in enumerate(names)}
    by_name = {g["group"]: g for g in meta["groups"]}
    groups = []
    for g in optimizer.param_groups:
        saved = dict(by_name.get(g["group"], {}))
        saved = {k: (tuple(v) if k == "betas" else v) for k, v in saved.items()}
        groups.append({**{k: v for k, v in g.items() if k != "params"}, **saved,
                       "params": [index[n] for n in g["names"]], "names": g["names"]})
    # load_state_dict casts the moments to each parameter's dtype and device and keeps `step`
    # where the implementation wants it (CPU tensor, or the device for fused/capturable AdamW).
    optimizer.load_state_dict({"state": {index[n]: s for n, s in per_param.items()}, "param_groups": groups})


def restore_rng(path: str | os.PathLike, state_json: dict) -> None:
    tensors = _read_tensors(Path(path) / "rng.safetensors")
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("torch_cuda_")),
                                       key=lambda k: int(k.rsplit("_", 1)[1]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    rng = state_json["rng"]
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def train_state(state_json: dict) -> TrainState:
    known = TrainState.__dataclass_fields__
    return TrainState(**{k: v for k, v in state_json.items() if k in known})
