"""Reading `POST /v1/chat/completions` bodies as vLLM takes them for this model.

The prompt: the messages' text and image parts, in order, joined by newlines, in the official
plain template (no role tags), the image part standing as `<image>`. So the usual
`[image_url, text "Free OCR."]` becomes `<image>\\nFree OCR.`, the official prompt. A text that
already holds `<image>` keeps it where it is. Extra body fields: `mode` (resolution mode),
`prompt` (a preset of the command: markdown, ocr, free, figure, describe, locate:TEXT; it replaces
the messages' text), `vllm_xargs` (vLLM's n-gram rule), `skip_special_tokens`, `ignore_eos`,
`top_k`, `no_repeat_ngram_size`, `stop_on_repetition`.

Sampling parameters this server cannot honour are refused (422) when set to anything but their
neutral value, never silently ignored; unknown fields are ignored, as OpenAI clients send
bookkeeping fields (`user`, `metadata`, ...).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..engine import GenerationOptions
from ..errors import DeepseekOCRError
from ..processing.views import Mode
from ..prompts import prompt_from_spec
from .config import ServerConfig
from .errors import InvalidRequestError, from_library_error
from .media import ImageRef, image_ref
from .params import json_bool, json_int, json_number, json_str, mode_field

IMAGE = "<image>"
ROLES = ("system", "developer", "user", "assistant")
_XARGS = {"ngram_size": "windowed_ngram_size", "window_size": "ngram_window",
          "whitelist_token_ids": "ngram_whitelist"}
# Fields whose neutral value is all this server does.
_NEUTRAL = {"n": (1,), "presence_penalty": (0, 0.0), "frequency_penalty": (0, 0.0),
            "repetition_penalty": (1, 1.0), "logprobs": (False,), "top_logprobs": (0,),
            "best_of": (1,), "tools": ([],), "logit_bias": ({},)}


@dataclass
class ChatRequest:
    prompt: str
    image: ImageRef | None
    mode: Mode
    options: GenerationOptions
    stream: bool
    include_usage: bool
    skip_special_tokens: bool
    model: str


def _content_parts(message: dict, index: int, config: ServerConfig) -> list[str | ImageRef]:
    param = f"messages[{index}].content"
    content = message.get("content")
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if not isinstance(content, list):
        raise InvalidRequestError("content must be a string or a list of parts", param=param)
    parts: list[str | ImageRef] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, dict):
            raise InvalidRequestError("a content part must be an object", param=where)
        kind = part.get("type")
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError("a text part needs a string 'text'", param=where)
            parts.append(text)
        elif kind == "image_url":
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            parts.append(image_ref(url, config, param=f"{where}.image_url"))
        else:
            raise InvalidRequestError(f"content part type {kind!r} is not supported (text, image_url)", param=where)
    return parts


def _prompt_and_image(messages, config: ServerConfig) -> tuple[str, ImageRef | None]:
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("messages must be a non-empty list", param="messages")
    texts: list[str | None] = []  # None stands for the image part
    image: ImageRef | None = None
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequestError("a message must be an object", param=f"messages[{i}]")
        if message.get("role") not in ROLES:
            raise InvalidRequestError(f"role must be one of {list(ROLES)}, got {message.get('role')!r}",
                                      param=f"messages[{i}].role")
        for part in _content_parts(message, i, config):
            if isinstance(part, ImageRef):
                if image is not None:
                    raise InvalidRequestError("one image per request: DeepSeek-OCR reads one page per prompt "
                                              "(send one request per image)", param=part.param)
                image = part
                texts.append(None)
            elif part:
                texts.append(part)
    # A placeholder the user wrote in the text stays where it is; otherwise the image part's
    # position gets it.
    written = any(t is not None and IMAGE in t for t in texts)
    text = "\n".join(t if t is not None else IMAGE for t in texts if t is not None or not written)
    return text, image


def _neutral_only(body: dict) -> None:
    for name, neutral in _NEUTRAL.items():
        value = body.get(name)
        if value is not None and value not in neutral:
            raise InvalidRequestError(f"{name}={value!r} is not supported by this server", param=name)
    stop = body.get("stop")
    if stop not in (None, [], ""):
        raise InvalidRequestError("stop sequences are not supported by this server", param="stop")
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise InvalidRequestError("response_format must be absent or {\"type\": \"text\"}", param="response_format")


def _ngram_options(body: dict) -> dict:
    xargs = body.get("vllm_xargs")
    out: dict = {}
    if xargs is None:
        return out
    if not isinstance(xargs, dict):
        raise InvalidRequestError("vllm_xargs must be an object", param="vllm_xargs")
    unknown = sorted(set(xargs) - set(_XARGS))
    if unknown:
        raise InvalidRequestError(f"vllm_xargs: unknown key(s) {unknown}; known: {sorted(_XARGS)}", param="vllm_xargs")
    for key, option in _XARGS.items():
        if key not in xargs or xargs[key] is None:
            continue
        if key == "whitelist_token_ids":
            ids = xargs[key]
            if not isinstance(ids, list) or any(isinstance(t, bool) or not isinstance(t, int) or t < 0 for t in ids):
                raise InvalidRequestError("vllm_xargs.whitelist_token_ids must be a list of token ids",
                                          param="vllm_xargs.whitelist_token_ids")
            out[option] = ids
        else:
            out[option] = json_int(xargs, key, minimum=1 if key == "window_size" else 0)
    if out and not out.get("windowed_ngram_size"):
        raise InvalidRequestError("vllm_xargs: window_size and whitelist_token_ids need ngram_size "
                                  "(vLLM's recommended setting: ngram_size 30, window_size 90)", param="vllm_xargs")
    return out


def parse_chat(body, config: ServerConfig) -> ChatRequest:
    """Validate a chat completion body; InvalidRequestError (422) or MalformedRequestError (400)
    names the field at fault."""
    if not isinstance(body, dict):
        raise InvalidRequestError("the body must be a JSON object")
    _neutral_only(body)
    text, image = _prompt_and_image(body.get("messages"), config)
    preset = json_str(body, "prompt")
    if preset is not None:
        try:
            text = prompt_from_spec(preset)
        except DeepseekOCRError as err:
            raise from_library_error(err, "prompt") from None
    if image is None and IMAGE in text:
        raise InvalidRequestError("the prompt holds <image> but the request has no image_url part", param="messages")
    if image is None and not text.strip():
        raise InvalidRequestError("the messages hold neither text nor an image", param="messages")
    max_tokens = json_int(body, "max_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = json_int(body, "max_completion_tokens", minimum=1)
    top_k = json_int(body, "top_k", minimum=-1)
    ngram = _ngram_options(body)
    # With vLLM's rule asked for, the official rule (on by default, as in `infer`) steps aside
    # unless named: vLLM serves with only the rule it is given.
    official = json_int(body, "no_repeat_ngram_size", minimum=0, default=None if ngram else 20)
    kwargs = dict(max_new_tokens=max_tokens,
                  temperature=json_number(body, "temperature", low=0.0, high=2.0, default=0.0),
                  top_p=json_number(body, "top_p", low=0.0, high=1.0, low_open=True),
                  top_k=top_k if top_k and top_k > 0 else None,
                  seed=json_int(body, "seed"),
                  no_repeat_ngram_size=official or None,
                  stop_on_repetition=json_bool(body, "stop_on_repetition", False),
                  ignore_eos=json_bool(body, "ignore_eos", False), **ngram)
    try:
        options = GenerationOptions(**kwargs)
    except DeepseekOCRError as err:
        raise from_library_error(err) from None
    stream = json_bool(body, "stream", False)
    stream_options = body.get("stream_options")
    if stream_options is not None and not isinstance(stream_options, dict):
        raise InvalidRequestError("stream_options must be an object", param="stream_options")
    include_usage = json_bool(stream_options or {}, "include_usage", False)
    model = json_str(body, "model", config.model_name)
    return ChatRequest(prompt=text, image=image, mode=mode_field(body.get("mode"), config.default_mode),
                       options=options, stream=stream, include_usage=include_usage,
                       skip_special_tokens=json_bool(body, "skip_special_tokens", True), model=model)
