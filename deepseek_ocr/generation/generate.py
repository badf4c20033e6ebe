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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from ..errors import GenerationError
from .detokenize import IncrementalDetokenizer
from ..engine import GenerationOptions, Request, engine_for, supports_model
from .logits_processors import NoRepeatNGram, RepetitionDetector, WindowedNoRepeatNGram
from .sampling import check_finite, select_next_tokens

if TYPE_CHECKING:
    from ..ocr import DeepseekOCR
    from ..processing.prompt import PreparedInputs

logger = logging.getLogger(__name__)

FINISH_REASONS = ("stop", "length", "repetition", "error")


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


def _processors(ocr: "DeepseekOCR", opts: GenerationOptions) -> list:
    procs = []
    if opts.no_repeat_ngram_size:
        procs.append(NoRepeatNGram(opts.no_repeat_ngram_size))
    if opts.windowed_ngram_size:
        procs.append(WindowedNoRepeatNGram(opts.windowed_ngram_size, opts.window,
                                           opts.whitelist(ocr.tokenizer.token_to_id)))
    return procs


def _use_engine(ocr: "DeepseekOCR", opts: GenerationOptions) -> bool:
    if opts.fast is False:
        return False
    if not supports_model(ocr.model):
        if opts.fast:
            raise GenerationError("fast=True cannot run a model with unmerged LoRA factors (the engine "
                                  "fuses q/k/v weights): merge the adapter, or pass fast=False")
        logger.info("unmerged LoRA factors: generating with the reference loop")
        return False
    return True


def decode_steps(ocr: "DeepseekOCR", batch: Sequence["PreparedInputs"], opts: GenerationOptions
                 ) -> Iterator[tuple[list[int], list[str | None], list[str | None]]]:
    """The reference loop (static batch, plain torch, host-side rules). Yield, per step, (token per row, reason ending each row at this step, error per row).

    A row's token is meaningful only while the row is still generating. A row that ends at this
    step with "stop" produced EOS (not part of the output); with "length" or "repetition" its
    token is the last one of the output. A row with an error at this step produced no token.
    """
    model, tok = ocr.model, ocr.tokenizer
    context = model.cfg.decoder.max_position_embeddings
    budget = opts.budget(max(inp.num_tokens for inp in batch), context)  # the batch shares one limit
    device = ocr.device
    generator = None
    if opts.seed is not None:
        generator = torch.Generator(device=device).manual_seed(int(opts.seed))
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


def _options(kwargs: dict) -> GenerationOptions:
    return GenerationOptions.from_kwargs(kwargs)


def _engine_run(ocr: "DeepseekOCR", batch: Sequence["PreparedInputs"], opts: GenerationOptions) -> list[Request]:
    context = ocr.model.cfg.decoder.max_position_embeddings
    for inp in batch:  # every input checked before any is queued
        opts.budget(inp.num_tokens, context)
    eng = engine_for(ocr.model, ocr.tokenizer)
    reqs = [eng.submit(inp, opts) for inp in batch]
    try:
        eng.run(reqs)
    finally:
        eng.abort(reqs)  # an interrupt (or an error) leaves nothing of this call in the engine
    return reqs


def generate(ocr: "DeepseekOCR", batch: Sequence["PreparedInputs"], **kwargs) -> list[GenerationResult]:
    """Generate for every input of `batch`; results in input order. See `GenerationOptions`."""
    opts = _options(kwargs)
    n = len(batch)
    if n == 0:
        return []
    if _use_engine(ocr, opts):
        return [make_result(ocr, r.inputs, r.token_ids, r.finish_reason, r.error) for r in _engine_run(ocr, batch, opts)]
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
    return [make_result(ocr, inp, tokens[i], reasons[i], errors[i]) for i, inp in enumerate(batch)]


def make_result(ocr: "DeepseekOCR", inp: "PreparedInputs", ids: list[int], reason: str | None,
            error: str | None) -> GenerationResult:
    raw = ocr.tokenizer.decode(ids)
    return GenerationResult(text=raw.strip(), token_ids=ids, finish_reason=reason or "length",
                            prompt_tokens=inp.num_tokens, vision_tokens=inp.num_vision_tokens,
                            valid_vision_tokens=inp.valid_vision_tokens, error=error, raw_text=raw)


class TextStream:
    """An iterator of text pieces; `.result` holds the `GenerationResult` once exhausted."""

    def __init__(self, ocr: "DeepseekOCR", inputs: "PreparedInputs", opts: GenerationOptions):
        self._ocr, self._inputs, self._opts = ocr, inputs, opts
        self.result: GenerationResult | None = None
        if _use_engine(ocr, opts):
            opts.budget(inputs.num_tokens, ocr.model.cfg.decoder.max_position_embeddings)
            self._it = self._run_engine()
        else:
            self._it = self._run()

    def __iter__(self) -> "TextStream":
        return self

    def __next__(self) -> str:
        return next(self._it)

    def _run_engine(self) -> Iterator[str]:
        """Steps the model's engine until this request's next piece of text is known (other
        requests in the engine progress meanwhile)."""
        eng = engine_for(self._ocr.model, self._ocr.tokenizer)
        detok = IncrementalDetokenizer(self._ocr.tokenizer.decode)
        fresh: list[int] = []
        req = eng.submit(self._inputs, self._opts, listener=lambda r, ids: fresh.extend(ids))
        try:
            while not req.finished or fresh:
                if not fresh:
                    eng.step()
                    continue
                piece = "".join(detok.push(t) for t in fresh)
                fresh.clear()
                if piece:
                    yield piece
        finally:
            eng.abort([req])
        tail = detok.flush()
        if tail:
            yield tail
        self.result = make_result(self._ocr, self._inputs, req.token_ids, req.finish_reason, req.error)

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
        self.result = make_result(self._ocr, self._inputs, list(detok.ids), reason, error)


def stream(ocr: "DeepseekOCR", inputs: "PreparedInputs", **kwargs) -> TextStream:
    return TextStream(ocr, inputs, _options(kwargs))
