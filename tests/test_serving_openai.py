"""The official `openai` client against a live server on the small random checkpoint (the
3-layer model the parity data was recorded with), and `/v1/ocr` on a generated PDF page.

Every answer is compared with the same request run in this process through the plain
reference loop (`ocr.generate(..., fast=False)`, greedy): text, token counts and finish reason.
"""
from __future__ import annotations

import base64
import io
import json

import httpx
import openai
import pytest
from PIL import Image, ImageDraw

from deepseek_ocr.engine import Engine
from deepseek_ocr.inputs.pdf import open_pdf
from deepseek_ocr.serving import Backend, BackgroundServer, ServerConfig

KEY = "test-key"
PROMPT = "<image>\nFree OCR."


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see conftest.py


@pytest.fixture(scope="module")
def server(small_model):
    cfg = ServerConfig(model_name="deepseek-ocr-small", api_key=KEY, prepare_workers=2)
    # A small pool: the session's model is shared with other modules; 4 slots of 1,024 tokens.
    engine = Engine(small_model.model, small_model.tokenizer, max_slots=4, initial_blocks=17)
    with BackgroundServer(Backend([small_model], cfg, engines=[engine])) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def picture():
    img = Image.new("RGB", (480, 640), "white")
    draw = ImageDraw.Draw(img)
    for k in range(8):
        draw.text((24, 30 + 70 * k), f"Row {k}: the quick brown fox {k * 17}", fill="black")
    return img


@pytest.fixture(scope="module")
def prepared(small_model, picture):
    """The picture's inputs with its vision rows computed once for every reference run."""
    inputs = small_model.prepare(picture, PROMPT, mode="tiny")
    inputs.vision_rows = small_model.encode_images([inputs])[0]
    return inputs


def data_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def messages(img) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(img)}},
                                         {"type": "text", "text": "Free OCR."}]}]


def test_chat_completion_with_an_image_and_its_usage(small_model, client, picture, prepared):
    ref = small_model.generate(prepared, max_new_tokens=12, fast=False)
    assert [m.id for m in client.models.list().data] == ["deepseek-ocr-small"]
    out = client.chat.completions.create(model="deepseek-ocr-small", messages=messages(picture), max_tokens=12,
                                         temperature=0, extra_body={"mode": "tiny", "skip_special_tokens": False})
    choice = out.choices[0]
    assert choice.message.content == ref.raw_text and choice.finish_reason == "length"
    assert out.usage.prompt_tokens == prepared.num_tokens == ref.prompt_tokens
    assert out.usage.completion_tokens == len(ref.token_ids) == 12
    assert out.usage.total_tokens == prepared.num_tokens + 12
    # The default drops special tokens from the text, as vLLM does (a text-only prompt: cheap).
    text_ref = small_model.generate(None, prompt="<|User|>: hello<|Assistant|>:", max_new_tokens=6, fast=False)
    plain = client.chat.completions.create(model="x", max_tokens=6, messages=[
        {"role": "user", "content": "<|User|>: hello<|Assistant|>:"}])
    assert plain.choices[0].message.content == small_model.tokenizer.decode(text_ref.token_ids,
                                                                            skip_special_tokens=True)
    assert plain.usage.prompt_tokens == text_ref.prompt_tokens


def test_streaming_gives_the_same_text_and_usage(small_model, client, picture, prepared):
    ref = small_model.generate(prepared, max_new_tokens=12, fast=False)
    stream = client.chat.completions.create(model="x", messages=messages(picture), max_tokens=12, stream=True,
                                            stream_options={"include_usage": True},
                                            extra_body={"mode": "tiny", "skip_special_tokens": False})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ref.raw_text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and chunks[-1].usage.prompt_tokens == ref.prompt_tokens


def test_vllm_xargs_through_extra_body(small_model, client, picture, prepared):
    """vLLM's recommended request shape; the n-gram rule is made tight enough to change the
    output of this random model, so passing it through is visible."""
    td = small_model.tokenizer.token_to_id("<td>")
    xargs = {"ngram_size": 2, "window_size": 12, "whitelist_token_ids": [td]}
    ref = small_model.generate(prepared, max_new_tokens=16, no_repeat_ngram_size=None, windowed_ngram_size=2,
                               ngram_window=12, ngram_whitelist=[td], fast=False)
    free = small_model.generate(prepared, max_new_tokens=16, no_repeat_ngram_size=None, fast=False)
    assert ref.token_ids != free.token_ids  # the rule matters for this page
    out = client.chat.completions.create(model="x", messages=messages(picture), max_tokens=16, temperature=0.0,
                                         extra_body={"mode": "tiny", "skip_special_tokens": False,
                                                     "vllm_xargs": xargs})
    assert out.choices[0].message.content == ref.raw_text
    assert out.usage.completion_tokens == len(ref.token_ids)


def test_errors_reach_the_client_typed(client, picture):
    with pytest.raises(openai.UnprocessableEntityError, match="local file"):
        client.chat.completions.create(model="x", max_tokens=4, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "file:///etc/hostname"}}, {"type": "text", "text": "OCR"}]}])
    with pytest.raises(openai.UnprocessableEntityError, match="context"):
        client.chat.completions.create(model="x", messages=messages(picture), max_tokens=9000,
                                       extra_body={"mode": "tiny"})
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0).models.list()


def test_ocr_endpoint_reads_a_generated_pdf_page(small_model, server):
    """A one-page PDF through /v1/ocr: the page comes back rendered at the dpi asked for, with
    the text the reference loop gives on that rendering, and the token figures."""
    src = Image.new("RGB", (300, 220), "white")
    ImageDraw.Draw(src).text((20, 40), "Invoice 2026-12 total 42.00", fill="black")
    buf = io.BytesIO()
    src.save(buf, "PDF", resolution=72.0)  # 300 x 220 points
    pdf = buf.getvalue()
    with open_pdf(pdf) as doc:
        rendered = doc.render(0, dpi=96)
    assert rendered.width == 400  # 300 pt at 96 dpi
    ref = small_model.generate(rendered, prompt=PROMPT, mode="tiny", max_new_tokens=10, fast=False)
    r = httpx.post(server.url + "/v1/ocr", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                   files={"file": ("scan.pdf", pdf, "application/pdf")},
                   data={"mode": "tiny", "prompt": "free", "dpi": "96", "max_tokens": "10",
                         "stop_on_repetition": "false"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["document"] == {"kind": "pdf", "page_count": 1, "pages": [1]}
    (p,) = body["pages"]
    assert p["status"] == "ok" and (p["width"], p["height"]) == rendered.size
    assert p["raw_text"] == ref.raw_text and p["finish_reason"] == ref.finish_reason
    assert p["tokens"] == {"prompt": ref.prompt_tokens, "vision": ref.vision_tokens,
                           "valid_vision": ref.valid_vision_tokens, "text": len(ref.token_ids),
                           "compression_ratio": ref.compression_ratio}
    assert body["usage"]["completion_tokens"] == len(ref.token_ids)
    assert json.loads(json.dumps(body))  # plain JSON all the way down
