"""Time the pure-PyTorch reference path on a full-size random checkpoint (bf16, one GPU).

    python benchmarks/reference_path.py [--folder /tmp/full] [--new-tokens 32]

Writes a 12-layer, 64-expert random checkpoint in the official layout (unless the folder has
one), loads it, and reports load time and peak memory, then one Gundam page (tiles + global
view) through vision + prefill and batch-1 greedy decode with EOS ignored. This is the baseline
the Triton path is measured against, not a tuned number.
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from deepseek_ocr import DeepseekOCR, make_random_checkpoint


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/full")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--device", default=None)
    a = ap.parse_args()
    folder = Path(a.folder)
    out = {}
    if not (folder / "config.json").is_file():
        _, out["write_checkpoint_s"] = timed(lambda: make_random_checkpoint(folder, layers=12, experts=64, topk=6))
    out["checkpoint_bytes"] = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    out["host_rss_before_load_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    ocr, load_s = timed(lambda: DeepseekOCR.from_pretrained(folder, device=a.device, dtype="bfloat16"))
    out["load_s"] = round(load_s, 1)
    out["host_peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if torch.cuda.is_available():
        out["gpu_mem_after_load_gb"] = round(torch.cuda.memory_allocated() / 2**30, 2)
        out["device_name"] = torch.cuda.get_device_name()
    page = Image.new("RGB", (1700, 2200), "white")
    d = ImageDraw.Draw(page)
    for i in range(60):
        d.text((80, 80 + 34 * i), f"line {i}: the quick brown fox jumps over the lazy dog {i * 7}", fill="black")
    inputs = ocr.prepare(page, "<image>\n<|grounding|>Convert the document to markdown.", mode="gundam")
    out["prompt_tokens"] = inputs.num_tokens
    out["tiles"] = inputs.images_spatial_crop.tolist()
    kw = dict(ignore_eos=True, no_repeat_ngram_size=None)
    for _ in range(2):  # the first round warms up; the second is reported
        inputs.vision_rows = None
        rows, vision = timed(lambda: ocr.encode_images([inputs])[0])
        inputs.vision_rows = rows
        _, prefill = timed(lambda: ocr.generate(inputs, max_new_tokens=1, **kw))
        r, total = timed(lambda: ocr.generate(inputs, max_new_tokens=a.new_tokens + 1, **kw))
    out["vision_ms"] = round(vision * 1e3, 1)
    out["prefill_plus_first_token_ms"] = round(prefill * 1e3, 1)
    out["decode_ms_per_token"] = round((total - prefill) / a.new_tokens * 1e3, 2)
    out["generated"] = len(r.token_ids)
    if torch.cuda.is_available():
        out["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
