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


def first_content(lines) -> None:
    """Read a stream up to its first generated text: the request is then in its slot."""
    for line in lines:
        if '"content":"' in line and '"content":""' not in line:
            return


def test_sigterm_drains_then_cuts_at_the_shutdown_timeout_and_exits_0(checkpoint):
    """Two streams in flight at SIGTERM: the short one finishes whole within the shutdown
    timeout, the long one is cut when it passes; no new connection is taken meanwhile; the
    process exits 0."""
    proc, url = start(checkpoint, "--shutdown-timeout", "8")
    try:
        short, long = stream_lines(url, 40), stream_lines(url, 8000)
        first_content(short)
        first_content(long)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest = list(short)
        chunks = [json.loads(x[6:]) for x in rest if x.startswith("data: {")]
        assert "data: [DONE]" in rest and chunks[-1]["choices"][0]["finish_reason"] == "length"
        with pytest.raises(httpx.TransportError):  # no new connections once draining
            httpx.get(url + "/health", timeout=5)
        with pytest.raises(httpx.TransportError):  # the long stream is cut, not completed
            for line in long:
                assert line != "data: [DONE]"
        assert time.monotonic() - t0 >= 7  # it was given the shutdown timeout first
        assert proc.wait(timeout=60) == 0
        assert time.monotonic() - t0 < 40
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


@pytest.mark.parametrize("devices, argv, preallocated", [
    (["cuda:0"], [], True),
    (["cuda:0", "cuda:1"], ["--max-slots", "8"], True),
    (["cuda:0"], ["--kv-cache", "grow"], False),
    (["cpu"], [], False),
])
def test_kv_cache_pool_preallocated_on_gpus_unless_asked_to_grow(devices, argv, preallocated, monkeypatch):
    """`serve` asks each engine for its whole KV pool at start on GPUs (the engine caps the ask at
    its own limit); on the CPU, or with `--kv-cache grow`, the engine's small default stays."""
    import deepseek_ocr.serving as serving
    from deepseek_ocr.commands import serve

    seen = {}

    class FakeBackend:
        def __init__(self, models, config, engine_kwargs=None):
            seen["engine_kwargs"] = engine_kwargs

    monkeypatch.setattr(serve, "_devices", lambda args: devices)
    monkeypatch.setattr(serve, "_load", lambda args, devs: [object() for _ in devs])
    monkeypatch.setattr(serving, "Backend", FakeBackend)
    monkeypatch.setattr(serving, "create_app", lambda backend: None)
    monkeypatch.setattr(serving, "run_server", lambda *a, **k: None)
    monkeypatch.setattr(serve.signal, "signal", lambda *a: None)
    assert serve.main(["--model", "/some/checkpoint", *argv]) == 0
    kwargs = seen["engine_kwargs"]
    assert ("initial_blocks" in kwargs) == preallocated
    if preallocated:
        assert kwargs["initial_blocks"] >= 2**31 - 1  # more than any pool: the engine's cap decides
    if "--max-slots" in argv:
        assert kwargs["max_slots"] == 8
