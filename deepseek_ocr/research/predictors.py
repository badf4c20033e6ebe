"""Predictors: what turns (page, setting) pairs into text, behind one interface.

A predictor is any callable `predictor(items) -> list[Prediction]` taking a list of
`(Page, Setting)` pairs and returning one `Prediction` per pair, in order. The sweep only
calls that, so the model and the oracle (and anything a researcher writes: another OCR system,
a cached run) plug into the same harness. A predictor also has `describe()`, the JSON-ready
facts that go into the protocol file (and decide whether a results folder can be resumed).

* `ModelPredictor`: DeepSeek-OCR through the public batched API (`prepare`, then one
  `generate` call for the whole list).
* `OraclePredictor`: the ground truth with a known number of injected character edits and no
  model, so the harness can be checked against an error rate known in advance.
"""
from __future__ import annotations

import math
import random
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

from ..errors import DeepseekOCRError
from ..evaluation import normalize_omnidocbench
from .errors import ResearchError
from .pages import Page, image_size
from .settings import Setting, vision_figures

WorkItem = tuple[Page, Setting]


@dataclass
class Prediction:
    """One page read in one setting.

    Attributes:
        text: the predicted text ("" when `error` is set).
        output_tokens: tokens the predictor emitted (EOS excluded).
        finish_reason: "stop", "length", "repetition", or "error".
        vision_tokens, layout_tokens, valid_vision_tokens: see `settings`.
        prompt_tokens: the whole prompt, image positions included (None if unknown).
        seconds: this page's share of its batch's wall time (batch time / batch size).
        error: why the page failed, when it did.
        extras: predictor-specific facts (the oracle's injected edit count).
    """

    text: str
    output_tokens: int
    finish_reason: str
    vision_tokens: int
    layout_tokens: int
    valid_vision_tokens: int
    prompt_tokens: int | None = None
    seconds: float = 0.0
    error: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Predictor(Protocol):
    def __call__(self, items: Sequence[WorkItem]) -> list[Prediction]: ...

    def describe(self) -> dict[str, Any]: ...


def _failed(error: str) -> Prediction:
    return Prediction(text="", output_tokens=0, finish_reason="error", vision_tokens=0, layout_tokens=0,
                      valid_vision_tokens=0, error=error)


class ModelPredictor:
    """DeepSeek-OCR on every pair of a list, in one batched `generate` call.

    Args:
        ocr: a loaded `DeepseekOCR`.
        prompt: the prompt of every page (Table 2's protocol: `<image>\\nFree OCR.`).
        generation: keyword arguments of `generate` (max_new_tokens, no_repeat_ngram_size, ...).

    A page whose image cannot be prepared (unreadable, too large) gets an "error" prediction;
    the others of the batch go on.
    """

    def __init__(self, ocr, prompt: str, **generation: Any):
        self.ocr = ocr
        self.prompt = prompt
        self.generation = generation

    def describe(self) -> dict[str, Any]:
        return {"kind": "model", "model": str(self.ocr.folder), "dtype": str(self.ocr.dtype).replace("torch.", ""),
                "prompt": self.prompt, "generation": dict(self.generation)}

    def count_tokens(self, text: str) -> int:
        return len(self.ocr.tokenizer.encode(text))

    def __call__(self, items: Sequence[WorkItem]) -> list[Prediction]:
        out: list[Prediction | None] = [None] * len(items)
        prepared, where = [], []
        for i, (page, setting) in enumerate(items):
            try:
                prepared.append(self.ocr.prepare(page.image, self.prompt, mode=setting.mode))
                where.append(i)
            except DeepseekOCRError as exc:
                out[i] = _failed(f"{type(exc).__name__}: {exc}")
        if prepared:
            start = time.perf_counter()
            results = self.ocr.generate(prepared, **self.generation)
            share = (time.perf_counter() - start) / len(prepared)
            for i, inputs, result in zip(where, prepared, results):
                grid = vision_figures(items[i][1].mode, inputs.original_size).vision_tokens
                out[i] = Prediction(text=result.text, output_tokens=len(result.token_ids),
                                    finish_reason=result.finish_reason, vision_tokens=grid,
                                    layout_tokens=result.vision_tokens,
                                    valid_vision_tokens=result.valid_vision_tokens,
                                    prompt_tokens=result.prompt_tokens, seconds=share, error=result.error)
        return out  # type: ignore[return-value]


# Characters an oracle substitutes in; the first one absent from the page is used, so each
# substitution is a mismatch in every alignment and the edit distance equals the count exactly.
_SUBSTITUTES = "#@~^|¤§¶µþ"


def inject_substitutions(text: str, count: int, rng: random.Random) -> str:
    """`text` with `count` non-whitespace characters, at distinct random positions, replaced
    by one character that `text` does not contain.

    Levenshtein(result, text) == count exactly: equal lengths give at most `count` edits, and
    every substituted character, absent from `text`, costs one edit in any alignment.

    Raises:
        ResearchError: `count` exceeds the non-whitespace characters, or every substitute
            character occurs in the text.
    """
    positions = [i for i, ch in enumerate(text) if not ch.isspace()]
    if count > len(positions):
        raise ResearchError(f"cannot inject {count} edits into {len(positions)} non-space characters")
    substitute = next((c for c in _SUBSTITUTES if c not in text), None)
    if substitute is None:
        raise ResearchError(f"every substitute character {_SUBSTITUTES!r} occurs in the text")
    chars = list(text)
    for i in rng.sample(positions, count):
        chars[i] = substitute
    return "".join(chars)


class OraclePredictor:
    """The ground truth (OmniDocBench-normalized) with `round(edit_rate × length)` injected
    substitutions: its normalized edit distance to the ground truth is known before scoring.

    Args:
        edit_rate: edits per character, 0..1.
        seed: with the page id and setting name, seeds each page's positions (so a page's
            prediction does not depend on batch order or on resuming).
        count_tokens: counts `output_tokens` (e.g. a tokenizer's); None reports 0.
    """

    def __init__(self, edit_rate: float, seed: int = 0, count_tokens: Callable[[str], int] | None = None):
        if not 0.0 <= edit_rate <= 1.0:
            raise ResearchError(f"the oracle's edit rate must be in 0..1, got {edit_rate}")
        self.edit_rate = edit_rate
        self.seed = seed
        self.count_tokens = count_tokens

    def describe(self) -> dict[str, Any]:
        return {"kind": "oracle", "edit_rate": self.edit_rate, "seed": self.seed,
                "rule": "normalized ground truth with floor(rate x length + 0.5) substitutions"}

    def __call__(self, items: Sequence[WorkItem]) -> list[Prediction]:
        out = []
        for page, setting in items:
            start = time.perf_counter()
            try:
                figures = vision_figures(setting.mode, image_size(page))
            except ResearchError as exc:
                out.append(_failed(f"{type(exc).__name__}: {exc}"))
                continue
            text = normalize_omnidocbench(page.reference)
            count = math.floor(self.edit_rate * len(text) + 0.5)
            rng = random.Random(zlib.crc32(f"{self.seed}\t{page.id}\t{setting.name}".encode()))
            predicted = inject_substitutions(text, count, rng)
            tokens = self.count_tokens(predicted) if self.count_tokens else 0
            out.append(Prediction(text=predicted, output_tokens=tokens, finish_reason="stop",
                                  vision_tokens=figures.vision_tokens, layout_tokens=figures.layout_tokens,
                                  valid_vision_tokens=figures.valid_vision_tokens,
                                  seconds=time.perf_counter() - start, extras={"injected_edits": count}))
        return out
