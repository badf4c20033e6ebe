"""The server's mechanics on the tiny random model, live on 127.0.0.1: concurrency against
requests run alone, a bounded load with malformed requests mixed in, disconnects, the bounded
queue, timeouts, the API key, body limits, a failing engine step, and two engines.

References are independent of the server: the same prompt through `ocr.generate(...,
fast=False)` in this process (the plain reference loop, greedy), and hand-written expectations
for the error answers.
"""
from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import socket
import time

import httpx
import pytest
from PIL import Image, ImageDraw

from deepseek_ocr.engine import Engine
from deepseek_ocr.serving import Backend, BackgroundServer, ServerConfig
from tiny_model import tiny_model

PROMPTS = ["Free OCR.", "<|grounding|>Convert the document to markdown.", "Describe this image in detail.",
           "<|grounding|>OCR this image."]
MODES = ["tiny", "small", "base", "gundam", "512:512", "640:512:crop"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def ocr():
    return tiny_model(seed=3)


def page(seed: int, size=(320, 420)) -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for k in range(5):
        draw.text((10 + 7 * seed % 40, 20 + 60 * k), f"line {seed}.{k} of page {seed}", fill="black")
    return img


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def chat_body(img, text: str, **extra) -> dict:
    content = [{"type": "image_url", "image_url": {"url": data_url(img)}}, {"type": "text", "text": text}]
    return {"model": "tiny", "messages": [{"role": "user", "content": content}], **extra}


def backend_for(ocr, slots: int = 8, **config) -> Backend:
    cfg = ServerConfig(model_name="tiny", prepare_workers=2, **config)
    return Backend([ocr], cfg, engines=[Engine(ocr.model, ocr.tokenizer, max_slots=slots)])


def metric(text: str, name: str) -> float:
    """The sum of every sample of `name` in a Prometheus text page."""
    values = re.findall(rf"^deepseek_ocr_{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert values, f"{name} missing from /metrics"
    return sum(float(v) for v in values)


@pytest.fixture(scope="module")
def server(ocr):
    with BackgroundServer(backend_for(ocr, slots=8)) as srv:
        yield srv


def test_32_concurrent_requests_equal_each_request_alone(ocr, server):
    cases = [(PROMPTS[i % 4], MODES[i % 6], i % 5) for i in range(32)]
    refs = [ocr.generate(page(s), prompt="<image>\n" + p, mode=m, max_new_tokens=10, fast=False)
            for p, m, s in cases]

    def prepare_ms(r, sent):
        # Server-Timing: the request's preparation, within the time the client waited for headers
        m = re.fullmatch(r"prepare;dur=(\d+\.\d)", r.headers["server-timing"])
        assert m and 0 < float(m.group(1)) <= (time.perf_counter() - sent) * 1e3, r.headers["server-timing"]

    async def one(client, i, prompt, mode, seed):
        body = chat_body(page(seed), prompt, max_tokens=10, mode=mode, skip_special_tokens=False)
        sent = time.perf_counter()
        if i % 3 == 0:  # a third of them streamed
            async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                assert r.status_code == 200
                prepare_ms(r, sent)
                text = ""
                async for line in r.aiter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:])["choices"]:
                            text += choice["delta"].get("content") or ""
                return text, None
        r = await client.post("/v1/chat/completions", json=body)
        assert r.status_code == 200, r.text
        prepare_ms(r, sent)
        return r.json()["choices"][0]["message"]["content"], r.json()["usage"]

    async def all_at_once():
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(*(one(client, i, *c) for i, c in enumerate(cases)))

    results = asyncio.run(all_at_once())
    for (text, usage), ref in zip(results, refs):
        assert text == ref.raw_text
        if usage is not None:
            assert usage == {"prompt_tokens": ref.prompt_tokens, "completion_tokens": len(ref.token_ids),
                             "total_tokens": ref.prompt_tokens + len(ref.token_ids)}
    figures = httpx.get(server.url + "/metrics").text
    assert metric(figures, "engine_steps_total") > 0 and metric(figures, "requests_in_flight") == 0
    assert metric(figures, "prepare_seconds_count") >= 32 and metric(figures, "prepare_seconds_sum") > 0
    phases = dict(re.findall(r'^deepseek_ocr_engine_seconds_total{engine="engine-0",phase="(\w+)"} (\S+)$',
                             figures, re.M))
    assert set(phases) == {"admit", "encode", "decode", "read"}
    assert all(float(v) > 0 for v in phases.values()), phases  # images were encoded, tokens read


def malformed_requests(good: dict) -> list[tuple[object, int]]:
    """(body, expected status): each a way a client gets a request wrong."""
    image_part = good["messages"][0]["content"][0]
    text_part = good["messages"][0]["content"][1]

    def with_content(*parts):
        return {**good, "messages": [{"role": "user", "content": list(parts)}]}

    not_png = "data:image/png;base64," + base64.b64encode(b"this is no image at all").decode()
    return [
        (b'{"messages": [', 400),  # not JSON
        (b"", 400),  # empty body
        (with_content({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}, text_part), 400),
        (with_content({"type": "image_url", "image_url": {"url": not_png}}, text_part), 400),
        (with_content({"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}, text_part), 422),
        (with_content({"type": "image_url", "image_url": {"url": "/etc/hosts"}}, text_part), 422),
        (with_content(image_part, image_part, text_part), 422),  # two images
        ({**good, "max_tokens": 10 ** 6}, 422),  # past the context
        ({**good, "mode": "huge"}, 422),
        ({**good, "temperature": "hot"}, 422),
        ({**good, "messages": []}, 422),
        ({**good, "vllm_xargs": {"window_size": 5}}, 422),  # window without ngram_size
    ]


def test_bounded_load_with_malformed_requests_mixed_in(ocr, server):
    good = chat_body(page(7), "Free OCR.", max_tokens=6, mode="tiny")
    ref = ocr.generate(page(7), prompt="<image>\nFree OCR.", mode="tiny", max_new_tokens=6, fast=False)
    bad = malformed_requests(good)
    plan = [(good, 200)] * 24 + bad * 2  # 48 requests, fixed
    plan = [plan[(i * 17) % len(plan)] for i in range(len(plan))]  # interleaved, deterministically

    async def send(client, gate, body, expected):
        async with gate:
            if isinstance(body, bytes):
                r = await client.post("/v1/chat/completions", content=body,
                                      headers={"content-type": "application/json"})
            else:
                r = await client.post("/v1/chat/completions", json=body)
            return r, expected

    async def load():
        gate = asyncio.Semaphore(12)
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
            return await asyncio.wait_for(asyncio.gather(*(send(client, gate, b, e) for b, e in plan)), 120)

    t0 = time.monotonic()
    answers = asyncio.run(load())
    assert time.monotonic() - t0 < 120
    assert all(r.status_code < 500 for r, _ in answers)
    for r, expected in answers:
        assert r.status_code == expected, (r.status_code, expected, r.text)
        body = r.json()
        if expected == 200:
            assert body["choices"][0]["message"]["content"] == ocr.tokenizer.decode(ref.token_ids,
                                                                                    skip_special_tokens=True)
        else:
            assert body["error"]["message"] and "Traceback" not in r.text and "/work" not in r.text
    health = httpx.get(server.url + "/health")
    assert health.status_code == 200 and health.json()["in_flight"] == 0
    after = httpx.post(server.url + "/v1/chat/completions", json=good, timeout=60)
    assert after.status_code == 200


def test_disconnect_frees_the_slot_and_a_full_queue_answers_429(ocr):
    backend = backend_for(ocr, slots=2, max_queue=0)
    long = chat_body(page(1), "Free OCR.", max_tokens=3000, mode="tiny", ignore_eos=True, stream=True)
    with BackgroundServer(backend) as srv:
        clients = [httpx.Client(base_url=srv.url, timeout=60) for _ in range(2)]
        streams = []
        for c in clients:
            ctx = c.stream("POST", "/v1/chat/completions", json=long)
            r = ctx.__enter__()
            # Read up to the first content chunk: the request is then decoding in its slot. (The
            # line iterator is kept: dropping it would close the response, i.e. hang up now.)
            lines = r.iter_lines()
            for line in lines:
                if '"content":"' in line and '"content":""' not in line:
                    break
            streams.append((ctx, lines))
        figures = httpx.get(srv.url + "/metrics").text
        assert metric(figures, "running_requests") == 2
        refused = httpx.post(srv.url + "/v1/chat/completions", json={**long, "stream": False}, timeout=30)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        for ctx, _ in streams:
            ctx.__exit__(None, None, None)  # hang up mid-stream
        for c in clients:
            c.close()
        deadline = time.monotonic() + 20
        while True:
            figures = httpx.get(srv.url + "/metrics").text
            if metric(figures, "running_requests") == 0 and metric(figures, "requests_in_flight") == 0:
                break
            assert time.monotonic() < deadline, figures
            time.sleep(0.1)
        assert metric(figures, "requests_cancelled_total") == 2
        assert backend.workers[0].engine.cache.free_blocks == backend.workers[0].engine.cache.num_blocks - 1
        short = {**long, "stream": False, "max_tokens": 4, "ignore_eos": False}
        assert httpx.post(srv.url + "/v1/chat/completions", json=short, timeout=60).status_code == 200


def test_a_client_giving_up_on_a_plain_request_cancels_it(ocr):
    backend = backend_for(ocr, slots=2)
    with BackgroundServer(backend) as srv:
        with pytest.raises(httpx.ReadTimeout):  # httpx closes the connection on it
            httpx.post(srv.url + "/v1/chat/completions", timeout=httpx.Timeout(60, read=1.5),
                       json=chat_body(page(5), "Free OCR.", max_tokens=5000, mode="tiny", ignore_eos=True))
        deadline = time.monotonic() + 20
        while True:
            figures = httpx.get(srv.url + "/metrics").text
            if metric(figures, "running_requests") == 0 and metric(figures, "requests_in_flight") == 0:
                break
            assert time.monotonic() < deadline, figures
            time.sleep(0.1)
        assert metric(figures, "requests_cancelled_total") == 1
        assert metric(figures, "generation_tokens_total") < 5000


def test_request_timeout_cancels_and_answers_504(ocr):
    backend = backend_for(ocr, slots=2, request_timeout=1.0)
    with BackgroundServer(backend) as srv:
        t0 = time.monotonic()
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=60,
                       json=chat_body(page(2), "Free OCR.", max_tokens=5000, mode="tiny", ignore_eos=True))
        assert r.status_code == 504 and r.json()["error"]["type"] == "timeout_error"
        assert time.monotonic() - t0 < 10
        deadline = time.monotonic() + 10
        while backend.workers[0].running:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert "requests_timed_out_total 1" in httpx.get(srv.url + "/metrics").text
        # Streamed: the stream ends with an error event, then [DONE].
        with httpx.stream("POST", srv.url + "/v1/chat/completions", timeout=60, json=chat_body(
                page(2), "Free OCR.", max_tokens=5000, mode="tiny", ignore_eos=True, stream=True)) as r:
            lines = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["error"]["type"] == "timeout_error"


def test_cors_is_off_unless_origins_are_named(ocr, server):
    preflight = {"Origin": "http://page.test", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    r = httpx.options(server.url + "/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    with BackgroundServer(backend_for(ocr, slots=1, cors_origins=("http://page.test",), api_key="k")) as srv:
        r = httpx.options(srv.url + "/v1/chat/completions", headers=preflight)
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://page.test"
        r = httpx.options(srv.url + "/v1/chat/completions", headers={**preflight, "Origin": "http://other.test"})
        assert r.headers.get("access-control-allow-origin") != "http://other.test"
        r = httpx.get(srv.url + "/v1/models", headers={"Origin": "http://page.test", "Authorization": "Bearer k"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://page.test"


def test_api_key_limits_and_refused_sources(ocr, monkeypatch):
    backend = backend_for(ocr, slots=2, api_key="s3cret", max_body_bytes=200_000)
    good = chat_body(page(3), "Free OCR.", max_tokens=3, mode="tiny")
    key = {"Authorization": "Bearer s3cret"}
    with BackgroundServer(backend) as srv:
        c = httpx.Client(base_url=srv.url, timeout=60)
        assert c.get("/health").status_code == 200  # the one open endpoint
        for method, path in (("GET", "/v1/models"), ("GET", "/metrics"), ("POST", "/v1/chat/completions"),
                             ("POST", "/v1/ocr")):
            r = c.request(method, path, json=good if method == "POST" else None)
            assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", path
            r = c.request(method, path, json=good if method == "POST" else None,
                          headers={"Authorization": "Bearer wrong"})
            assert r.status_code == 401, path
        assert c.get("/v1/models", headers=key).json()["data"][0]["id"] == "tiny"
        assert c.post("/v1/chat/completions", json=good, headers=key).status_code == 200
        for url, words in (("file:///etc/passwd", "local file"), ("/etc/passwd", "local file"),
                           ("C:\\page.png", "local file"), ("http://127.0.0.1:1/page.png", "--allow-fetch")):
            body = {**good, "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Free OCR."}]}]}
            r = c.post("/v1/chat/completions", json=body, headers=key)
            assert r.status_code == 422 and words in r.json()["error"]["message"], url
        big = chat_body(Image.effect_noise((400, 400), 64).convert("RGB"), "Free OCR.")  # PNG of noise: > 200 kB
        r = c.post("/v1/chat/completions", json=big, headers=key)
        assert r.status_code == 413
        chunked = c.post("/v1/chat/completions", content=iter([b"{" + b" " * 150_000, b" " * 150_000 + b"}"]),
                         headers={**key, "content-type": "application/json"})
        assert chunked.status_code == 413
        assert c.get("/health").status_code == 200


def _raw_request(url: str, head: bytes, body: bytes = b"", timeout: float = 30.0) -> bytes:
    """One HTTP/1.1 exchange over a plain socket: the whole request written before any of the
    answer is read (as a client uploading a file does), then everything the server sends."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        try:
            sock.sendall(head + body)
        except (BrokenPipeError, ConnectionResetError):  # closed on us while we were still sending
            return b"<reset while sending>"
        chunks = []
        while True:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:  # what a client saw when the server closed on unread bytes
                return b"".join(chunks) + b"<reset>"
            if not data:
                return b"".join(chunks)
            chunks.append(data)
            if b"\r\n\r\n" in b"".join(chunks) and b"}" in data:  # the JSON error body has arrived
                return b"".join(chunks)


def test_an_over_limit_body_gets_its_413_not_a_reset(ocr):
    # The server reads (and drops) an over-limit body before answering, so the client, which is
    # still sending when the server decides, reads the 413 rather than a connection reset; one
    # waiting for 100 Continue gets the 413 at once, before sending anything.
    backend = backend_for(ocr, slots=1, max_body_bytes=1_000_000)
    body = b"{" + b" " * 8_500_000 + b"}"  # more than loopback's socket buffers hold: still sending
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n" % len(body))
    with BackgroundServer(backend) as srv:
        for _ in range(5):
            answer = _raw_request(srv.url, head + b"\r\n", body)
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        answer = _raw_request(srv.url, head + b"Expect: 100-continue\r\n\r\n", timeout=10)
        assert answer.startswith(b"HTTP/1.1 413") and b"100 Continue" not in answer, answer[:200]
        chunked = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                   b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b" " * 500_000
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(4)) + b"0\r\n\r\n"
        answer = _raw_request(srv.url, chunked, chunks)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert httpx.get(srv.url + "/health").status_code == 200


def test_a_failing_engine_step_fails_its_requests_only(ocr, monkeypatch):
    backend = backend_for(ocr, slots=4)
    engine = backend.workers[0].engine
    real_step, calls = engine.step, {"n": 0}

    def step_failing_once():
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected fault")
        return real_step()

    monkeypatch.setattr(engine, "step", step_failing_once)
    body = chat_body(page(4), "Free OCR.", max_tokens=6, mode="tiny")
    with BackgroundServer(backend) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 500 and r.json()["error"]["type"] == "generation_error"
        assert "injected" not in r.text  # the reason stays in the log
        again = httpx.post(srv.url + "/v1/chat/completions", json=body, timeout=60)
        assert again.status_code == 200
        assert "deepseek_ocr_engine_failures_total{engine=\"engine-0\"} 1" in httpx.get(srv.url + "/metrics").text


def test_two_engines_behind_one_endpoint(ocr):
    second = tiny_model(seed=3)  # the same weights: any engine must give the same text
    cfg = ServerConfig(model_name="tiny", prepare_workers=2)
    backend = Backend([ocr, second], cfg, engines=[Engine(m.model, m.tokenizer, max_slots=2) for m in (ocr, second)])
    refs = [ocr.generate(page(s), prompt="<image>\nFree OCR.", mode="tiny", max_new_tokens=8, fast=False)
            for s in range(6)]

    async def run():
        async with httpx.AsyncClient(base_url=srv.url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/chat/completions", json=chat_body(
                page(s), "Free OCR.", max_tokens=8, mode="tiny", skip_special_tokens=False)) for s in range(6)))

    with BackgroundServer(backend) as srv:
        answers = asyncio.run(run())
        figures = httpx.get(srv.url + "/metrics").text
    assert [a.json()["choices"][0]["message"]["content"] for a in answers] == [r.raw_text for r in refs]
    steps = re.findall(r'^deepseek_ocr_engine_steps_total{engine="engine-(\d)"} (\S+)$', figures, re.M)
    assert len(steps) == 2 and all(float(v) > 0 for _, v in steps)
