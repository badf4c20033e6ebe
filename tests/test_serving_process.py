"""`deepseek-ocr serve` as a process: it starts on a checkpoint folder, drains on SIGTERM
(a stream in flight completes, or is cut at the shutdown timeout), refuses new connections, and
exits 0; bad arguments exit 2 before any model is loaded.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch

from deepseek_ocr.commands.serve import main as serve_main
from tiny_model import tiny_model

TOKENIZER = Path(__file__).resolve().parent.parent / "deepseek_ocr" / "assets" / "tokenizer"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    folder = tiny_model(seed=2).save_pretrained(tmp_path_factory.mktemp("tiny_ckpt"), dtype=torch.float32)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(TOKENIZER / name, folder / name)
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(checkpoint: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    # One torch thread: the server's own threads share the machine's two cores with the test.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "deepseek_ocr", "serve", "--model", str(checkpoint),
                             "--device", "cpu", "--port", str(port), "--max-slots", "2",
                             "--served-model-name", "tiny", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, proc.communicate()
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)


def stream_lines(url: str, max_tokens: int):
    body = {"model": "tiny", "max_tokens": max_tokens, "ignore_eos": True, "stream": True,
            "messages": [{"role": "user", "content": "The capital of France is"}]}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        assert r.status_code == 200
        yield from r.iter_lines()


def test_sigterm_lets_the_stream_in_flight_finish_then_exits_0(checkpoint):
    proc, url = start(checkpoint, "--shutdown-timeout", "60")
    try:
        lines = stream_lines(url, 200)
        for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break
        proc.send_signal(signal.SIGTERM)
        rest = list(lines)
        chunks = [json.loads(x[6:]) for x in rest if x.startswith("data: {")]
        assert rest[-1] == "data: [DONE]" or rest[-2:] == ["data: [DONE]", ""]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        with pytest.raises(httpx.TransportError):  # no new connections once draining
            httpx.get(url + "/health", timeout=5)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_cancels_what_outlives_the_shutdown_timeout(checkpoint):
    proc, url = start(checkpoint, "--shutdown-timeout", "1")
    try:
        lines = stream_lines(url, 6000)
        for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        with pytest.raises(httpx.TransportError):  # the stream is cut, not completed
            for line in lines:
                assert line != "data: [DONE]"
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - t0 < 30
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("argv, words", [
    (["--device", "cpu", "--gpus", "0"], "--gpus"),
    (["--device", "cpu", "--default-mode", "huge"], "mode"),
    (["--device", "cpu", "--port", "0"], "--port"),
    (["--device", "nowhere"], "--device"),
])
def test_bad_arguments_exit_2_before_loading(argv, words, capsys):
    assert serve_main(["--model", "/nonexistent/checkpoint", *argv]) == 2
    assert words in capsys.readouterr().err
