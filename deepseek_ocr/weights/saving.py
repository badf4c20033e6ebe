"""Write a model back in the official checkpoint layout (config, index, one safetensors file).

Experts are split back into per-expert tensors as views of the stacked parameters, and the
file is streamed tensor by tensor, so saving needs no second copy of the weights (the
`safetensors` library's writer refuses tensors that share storage, which split experts do).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable

import torch

from ..errors import WeightsError

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
                      torch.float64: "F64", torch.int64: "I64", torch.int32: "I32",
                      torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL"}
DTYPE_NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHARD_NAME = "model-00001-of-000001.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_safetensors(path: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                      metadata: dict[str, str] | None = None, dtype: torch.dtype | None = None) -> int:
    """Stream `(name, tensor)` pairs into a safetensors file (names sorted); returns data bytes.

    `dtype`: floating-point tensors are converted to it one at a time as they are written, so
    a float32 model saved in bfloat16 never holds a converted copy of all its weights.
    Written to a temporary name and renamed, so an interrupted save leaves no half file.
    """
    def stored(t: torch.Tensor) -> torch.dtype:
        return dtype if dtype is not None and t.is_floating_point() else t.dtype

    items = sorted(((n, t.detach()) for n, t in tensors), key=lambda x: x[0])
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in items:
        if stored(t) not in SAFETENSORS_DTYPES:
            raise WeightsError(f"{path}: cannot store {name} of dtype {t.dtype}")
        size = t.numel() * torch.empty((), dtype=stored(t)).element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[stored(t)], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _name, t in items:
            t = t.to(device="cpu", dtype=stored(t)).contiguous()
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    os.replace(tmp, path)
    return offset


def _storage_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise WeightsError(f"cannot save a checkpoint in {dtype}; choose one of {sorted(DTYPE_NAMES)}")
        return dtype
    name = str(dtype).replace("torch.", "").lower()
    if name not in DTYPE_NAMES:
        raise WeightsError(f"cannot save a checkpoint in {dtype!r}; choose one of {sorted(DTYPE_NAMES)}")
    return DTYPE_NAMES[name]


def _with_dtype(config: dict, name: str) -> dict:
    """`config` with `torch_dtype` (top level and the decoder's section) set to `name`."""
    config = {**config, "torch_dtype": name}
    if isinstance(config.get("language_config"), dict):
        config["language_config"] = {**config["language_config"], "torch_dtype": name}
    return config


def save_checkpoint(folder: str | os.PathLike, tensors: Iterable[tuple[str, torch.Tensor]],
                    config: dict, tokenizer_dir: str | os.PathLike | None,
                    dtype: str | torch.dtype | None = None) -> Path:
    """Write config.json, the safetensors shard, its index and the tokenizer files.

    Args:
        folder: created if missing.
        tensors: `(official name, tensor)` pairs.
        config: the config.json content; its `torch_dtype` is rewritten to what is stored.
        tokenizer_dir: where to copy the tokenizer files from (None: none copied).
        dtype: store the floating-point tensors in this dtype ("bfloat16", torch.float16, ...);
            None stores them as they are.
    """
    folder = Path(folder)
    target = None if dtype is None else _storage_dtype(dtype)
    folder.mkdir(parents=True, exist_ok=True)
    materialized = list(tensors)
    stored = {target or t.dtype for _, t in materialized if t.is_floating_point()}
    if len(stored) == 1:  # config.json says what the file holds, not what the model was read from
        config = _with_dtype(config, str(stored.pop()).replace("torch.", ""))
    total = write_safetensors(folder / SHARD_NAME, materialized, dtype=target)
    index = {"metadata": {"total_size": total},
             "weight_map": {n: SHARD_NAME for n, _ in sorted(materialized, key=lambda x: x[0])}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file() and src.resolve() != (folder / name).resolve():
                shutil.copyfile(src, folder / name)
    return folder
