"""The Gundam encode of ONE page (what a continuous admission of a single page pays), by kernel.

    python benchmarks/profile_encode.py [--folder /tmp/full] [--pages 1]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_decode import gundam_page
from deepseek_ocr import DeepseekOCR, make_random_checkpoint
from deepseek_ocr.engine.vision_batch import encode_prepared


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/full")
    ap.add_argument("--pages", type=int, default=1)
    a = ap.parse_args()
    if not (Path(a.folder) / "config.json").is_file():
        make_random_checkpoint(a.folder, layers=12, experts=64, topk=6)
    ocr = DeepseekOCR.from_pretrained(a.folder, device="cuda", dtype="bfloat16")
    pages = [ocr.prepare(gundam_page(), mode="gundam") for _ in range(a.pages)]
    for _ in range(3):
        encode_prepared(ocr.model, pages)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        encode_prepared(ocr.model, pages)
    torch.cuda.synchronize()
    print(f"encode of {a.pages} page(s): {(time.perf_counter() - t) / 5 * 1e3 / a.pages:.2f} ms per page")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        encode_prepared(ocr.model, pages)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=22))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
