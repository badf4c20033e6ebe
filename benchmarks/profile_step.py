"""Where the engine's time goes: the decode step at 1 and 256 rows, admission, and the encode.

    python benchmarks/profile_step.py [--folder /tmp/full] [--out profile.txt]

For one row and for 256 rows of ~1,000-token Gundam pages it measures, on the same engine:
the wall time of `Engine.step()` (what `generate` and the command pay per token), the replay of
the captured decode graph alone (the GPU's share), and the difference (the host's share); then
the step's kernels, uncaptured, under torch.profiler (count per step and the top kernels), and
`Engine.step()` under the profiler with CPU activity (which host calls the rest is). Then the
Gundam encode of 16 pages and the prefill of an admission group, by kernel.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bench_decode import gundam_page
from deepseek_ocr import DeepseekOCR, make_random_checkpoint
from deepseek_ocr.engine import Engine, GenerationOptions
from deepseek_ocr.engine.paged_cache import PagedBatch
from deepseek_ocr.engine.vision_batch import encode_prepared


def timed(fn, iters: int) -> float:
    """Mean ms per call over `iters` calls, synchronised at both ends."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t) / iters


def kernel_table(prof, per: int, rows: int = 25) -> str:
    kernels = [e for e in prof.events() if e.device_type.name == "CUDA"]
    head = (f"{len(kernels) / per:.0f} kernels per call, "
            f"{sum(e.device_time for e in kernels) / per / 1e3:.3f} ms of kernel time per call")
    return head + "\n" + prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows)


def gpu_busy(prof) -> str:
    """How much of the profiled window the GPU spent in kernels or copies (the union of their
    intervals over the span from the first to the last): below 100% the GPU waited for the host."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in prof.events()
                   if e.device_type.name == "CUDA" and e.time_range.end > e.time_range.start)
    if not spans:
        return "GPU busy: no device events"
    busy, (cur_s, cur_e) = 0.0, spans[0]
    for s, e in spans[1:]:
        if s > cur_e:
            busy += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    busy += cur_e - cur_s
    span = spans[-1][1] - spans[0][0]
    return f"GPU busy {busy / 1e3:.2f} ms of a {span / 1e3:.2f} ms window ({100 * busy / span:.0f}%)"


def profile_rows(eng: Engine, lines: list[str], label: str, trace_dir: Path | None = None) -> None:
    rows = max(eng.running) + 1
    for _ in range(10):
        eng.step()
    wall = timed(eng.step, 50)
    key = [k for k in eng.graphs._graphs if k[0] >= rows]
    graph = eng.graphs._graphs[min(key, key=lambda k: k[0])] if key else None
    replay = timed(graph.graph.replay, 50) if graph is not None else float("nan")
    lines.append(f"== {label}: {len(eng.running)} running rows, bucket {graph and graph.tokens.shape[0]}")
    lines.append(f"Engine.step wall {wall:.3f} ms; graph replay alone {replay:.3f} ms; host share "
                 f"{wall - replay:.3f} ms")
    # The step uncaptured, kernel by kernel.
    bucket = graph.tokens.shape[0] if graph is not None else rows
    batch = PagedBatch(eng.cache, bucket)
    with torch.inference_mode():
        for _ in range(2):
            eng.fast.step(eng.tokens[:bucket], batch)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(3):
                eng.fast.step(eng.tokens[:bucket], batch)
            torch.cuda.synchronize()
    lines.append("-- the step uncaptured, by kernel (3 steps):")
    lines.append(kernel_table(prof, 3))
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            eng.step()
        torch.cuda.synchronize()
    lines.append("-- Engine.step x5 with host activity, by CPU time:")
    lines.append(prof.key_averages().table(sort_by="cpu_time_total", row_limit=30))
    lines.append(gpu_busy(prof))
    if trace_dir is not None:
        prof.export_chrome_trace(str(trace_dir / f"trace_{label.replace(' ', '_')}.json"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--folder", default="/tmp/full")
    ap.add_argument("--out", default="profile.txt")
    ap.add_argument("--rows", type=int, default=256)
    ap.add_argument("--skip-b1", action="store_true", help="only the many-row step and the encode")
    a = ap.parse_args()
    folder = Path(a.folder)
    if not (folder / "config.json").is_file():
        make_random_checkpoint(folder, layers=12, experts=64, topk=6)
    ocr = DeepseekOCR.from_pretrained(folder, device="cuda", dtype="bfloat16")
    page = gundam_page()
    pages = [ocr.prepare(page.copy(), mode="gundam") for _ in range(16)]
    rows = encode_prepared(ocr.model, pages[:1])[0]
    lines: list[str] = []
    opts = GenerationOptions(max_new_tokens=3000, ignore_eos=True)  # the official n-gram rule on

    eng = Engine(ocr.model, ocr.tokenizer, max_slots=a.rows)
    one = pages[0]
    one.vision_rows = rows
    if not a.skip_b1:
        req = eng.submit(one, opts)
        for _ in range(20):
            eng.step()
        profile_rows(eng, lines, "batch 1", Path(a.out).parent)
        eng.abort([req])
        while eng.has_work:
            eng.step()
        print("\n".join(lines), flush=True)

    reqs = []
    for _ in range(a.rows):
        reqs.append(eng.submit(_clone_with_rows(pages[1], rows), opts))
    t = time.perf_counter()
    while eng.waiting:
        eng.step()
    torch.cuda.synchronize()
    lines.append(f"== admitting {a.rows} pages (vision rows given, prefill only): {time.perf_counter() - t:.2f} s, "
                 f"{eng.stats['prefills']} prefill rounds")
    for _ in range(60):  # past ~1,000 tokens of context on average
        eng.step()
    profile_rows(eng, lines, f"{a.rows} rows", Path(a.out).parent)
    eng.abort(reqs)
    while eng.has_work:
        eng.step()

    # Admission pieces: the encode of 16 Gundam pages, the prefill of 8 prompts.
    for p in pages:
        p.vision_rows = None
    encode_prepared(ocr.model, pages)
    per_page = timed(lambda: encode_prepared(ocr.model, pages), 3) / len(pages)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        encode_prepared(ocr.model, pages)
        torch.cuda.synchronize()
    lines.append(f"== Gundam encode, 16 pages batched: {per_page:.2f} ms per page")
    lines.append(kernel_table(prof, 16, rows=30))
    Path(a.out).write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


def _clone_with_rows(inp, rows):
    import copy
    c = copy.copy(inp)
    c.vision_rows = rows
    return c


if __name__ == "__main__":
    main()
