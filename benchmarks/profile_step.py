"""Where the time goes: one batch-1 decode step and one Gundam page encode, by CUDA kernel.

    python benchmarks/profile_step.py [--folder /tmp/full] [--out profile.txt]

Runs the fast decoder's step uncaptured (so the profiler sees each kernel) and the vision
encoder under torch.profiler, and prints the kernels sorted by total CUDA time with the number
of kernel launches per step: the two things that decide how close batch-1 decode gets to the
bandwidth floor.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_decode import PROMPT, gundam_page
from deepseek_ocr import DeepseekOCR, make_random_checkpoint
from deepseek_ocr.decoder.fast import FastDecoder


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/full")
    ap.add_argument("--out", default="profile.txt")
    a = ap.parse_args()
    folder = Path(a.folder)
    if not (folder / "config.json").is_file():
        make_random_checkpoint(folder, layers=12, experts=64, topk=6)
    ocr = DeepseekOCR.from_pretrained(folder, device="cuda", dtype="bfloat16")
    inp = ocr.prepare(gundam_page(), PROMPT, mode="gundam")
    rows = ocr.encode_images([inp])[0]
    embeds = ocr.embed(inp, rows)
    fast = FastDecoder(ocr.model.decoder)
    cache = fast.new_cache(1, 2048)
    cu = torch.tensor([0, embeds.shape[0]], dtype=torch.int32, device="cuda")
    fast.prefill(embeds, cu, embeds.shape[0], cache)
    tok = torch.zeros(1, dtype=torch.long, device="cuda")
    lines = []
    with torch.inference_mode():
        for _ in range(3):
            fast.step(tok, cache)
        torch.cuda.synchronize()
        steps = 5
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                fast.step(tok, cache)
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        lines.append(f"batch-1 decode step: {len(kernels) / steps:.0f} kernels per step, "
                     f"{sum(e.device_time for e in kernels) / steps / 1e3:.3f} ms of kernel time per step")
        lines.append(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
        inp.vision_rows = None
        ocr.encode_images([inp])
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            inp.vision_rows = None
            ocr.encode_images([inp])
            torch.cuda.synchronize()
        kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
        lines.append(f"Gundam page encode: {len(kernels)} kernels, "
                     f"{sum(e.device_time for e in kernels) / 1e3:.2f} ms of kernel time")
        lines.append(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25))
    text = "\n".join(lines)
    Path(a.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
