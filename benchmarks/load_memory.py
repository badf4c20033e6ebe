"""Peak host memory of `DeepseekOCR.from_pretrained` on the CPU.

    python benchmarks/load_memory.py CHECKPOINT_DIR [--dtype bfloat16]

Reports the safetensors bytes on disk and, relative to the process after `import torch,
deepseek_ocr`, the growth of ru_maxrss (every resident page, file-backed ones included) and
the sampled peak of anonymous memory. "Near one copy" means both are close to the file size.
"""
from __future__ import annotations

import argparse
import json
import resource
import threading
import time
from pathlib import Path

import torch  # noqa: F401  (imported before the baseline is taken)

from deepseek_ocr import DeepseekOCR


def rss_anon_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--dtype", default="bfloat16")
    a = ap.parse_args()
    file_mib = sum(f.stat().st_size for f in Path(a.folder).glob("*.safetensors")) / 2**20
    base_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    base_anon = rss_anon_mib()
    peak = [base_anon]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_anon_mib())
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t = time.perf_counter()
    DeepseekOCR.from_pretrained(a.folder, device="cpu", dtype=a.dtype)
    seconds = time.perf_counter() - t
    done.set()
    thread.join()
    grow_max = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_max
    print(json.dumps({"file_mib": round(file_mib), "dtype": a.dtype, "load_s": round(seconds, 1),
                      "maxrss_growth_mib": round(grow_max), "anon_peak_growth_mib": round(peak[0] - base_anon),
                      "maxrss_over_file": round(grow_max / file_mib, 3)}))


if __name__ == "__main__":
    main()
