"""Load generator for `deepseek-ocr serve`: OpenAI-style streaming chat requests, each a Gundam
page as a data URL with its output forced to N tokens (`ignore_eos` in the extra body), at
several concurrency levels; time to first token, inter-token latency, pages/s and tokens/s.

    # against a running server
    python benchmarks/bench_server.py --url http://127.0.0.1:8000 --concurrency 1 16 64 256 \\
        --max-tokens 1000 --out server.json
    # or start one (deepseek-ocr serve as a subprocess) for the run
    python benchmarks/bench_server.py --model /path/to/checkpoint --concurrency 1 16 64 256 --out server.json
    # CPU smoke run on the small random checkpoint
    python benchmarks/bench_server.py --model /tmp/small_ckpt --device cpu --mode tiny \\
        --concurrency 1 2 --requests 2 --max-tokens 8 --out /tmp/bench_server.json

The page is bench_decode's synthetic 1280 x 1920 document (Gundam: 6 tiles of 640 + the 1024
global view, 913 prompt tokens), the one bench_engine.py measures the engine on, so the two
compare. Each level sends `--requests` requests (default: 2 x the concurrency, at least 8)
through `concurrency` connections that each send their next request as soon as the previous one
ends, after one warm-up request. Times are the client's: TTFT from sending to the first content
chunk, inter-token latency between content chunks (p50/p99 over every gap of every request),
TPOT = (last - first chunk) / (tokens - 1) per request. Every request is checked to end with
finish_reason "length" and exactly `--max-tokens` completion tokens (from the usage chunk).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))


def page_data_url() -> str:
    from bench_decode import gundam_page  # the engine benchmark's page
    buf = io.BytesIO()
    gundam_page().save(buf, "PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def percentiles(values: list[float], scale: float = 1.0) -> dict:
    if not values:
        return {"p50": None, "p99": None, "mean": None, "n": 0}
    ordered = sorted(values)

    def at(q: float) -> float:  # nearest rank
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]

    return {"p50": round(at(0.50) * scale, 3), "p99": round(at(0.99) * scale, 3),
            "mean": round(statistics.fmean(ordered) * scale, 3), "n": len(ordered)}


async def one_request(client: httpx.AsyncClient, body: dict) -> dict:
    sent = time.perf_counter()
    stamps: list[float] = []
    finish, usage, error = None, None, None
    async with client.stream("POST", "/v1/chat/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            return {"error": f"HTTP {r.status_code}: {r.text[:200]}", "sent": sent}
        # The server's Server-Timing header: arrival -> image prepared (before it queues for an engine)
        timing = re.fullmatch(r"prepare;dur=([\d.]+)", r.headers.get("server-timing", ""))
        prepare_s = float(timing.group(1)) / 1e3 if timing else None
        async for line in r.aiter_lines():
            if not line.startswith("data: "):
                continue
            payload = line[6:]
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:
                error = chunk["error"].get("message")
                continue
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", []):
                if choice["delta"].get("content"):
                    stamps.append(time.perf_counter())
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    return {"sent": sent, "stamps": stamps, "finish": finish, "usage": usage, "error": error,
            "done": time.perf_counter(), "prepare_s": prepare_s}


async def run_level(url: str, headers: dict, body: dict, concurrency: int, requests: int, timeout: float) -> dict:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    results: list[dict] = []
    queue = list(range(requests))

    async def connection(client: httpx.AsyncClient) -> None:
        while queue:
            queue.pop()
            try:
                results.append(await one_request(client, body))
            except httpx.HTTPError as err:
                results.append({"error": f"{type(err).__name__}: {err}"})

    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as client:
        await one_request(client, body)  # warm-up (first-use compilation, graph capture)
        t0 = time.perf_counter()
        await asyncio.gather(*(connection(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    expected = body["max_tokens"]
    ok = [r for r in results if not r.get("error") and r["finish"] == "length" and r["usage"]
          and r["usage"]["completion_tokens"] == expected]
    ttft = [r["stamps"][0] - r["sent"] for r in ok if r["stamps"]]
    prepared = [r["prepare_s"] for r in ok if r.get("prepare_s") is not None]
    after = [r["stamps"][0] - r["sent"] - r["prepare_s"] for r in ok if r["stamps"] and r.get("prepare_s") is not None]
    gaps = [b - a for r in ok for a, b in zip(r["stamps"], r["stamps"][1:])]
    tpot = [(r["stamps"][-1] - r["stamps"][0]) / (expected - 1) for r in ok if len(r["stamps"]) > 1 and expected > 1]
    tokens = sum(r["usage"]["completion_tokens"] for r in ok)
    failures = [r.get("error") or f"finish_reason {r.get('finish')}, usage {r.get('usage')}" for r in results
                if r not in ok]
    return {"concurrency": concurrency, "requests": requests, "ok": len(ok), "failed": len(failures),
            "failures": failures[:5], "wall_s": round(wall, 3),
            "pages_per_s": round(len(ok) / wall, 3), "tokens_per_s": round(tokens / wall, 1),
            "ttft_ms": percentiles(ttft, 1000), "itl_ms": percentiles(gaps, 1000), "tpot_ms": percentiles(tpot, 1000),
            "e2e_s": percentiles([r["done"] - r["sent"] for r in ok]),
            # TTFT split: preparing (server side, from Server-Timing) and the rest (queue for an
            # engine slot, vision encoding, prefill, the first step)
            "prepare_ms": percentiles(prepared, 1000) if prepared else None,
            "after_prepare_ms": percentiles(after, 1000) if after else None}


def engine_figures(url: str, headers: dict) -> dict:
    """The engines' counters from /metrics, summed over engines: steps and host seconds per phase."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    out: dict = {}
    for line in text.splitlines():
        m = re.match(r'^deepseek_ocr_engine_(steps_total|seconds_total)\{([^}]*)\} (\S+)$', line)
        if m:
            phase = re.search(r'phase="(\w+)"', m.group(2))
            key = f"{phase.group(1)}_s" if phase else "steps"
            out[key] = out.get(key, 0.0) + float(m.group(3))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args) -> tuple[subprocess.Popen, str]:
    """`deepseek-ocr serve` on a free loopback port; returns once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-m", "deepseek_ocr", "serve", "--model", args.model, "--port", str(port),
           "--max-queue", str(max(args.concurrency) * 2), "--served-model-name", "bench", *args.serve_arg]
    if args.device:
        cmd += ["--device", args.device]
    if args.max_slots:
        cmd += ["--max-slots", str(args.max_slots)]
    proc = subprocess.Popen(cmd)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + args.start_timeout
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before answering")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.terminate()
            raise SystemExit(f"the server did not answer /health within {args.start_timeout} s")
        time.sleep(0.5)


def start_spy(server: subprocess.Popen, out: Path) -> list[subprocess.Popen]:
    """Two py-spy samplers of `server` (100 Hz, without pausing it): every thread, idle or not
    (`out`), and only the thread holding the GIL (`out` with `_gil`); none when py-spy is missing.
    A sampler that may not read the process (ptrace) says so in its .log and writes nothing."""
    if shutil.which("py-spy") is None:
        print("--spy: py-spy is not installed; no samples", flush=True)
        return []
    out.parent.mkdir(parents=True, exist_ok=True)
    spies = []
    for path, extra in ((out, ["--idle"]), (out.with_name(out.stem + "_gil.txt"), ["--gil"])):
        spies.append(subprocess.Popen(["py-spy", "record", "--pid", str(server.pid), "--rate", "100", "--format",
                                       "raw", "--threads", "--nonblocking", *extra, "--output", str(path)],
                                      stdout=subprocess.DEVNULL, stderr=open(str(path) + ".log", "w")))
    return spies


def stop_spy(spies: list[subprocess.Popen] | None) -> None:
    for spy in spies or ():
        spy.send_signal(signal.SIGINT)  # py-spy writes its samples on SIGINT
    for spy in spies or ():
        try:
            spy.wait(timeout=60)
        except subprocess.TimeoutExpired:
            spy.kill()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", help="a running server (default: start one with --model)")
    ap.add_argument("--model", help="checkpoint to start `deepseek-ocr serve` on for the run")
    ap.add_argument("--device", help="--device for the started server")
    ap.add_argument("--max-slots", type=int, help="--max-slots for the started server")
    ap.add_argument("--serve-arg", action="append", default=[], help="more arguments for the started server")
    ap.add_argument("--start-timeout", type=float, default=600.0)
    ap.add_argument("--api-key", default=os.environ.get("DEEPSEEK_OCR_API_KEY"))
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--requests", type=int, nargs="+",
                    help="requests per level: one number for every level, or one per level "
                         "(default: 2 x concurrency, at least 8)")
    ap.add_argument("--max-tokens", type=int, default=1000, help="output tokens per request (forced)")
    ap.add_argument("--mode", default="gundam", help="resolution mode of every request (default gundam)")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds per request")
    ap.add_argument("--out", default="bench_server.json")
    ap.add_argument("--spy", metavar="DIR",
                    help="sample the started server's threads with py-spy during each level (where each "
                         "thread spends its time, and which holds the GIL): DIR/spy_c<N>.txt, collapsed stacks")
    args = ap.parse_args()
    if bool(args.url) == bool(args.model):
        ap.error("give --url (a running server) or --model (start one), not both")
    body = {"model": "bench", "max_tokens": args.max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}, "mode": args.mode, "ignore_eos": True,
            "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": page_data_url()}},
                                                      {"type": "text", "text": "Free OCR."}]}]}
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    proc, url = launch(args) if args.model else (None, args.url.rstrip("/"))
    report = {"url": url, "model": args.model, "mode": args.mode, "max_tokens": args.max_tokens,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "levels": []}
    try:
        report["models"] = httpx.get(url + "/v1/models", headers=headers, timeout=30).json().get("data")
        if args.requests and len(args.requests) not in (1, len(args.concurrency)):
            ap.error("--requests: give one number, or one per --concurrency level")
        for i, c in enumerate(args.concurrency):
            n = args.requests[min(i, len(args.requests) - 1)] if args.requests else max(8, 2 * c)
            before = engine_figures(url, headers)
            spy = start_spy(proc, Path(args.spy) / f"spy_c{c}.txt") if args.spy and proc is not None else None
            try:
                level = asyncio.run(run_level(url, headers, body, c, n, args.timeout))
            finally:
                stop_spy(spy)
            after = engine_figures(url, headers)
            # Where the engine thread's time went during the level (warm-up request included).
            level["engine"] = {k: round(after[k] - before.get(k, 0.0), 3) for k in after}
            report["levels"].append(level)
            print(f"concurrency {c:4d}: {level['ok']}/{n} ok, {level['pages_per_s']:.2f} pages/s, "
                  f"{level['tokens_per_s']:.0f} tokens/s, TTFT p50 {level['ttft_ms']['p50']} ms "
                  f"p99 {level['ttft_ms']['p99']} ms, ITL p50 {level['itl_ms']['p50']} ms "
                  f"p99 {level['itl_ms']['p99']} ms", flush=True)
            if level.get("prepare_ms"):
                print(f"  of the TTFT: preparing p50 {level['prepare_ms']['p50']} ms p99 {level['prepare_ms']['p99']} ms; "
                      f"after it p50 {level['after_prepare_ms']['p50']} ms p99 {level['after_prepare_ms']['p99']} ms",
                      flush=True)
            Path(args.out).write_text(json.dumps(report, indent=1) + "\n")  # after every level
        report["server_metrics"] = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=120)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0 if all(level["failed"] == 0 for level in report["levels"]) else 1


if __name__ == "__main__":
    sys.exit(main())
