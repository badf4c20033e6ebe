"""Fused MoE kernels vs torch grouped_mm vs the reference loop (one GPU, bf16, full sizes).

    python benchmarks/bench_moe.py [--out moe.json] [--tokens 1,64,256,4096] [--sweep]

Sizes are the decoder's: H=1280, 64 routed experts, top-6, I=896 (shared experts are not part of
these kernels). Router and expert weights are random (router ~ N(0, 1/H): near-uniform routing).
For each token count: a correctness check of every path against a float32 reference with the
same routing, then `triton.testing.do_bench` medians of
  fused       our route + grouping + expert kernels (`fused_moe`),
  experts     the same without routing (`moe_experts`, routing given),
  grouped_mm  torch with the same routing: sort pairs by expert, gather, two
              `torch.nn.functional.grouped_mm`, silu*up, unsort, weighted float32 sum,
  gmm+route   grouped_mm plus the torch router (to compare with `fused`),
  reference   the per-expert loop of `StackedExperts.forward` (host syncs included).
At N=1 it also reports the bandwidth of the experts path: bytes of the k experts' weights / time.
`--sweep` times a few tile choices per token count (slower; for tuning `pick_tiles`).
Prints a markdown table; `--out` writes the numbers as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from triton.runtime.errors import OutOfResources
from triton.testing import do_bench

from deepseek_ocr.kernels.moe_grouped import (ExpertTiles, fused_moe, moe_experts, moe_experts_reference,
                                              moe_experts_triton, pick_tiles)
from deepseek_ocr.kernels.moe_routing import route_reference

H, E, I, K = 1280, 64, 896, 6
SWEEP = [ExpertTiles(16, (32, 128, 4, 4), (32, 128, 4, 4)), ExpertTiles(16, (64, 128, 4, 4), (64, 128, 4, 4)),
         ExpertTiles(16, (16, 256, 4, 3), (16, 256, 4, 3)), ExpertTiles(32, (64, 128, 4, 3), (64, 128, 4, 3)),
         ExpertTiles(64, (64, 64, 4, 3), (64, 128, 4, 3)), ExpertTiles(64, (128, 64, 8, 3), (128, 64, 8, 3)),
         ExpertTiles(128, (64, 64, 8, 4), (128, 64, 8, 4)), ExpertTiles(128, (128, 64, 8, 3), (128, 64, 8, 3))]


def _grouped_mm():
    fn = getattr(F, "grouped_mm", None) or getattr(torch, "_grouped_mm", None)
    if fn is None:
        raise SystemExit("this torch has neither torch.nn.functional.grouped_mm nor torch._grouped_mm")
    return fn


def grouped_mm_moe(x, weights, ids, gate_up, down):
    """The torch baseline with routing given: everything on the device, no host sync."""
    gmm = _grouped_mm()
    n, k = ids.shape
    flat = ids.reshape(-1)  # (N*k,)
    order = torch.argsort(flat, stable=True)
    counts = torch.zeros(E, dtype=torch.int32, device=x.device).scatter_add_(
        0, flat, torch.ones_like(flat, dtype=torch.int32))
    offs = torch.cumsum(counts, 0, dtype=torch.int32)  # end of each expert's rows
    xs = x[order // k]  # (N*k, H) sorted by expert
    gu = gmm(xs, gate_up.transpose(1, 2), offs=offs)  # (N*k, 2I)
    hs = F.silu(gu[:, :I]) * gu[:, I:]
    out_sorted = gmm(hs, down.transpose(1, 2), offs=offs)  # (N*k, H)
    per_pair = torch.empty_like(out_sorted)
    per_pair[order] = out_sorted
    return (per_pair.view(n, k, H).float() * weights[..., None]).sum(dim=1).to(x.dtype)


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def bench_one(n, router, gate_up, down, sweep):
    g = torch.Generator(device="cuda").manual_seed(n)
    x = torch.randn(n, H, device="cuda", generator=g).to(torch.bfloat16)
    weights, ids = route_reference(x, router, K)
    ref = moe_experts_reference(x.float(), weights, ids, gate_up.float(), down.float())
    y_fused, w_fused, ids_fused = fused_moe(x, router, gate_up, down, K)
    ref_fused = moe_experts_reference(x.float(), w_fused, ids_fused, gate_up.float(), down.float())
    row = {"tokens": n, "tiles": dataclasses.asdict(pick_tiles(n, K, E)),
           "err_fused": rel_err(y_fused, ref_fused),
           "err_experts": rel_err(moe_experts(x, weights, ids, gate_up, down), ref),
           "err_grouped_mm": rel_err(grouped_mm_moe(x, weights, ids, gate_up, down), ref),
           "err_reference_bf16": rel_err(moe_experts_reference(x, weights, ids, gate_up, down), ref),
           "ids_equal_torch_router": bool(torch.equal(ids_fused, ids))}
    for key in ("err_fused", "err_experts", "err_grouped_mm"):
        if not row[key] < 1e-2:
            raise SystemExit(f"N={n}: {key} = {row[key]:.3e} (expected < 1e-2): not timing a wrong result")

    def ms(fn):
        return do_bench(fn, warmup=10, rep=40, return_mode="median")

    row["fused_ms"] = ms(lambda: fused_moe(x, router, gate_up, down, K))
    row["experts_ms"] = ms(lambda: moe_experts(x, weights, ids, gate_up, down))
    row["grouped_mm_ms"] = ms(lambda: grouped_mm_moe(x, weights, ids, gate_up, down))
    row["gmm_route_ms"] = ms(lambda: grouped_mm_moe(x, *route_reference(x, router, K), gate_up, down))
    row["reference_ms"] = ms(lambda: moe_experts_reference(x, weights, ids, gate_up, down))
    if n == 1:  # weight streaming: the k experts' gate_up and down, nothing else is large
        weight_bytes = K * (2 * I * H + H * I) * gate_up.element_size()
        row["experts_gb_s"] = weight_bytes / (row["experts_ms"] * 1e-3) / 1e9
        row["fused_gb_s"] = weight_bytes / (row["fused_ms"] * 1e-3) / 1e9
    if sweep:
        row["sweep_ms"] = {}
        for tiles in SWEEP:
            try:
                err = rel_err(moe_experts_triton(x, weights, ids, gate_up, down, tiles), ref)
                t = ms(lambda: moe_experts_triton(x, weights, ids, gate_up, down, tiles))
            except OutOfResources as exc:  # too much shared memory: skip it
                err, t = None, f"skipped ({exc.__class__.__name__})"
            row["sweep_ms"][repr(tiles)] = {"ms": t, "err": err}
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--tokens", default="1,64,256,4096", help="comma-separated token counts")
    ap.add_argument("--sweep", action="store_true", help="also time the tile choices in SWEEP")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_moe needs a CUDA GPU")
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 reference must be float32
    g = torch.Generator(device="cuda").manual_seed(0)
    router = (torch.randn(E, H, device="cuda", generator=g) * H ** -0.5).to(torch.bfloat16)
    gate_up = (torch.randn(E, 2 * I, H, device="cuda", generator=g) * H ** -0.5).to(torch.bfloat16)
    down = (torch.randn(E, H, I, device="cuda", generator=g) * I ** -0.5).to(torch.bfloat16)
    rows = [bench_one(int(n), router, gate_up, down, a.sweep) for n in a.tokens.split(",")]

    print(f"\nMoE routed experts, {torch.cuda.get_device_name()}, bf16, H={H} E={E} k={K} I={I} "
          f"(torch {torch.__version__}, triton {triton.__version__}); medians in ms\n")
    print("| tokens | fused | experts | grouped_mm | gmm+route | reference | experts vs grouped_mm "
          "| fused vs gmm+route | rel err fused / gmm |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(f"| {r['tokens']} | {r['fused_ms']:.3f} | {r['experts_ms']:.3f} | {r['grouped_mm_ms']:.3f} "
              f"| {r['gmm_route_ms']:.3f} | {r['reference_ms']:.3f} "
              f"| {r['grouped_mm_ms'] / r['experts_ms']:.2f}x | {r['gmm_route_ms'] / r['fused_ms']:.2f}x "
              f"| {r['err_fused']:.1e} / {r['err_grouped_mm']:.1e} |")
    for r in rows:
        if "experts_gb_s" in r:
            print(f"\nN=1 weight streaming: experts {r['experts_gb_s']:.0f} GB/s, "
                  f"fused {r['fused_gb_s']:.0f} GB/s ({K} experts x {3 * H * I * 2 / 1e6:.1f} MB)")
        if "sweep_ms" in r:
            print(f"\nsweep N={r['tokens']}:")
            for name, v in r["sweep_ms"].items():
                print(f"  {name}: {v}")
    if a.out:
        a.out.write_text(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                     "triton": triton.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
