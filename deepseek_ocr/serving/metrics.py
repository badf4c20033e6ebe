"""Server figures in the Prometheus text format (version 0.0.4), written by hand: a handful of
counters and histograms do not justify a dependency.

Everything is updated on the event loop's thread only (the engine threads publish their own
figures as plain attributes, read when `/metrics` is rendered), so no locks are needed.
"""
from __future__ import annotations

import bisect
import time
from collections import deque
from typing import Iterable

PREFIX = "deepseek_ocr_"

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    body = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + body + "}"


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Histogram:
    """Cumulative buckets, sum and count, as Prometheus histograms are exposed."""

    def __init__(self, buckets: Iterable[float]):
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += times
        self.total += value * times
        self.count += times

    def lines(self, name: str, labels: dict[str, str] | None = None) -> list[str]:
        labels = labels or {}
        out, running = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            running += n
            out.append(f"{name}_bucket{_labels({**labels, 'le': _number(bound)})} {running}")
        out.append(f"{name}_sum{_labels(labels)} {self.total!r}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


class RateWindow:
    """Events per second over the last `seconds` (the tokens/s gauge)."""

    def __init__(self, seconds: float = 10.0):
        self.seconds = seconds
        self._events: deque[tuple[float, int]] = deque()

    def add(self, n: int, now: float | None = None) -> None:
        self._events.append((time.monotonic() if now is None else now, n))

    def rate(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        while self._events and self._events[0][0] < now - self.seconds:
            self._events.popleft()
        return sum(n for _, n in self._events) / self.seconds


class Metrics:
    """The server's own figures (HTTP side); `render(workers, ...)` adds the engines'."""

    def __init__(self):
        self.requests: dict[tuple[str, str], int] = {}  # (endpoint, status code) -> count
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.pages = 0
        self.cancelled = 0  # requests ended because their client went away
        self.timeouts = 0
        self.rejected_queue_full = 0
        self.ttft = Histogram(LATENCY_BUCKETS)
        self.itl = Histogram(TOKEN_GAP_BUCKETS)
        self.duration = Histogram(LATENCY_BUCKETS)
        self.prepare = Histogram(LATENCY_BUCKETS)
        self.token_rate = RateWindow()

    def count_request(self, endpoint: str, status: int) -> None:
        key = (endpoint, str(status))
        self.requests[key] = self.requests.get(key, 0) + 1

    def tokens_arrived(self, n: int, gap: float | None) -> None:
        """`n` new ids reached the loop `gap` seconds after the previous ones (None: first)."""
        self.generation_tokens += n
        self.token_rate.add(n)
        if gap is not None and n:
            # Ids that arrive together shared the gap: each is credited its part of it.
            self.itl.observe(gap / n, n)

    def render(self, *, in_flight: int, capacity: int, preparing: int, workers: list) -> str:
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} {kind}")
            for labels, value in samples:
                lines.append(f"{PREFIX}{name}{_labels(labels)} {_number(value)}")

        metric("requests_total", "counter", "HTTP requests answered, by endpoint and status code.",
               [({"endpoint": e, "code": c}, n) for (e, c), n in sorted(self.requests.items())])
        metric("requests_in_flight", "gauge", "Requests accepted and not yet answered.", [({}, in_flight)])
        metric("requests_capacity", "gauge", "Requests the server accepts at once (engine slots + queue).",
               [({}, capacity)])
        waiting = sum(w.waiting for w in workers)
        metric("queue_depth", "gauge", "Work waiting for an engine slot: preparation tasks and queued requests.",
               [({}, preparing + waiting)])
        metric("preparing_tasks", "gauge", "CPU tasks (decoding, rendering, views, post-processing) in the pool.",
               [({}, preparing)])
        metric("running_requests", "gauge", "Requests holding an engine slot, per engine.",
               [({"engine": w.name}, w.running) for w in workers])
        metric("waiting_requests", "gauge", "Requests queued inside an engine, per engine.",
               [({"engine": w.name}, w.waiting) for w in workers])
        metric("engine_slots", "gauge", "Decode slots per engine.", [({"engine": w.name}, w.slots) for w in workers])
        metric("engine_steps_total", "counter", "Engine steps.",
               [({"engine": w.name}, w.stats.get("steps", 0)) for w in workers])
        metric("engine_preemptions_total", "counter", "Requests preempted for cache room.",
               [({"engine": w.name}, w.stats.get("preemptions", 0)) for w in workers])
        metric("engine_seconds_total", "counter",
               "Engine thread seconds by phase of the step: admit (encode and prefill launched, "
               "encode is part of it), decode (the step launched), read (waiting for the GPU's tokens).",
               [({"engine": w.name, "phase": phase}, round(w.stats.get(f"{phase}_s", 0.0), 6))
                for w in workers for phase in ("admit", "encode", "decode", "read")])
        metric("engine_failures_total", "counter", "Engine steps that raised (their requests failed).",
               [({"engine": w.name}, w.failures) for w in workers])
        metric("prompt_tokens_total", "counter", "Prompt tokens (image tokens included) of finished requests.",
               [({}, self.prompt_tokens)])
        metric("generation_tokens_total", "counter", "Generated tokens.", [({}, self.generation_tokens)])
        metric("generation_tokens_per_second", "gauge", "Generated tokens per second over the last 10 s.",
               [({}, round(self.token_rate.rate(), 3))])
        metric("pages_total", "counter", "Pages (images or PDF pages) read by /v1/ocr.", [({}, self.pages)])
        metric("requests_cancelled_total", "counter", "Requests cancelled because their client disconnected.",
               [({}, self.cancelled)])
        metric("requests_timed_out_total", "counter", "Requests cancelled at the request timeout.",
               [({}, self.timeouts)])
        metric("requests_rejected_total", "counter", "Requests refused with 429 (queue full).",
               [({}, self.rejected_queue_full)])
        for name, hist, help_text in (
                ("time_to_first_token_seconds", self.ttft, "From a request's arrival to its first token."),
                ("inter_token_latency_seconds", self.itl, "Between consecutive tokens of a request."),
                ("request_duration_seconds", self.duration, "From a request's arrival to its last token."),
                ("prepare_seconds", self.prepare, "From a chat request's arrival until its image is prepared "
                                                  "and it can queue for an engine.")):
            lines.append(f"# HELP {PREFIX}{name} {help_text}")
            lines.append(f"# TYPE {PREFIX}{name} histogram")
            lines.extend(hist.lines(PREFIX + name))
        return "\n".join(lines) + "\n"
