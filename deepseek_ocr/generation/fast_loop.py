"""The fast generate loop: packed prefill, a static KV cache, CUDA-graph decode steps, no per-token sync.

It yields exactly what `generate.decode_steps` yields (per step: token per row, the reasons that
end rows at that step, per-row errors), so `generate` and `stream` consume either. Differences
are in the schedule only:

* Every decision (n-gram bans, greedy or sampled choice, EOS, NaN/Inf faults, the pad fed to
  finished rows) is made on the device. The host reads the chosen tokens in chunks of
  `CHUNK` steps through a pinned buffer, one chunk behind the device, so the GPU never waits for
  Python; a batch that has finished is noticed at most two chunks late (the extra steps are
  discarded).
* On CUDA the decode step (embedding -> 12 layers -> logits) is captured once per batch-size
  bucket and cache capacity, and replayed. Rows are padded up to the bucket with dummy
  one-token sequences. The cache starts at what the prompt plus 1024 tokens need and doubles when
  the host (which knows every row's length without asking: prompt + steps) sees it full; a grown
  cache is captured anew.
* Options the device path does not implement (the windowed n-gram rule, the repetition
  detector) make `supports` return False, and the reference loop runs.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from ..decoder.fast import FastDecoder
from ..decoder.static_cache import StaticKVCache
from .device_ngram import DeviceNoRepeatNGram
from .sampling import check_finite, select_next_tokens

if TYPE_CHECKING:
    from ..ocr import DeepseekOCR
    from ..processing.prompt import PreparedInputs
    from .generate import _Options

logger = logging.getLogger(__name__)

CHUNK = 16
_BUCKETS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
_SLOT_ROUND = 512


def bucket_for(batch: int) -> int:
    for b in _BUCKETS:
        if batch <= b:
            return b
    return -(-batch // 256) * 256


def supports(opts: "_Options") -> bool:
    return not opts.windowed_ngram_size and not opts.stop_on_repetition and \
        (not opts.no_repeat_ngram_size or opts.no_repeat_ngram_size >= 2)


class _Graph:
    """One captured decode step: static token input, cache, and logits output."""

    def __init__(self, fast: FastDecoder, step_fn, batch: int, capacity: int, pool, capture: bool):
        self.step_fn = step_fn
        self.cache = fast.new_cache(batch, capacity)
        self.tokens = torch.zeros(batch, dtype=torch.long, device=self.cache.seqlens.device)
        self.graph = None
        self.logits = None
        if capture:
            stream = torch.cuda.Stream(self.tokens.device)
            stream.wait_stream(torch.cuda.current_stream(self.tokens.device))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):  # warm up (compilation, autotuning, allocations) off the capture
                    step_fn(self.tokens, self.cache)
            torch.cuda.current_stream(self.tokens.device).wait_stream(stream)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=pool), torch.inference_mode():
                self.logits = step_fn(self.tokens, self.cache)
            self.cache.seqlens.zero_()

    def run(self, fast: FastDecoder, tokens: torch.Tensor) -> torch.Tensor:
        self.tokens.copy_(tokens)
        if self.graph is None:
            return self.step_fn(self.tokens, self.cache)
        self.graph.replay()
        return self.logits


class DecodeEngine:
    """Per-model state of the fast path: the fast decoder and the captured graphs."""

    def __init__(self, ocr: "DeepseekOCR", use_graphs: bool | None = None, compile: bool | None = None):
        self.fast = FastDecoder(ocr.model.decoder)
        device = ocr.device
        self.use_graphs = device.type == "cuda" if use_graphs is None else use_graphs
        if compile is None:
            compile = os.environ.get("DEEPSEEK_OCR_COMPILE", "0") == "1"
        # torch.compile fuses the small elementwise ops between our kernels (norms, rotary,
        # residual adds); the graph then replays the fused step. Costs a compile on first use.
        self.step_fn = torch.compile(self.fast.step, dynamic=False) if compile else self.fast.step
        # Each graph gets its own memory pool: graphs are dropped when a cache grows, and a pool
        # shared with a freed graph cannot take a new capture (a CUDA caching-allocator assert).
        self.pool = None
        self._graphs: dict[tuple[int, int], _Graph] = {}

    def graph(self, batch: int, capacity: int) -> _Graph:
        key = (batch, capacity)
        if key not in self._graphs:
            # Keep one capacity per bucket: a grown cache replaces the smaller one.
            for old in [k for k in self._graphs if k[0] == batch]:
                del self._graphs[old]
            if self.use_graphs:
                torch.cuda.empty_cache()
            self._graphs[key] = _Graph(self.fast, self.step_fn, batch, capacity, self.pool,
                                       capture=self.use_graphs)
        return self._graphs[key]


def _round_slots(n: int, limit: int) -> int:
    return min(limit, -(-n // _SLOT_ROUND) * _SLOT_ROUND)


def _initial_capacity(eng: "DecodeEngine", rows: int, longest: int, budget: int, context: int) -> int:
    """Slots to start with: the prompt plus 1,024 new tokens (rounded), so that calls of
    different lengths reuse one captured graph; only what the call needs when that would take
    more than half of the free GPU memory. The cache doubles later if a row gets there."""
    roomy = _round_slots(longest + 1024, context)
    tight = _round_slots(longest + min(budget, 1024), context)
    if eng.use_graphs and roomy > tight:
        cfg = eng.fast.cfg
        w = eng.fast.decoder.lm_head.weight
        need = StaticKVCache.nbytes_for(cfg.num_layers, rows, cfg.num_heads, cfg.head_dim, roomy, w.dtype)
        free, _ = torch.cuda.mem_get_info(w.device)
        if need > free // 2:
            return tight
    existing = [cap for (b, cap) in eng._graphs if b == rows and cap >= tight]
    return existing[0] if existing else (roomy if eng.use_graphs else tight)


def supports_model(ocr: "DeepseekOCR") -> bool:
    """False while LoRA factors are attached unmerged: the fast step fuses the plain q/k/v
    weights and would silently leave the adapter out (the reference loop honours it)."""
    return not any(getattr(m, "carries_lora", False) for m in ocr.model.decoder.modules())


def _weights_signature(ocr: "DeepseekOCR") -> tuple:
    """Identity, version counter, device and dtype of the weights the engine copies (the fused
    q/k/v): an optimizer step, a load or a `.to()` changes it, and the engine is rebuilt."""
    sig = []
    for layer in ocr.model.decoder.layers:
        for p in (layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight):
            sig.append((id(p), p._version, p.device, p.dtype))
    return tuple(sig)


def engine_for(ocr: "DeepseekOCR") -> DecodeEngine:
    eng = getattr(ocr, "_decode_engine", None)
    sig = _weights_signature(ocr)
    if eng is None or getattr(ocr, "_decode_engine_signature", None) != sig:
        eng = DecodeEngine(ocr)
        ocr._decode_engine = eng
        ocr._decode_engine_signature = sig
    return eng


def fast_decode_steps(ocr: "DeepseekOCR", batch: Sequence["PreparedInputs"], opts: "_Options",
                      budget: int, generator: torch.Generator | None
                      ) -> Iterator[tuple[list[int], list[str | None], list[str | None]]]:
    model, tok = ocr.model, ocr.tokenizer
    eng = engine_for(ocr)
    device = ocr.device
    context = model.cfg.decoder.max_position_embeddings
    n = len(batch)
    rows = bucket_for(n) if eng.use_graphs else n

    with torch.inference_mode():
        vision = ocr.encode_images(batch)
        embeds = [ocr.embed(inp, r) for inp, r in zip(batch, vision)]
        pad_embed = model.decoder.embed_tokens(torch.tensor([tok.pad_id], device=device))
        embeds += [pad_embed] * (rows - n)  # dummy one-token rows up to the bucket
        lengths = [e.shape[0] for e in embeds]
        longest = max(lengths)
        cu = torch.tensor([0] + lengths, device=device).cumsum(0).to(torch.int32)
        capacity = _initial_capacity(eng, rows, longest, budget, context)
        g = eng.graph(rows, capacity)
        g.cache.seqlens.zero_()
        logits = eng.fast.prefill(torch.cat(embeds), cu, longest, g.cache)  # (rows, V)

        ngram = None
        if opts.no_repeat_ngram_size:
            ngram = DeviceNoRepeatNGram(opts.no_repeat_ngram_size, rows, context, logits.shape[-1], device)
            ngram.reset([inp.input_ids.tolist() for inp in batch] + [[tok.pad_id]] * (rows - n))

        finished = torch.zeros(rows, dtype=torch.bool, device=device)
        pad = torch.full((rows,), tok.pad_id, dtype=torch.long, device=device)
        eos_id = -1 if opts.ignore_eos else tok.eos_id
        pinned = device.type == "cuda"
        # Per step: ids, fault flags. Double buffers: the host reads chunk c-1 while c runs.
        dev_ids = torch.empty(CHUNK, rows, dtype=torch.long, device=device)
        dev_bad = torch.empty(CHUNK, rows, dtype=torch.bool, device=device)
        host = [(torch.empty(CHUNK, rows, dtype=torch.long, pin_memory=pinned),
                 torch.empty(CHUNK, rows, dtype=torch.bool, pin_memory=pinned)) for _ in range(2)]
        events = [None, None]

        host_finished: list[str | None] = [None] * n
        pending: list[tuple[int, int, int]] = []  # (buffer, first step, steps) not yet yielded

        def drain(entry) -> Iterator[tuple[list[int], list[str | None], list[str | None]]]:
            buf, first, count = entry
            if events[buf] is not None:
                events[buf].synchronize()
            ids_h, bad_h = host[buf][0][:count].tolist(), host[buf][1][:count].tolist()
            for s in range(count):
                step = first + s
                errors: list[str | None] = [None] * n
                for i in range(n):
                    if bad_h[s][i] and host_finished[i] is None:
                        host_finished[i] = "error"
                        errors[i] = f"non-finite logits (NaN/Inf) at generated token {step}"
                        logger.warning("sequence %d: %s", i, errors[i])
                ending: list[str | None] = [None] * n
                for i in range(n):
                    if host_finished[i] is not None:
                        continue
                    if ids_h[s][i] == eos_id:
                        ending[i] = "stop"
                    elif step + 1 == budget:
                        ending[i] = "length"
                yield ids_h[s][:n], ending, errors
                for i in range(n):
                    if host_finished[i] is None and ending[i] is not None:
                        host_finished[i] = ending[i]
                if all(f is not None for f in host_finished):
                    return

        step, chunk = 0, 0
        while step < budget:
            count = min(CHUNK, budget - step)
            for s in range(count):
                bad = check_finite(logits)
                if ngram is not None:
                    logits = ngram.ban(logits)
                ids = select_next_tokens(logits, temperature=opts.temperature, top_k=opts.top_k,
                                         top_p=opts.top_p, generator=generator)
                dev_ids[s].copy_(ids)
                dev_bad[s].copy_(bad & ~finished)
                finished |= bad | (ids == eos_id)
                if ngram is not None:
                    ngram.append(ids)
                if step + s + 1 == budget:
                    break
                # Cache full for the longest row? Grow it (host-known lengths), capture anew.
                if longest + step + s + 1 > g.cache.capacity:
                    grown = eng.graph(rows, _round_slots(2 * g.cache.capacity, context))
                    old = g.cache
                    for dst, src in zip(grown.cache.k + grown.cache.v, old.k + old.v):
                        dst[:, :, :old.capacity] = src
                    grown.cache.seqlens.copy_(old.seqlens)
                    g = grown
                logits = g.run(eng.fast, torch.where(finished, pad, ids))
            buf = chunk % 2
            host[buf][0][:count].copy_(dev_ids[:count], non_blocking=pinned)
            host[buf][1][:count].copy_(dev_bad[:count], non_blocking=pinned)
            if pinned:
                events[buf] = torch.cuda.Event()
                events[buf].record()
            pending.append((buf, step, count))
            step += count
            chunk += 1
            # Yield the previous chunk (its copy is long done) while this one runs.
            while len(pending) > (1 if step < budget else 0):
                yield from drain(pending.pop(0))
                if all(f is not None for f in host_finished):
                    return
