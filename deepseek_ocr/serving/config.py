"""The server's settings: limits, security switches and defaults, in one frozen record.

`deepseek-ocr serve` fills it from its flags; tests build it directly. Every limit here is
enforced before the work it bounds starts (the body before it is read whole, pixels before an
image is decoded, pages before a PDF page is rendered, tokens before a request is queued).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from ..inputs.pdf import DEFAULT_DPI
from ..processing.image_io import DEFAULT_MAX_PIXELS

API_KEY_ENV = "DEEPSEEK_OCR_API_KEY"


def default_prepare_workers() -> int:
    """Preparing threads: one per CPU core this process may use, 2 to 4. Measured on the H200's
    host (16 cores, `bench_server.py`, 256 concurrent Gundam pages): 4 threads gave 11.08
    pages/s, 12 gave 10.12 (and 8.09 vs 9.85 in an earlier pair): preparing holds the GIL in
    parts (base64, array conversions), and more threads take it from the engine's thread, whose
    admissions then reach the GPU later. Fewer than 4 on a small machine, where there are fewer
    cores to share."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 2
    return max(2, min(4, cores))


@dataclass(frozen=True)
class ServerConfig:
    """Attributes:
        model_name: the id `/v1/models` lists and responses carry (clients send it as `model`;
            any value is accepted, as one model is served).
        api_key: when set, every endpoint but `/health` (and the page's static files) needs
            `Authorization: Bearer KEY`.
        cors_origins: origins allowed to call the API from a browser; empty: CORS off.
        max_body_bytes: largest request body (413 beyond).
        max_pixels: largest image, in pixels, and the cap PDF pages are rendered under.
        max_pages: most pages one `/v1/ocr` request may select.
        max_queue: requests accepted beyond the engines' slots before answering 429.
        request_timeout: seconds a request may take from arrival to its last token.
        allow_fetch: fetch http(s) `image_url`s (off: only `data:` URLs).
        fetch_max_bytes, fetch_timeout: the cap and the time limit of such a fetch.
        default_mode: the resolution mode when a request names none (vLLM serves Gundam).
        default_dpi, max_dpi: PDF rendering resolution, and the highest a request may ask.
        pages_in_flight: pages of one `/v1/ocr` request in the engine at once.
        prepare_workers: threads decoding images, rendering PDF pages and cutting views (default:
            one per usable CPU core, 2 to 4; see `default_prepare_workers`).
        prepare_processes: child processes preparing chat requests' images (decoding, views,
            tokenizing), so that this work does not share the GIL with the engines' threads;
            0: the threads above do it (see `prepare_pool`). The children are spawned: a script
            that starts the server itself needs the `if __name__ == "__main__":` guard.
        retry_after: seconds suggested to a client refused with 429.
    """

    model_name: str = "deepseek-ai/DeepSeek-OCR"
    api_key: str | None = None
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 64 * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pages: int = 100
    max_queue: int = 256
    request_timeout: float = 600.0
    allow_fetch: bool = False
    fetch_max_bytes: int = 32 * 1024 * 1024
    fetch_timeout: float = 10.0
    default_mode: str = "gundam"
    default_dpi: float = DEFAULT_DPI
    max_dpi: float = 600.0
    pages_in_flight: int = 16
    prepare_workers: int = field(default_factory=default_prepare_workers)
    prepare_processes: int = 0
    retry_after: int = 1

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_pixels", "max_pages", "fetch_max_bytes", "pages_in_flight",
                     "prepare_workers", "retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ServerConfig.{name} must be a positive integer, got {value!r}")
        for name in ("max_queue", "prepare_processes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"ServerConfig.{name} must be an integer >= 0, got {value!r}")
        for name in ("request_timeout", "fetch_timeout", "default_dpi", "max_dpi"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServerConfig.{name} must be positive, got {getattr(self, name)!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("ServerConfig.api_key must not be empty (leave it None for no key)")
