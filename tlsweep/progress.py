"""Progress of long work: a bar with its rate and the time left on a terminal, plain lines in a log.

Rich (which Keras installs) draws the bar when the output is a terminal; anywhere else (a log
file, a batch job, a pipe) a plain line says how far the work is every ``every`` seconds.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """Seconds as a person reads them: ``45 s``, ``3m 10s``, ``1h 02m``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def count(n: Any, noun: str) -> str:
    """``1 trial``, ``2 trials``: a number and its noun, as a person writes them."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class Progress:
    """``total`` units of work called ``what``; ``advance`` as they are done, ``close`` at the end."""

    def __init__(self, what: str, total: int, unit: str = "images", every: float = 30.0) -> None:
        self.what, self.total, self.unit, self.every = what, max(total, 1), unit, every
        self.done = 0
        self.started = self._said = time.monotonic()
        self._bar: Any = None
        if sys.stdout.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

            self._bar = self._make_bar(BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn)

    def _make_bar(self, *columns: Any) -> Any:
        from rich.progress import Progress as Bar

        bar_column, count, text, remaining = columns
        bar = Bar(text("{task.description}"), bar_column(), count(), text(f"{self.unit}"),
                  text("{task.fields[rate]}"), remaining(), transient=True)  # fmt: skip
        bar.start()
        self._task = bar.add_task(self.what, total=self.total, rate="")
        return bar

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        rate = self.done / max(now - self.started, 1e-9)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, rate=f"{rate:.0f} {self.unit}/s")
        elif now - self._said >= self.every and self.done < self.total:
            self._said = now
            left = (self.total - self.done) / max(rate, 1e-9)
            log.info("%s: %d of %d %s (%d%%), %.0f %s/s, about %s left", self.what, self.done, self.total,
                     self.unit, 100 * self.done // self.total, rate, self.unit, duration(left))  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
