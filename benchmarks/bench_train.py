"""Training throughput on the anchor workloads of TRAINING.md §3: fwd + bwd + AdamW (fused) step.

    python benchmarks/bench_train.py --workload all --mode all --json train.json          # ~6 min on an H200
    python benchmarks/bench_train.py --workload page --mode lora --gradient-checkpointing
    python benchmarks/bench_train.py --packing --mode lora                                # padding vs its bound
    python benchmarks/bench_train.py --smoke                                              # CPU, tiny, ~1 min
    python benchmarks/bench_train.py --workload page --mode paper --compile all --compile-mode reduce-overhead
                                       # the layers as the trainer's --compile/--compile-mode compile them

Workloads (random full-size weights, 12 layers x 64 experts, top-6, written once to
`--checkpoint`; generated images of random words):
  lines: 8 x (1024 view "base": 273 image tokens, prompt "<image>\\nFree OCR.", 32 answer tokens)
  page:  2 x (Gundam 2x3 tiles of an A4 page at 150 dpi: 903 image tokens, 1,000 answer tokens)
Modes:
  lora:  LoRA r=16, alpha=16 on q,k,v,o,gate,up,down, routed experts included (Unsloth's targets),
         vision frozen; base weights bf16, factors float32 (as peft keeps them).
  paper: the paper's full fine-tuning: CLIP, projector and decoder trained, SAM frozen; float32
         master weights, as the trainer keeps them (through its training/precision.py, so the
         frozen SAM is held in bf16 as the trainer holds it): `--weights fp32` (the default for
         paper, what `deepseek-ocr train` does: float32 weights cast by autocast at every use) or
         `--weights master` (the trainer's `--master-weights`: bf16 copies of the matmul weights,
         float32 masters in the optimizer, training/precision.py). `--weights bf16` runs either
         mode with bf16 weights (and bf16 AdamW states for paper), `--weights all` all three.
Every step runs under bf16 autocast on CUDA (none on CPU; --smoke: float32, a 2-layer SAM and
CLIP). Tokens = every sequence token of the batch (image, prompt, answer, BOS/EOS; padding
excluded); samples are prepared once, outside the timing (the trainer prepares them in
DataLoader workers). s/step is the median of `--steps` CUDA-synchronized steps after `--warmup`
untimed ones; peak memory is
`torch.cuda.max_memory_allocated` from just after loading (weights, optimizer states and
activations). The routed experts go through training/grouped_experts.py (torch._grouped_mm);
before timing, `--check` compares its loss and gradients with the reference loop on one batch.

Sequence packing vs padding (`--packing`): "lines" has 8 samples of one length and "page" 2, so
there is no padding to remove there. `lines-mixed` has answers of 8..128 tokens (19% of the
padded batch is padding); `lines-mixed-ideal` has the same real tokens split evenly (no padding).
The ideal batch is the best packing could do (the same work without pads; packed attention over
one long row costs at least as much), so t(mixed) / t(ideal) bounds packing's gain. Packing is
not implemented in compute_loss: it needs varlen attention (SDPA has none without a mask, which
drops flash attention), per-sequence balance-loss statistics and position resets, while sorting
samples by length into batches (the sampler's job) removes most padding at no cost. Revisit if
the device run shows a bound above ~1.15 on realistic length mixes.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from synthetic_text import answer_of_tokens, line_image, page_image, smoke_checkpoint, word_list  # noqa: E402

from deepseek_ocr import DeepseekOCR, kernels  # noqa: E402
from deepseek_ocr.processing.prompt import build_inputs, with_answer  # noqa: E402
from deepseek_ocr.processing.tokenizer import Tokenizer  # noqa: E402
from deepseek_ocr.processing.views import Mode, make_views, resolve_mode  # noqa: E402
from deepseek_ocr.training.lora import LoraConfig, apply_lora  # noqa: E402
from deepseek_ocr.training.optim import build_optimizer  # noqa: E402
from deepseek_ocr.training.precision import Precision  # noqa: E402
from deepseek_ocr.training.trainable import set_trainable  # noqa: E402
from deepseek_ocr.training.compiled import LayerCompiler, compiled_layers  # noqa: E402
from deepseek_ocr.weights.random import make_random_checkpoint  # noqa: E402

PROMPT = "<image>\nFree OCR."
# The official code + peft on an H200 (TRAINING.md §3): tokens/s and peak GiB.
ANCHORS = {("lines", "lora"): (1754, 17.2), ("page", "lora"): (1722, 26.3),
           ("lines", "paper"): (2617, 25.3), ("page", "paper"): (4276, 33.4)}
TARGETS = {("lines", "lora"): 15000, ("page", "lora"): 15000, ("page", "paper"): 20000}
MIXED = [8, 16, 24, 32, 48, 64, 96, 128]


def workloads(smoke: bool) -> dict[str, dict]:
    if smoke:  # small views (and smoke_checkpoint's 2-layer vision tower): seconds on a CPU
        line = dict(mode=Mode(256, 256, False, name="smoke-line"), image="line")
        page = dict(mode=Mode(256, 128, True, name="smoke-page"), image="page")
        return {"lines": dict(line, answers=[8, 8]), "page": dict(page, answers=[24]),
                "lines-mixed": dict(line, answers=[4, 12]), "lines-mixed-ideal": dict(line, answers=[8, 8])}
    line = dict(mode="base", image="line")
    return {"lines": dict(line, answers=[32] * 8),
            "page": dict(mode="gundam", image="page", answers=[1000, 1000]),
            "lines-mixed": dict(line, answers=MIXED),
            "lines-mixed-ideal": dict(line, answers=[sum(MIXED) // len(MIXED)] * len(MIXED))}


def make_batch(tokenizer: Tokenizer, spec: dict, seed: int) -> list:
    """The workload's samples, made as `DeepseekOCR.prepare` makes them (without loading a model)."""
    rng = random.Random(seed)
    words = word_list(tokenizer)
    mode = resolve_mode(spec["mode"])
    batch = []
    for n in spec["answers"]:
        answer = answer_of_tokens(tokenizer, rng, words, n)
        if spec["image"] == "line":
            img = line_image(answer)
        else:  # the page shows text; its transcription length is what the workload fixes
            img = page_image(answer_of_tokens(tokenizer, rng, words, 1000))
        batch.append(with_answer(tokenizer, build_inputs(tokenizer, PROMPT, make_views(img, mode), mode), answer))
    return batch


def ensure_checkpoint(folder: Path, smoke: bool) -> Path:
    if (folder / "config.json").is_file():
        return folder
    t = time.perf_counter()
    if smoke:
        smoke_checkpoint(folder, layers=2, experts=8, topk=2, hidden_size=128, heads=2, intermediate_size=256,
                         moe_intermediate_size=64)
    else:
        make_random_checkpoint(folder, layers=12, experts=64, topk=6, dtype=torch.bfloat16)
    print(f"wrote random checkpoint {folder} in {time.perf_counter() - t:.0f} s", flush=True)
    return folder


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def autocast(device, precision=None):
    """The trainer's autocast where its precision runs the step (bf16 on CUDA; on a CPU only with
    master weights, whose bf16 copies need it), else bf16 autocast on CUDA and nothing on a CPU."""
    if precision is not None:
        return precision.autocast()
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def load(folder: Path, mode: str, weights: str, device, compile_layers: str | None, compile_mode: str | None = None):
    dtype = torch.float32 if weights in ("fp32", "master") else torch.bfloat16
    ocr = DeepseekOCR.from_pretrained(folder, device=device, dtype=dtype)
    if mode == "lora":
        apply_lora(ocr.model, LoraConfig(r=16, alpha=16), generator=torch.Generator(device=device).manual_seed(0))
        summary = set_trainable(ocr.model, "lora")
    else:
        summary = set_trainable(ocr.model, "paper")
    ocr.model.train()
    ocr.precision = None
    if weights in ("fp32", "master"):  # the trainer's precision: its masters and its bf16 frozen weights
        ocr.precision = Precision("auto" if weights == "fp32" else "bfloat16", device, ocr.model,
                                  master_weights=weights == "master", distributed=False)
        ocr.precision.start()
    # torch.compile per layer (fused elementwise glue, fewer launches for the host to make), as
    # the trainer's `compile` setting does it (training/compiled.py): the decoder's layers, CLIP's
    # (the trained half of the tower), both, or both and the frozen SAM's blocks (bench only).
    ocr.compiler = None
    if compile_layers:
        layers = compiled_layers(ocr.model, "all" if compile_layers == "all+sam" else compile_layers)
        if compile_layers == "all+sam":
            layers += list(ocr.model.vision.sam.blocks)
        ocr.compiler = LayerCompiler(layers, compile_mode or "default")
    return ocr, summary


def weights_for(mode: str, choice: str, smoke: bool) -> list[str]:
    if smoke and choice == "auto":  # bf16 matmuls crawl on CPUs without bf16 units
        return ["fp32"]
    if choice == "all":
        return ["bf16", "fp32", "master"]
    if choice == "auto":
        return ["bf16" if mode == "lora" else "fp32"]
    return [choice]


def run_config(ocr, batch, device, args) -> dict:
    lr = 2e-4 if any(".lora_" in n for n, p in ocr.model.named_parameters() if p.requires_grad) else 1e-5
    opt = build_optimizer(ocr.model, lr=lr, substitute=ocr.precision.substitute if ocr.precision else None)
    times, losses = [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup + args.steps):
        sync(device)
        t = time.perf_counter()
        out = train_step(ocr, batch, opt, device, args)
        sync(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - t)
        losses.append(float(out.ce.detach()))
    if args.profile:
        profile_steps(ocr, batch, opt, device, args)
    phases = phase_times(ocr, batch, opt, device, args) if args.phases else None
    s = statistics.median(times)
    tokens = out.num_tokens
    padded = len(batch) * max(inp.num_tokens for inp in batch)
    res = {"s_per_step": round(s, 4), "s_per_step_mean": round(statistics.mean(times), 4),
           "samples_per_s": round(len(batch) / s, 2), "tokens_per_step": tokens, "padded_tokens_per_step": padded,
           "tokens_per_s": round(tokens / s), "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4)}
    if device.type == "cuda":
        res["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    if phases:
        res["phases_ms"] = phases
    del opt
    return res


def train_step(ocr, batch, opt, device, args, marks: list | None = None):
    """fwd + bwd + optimizer step; the loss object. `marks`: the host's clock is appended to it
    after the forward, the backward and the optimizer step are launched."""
    mark = marks.append if marks is not None else (lambda _: None)
    opt.zero_grad(set_to_none=True)
    compiled = ocr.compiler.active() if ocr.compiler else contextlib.nullcontext()
    with compiled, autocast(device, ocr.precision):
        out = ocr.loss(batch, gradient_checkpointing=args.gradient_checkpointing)
    mark(time.perf_counter())
    out.loss.backward()
    if ocr.precision:  # as Trainer._step: with masters, bf16 gradients into float32, step, round back
        ocr.precision.after_backward()
    mark(time.perf_counter())
    opt.step()
    if ocr.precision:
        ocr.precision.after_step()
    mark(time.perf_counter())
    return out


def phase_times(ocr, batch, opt, device, args, steps: int = 4) -> dict:
    """Whose time is the step, the host's or the GPU's, without a profiler's overhead: medians
    over `steps` more steps of the host's time to launch the forward, the backward and the
    optimizer step (`host_*`), and of `gpu_tail`, how long the GPU still works after the host
    has launched the last kernel. A tail near 0 means the GPU waited for the host (the step is
    the host's launch time: fewer operators or compiled ones help); a long tail means the
    kernels are the step (faster kernels help)."""
    rows = []
    for _ in range(steps):
        sync(device)
        marks = [time.perf_counter()]
        train_step(ocr, batch, opt, device, args, marks)
        sync(device)
        marks.append(time.perf_counter())
        t0, t1, t2, t3, t4 = marks
        rows.append({"host_forward": t1 - t0, "host_backward": t2 - t1, "host_optimizer": t3 - t2,
                     "gpu_tail": t4 - t3, "wall": t4 - t0})
    return {k: round(statistics.median(r[k] for r in rows) * 1e3, 2) for k in rows[0]}


def profile_steps(ocr, batch, opt, device, args) -> None:
    """Two more steps under torch.profiler: the kernels by GPU time, the host ops by CPU time,
    and the GPU's busy share of the steps' wall time, appended to `args.profile`."""
    from torch.profiler import ProfilerActivity, profile
    sync(device)
    t = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(2):
            out = train_step(ocr, batch, opt, device, args)
        sync(device)
    wall = time.perf_counter() - t
    events = prof.key_averages()
    with open(args.profile, "a", encoding="utf-8") as f:
        # The GPU's time is the table's "Self CUDA time total" (the profiler's own sum); the
        # wall time here is inflated by the profiler, compare with the unprofiled s/step.
        f.write(f"== {len(batch)} samples, {out.num_tokens} tokens, 2 steps: wall {wall * 1e3:.1f} ms "
                f"(profiled)\n")
        f.write(events.table(sort_by="self_device_time_total", row_limit=45, max_name_column_width=90))
        f.write("\n-- host ops by CPU time\n")
        f.write(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=90))
        f.write("\n")


def check_grouped(folder: Path, batch, device) -> dict:
    """Loss and expert gradients of the grouped path vs the reference loop (bf16 weights on CUDA,
    where the reference runs under autocast; float32 on CPU), on one batch."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ocr = DeepseekOCR.from_pretrained(folder, device=device, dtype=dtype)
    set_trainable(ocr.model, "decoder")
    probe = ocr.model.decoder.layers[1].mlp.experts.gate_up
    out = {}
    for name, on in (("grouped", True), ("reference", False)):
        kernels.set_enabled(on)
        try:
            ocr.zero_grad()
            with autocast(device):
                loss = ocr.loss(batch)
            loss.loss.backward()
            out[name] = (float(loss.ce.detach()), probe.grad.float().clone())
        finally:
            kernels.set_enabled(True)
    (ce_g, g_g), (ce_r, g_r) = out["grouped"], out["reference"]
    res = {"ce_grouped": ce_g, "ce_reference": ce_r, "ce_rel_diff": abs(ce_g - ce_r) / abs(ce_r),
           "expert_grad_rel_l2": float((g_g - g_r).norm() / g_r.norm().clamp_min(1e-30))}
    # bf16: both paths round every matmul to bf16 in different orders; 1e-2 is a few ulps.
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    res["ok"] = res["ce_rel_diff"] < tol and res["expert_grad_rel_l2"] < 5 * tol
    del ocr, probe
    gc.collect()
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workload", default="all", choices=["lines", "page", "all"])
    ap.add_argument("--mode", default="all", choices=["lora", "paper", "all"])
    ap.add_argument("--weights", default="auto", choices=["auto", "bf16", "fp32", "master", "all"],
                    help="auto: bf16 base for lora, fp32 (float32 weights under autocast, as the trainer) for paper")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--compile", nargs="?", const="decoder", default=None, choices=["decoder", "clip", "all", "all+sam"],
                    help="torch.compile each layer of the decoder (the default when given alone), of CLIP, of both "
                         "(all), or of both and the frozen SAM's blocks (all+sam)")
    ap.add_argument("--compile-mode", default=None, choices=["default", "reduce-overhead", "max-autotune-no-cudagraphs"],
                    help="torch.compile's mode (reduce-overhead: each compiled layer replayed as CUDA graphs)")
    ap.add_argument("--packing", action="store_true", help="also lines-mixed vs lines-mixed-ideal")
    ap.add_argument("--no-check", dest="check", action="store_false")
    ap.add_argument("--checkpoint", default=None, help="random checkpoint folder (default weights/random-12x64)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--phases", action="store_true",
                    help="after the timed steps, 4 more timed by phase: host launch time of forward, backward "
                         "and optimizer, and the GPU's tail after the last launch (host- or GPU-bound?)")
    ap.add_argument("--profile", default=None,
                    help="append a torch.profiler table of 2 more steps per row here (the rows after the first "
                         "are then timed after a profiler session in this process, which may slow their launches: "
                         "take timings from runs without --profile)")
    ap.add_argument("--smoke", action="store_true", help="CPU-sized model and views, 1 step")
    args = ap.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if args.smoke:
        args.steps, args.warmup = 1, 0
    tmp = tempfile.TemporaryDirectory() if args.smoke and args.checkpoint is None else None
    root = Path(__file__).resolve().parent.parent
    folder = Path(args.checkpoint or (tmp.name if tmp else root / "weights" / "random-12x64"))
    ensure_checkpoint(folder, args.smoke)

    specs = workloads(args.smoke)
    names = ["lines", "page"] if args.workload == "all" else [args.workload]
    if args.packing:
        names += ["lines-mixed", "lines-mixed-ideal"]
    modes = ["lora", "paper"] if args.mode == "all" else [args.mode]
    tokenizer = Tokenizer.from_folder(folder)
    batches = {n: make_batch(tokenizer, specs[n], seed=i) for i, n in enumerate(names)}
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "grouped_mm": hasattr(torch, "_grouped_mm"), "results": []}
    if args.check:
        report["check"] = check_grouped(folder, batches[names[0]][:2], device)
        print("grouped vs reference:", report["check"], flush=True)
    for mode in modes:
        for weights in weights_for(mode, args.weights, args.smoke):
            ocr, summary = load(folder, mode, weights, device, args.compile, args.compile_mode)
            print(f"\n{mode} ({weights} weights): {summary.lines()[0]}", flush=True)
            for name in names:
                row = {"workload": name, "mode": mode, "weights": weights, "batch": len(batches[name]),
                       "gradient_checkpointing": args.gradient_checkpointing, "compile": args.compile,
                       "compile_mode": args.compile_mode, "trainable": summary.trainable}
                try:
                    row.update(run_config(ocr, batches[name], device, args))
                except torch.cuda.OutOfMemoryError as exc:
                    row["error"] = f"out of memory: {exc}".splitlines()[0]
                except Exception as exc:  # noqa: BLE001 - an optional torch.compile may fail to trace
                    if not args.compile:
                        raise
                    row["error"] = f"compile failed: {type(exc).__name__}: {exc}".splitlines()[0][:300]
                anchor = ANCHORS.get((name, mode))
                if anchor and "tokens_per_s" in row:
                    row["official_tokens_per_s"], row["official_peak_gib"] = anchor
                    row["speedup_vs_official"] = round(row["tokens_per_s"] / anchor[0], 2)
                    row["target_tokens_per_s"] = TARGETS.get((name, mode))
                report["results"].append(row)
                print(json.dumps(row), flush=True)
                ocr.zero_grad()
                gc.collect()
            del ocr
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
    packing_verdict(report)
    print_table(report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return report


def packing_verdict(report: dict) -> None:
    rows = {(r["workload"], r["mode"], r["weights"]): r for r in report["results"] if "s_per_step" in r}
    for (name, mode, weights), r in rows.items():
        ideal = rows.get(("lines-mixed-ideal", mode, weights))
        if name == "lines-mixed" and ideal:
            bound = r["s_per_step"] / ideal["s_per_step"]
            pad = 1 - r["tokens_per_step"] / r["padded_tokens_per_step"]
            report.setdefault("packing", []).append(
                {"mode": mode, "weights": weights, "padding_fraction": round(pad, 3), "packing_bound": round(bound, 3),
                 "verdict": "worth packing" if bound > 1.15 else "not worth it (sort by length instead)"})


def print_table(report: dict) -> None:
    print("\n| workload | mode | weights | s/step | samples/s | tokens/s | peak GiB | vs official |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in report["results"]:
        if "s_per_step" not in r:
            print(f"| {r['workload']} | {r['mode']} | {r['weights']} | {r.get('error')} | | | | |")
            continue
        vs = f"{r['speedup_vs_official']}x" if "speedup_vs_official" in r else ""
        print(f"| {r['workload']} | {r['mode']} | {r['weights']} | {r['s_per_step']} | {r['samples_per_s']} | "
              f"{r['tokens_per_s']:,} | {r.get('peak_gib', '')} | {vs} |")
        if "phases_ms" in r:
            print(f"  phases (ms): {r['phases_ms']}")
    for p in report.get("packing", []):
        print(f"packing ({p['mode']}, {p['weights']}): padding {p['padding_fraction']:.1%}, "
              f"bound {p['packing_bound']}x -> {p['verdict']}")


if __name__ == "__main__":
    main()
