"""One learning run split over several device calls (a call lasts at most 10 minutes; the run's
start and its evaluations take ~70 s of it, so one call holds ~8 training minutes).

`save_state` writes what the next call needs to continue: the trained parameters, AdamW's
moments and step counts, the run's counters and its log so far. `load_state` puts them back
into a model and an optimizer built by the same command line. Tensors go to safetensors, the
rest to JSON: no pickles. Parameters that do not train are not saved: the same seed rebuilds
them (the config saved beside them is checked on load).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

TENSORS = "state.safetensors"
META = "state.json"


class StateMismatch(ValueError):
    """The saved state does not belong to this run's model, optimizer or config."""


def save_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, counters: dict, log: dict,
               config: dict) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model/{n}": p.detach().to("cpu").contiguous()
               for n, p in model.named_parameters() if p.requires_grad}
    sd = opt.state_dict()
    for idx, state in sd["state"].items():
        for key, value in state.items():
            if not torch.is_tensor(value):
                raise StateMismatch(f"optimizer state {idx}/{key} is not a tensor ({type(value).__name__})")
            tensors[f"opt/{idx}/{key}"] = value.detach().to("cpu").contiguous()
    meta = {"counters": counters, "log": log, "config": config, "param_groups": sd["param_groups"]}
    # Written under temporary names, then renamed: a call killed while saving leaves the last
    # complete state (or none), never half of one.
    save_file(tensors, str(folder / (TENSORS + ".tmp")))
    (folder / (META + ".tmp")).write_text(json.dumps(meta))
    os.replace(folder / (TENSORS + ".tmp"), folder / TENSORS)
    os.replace(folder / (META + ".tmp"), folder / META)


def load_state(folder: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, config: dict,
               ignore: tuple[str, ...] = ()) -> tuple[dict, dict]:
    """Loads into `model` and `opt` in place; returns (counters, log). `config` must equal the
    saved one except for the keys in `ignore` (the time budget of this call, the output folder)."""
    folder = Path(folder)
    meta = json.loads((folder / META).read_text())
    differ = sorted(k for k in set(meta["config"]) | set(config)
                    if k not in ignore and meta["config"].get(k) != config.get(k))
    if differ:
        raise StateMismatch(f"{folder}: saved with other settings: " + ", ".join(
            f"{k}={meta['config'].get(k)!r} (now {config.get(k)!r})" for k in differ))
    tensors = load_file(str(folder / TENSORS))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    saved = {k[len("model/"):] for k in tensors if k.startswith("model/")}
    if saved != set(trained):
        raise StateMismatch(f"{folder}: the saved parameters are not this model's trainable ones "
                            f"({len(saved ^ set(trained))} names differ)")
    with torch.no_grad():
        for name, p in trained.items():
            p.copy_(tensors[f"model/{name}"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, idx, name = key.split("/", 2)
            state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["counters"], meta["log"]
