"""benchmarks/op_census.py's counting on a hand-built module (counts known by construction)."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_script import load_benchmark  # noqa: E402


def load():
    return load_benchmark("op_census")


def test_operators_are_counted_per_phase_and_module_views_left_out():
    oc = load()
    model = torch.nn.Module()
    model.vision = torch.nn.Module()
    model.vision.clip = torch.nn.Linear(4, 3, bias=False)  # forward: mm (+ t, a view)
    model.decoder = torch.nn.Module()
    model.decoder.layers = torch.nn.ModuleList([torch.nn.Module()])
    model.decoder.layers[0].mlp = torch.nn.ReLU()  # forward: relu
    census = oc.Census()
    handles = oc.hook_modules(model, census)
    x = torch.randn(2, 4)
    with census:
        census.phase = "forward"
        h = model.vision.clip(x)
        y = model.decoder.layers[0].mlp(h)
        z = (y * 2).sum()  # mul, sum: charged to no module
        census.phase = "other"
        _ = z.view(1)  # a view: no kernel, not counted
    for handle in handles:
        handle.remove()
    assert census.by_module == {"vision.clip": 1, "decoder.layer.mlp": 1}
    assert dict(census.by_phase["forward"]) == {"mm": 1, "relu": 1, "mul": 1, "sum": 1}
    assert sum(census.by_phase["other"].values()) == 0
    assert oc.group_of("vision.sam.blocks.3") == "vision.sam"
    assert oc.group_of("decoder.layers.7.self_attn") == "decoder.layer.self_attn"
