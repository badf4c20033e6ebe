"""Time the decoder's Triton attention kernels against SDPA at the model's sizes (CUDA, bf16).

    python benchmarks/bench_attention.py [--out attention.json]

10 heads x head_dim 128, random inputs. Prefill: one 913-token page (the Gundam prompt of
RESULTS.md) and 16 such pages packed, vs SDPA's flash backend on the same (equal lengths, so a
padded [B, heads, T, hd] batch is exact). Decode over a static cache of L_max 8192 slots: batch 1
at length 1000, and batches 64 and 256 with lengths drawn from 1000..1400, vs SDPA with a
boolean mask over the whole cache and over the cache cut to the longest row (what a dynamic
cache would pass). Every case is checked against a float64 reference before it is timed.

Times are `triton.testing` medians in microseconds: `eager` (do_bench: each call goes through the
Python dispatcher) and, for decode, `graph` (do_bench_cudagraph: the launches replayed from a
CUDA graph, as the decode loop runs them). Decode bandwidth is the K/V bytes the rows actually
hold (sum of lengths x heads x head_dim x 2 tensors x 2 bytes) over the graph time.
Prints a markdown table; `--out` also writes the rows as JSON. Takes well under a minute.
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
from torch.nn.attention import SDPBackend, sdpa_kernel

# Imported by module path: the package also has seam functions named like these modules.
pre = importlib.import_module("deepseek_ocr.kernels.attention_prefill")
dec = importlib.import_module("deepseek_ocr.kernels.attention_decode")

HEADS, HEAD_DIM, DTYPE = 10, 128, torch.bfloat16
PAGE, L_MAX = 913, 8192
ATOL = RTOL = 1.5e-2  # bf16 output vs float64, as the GPU tests


def _median(fn, graph: bool = False) -> float:
    """Median time of fn() in microseconds."""
    if graph:  # captures on a side stream of its own
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def _check(name: str, got: torch.Tensor, want: torch.Tensor) -> float:
    err = (got.double() - want.double()).abs().max().item()
    torch.testing.assert_close(got.double(), want.double(), atol=ATOL, rtol=RTOL,
                               msg=lambda m: f"{name}: {m}")
    return err


def bench_prefill(pages: int, gen: torch.Generator) -> dict:
    total = pages * PAGE
    q, k, v = (torch.randn(total, HEADS, HEAD_DIM, generator=gen, device="cuda").to(DTYPE) for _ in range(3))
    cu = torch.arange(0, total + 1, PAGE, dtype=torch.int32, device="cuda")
    # SDPA's view of the same tensors: (B, nh, T, hd), a transpose, no copy.
    qb, kb, vb = (x.view(pages, PAGE, HEADS, HEAD_DIM).transpose(1, 2) for x in (q, k, v))

    def ours():
        return pre.prefill_attention(q, k, v, cu, PAGE)

    def flash():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(qb, kb, vb, is_causal=True)

    want = pre.prefill_attention_reference(q.double(), k.double(), v.double(), cu, PAGE)
    err = _check("prefill triton", ours(), want)
    _check("prefill sdpa flash", flash().transpose(1, 2).reshape(total, HEADS, HEAD_DIM), want)
    t_ours, t_flash = _median(ours), _median(flash)
    # Causal attention FLOPs: QK^T and PV over the lower triangle, 2 x 2 x T^2/2 x hd per head.
    flops = pages * HEADS * 2 * PAGE * PAGE * HEAD_DIM
    return {"case": f"prefill {pages} x {PAGE}", "triton_us": round(t_ours, 1),
            "sdpa_flash_us": round(t_flash, 1), "speedup_vs_flash": round(t_flash / t_ours, 2),
            "triton_tflops": round(flops / t_ours / 1e6, 1), "max_abs_err": err}


def bench_decode(batch: int, gen: torch.Generator) -> dict:
    rand = dict(generator=gen, device="cuda")
    lens = [1000] if batch == 1 else torch.randint(1000, 1401, (batch,), **rand).tolist()
    q = torch.randn(batch, HEADS, HEAD_DIM, **rand).to(DTYPE)
    kc, vc = (torch.randn(batch, HEADS, L_MAX, HEAD_DIM, **rand).to(DTYPE) for _ in range(2))
    seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    longest = max(lens)
    mask = (torch.arange(L_MAX, device="cuda")[None, :] < seqlens[:, None])[:, None, None, :]  # (B,1,1,L)
    kt, vt, mask_t = kc[:, :, :longest], vc[:, :, :longest], mask[..., :longest]

    def ours():
        return dec.decode_attention(q, kc, vc, seqlens)

    def sdpa_full():
        return F.scaled_dot_product_attention(q[:, :, None], kc, vc, attn_mask=mask)[:, :, 0]

    def sdpa_cut():
        return F.scaled_dot_product_attention(q[:, :, None], kt, vt, attn_mask=mask_t)[:, :, 0]

    # float64 reference on each row's own slots (a float64 copy of the whole cache would not fit)
    want = torch.cat([dec.decode_attention_reference(q[b:b + 1].double(), kc[b:b + 1, :, :n].double(),
                                                     vc[b:b + 1, :, :n].double(), seqlens[b:b + 1])
                      for b, n in enumerate(lens)])
    err = _check("decode triton", ours(), want)
    _check("decode sdpa masked", sdpa_full(), want)
    _check("decode sdpa masked, cut", sdpa_cut(), want)
    times = {name: (_median(fn), _median(fn, graph=True))
             for name, fn in (("triton", ours), ("sdpa_full", sdpa_full), ("sdpa_cut", sdpa_cut))}
    kv_bytes = sum(lens) * HEADS * HEAD_DIM * 2 * kc.element_size()
    split = dec.decode_split_size(batch, HEADS, L_MAX)
    row = {"case": f"decode B={batch} L={min(lens)}..{longest} L_max={L_MAX} (split {split}, "
                   f"{math.ceil(L_MAX / split)} splits)"}
    for name, (eager, graph) in times.items():
        row[f"{name}_us"], row[f"{name}_graph_us"] = round(eager, 1), round(graph, 1)
    row["triton_gb_per_s"] = round(kv_bytes / times["triton"][1] / 1e3, 1)
    row["sdpa_cut_gb_per_s"] = round(kv_bytes / times["sdpa_cut"][1] / 1e3, 1)
    row["speedup_vs_sdpa_cut"] = round(times["sdpa_cut"][1] / times["triton"][1], 2)
    row["kv_mb"] = round(kv_bytes / 2**20, 1)
    row["max_abs_err"] = err
    return row


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the results as JSON here")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_attention.py needs a CUDA GPU")
    gen = torch.Generator(device="cuda").manual_seed(0)
    prefill = [bench_prefill(pages, gen) for pages in (1, 16)]
    decode = []
    for batch in (1, 64, 256):
        decode.append(bench_decode(batch, gen))
        torch.cuda.empty_cache()  # the B=256 caches alone are 10.7 GB
    device = torch.cuda.get_device_name()
    print(f"# attention kernels, {device}, torch {torch.__version__}, triton {triton.__version__}, "
          f"{HEADS} heads x {HEAD_DIM}, {DTYPE}\n")
    print(_table(prefill) + "\n")
    print(_table(decode))
    if a.out:
        a.out.write_text(json.dumps({"device": device, "torch": torch.__version__,
                                     "triton": triton.__version__,
                                     "prefill": prefill, "decode": decode}, indent=1))


if __name__ == "__main__":
    main()
