"""The progress display on stderr: pages done/total, pages/s, output tokens/s, elapsed, ETA, and
what the current batch is doing (its decode steps so far and how long it has run).

tqdm draws it: on a terminal one bar redrawn in place; into a file or pipe (CI logs, `nohup`)
plain lines instead, since carriage returns make one unreadable line there. The figures are
ours, because tqdm's rate would count skipped and failed pages: pages/s and the ETA count only
pages the model finished. The display is refreshed on a timer as well as on events (a
background thread, every second on a terminal, every `interval` seconds into a file), so the
elapsed time moves and a long batch still shows its steps.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Iterator, TextIO

from tqdm import tqdm

_TTY_REFRESH_S = 1.0  # a terminal's clock ticks each second; faster is flicker, not information
_FILE_REFRESH_S = 15.0  # a line every 15 s into a log: a 4-hour run stays under 1000 lines


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class NullWatch:
    """The batch watcher of a run nobody watches."""

    @contextlib.contextmanager
    def batch(self, pages: int) -> Iterator[None]:
        yield

    def step(self) -> None:
        pass


class _Lines:
    """A file for tqdm that turns its carriage-return redraws into whole lines (for logs)."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, text: str) -> None:
        for piece in text.split("\r"):
            if piece.strip():
                self.stream.write(piece.rstrip() + "\n")

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return False


class ProgressReporter:
    """Counts pages and tokens and shows them; also a batch watcher for `run_pages(watch=...)`.

    Args:
        total: pages expected (skipped pages included; they count as done but not in the rates).
        stream: where to write (default sys.stderr).
        enabled: False shows nothing (`--quiet`, non-zero ranks); the counts are still kept.
        interval: seconds between refreshes (default: 1 on a terminal, 15 into a file).
        prefix: text before the figures (e.g. "[rank 0 of 2] ").
        clock: time source (for tests).
        ticker: refresh on a timer from a background thread (off in tests, which call `tick`).
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True,
                 interval: float | None = None, prefix: str = "", clock=time.monotonic,
                 ticker: bool = True):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.prefix = prefix
        self._clock = clock
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = interval if interval is not None else (_TTY_REFRESH_S if self._tty else _FILE_REFRESH_S)
        self.start = clock()
        self.done = self.ok = self.failed = self.skipped = 0
        self.tokens = 0
        self._batch: tuple[int, float] | None = None  # (pages, start) of the batch running now
        self._steps = 0
        self._last_draw = float("-inf")
        self._drawn_done = -1  # `done` at the last draw, so that close() does not repeat a line
        self._lock = threading.Lock()  # the ticker thread and the run's thread both draw
        self._bar = None
        self._stop = threading.Event()
        self._thread = None
        if not enabled:
            return
        # tqdm puts ", " before the postfix (our figures).
        fmt = ("{desc}{percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} pages{postfix}" if self._tty
               else "{desc}pages {n_fmt}/{total_fmt} ({percentage:.0f}%){postfix}")
        # mininterval=inf: tqdm never draws on its own clock, `_draw` does on ours; a delay skips
        # tqdm's first draw, which would lack the figures. Into a file the last line is ours
        # (leave=False: tqdm's closing redraw would repeat it).
        self._bar = tqdm(total=total, file=self.stream if self._tty else _Lines(self.stream),
                         desc=prefix or None, bar_format=fmt, mininterval=float("inf"),
                         dynamic_ncols=self._tty, leave=self._tty, delay=1e-9)
        self._draw(self._clock())
        if ticker:
            self._thread = threading.Thread(target=self._tick_loop, name="deepseek-ocr-progress", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------------ events
    def update(self, *, status: str, tokens: int = 0) -> None:
        """Count one finished page.

        Args:
            status: "ok", "failed" or "skipped".
            tokens: output tokens the page produced (0 for skipped/failed).
        """
        with self._lock:
            self.done += 1
            if status == "ok":
                self.ok += 1
            elif status == "skipped":
                self.skipped += 1
            else:
                self.failed += 1
            self.tokens += tokens
            if self._bar is not None:
                self._bar.update(1)
            self._maybe_draw(force=self.done == self.total)

    @contextlib.contextmanager
    def batch(self, pages: int) -> Iterator[None]:
        """Around one forward of `pages` pages: the display shows it while it runs."""
        with self._lock:
            self._batch, self._steps = (pages, self._clock()), 0
            self._maybe_draw()
        try:
            yield
        finally:
            with self._lock:
                self._batch = None

    def step(self) -> None:
        """One decode step of the running batch ended."""
        with self._lock:
            self._steps += 1
            self._maybe_draw()

    def tick(self) -> None:
        """Redraw if the refresh interval has passed (what the ticker thread does)."""
        with self._lock:
            self._maybe_draw()

    # ----------------------------------------------------------------------- display
    def line(self, now: float | None = None) -> str:
        """The current figures (what follows the page count on the display)."""
        now = self._clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        rate = self.ok / elapsed  # finished pages only: skipped and failed ones cost ~nothing
        remaining = max(self.total - self.done, 0)
        eta = 0.0 if remaining == 0 else (remaining / rate if rate > 0 else None)
        parts = [f"{rate:.2f} pages/s", f"{self.tokens / elapsed:.1f} tok/s",
                 f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta)}"]
        if self.failed:
            parts.append(f"failed {self.failed}")
        if self.skipped:
            parts.append(f"skipped {self.skipped}")
        if self._batch is not None:
            pages, since = self._batch
            parts.append(f"batch of {pages}: step {self._steps}, {_clock(now - since)}")
        return "  ".join(parts)

    def _maybe_draw(self, force: bool = False) -> None:
        now = self._clock()
        if force or now - self._last_draw >= self.interval:
            self._draw(now)

    def _draw(self, now: float) -> None:
        if self._bar is None:
            return
        self._bar.set_postfix_str(self.line(now), refresh=False)
        self._bar.refresh()
        self._last_draw = now
        self._drawn_done = self.done

    def _tick_loop(self) -> None:
        while not self._stop.wait(min(self.interval, 1.0)):
            self.tick()

    def close(self) -> None:
        """Stop the timer, draw the final state and end the display."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._bar is None:
                return
            if self._tty:
                self._bar.set_postfix_str(self.line(), refresh=False)  # tqdm's close draws it
            elif self._drawn_done != self.done:
                self._draw(self._clock())
            bar, self._bar = self._bar, None
            bar.close()
