"""Progress of a long loop: a bar on a terminal, periodic log lines (count, rate, ETA) everywhere else.

A run without a terminal (a log file, CI, a cluster job) gets an INFO line at most every ``interval`` seconds and
one at the end, so a long calibration is never silent in its logs.
"""
from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("fcnquant.progress")

#: seconds between two log lines when stderr is not a terminal
LOG_INTERVAL_S = 10.0


def _eta(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class Progress:
    """Counts done images out of ``total``: ``update(n)`` after each batch, ``close()`` at the end.

    ``enabled=False`` shows nothing. On a terminal a tqdm bar (``desc``, removed when done unless ``leave``);
    otherwise log lines. Also a context manager.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True, leave: bool = False, unit: str = "img",
                 interval: float = LOG_INTERVAL_S) -> None:
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = 0
        self.interval = interval
        self._bar = None
        self._logging = False
        self._t0 = time.perf_counter()
        self._last = self._t0
        if not enabled:
            return
        if sys.stderr is not None and hasattr(sys.stderr, "isatty") and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, unit=unit, leave=leave)
        else:
            self._logging = True

    def update(self, n: int) -> None:
        """Adds ``n`` done items."""
        self.set(self.n + n)

    def set(self, n: int) -> None:
        """Sets the done count to ``n`` (a cluster's progress, polled)."""
        n = min(int(n), self.total) if self.total else int(n)
        if n == self.n:
            return
        if self._bar is not None:
            self._bar.update(n - self.n)
        self.n = n
        if self._logging:
            now = time.perf_counter()
            if now - self._last >= self.interval and self.n < self.total:
                self._last = now
                self._line(now)

    def _line(self, now: float, final: bool = False) -> None:
        elapsed = now - self._t0
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if final:
            log.info("%s: %d/%d %s in %.1f s (%.2f %s/s)", self.desc, self.n, self.total, self.unit, elapsed, rate,
                     self.unit)
            return
        left = (self.total - self.n) / rate if rate > 0 else float("nan")
        eta = _eta(left) if left == left else "?"
        log.info("%s: %d/%d %s, %.2f %s/s, about %s left", self.desc, self.n, self.total, self.unit, rate,
                 self.unit, eta)

    def close(self) -> None:
        """Ends the display (a last log line when logging and something was done)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        if self._logging and self.n:
            self._logging = False
            now = time.perf_counter()
            if now - self._t0 >= self.interval:
                self._line(now, final=True)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
