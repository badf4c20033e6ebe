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
SHARD_NAME = "model-00001-of-000001.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_safetensors(path: Path, tensors: Iterable[tuple[str, torch.Tensor]],
                      metadata: dict[str, str] | None = None) -> int:
    """Stream `(name, tensor)` pairs into a safetensors file (names sorted); returns data bytes.

    Written to a temporary name and renamed, so an interrupted save leaves no half file.
    """
    items = sorted(((n, t.detach()) for n, t in tensors), key=lambda x: x[0])
    header: dict = {"__metadata__": metadata or {"format": "pt"}}
    offset = 0
    for name, t in items:
        if t.dtype not in SAFETENSORS_DTYPES:
            raise WeightsError(f"{path}: cannot store {name} of dtype {t.dtype}")
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # the format pads the header to 8-byte alignment
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for _name, t in items:
            t = t.to("cpu").contiguous()
            f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    os.replace(tmp, path)
    return offset


def save_checkpoint(folder: str | os.PathLike, tensors: Iterable[tuple[str, torch.Tensor]],
                    config: dict, tokenizer_dir: str | os.PathLike | None) -> Path:
    """Write config.json, the safetensors shard, its index and the tokenizer files."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    materialized = list(tensors)
    total = write_safetensors(folder / SHARD_NAME, materialized)
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
