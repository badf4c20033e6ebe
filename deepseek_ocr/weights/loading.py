"""Load the official checkpoint: resolve the folder, validate every file, fill a meta model.

Peak memory stays near one copy of the weights: the model is built on the meta device (no
storage), each checkpoint tensor is read, converted and assigned one at a time, and the
per-expert tensors are copied straight into their preallocated stacked parameter.
Nothing here unpickles: `.bin`/`.pt` checkpoints are refused with a message.
"""
from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn

from ..config import ModelConfig
from ..errors import CheckpointNotFoundError, WeightsError
from ..modeling import DeepseekOCRModel
from .names import expected_tensors, slot_for
from .safetensors_io import load_tensors, read_header, refuse_pickles

logger = logging.getLogger(__name__)

DEFAULT_REPO = "deepseek-ai/DeepSeek-OCR"
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_HUB_PATTERNS = ["*.json", "*.safetensors"]


def resolve_checkpoint(path_or_repo: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; otherwise a hub repo id fetched through `huggingface_hub`
    (which honours `HF_HUB_OFFLINE`, `HF_HOME`/`HF_HUB_CACHE` and the local cache)."""
    p = Path(os.fspath(path_or_repo)).expanduser()
    if p.is_dir():
        return p
    text = os.fspath(path_or_repo)
    looks_like_repo = text.count("/") == 1 and not text.startswith((".", "/", "~")) and not p.exists()
    if not looks_like_repo:
        raise CheckpointNotFoundError(f"checkpoint folder not found: {text}")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError as err:  # pragma: no cover - huggingface_hub is a dependency
        raise WeightsError(f"{text} is not a local folder and huggingface_hub is not installed") from err
    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=_HUB_PATTERNS))
    except LocalEntryNotFoundError as err:
        raise CheckpointNotFoundError(
            f"{text}: not in the local Hugging Face cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}). Download it once with "
            f"`hf download {text}` (the command of huggingface_hub >= 0.34), or pass a local "
            f"folder.") from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise WeightsError(f"{text}: could not fetch from the hub: {err}") from err


def shard_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint, from the index when there is one."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
            if not all(isinstance(n, str) and Path(n).name == n for n in names):
                raise ValueError(f"shard names must be file names inside the folder, found {names}")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise WeightsError(f"{index}: malformed index: {err}") from err
        files = [folder / n for n in names]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise WeightsError(f"{index}: lists shard files that do not exist: {missing}")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        refuse_pickles(folder)
        raise WeightsError(f"{folder}: no .safetensors files")
    return files


def check_tensors(found: dict[str, tuple[torch.dtype, tuple[int, ...], Path]],
                  expected: dict[str, tuple[tuple[int, ...], object]], folder: Path) -> None:
    """One error listing every missing, unexpected, mis-shaped or non-float tensor."""
    problems = []
    for name in sorted(expected.keys() - found.keys()):
        problems.append(f"missing: {name} (expected shape {list(expected[name][0])})")
    for name in sorted(found.keys() - expected.keys()):
        problems.append(f"unexpected: {name} (shape {list(found[name][1])}, in {found[name][2].name})")
    for name in sorted(found.keys() & expected.keys()):
        dtype, shape, file = found[name]
        if tuple(shape) != tuple(expected[name][0]):
            problems.append(f"wrong shape: {name}: expected {list(expected[name][0])}, found {list(shape)} "
                            f"(in {file.name})")
        if dtype not in FLOAT_DTYPES:
            problems.append(f"wrong dtype: {name}: expected a float type, found {dtype} (in {file.name})")
    if problems:
        head = f"{folder}: the checkpoint does not match config.json ({len(problems)} problem(s)):\n  "
        raise WeightsError(head + "\n  ".join(problems))


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_path, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    # Trainable by default, as any nn.Module: inference runs under inference_mode, where this
    # costs nothing, and `DeepseekOCR.loss` is differentiable straight after loading.
    setattr(module, leaf, nn.Parameter(value, requires_grad=True))


def load_model(folder: Path, cfg: ModelConfig, *, device: torch.device, dtype: torch.dtype
               ) -> DeepseekOCRModel:
    """Build the model on the meta device and fill it from `folder`'s safetensors."""
    files = shard_files(folder)
    found: dict[str, tuple[torch.dtype, tuple[int, ...], Path]] = {}
    for f in files:
        header = read_header(f)
        for name, entry in header.tensors.items():
            if name in found:
                raise WeightsError(f"{name} is stored twice: in {found[name][2]} and {f}")
            found[name] = (entry.dtype, tuple(entry.shape), f)
    with torch.device("meta"):
        model = DeepseekOCRModel(cfg)
    expected = expected_tensors(model)
    check_tensors(found, expected, folder)

    # Stacked expert parameters are allocated up front and filled slice by slice.
    meta_state = model.state_dict(keep_vars=True)
    stacked = {}
    for _shape, slot in expected.values():
        if slot.expert is not None and slot.param not in stacked:
            shape = meta_state[slot.param].shape
            stacked[slot.param] = torch.empty(shape, dtype=dtype, device=device)
    by_file = defaultdict(list)
    for name in expected:
        by_file[found[name][2]].append(name)
    inter = cfg.decoder.moe_intermediate_size
    for f, names in by_file.items():
        for name, tensor in load_tensors(f, names):
            slot = slot_for(name, inter)
            if slot.expert is None:
                # The reader's tensor is freshly allocated: converting in place of copying keeps
                # one copy of each weight (none at all when dtype and device already match).
                _set_param(model, slot.param, tensor.to(device=device, dtype=dtype))
                continue
            target = stacked[slot.param][slot.expert]
            if slot.rows is not None:
                target = target[slot.rows[0]:slot.rows[1]]
            target.copy_(tensor)
    for name, value in stacked.items():
        _set_param(model, name, value)
    still_meta = [n for n, p in model.named_parameters() if p.is_meta]
    if still_meta:  # cannot happen after check_tensors; a guard against a table bug
        raise WeightsError(f"{folder}: parameters left unloaded: {still_meta[:10]}")
    return model.eval()
