"""The training loop on CPU: overfitting, exact resume, signals, NaN/OOM stops, checkpoint files,
and the `train` / `eval` subcommands end to end.

The model is a random checkpoint with the official (full-size) vision tower and a tiny decoder
(2 layers, hidden 64, 4 experts). Set DEEPSEEK_OCR_TRAIN_CKPT to a folder made by
`make_random_checkpoint(folder, layers=2, experts=4, topk=2, dtype=torch.float32, hidden_size=64,
heads=2, intermediate_size=128, moe_intermediate_size=32)` to skip rebuilding it.

In the loop tests the vision tower is frozen (decoder preset, or LoRA on decoder targets), so
the decoder only ever sees each image's vision rows, computed once. Encoding a Gundam page with
the full-size random tower takes minutes on two shared CPU cores, so fixed random rows of the
exact layout (one row per `<image>` position of the real Gundam / tiny inputs) stand in for the
tower's output; the gradients through the vision tower are the objective's tests' business. The
subcommand test runs the real tower on small images (64x64 mode).
"""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open

from deepseek_ocr import DeepseekOCR
from deepseek_ocr.training.checkpoint import list_checkpoints
from deepseek_ocr.training.config import TrainConfig
from deepseek_ocr.training.evaluate import prompt_only
from deepseek_ocr.training.lora import has_lora, merge_lora, unload
from deepseek_ocr.training.trainer import NonFiniteLossError, Trainer, TrainingError, TrainingOOMError
from deepseek_ocr.weights.random import make_random_checkpoint

from test_pipeline import CKPT_ARGS, checkpoint_folder

TINY = dict(layers=2, experts=4, topk=2, dtype=torch.float32, hidden_size=64, heads=2,
            intermediate_size=128, moe_intermediate_size=32)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    reuse = os.environ.get("DEEPSEEK_OCR_TRAIN_CKPT")
    if reuse and (Path(reuse) / "config.json").is_file():
        return Path(reuse)
    # TINY is test_pipeline's CKPT_ARGS: the session's one random checkpoint of that shape
    # (~12 s to build on the CI machine) serves the pipeline, command and training tests alike.
    assert TINY == CKPT_ARGS
    return checkpoint_folder(tmp_path_factory)


@pytest.fixture(scope="module")
def base(ckpt):
    ocr = DeepseekOCR.from_pretrained(ckpt, device="cpu", dtype="float32")
    snapshot = {k: v.clone() for k, v in ocr.model.decoder.state_dict().items()}
    return ocr, snapshot


@pytest.fixture
def ocr(base):
    """The base model as loaded (LoRA removed, decoder weights restored) for every test."""
    model, snapshot = base
    if has_lora(model.model):
        unload(model.model)
    model.model.decoder.load_state_dict(snapshot)
    model.zero_grad()
    return model


def _image(w: int, h: int, text: str) -> Image.Image:
    im = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(im).text((5, 5), text, fill="black")
    return im


@pytest.fixture(scope="module")
def samples(base):
    """Four samples: a Gundam page with 2 tiles, two tiny-mode images, one text-only."""
    ocr, _ = base
    items = [ocr.prepare(_image(800, 400, "page"), "<image>\nFree OCR.", mode="gundam", answer="Gundam page: total 42."),
             ocr.prepare(_image(300, 200, "line"), "<image>\nFree OCR.", mode="tiny", answer="tiny line 7"),
             ocr.prepare(None, "Translate: bonjour", answer="hello"),
             ocr.prepare(_image(200, 300, "card"), "<image>\nDescribe this image.", mode="tiny", answer="a white card")]
    assert items[0].crops.shape[0] == 2 and items[0].mode.name == "gundam"
    g = torch.Generator().manual_seed(0)
    hidden = ocr.config.decoder.hidden_size
    for i, inp in enumerate(items):
        inp.extras["source"] = f"sample-{i}"
        if inp.has_image:  # see the module docstring
            inp.vision_rows = 0.5 * torch.randn(inp.num_vision_tokens, hidden, generator=g)
    return items


def _cfg(tmp_path, name="run", **kw) -> TrainConfig:
    base = dict(model="unused", data=["in-memory"], output_dir=str(tmp_path / name), progress=False,
                tensorboard=False, save_model=False, checkpoint_every=0, log_every=1, max_grad_norm=1.0)
    base.update(kw)
    return TrainConfig(**base)


def _greedy(ocr, items) -> list[str]:
    return [r.text for r in ocr.generate([prompt_only(inp) for inp in items], max_new_tokens=24)]


# ------------------------------------------------------------------------------------- overfit
def test_overfit_full_decoder(tmp_path, ocr, samples):
    cfg = _cfg(tmp_path, preset="decoder", lr=3e-3, max_steps=40, batch_size=4, schedule="constant")
    result = Trainer(ocr, cfg, samples).train()
    assert result.step == 40 and not result.interrupted
    assert result.losses[-1]["loss"] < 0.05, [round(r["loss"], 4) for r in result.losses]
    assert _greedy(ocr, samples) == [s.answer for s in samples]


def test_overfit_lora(tmp_path, ocr, samples):
    # A frozen random LM head caps the reachable loss: with 64-wide hidden states and rows of norm
    # ~1 the right id's logit stays below ~8 against 129,280 others (a floor near 4.5, although the
    # greedy outputs are right long before). A trained head's rows are far longer; scaling the
    # random head by 4 gives the base model that property (the head stays frozen, and the
    # fixture restores it for the other tests).
    with torch.no_grad():
        ocr.model.decoder.lm_head.weight.mul_(4.0)
    cfg = _cfg(tmp_path, lora_r=8, lora_alpha=16, lr=1e-2, max_steps=20, batch_size=4, schedule="constant")
    trainer = Trainer(ocr, cfg, samples)
    trainable = {n for n, p in ocr.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    result = trainer.train()
    assert result.losses[-1]["loss"] < 0.05, [round(r["loss"], 4) for r in result.losses]
    assert all(p.abs().max() > 0 for n, p in ocr.model.named_parameters() if ".lora_B" in n)  # the LoRA trained
    assert _greedy(ocr, samples) == [s.answer for s in samples]
    merge_lora(ocr.model)  # what `deepseek-ocr train` writes to OUT/model
    assert _greedy(ocr, samples) == [s.answer for s in samples]


# -------------------------------------------------------------------------------------- resume
def _trained(ocr) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in ocr.model.named_parameters() if p.requires_grad}


def _reset(ocr, base):
    if has_lora(ocr.model):
        unload(ocr.model)
    ocr.model.decoder.load_state_dict(base[1])


@pytest.mark.parametrize("kind", ["decoder", "lora", "bf16-masters"])
def test_resume_is_exact(tmp_path, ocr, base, samples, kind):
    # Batch 1 x accumulation 2 over 4 samples: the interruption falls mid-epoch. LoRA dropout
    # consumes the torch generator, so the resumed run also needs the RNG state back.
    # bf16-masters: bf16 autocast with the matmul weights held as bf16 copies of float32
    # masters (training/precision.py); the checkpoints must hold the masters.
    extra = {"decoder": dict(preset="decoder"), "lora": dict(lora_r=4, lora_dropout=0.1),
             "bf16-masters": dict(preset="decoder", dtype="bfloat16")}[kind]
    common = dict(lr=2e-3, max_steps=6, batch_size=1, grad_accum=2, warmup_steps=2, weight_decay=0.01, **extra)

    # The uninterrupted reference, checkpointing every step and keeping 2.
    ref = Trainer(ocr, _cfg(tmp_path, "ref", checkpoint_every=1, keep_checkpoints=2, **common), samples).train()
    ref_weights = _trained(ocr)
    assert [s for s, _ in list_checkpoints(tmp_path / "ref")] == [5, 6]  # rotation keeps the last 2
    _check_checkpoint_files(list_checkpoints(tmp_path / "ref")[-1][1], ref_weights, lora=kind == "lora")

    # The same run, sent SIGINT after step 3 (no periodic checkpoints: the signal writes one).
    _reset(ocr, base)
    def interrupt(trainer, record):
        if record["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
    before = signal.getsignal(signal.SIGINT)
    first = Trainer(ocr, _cfg(tmp_path, "cut", **common), samples, on_step=interrupt).train()
    assert first.interrupted and first.step == 3
    assert [s for s, _ in list_checkpoints(tmp_path / "cut")] == [3]
    assert signal.getsignal(signal.SIGINT) is before  # the handlers are given back

    # A fresh model resumes from that checkpoint.
    _reset(ocr, base)
    torch.manual_seed(1234)  # whatever the generator holds now must not matter
    resumed = Trainer(ocr, _cfg(tmp_path, "cut", **common), samples, resume=first.checkpoint).train()
    assert resumed.step == 6 and not resumed.interrupted
    assert resumed.losses == ref.losses  # the whole curve, the first 3 steps from the checkpoint
    got = _trained(ocr)
    assert got.keys() == ref_weights.keys()
    for name, value in ref_weights.items():
        assert torch.equal(got[name], value), name  # bitwise
    log = [json.loads(line) for line in (tmp_path / "cut" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4, 5, 6]


def test_master_weights_train_as_autocast_casts_do(tmp_path, ocr, base, samples):
    # dtype="bfloat16" runs bf16 autocast on the CPU too. With master_weights the decoder's
    # matmul weights are bf16 copies while it trains and float32 again after; the run must be
    # bitwise the one where autocast casts the float32 weights at every use (accumulation over
    # two micro-batches included, and the text-only sample's step).
    common = dict(preset="decoder", dtype="bfloat16", lr=2e-3, max_steps=3, batch_size=2, grad_accum=2,
                  warmup_steps=1, weight_decay=0.01)
    runs = {}
    for on in (False, True):
        _reset(ocr, base)
        seen = []
        def watch(trainer, record):
            seen.append((ocr.model.decoder.layers[0].self_attn.q_proj.weight.dtype,
                         ocr.model.decoder.layers[1].mlp.experts.gate_up.dtype, ocr.model.decoder.norm.weight.dtype))
        result = Trainer(ocr, _cfg(tmp_path, f"masters-{on}", master_weights=on, **common), samples,
                         on_step=watch).train()
        runs[on] = (result.losses, _trained(ocr), seen)
    bf16, f32 = torch.bfloat16, torch.float32
    assert runs[True][2] == [(bf16, bf16, f32)] * 3 and runs[False][2] == [(f32, f32, f32)] * 3
    assert runs[True][0] == runs[False][0]
    assert all(p.dtype == f32 for p in ocr.model.parameters())  # given back after training
    for name, value in runs[False][1].items():
        assert torch.equal(runs[True][1][name], value), name


def test_lora_base_in_bf16_trains_as_autocast_casts_do(tmp_path, ocr, base, samples):
    # LoRA with bf16 compute: the decoder's frozen base, once its values are bf16 values (as the
    # official checkpoint's are), is held in bf16 while training, float32 again after; the run
    # equals autocast's casts of the float32 base bit for bit.
    common = dict(lora_r=4, lora_alpha=8, dtype="bfloat16", lr=5e-3, max_steps=3, batch_size=2, grad_accum=2,
                  warmup_steps=1)
    runs = {}
    for on in (False, True):
        _reset(ocr, base)
        with torch.no_grad():
            for p in ocr.model.decoder.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        seen = []
        def watch(trainer, record):
            seen.append(ocr.model.decoder.layers[0].self_attn.q_proj.weight.dtype)
        result = Trainer(ocr, _cfg(tmp_path, f"lora-bf16-{on}", bf16_frozen_base=on, **common), samples,
                         on_step=watch).train()
        runs[on] = (result.losses, _trained(ocr), seen)
        assert ocr.model.decoder.layers[0].self_attn.q_proj.weight.dtype == torch.float32
    assert runs[True][2] == [torch.bfloat16] * 3 and runs[False][2] == [torch.float32] * 3
    assert runs[True][0] == runs[False][0]
    assert runs[True][1].keys() == runs[False][1].keys() and all(".lora_" in n for n in runs[True][1])
    for name, value in runs[False][1].items():
        assert torch.equal(runs[True][1][name], value), name


class _Preparing:
    """The four samples of the `samples` fixture, prepared when read (as `SampleDataset` does),
    recording the threads that read them; the fixture's vision rows are attached after."""

    def __init__(self, ocr, samples):
        self.ocr, self.samples = ocr, samples
        self.specs = [(_image(800, 400, "page"), "<image>\nFree OCR.", "gundam"),
                      (_image(300, 200, "line"), "<image>\nFree OCR.", "tiny"),
                      (None, "Translate: bonjour", "gundam"),
                      (_image(200, 300, "card"), "<image>\nDescribe this image.", "tiny")]
        self.threads: set[str] = set()

    def __len__(self):
        return len(self.specs)

    def __getitem__(self, i):
        self.threads.add(threading.current_thread().name)
        image, prompt, mode = self.specs[i]
        inp = self.ocr.prepare(image, prompt, mode=mode, answer=self.samples[i].answer)
        inp.vision_rows = self.samples[i].vision_rows
        inp.extras["source"] = f"sample-{i}"
        return inp


def test_preparing_ahead_on_threads_changes_nothing(tmp_path, ocr, base, samples):
    # The next step's samples are prepared on threads while a step trains (training/prefetch.py);
    # the run must be bitwise the run that prepares each step in the loop.
    common = dict(preset="decoder", lr=2e-3, max_steps=5, batch_size=2, grad_accum=1, warmup_steps=1)
    runs = {}
    for workers in (0, 2):
        _reset(ocr, base)
        data = _Preparing(ocr, samples)
        result = Trainer(ocr, _cfg(tmp_path, f"w{workers}", prepare_workers=workers, **common), data).train()
        runs[workers] = (result.losses, _trained(ocr), data.threads)
    assert runs[0][2] == {threading.main_thread().name}
    assert runs[2][2] and all(t.startswith("deepseek-ocr-train-prepare") for t in runs[2][2] - {threading.main_thread().name})
    assert runs[2][2] != {threading.main_thread().name}
    assert runs[2][0] == runs[0][0]
    for name, value in runs[0][1].items():
        assert torch.equal(runs[2][1][name], value), name


def _check_checkpoint_files(folder: Path, weights: dict, *, lora: bool) -> None:
    """Everything in a checkpoint is safetensors or JSON (no pickle), and it holds the run."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and all(p.suffix in (".safetensors", ".json") for p in files), files
    for p in files:
        assert not p.read_bytes()[:2].startswith(b"\x80"), f"{p} looks like a pickle"
        if p.suffix == ".json":
            json.loads(p.read_text())
        else:
            with safe_open(str(p), "pt") as f:
                assert list(f.keys())
    state = json.loads((folder / "state.json").read_text())
    assert state["step"] == 6 and len(state["losses"]) == 6
    assert state["sampler"] == {"n": 4, "seed": 0, "shuffle": True, "epoch": 2, "position": 4}
    with safe_open(str(folder / "optimizer.safetensors"), "pt") as f:
        slots = {k.rsplit("::", 1)[0] for k in f.keys()}
    assert slots == set(weights)
    if lora:
        assert (folder / "adapter" / "adapter_config.json").is_file()
    else:
        with safe_open(str(folder / "trainable.safetensors"), "pt") as f:
            assert set(f.keys()) == set(weights)
            assert all(torch.equal(f.get_tensor(k), weights[k]) for k in weights)


# --------------------------------------------------------------------------------------- stops
def test_nan_loss_stops_and_keeps_the_last_checkpoint(tmp_path, ocr, samples):
    cfg = _cfg(tmp_path, preset="decoder", lr=1e-3, max_steps=5, batch_size=2, checkpoint_every=2)

    def poison(trainer, record):
        if record["step"] == 2:  # after step 2's checkpoint is written
            with torch.no_grad():
                trainer.ocr.model.decoder.norm.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError) as err:
        Trainer(ocr, cfg, samples, on_step=poison).train()
    assert err.value.step == 3
    assert "step 3" in str(err.value) and "sample-" in str(err.value)
    assert all(s.startswith("sample-") for s in err.value.samples) and len(err.value.samples) == 2
    (step, folder), = list_checkpoints(tmp_path / "run")
    assert step == 2 and str(folder) in str(err.value)
    with safe_open(str(folder / "trainable.safetensors"), "pt") as f:
        assert torch.isfinite(f.get_tensor("decoder.norm.weight")).all()


def test_nan_loss_with_skip_drops_that_step_only(tmp_path, ocr, samples, monkeypatch):
    """RELIABILITY 28, "or skips, if asked": a batch whose loss is NaN (step 3 of 5) leaves the
    weights as step 2 left them, is logged as skipped, and the later steps train on."""
    from deepseek_ocr.training.distributed import LossModule
    real = LossModule.forward
    calls = []

    def nan_at_third_call(self, batch, *args, **kwargs):
        out = real(self, batch, *args, **kwargs)
        calls.append(len(batch))
        if len(calls) == 3:
            out.ce = out.ce * float("nan")
            out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(LossModule, "forward", nan_at_third_call)
    cfg = _cfg(tmp_path, preset="decoder", lr=1e-3, max_steps=5, batch_size=2, on_nonfinite="skip")
    weights = {}
    result = Trainer(ocr, cfg, samples, on_step=lambda t, r: weights.__setitem__(r["step"], _trained(t.ocr))).train()
    assert result.step == 5 and len(calls) == 5
    assert [r["loss"] is None for r in result.losses] == [False, False, True, False, False]
    for name, w in weights[3].items():  # not updated at step 3 ...
        assert torch.equal(w, weights[2][name]), name
    moved = [n for n, w in weights[4].items() if not torch.equal(w, weights[3][n])]
    assert moved and all(torch.isfinite(w).all() for w in weights[5].values())  # ... then trained on
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in log if "skipped" in r]
    assert [r["step"] for r in skipped] == [3] and "the loss is nan at step 3" in skipped[0]["skipped"]
    assert "sample-" in skipped[0]["skipped"] and skipped[0]["grad_norm"] == "nan"


def test_the_command_skips_with_on_nonfinite_and_says_so(tmp_path, monkeypatch, capsys):
    """`deepseek-ocr train --on-nonfinite skip` in process, a NaN loss at step 2 of 3: exit 0,
    result.json counts the skipped step and keeps the last applied step's loss. Its own
    checkpoint with a 2-block vision tower: the command loads a second model beside this
    module's, and the full tower would add 1.6 GB to the suite's peak memory."""
    from deepseek_ocr.cli import main
    ckpt = make_random_checkpoint(tmp_path / "ckpt", **TINY, vision_depth=2)
    from deepseek_ocr.training.distributed import LossModule
    real, calls = LossModule.forward, []

    def nan_at_second_call(self, batch, *args, **kwargs):
        out = real(self, batch, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            out.ce, out.loss = out.ce * float("nan"), out.loss * float("nan")
        return out

    monkeypatch.setattr(LossModule, "forward", nan_at_second_call)
    data = tmp_path / "pages"
    data.mkdir()
    for i, text in enumerate(["first page", "second page"]):
        _image(96, 64, text).save(data / f"p{i}.png")
        (data / f"p{i}.txt").write_text(text + "\n")
    out = tmp_path / "run"
    code = main(["train", "--model", str(ckpt), "--data", str(data), "--mode", "64:64", "--lora-r", "4",
                 "--max-steps", "3", "--batch-size", "2", "--on-nonfinite", "skip",
                 "--out", str(out)])
    assert code == 0 and len(calls) == 3
    summary = json.loads((out / "result.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    last = [r["loss"] for r in log if r.get("step") == 3 and "loss" in r]
    assert summary["skipped_steps"] == 1 and summary["final_loss"] == last[0] and math.isfinite(last[0])
    said = capsys.readouterr()
    assert "done: 3 steps (1 skipped for a NaN/Inf loss)" in said.err  # messages go to stderr


def test_skipping_stops_after_ten_non_finite_steps_in_a_row(tmp_path, ocr, samples):
    cfg = _cfg(tmp_path, preset="decoder", lr=1e-3, max_steps=20, batch_size=2, on_nonfinite="skip")

    def poison(trainer, record):
        if record["step"] == 2:  # every later step is NaN: the run has diverged
            with torch.no_grad():
                trainer.ocr.model.decoder.norm.weight.fill_(float("nan"))

    with pytest.raises(NonFiniteLossError) as err:
        Trainer(ocr, cfg, samples, on_step=poison).train()
    assert err.value.step == 12 and "10 steps in a row" in str(err.value)


def test_skip_is_decided_by_every_rank_together(monkeypatch):
    """With several ranks the verdicts are summed: a rank whose own loss was finite skips too
    when another rank's was not (else it would step and wait in a collective the others skip)."""
    from deepseek_ocr.training import nonfinite
    from deepseek_ocr.training.nonfinite import NonFiniteSteps
    others, reduced = {"bad": 1.0}, []

    def all_reduce_sum(value, ctx):  # this rank's verdict plus the other ranks'
        reduced.append(value)
        return value + others["bad"]

    monkeypatch.setattr(nonfinite, "all_reduce_sum", all_reduce_sum)
    policy = NonFiniteSteps("skip", limit=3)
    skipped = policy.skip(None, 7, dist=object())
    assert skipped is not None and skipped.step == 7 and "another rank" in str(skipped)
    others["bad"] = 0.0
    assert policy.skip(None, 8, dist=object()) is None and policy.in_a_row == 0 and policy.skipped == 1
    stop = NonFiniteSteps("stop")
    others["bad"] = 1.0
    assert stop.skip(None, 1, dist=object()) is None and len(reduced) == 2  # no collective under "stop"
    with pytest.raises(NonFiniteLossError):
        stop.skip(NonFiniteLossError("the loss is nan", 2, []), 2)
    with pytest.raises(ValueError, match="on_nonfinite"):
        NonFiniteSteps("ignore")


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, ocr, samples, monkeypatch):
    """RELIABILITY 30: the second checkpoint's optimizer file fails half-written (ENOSPC): the run
    stops with an error that says which step and why, step 1's checkpoint is intact and is what
    `--resume auto` picks, and no partial folder is left."""
    import errno

    from deepseek_ocr.training import checkpoint
    from deepseek_ocr.training.checkpoint import CheckpointWriteError, read_state, resolve_resume
    real = checkpoint.save_file
    writes = []

    def save_file(tensors, path, metadata=None):
        writes.append(Path(path).name)
        if Path(path).name == "optimizer.safetensors" and "step-000002" in path:
            Path(path).write_bytes(b"\0" * 1000)  # what was written before the disk filled
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, path, metadata=metadata)

    monkeypatch.setattr(checkpoint, "save_file", save_file)
    cfg = _cfg(tmp_path, preset="decoder", lr=1e-3, max_steps=3, batch_size=2, checkpoint_every=1)
    with pytest.raises(CheckpointWriteError) as err:
        Trainer(ocr, cfg, samples).train()
    text = str(err.value)
    assert "step 2" in text and "No space left on device" in text and "step-000001" in text
    assert isinstance(err.value, TrainingError)  # the command's exit code 1: the run failed
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-000001"]
    assert resolve_resume("auto", tmp_path / "run") == root / "step-000001"
    assert read_state(root / "step-000001")["step"] == 1
    with safe_open(str(root / "step-000001" / "optimizer.safetensors"), "pt") as f:
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())


def test_out_of_memory_is_explained(tmp_path, ocr, samples, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    from deepseek_ocr.training.distributed import LossModule
    monkeypatch.setattr(LossModule, "forward", oom)  # what the loop runs the objective through
    cfg = _cfg(tmp_path, preset="decoder", max_steps=2, batch_size=2)
    with pytest.raises(TrainingOOMError) as err:
        Trainer(ocr, cfg, samples).train()
    text = str(err.value)
    assert "batch_size=2" in text and "sequence lengths" in text and "gradient_checkpointing" in text
    assert list_checkpoints(tmp_path / "run") == []


def test_config_errors_are_listed(tmp_path):
    from deepseek_ocr.training.config import TrainConfigError
    with pytest.raises(TrainConfigError) as err:
        TrainConfig(data=[], lr=-1.0, schedule="cosine2", preset="decoder", lora_r=4)
    text = str(err.value)
    for needle in ("data is empty", "lr must be positive", "schedule must be one of", "lora_r is set",
                   "max_steps and/or epochs"):
        assert needle in text
    (tmp_path / "c.toml").write_text('data = ["x"]\n[optim]\nlr = 1e-4\nmax_step = 3\n')
    with pytest.raises(TrainConfigError, match="did you mean 'max_steps'"):
        TrainConfig.from_file(tmp_path / "c.toml")
    (tmp_path / "c.toml").write_text('data = ["x"]\n[optim]\nlr = 1e-4\nmax_steps = 3\n')
    cfg = TrainConfig.from_file(tmp_path / "c.toml", {"lr": 5e-4, "batch_size": None})
    assert (cfg.lr, cfg.max_steps, cfg.batch_size) == (5e-4, 3, 1)


def test_schedule_values():
    from deepseek_ocr.training.schedule import lr_factor
    # Hand-computed: warmup 2 of 6, then cosine from 1 at step 2 to 0 at step 5.
    got = [lr_factor(s, total=6, warmup=2) for s in range(6)]
    want = [0.5, 1.0, 1.0, 0.5 * (1 + math.cos(math.pi / 3)), 0.5 * (1 + math.cos(2 * math.pi / 3)), 0.0]
    assert got == pytest.approx(want, abs=1e-12)
    assert [lr_factor(s, total=5, schedule="linear", min_ratio=0.2) for s in range(5)] == pytest.approx(
        [1.0, 0.8, 0.6, 0.4, 0.2])


# ---------------------------------------------------------------------------- the subcommands
def test_train_and_eval_commands(tmp_path, ckpt):
    data = tmp_path / "pages"
    data.mkdir()
    for i, text in enumerate(["first page", "second page"]):
        _image(96, 64, text).save(data / f"p{i}.png")
        (data / f"p{i}.txt").write_text(text + "\n")
    out, ev = tmp_path / "run", tmp_path / "ev"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    train = [sys.executable, "-m", "deepseek_ocr", "train", "--model", str(ckpt), "--data", str(data),
             "--eval-data", str(data), "--mode", "64:64", "--lora-r", "4", "--max-steps", "2", "--batch-size", "2",
             "--checkpoint-every", "1", "--log-every", "1", "--cache-vision", "--eval-max-new-tokens", "6", "--out", str(out), "--quiet"]
    proc = subprocess.run(train, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for path in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model/config.json",
                 "log.jsonl", "result.json", "train_config.json", "eval/step-000002.jsonl",
                 "checkpoints/step-000002/state.json"):
        assert (out / path).is_file(), path
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]
    assert any("eval" in r and "cer" in r["eval"] for r in log)

    evaluate = [sys.executable, "-m", "deepseek_ocr", "eval", "--model", str(out / "model"), "--data", str(data),
                "--mode", "64:64", "--max-new-tokens", "6", "--out", str(ev), "--json", "--quiet"]
    proc = subprocess.run(evaluate, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)
    assert metrics["count"] == 2 and metrics["loss"] > 0 and "cer" in metrics and "repetition" in metrics
    assert json.loads((ev / "metrics.json").read_text())["count"] == 2
    assert len((ev / "predictions.jsonl").read_text().splitlines()) == 2

    usage = subprocess.run([sys.executable, "-m", "deepseek_ocr", "train", "--data", str(data)],
                           capture_output=True, text=True, env=env, timeout=120)
    assert usage.returncode == 2 and "max_steps" in usage.stderr


def test_a_failed_checkpoint_on_rank_0_stops_the_other_ranks(tmp_path, ocr, samples, monkeypatch):
    """Under torchrun, rank 0 alone writes checkpoints: when its write fails, the other ranks
    learn it from the collective after the save and stop too (before, they trained on into the
    next step's all-reduce and waited there until the launcher or a timeout stopped them). Here as rank 1
    of 2, the collective stubbed to report rank 0's failure; the real collective over two gloo
    ranks is in test_training_distributed.py."""
    from deepseek_ocr.training import distributed
    from deepseek_ocr.training.checkpoint import CheckpointWriteError
    from deepseek_ocr.training.distributed import DistContext
    votes = []

    def all_reduce_sum(value, ctx):
        votes.append(value)  # this rank's: it wrote nothing, so it did not fail
        return value + 1.0  # plus rank 0's failure

    cfg = _cfg(tmp_path, preset="decoder", lr=1e-3, max_steps=1, batch_size=2, checkpoint_every=1)
    trainer = Trainer(ocr, cfg, samples)
    monkeypatch.setattr(distributed, "all_reduce_sum", all_reduce_sum)
    trainer.rank, trainer.dist = 1, DistContext(rank=1, world_size=2)
    with pytest.raises(CheckpointWriteError, match="rank 0 could not write the checkpoint of step 0"):
        trainer.save()
    assert votes == [0.0]
    assert not (tmp_path / "run" / "checkpoints").exists()  # rank 1 writes nothing
