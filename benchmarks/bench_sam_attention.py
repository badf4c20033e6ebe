"""SAM attention: the Triton kernel (bias inside) vs the reference (materialised bias + SDPA).

    python benchmarks/bench_sam_attention.py [--out sam_attention.json] [--sweep]

CUDA, bfloat16, SAM ViT-B's 12 heads x 64 at the sizes one Gundam page runs:
- global block of the 1024 view: B=1, 64x64 grid (4096 tokens), table trained at 64;
- global block of six 640 tiles: B=6, 40x40 (1600 tokens), the 64-table resized to 79 rows;
- windowed block of the 1024 view: 25 windows of 14x14 (196 tokens), table trained at 14.
Correctness first: both paths against a float32 reference on the same bf16 inputs (the run stops
if the kernel is off). Then `triton.testing.do_bench` medians of the whole op (the rel-table
einsums included; their share is timed on its own). `--sweep` also times other tile configs
of the kernel and names the fastest per case (tens of seconds more: one compile per config;
the sweep times `_launch`, i.e. the op without its input checks).
Markdown table to stdout, JSON to `--out`.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch
import triton

from deepseek_ocr.kernels.sam_attention import (
    _config, _launch, _rel_tables, sam_attention, sam_attention_reference)

HEADS, HEAD_DIM = 12, 64
CASES = [  # name, batch, grid, table rows
    ("global 1024 view", 1, (64, 64), 127),
    ("global 6 x 640 tiles", 6, (40, 40), 127),
    ("windows of a 1024 view", 25, (14, 14), 27),
]
SWEEP = [{}] + [{"BLOCK_M": m, "num_warps": w, "num_stages": s}  # {}: the default config
                for m in (64, 128) for w in (4, 8) for s in (2, 3, 4)]
MAX_ERR = 3e-2  # bf16 output: half an ulp at |out| ~ 4 is 1.6e-2


def inputs(b, hw, rows, device):
    g = torch.Generator(device=device).manual_seed(0)
    n = hw[0] * hw[1]
    q, k, v = (torch.randn(b, HEADS, n, HEAD_DIM, device=device, generator=g) for _ in range(3))
    th, tw = (0.15 * torch.randn(rows, HEAD_DIM, device=device, generator=g) for _ in range(2))
    return [t.bfloat16() for t in (q, k, v, th, tw)]


def bench_case(name, b, hw, rows, sweep, device):
    q, k, v, th, tw = inputs(b, hw, rows, device)
    n = hw[0] * hw[1]
    want = sam_attention_reference(*(t.float() for t in (q, k, v, th, tw)), hw)
    ours = sam_attention(q, k, v, th, tw, hw)
    ref = sam_attention_reference(q, k, v, th, tw, hw)
    err = (ours.float() - want).abs().max().item()
    ref_err = (ref.float() - want).abs().max().item()
    if err > MAX_ERR:
        sys.exit(f"{name}: kernel max error {err:.3g} > {MAX_ERR} (reference's {ref_err:.3g})")
    del want
    row = {"case": name, "batch": b, "grid": list(hw), "tokens": n, "table_rows": rows,
           "max_err_kernel": err, "max_err_reference": ref_err,
           "config": _config(n, hw[1], q.dtype)}
    row["kernel_ms"] = triton.testing.do_bench(lambda: sam_attention(q, k, v, th, tw, hw))
    row["rel_tables_ms"] = triton.testing.do_bench(lambda: _rel_tables(q, th, tw, hw))
    row["reference_ms"] = triton.testing.do_bench(
        lambda: sam_attention_reference(q, k, v, th, tw, hw))
    row["speedup"] = row["reference_ms"] / row["kernel_ms"]
    flops = 4 * b * HEADS * n * n * HEAD_DIM  # q.k and p.v, 2 flops per multiply-add
    row["kernel_tflops"] = flops / row["kernel_ms"] / 1e9
    row["reference_bias_mb"] = b * HEADS * n * n * 2 / 2**20  # the [B*heads, N, N] bf16 bias
    if sweep:
        timings = []
        for cfg in SWEEP:
            try:
                ms = triton.testing.do_bench(
                    lambda: _launch(q, k, v, th, tw, *hw, config=cfg))
            except triton.runtime.errors.OutOfResources as exc:  # too big a tile for this GPU
                timings.append({**cfg, "ms": None, "error": str(exc)})
                continue
            timings.append({**cfg, "ms": ms})
        row["sweep"] = timings
        row["sweep_best"] = min((t for t in timings if t["ms"] is not None), key=lambda t: t["ms"])
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--sweep", action="store_true", help="also time other tile configs")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_sam_attention needs a CUDA GPU")
    device = torch.device("cuda")
    rows = [bench_case(*case, a.sweep, device) for case in CASES]
    print(f"SAM attention, bf16, {HEADS} heads x {HEAD_DIM}, {torch.cuda.get_device_name()}\n")
    print("| case | B | tokens | reference ms | kernel ms | (rel tables ms) | speedup "
          "| kernel TFLOP/s | max err kernel / ref | ref bias MB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['batch']} | {r['tokens']} | {r['reference_ms']:.3f} "
              f"| {r['kernel_ms']:.3f} | {r['rel_tables_ms']:.3f} | {r['speedup']:.2f}x "
              f"| {r['kernel_tflops']:.0f} "
              f"| {r['max_err_kernel']:.2g} / {r['max_err_reference']:.2g} "
              f"| {r['reference_bias_mb']:.0f} |")
    if a.sweep:
        print("\nfastest tile config per case (default first):")
        for r in rows:
            default, best = r["sweep"][0], r["sweep_best"]
            print(f"- {r['case']}: default {r['config']} {default['ms']:.3f} ms, "
                  f"best {best} ({default['ms'] / best['ms']:.2f}x)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                       "triton": triton.__version__, "cases": rows}, f, indent=2)


if __name__ == "__main__":
    main()
