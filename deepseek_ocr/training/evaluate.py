"""Held-out evaluation: loss and perplexity, then CER / WER / NED from batched greedy generation.

    >>> result = evaluate(ocr, samples, batch_size=8, predictions_path="eval.jsonl")
    >>> result.metrics["cer"], result.loss, result.perplexity

* Loss: the official cross entropy (no balance loss) without gradients, token-weighted over the
  whole set, so it equals the loss of one batch holding every sample; perplexity is its exp.
* Text: each sample's prompt (its answer removed) is decoded greedily in batches with the
  generation defaults users run (`no_repeat_ngram_size` 20); the metrics module scores the
  outputs against the answers (`summarize`: set CER/WER/NED over OmniDocBench-normalized text,
  and the outputs that ended in a repetition loop, by the loop's own flag or the text detector).
* `max_new_tokens` defaults to twice the longest reference (in tokens) of the batch plus 16: a
  correct answer always fits, a looping one is cut soon after (the bound sees the references'
  lengths, never their content).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from ..evaluation.summary import MetricAggregator
from ..processing.prompt import PreparedInputs


@dataclass
class EvalResult:
    """`loss` (token-mean cross entropy), `perplexity`, `num_labels`, `metrics` (the metrics
    module's summary: count, cer, wer, ned, means, repetition counts), `predictions` (one dict
    per sample, as written to the JSONL)."""

    loss: float | None
    perplexity: float | None
    num_labels: int
    metrics: dict[str, Any]
    predictions: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"loss": self.loss, "perplexity": self.perplexity, "num_labels": self.num_labels, **self.metrics}


def prompt_only(inputs: PreparedInputs) -> PreparedInputs:
    """A training sample's inputs without its answer: what the model sees at inference."""
    if inputs.labels is None:
        return inputs
    n = inputs.num_prompt_tokens
    return replace(inputs, input_ids=inputs.input_ids[:n], images_seq_mask=inputs.images_seq_mask[:n],
                   labels=None, num_prompt_tokens=None, answer=None, extras=dict(inputs.extras))


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield range(start, min(n, start + size))


@torch.no_grad()
def held_out_loss(ocr, samples: Sequence[PreparedInputs], *, batch_size: int = 8,
                  autocast: Callable[[], Any] | None = None) -> tuple[float, int]:
    """(token-mean cross entropy over every label of `samples`, number of labels)."""
    total, labels = 0.0, 0
    for idx in _batches(len(samples), batch_size):
        batch = [samples[i] for i in idx]
        ctx = autocast() if autocast is not None else contextlib.nullcontext()
        with ctx:
            out = ocr.loss(batch, aux_loss=False)
        # Weight each batch's mean by its label count: the set's token mean, whatever the batching.
        total += float(out.ce) * out.num_labels
        labels += out.num_labels
    return (total / labels if labels else float("nan")), labels


def _max_new_tokens(ocr, batch: Sequence[PreparedInputs]) -> int:
    longest = max(int((inp.labels != -100).sum()) if inp.labels is not None else len(ocr.tokenizer.encode(inp.answer or ""))
                  for inp in batch)
    return 2 * longest + 16


def generate_texts(ocr, samples: Sequence[PreparedInputs], *, batch_size: int = 8,
                   max_new_tokens: int | None = None, no_repeat_ngram_size: int | None = 20,
                   on_batch: Callable[[int], None] | None = None) -> list[tuple[str, str]]:
    """Greedy outputs `(text, finish_reason)` for every sample's prompt, in order."""
    out: list[tuple[str, str]] = []
    for idx in _batches(len(samples), batch_size):
        batch = [samples[i] for i in idx]
        limit = max_new_tokens or _max_new_tokens(ocr, batch)
        results = ocr.generate([prompt_only(inp) for inp in batch], max_new_tokens=limit,
                               no_repeat_ngram_size=no_repeat_ngram_size)
        out += [(r.text, r.finish_reason) for r in results]
        if on_batch is not None:
            on_batch(len(batch))
    return out


def evaluate(ocr, samples: Sequence[PreparedInputs], *, batch_size: int = 8, loss: bool = True,
             generation: bool = True, max_new_tokens: int | None = None,
             no_repeat_ngram_size: int | None = 20, predictions_path: str | os.PathLike | None = None,
             autocast: Callable[[], Any] | None = None,
             on_batch: Callable[[int], None] | None = None) -> EvalResult:
    """Evaluate `ocr` on prepared samples that carry answers (`prepare(..., answer=...)`).

    Args:
        ocr: a `DeepseekOCR`.
        samples: a sequence of `PreparedInputs` with labels (a `SampleDataset` works).
        batch_size: samples per forward and per generation batch.
        loss, generation: which parts to run.
        max_new_tokens: the generation limit (default: see the module docstring).
        no_repeat_ngram_size: passed to generation (the official inference default, 20).
        predictions_path: write one JSON line per sample (source, reference, prediction,
            finish_reason and its scores); written to a temporary file and renamed.
        autocast: a context factory for the loss forward (bf16 on CUDA during training).
        on_batch: called with the batch size after each generation batch (progress).
    """
    was_training = ocr.model.training
    ocr.model.eval()
    try:
        items = [samples[i] for i in range(len(samples))]
        mean, n_labels = held_out_loss(ocr, items, batch_size=batch_size, autocast=autocast) if loss else (None, 0)
        ppl = None if mean is None or math.isnan(mean) else math.exp(min(mean, 700.0))
        metrics: dict[str, Any] = {}
        predictions: list[dict] = []
        if generation:
            texts = generate_texts(ocr, items, batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   no_repeat_ngram_size=no_repeat_ngram_size, on_batch=on_batch)
            agg = MetricAggregator()
            for i, (inp, (text, reason)) in enumerate(zip(items, texts)):
                reference = inp.answer if inp.answer is not None else ""
                scores = agg.add(text, reference, reason)
                predictions.append({"index": i, "source": inp.extras.get("source"), "reference": reference,
                                    "prediction": text, **scores.to_dict()})
            metrics = agg.summary()
            if predictions_path is not None:
                write_jsonl(predictions_path, predictions)
    finally:
        ocr.model.train(was_training)
    return EvalResult(mean, ppl, n_labels, metrics, predictions)


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
