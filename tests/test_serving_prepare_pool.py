"""Chat requests prepared in a worker process (`ServerConfig.prepare_processes`), on the tiny
random model: the child's inputs against `ocr.prepare` in this process, library errors crossing
as themselves, a live server against one preparing on threads, and a killed child.

One module-scoped server with one spawned child serves every test: a child's start is its
imports, seconds each. The killed-child test runs last, as it replaces that child.
"""
from __future__ import annotations

import asyncio
import base64
import io
import os
import re
import signal
import time

import httpx
import pytest
import torch
from PIL import Image, ImageDraw

from deepseek_ocr.commands.serve import build_parser
from deepseek_ocr.engine import Engine
from deepseek_ocr.errors import InvalidImageError
from deepseek_ocr.processing.views import resolve_mode
from deepseek_ocr.serving import Backend, BackgroundServer, ServerConfig
from deepseek_ocr.serving import prepare_pool
from deepseek_ocr.serving.errors import MalformedRequestError
from deepseek_ocr.serving.media import decode_data_url
from tiny_model import tiny_model

PROMPT = "<image>\nFree OCR."
TENSORS = ("input_ids", "images_seq_mask", "images_spatial_crop", "global_view", "crops")


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def ocr():
    return tiny_model(seed=3)


def backend_for(ocr, processes: int) -> Backend:
    cfg = ServerConfig(model_name="tiny", prepare_workers=2, prepare_processes=processes)
    return Backend([ocr], cfg, engines=[Engine(ocr.model, ocr.tokenizer, max_slots=4)])


@pytest.fixture(scope="module")
def server(ocr):
    with BackgroundServer(backend_for(ocr, processes=1)) as srv:
        yield srv


def page(size=(900, 1300)) -> bytes:
    """A PNG large enough for Gundam tiles (2 x 3 of them at the default size)."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for k in range(20):
        draw.text((30, 30 + 60 * k), f"line {k}: the quick brown fox {k * 13}", fill="black")
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def unaddressed(text: str) -> str:
    """PIL names the BytesIO it failed to read by its address, which differs from run to run."""
    return re.sub(r"0x[0-9a-f]+", "0x?", text)


def in_child(server, fn, *args):
    return asyncio.run(server.backend.prepare_pool.run(fn, *args))


def chat(url: str, max_tokens: int = 8) -> dict:
    return {"model": "tiny", "max_tokens": max_tokens, "temperature": 0, "mode": "tiny",
            "skip_special_tokens": False,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                                      {"type": "text", "text": "Free OCR."}]}]}


def test_the_setting_and_the_flag():
    assert ServerConfig().prepare_processes == 0
    assert ServerConfig(prepare_processes=3).prepare_processes == 3
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="prepare_processes"):
            ServerConfig(prepare_processes=bad)
    assert build_parser().parse_args(["--prepare-processes", "4"]).prepare_processes == 4
    assert build_parser().parse_args([]).prepare_processes == 0


def test_engine_options_reach_the_engine():
    from deepseek_ocr.commands.serve import engine_settings
    args = build_parser().parse_args(["--prefill-tokens", "16384", "--max-slots", "64", "--admit-gather-steps", "6"])
    assert engine_settings(args, ["cuda:0"]) == {"max_slots": 64, "prefill_tokens": 16384, "admit_gather_steps": 6,
                                                 "initial_blocks": 2**31}
    assert engine_settings(build_parser().parse_args([]), ["cpu"]) == {}
    # on a GPU the admission budget measured best at concurrency 256 (RESULTS.md, eighth round)
    assert engine_settings(build_parser().parse_args(["--kv-cache", "grow"]), ["cuda:0"]) == {"prefill_tokens": 16384}
    assert engine_settings(build_parser().parse_args(["--prefill-tokens", "8192"]), ["cuda:0"])["prefill_tokens"] == 8192
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--prefill-tokens", "0"])


@pytest.mark.parametrize("mode", ["gundam", "base"])
def test_the_child_prepares_as_ocr_prepare(ocr, server, mode):
    data = page()
    # as the server's preparing threads prepare: the views as uint8 levels
    ref = ocr.prepare(data, PROMPT, resolve_mode(mode), pixel_codes=True)
    got = in_child(server, prepare_pool.prepare, data, PROMPT, resolve_mode(mode))
    for name in TENSORS:
        assert torch.equal(getattr(got, name), getattr(ref, name)), name
    from deepseek_ocr.vision.pixels import pixels_from_codes
    assert torch.equal(pixels_from_codes(got.global_view), ocr.prepare(data, PROMPT, resolve_mode(mode)).global_view)
    assert (got.prompt, got.mode, got.original_size, got.valid_vision_tokens) == \
           (ref.prompt, ref.mode, ref.original_size, ref.valid_vision_tokens)
    assert got.crops.shape[0] == (6 if mode == "gundam" else 0)
    # The pixels came through shared memory, not as bytes in the pipe.
    assert got.global_view.is_shared()
    # A data URL decoded in the child gives the same inputs.
    from_url = in_child(server, prepare_pool.prepare_data_url, data_url(data), "u", PROMPT, resolve_mode(mode))
    assert all(torch.equal(getattr(from_url, n), getattr(ref, n)) for n in TENSORS)


def test_the_child_prepares_text_only(ocr, server):
    prompt = "<|User|>: hello<|Assistant|>:"
    ref = ocr.prepare(None, prompt)
    got = in_child(server, prepare_pool.prepare, None, prompt, resolve_mode("gundam"))
    assert torch.equal(got.input_ids, ref.input_ids) and torch.equal(got.images_seq_mask, ref.images_seq_mask)
    assert got.global_view is None and not got.has_image


def test_errors_cross_as_themselves(ocr, server):
    bad = b"\x89PNG\r\n\x1a\n but not really an image"
    with pytest.raises(InvalidImageError) as here:
        ocr.prepare(bad, PROMPT, "tiny")
    with pytest.raises(InvalidImageError) as there:
        in_child(server, prepare_pool.prepare, bad, PROMPT, resolve_mode("tiny"))
    assert type(there.value) is type(here.value) and unaddressed(str(there.value)) == unaddressed(str(here.value))
    url = "data:image/png;base64,!!!"
    with pytest.raises(MalformedRequestError) as here:
        decode_data_url(url, "messages[0].content[0].image_url")
    with pytest.raises(MalformedRequestError) as there:
        in_child(server, prepare_pool.prepare_data_url, url, "messages[0].content[0].image_url", PROMPT,
                 resolve_mode("tiny"))
    assert (there.value.message, there.value.param, there.value.status) == \
           (here.value.message, here.value.param, here.value.status)


def test_the_server_answers_as_with_threads(ocr, server):
    good, bad_image, bad_base64 = data_url(page((320, 420))), data_url(b"not an image"), "data:image/png;base64,!!"
    with BackgroundServer(backend_for(ocr, processes=0)) as threads:
        answers = {}
        for name, srv in (("processes", server), ("threads", threads)):
            with httpx.Client(base_url=srv.url, timeout=120) as client:
                answers[name] = [client.post("/v1/chat/completions", json=chat(url)) for url in
                                 (good, bad_image, bad_base64)]
    (ok, image_error, base64_error), (ref_ok, ref_image_error, ref_base64_error) = \
        answers["processes"], answers["threads"]
    assert ok.status_code == ref_ok.status_code == 200, ok.text
    assert ok.json()["choices"] == ref_ok.json()["choices"] and ok.json()["usage"] == ref_ok.json()["usage"]
    assert ok.json()["usage"]["completion_tokens"] == 8
    for got, ref in ((image_error, ref_image_error), (base64_error, ref_base64_error)):
        assert got.status_code == ref.status_code == 400 and unaddressed(got.text) == unaddressed(ref.text)


def test_a_killed_child_is_answered_503_and_replaced(server):
    pool = server.backend.prepare_pool
    (victim,) = pool.pids
    os.kill(victim, signal.SIGKILL)
    body = chat(data_url(page((320, 420))), max_tokens=4)
    with httpx.Client(base_url=server.url, timeout=120) as client:
        first = client.post("/v1/chat/completions", json=body)
        assert first.status_code == 503, first.text
        assert "retry" in first.json()["error"]["message"] and first.headers["Retry-After"]
        assert client.get("/health").status_code == 200
        # The next request waits for the new child (its start) and is answered.
        started = time.perf_counter()
        later = client.post("/v1/chat/completions", json=body)
        assert later.status_code == 200, later.text
        assert time.perf_counter() - started < 60
        assert client.get("/health").status_code == 200
    assert len(pool.pids) == 1 and pool.pids[0] != victim
