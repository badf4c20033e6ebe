"""Inputs of the multi-GPU runs (benchmarks/device_multi_gpu.sh), written where the device keeps them:

    python benchmarks/make_multi_gpu_data.py --out /tmp/mg --pages 256 --train 32 --tokenizer /tmp/full

OUT/pages: PAGES generated 1280 x 1920 documents (bench_decode's page, its first line numbered so
each file differs; Gundam: 6 crops of 640 + the 1024 global view), for the batch command.
OUT/train: TRAIN such pages, each with a `.txt` target of about 1,000 tokens (the fine-tuning
issue's "page" workload: 2 x 3 tiles, 1,000 answer tokens), for `deepseek-ocr train`.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import ImageDraw

from bench_decode import gundam_page
from deepseek_ocr.processing.tokenizer import Tokenizer


def numbered_page(i: int):
    page = gundam_page()
    draw = ImageDraw.Draw(page)
    draw.rectangle((60, 10, 600, 36), fill="white")
    draw.text((60, 14), f"page {i}", fill="black")
    return page


def answer_of(rng: random.Random, words: list[str], tokenizer, tokens: int) -> str:
    """Random words until the text is `tokens` tokens long (cut at a word)."""
    out: list[str] = []
    while len(tokenizer.encode(" ".join(out))) < tokens:
        out.extend(rng.choice(words) for _ in range(20))
    while len(tokenizer.encode(" ".join(out))) > tokens:
        out.pop()
    return " ".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/mg")
    ap.add_argument("--pages", type=int, default=256)
    ap.add_argument("--train", type=int, default=32)
    ap.add_argument("--answer-tokens", type=int, default=1000)
    ap.add_argument("--tokenizer", default="/tmp/full", help="a checkpoint folder with the tokenizer files")
    a = ap.parse_args(argv)
    out = Path(a.out)
    (out / "pages").mkdir(parents=True, exist_ok=True)
    (out / "train").mkdir(parents=True, exist_ok=True)
    for i in range(a.pages):
        numbered_page(i).save(out / "pages" / f"page-{i:04d}.png")
    tokenizer = Tokenizer.from_folder(a.tokenizer)
    rng = random.Random(0)
    words = "the of and to in is that for on with as by at from this are be was it or an which document " \
            "page table figure total amount date invoice receipt line item price quantity name".split()
    for i in range(a.train):
        numbered_page(10_000 + i).save(out / "train" / f"p{i:03d}.png")
        (out / "train" / f"p{i:03d}.txt").write_text(answer_of(rng, words, tokenizer, a.answer_tokens))


if __name__ == "__main__":
    main()
