"""A text-level detector for outputs that ended in a repetition loop.

The generation loop can flag a loop itself (`finish_reason == "repetition"`, with
`stop_on_repetition`), but only when asked to, and outputs from other runs or other programs come
without it. A degenerate output keeps emitting one block until `max_new_tokens`, so its *end* is
periodic; `looks_like_repetition_loop` looks for exactly that.
"""

from __future__ import annotations

from deepseek_ocr.evaluation.errors import MetricInputError, check_text


def _periodic_tail(text: str, max_period: int, min_repeats: int, min_length: int) -> bool:
    n = len(text)
    for p in range(1, max_period + 1):
        need = max(min_repeats * p, min_length)
        if need > n:
            # `need` grows with p, so no longer period can fit either.
            break
        tail = text[n - need:]
        # A string s is p-periodic (s[i] == s[i + p] for every i) iff s[p:] == s[:-p]; one C-level
        # slice comparison per period instead of a Python loop over characters.
        if tail[p:] == tail[:-p]:
            return True
    return False


def looks_like_repetition_loop(text: str, *, max_period: int = 200, min_repeats: int = 10,
                               min_length: int = 200) -> bool:
    """Whether `text` ends in one block of characters repeated over and over.

    Rule: True when, for some period p with 1 <= p <= `max_period`, the last
    L = max(`min_repeats` * p, `min_length`) characters of the text are p-periodic (each character
    equals the one p positions before it), i.e. the text ends with at least `min_repeats` copies
    of a p-character block, covering at least `min_length` characters; the last copy may be cut
    short (a loop stopped by `max_new_tokens` mid-block still counts). The rule is tried on the
    text as given and on the text without trailing whitespace, so a loop of blank lines counts and
    so does a loop followed by one final newline.

    Counted in characters, not tokens, so that it works on any stored output. The defaults (10
    copies, at least 200 characters, blocks up to 200 characters) keep legitimate endings out:
    a line of dot leaders or a run of empty table cells would need 200 identical characters
    *at the very end of the page*. They do not catch a loop that the model left before the end.

    Args:
        text: the raw model output (before any normalization, which could change the tail).
        max_period: longest block looked for, in characters.
        min_repeats: fewest copies of the block.
        min_length: fewest characters in the periodic tail.

    Raises:
        MetricInputError: a non-positive parameter, or `text` not a string.
    """
    text = check_text(text, "text")
    for name, value in (("max_period", max_period), ("min_repeats", min_repeats),
                        ("min_length", min_length)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise MetricInputError(f"{name} must be a positive int, got {value!r}")
    if _periodic_tail(text, max_period, min_repeats, min_length):
        return True
    stripped = text.rstrip()
    return stripped != text and _periodic_tail(stripped, max_period, min_repeats, min_length)
