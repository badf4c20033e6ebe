"""The prompt presets of the `deepseek-ocr` command and the server (no torch, no model).

A spec is a preset name, `locate:TEXT`, or a raw prompt holding `<image>` once.
"""
from __future__ import annotations

from .errors import PromptError

PROMPTS = {
    "markdown": "<image>\n<|grounding|>Convert the document to markdown.",
    "ocr": "<image>\n<|grounding|>OCR this image.",
    "free": "<image>\nFree OCR.",
    "figure": "<image>\nParse the figure.",
    "describe": "<image>\nDescribe this image in detail.",
}
LOCATE = "<image>\nLocate <|ref|>{}<|/ref|> in the image."


def prompt_from_spec(spec: str) -> str:
    """The prompt a spec stands for; PromptError naming the choices otherwise.

    Args:
        spec: a name of `PROMPTS`, `locate:TEXT`, or a prompt with `<image>` exactly once.
    """
    if spec in PROMPTS:
        return PROMPTS[spec]
    if spec.startswith("locate:"):
        text = spec[len("locate:"):].strip()
        if not text:
            raise PromptError("locate:TEXT needs the text to find")
        return LOCATE.format(text)
    if spec.count("<image>") != 1:
        raise PromptError(f"the prompt must be one of {sorted(PROMPTS)}, locate:TEXT, or a prompt with "
                          f"<image> exactly once; got {spec!r}")
    return spec
