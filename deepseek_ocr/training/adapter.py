"""LoRA adapters on disk in the PEFT format (TRAINING.md §4), so peft and vLLM read ours and we
read theirs: `adapter_config.json` and `adapter_model.safetensors` with keys
`base_model.model.<official module path>.lora_A.weight` (`[r, in]`) / `.lora_B.weight`
(`[out, r]`), routed experts per expert, and full tensors of `modules_to_save` under
`base_model.model.<official tensor name>` (where peft puts them once the adapter name is cut).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..weights.names import expand_param, official_module_name
from .lora import (PEFT_PREFIX, AdapterError, LoraConfig, _matches, adapter_views, apply_lora,
                   lora_config, root_module, unload)

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"

# adapter_config fields that change the math; any other value than these we cannot honour.
_NEUTRAL = {"use_dora": (False, None), "rank_pattern": ({}, None), "alpha_pattern": ({}, None),
            "bias": ("none", None), "fan_in_fan_out": (False, None), "layers_to_transform": (None, []),
            "layers_pattern": (None, [], ""), "layer_replication": (None, []), "lora_bias": (False, None),
            "target_parameters": (None, []), "megatron_config": (None,), "use_qalora": (False, None),
            "peft_type": ("LORA",)}


def config_to_peft(cfg: LoraConfig, base_model_name_or_path: str | None) -> dict:
    """The adapter_config.json of `cfg` (peft's field names; lists, not tuples)."""
    targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
    out = dict(cfg.extra)
    out.update({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model_name_or_path,
        "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout, "target_modules": targets,
        "exclude_modules": (cfg.exclude_modules if cfg.exclude_modules is None or isinstance(cfg.exclude_modules, str)
                            else list(cfg.exclude_modules)),
        "bias": "none", "modules_to_save": None if cfg.modules_to_save is None else list(cfg.modules_to_save),
        "use_rslora": cfg.use_rslora, "use_dora": False, "rank_pattern": {}, "alpha_pattern": {},
        "fan_in_fan_out": False, "init_lora_weights": True, "inference_mode": True,
    })
    return out


def config_from_peft(data: dict, source: str = CONFIG_NAME) -> LoraConfig:
    """A `LoraConfig` from an adapter_config.json dict; refuses what it cannot honour."""
    if not isinstance(data, dict):
        raise AdapterError(f"{source}: expected a JSON object")
    problems = []
    for key, allowed in _NEUTRAL.items():
        if key in data and data[key] not in allowed:
            problems.append(f"{key} = {data[key]!r} is not supported (only {allowed[0]!r})")
    if "peft_type" not in data:
        problems.append("peft_type is missing (expected 'LORA')")
    for key in ("r", "lora_alpha", "target_modules"):
        if data.get(key) is None:
            problems.append(f"{key} is missing")
    if problems:
        raise AdapterError(f"{source}: adapter configuration this model cannot honour:", problems)
    known = {"r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora", "modules_to_save",
             "exclude_modules"}
    extra = {k: v for k, v in data.items() if k not in known and k not in _NEUTRAL}
    try:
        return LoraConfig(r=data["r"], alpha=data["lora_alpha"], dropout=data.get("lora_dropout") or 0.0,
                          target_modules=data["target_modules"], use_rslora=bool(data.get("use_rslora")),
                          modules_to_save=data.get("modules_to_save"),
                          exclude_modules=data.get("exclude_modules") or None, extra=extra)
    except AdapterError as exc:
        raise AdapterError(f"{source}: invalid adapter configuration:", exc.problems) from None


def saved_module_tensors(model, cfg: LoraConfig) -> Iterator[tuple[str, str, torch.Tensor]]:
    """(PEFT key, module parameter, tensor view) of every `modules_to_save` tensor."""
    if not cfg.modules_to_save:
        return
    root = root_module(model)
    for name, mod in root.named_modules():
        official = official_module_name(name) if name else None
        if official is None or not _matches(official, cfg.modules_to_save):
            continue
        for pname, p in mod.named_parameters(prefix=name):
            if ".lora_" in pname:
                continue
            for ckpt, _shape, slot in expand_param(pname, tuple(p.shape)):
                t = p.detach() if slot.expert is None else p.detach()[slot.expert]
                if slot.rows is not None:
                    t = t[slot.rows[0]:slot.rows[1]]
                yield PEFT_PREFIX + ckpt, pname, t


def _atomic_write(path: Path, write) -> None:
    """write(tmp_path), then rename over `path`: a crash leaves the old file or none, never half
    of one. The temporary is created by a plain open, so the file's mode follows the umask."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_adapter(model, folder: str | os.PathLike, cfg: LoraConfig | None = None,
                 base_model_name_or_path: str | None = None) -> Path:
    """Write the model's LoRA (and `modules_to_save`) as a PEFT adapter folder."""
    cfg = cfg or lora_config(model)
    if cfg is None:
        raise AdapterError("the model carries no LoRA to save (apply_lora or load_adapter first)")
    tensors = {k: v.contiguous().clone() for k, v in adapter_views(model).items()}
    if not tensors:
        raise AdapterError("the model carries no LoRA to save")
    tensors.update({k: t.contiguous().clone() for k, _p, t in saved_module_tensors(model, cfg)})
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _atomic_write(folder / WEIGHTS_NAME,
                  lambda p: save_file({k: v.cpu() for k, v in tensors.items()}, str(p), metadata={"format": "pt"}))
    text = json.dumps(config_to_peft(cfg, base_model_name_or_path), indent=2, sort_keys=True) + "\n"
    _atomic_write(folder / CONFIG_NAME, lambda p: p.write_text(text, encoding="utf-8"))
    return folder


def read_adapter_config(folder: str | os.PathLike) -> LoraConfig:
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise AdapterError(f"{folder}: no {CONFIG_NAME} (is this a PEFT LoRA adapter folder?)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdapterError(f"{path}: unreadable ({exc})") from None
    return config_from_peft(data, str(path))


def load_adapter(model, folder: str | os.PathLike, *, dtype: torch.dtype | None = None) -> LoraConfig:
    """Add the adapter in `folder` to the model (unmerged); returns its configuration.

    Every key and shape is checked before anything is copied: a mismatch raises `AdapterError`
    listing all problems and leaves the model as it was.
    """
    cfg = read_adapter_config(folder)
    path = Path(folder) / WEIGHTS_NAME
    if not path.is_file():
        raise AdapterError(f"{folder}: no {WEIGHTS_NAME}")
    root = root_module(model)
    apply_lora(root, cfg, dtype=dtype)
    try:
        expected = adapter_views(root)
        saved = {k: t for k, _p, t in saved_module_tensors(root, cfg)}
        with safe_open(str(path), "pt") as f:
            problems = _compare(f, {**expected, **saved})
            if problems:
                raise AdapterError(f"{path} does not fit this model:", problems)
            with torch.no_grad():
                for key, view in {**expected, **saved}.items():
                    view.copy_(f.get_tensor(key).to(view.device, view.dtype))
    except AdapterError:
        unload(root)
        raise
    except (OSError, SafetensorError) as exc:  # a corrupt file: the adapter's fault, model untouched
        unload(root)
        raise AdapterError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from exc
    return cfg


def _compare(f, expected: dict[str, torch.Tensor]) -> list[str]:
    found = set(f.keys())
    problems = [f"missing {k}" for k in sorted(set(expected) - found)]
    problems += [f"unexpected {k} (not a LoRA factor of a target of this model)" for k in sorted(found - set(expected))]
    for k in sorted(found & set(expected)):
        shape = list(f.get_slice(k).get_shape())
        if shape != list(expected[k].shape):
            problems.append(f"{k}: shape {shape}, the model needs {list(expected[k].shape)}")
    return problems
