"""The engine's targets (issue "Engine: continuous batching ..."), measured in one run on a GPU.

    python benchmarks/bench_engine.py --out engine.json

Full-size random official-layout weights in bf16 (random weights never emit EOS: lengths are
forced with `ignore_eos` and per-request `max_new_tokens`). Pages are generated 1280 x 1920
documents (Gundam: 6 crops of 640 + the 1024 global view, 913 prompt tokens). Measured:

* `variable`: 256 pages with output lengths drawn uniformly from 100 to 2,000 tokens (seeded),
  continuous batching (256 slots) against static batches of the same kernels (a batch is
  submitted, run until its longest page ends, then the next) at batch 64 and 256;
* `queue`: the same over 1,024 pages (more pages than slots), 256 slots against static 256;
* `ttft`: one Gundam page through `generate(max_new_tokens=1)`: prepared, from the decoded image,
  and from its PNG bytes (what the server receives);
* `encode`: the Gundam vision encode per page, alone and batched 16 at a time;
* `decode_b1`: batch-1 decode ms per token (no torch.compile), slope between 64 and 512 tokens;
* `memory`: peak GPU memory holding 256 pages of ~2,000 tokens each (913 prompt + 1,100 new),
  against the static cache the old path kept for the same batch (256 rows x 2,048 slots).
The 256-page fixed-length run through the command's pipeline is bench_pages.py.
"""
from __future__ import annotations

import argparse
import io
import json
import random
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from deepseek_ocr import DeepseekOCR, make_random_checkpoint
from deepseek_ocr.engine import Engine, GenerationOptions, engine_for
from deepseek_ocr.engine.vision_batch import encode_prepared

from bench_decode import gundam_page  # noqa: E402  (the same synthetic page)


def sync_time(fn) -> float:
    torch.cuda.synchronize()
    t = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t


LAST_STATS: dict = {}  # the engine's counters over the last timed run (host seconds per phase)


def spent(eng: Engine, fn) -> float:
    before = dict(eng.stats)
    secs = sync_time(fn)
    LAST_STATS.clear()
    LAST_STATS.update({k: round(v - before[k], 3) for k, v in eng.stats.items()})
    LAST_STATS["outside_step_s"] = round(secs - sum(LAST_STATS[k] for k in ("admit_s", "decode_s", "read_s")), 3)
    return secs


def run_continuous(eng: Engine, pages, lengths) -> float:
    def go():
        reqs = [eng.submit(p, GenerationOptions(max_new_tokens=n, ignore_eos=True, no_repeat_ngram_size=None))
                for p, n in zip(pages, lengths)]
        eng.run(reqs)
    return spent(eng, go)


def run_static(eng: Engine, pages, lengths, batch: int) -> float:
    def go():
        for i in range(0, len(pages), batch):
            reqs = [eng.submit(p, GenerationOptions(max_new_tokens=n, ignore_eos=True, no_repeat_ngram_size=None))
                    for p, n in zip(pages[i:i + batch], lengths[i:i + batch])]
            eng.run(reqs)  # the batch decodes until its longest page ends; then the next one
    return spent(eng, go)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/full")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--out", default="bench_engine.json")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip")
    ap.add_argument("--static-batches", type=lambda v: [int(x) for x in v.split(",")], default=[64, 256])
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    folder = Path(a.folder)
    if not (folder / "config.json").is_file():
        make_random_checkpoint(folder, layers=12, experts=64, topk=6)
    ocr = DeepseekOCR.from_pretrained(folder, device="cuda", dtype="bfloat16")
    page = gundam_page()
    with ThreadPoolExecutor(16) as pool:
        t = time.perf_counter()
        prepared = list(pool.map(lambda _: ocr.prepare(page.copy(), mode="gundam"), range(a.pages)))
        prep_s = time.perf_counter() - t
    res: dict = {"device": torch.cuda.get_device_name(), "pages": a.pages,
                 "prompt_tokens": prepared[0].num_tokens, "prepare_s_16_threads": round(prep_s, 2)}
    eng = engine_for(ocr.model, ocr.tokenizer)
    # Warm-up: graph captures for the buckets, kernel autotuning, the pool at its working size.
    run_continuous(eng, prepared[:8], [16] * 8)

    if "encode" not in skip:
        one = [prepared[0]]
        encode_prepared(ocr.model, one)
        single = [sync_time(lambda: encode_prepared(ocr.model, one)) for _ in range(5)]
        group = prepared[:16]
        encode_prepared(ocr.model, group)
        batched = [sync_time(lambda: encode_prepared(ocr.model, group)) / 16 for _ in range(3)]
        res["encode_ms_per_page"] = {"alone": round(1e3 * statistics.median(single), 2),
                                     "batched_16": round(1e3 * statistics.median(batched), 2)}
        print("encode", res["encode_ms_per_page"], flush=True)

    if "ttft" not in skip:
        ocr.generate(prepared[1], max_new_tokens=1)
        prepped = [sync_time(lambda: ocr.generate(prepared[1], max_new_tokens=1)) for _ in range(5)]
        from_image = [sync_time(lambda: ocr.generate(page, mode="gundam", max_new_tokens=1)) for _ in range(3)]
        # What the server is given: the page's PNG bytes (bench_server.py sends the same page),
        # decoded here too: the server's TTFT target compares with this figure.
        buf = io.BytesIO()
        page.save(buf, "PNG")
        png = buf.getvalue()
        from_png = [sync_time(lambda: ocr.generate(Image.open(io.BytesIO(png)), mode="gundam", max_new_tokens=1))
                    for _ in range(3)]
        res["ttft_ms"] = {"prepared": round(1e3 * statistics.median(prepped), 1),
                          "from_image": round(1e3 * statistics.median(from_image), 1),
                          "from_png_bytes": round(1e3 * statistics.median(from_png), 1)}
        print("ttft", res["ttft_ms"], flush=True)

    if "decode_b1" not in skip:
        def one_page(n):
            return sync_time(lambda: ocr.generate(prepared[2], max_new_tokens=n, ignore_eos=True,
                                                  no_repeat_ngram_size=None))
        one_page(64)
        t64 = statistics.median(one_page(64) for _ in range(3))
        t512 = statistics.median(one_page(512) for _ in range(3))
        res["decode_b1_ms_per_token"] = round(1e3 * (t512 - t64) / 448, 3)
        print("decode b1", res["decode_b1_ms_per_token"], flush=True)

    if "queue" not in skip:
        # More pages than slots (a stream, the server): 4 x 256 pages, lengths 100..2,000, through
        # 256 slots, against static batches of 256 (each decodes until its longest page ends).
        rng = random.Random(1)
        many = prepared * 4
        lengths = [rng.randint(100, 2000) for _ in many]
        run_continuous(eng, prepared, [32] * (len(prepared) - 8) + [2000] * 8)  # warm-up
        cont = run_continuous(eng, many, lengths)
        res["queue"] = {"pages": len(many), "tokens": sum(lengths), "continuous_s": round(cont, 1),
                        "continuous_tokens_per_s": round(sum(lengths) / cont),
                        "stats": dict(LAST_STATS)}
        if "queue_static" not in skip:
            static = run_static(eng, many, lengths, 256)
            res["queue"].update(static_256_s=round(static, 1), speedup=round(static / cont, 2),
                                static_stats=dict(LAST_STATS))
        print("queue", res["queue"], flush=True)

    if "variable" not in skip:
        rng = random.Random(0)
        lengths = [rng.randint(100, 2000) for _ in prepared]
        # Warm-up at the run's shape: every bucket up to 256 captured, the pool grown to what the
        # longest pages need, so neither schedule pays for it inside its timing.
        run_continuous(eng, prepared, [32] * (len(prepared) - 8) + [2000] * 8)
        total = sum(lengths)
        cont = run_continuous(eng, prepared, lengths)
        res["variable"] = {"tokens": total, "continuous_256_s": round(cont, 1),
                           "continuous_pages_per_s": round(len(prepared) / cont, 2),
                           "continuous_tokens_per_s": round(total / cont), "stats": dict(LAST_STATS)}
        for b in a.static_batches:
            s = run_static(eng, prepared, lengths, b)
            res["variable"][f"static_{b}_s"] = round(s, 1)
            res["variable"][f"static_{b}_stats"] = dict(LAST_STATS)
            res["variable"][f"speedup_vs_static_{b}"] = round(s / cont, 2)
        print("variable", res["variable"], flush=True)

    if "memory" not in skip:
        cfg = ocr.config.decoder
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        t = run_continuous(eng, prepared, [1100] * len(prepared))
        static_bytes = 2 * cfg.num_layers * len(prepared) * cfg.num_heads * cfg.head_dim * 2048 * 2
        res["memory"] = {"peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2),
                         "peak_above_start_gb": round((torch.cuda.max_memory_allocated() - base) / 2**30, 2),
                         "pool_gb": round(len(eng.cache.k) * 2 * eng.cache.k[0].numel() * 2 / 2**30, 2),
                         "pool_blocks": eng.cache.num_blocks, "block_size": eng.cache.block_size,
                         "static_cache_gb_same_batch": round(static_bytes / 2**30, 2),
                         "seconds": round(t, 1), "tokens_per_s": round(1100 * len(prepared) / t),
                         "stats": dict(eng.stats)}
        print("memory", res["memory"], flush=True)

    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
