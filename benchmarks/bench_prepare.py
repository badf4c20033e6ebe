"""Host time to prepare one Gundam page (what every served or batch-read page costs a CPU
thread before the GPU sees it): PNG decode, `make_views` (the resize, the crops and the pixel
conversion), and the pixel conversion alone, against the float32 normalization `to_pixels`
did before it looked levels up (kept here as the "before" column).

    python benchmarks/bench_prepare.py [--repeats 10] [--threads 1]

`make_views_codes_ms` and `codes_ms`: the same with the views as uint8 levels
(`make_views(..., codes=True)`, what the server and the batch command prepare; the pixels are then
looked up on the GPU).
"""
from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import gundam_page  # noqa: E402  (the engine and server benchmarks' page)

from deepseek_ocr.processing.views import make_views, pad_to_square, resolve_mode, to_codes, to_pixels  # noqa: E402


def float32_pixels(views: list[Image.Image]) -> torch.Tensor:
    """The conversion as it was: uint8 -> float32 / 255, - 0.5, / 0.5 -> bf16, five passes."""
    arrays = [torch.from_numpy(np.asarray(v, dtype=np.uint8).copy()).permute(2, 0, 1) for v in views]
    return torch.stack(arrays).to(torch.float32).div(255).sub(0.5).div(0.5).to(torch.bfloat16)


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (a preparing thread's share)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    buf = io.BytesIO()
    gundam_page().save(buf, "PNG")
    png = buf.getvalue()

    def decode():
        with Image.open(io.BytesIO(png)) as im:
            return im.convert("RGB")

    image = decode()
    mode = resolve_mode("gundam")
    views = make_views(image, mode)
    crops = [Image.fromarray(c) for c in (views.crops.float().add(1).mul(127.5).round().byte()
                                          .permute(0, 2, 3, 1).numpy())]
    groups = [[pad_to_square(image, mode.base_size)], crops]  # one conversion per view size, as make_views
    for g in groups:
        assert torch.equal(to_pixels(g).view(torch.int16), float32_pixels(g).view(torch.int16))
    res = {
        "page": f"{image.width}x{image.height}, {len(png) / 1e6:.2f} MB PNG, 1 + {len(crops)} views",
        "threads": a.threads,
        "png_decode_ms": median_ms(decode, a.repeats),
        "make_views_ms": median_ms(lambda: make_views(image, mode), a.repeats),
        # what the server and the batch command do now: views as uint8 levels, pixels on the GPU
        "make_views_codes_ms": median_ms(lambda: make_views(image, mode, codes=True), a.repeats),
        "codes_ms": median_ms(lambda: [to_codes(g) for g in groups], a.repeats),
        "pixels_lookup_ms": median_ms(lambda: [to_pixels(g) for g in groups], a.repeats),
        "pixels_float32_ms": median_ms(lambda: [float32_pixels(g) for g in groups], a.repeats),
    }
    for k, v in res.items():
        print(f"{k:20s} {v:.1f}" if isinstance(v, float) else f"{k:20s} {v}")
    return res


if __name__ == "__main__":
    main()
