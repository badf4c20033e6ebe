"""`deepseek-ocr serve`: the HTTP server (OpenAI-compatible chat completions, `/v1/ocr`, a web
page at `/`), one engine per GPU behind one endpoint.

    deepseek-ocr serve --model deepseek-ai/DeepSeek-OCR --port 8000
    deepseek-ocr serve --model random --device cpu          # random weights: gibberish, for trying it

Exit codes: 0 stopped (SIGTERM/SIGINT after a graceful shutdown), 2 usage or model problem.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import signal
import sys

from . import EXIT_OK, EXIT_USAGE
from .common import parse_args, say

logger = logging.getLogger("deepseek_ocr.serve")

DTYPES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value
    return parse


# Prompt tokens a GPU engine admits per step when serving (the engine's own default is 8192).
# Measured on an H200 at concurrency 256, interleaved on one machine (benchmarks/RESULTS.md,
# eighth round): 8192 -> 13.10 and 13.07 pages/s, 16384 -> 14.63 and 15.03, 32768 -> 13.52.
# A burst of arrivals is encoded in half as many groups, each pausing the running requests once.
GPU_SERVE_PREFILL_TOKENS = 16384


def engine_settings(args, devices: list[str]) -> dict:
    """The `Engine(...)` keywords the options ask for (the engine's defaults otherwise, except
    the admission budget on a GPU: `GPU_SERVE_PREFILL_TOKENS`)."""
    kw = {}
    if args.max_slots:
        kw["max_slots"] = args.max_slots
    if args.prefill_tokens:
        kw["prefill_tokens"] = args.prefill_tokens
    elif any(d.startswith("cuda") for d in devices):
        kw["prefill_tokens"] = GPU_SERVE_PREFILL_TOKENS
    if args.admit_gather_steps:
        kw["admit_gather_steps"] = args.admit_gather_steps
    if args.kv_cache == "preallocate" and any(d.startswith("cuda") for d in devices):
        # The engine caps its pool at what every slot's full context needs, or 60% of the
        # memory free after loading: asking for more than that starts it at that cap.
        kw["initial_blocks"] = 2**31
    return kw


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="deepseek-ocr serve",
        description="Serve DeepSeek-OCR over HTTP: /v1/chat/completions (OpenAI API, as vLLM serves the "
                    "model), /v1/ocr (images and PDFs, per page markdown and boxes), a web page at /.",
        epilog="Exit codes: 0 stopped after a graceful shutdown, 2 usage or model problem.")
    a = ap.add_argument
    a("--model", default="deepseek-ai/DeepSeek-OCR",
      help="checkpoint folder or hub repo id; 'random' for a random-weight demo model (gibberish text)")
    a("--adapter", help="a PEFT LoRA adapter folder, merged into the weights at load")
    a("--device", help="cpu, cuda, cuda:N (default: every visible GPU, else the CPU)")
    a("--gpus", help="GPUs to run one engine each on: 'all' (default with CUDA) or indices such as 0,2")
    a("--dtype", choices=DTYPES, help="default bf16 on GPU, float32 on CPU")
    a("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    a("--port", type=int, default=8000, help="port (default 8000)")
    a("--served-model-name", help="the model id clients see (default: --model)")
    a("--api-key", help="require 'Authorization: Bearer KEY' (default: $DEEPSEEK_OCR_API_KEY, or none)")
    a("--cors-origin", action="append", default=[], metavar="ORIGIN",
      help="allow browser calls from ORIGIN (repeatable; default: CORS off)")
    a("--allow-fetch", action="store_true", help="fetch http(s) image_url values (default: data: URLs only)")
    a("--max-slots", type=_positive(int), help="requests decoding at once per engine (default 256 on GPU, 16 on CPU)")
    a("--prefill-tokens", type=_positive(int), default=None,
      help="prompt tokens admitted per engine step (default 16384 on a GPU: 16 to 18 Gundam pages, "
           "measured best at concurrency 256; 8192 on a CPU); more admits larger groups of pages per "
           "vision encode, each pausing the running requests longer")
    a("--admit-gather-steps", type=int, default=0, metavar="N",
      help="while requests decode, let up to N engine steps pass for a group of 8 arrivals to gather "
           "before their vision encode (default 0: admit whatever waits); fewer, larger encodes in a burst, "
           "at up to N steps more time to first token")
    a("--kv-cache", choices=("preallocate", "grow"), default="preallocate",
      help="on a GPU, allocate the KV cache pool at its full size at start (default: no pool growth, "
           "which would recapture every CUDA graph, in the middle of serving) or start small and grow")
    a("--max-queue", type=int, default=256, help="requests accepted beyond the slots before 429 (default 256)")
    a("--max-body-mb", type=_positive(float), default=64.0, help="largest request body in MB (default 64)")
    a("--max-pixels", type=_positive(int), default=None, help="largest image in pixels (default 64 Mpx)")
    a("--max-pages", type=_positive(int), default=100, help="most pages per /v1/ocr request (default 100)")
    a("--request-timeout", type=_positive(float), default=600.0, help="seconds per request (default 600)")
    a("--shutdown-timeout", type=_positive(float), default=30.0,
      help="seconds requests in flight get to finish on SIGTERM before they are cancelled (default 30)")
    a("--default-mode", default="gundam", help="mode of requests that name none (default gundam, as vLLM)")
    a("--prepare-workers", type=_positive(int), default=None,
      help="threads preparing images and pages (default: one per CPU core, 2 to 4)")
    a("--prepare-processes", type=int, default=0, metavar="N",
      help="prepare chat requests' images in N worker processes instead of threads, so that decoding "
           "and cutting pages does not take the GIL from the engine. Not faster so far: on one H200 at "
           "256 concurrent Gundam pages, 8 processes gave 8.76 pages/s against 10.98 with 4 threads "
           "(benchmarks/RESULTS.md); each process starts in a few seconds (default 0: threads)")
    a("--verbose", action="store_true", help="log requests and engine events")
    return ap


def _devices(args) -> list[str]:
    """One device per engine; ValueError saying what is wrong."""
    import torch
    from ..cli_model import device_problem
    problem = device_problem(args.device)
    if problem is not None:
        raise ValueError(problem)
    if args.device is not None and args.device != "cuda":  # cpu, mps, cuda:N: that one device
        if args.gpus is not None:
            raise ValueError("--gpus goes with --device cuda (or no --device), not with one named device")
        return [args.device]
    if not torch.cuda.is_available():
        if args.gpus is not None:
            raise ValueError("--gpus: no CUDA GPU is visible")
        return ["cpu"]
    count = torch.cuda.device_count()
    spec = (args.gpus or "all").strip()
    if spec == "all":
        return [f"cuda:{i}" for i in range(count)]
    try:
        indices = [int(x) for x in spec.split(",")]
    except ValueError:
        raise ValueError(f"--gpus {spec!r}: expected 'all' or GPU indices such as 0,2") from None
    if any(not 0 <= i < count for i in indices) or len(set(indices)) != len(indices):
        raise ValueError(f"--gpus {spec!r}: {count} GPU(s) visible; give distinct indices below {count}")
    return [f"cuda:{i}" for i in indices]


def _load(args, devices: list[str]):
    from ..cli_model import RANDOM_MODEL, ensure_random_model, weights_help
    from ..errors import DeepseekOCRError, WeightsError
    from ..ocr import DeepseekOCR
    models = []
    path = str(ensure_random_model()) if args.model == RANDOM_MODEL else args.model
    for device in devices:
        try:
            models.append(DeepseekOCR.from_pretrained(path, device=device, dtype=args.dtype, adapter=args.adapter))
        except WeightsError as err:
            print(weights_help(args.model, err), file=sys.stderr)
            return None
        except (DeepseekOCRError, ValueError, OSError) as err:
            print(f"error: cannot load the model {args.model!r} on {device}: {err}", file=sys.stderr)
            return None
    return models


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(build_parser(), argv)
    if isinstance(args, int):
        return args
    try:
        from ..serving import API_KEY_ENV, Backend, ServerConfig, create_app, run_server
        from ..processing.image_io import DEFAULT_MAX_PIXELS
        from ..processing.views import resolve_mode
    except ImportError as err:
        print(f"deepseek-ocr serve needs the serve extra: pip install 'deepseek-ocr[serve]' ({err})", file=sys.stderr)
        return EXIT_USAGE
    api_key = args.api_key or os.environ.get(API_KEY_ENV) or None
    try:
        if not 0 < args.port < 65536:
            raise ValueError(f"--port {args.port}: expected 1..65535")
        if args.max_queue < 0:
            raise ValueError(f"--max-queue {args.max_queue}: expected 0 or more")
        if args.prepare_processes < 0:
            raise ValueError(f"--prepare-processes {args.prepare_processes}: expected 0 or more")
        resolve_mode(args.default_mode)
        config = ServerConfig(model_name=args.served_model_name or args.model, api_key=api_key,
                              cors_origins=tuple(args.cors_origin), max_body_bytes=int(args.max_body_mb * 2**20),
                              max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS, max_pages=args.max_pages,
                              max_queue=args.max_queue, request_timeout=args.request_timeout,
                              allow_fetch=args.allow_fetch, default_mode=args.default_mode,
                              prepare_processes=args.prepare_processes,
                              **({} if args.prepare_workers is None else {"prepare_workers": args.prepare_workers}))
        devices = _devices(args)
    except ValueError as err:
        print(f"deepseek-ocr serve: {err}", file=sys.stderr)
        return EXIT_USAGE
    if not _is_loopback(args.host) and api_key is None:
        logger.warning("listening on %s without an API key: anyone who can reach it can use the model "
                       "(set --api-key or $%s)", args.host, API_KEY_ENV)
    models = _load(args, devices)
    if models is None:
        return EXIT_USAGE
    backend = Backend(models, config, engine_kwargs=engine_settings(args, devices))
    say(f"deepseek-ocr serve: {config.model_name} on {', '.join(devices)} "
        f"({len(models)} engine(s)); http://{args.host}:{args.port}/ (web page), /v1/chat/completions, /v1/ocr")
    if args.model == "random":
        say("note: --model random has random weights: its text is gibberish. It shows the server end to end; "
            "use the official weights for real OCR.")
    # uvicorn re-raises the shutdown signal once it has drained: let SIGTERM then end the
    # command normally (exit 0) instead of killing the process.
    signal.signal(signal.SIGTERM, _exit_zero)
    try:
        run_server(create_app(backend), backend, host=args.host, port=args.port,
                   shutdown_timeout=args.shutdown_timeout, log_level="info" if args.verbose else "warning",
                   access_log=args.verbose)
    except KeyboardInterrupt:
        pass
    except SystemExit as done:
        return int(done.code or 0)
    return EXIT_OK


def _exit_zero(signum, frame) -> None:
    raise SystemExit(EXIT_OK)
