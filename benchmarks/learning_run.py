"""A learning run from random weights: the official vision tower + a small decoder learn to read.

    python benchmarks/learning_run.py --out runs/learning --minutes 8        # one H200 call (~9.2 min wall)
    python benchmarks/learning_run.py --smoke --out /tmp/learning_smoke     # CPU, ~1 min
    # 10 training minutes over two device calls (each call holds at most ~8):
    python benchmarks/learning_run.py --minutes 10 --stop-after 5 --state /tmp/ls --out runs/l10
    python benchmarks/learning_run.py --minutes 10 --resume --state /tmp/ls --out runs/l10

Everything starts random (`make_random_checkpoint` with a narrow decoder: `--layers`, `--hidden`,
`--experts`, ...; SAM, CLIP and the projector at their official sizes; the vision tower's
residual-branch outputs scaled by `--residual-init-scale`, see `scale_residual_outputs`). What trains is
`--preset`: by default `paper` (SAM and its compressor stay at their random init; CLIP, the
projector and the decoder train: on the CPU this learns where training SAM from random does not,
benchmarks/RESULTS.md), in float32 master weights under bf16 autocast on CUDA, with the library's
objective (`DeepseekOCR.loss`: cross entropy + the MoE balance loss) and AdamW (fused), the
vision tower at `--tower-lr-scale` (0.3) times the rate of the projector and the decoder (the
library's `vision_lr_scale` groups: at 1x the tower's gradient dominated the clipped norm and
seven runs read CER 0.243-0.560 at 7.5-10 minutes; at 0.3x two runs read 0.024 and 0.070).

Data: endless synthetic images, made in DataLoader workers: `--min-words`..`--max-words` random
words (a `--words`-word vocabulary of single-token English words from the tokenizer) rendered in
black on white with Pillow's bundled font, wrapped over up to `--max-lines` lines, at the margin
(`--jitter` adds a random offset); the target is the words separated by spaces; prompt "<image>\\nFree OCR.", mode `--mode` (tiny: one
512 view, 73 image tokens). A held-out set of `--eval-samples` images (another seed, never
trained on) is read with batched greedy `generate` every `--eval-every` steps and scored with
`deepseek_ocr.evaluation.summarize` (CER over normalized text; 1.0 = nothing right).

Writes into `--out`: log.json (config, every eval: step, train seconds, CER, WER, loss, samples;
the loss curve), cer.png (CER and training loss against training minutes), and the last
predictions. The time budget is the training loop's wall time (steps and loader waits; the
workers' start and the evaluations are outside it, the evaluations timed separately).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_state import load_state, save_state  # noqa: E402
from synthetic_text import render_lines, smoke_checkpoint, word_list, wrap  # noqa: E402

from deepseek_ocr import DeepseekOCR  # noqa: E402
from deepseek_ocr.engine.gil import SWITCH_INTERVAL_S  # noqa: E402
from deepseek_ocr.evaluation import summarize  # noqa: E402
from deepseek_ocr.evaluation.errors import MetricDependencyError  # noqa: E402
from deepseek_ocr.processing.prompt import PreparedInputs, build_inputs, with_answer  # noqa: E402
from deepseek_ocr.processing.tokenizer import Tokenizer  # noqa: E402
from deepseek_ocr.processing.views import make_views, resolve_mode, to_pixels  # noqa: E402
from deepseek_ocr.training.optim import VISION_TOWER, build_optimizer  # noqa: E402
from deepseek_ocr.training.precision import MasterWeights, matmul_weights  # noqa: E402
from deepseek_ocr.training.trainable import set_trainable, summarize as summarize_trainable  # noqa: E402
from deepseek_ocr.weights.random import make_random_checkpoint  # noqa: E402

PROMPT = "<image>\nFree OCR."
# Settings a resumed call may change: where it writes, how long this call trains, how often it
# evaluates, how many loader workers it starts, profiling.
RESUMABLE_CHANGES = ("out", "stop_after", "state", "resume", "max_steps", "eval_every", "workers", "profile",
                     "master_weights")  # bf16 copies of float32 masters: the same arithmetic as autocast's casts


class Lines:
    """Makes (image, text) samples; the same seed gives the same samples on any machine."""

    def __init__(self, tokenizer: Tokenizer, mode: str, words: int, max_words: int, canvas: int, font_size: int,
                 min_words: int = 2, max_lines: int = 3, jitter: int | None = None):
        self.tokenizer, self.mode = tokenizer, resolve_mode(mode)
        self.words = word_list(tokenizer, words)
        self.max_words, self.canvas, self.font_size = max_words, canvas, font_size
        self.min_words, self.max_lines = min(min_words, max_words), max_lines
        self.jitter = canvas // 16 if jitter is None else jitter

    def sample(self, rng: random.Random, answer: bool = True):
        text = " ".join(rng.choice(self.words) for _ in range(rng.randint(self.min_words, self.max_words)))
        lines = wrap(text, int(0.85 * self.canvas / (0.55 * self.font_size)))[:self.max_lines]
        text = " ".join(lines)  # the target is exactly what is drawn
        img = render_lines(lines, size=(self.canvas, self.canvas), font_size=self.font_size, rng=rng,
                           jitter=self.jitter)
        # The views as uint8 levels (a sixth of the worker's time of bf16 pixels, which had to
        # be turned back into levels by `pack_views` to cross the pipe): unpacked to the same
        # bf16 pixels on the training device.
        inputs = build_inputs(self.tokenizer, PROMPT, make_views(img, self.mode, codes=True), self.mode)
        return (with_answer(self.tokenizer, inputs, text) if answer else inputs), text


def pixel_levels() -> torch.Tensor:
    """The 256 bf16 values `to_pixels` gives the uint8 levels 0..255 (ascending; neighbours may
    round to the same value), made by `to_pixels` itself so they cannot drift from it."""
    from PIL import Image
    ramp = Image.frombytes("RGB", (256, 1), bytes(v for i in range(256) for v in (i, i, i)))
    return to_pixels([ramp])[0, 0, 0]


LEVELS = pixel_levels()


def pack_views(t: torch.Tensor) -> tuple:
    """bf16 views, or their uint8 levels (`make_views(..., codes=True)`) -> ("levels", uint8
    codes, channels): for bf16, the index of each value's first level; one channel when all three
    agree (black text on white). A sixth of bf16's bytes or less, exactly reversible by
    `unpack_views`: the batches cross a pipe into the training process, whose loader thread
    unpickles them while holding the GIL the training step needs."""
    codes = t if t.dtype == torch.uint8 else torch.bucketize(t.float(), LEVELS.float()).to(torch.uint8)
    gray = bool((codes == codes[:, :1]).all()) if codes.shape[0] else True
    return ("levels", (codes[:, :1] if gray else codes).numpy(), 1 if gray else 3)


def unpack_views(packed: tuple, device: torch.device) -> torch.Tensor:
    """The bf16 views again, on `device` (the lookup runs there: the uint8 codes are what travels)."""
    _, codes, channels = packed
    levels = LEVELS.to(device)
    out = levels[torch.from_numpy(codes).to(device).long()]
    return out.expand(-1, 3, -1, -1).contiguous() if channels == 1 else out


def _arr(t: torch.Tensor):
    if t.dtype in (torch.bfloat16, torch.uint8) and t.dim() == 4:  # views (pixels or levels)
        return pack_views(t)
    # numpy has no bfloat16: carry its bits as int16 and say so.
    return ("bf16", t.view(torch.int16).numpy()) if t.dtype == torch.bfloat16 else t.numpy()


def _tensor(v, device: torch.device):
    if isinstance(v, tuple) and len(v) == 3 and v[0] == "levels":
        return unpack_views(v, device)
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "bf16" and isinstance(v[1], np.ndarray):
        return torch.from_numpy(v[1]).view(torch.bfloat16)
    return torch.from_numpy(v) if isinstance(v, np.ndarray) else v


def to_numpy(inp: PreparedInputs) -> dict:
    """Tensors as numpy arrays (views as `pack_views` codes): DataLoader workers pass tensors
    through /dev/shm, which a container may keep at 64 MB (a bus error at the first batch);
    arrays travel through the pipe."""
    return {f.name: (_arr(v) if isinstance(v, torch.Tensor) else v)
            for f in dataclasses.fields(inp) for v in [getattr(inp, f.name)]}


def from_numpy(d: dict, device: torch.device = torch.device("cpu")) -> PreparedInputs:
    """A sample again; its views are rebuilt on `device`, the other tensors stay on the CPU."""
    return PreparedInputs(**{k: _tensor(v, device) for k, v in d.items()})


def as_is(batch):
    return batch


class Stream(torch.utils.data.IterableDataset):
    """Endless batches (of `to_numpy` dicts); each DataLoader worker draws from its own seed."""

    def __init__(self, lines: Lines, batch: int, seed: int):
        self.lines, self.batch, self.seed = lines, batch, seed

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        while True:
            yield [to_numpy(self.lines.sample(rng)[0]) for _ in range(self.batch)]


def plain_cer(records: list[dict]) -> float:
    """Set CER without rapidfuzz (the device image lacks it unless a wheel is carried): summed
    Levenshtein distances over summed reference lengths, on whitespace-collapsed text."""
    dist = ref = 0
    for r in records:
        a, b = " ".join(r["prediction"].split()), " ".join(r["reference"].split())
        row = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            prev, row[0] = row[0], i
            for j, cb in enumerate(b, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
        dist, ref = dist + row[-1], ref + len(b)
    return dist / max(ref, 1)


RESIDUAL_OUTPUTS = re.compile(r"^vision\.(sam\.blocks\.\d+\.(attn\.proj|mlp\.lin2)|"
                              r"clip\.transformer\.layers\.\d+\.(self_attn\.out_proj|mlp\.fc2))\.weight$")


def scale_residual_outputs(model: torch.nn.Module, scale: float) -> int:
    """Multiply the vision tower's residual-branch output weights (SAM's attention and MLP output
    projections, CLIP's) by `scale`; the number of tensors scaled.

    Why: the random checkpoint is scaled like a trained network, every branch adding a
    unit-sized update to the residual stream. Untrained, 12 SAM and 24 CLIP blocks of such
    updates mostly add image-independent content, and the image is nearly invisible at the
    projector: two different text images give tokens that differ by 4% on average (10% at
    most). With the branches at 0.1 the blocks start near the identity (the usual from-scratch
    practice, as GPT-2's scaled output projections), and the tokens differ by 18% (70% at
    most), so the decoder has an image to learn from at step 0. Measured on the CPU on this
    run's tower; the layout and every other tensor are unchanged."""
    n = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if RESIDUAL_OUTPUTS.match(name):
                p.mul_(scale)
                n += 1
    return n


def profile_steps(ocr, batch, opt, params, amp, a, masters=None) -> None:
    """Three more steps on the last batch under torch.profiler; the tables go to `a.profile`."""
    from torch.profiler import ProfilerActivity, profile
    cuda = torch.cuda.is_available() and not a.smoke
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    t = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(3):
            with amp:
                res = ocr.loss(batch, gradient_checkpointing=a.gradient_checkpointing)
            res.loss.backward()
            if masters:
                masters.gather_grads()
            torch.nn.utils.clip_grad_norm_(params, a.clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if masters:
                masters.refresh()
        if cuda:
            torch.cuda.synchronize()
    wall = time.perf_counter() - t
    events = prof.key_averages()
    with open(a.profile, "a", encoding="utf-8") as f:
        f.write(f"== learning run, preset {a.preset}, {len(batch)} samples, 3 steps: wall {wall * 1e3:.1f} ms (profiled)\n")
        f.write(events.table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total", row_limit=40,
                             max_name_column_width=90))
        f.write("\n-- host ops by CPU time\n")
        f.write(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=90))
        f.write("\n")


def tower_and_rest_optimizer(model: torch.nn.Module, lr: float, weight_decay: float,
                             tower_lr_scale: float, substitute=None, beta2: float = 0.999) -> torch.optim.AdamW:
    """The library's AdamW (training/optim.py: decay / no-decay groups) with the vision tower
    (SAM, CLIP) at `tower_lr_scale` times the learning rate of the rest (projector, decoder)
    where the tower trains; each group's `lr_scale` multiplies the schedule's rate. `beta2`: the
    second moment's decay (0.95, as models trained from scratch commonly use, forgets a gradient
    scale that has since grown within ~20 steps instead of ~1,000)."""
    tower_trains = any(p.requires_grad for n, p in model.named_parameters() if n.startswith(VISION_TOWER))
    return build_optimizer(model, lr=lr, weight_decay=weight_decay, betas=(0.9, beta2), substitute=substitute,
                           vision_lr_scale=tower_lr_scale if tower_trains else 1.0)


def tower_grad_norm(params: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """The L2 norm of the gradients of `params` (a 0-d tensor on their device, nothing read to the
    host; 0 when none has a gradient, as a frozen tower)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    return torch.linalg.vector_norm(torch.stack([n.float() for n in torch._foreach_norm(grads)]))


def lr_at(step: int, frac: float, base: float, warmup: int) -> float:
    """Linear warmup over `warmup` steps, then cosine to 10% over the schedule's time (`frac` of
    it elapsed; past its end the rate stays at 10%)."""
    if step < warmup:
        return base * (step + 1) / warmup
    return base * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, frac))))


def evaluate(ocr, held, batch: int, max_new: int) -> dict:
    ocr.model.eval()
    # The engine keeps fused q/k/v copies; `engine_for` rebuilds it when their content changed
    # (it once looked at version counters, which fused AdamW leaves alone: every GPU run before
    # the sixth session decoded with the attention weights of step 0).
    t = time.perf_counter()
    records = []
    for i in range(0, len(held), batch):
        part = held[i:i + batch]
        with torch.no_grad():
            outs = ocr.generate([p for p, _ in part], max_new_tokens=max_new)
        records += [{"prediction": o.text, "reference": ref, "finish_reason": o.finish_reason}
                    for o, (_, ref) in zip(outs, part)]
    ocr.model.train()
    try:
        summary = summarize(records)
    except MetricDependencyError:
        summary = {"cer": plain_cer(records), "wer": None, "scorer": "plain_cer (no rapidfuzz)"}
    return {"cer": summary["cer"], "wer": summary["wer"], "repetition": summary.get("repetition"),
            "scorer": summary.get("scorer", "deepseek_ocr.evaluation.summarize"),
            "eval_seconds": round(time.perf_counter() - t, 2), "examples": records[:8]}


def plot(log: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib missing: no plot", flush=True)
        return
    ev = log["evals"]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([e["train_seconds"] / 60 for e in ev], [e["cer"] for e in ev], "o-", label="held-out CER")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("held-out CER (log scale)")
    # Log scale: a random decoder reads ~10 (it runs to the token limit), the target is 0.2 and
    # a trained one reads a few hundredths; a linear axis flattens everything below 1.
    ax.set_yscale("log")
    ax.axhline(0.2, color="gray", ls=":", lw=1, label="CER 0.2")
    ax2 = ax.twinx()
    ax2.plot([p[1] / 60 for p in log["loss_curve"]], [p[2] for p in log["loss_curve"]], color="tab:orange",
             alpha=0.5, lw=1, label="train loss (ce)")
    ax2.set_ylabel("cross entropy")
    ax.set_title(f"DeepSeek-OCR from random weights: {log['config']['device']}")
    lines = ax.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    ax.legend(lines[0][0] + lines[1][0], lines[0][1] + lines[1][1], loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/learning")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--decay-minutes", type=float, default=None,
                    help="the cosine's length (default --minutes); shorter: the rest of the run at 10%% of the rate")
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--stop-after", type=float, default=None, metavar="MINUTES",
                    help="end this call after MINUTES training minutes and save the run's state to --state; "
                         "--resume continues it (the schedule still spans --minutes): one run over two device calls")
    ap.add_argument("--state", default=None, help="the state's folder (default: OUT/state)")
    ap.add_argument("--resume", action="store_true", help="continue the run saved in --state")
    ap.add_argument("--mode", default="tiny")
    ap.add_argument("--canvas", type=int, default=512, help="side of the rendered image")
    ap.add_argument("--font-size", type=int, default=44)
    ap.add_argument("--words", type=int, default=200, help="vocabulary: the most frequent single-token words")
    ap.add_argument("--min-words", type=int, default=1)
    ap.add_argument("--max-words", type=int, default=4)
    ap.add_argument("--max-lines", type=int, default=2)
    ap.add_argument("--jitter", type=int, default=0,
                    help="random offset of the text block, 0..JITTER pixels in x and y (default 0: the first "
                         "word of a line always starts at the margin; later words move with the widths before "
                         "them). On the CPU a 16-px jitter at 256 px kept a frozen random tower's four words "
                         "unreadable (CE at the prior after 200 steps) where 0 reached CE 0.03")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--tower-lr-scale", type=float, default=0.3,
                    help="the vision tower's learning rate as a multiple of --lr (projector and decoder take --lr). "
                         "0.3 since 2026-12-03's thirteenth session: held-out CER 0.024 at 10 minutes and 0.070 "
                         "at 7, against 0.243-0.560 for the runs at 1.0 (benchmarks/RESULTS.md, twelfth round)")
    ap.add_argument("--beta2", type=float, default=0.999,
                    help="AdamW's second-moment decay (the runs recorded before 2026-12-03's eleventh session: 0.999)")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--residual-init-scale", type=float, default=0.1,
                    help="scale of the vision tower's residual-branch outputs at init (1: as the random checkpoint)")
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-samples", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--topk", type=int, default=2)
    ap.add_argument("--moe-inter", type=int, default=256)
    ap.add_argument("--inter", type=int, default=1536)
    ap.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--master-weights", action=argparse.BooleanOptionalAction, default=False,
                    help="on CUDA, bf16 copies of float32 masters instead of autocast's casts of the float32 "
                         "weights (default off, as the trainer: the 10-minute run with them read worse, "
                         "benchmarks/RESULTS.md, eighth round)")
    ap.add_argument("--preset", default="paper", choices=("all", "paper", "tower-frozen"),
                    help="what trains: everything; the paper's stage 2 (SAM and its compressor frozen at "
                         "their random init; CLIP, the projector and the decoder trained); or tower-frozen "
                         "(SAM and CLIP frozen at their random init: the projector, the image newline and "
                         "separator rows and the decoder learn to read the random tower's features)")
    ap.add_argument("--profile", default=None,
                    help="FILE: after 20 steps, profile 3 more (kernels by GPU time, host ops) into FILE")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="CPU: tiny views and decoder, a few steps")
    a = ap.parse_args(argv)
    if a.smoke:
        a.mode, a.canvas, a.font_size, a.batch, a.eval_samples = "128:128", 128, 16, 2, 2
        a.layers, a.hidden, a.heads, a.experts, a.moe_inter, a.inter = 2, 64, 2, 4, 32, 128
        a.max_steps, a.eval_every, a.warmup, a.workers, a.max_words = 3, 2, 2, 1, 3
    torch.manual_seed(a.seed)
    # Short GIL turns (as the pipeline's, deepseek_ocr/engine/gil.py): the loader's thread
    # receives batches while the training thread launches kernels, and at the default 5 ms a
    # thread that gave the GIL up waits that long to get it back, with the GPU idle.
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers fork after the tokenizer ran
    device = torch.device("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = tempfile.TemporaryDirectory()
    sizes = dict(layers=a.layers, experts=a.experts, topk=a.topk, hidden_size=a.hidden, heads=a.heads,
                 intermediate_size=a.inter, moe_intermediate_size=a.moe_inter)
    if a.smoke:  # a 2-layer SAM and CLIP: the official tower's float32 AdamW needs ~7 GB
        folder = smoke_checkpoint(Path(work.name) / "model", **sizes)
    else:
        folder = make_random_checkpoint(Path(work.name) / "model", dtype=torch.float32, seed=a.seed, **sizes)
    # float32 master weights; bf16 compute comes from autocast on CUDA.
    ocr = DeepseekOCR.from_pretrained(folder, device=device, dtype=torch.float32)
    scaled = scale_residual_outputs(ocr.model, a.residual_init_scale) if a.residual_init_scale != 1 else 0
    print(f"residual-branch outputs scaled by {a.residual_init_scale}: {scaled} tensors", flush=True)
    summary = set_trainable(ocr.model, "all" if a.preset == "tower-frozen" else a.preset)
    if a.preset == "tower-frozen":
        for name, p in ocr.model.named_parameters():
            if name.startswith(VISION_TOWER):
                p.requires_grad_(False)
        summary = summarize_trainable(ocr.model, a.preset)
    print(summary, flush=True)
    ocr.model.train()
    lines = Lines(ocr.tokenizer, a.mode, a.words, a.max_words, a.canvas, a.font_size, a.min_words, a.max_lines,
                  a.jitter)
    held_rng = random.Random(10**6 + a.seed)  # never a training worker's seed
    held = [lines.sample(held_rng, answer=False) for _ in range(a.eval_samples)]
    max_new = 2 * max(len(ocr.tokenizer.encode(t)) for _, t in held) + 8
    # With --master-weights (the trainer's option, training/precision.py): on CUDA the matmul
    # weights train as bf16 copies of their float32 masters, rounded once per step rather than
    # cast by autocast at every use.
    masters = None
    if device.type == "cuda" and a.master_weights:
        masters = MasterWeights([p for _, p in matmul_weights(ocr.model, exclude=(ocr.model.decoder.lm_head,))])
    opt = tower_and_rest_optimizer(ocr.model, a.lr, 0.01, a.tower_lr_scale,
                                   substitute=masters.master_of if masters else None, beta2=a.beta2)
    params = [masters.master_of(p) if masters else p for p in ocr.model.parameters() if p.requires_grad]
    # The vision tower's share of the gradient norm, logged with the total (where the jumps come from).
    tower_params = [masters.master_of(p) if masters else p for n, p in ocr.model.named_parameters()
                    if p.requires_grad and n.startswith(VISION_TOWER)]
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    budget = a.minutes * 60
    decay_s = (a.decay_minutes if a.decay_minutes is not None else a.minutes) * 60
    stop_s = budget if a.stop_after is None else min(budget, a.stop_after * 60)
    state_dir = Path(a.state) if a.state else out / "state"
    cfg = {k: v for k, v in vars(a).items()}
    cfg.update(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu", torch=torch.__version__,
               trainable=summary.trainable, image_tokens=int(held[0][0].images_seq_mask.sum()))
    log = {"config": cfg, "evals": [], "loss_curve": []}
    train_s, step, samples, wall_before, t_wall = 0.0, 0, 0, 0.0, time.perf_counter()
    if a.resume:
        counters, log = load_state(state_dir, ocr.model, opt, cfg, ignore=RESUMABLE_CHANGES)
        train_s, step, samples, wall_before = (counters[k] for k in ("train_s", "step", "samples", "wall_s"))
        log["config"]["calls"] = log["config"].get("calls", 1) + 1
        print(f"resumed from {state_dir}: step {step}, {train_s / 60:.2f} training minutes", flush=True)
    # A resumed call draws from another stream (the data are endless random images, so replaying
    # the first call's exactly buys nothing); its seeds (x1000 + worker) stay clear of the
    # first call's and of the held-out set's (10**6 + seed).
    stream_seed = a.seed + (1_000_003 + step if a.resume else 0)
    loader = torch.utils.data.DataLoader(Stream(lines, a.batch, stream_seed), batch_size=None, collate_fn=as_is,
                                         num_workers=a.workers, prefetch_factor=2 if a.workers else None,
                                         persistent_workers=bool(a.workers),
                                         # the loader's thread then receives (unpickles) the batches:
                                         # the views' codes (~0.26 MB per gray 512 view)
                                         pin_memory=device.type == "cuda")

    def run_eval():
        with masters.float32() if masters else contextlib.nullcontext():  # the float32 weights
            res = evaluate(ocr, held, min(a.eval_samples, 64), max_new)
        res.update(step=step, train_seconds=round(train_s, 1), samples=samples)
        log["evals"].append(res)
        wer = "n/a" if res["wer"] is None else f"{res['wer']:.3f}"
        print(f"step {step:6d}  {train_s / 60:5.2f} min  CER {res['cer']:.3f}  WER {wer}  "
              f"e.g. {res['examples'][0]['prediction'][:40]!r} <- {res['examples'][0]['reference'][:40]!r}", flush=True)
        (out / "log.json").write_text(json.dumps(log, indent=1))
        plot(log, out / "cer.png")  # after every eval: a run stopped at a time limit keeps its plot

    if not a.resume:
        run_eval()
    if masters:
        masters.to_compute()  # after load_state, which wrote the masters
    # Training time is the loop's wall time, evaluations excepted (loader waits count). The host
    # does not wait for each step: a step's numbers (ce, gradient norm) are read after the next
    # step has been queued, so the GPU runs one step while the host queues the next (reading
    # them at once left the GPU idle while the host queued every kernel of the step).
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def record(numbers) -> bool:
        at_step, at_s, ce_t, gnorm_t, tower_t = numbers
        ce, gnorm, tower = (float(v) for v in torch.stack([ce_t.float(), gnorm_t.float(), tower_t.float()]).tolist())
        if not math.isfinite(ce):
            print(f"non-finite loss at step {at_step}; stopping", flush=True)
            return False
        if at_step % 10 == 0 or a.smoke:
            # [step, seconds, ce, gradient norm, the tower's part of it (nan: not measured)], before clipping
            log["loss_curve"].append([at_step, round(at_s, 2), round(ce, 4), round(gnorm, 3), round(tower, 3)])
        if at_step % 50 == 0:
            tower_part = "" if math.isnan(tower) else f" (tower {tower:.2f})"
            print(f"step {at_step:6d}  {at_s / 60:5.2f} min  ce {ce:.3f}  |g| {gnorm:.2f}{tower_part}  "
                  f"{samples / max(at_s, 1e-9):.0f} samples/s", flush=True)
        return True

    # The workers start (and make their first batches) before the clock does, as the model's load.
    batches = iter(loader)
    batches = itertools.chain([next(batches)], batches)
    sync()
    base_s, mark = train_s, time.perf_counter()
    pending = None
    not_measured = torch.full((), math.nan, device=device)
    for packed in batches:
        train_s = base_s + time.perf_counter() - mark
        if train_s >= stop_s or (a.max_steps is not None and step >= a.max_steps):
            break
        batch = [from_numpy(d, device) for d in packed]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, train_s / decay_s, a.lr, a.warmup) * g["lr_scale"]
        with amp:
            res = ocr.loss(batch, gradient_checkpointing=a.gradient_checkpointing)
        res.loss.backward()
        if masters:
            masters.gather_grads()
        tower = tower_grad_norm(tower_params, device) if (step + 1) % 10 == 0 or a.smoke else not_measured
        gnorm = torch.nn.utils.clip_grad_norm_(params, a.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if masters:
            masters.refresh()
        step += 1
        samples += len(batch)
        if pending is not None and not record(pending):
            pending = None
            break
        pending = (step, base_s + time.perf_counter() - mark, res.ce.detach(), gnorm.detach(), tower)
        if step % a.eval_every == 0 or (a.profile and step == (2 if a.smoke else 20)):
            sync()
            train_s = base_s + time.perf_counter() - mark
            if not record(pending):
                pending = None
                break
            pending = None
            if step % a.eval_every == 0:
                run_eval()
            if a.profile and step == (2 if a.smoke else 20):
                profile_steps(ocr, batch, opt, params, amp, a, masters)
            base_s, mark = train_s, time.perf_counter()
    sync()
    train_s = base_s + time.perf_counter() - mark
    if pending is not None:
        record(pending)
    if not log["evals"] or log["evals"][-1]["step"] != step:
        run_eval()
    if masters:
        masters.to_master()  # the float32 weights, for the state saved below
    log["wall_seconds"] = round(wall_before + time.perf_counter() - t_wall, 1)
    if train_s < budget and a.stop_after is not None:
        save_state(state_dir, ocr.model, opt, {"train_s": train_s, "step": step, "samples": samples,
                                               "wall_s": log["wall_seconds"]}, log, cfg)
        print(f"state saved to {state_dir} at step {step}: continue with --resume", flush=True)
    log["final_cer"] = log["evals"][-1]["cer"]
    log["samples_per_s"] = round(samples / max(train_s, 1e-9), 1)
    (out / "log.json").write_text(json.dumps(log, indent=1))
    plot(log, out / "cer.png")
    print(f"done: {step} steps, {samples} samples in {train_s / 60:.1f} training minutes "
          f"({log['wall_seconds'] / 60:.1f} wall); held-out CER {log['evals'][0]['cer']:.3f} -> {log['final_cer']:.3f}",
          flush=True)
    work.cleanup()
    return log


if __name__ == "__main__":
    main()
