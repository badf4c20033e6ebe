"""The trainer's read-ahead on a CPU: seconds per step with the samples prepared in the loop
(`prepare_workers=0`) and on 2 threads, on Gundam pages (1280x1800 PNGs of text lines).

    python benchmarks/bench_train_prefetch.py

The decoder is tiny (2 layers, 64 wide) and the vision rows are zeros, so the step is mostly the
preparation it overlaps; the checkpoint (official vision tower, random) is written once to
/tmp/train_tiny. On a 2-core CPU the preparing threads compete with the step for the cores;
on a GPU host the step's compute is elsewhere.
"""
import io, time, sys, threading, torch
from pathlib import Path
from PIL import Image, ImageDraw
from deepseek_ocr import DeepseekOCR
from deepseek_ocr.weights.random import make_random_checkpoint
from deepseek_ocr.training.config import TrainConfig
from deepseek_ocr.training.trainer import Trainer
ck = Path('/tmp/train_tiny')
if not (ck / 'config.json').exists():
    make_random_checkpoint(ck, layers=2, experts=4, topk=2, dtype=torch.float32, hidden_size=64, heads=2, intermediate_size=128, moe_intermediate_size=32)
ocr = DeepseekOCR.from_pretrained(ck, device='cpu', dtype='float32')
snap = {k: v.clone() for k, v in ocr.model.decoder.state_dict().items()}
def page(i):
    im = Image.new('RGB', (1280, 1800), 'white'); d = ImageDraw.Draw(im)
    for y in range(0, 1800, 30): d.text((20, y), f'line {y} of page {i} ' * 8, fill='black')
    b = io.BytesIO(); im.save(b, 'PNG'); return b.getvalue()
pages = [page(i) for i in range(8)]
class DS:
    def __len__(self): return len(pages)
    def __getitem__(self, i):
        inp = ocr.prepare(pages[i], '<image>\nFree OCR.', mode='gundam', answer='text of the page')
        inp.vision_rows = torch.zeros(inp.num_vision_tokens, 64)  # the tower is not what is measured
        return inp
for w in (0, 2):  # the same 8 steps; `Trainer` resets nothing, so restore the decoder first
    ocr.model.decoder.load_state_dict(snap)
    cfg = TrainConfig(model='x', data=['m'], output_dir=f'/tmp/pfb{w}', progress=False, tensorboard=False, save_model=False,
                      checkpoint_every=0, preset='decoder', lr=1e-3, max_steps=8, batch_size=2, prepare_workers=w)
    t = time.perf_counter(); Trainer(ocr, cfg, DS()).train(); print('workers', w, 's/step', (time.perf_counter()-t)/8)
t = time.perf_counter(); DS()[0]; print('one prepare s', time.perf_counter()-t)
