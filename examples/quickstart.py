"""Run DeepSeek-OCR on an example page, end to end.

    python examples/quickstart.py                       # random-weight model, generated page
    python examples/quickstart.py --model deepseek-ai/DeepSeek-OCR --image scan.png

Without --model, a random-weight checkpoint in the official layout (2 decoder layers, 4
experts; the vision tower at full size; 1.6 GB in bfloat16) is written once to
~/.cache/deepseek_ocr/random-demo ($DEEPSEEK_OCR_CACHE/random-demo), the same copy that
`deepseek-ocr --model random` uses: the output is gibberish, but every stage of the real
pipeline runs. With the official weights the same command gives real OCR.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from deepseek_ocr import DeepseekOCR
from deepseek_ocr.cli_model import ensure_random_model

ROOT = Path(__file__).resolve().parent.parent


def example_page(path: Path) -> Path:
    """A small synthetic document page: a title, paragraphs and a table grid."""
    img = Image.new("RGB", (850, 1100), "white")
    d = ImageDraw.Draw(img)
    d.text((60, 50), "Quarterly Report 2026", fill="black", font_size=36)
    for i, line in enumerate(["Revenue grew 12% over the previous quarter, driven by",
                              "new customers in the document-processing segment.",
                              "Costs were flat; the margin improved to 31%."]):
        d.text((60, 130 + 30 * i), line, fill="black", font_size=20)
    for r in range(5):
        for c in range(3):
            x, y = 60 + 240 * c, 280 + 50 * r
            d.rectangle((x, y, x + 240, y + 50), outline="black")
            d.text((x + 10, y + 14), ("Region", "Q1", "Q2")[c] if r == 0 else f"{(r * 37 + c * 11) % 97}.{c}",
                   fill="black", font_size=18)
    img.save(path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="checkpoint folder or hub repo id (default: a random demo model)")
    ap.add_argument("--image", help="image to read (default: a generated example page)")
    ap.add_argument("--mode", default="base", help="tiny, small, base, large or gundam")
    ap.add_argument("--prompt", default="<image>\n<|grounding|>Convert the document to markdown.")
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    model_path = args.model
    if model_path is None:
        model_path = ensure_random_model(sys.stdout)  # built once, shared with `deepseek-ocr --model random`
    image = Path(args.image) if args.image else example_page(ROOT / "weights" / "example_page.png")

    t0 = time.perf_counter()
    ocr = DeepseekOCR.from_pretrained(model_path, device=args.device, dtype=args.dtype)
    t1 = time.perf_counter()
    inputs = ocr.prepare(image, args.prompt, mode=args.mode)
    result = ocr.generate(inputs, max_new_tokens=args.max_new_tokens)
    t2 = time.perf_counter()
    print(f"model: {model_path} ({ocr.device}, {ocr.dtype}); loaded in {t1 - t0:.1f}s")
    print(f"image: {image}  mode: {args.mode}  tiles: {inputs.images_spatial_crop.tolist()}")
    print(f"prompt tokens: {result.prompt_tokens}  vision tokens: {result.vision_tokens} "
          f"(valid {result.valid_vision_tokens})  generated: {len(result.token_ids)} "
          f"({result.finish_reason}) in {t2 - t1:.1f}s")
    print(f"compression ratio (text tokens / valid vision tokens): {result.compression_ratio:.3f}")
    print("---- text ----")
    print(result.text)


if __name__ == "__main__":
    main()
