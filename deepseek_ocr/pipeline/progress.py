"""A progress line on stderr: pages done/total, pages/s, output tokens/s, ETA.

On a terminal it redraws one line (carriage return, at most a few times a second); into a file
or pipe (CI logs, `nohup`) it writes a plain line every `interval` seconds instead, since
carriage returns there make one unreadable line. Standard library only.
"""
from __future__ import annotations

import sys
import time
from typing import TextIO

_TTY_REFRESH_S = 0.2  # redraw limit on a terminal: faster is flicker, not information


def _clock(seconds: float | None) -> str:
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class ProgressReporter:
    """Counts pages and tokens and reports them.

    Args:
        total: pages expected (skipped pages included; they count as done but not in the rates).
        stream: where to write (default sys.stderr).
        enabled: False makes every method a no-op (`--quiet`, non-zero ranks).
        interval: seconds between plain lines when `stream` is not a terminal.
        prefix: text before the figures (e.g. "[rank 1/2] ").
        clock: time source (for tests).
    """

    def __init__(self, total: int, *, stream: TextIO | None = None, enabled: bool = True,
                 interval: float = 10.0, prefix: str = "", clock=time.monotonic):
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.interval = interval
        self.prefix = prefix
        self._clock = clock
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = clock()
        self._last_draw = float("-inf")
        self._drawn_done = -1  # `done` at the last draw, so close() does not repeat a line
        self._width = 0
        self.done = self.ok = self.failed = self.skipped = 0
        self.tokens = 0

    def update(self, *, status: str, tokens: int = 0) -> None:
        """Count one page.

        Args:
            status: "ok", "failed" or "skipped".
            tokens: output tokens the page produced (0 for skipped/failed).
        """
        self.done += 1
        if status == "ok":
            self.ok += 1
        elif status == "skipped":
            self.skipped += 1
        else:
            self.failed += 1
        self.tokens += tokens
        if not self.enabled:
            return
        now = self._clock()
        wait = _TTY_REFRESH_S if self._tty else self.interval
        if now - self._last_draw >= wait or self.done == self.total:
            self._draw(now)

    def line(self, now: float | None = None) -> str:
        """The current figures as one line."""
        now = self._clock() if now is None else now
        elapsed = max(now - self.start, 1e-9)
        worked = self.done - self.skipped  # pages that cost model time
        rate = worked / elapsed
        remaining = max(self.total - self.done, 0)
        eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
        pct = 100.0 * self.done / self.total if self.total else 100.0
        parts = [f"{self.prefix}pages {self.done}/{self.total} ({pct:.0f}%)",
                 f"{rate:.2f} pages/s", f"{self.tokens / elapsed:.1f} tok/s",
                 f"elapsed {_clock(elapsed)}", f"ETA {_clock(eta)}"]
        if self.failed:
            parts.append(f"failed {self.failed}")
        if self.skipped:
            parts.append(f"skipped {self.skipped}")
        return "  ".join(parts)

    def _draw(self, now: float) -> None:
        text = self.line(now)
        if self._tty:
            pad = " " * max(self._width - len(text), 0)  # wipe the rest of a longer old line
            self.stream.write("\r" + text + pad)
            self._width = len(text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
        self._last_draw = now
        self._drawn_done = self.done

    def close(self) -> None:
        """Draw the final state and end the terminal line."""
        if not self.enabled:
            return
        if self._drawn_done != self.done:
            self._draw(self._clock())
        if self._tty:
            self.stream.write("\n")
            self.stream.flush()
