"""The CPU experiment behind RESULTS.md's jitter table (fourth round): a frozen random tower
(2 SAM + 2 CLIP blocks at official widths), a 2-layer 64-wide decoder, `Lines` at 256 px.

    python benchmarks/results/learning_cpu_jitter_experiment.py JITTER LR STEPS FROZEN WORDS MAX_WORDS
    # the table's rows: 0 1e-3 300 sam,clip 4 1 | 4 1e-3 300 sam,clip 4 1 | 16 ... 4 1 | 0 1e-3 300 sam,clip 20 2
    # (the 0 and 16 px rows of the log ran an earlier form with 48 px text and 200 steps)

Prints the mean training CE of every 25 steps.
"""
import random, sys, time, torch, tempfile, math
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/
import learning_run as L
from synthetic_text import smoke_checkpoint, render_lines
from deepseek_ocr import DeepseekOCR
from deepseek_ocr.training.optim import build_optimizer
from deepseek_ocr.training.trainable import set_trainable
jit = int(sys.argv[1]); lr = float(sys.argv[2]); steps = int(sys.argv[3]); freeze = sys.argv[4]; V = int(sys.argv[5]); MAXW = int(sys.argv[6])
torch.manual_seed(0); torch.set_num_threads(1)
folder = smoke_checkpoint(Path(tempfile.mkdtemp()) / "m", layers=2, experts=4, topk=2, hidden_size=64, heads=2,
                          intermediate_size=128, moe_intermediate_size=32)
ocr = DeepseekOCR.from_pretrained(folder, device="cpu", dtype=torch.float32)
L.scale_residual_outputs(ocr.model, 0.1)
set_trainable(ocr.model, "all"); ocr.model.train()
for n, p in ocr.model.named_parameters():
    if any(n.startswith(f"vision.{x}") for x in freeze.split(",") if x): p.requires_grad_(False)


lines = L.Lines(ocr.tokenizer, "256:256", V, MAXW, 256, 40, min_words=1, max_lines=1, jitter=jit)
rng = random.Random(0)
opt = build_optimizer(ocr.model, lr=lr, weight_decay=0.0)
t = time.time(); run = []
for step in range(1, steps + 1):
    batch = [lines.sample(rng)[0] for _ in range(8)]
    res = ocr.loss(batch, aux_loss=False)
    res.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    run.append(float(res.ce.detach()))
    if step % 25 == 0:
        print(f"V {V} maxw {MAXW} jit {jit} lr {lr} freeze {freeze}", step, round(sum(run[-25:]) / 25, 3), f"{time.time()-t:.0f}s", flush=True)
