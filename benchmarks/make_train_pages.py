"""A small random checkpoint and a generated folder of text-line pages with their `.txt` targets,
for running `deepseek-ocr train` end to end on a device (benchmarks/device_round10.sh b).

    python benchmarks/make_train_pages.py --model /tmp/small --pages /tmp/pages
writes MODEL (2 layers, 4 experts, 256 wide) and PAGES/train (16 pages), PAGES/held (4 pages).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from deepseek_ocr import make_random_checkpoint


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="/tmp/small")
    ap.add_argument("--pages", default="/tmp/pages")
    a = ap.parse_args(argv)
    make_random_checkpoint(a.model, layers=2, experts=4, topk=2, hidden_size=256, heads=4,
                           intermediate_size=512, moe_intermediate_size=64)
    for split, n in (("train", 16), ("held", 4)):
        folder = Path(a.pages) / split
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            page = Image.new("RGB", (320, 160), "white")
            ImageDraw.Draw(page).text((10, 60), f"line {split} {i}", fill="black")
            page.save(folder / f"p{i}.png")
            (folder / f"p{i}.txt").write_text(f"line {split} {i}")


if __name__ == "__main__":
    main()
