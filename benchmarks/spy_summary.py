"""Summarise py-spy's raw (collapsed) samples per thread: where each thread spends its samples.

    python benchmarks/spy_summary.py spy/spy_c256.txt [--depth 2] [--top 8] [--grep compiler.py]

Input: `py-spy record --format raw --threads` output (what `bench_server.py --spy` writes), one
line per distinct stack: `thread (tid): name;frame;...;frame COUNT`. Threads of a pool
(`deepseek-ocr-prepare_3`) are merged. For each thread: its share of all samples, then its most
frequent innermost `--depth` frames. `--grep TEXT` instead counts, per thread, the samples whose
stack contains TEXT, by the innermost deepseek_ocr frame under it (e.g. which of our calls ended
up in Triton's compiler).
"""
from __future__ import annotations

import argparse
import collections
import re


def short(frame: str) -> str:
    """`func (path/file.py:line)` with our files as `deepseek_ocr/...` and others by file name."""
    m = re.match(r"^(.*) \((.*?)(deepseek_ocr/[^)]*|[^/)]+)\)$", frame)
    return f"{m.group(1)} ({m.group(3)})" if m else frame


def read(path: str):
    """(thread name, frames outermost first, count) per line."""
    for line in open(path, encoding="utf-8"):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        name = re.sub(r"^thread \(\d+\): ", "", frames[0])
        name = re.sub(r"_\d+$", "_N", name)  # a pool's threads as one
        yield name, [short(f) for f in frames[1:]], int(n)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--grep")
    a = ap.parse_args(argv)
    per_thread: collections.Counter = collections.Counter()
    where: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name, frames, n in read(a.path):
        per_thread[name] += n
        if a.grep:
            hit = next((i for i, f in enumerate(frames) if a.grep in f), None)
            if hit is None:
                continue
            ours = [f for f in frames[:hit] if "deepseek_ocr/" in f]
            where[name][ours[-1] if ours else "(outside deepseek_ocr)"] += n
        else:
            where[name][" <- ".join(reversed(frames[-a.depth:]))] += n
    total = sum(per_thread.values()) or 1
    for name, count in per_thread.most_common():
        head = f"{count} samples ({100 * count / total:.1f}%)"
        if a.grep:
            hits = sum(where[name].values())
            head += f", {hits} with {a.grep!r} ({100 * hits / count:.1f}% of the thread's)"
        print(f"== {name}: {head}")
        for key, n in where[name].most_common(a.top):
            print(f"  {100 * n / count:5.1f}%  {key[:240]}")


if __name__ == "__main__":
    main()
