"""Per-request generation settings, validated once when a request is made.

Every documented option runs on the engine; one it cannot honour is rejected here, never
silently dropped (the old fast path fell back to another loop, or ignored `ngram_whitelist`
without `windowed_ngram_size`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Sequence

from ..errors import GenerationError

TABLE_CELL_TOKENS = ("<td>", "</td>")


def _int_or_none(name: str, value, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GenerationError(f"{name} must be an integer >= {minimum} or None, got {value!r}")


@dataclass(frozen=True)
class GenerationOptions:
    """What one request asks of generation.

    Attributes:
        max_new_tokens: limit on generated tokens (None: what fits in the context).
        temperature: 0 greedy; > 0 samples (then top_p / top_k cut the distribution).
        top_p, top_k: nucleus mass in (0, 1], and the k most likely ids.
        seed: makes sampling reproducible per request: the request draws from its own
            generator, so its tokens do not depend on the requests batched beside it.
        no_repeat_ngram_size: the official rule (no n-gram twice in prompt + output); 20 by
            default as the official `infer`; None or 0 turns it off.
        windowed_ngram_size, ngram_window, ngram_whitelist: vLLM's rule (no n-gram repeated
            within the last `ngram_window` generated ids; whitelisted ids, by default `<td>` and
            `</td>`, never banned). `ngram_window`/`ngram_whitelist` need `windowed_ngram_size`.
        stop_on_repetition: end a request whose generated tail is one block repeated.
        ignore_eos: keep going past EOS (benchmarks: fixed output lengths).
        fast: True or None: the engine; False: the plain reference loop (`generation.generate`).
    """

    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    no_repeat_ngram_size: int | None = 20
    windowed_ngram_size: int | None = None
    ngram_window: int | None = None
    ngram_whitelist: Sequence[int] | None = None
    stop_on_repetition: bool = False
    ignore_eos: bool = False
    fast: bool | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens is not None and (isinstance(self.max_new_tokens, bool) or
                                                not isinstance(self.max_new_tokens, int) or
                                                self.max_new_tokens <= 0):
            raise GenerationError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        t = self.temperature
        if t is None or isinstance(t, bool) or not isinstance(t, (int, float)) or math.isnan(t) or t < 0:
            raise GenerationError(f"temperature must be a number >= 0, got {t!r}")
        if self.top_p is not None and (isinstance(self.top_p, bool) or not isinstance(self.top_p, (int, float))
                                       or not 0.0 < self.top_p <= 1.0):
            raise GenerationError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")
        _int_or_none("top_k", self.top_k, 1)
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise GenerationError(f"seed must be an integer or None, got {self.seed!r}")
        _int_or_none("no_repeat_ngram_size", self.no_repeat_ngram_size, 0)
        _int_or_none("windowed_ngram_size", self.windowed_ngram_size, 0)
        _int_or_none("ngram_window", self.ngram_window, 1)
        if not self.windowed_ngram_size and (self.ngram_window is not None or self.ngram_whitelist is not None):
            raise GenerationError("ngram_window and ngram_whitelist belong to the windowed n-gram rule: "
                                  "give windowed_ngram_size too (vLLM's setting is 30, window 90)")
        if self.ngram_whitelist is not None:
            ids = list(self.ngram_whitelist)
            if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
                raise GenerationError(f"ngram_whitelist must hold token ids (integers >= 0), got {ids!r}")
        for name in ("stop_on_repetition", "ignore_eos"):
            if not isinstance(getattr(self, name), bool):
                raise GenerationError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @classmethod
    def from_kwargs(cls, kwargs: dict) -> "GenerationOptions":
        """Build from keyword arguments; an unknown name is a TypeError naming it."""
        known = {f.name for f in fields(cls)}
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown generation argument(s): {sorted(unknown)}; known: {sorted(known)}")
        return cls(**kwargs)

    @property
    def sampled(self) -> bool:
        return bool(self.temperature) and self.top_k != 1

    @property
    def window(self) -> int:
        return 90 if self.ngram_window is None else self.ngram_window

    def whitelist(self, token_to_id) -> list[int]:
        """The windowed rule's exempt ids: as given, or the tokenizer's table-cell tokens."""
        if self.ngram_whitelist is not None:
            return [int(i) for i in self.ngram_whitelist]
        return [i for i in map(token_to_id, TABLE_CELL_TOKENS) if i is not None]

    def budget(self, prompt_tokens: int, context: int) -> int:
        """New tokens this request may produce; ContextLengthError when nothing fits."""
        from ..errors import ContextLengthError
        if prompt_tokens > context:
            raise ContextLengthError(f"the prompt has {prompt_tokens} tokens (image tokens included), more "
                                     f"than the model's context of {context}")
        if self.max_new_tokens is None:
            if prompt_tokens == context:
                raise ContextLengthError(f"the prompt fills the whole context of {context} tokens; "
                                         "no room for an answer")
            return context - prompt_tokens
        if prompt_tokens + self.max_new_tokens > context:
            raise ContextLengthError(f"prompt ({prompt_tokens} tokens) + max_new_tokens ({self.max_new_tokens}) = "
                                     f"{prompt_tokens + self.max_new_tokens} exceeds the context of {context}; "
                                     f"at most {context - prompt_tokens} new tokens fit")
        return self.max_new_tokens
