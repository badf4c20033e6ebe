"""Short GIL turns while an engine thread shares the process with other Python threads.

The engine's step is host work (admission, launches, reading tokens) between GPU steps. Other
threads of the process (a pipeline's page preparation and finishing, a server's event loop)
take the GIL too, and when two threads want it CPython hands it over only every
`sys.getswitchinterval()` (5 ms by default): each time the engine thread gives it up (any torch
call that releases it) it may wait that long to get it back, while the GPU idles. Measured on
an H200 (`benchmarks/bench_pages.py --variants`): 256 Gundam pages through the pipeline took
19.6 s at 0.5 ms against 24.3 s at 5 ms in the same process (22.7 s in another run at 5 ms).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

SWITCH_INTERVAL_S = 0.0005


@contextlib.contextmanager
def short_gil_turns(interval: float = SWITCH_INTERVAL_S) -> Iterator[None]:
    """Lower the process's GIL switch interval to `interval` (if it is longer) inside the block;
    the previous value comes back after. The setting is process-wide while the block runs."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(min(old, interval))
    try:
        yield
    finally:
        sys.setswitchinterval(old)
