"""`deepseek-ocr train` under torchrun: two CPU ranks over gloo with DDP (LoRA), checkpoints and
logs written once, then the run resumed in one process (another number of ranks).

The tiny random checkpoint of tests/test_trainer.py (its `ckpt` fixture) keeps this to about a
minute on two cores.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from test_trainer import ckpt  # noqa: F401  (the session fixture)

REPO = Path(__file__).resolve().parent.parent


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _folder(tmp_path: Path) -> Path:
    data = tmp_path / "pages"
    data.mkdir()
    for i, text in enumerate(["alpha", "beta", "gamma", "delta"]):
        img = Image.new("RGB", (96, 64), "white")
        ImageDraw.Draw(img).text((4, 20), text, fill="black")
        img.save(data / f"p{i}.png")
        (data / f"p{i}.txt").write_text(text + "\n")
    return data


def test_two_ranks_then_resume_on_one(tmp_path, ckpt):  # noqa: F811
    data, out = _folder(tmp_path), tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    common = ["train", "--model", str(ckpt), "--data", str(data), "--mode", "64:64", "--lora-r", "4",
              "--batch-size", "1", "--grad-accum", "2", "--checkpoint-every", "1", "--log-every", "1",
              "--no-save-model", "--out", str(out), "--quiet"]
    two = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_port()),
           "-m", "deepseek_ocr", *common, "--max-steps", "2"]
    proc = subprocess.run(two, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log if "loss" in r]
    assert steps == [1, 2], "rank 0 alone logs, once per step"
    assert all(r["samples"] == 4 for r in log if "loss" in r), "2 ranks x 1 sample x 2 micro-batches per step"
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step-000001", "step-000002"]
    state = json.loads((out / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["step"] == 2

    one = [sys.executable, "-m", "deepseek_ocr", *common, "--max-steps", "3", "--resume", "auto"]
    proc = subprocess.run(one, capture_output=True, text=True, env=env, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]
    assert (out / "checkpoints" / "step-000003" / "state.json").is_file()
