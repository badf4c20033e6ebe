"""Text normalization applied before scoring, following OmniDocBench's evaluation of DeepSeek-OCR.

`normalize_omnidocbench(text)` applies, in this order:

1. `strip_grounding`: removes grounding markup, which is layout, not text.
   * every `<|ref|>LABEL<|/ref|><|det|>BOXES<|/det|>` span, label and boxes included (the label
     is a block category such as "title" or "text", not page text); spaces or tabs between the
     two halves are tolerated;
   * then a lone `<|ref|>…<|/ref|>` or `<|det|>…<|/det|>` pair (what is left of a broken span);
   * then an unclosed `<|det|>` with the box-list characters after it (digits, brackets,
     commas, spaces, `.`, `-`): the shape of output cut at `max_new_tokens` inside a span;
   * then any remaining single tag `<|ref|>`, `<|/ref|>`, `<|det|>`, `<|/det|>`, `<|grounding|>`.
   LABEL and BOXES never span a line break and never contain another tag (as in
   `deepseek_ocr.postprocess.grounding`), so a span cannot swallow the text between two tags.
2. `strip_equation_numbers`: removes `\\quad(n)` equation numbers: `\\quad` or `\\qquad`, optional
   spaces, then a parenthesised number such as `(1)`, `(12)`, `(2.3)`, `(3-1)`, `(4a)`, `(A.1)`
   (dotted or dashed digits, with one optional letter before, itself optionally followed by `.`
   or `-`, and one optional letter after; spaces inside the parentheses allowed). Parentheses
   holding anything else (`\\quad (x > 0)`) are kept: they are mathematics.
3. `strip_center_tags`: removes `<center>` and `</center>` tags (any case, spaces before `>`),
   keeping what they enclose.
4. `normalize_whitespace` with the chosen mode (default "collapse"), see there.

Nothing else is changed, on purpose: no case folding, no Unicode normalization (NFC/NFKC,
full-width to half-width), no punctuation removal, no markdown or LaTeX stripping. Each of those
would hide real recognition errors from some page; a caller who wants one applies it before
scoring, to both prediction and reference.
"""

from __future__ import annotations

import re

from deepseek_ocr.evaluation.errors import MetricInputError, check_text

WHITESPACE_MODES = ("keep", "collapse", "remove")

# A label or box list: any characters but a line break, never running into another tag.
_BODY = r"(?:(?!<\|/?(?:ref|det)\|>)[^\n])*"
_SPAN = re.compile(r"<\|ref\|>" + _BODY + r"<\|/ref\|>[ \t]*<\|det\|>" + _BODY + r"<\|/det\|>")
_LONE_PAIR = re.compile(r"<\|ref\|>" + _BODY + r"<\|/ref\|>|<\|det\|>" + _BODY + r"<\|/det\|>")
_UNCLOSED_DET = re.compile(r"<\|det\|>[\[\]0-9 ,.\-]*")
_TAG = re.compile(r"<\|/?(?:ref|det)\|>|<\|grounding\|>")

_EQUATION_NUMBER = re.compile(
    r"\\q?quad\s*\(\s*(?:[A-Za-z][.\-]?)?\d+(?:[.\-]\d+)*[A-Za-z]?\s*\)")
_CENTER_TAG = re.compile(r"</?center\s*>", re.IGNORECASE)
_WHITESPACE_RUN = re.compile(r"\s+")


def strip_grounding(text: str) -> str:
    """`text` without grounding markup (spans, broken spans, stray tags), as in the module doc.

    Example: `"<|ref|>title<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>\\n# Intro"` -> `"\\n# Intro"`.
    """
    text = check_text(text, "text")
    text = _SPAN.sub("", text)
    text = _LONE_PAIR.sub("", text)
    text = _UNCLOSED_DET.sub("", text)
    return _TAG.sub("", text)


def strip_equation_numbers(text: str) -> str:
    """`text` without `\\quad(n)` / `\\qquad(n)` equation numbers (see the module doc for `n`).

    Example: `"E = mc^2 \\quad (1)"` -> `"E = mc^2 "`.
    """
    return _EQUATION_NUMBER.sub("", check_text(text, "text"))


def strip_center_tags(text: str) -> str:
    """`text` without `<center>` / `</center>` tags; their content is kept."""
    return _CENTER_TAG.sub("", check_text(text, "text"))


def normalize_whitespace(text: str, mode: str = "collapse") -> str:
    """Normalize whitespace (Python's `str` `\\s`: spaces, tabs, line breaks, U+3000, ...).

    Modes:
        "keep": unchanged.
        "collapse": every run of whitespace becomes one space, and the ends are stripped. Line
            breaks and indentation are layout: a page whose lines wrap differently from the
            ground truth holds the same text and should cost nothing, while a space missing
            between two words still costs one edit. The default.
        "remove": all whitespace deleted. For scripts written without spaces (Chinese,
            Japanese), where spacing in either text is noise, and for a score blind to spacing
            altogether (OmniDocBench's own text-block cleaning drops it too).

    Raises:
        MetricInputError: for an unknown mode.
    """
    text = check_text(text, "text")
    if mode == "keep":
        return text
    if mode == "collapse":
        return _WHITESPACE_RUN.sub(" ", text).strip()
    if mode == "remove":
        return _WHITESPACE_RUN.sub("", text)
    raise MetricInputError(f"whitespace mode must be one of {WHITESPACE_MODES}, got {mode!r}")


def normalize_omnidocbench(text: str, *, whitespace: str = "collapse") -> str:
    """OmniDocBench's normalization for DeepSeek-OCR output (grounding, `\\quad(n)`, `<center>`
    removed), then whitespace per `normalize_whitespace(mode=whitespace)`.

    Apply it to both the prediction and the reference before an edit distance.
    """
    text = strip_grounding(text)
    text = strip_equation_numbers(text)
    text = strip_center_tags(text)
    return normalize_whitespace(text, whitespace)
