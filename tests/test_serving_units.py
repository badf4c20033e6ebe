"""Pieces of the server without a model: reading chat bodies into prompts, image sources
(data URLs, refusals, the opt-in fetch against a loopback HTTP server), and the metrics page."""
from __future__ import annotations

import base64
import http.server
import re
import threading

import pytest

from deepseek_ocr.serving.chat_request import parse_chat
from deepseek_ocr.serving.config import ServerConfig
from deepseek_ocr.serving.errors import InvalidRequestError, MalformedRequestError
from deepseek_ocr.serving.media import decode_data_url, fetch, image_ref
from deepseek_ocr.serving.metrics import Histogram, Metrics

CFG = ServerConfig()
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
URL = "data:image/png;base64," + base64.b64encode(PNG).decode()


def body(*parts, role="user", **extra):
    return {"messages": [{"role": role, "content": list(parts)}], **extra}


def image(url=URL):
    return {"type": "image_url", "image_url": {"url": url}}


def text(t):
    return {"type": "text", "text": t}


def test_prompts_follow_the_plain_template():
    assert parse_chat(body(image(), text("Free OCR.")), CFG).prompt == "<image>\nFree OCR."
    assert parse_chat(body(text("Read:"), image()), CFG).prompt == "Read:\n<image>"
    # A placeholder written by the user stays where it is.
    assert parse_chat(body(text("A <image> B"), image()), CFG).prompt == "A <image> B"
    # A preset replaces the text; system text comes first; a string content is text.
    req = parse_chat({"messages": [{"role": "system", "content": "Be exact."},
                                   {"role": "user", "content": [image(), text("ignored")]}],
                      "prompt": "locate:Total"}, CFG)
    assert req.prompt == "<image>\nLocate <|ref|>Total<|/ref|> in the image."
    assert parse_chat({"messages": [{"role": "system", "content": "Be exact."},
                                    {"role": "user", "content": "Hello"}]}, CFG).prompt == "Be exact.\nHello"


def test_generation_options_as_vllm_takes_them():
    req = parse_chat(body(image(), text("x"), max_tokens=64, temperature=0.5, top_p=0.9, top_k=40, seed=3,
                          vllm_xargs={"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [128821]},
                          stream=True, stream_options={"include_usage": True}, mode="1024:640:crop"), CFG)
    o = req.options
    assert (o.max_new_tokens, o.temperature, o.top_p, o.top_k, o.seed) == (64, 0.5, 0.9, 40, 3)
    assert (o.windowed_ngram_size, o.ngram_window, list(o.ngram_whitelist)) == (30, 90, [128821])
    assert o.no_repeat_ngram_size is None  # vLLM applies the rule it is given, only
    assert req.stream and req.include_usage and req.skip_special_tokens
    assert (req.mode.base_size, req.mode.image_size, req.mode.crop) == (1024, 640, True)
    plain = parse_chat(body(image(), text("x")), CFG)
    assert plain.options.temperature == 0.0 and plain.options.no_repeat_ngram_size == 20
    assert plain.mode.name == "gundam" and plain.options.max_new_tokens is None
    assert parse_chat(body(image(), text("x"), top_k=-1), CFG).options.top_k is None  # vLLM's "off"


@pytest.mark.parametrize("extra, param", [
    ({"n": 2}, "n"), ({"stop": ["\n"]}, "stop"), ({"logprobs": True}, "logprobs"),
    ({"presence_penalty": 0.5}, "presence_penalty"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 1.5}, "max_tokens"), ({"temperature": 3}, "temperature"), ({"top_p": 0}, "top_p"),
    ({"seed": "1"}, "seed"), ({"stream": "yes"}, "stream"), ({"mode": "giant"}, "mode"),
    ({"prompt": "poem"}, "prompt"), ({"vllm_xargs": {"ngram": 3}}, "vllm_xargs"),
    ({"vllm_xargs": {"ngram_size": 3, "whitelist_token_ids": ["td"]}}, "vllm_xargs.whitelist_token_ids"),
])
def test_unsupported_or_wrong_fields_are_named(extra, param):
    with pytest.raises(InvalidRequestError) as err:
        parse_chat(body(image(), text("x"), **extra), CFG)
    assert err.value.param == param and err.value.status == 422


def test_malformed_messages():
    cases = [({"messages": "hi"}, "messages"), (body(text("x"), role="tool"), "messages[0].role"),
             (body({"type": "input_audio"}), "messages[0].content[0]"), (body(text("<image> x")), "messages"),
             (body(image(), image()), "messages[0].content[1].image_url")]
    for b, param in cases:
        with pytest.raises(InvalidRequestError) as err:
            parse_chat(b, CFG)
        assert err.value.param == param
    with pytest.raises(InvalidRequestError):
        parse_chat([1, 2], CFG)


def test_data_urls_and_refused_sources():
    assert decode_data_url(URL, "u") == PNG
    assert decode_data_url("data:image/png;base64," + base64.b64encode(PNG).decode()[:8] + "\n" +
                           base64.b64encode(PNG).decode()[8:], "u") == PNG  # line breaks allowed
    for bad in ("data:image/png;base64,!!!", "data:image/png,rawbytes", "data:image/png;base64",
                "data:image/png;base64,"):
        with pytest.raises(MalformedRequestError):
            decode_data_url(bad, "u")
    for local in ("file:///etc/passwd", "FILE:///etc/passwd", "/etc/passwd", "./page.png", "~/page.png",
                  "C:\\scans\\page.png", "page.png"):
        with pytest.raises(InvalidRequestError, match="local file"):
            image_ref(local, CFG, "u")
    for other in ("ftp://host/page.png", "gopher://host/x", "javascript:alert(1)"):
        with pytest.raises(InvalidRequestError, match="not supported"):
            image_ref(other, CFG, "u")
    with pytest.raises(InvalidRequestError, match="--allow-fetch"):
        image_ref("https://example.invalid/page.png", CFG, "u")


class _Pages(http.server.BaseHTTPRequestHandler):
    """A loopback web server: a small image, a big one, a 404, and redirects to file: and ftp:."""

    def do_GET(self):
        if self.path.startswith("/redirect-"):
            self.send_response(302)
            target = {"/redirect-file": "file:///etc/passwd", "/redirect-ftp": "ftp://127.0.0.1/page.png"}
            self.send_header("Location", target[self.path])
            self.end_headers()
            return
        payload = {"/page.png": PNG, "/big.png": PNG + b"\0" * 5000}.get(self.path)
        if payload is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        if self.path != "/big.png":  # the big one without Content-Length: the cap must hold anyway
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_fetch_when_allowed_capped_and_http_only():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    cfg = ServerConfig(allow_fetch=True, fetch_max_bytes=1000, fetch_timeout=5)
    try:
        assert image_ref(base + "/page.png", cfg, "u").read(cfg) == PNG
        with pytest.raises(InvalidRequestError, match="over the limit of 1000"):
            fetch(base + "/big.png", cfg)
        with pytest.raises(InvalidRequestError, match="HTTP 404"):
            fetch(base + "/missing.png", cfg)
        for where in ("file", "ftp"):  # a redirect never leaves http(s)
            with pytest.raises(InvalidRequestError, match="(?i)redirect"):
                fetch(f"{base}/redirect-{where}", cfg)
        with pytest.raises(InvalidRequestError, match="fetching the image failed"):
            fetch("http://127.0.0.1:1/page.png", cfg)  # nothing listens on port 1
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_page_is_prometheus_text():
    m = Metrics()
    m.count_request("/v1/ocr", 200)
    m.count_request("/v1/ocr", 200)
    m.count_request("/v1/chat/completions", 429)
    m.tokens_arrived(3, None)
    m.tokens_arrived(2, 0.02)
    m.ttft.observe(0.3)

    class Worker:
        name, waiting, running, slots, failures = "engine-0", 1, 2, 4, 0
        stats = {"steps": 7, "preemptions": 0}

    page = m.render(in_flight=3, capacity=260, preparing=1, workers=[Worker()])
    assert 'deepseek_ocr_requests_total{code="200",endpoint="/v1/ocr"} 2' in page
    assert "deepseek_ocr_queue_depth 2" in page and "deepseek_ocr_generation_tokens_total 5" in page
    assert 'deepseek_ocr_running_requests{engine="engine-0"} 2' in page
    # Two gaps of 0.01 s (the 0.02 s shared by the two ids that arrived together).
    assert 'deepseek_ocr_inter_token_latency_seconds_bucket{le="0.01"} 2' in page
    assert "deepseek_ocr_inter_token_latency_seconds_count 2" in page
    for line in page.splitlines():  # every line a comment or `name{labels} value`
        assert line.startswith("# ") or re.fullmatch(r"[a-z_]+(\{[^}]*\})? \S+", line), line


def test_histogram_buckets_are_cumulative():
    h = Histogram((1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 3.0):
        h.observe(v)
    assert h.lines("x") == ['x_bucket{le="1.0"} 2', 'x_bucket{le="2.0"} 3', 'x_bucket{le="+Inf"} 4',
                            "x_sum 6.0", "x_count 4"]


@pytest.mark.parametrize("cores, workers", [(1, 2), (2, 2), (3, 3), (16, 4), (128, 4)])
def test_prepare_workers_follow_the_usable_cores(monkeypatch, cores, workers):
    import os

    from deepseek_ocr.serving import config as config_module
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    assert config_module.default_prepare_workers() == workers
    assert ServerConfig().prepare_workers == workers
    assert ServerConfig(prepare_workers=3).prepare_workers == 3
