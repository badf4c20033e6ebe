"""Pages per second through the library's batch pipeline: Gundam pages, outputs forced to N tokens.

    python benchmarks/bench_pages.py --pages 256 --tokens 1000 --batch-size 256 --out pages.json

Full-size random official-layout weights in bf16 (random weights never emit EOS, so the output
length is forced with `ignore_eos`). Pages are generated 1280 x 1920 documents (6 crops of 640
plus the global view, 913 prompt tokens); decoding, preprocessing (worker threads), vision,
prefill, decode and writing every output file (markdown, raw text, JSON, drawn page) are all
timed, as a user running the command would see them.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from deepseek_ocr import DeepseekOCR, make_random_checkpoint
from deepseek_ocr.engine import engine_for
from deepseek_ocr.inputs import Document, PageRef
from deepseek_ocr.pipeline import run_pages

from bench_decode import gundam_page  # noqa: E402  (same synthetic page)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/full")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--out", default="bench_pages.json")
    ap.add_argument("--warm", action="store_true", help="grow the pool and capture every graph before timing")
    ap.add_argument("--prefill-tokens", type=int, default=None,
                    help="prompt tokens the engine admits per step (default: the engine's; `serve` uses 16384 "
                         "on a GPU, so an A/B against the server sets this to match)")
    ap.add_argument("--variants", default="", help="comma-separated: default, no_ngram, switch (see below)")
    a = ap.parse_args()
    folder = Path(a.folder)
    if not (folder / "config.json").is_file():
        make_random_checkpoint(folder, layers=12, experts=64, topk=6)
    ocr = DeepseekOCR.from_pretrained(folder, device="cuda", dtype="bfloat16")
    page = gundam_page()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "page.png"
        page.save(src)
        doc = Document(path=src, kind="image", name="bench")
        refs = [PageRef(document=doc, index=i, number=i + 1, load=lambda: page.copy()) for i in range(a.pages)]
        warm = list(run_pages(ocr, refs[:2], batch_size=2, workers=2, max_new_tokens=8, ignore_eos=True))
        assert all(o.error is None for o in warm), [o.error for o in warm]
        eng = engine_for(ocr.model, ocr.tokenizer)
        if a.prefill_tokens:
            eng.prefill_tokens = a.prefill_tokens
        runs = []
        if a.warm:
            # Steady state only: the pool at the size these pages need and every bucket's graph
            # captured before the timed runs (the first run in a process would do both inside).
            need = a.batch_size * -(-(warm[0].result.prompt_tokens + a.tokens + 1) // eng.cache.block_size)
            while eng.cache.num_blocks <= need and eng._grow_pool():
                pass
            eng.capture_graphs()
        variants = a.variants.split(",") if a.variants else ["first", "second"]
        # Without --variants: twice, the first run in a process also capturing a graph per batch
        # bucket and growing the KV pool (which recaptures them), the second the steady state.
        # Variants: "default" (the command's settings), "no_ngram" (the official n-gram rule
        # off), "switch" (sys.setswitchinterval(0.5 ms): the GIL handed between the engine and
        # the worker threads ten times as often).
        for run in variants:
            kwargs = {"no_repeat_ngram_size": None} if run == "no_ngram" else {}
            old_interval = sys.getswitchinterval()
            if run == "switch":
                sys.setswitchinterval(0.0005)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = dict(eng.stats)
            t = time.perf_counter()
            outs = list(run_pages(ocr, refs, batch_size=a.batch_size, workers=a.workers,
                                  out_dir=Path(tmp) / f"out-{run}", resume=False, max_new_tokens=a.tokens,
                                  ignore_eos=True, **kwargs))
            torch.cuda.synchronize()
            secs = time.perf_counter() - t
            sys.setswitchinterval(old_interval)
            tokens = sum(len(o.result.token_ids) for o in outs if o.result is not None)
            spent = {k: round(eng.stats[k] - before[k], 3) for k in eng.stats}
            # Host seconds outside the engine's step: waiting for pages to be prepared, the
            # pipeline's bookkeeping and the hand-off of finished pages.
            spent["outside_step_s"] = round(secs - spent["admit_s"] - spent["decode_s"] - spent["read_s"], 3)
            runs.append({"run": run, "seconds": round(secs, 1), "pages_per_s": round(a.pages / secs, 2),
                         "output_tokens_per_s": round(tokens / secs), "failed": sum(o.error is not None for o in outs),
                         "peak_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2), "engine": spent})
            print(json.dumps(runs[-1]), flush=True)
    res = {"device": torch.cuda.get_device_name(), "pages": a.pages, "tokens_per_page": a.tokens,
           "batch_size": a.batch_size, "workers": a.workers, "prefill_tokens": eng.prefill_tokens, "runs": runs}
    Path(a.out).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
