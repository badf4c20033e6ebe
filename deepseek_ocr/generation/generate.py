"""The generate loop: one prefill of the (left-padded) batch, then one-token decode steps.

The prompt is run once and kept in a static KV cache; each step feeds only the new token of
every row. Rows stop on their own (EOS, a detected loop, a numerical fault) while the others
go on; a stopped row is fed a pad token that nobody reads until the whole batch is done.

Official behaviour (DeepSeek-OCR `infer`): greedy, `no_repeat_ngram_size` 20 over prompt +
output, stop at EOS. vLLM's recommended alternative: `windowed_ngram_size=30,
ngram_window=90` with `<td>`/`</td>` exempt (`ngram_whitelist`, default from the tokenizer).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from ..errors import ContextLengthError, GenerationError
from .detokenize import IncrementalDetokenizer
from .fast_loop import fast_decode_steps
from .fast_loop import supports as fast_supports
from .fast_loop import supports_model as fast_supports_model
from .logits_processors import NoRepeatNGram, RepetitionDetector, WindowedNoRepeatNGram
from .sampling import check_finite, select_next_tokens

if TYPE_CHECKING:
    from ..ocr import DeepseekOCR
    from ..processing.prompt import PreparedInputs

logger = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "repetition", "error")
TABLE_CELL_TOKENS = ("<td>", "</td>")


@dataclass
class GenerationResult:
    """The outcome for one sequence.

    Attributes:
        text: decoded output, stripped of surrounding whitespace as the official `infer` does
            (special tokens such as `<|ref|>` kept; EOS not included).
        token_ids: generated ids (EOS not included).
        finish_reason: "stop" (EOS), "length" (max_new_tokens), "repetition" (a loop was
            detected and stopped), or "error" (NaN/Inf logits; see `error`).
        prompt_tokens, vision_tokens, valid_vision_tokens: the input's token figures.
    """

    text: str
    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    vision_tokens: int
    valid_vision_tokens: int
    error: str | None = None
    raw_text: str = ""  # the decoded ids exactly, before stripping (what `stream` yields)
    extras: dict = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float | None:
        """Text tokens per valid vision token (the paper's figure); None without an image."""
        if not self.valid_vision_tokens:
            return None
        return len(self.token_ids) / self.valid_vision_tokens


@dataclass
class _Options:
    max_new_tokens: int | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    no_repeat_ngram_size: int | None = 20
    windowed_ngram_size: int | None = None
    ngram_window: int = 90
    ngram_whitelist: Sequence[int] | None = None
    stop_on_repetition: bool = False
    ignore_eos: bool = False
    fast: bool | None = None  # the device loop (fast_loop.py); None: on CUDA unless DEEPSEEK_OCR_FAST=0


def _check_budget(batch: Sequence["PreparedInputs"], opts: _Options, context: int) -> int:
    longest = max(inp.num_tokens for inp in batch)
    if longest > context:
        raise ContextLengthError(f"the prompt has {longest} tokens (image tokens included), more than "
                                 f"the model's context of {context}")
    if opts.max_new_tokens is None:
        return context - longest
    if isinstance(opts.max_new_tokens, bool) or not isinstance(opts.max_new_tokens, int) \
            or opts.max_new_tokens <= 0:
        raise GenerationError(f"max_new_tokens must be a positive integer, got {opts.max_new_tokens!r}")
    if longest + opts.max_new_tokens > context:
        raise ContextLengthError(f"prompt ({longest} tokens) + max_new_tokens ({opts.max_new_tokens}) = "
                                 f"{longest + opts.max_new_tokens} exceeds the context of {context}; "
                                 f"at most {context - longest} new tokens fit")
    return opts.max_new_tokens


def _processors(ocr: "DeepseekOCR", opts: _Options) -> list:
    procs = []
    if opts.no_repeat_ngram_size:
        procs.append(NoRepeatNGram(opts.no_repeat_ngram_size))
    if opts.windowed_ngram_size:
        whitelist = opts.ngram_whitelist
        if whitelist is None:
            whitelist = [i for i in map(ocr.tokenizer.token_to_id, TABLE_CELL_TOKENS) if i is not None]
        procs.append(WindowedNoRepeatNGram(opts.windowed_ngram_size, opts.ngram_window, whitelist))
    return procs


def _use_fast(opts: _Options, device: torch.device) -> bool:
    wanted = opts.fast
    if wanted is None:
        wanted = device.type == "cuda" and os.environ.get("DEEPSEEK_OCR_FAST", "1") != "0"
    if wanted and not fast_supports(opts):
        logger.info("windowed n-gram / repetition detection run on the reference loop")
        return False
    return bool(wanted)


def decode_steps(ocr: "DeepseekOCR", batch: Sequence["PreparedInputs"], opts: _Options
                 ) -> Iterator[tuple[list[int], list[str | None], list[str | None]]]:
    """Yield, per step, (token per row, reason ending each row at this step, error per row).

    A row's token is meaningful only while the row is still generating. A row that ends at this
    step with "stop" produced EOS (not part of the output); with "length" or "repetition" its
    token is the last one of the output. A row with an error at this step produced no token.
    """
    model, tok = ocr.model, ocr.tokenizer
    budget = _check_budget(batch, opts, model.cfg.decoder.max_position_embeddings)
    device = ocr.device
    generator = None
    if opts.seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(opts.seed))
    if _use_fast(opts, device) and fast_supports_model(ocr):
        yield from fast_decode_steps(ocr, batch, opts, budget, generator)
        return
    procs = _processors(ocr, opts)
    for p in procs:
        p.reset([inp.input_ids.tolist() for inp in batch])
    detector = RepetitionDetector() if opts.stop_on_repetition else None
    if detector is not None:
        detector.reset(len(batch))

    with torch.inference_mode():
        rows = ocr.encode_images(batch)
        embeds = [ocr.embed(inp, r) for inp, r in zip(batch, rows)]
        b, longest = len(batch), max(e.shape[0] for e in embeds)
        hidden = embeds[0].shape[-1]
        x = torch.zeros(b, longest, hidden, dtype=embeds[0].dtype, device=device)
        valid = torch.zeros(b, longest, dtype=torch.bool, device=device)
        for i, e in enumerate(embeds):  # left padding: every row's last prompt token is aligned
            x[i, longest - e.shape[0]:] = e
            valid[i, longest - e.shape[0]:] = True
        positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
        cache = model.decoder.new_cache(b, longest + budget, capacity=longest + min(budget, 512))
        logits = model.decoder(x, positions, cache, valid, last_only=True)[:, 0]
        next_pos = positions[:, -1] + 1

        finished: list[str | None] = [None] * b
        for step in range(budget):
            errors: list[str | None] = [None] * b
            faulty = check_finite(logits).tolist()
            for i in range(b):
                if faulty[i] and finished[i] is None:
                    finished[i] = "error"
                    errors[i] = f"non-finite logits (NaN/Inf) at generated token {step}"
                    logger.warning("sequence %d: %s", i, errors[i])
            for p in procs:
                logits = p(logits)
            ids = select_next_tokens(logits, temperature=opts.temperature, top_k=opts.top_k,
                                     top_p=opts.top_p, generator=generator)
            ids_list = ids.tolist()
            active = [f is None for f in finished]  # rows still generating at this step
            ending: list[str | None] = [None] * b  # reasons that become final at this step
            for i in range(b):
                if not active[i]:
                    continue
                if ids_list[i] == tok.eos_id and not opts.ignore_eos:
                    ending[i] = "stop"
                elif step + 1 == budget:
                    ending[i] = "length"
            for p in procs:
                p.append(ids_list, active)
            if detector is not None:
                loops = detector.append(ids_list, active)
                for i in range(b):
                    if active[i] and ending[i] is None and loops[i]:
                        ending[i] = "repetition"
            yield ids_list, ending, errors
            finished = [f if f is not None else e for f, e in zip(finished, ending)]
            if all(f is not None for f in finished):
                return
            feed = torch.tensor([t if a else tok.pad_id for t, a in zip(ids_list, active)],
                                device=device)
            step_embeds = model.decoder.embed_tokens(feed)[:, None]
            logits = model.decoder(step_embeds, next_pos[:, None], cache, last_only=True)[:, 0]
            next_pos = next_pos + 1


def _options(kwargs: dict) -> _Options:
    unknown = set(kwargs) - set(_Options.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown generation argument(s): {sorted(unknown)}")
    return _Options(**kwargs)


def generate(ocr: "DeepseekOCR", batch: Sequence["PreparedInputs"], **kwargs) -> list[GenerationResult]:
    """Generate for every input of `batch`; results in input order. See `_Options` for kwargs."""
    opts = _options(kwargs)
    n = len(batch)
    if n == 0:
        return []
    tokens: list[list[int]] = [[] for _ in range(n)]
    reasons: list[str | None] = [None] * n
    errors: list[str | None] = [None] * n
    for ids, step_reasons, step_errors in decode_steps(ocr, batch, opts):
        for i in range(n):
            if reasons[i] is not None:
                continue
            if step_errors[i]:
                reasons[i], errors[i] = "error", step_errors[i]
                continue
            if step_reasons[i] != "stop":
                tokens[i].append(ids[i])
            reasons[i] = step_reasons[i]
    return [_result(ocr, inp, tokens[i], reasons[i], errors[i]) for i, inp in enumerate(batch)]


def _result(ocr: "DeepseekOCR", inp: "PreparedInputs", ids: list[int], reason: str | None,
            error: str | None) -> GenerationResult:
    raw = ocr.tokenizer.decode(ids)
    return GenerationResult(text=raw.strip(), token_ids=ids, finish_reason=reason or "length",
                            prompt_tokens=inp.num_tokens, vision_tokens=inp.num_vision_tokens,
                            valid_vision_tokens=inp.valid_vision_tokens, error=error, raw_text=raw)


class TextStream:
    """An iterator of text pieces; `.result` holds the `GenerationResult` once exhausted."""

    def __init__(self, ocr: "DeepseekOCR", inputs: "PreparedInputs", opts: _Options):
        self._ocr, self._inputs, self._opts = ocr, inputs, opts
        self.result: GenerationResult | None = None
        self._it = self._run()

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._it)

    def _run(self) -> Iterator[str]:
        detok = IncrementalDetokenizer(self._ocr.tokenizer.decode)
        reason, error = None, None
        for ids, step_reasons, step_errors in decode_steps(self._ocr, [self._inputs], self._opts):
            if step_errors[0]:
                reason, error = "error", step_errors[0]
                break
            if step_reasons[0] != "stop":
                piece = detok.push(ids[0])
                if piece:
                    yield piece
            reason = step_reasons[0]
            if reason is not None:
                break
        tail = detok.flush()
        if tail:
            yield tail
        self.result = _result(self._ocr, self._inputs, list(detok.ids), reason, error)


def stream(ocr: "DeepseekOCR", inputs: "PreparedInputs", **kwargs) -> TextStream:
    return TextStream(ocr, inputs, _options(kwargs))
