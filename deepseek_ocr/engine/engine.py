"""The continuous-batching engine: requests join and leave between decode steps.

One call of `step()`:

1. Cancelled requests end and free their slots.
2. Admission: waiting requests take free slots, in order, while the prefill budget
   (`prefill_tokens` prompt tokens per step) and the cache allow. Their images are encoded
   together (one vision pass per view size), their prompts run as one packed prefill, and each
   gets its first token. While requests are decoding on a GPU, admission waits until `admit_group`
   slots are free (or the queue is that short, or `admit_wait_steps` steps have passed): the
   vision encode is launch-bound for one page (~1,000 kernels, ~28 ms of host time on an H200
   against ~14 ms of GPU time) and costs about the same for eight, so pages admitted one at a
   time as slots free up would stall decoding once each.
3. One decode step for every running request (one CUDA-graph replay over the bucket of slots),
   then the n-gram bans, the choice of token (greedy, or each request's own sampler) and the
   fault check, all on the device.
4. The host reads the tokens of the *previous* step (long finished: the GPU is busy with this
   one) and updates the requests: new ids to their listeners, EOS / limit / repetition / fault
   ends a request and frees its slot and blocks at once.

So the GPU never waits for Python, and a request that ends costs one extra step at most. The
cache grows (its pool doubles) when blocks run out; past the memory limit the youngest request
is preempted: it gives its blocks back and waits to be prefilled again with its output so far.

Everything here uses the model modules (`DeepseekOCRModel`, the tokenizer); nothing imports
`ocr.py`, the pipeline or a server.
"""
from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import Callable, Iterable, Sequence

import torch

from ..decoder.fast import FastDecoder
from ..errors import GenerationError
from ..generation.sampling import check_finite, select_next_tokens
from ..modeling import DeepseekOCRModel
from ..processing.prompt import PreparedInputs
from ..processing.tokenizer import Tokenizer
from .admission import AdmissionMixin
from .graphs import DecodeGraphs, bucket_for
from .ngram_rules import SlotNGramRule
from .options import GenerationOptions
from .paged_cache import PagedKVCache, default_pool_blocks
from .readback import Launch
from .request import FINISHED, RUNNING, WAITING, Request
from .transfer import to_device
from .vision_batch import encode_prepared, prompt_embeddings

logger = logging.getLogger(__name__)


class Engine(AdmissionMixin):
    """Continuous batching over one model.

    Args:
        model: a loaded `DeepseekOCRModel` (any device and dtype).
        tokenizer: its tokenizer (EOS and pad ids, the windowed rule's default whitelist).
        max_slots: most requests decoding at once (default 256 on CUDA, 16 elsewhere).
        block_size: cache slots per block.
        initial_blocks, max_blocks: the pool's first size and its limit (defaults: see
            `paged_cache.default_pool_blocks`).
        prefill_tokens: prompt tokens admitted per step (one request always fits, however long),
            so running requests keep decoding while new ones arrive.
        admit_group, admit_wait_steps: while requests decode, admit when this many slots are
            free (or every waiting request fits), or after this many steps of waiting. Default
            group: 8 on CUDA (where one page's encode is launch-bound), 1 elsewhere (a CPU
            encode costs its work, so waiting would only add latency).
        admit_gather_steps: while requests decode, also wait up to this many steps for a group
            of `admit_group` requests to be waiting (default 0: admit whatever waits). Each waiting
            request's first token comes up to that many steps later; fewer, larger encodes.
        use_graphs: capture the decode step in CUDA graphs (default: on CUDA).
        compile: `torch.compile` the step (default: env DEEPSEEK_OCR_COMPILE=1).
    """

    def __init__(self, model: DeepseekOCRModel, tokenizer: Tokenizer, *, max_slots: int | None = None,
                 block_size: int = 64, initial_blocks: int | None = None, max_blocks: int | None = None,
                 prefill_tokens: int = 8192, admit_group: int | None = None, admit_wait_steps: int = 64,
                 admit_gather_steps: int = 0, use_graphs: bool | None = None, compile: bool | None = None):
        self.model, self.tokenizer = model, tokenizer
        cfg = model.cfg.decoder
        w = model.decoder.lm_head.weight
        self.device, self.dtype = w.device, w.dtype
        self.context = cfg.max_position_embeddings
        self.vocab = cfg.vocab_size
        on_cuda = self.device.type == "cuda"
        self.max_slots = max_slots or (256 if on_cuda else 16)
        self.prefill_tokens = prefill_tokens
        if admit_group is None:
            admit_group = 8 if on_cuda else 1
        self.admit_group, self.admit_wait_steps = max(1, admit_group), max(0, admit_wait_steps)
        self.admit_gather_steps = max(0, admit_gather_steps)
        self._admit_waited = 0  # steps admission has been held back for a fuller group
        self.fast = FastDecoder(model.decoder)
        if compile is None:
            compile = os.environ.get("DEEPSEEK_OCR_COMPILE", "0") == "1"
        self.compiled = bool(compile)
        # torch.compile fuses the small elementwise ops between our kernels (norms, rotary,
        # residual adds); the graph then replays the fused step. Costs a compile on first use.
        step_fn = torch.compile(self.fast.step, dynamic=False) if compile else self.fast.step
        self.graphs = DecodeGraphs(step_fn, on_cuda if use_graphs is None else use_graphs, self.compiled)
        init, most = default_pool_blocks(cfg, self.device, self.dtype, self.max_slots, block_size)
        self.max_pool_blocks = max_blocks or most
        self.cache = PagedKVCache(cfg.num_layers, self.max_slots, cfg.num_heads, cfg.head_dim,
                                  num_blocks=min(initial_blocks or init, self.max_pool_blocks),
                                  block_size=block_size, context=self.context, dtype=self.dtype,
                                  device=self.device)
        self.official_rule = SlotNGramRule(self.max_slots, self.context, self.vocab, self.device)
        self.windowed_rule = SlotNGramRule(self.max_slots, self.context, self.vocab, self.device)
        self.tokens = torch.full((self.max_slots,), tokenizer.pad_id, dtype=torch.long, device=self.device)
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # slot -> request
        self._inflight: deque[Launch] = deque()
        self._pinned = on_cuda
        # Counts, and host seconds per phase of `step` (where a run's wall time went: `read_s`
        # is mostly waiting for the GPU to finish a step, the others are host work that the
        # GPU may or may not overlap; `encode_s` is part of `admit_s`).
        self.stats = {"steps": 0, "prefills": 0, "preemptions": 0, "pool_growths": 0, "generated": 0,
                      "admitted": 0, "admit_s": 0.0, "encode_s": 0.0, "decode_s": 0.0, "read_s": 0.0}

    def capture_graphs(self) -> int:
        """Capture the decode step of every batch bucket now (CUDA; a no-op elsewhere): a server
        calls this at start, so requests never wait for a capture. The number captured; a pool
        growth later captures again. Only on an idle engine (GenerationError otherwise): each
        capture also replays its step once, which would advance running requests."""
        if self.running or self._inflight:
            raise GenerationError("capture_graphs needs an idle engine: requests are running")
        return self.graphs.capture_all(self.cache, self.tokens, self.max_slots)

    # -------------------------------------------------------------------------- requests
    def submit(self, inputs: PreparedInputs, options: GenerationOptions | None = None, *,
               request_id: str = "", listener: Callable[[Request, list[int]], None] | None = None) -> Request:
        """Queue one request; ContextLengthError / GenerationError at once for bad settings."""
        options = options or GenerationOptions()
        budget = options.budget(inputs.num_tokens, self.context)
        req = Request(inputs, options, budget, id=request_id, listener=listener)
        if options.sampled:
            seed = options.seed if options.seed is not None else int(torch.randint(0, 2**62, ()).item())
            req.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.waiting.append(req)
        return req

    def cancel(self, request: Request) -> None:
        """End `request` ("cancelled"); its slot is freed at the next step (at once if idle)."""
        if request.finished:
            return
        request.cancel_requested = True
        if request.state == WAITING:
            self._remove_waiting(request)
            self._finish(request, "cancelled")

    def abort(self, requests: Iterable[Request]) -> None:
        """End every unfinished request of `requests` now ("cancelled"), slots and blocks freed.

        Safe at any time on the engine's thread: work already queued on the device for them
        runs before anything that reuses their blocks, and its results are ignored.
        """
        for req in requests:
            if not req.finished:
                self._remove_waiting(req)
                self._finish(req, "cancelled")

    def _remove_waiting(self, request: Request) -> None:
        try:
            self.waiting.remove(request)
        except ValueError:
            pass

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self._inflight)

    def run(self, requests: Iterable[Request]) -> None:
        """Step until every request of `requests` has finished."""
        pending = [r for r in requests if not r.finished]
        while any(not r.finished for r in pending):
            self.step()

    # -------------------------------------------------------------------------- the step
    @torch.inference_mode()
    def step(self) -> None:
        """One round: cancellations, admissions with their prefill, one decode step, and the
        host's reading of the step before."""
        for slot, req in list(self.running.items()):
            if req.cancel_requested:
                self._finish(req, "cancelled")
        launched = 0
        t0 = time.perf_counter()
        admitted = self._admit()
        if admitted:
            self._prefill(admitted)
            launched += 1
            self.stats["admitted"] += len(admitted)
        t1 = time.perf_counter()
        if self._decode():
            launched += 1
        t2 = time.perf_counter()
        # Read what was launched before this round; keep this round's launches in flight.
        keep = launched if launched else 0
        while len(self._inflight) > keep:
            self._collect(self._inflight.popleft())
        st = self.stats
        st["admit_s"] += t1 - t0
        st["decode_s"] += t2 - t1
        st["read_s"] += time.perf_counter() - t2

    # ------------------------------------------------------------------------- the prefill
    def _sequence_ids(self, req: Request) -> list[int]:
        return req.inputs.input_ids.tolist() + req.token_ids

    def _prefill(self, batch: list[Request]) -> None:
        need = [r for r in batch if r.vision_rows is None and r.inputs.has_image]
        if need:
            t = time.perf_counter()
            for r, rows in zip(need, encode_prepared(self.model, [r.inputs for r in need])):
                r.vision_rows = rows
            self.stats["encode_s"] += time.perf_counter() - t
        embeds = []
        for r in batch:
            e = prompt_embeddings(self.model, r.inputs, r.vision_rows if r.inputs.has_image else None)
            if r.token_ids:  # a preempted request: its output so far is prompt now
                ids = to_device(r.token_ids, torch.long, self.device)
                e = torch.cat([e, self.model.decoder.embed_tokens(ids)])
            embeds.append(e)
        lengths = [e.shape[0] for e in embeds]
        cu = to_device([0] + lengths, torch.long, self.device).cumsum(0).to(torch.int32)
        slots = to_device([r.slot for r in batch], torch.long, self.device)
        for r in batch:
            self._load_rules(r)
            self.cache.active[r.slot] = 1
        logits = self.fast.prefill(torch.cat(embeds), cu, max(lengths), self.cache, slots)
        ids, bad = self._choose(logits, slots, batch)
        self.tokens.index_copy_(0, slots, ids)
        for r in batch:
            r.launched += 1
        self._inflight.append(Launch([(i, r, r.epoch) for i, r in enumerate(batch)], ids, bad, self._pinned))
        self.stats["prefills"] += 1

    def _load_rules(self, req: Request) -> None:
        o, slot = req.options, req.slot
        self.official_rule.load(slot, o.no_repeat_ngram_size or 0,
                                self._sequence_ids(req) if o.no_repeat_ngram_size else ())
        if o.windowed_ngram_size:
            self.windowed_rule.load(slot, o.windowed_ngram_size, req.token_ids, window=o.window,
                                    whitelist=o.whitelist(self.tokenizer.token_to_id))
        else:
            self.windowed_rule.load(slot, 0, ())

    # --------------------------------------------------------------------------- decoding
    def _decode(self) -> bool:
        rows = [r for r in self.running.values() if r.launched < r.budget]
        for r in sorted(rows, key=lambda r: r.submitted_at):
            if r.state == RUNNING:  # (not preempted meanwhile for an older request's room)
                self._reserve(r.slot, r.cache_length + 1, preempt=True)
        rows = [r for r in rows if r.state == RUNNING]
        if not rows:
            return False
        # Rows of requests that wait to be read (launched their last token) must not advance.
        for slot, r in self.running.items():
            if r.launched >= r.budget:
                self.cache.active[slot] = 0
        bucket = bucket_for(max(r.slot for r in rows) + 1)
        bucket = min(bucket, self.max_slots) if self.graphs.use_graphs else max(r.slot for r in rows) + 1
        longest = max(r.cache_length for r in self.running.values()) + 1
        logits = self.graphs.run(self.cache, self.tokens, bucket, longest)
        ids, bad = self._choose(logits, None, rows)
        self.tokens[:bucket].copy_(ids)
        for r in rows:
            r.launched += 1
            r.cache_length += 1
        self._inflight.append(Launch([(r.slot, r, r.epoch) for r in rows], ids, bad, self._pinned))
        self.stats["steps"] += 1
        return True

    def _rule_width(self) -> int:
        """Columns of the n-gram histories in use: every running row's ids (prompt and output so
        far, plus this step's) fit; rounded up so the shapes repeat."""
        longest = max(r.cache_length for r in self.running.values()) + 2
        return min(self.context, -(-longest // 256) * 256)

    def _choose(self, logits: torch.Tensor, slots: torch.Tensor | None, reqs: Sequence[Request]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bans, token choice and fault flags for logits whose row r is slot `slots[r]` (or r)."""
        bad = check_finite(logits)
        width = self._rule_width()
        if any(r.options.no_repeat_ngram_size for r in reqs):
            self.official_rule.ban(logits, slots, width)
        if any(r.options.windowed_ngram_size for r in reqs):
            self.windowed_rule.ban(logits, slots, width)
        ids = torch.argmax(logits, dim=-1)
        for i, r in enumerate(reqs):
            if not r.options.sampled:
                continue
            row = i if slots is not None else r.slot
            o = r.options
            pick = select_next_tokens(logits[row:row + 1], temperature=o.temperature, top_k=o.top_k,
                                      top_p=o.top_p, generator=r.generator)
            ids[row:row + 1] = pick
        if any(r.options.no_repeat_ngram_size for r in reqs):
            self.official_rule.append(ids, slots, width)
        if any(r.options.windowed_ngram_size for r in reqs):
            self.windowed_rule.append(ids, slots, width)
        return ids, bad

    # ---------------------------------------------------------------------------- results
    def _collect(self, launch: Launch) -> None:
        ids, bad = launch.read()
        eos = self.tokenizer.eos_id
        now = time.perf_counter()
        for row, req, epoch in launch.rows:
            if req.finished or epoch != req.epoch:
                continue
            step = len(req.token_ids)
            if bad[row]:
                req.error = f"non-finite logits (NaN/Inf) at generated token {step}"
                logger.warning("%s: %s", req.id, req.error)
                self._finish(req, "error")
                continue
            tok = ids[row]
            if req.first_token_at is None:
                req.first_token_at = now
            if tok == eos and not req.options.ignore_eos:
                self._finish(req, "stop")
                continue
            req.token_ids.append(tok)
            self.stats["generated"] += 1
            if not self._tell(req, [tok]):
                continue
            if len(req.token_ids) >= req.budget:
                self._finish(req, "length")
            elif req.detector is not None and req.detector.append([tok])[0]:
                self._finish(req, "repetition")

    def _tell(self, req: Request, ids: list[int]) -> bool:
        """Call the request's listener; one that raises cancels its own request (logged), and
        never the engine or the other requests. False when that happened."""
        if req.listener is None:
            return True
        try:
            req.listener(req, ids)
            return True
        except Exception:  # noqa: BLE001 - any listener failure is contained to its request
            logger.exception("%s: the listener failed; the request is cancelled", req.id)
            req.listener = None
            if not req.finished:
                req.error = "the request's listener raised an exception"
                self._finish(req, "cancelled")
            return False

    def _finish(self, req: Request, reason: str) -> None:
        self._release(req)
        req.state, req.finish_reason, req.finished_at = FINISHED, reason, time.perf_counter()
        req.vision_rows = None
        self._tell(req, [])
