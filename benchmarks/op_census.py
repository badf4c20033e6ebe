"""How many operators one training step of `paper` on "page" dispatches, and where: a proxy for
the host's share of the step (each operator costs the host ~10-30 us to dispatch and launch on
the H200's host, whatever the size of its tensors), counted on the CPU.

    python benchmarks/op_census.py [--weights fp32 master bf16] [--out census.json]

Weights as the trainer holds them (training/precision.py: fp32 under autocast, or `master`
copies; the frozen SAM in bf16 unless `--frozen-fp32` adds rows without that), or bf16 weights.
The model has the official depths and expert count (SAM 12 blocks, CLIP 24, decoder 12 layers
of 64 routed experts, top-6) at a narrow decoder width, and the page is a Gundam-like mode at
small sizes (a 256-px global view and 128-px crops), so a step takes seconds: the operators a
step runs do not depend on the widths or the image size, only on the code path. Every step runs
under bf16 autocast, as on CUDA, so autocast's weight casts are counted as the GPU pays for them.
The routed experts take the CPU's path of training/grouped_experts.py (`padded`: bmm) where CUDA
takes `grouped` (`_grouped_mm`): a handful of operators per layer differ.

Counted with a `TorchDispatchMode` (every aten operator that reaches a kernel, views included),
per phase (forward, backward, optimizer and the master weights' gather/refresh), and for the
forward per top-level module (hooks).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import make_batch  # noqa: E402

from deepseek_ocr import DeepseekOCR  # noqa: E402
from deepseek_ocr.processing.views import Mode  # noqa: E402
from deepseek_ocr.training.optim import build_optimizer  # noqa: E402
from deepseek_ocr.training.precision import Precision  # noqa: E402
from deepseek_ocr.training.trainable import set_trainable  # noqa: E402
from deepseek_ocr.weights.random import make_random_checkpoint  # noqa: E402

# Metadata-only operators: no kernel launch on CUDA (views, shape queries).
NO_KERNEL = {"view", "_unsafe_view", "reshape", "expand", "permute", "transpose", "t", "unsqueeze", "squeeze",
             "slice", "select", "as_strided", "split", "split_with_sizes", "unbind", "chunk", "narrow", "alias",
             "detach", "sym_size", "sym_stride", "sym_numel", "is_same_size", "_reshape_alias", "unflatten",
             "flatten", "view_as", "lift_fresh", "_has_compatible_shallow_copy_type", "promote_types",
             "result_type"}


class Census(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.phase, self.module = "other", None
        self.by_phase: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self.by_module: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name not in NO_KERNEL:
            self.by_phase[self.phase][name] += 1
            if self.phase == "forward" and self.module:
                self.by_module[self.module] += 1
        return func(*args, **(kwargs or {}))


def group_of(name: str) -> str:
    """The module a forward operator is charged to: SAM, CLIP, a decoder layer's attention or
    MoE, or the rest."""
    parts = name.split(".")
    if name.startswith(("vision.sam", "vision.clip")):
        return ".".join(parts[:2])
    if name.startswith("decoder.layers.") and len(parts) >= 4:
        return "decoder.layer." + parts[3]  # self_attn, mlp, input_layernorm, ...
    return parts[0] if parts else name


def hook_modules(model: torch.nn.Module, census: Census) -> list:
    handles, stack = [], []
    for name, mod in model.named_modules():
        if name.count(".") > 3 or not name:
            continue

        def pre(_m, _a, name=name):
            stack.append(group_of(name))
            census.module = stack[-1]

        def post(_m, _a, _o):
            stack.pop()
            census.module = stack[-1] if stack else None
        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    return handles


def census_step(folder: Path, weights: str, frozen_bf16: bool = True) -> dict:
    dtype = torch.bfloat16 if weights == "bf16" else torch.float32
    ocr = DeepseekOCR.from_pretrained(folder, device="cpu", dtype=dtype)
    set_trainable(ocr.model, "paper")
    ocr.model.train()
    precision = None
    if weights != "bf16":  # the trainer's precision (bf16 compute, as on CUDA): masters, bf16 frozen weights
        precision = Precision("bfloat16", torch.device("cpu"), ocr.model, master_weights=weights == "master",
                              distributed=False, bf16_frozen_base=frozen_bf16)
        precision.start()
    opt = build_optimizer(ocr.model, lr=1e-5, substitute=precision.substitute if precision else None)
    params = [precision.stepped(p) if precision else p for p in ocr.model.parameters() if p.requires_grad]
    spec = dict(mode=Mode(256, 128, True, name="census-page"), image="page", answers=[24, 24])
    batch = make_batch(ocr.tokenizer, spec, seed=0)
    census = Census()

    def step(count: bool):
        ctx = census if count else contextlib.nullcontext()
        with ctx:
            census.phase = "forward"
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = ocr.loss(batch)
            census.phase = "backward"
            out.loss.backward()
            census.phase = "masters"
            if precision:
                precision.after_backward()
            census.phase = "optimizer"
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            census.phase = "masters"
            if precision:
                precision.after_step()
            census.phase = "other"

    step(False)  # AdamW's states are made in the first step
    handles = hook_modules(ocr.model, census)
    step(True)
    for h in handles:
        h.remove()
    phases = {p: sum(c.values()) for p, c in census.by_phase.items()}
    total = collections.Counter()
    for c in census.by_phase.values():
        total.update(c)
    return {"weights": weights, "frozen_bf16": frozen_bf16 and weights != "bf16", "operators": sum(phases.values()), "by_phase": phases,
            "forward_by_module": dict(census.by_module.most_common()),
            "top_operators": dict(total.most_common(30))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--weights", nargs="+", default=["fp32", "master", "bf16"], choices=["fp32", "master", "bf16"])
    ap.add_argument("--frozen-fp32", action="store_true",
                    help="also count fp32 and master with the frozen weights (SAM) kept float32, cast at every use")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # bf16 values (as the official checkpoint's), loaded as float32: what the trainer gets
        folder = make_random_checkpoint(Path(tmp) / "census", layers=12, experts=64, topk=6, dtype=torch.bfloat16,
                                        hidden_size=64, heads=2, intermediate_size=128, moe_intermediate_size=32)
        runs = [(w, True) for w in a.weights] + [(w, False) for w in a.weights if a.frozen_fp32 and w != "bf16"]
        results = [census_step(folder, w, frozen) for w, frozen in runs]
    for r in results:
        label = r["weights"] + ("" if r["frozen_bf16"] or r["weights"] == "bf16" else " (frozen fp32)")
        print(f"{label:>20}: {r['operators']:,} operators ({', '.join(f'{k} {v:,}' for k, v in r['by_phase'].items())})")
    first = results[0]
    print("forward by module (" + first["weights"] + "): " + ", ".join(f"{k} {v:,}" for k, v in first["forward_by_module"].items()))
    print("top operators (" + first["weights"] + "): " + ", ".join(f"{k} {v:,}" for k, v in first["top_operators"].items()))
    if a.out:
        Path(a.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
