"""Training progress as one readable line on a time interval (the Ray Train worker of rank 0
prints it; under a Ray job it lands in the job's log, hence in the KFP step's log).

A line is printed at the first update, then at most every ``every_s`` seconds, and always at
the last step::

    train progress: step 40/200 (20%), 1.85 steps/s, ETA 0:01:26

The rate is measured since the first update of this process (a resumed run counts only the
steps it made itself).

>>> import io
>>> t = iter([0.0, 5.0, 12.0, 20.0])
>>> p = Progress(100, every_s=10, out=io.StringIO(), clock=lambda: next(t))
>>> [p.update(s) for s in (10, 20, 34, 100)]  # doctest: +NORMALIZE_WHITESPACE
['train progress: step 10/100 (10%)', None,
 'train progress: step 34/100 (34%), 2.00 steps/s, ETA 0:00:33',
 'train progress: step 100/100 (100%), 4.50 steps/s, ETA 0:00:00']
"""

from __future__ import annotations

import datetime
import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["PROGRESS_EVERY_S", "Progress"]

#: Seconds between two progress lines.
PROGRESS_EVERY_S = 10.0


class Progress:
    """Progress lines ``step/total``, steps/s and ETA for a run of ``total`` steps, written
    to ``out`` (default stdout) at most every ``every_s`` seconds (see the module doc)."""

    def __init__(self, total: int, *, every_s: float = PROGRESS_EVERY_S, label: str = "train",
                 out: TextIO | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if total < 1:
            raise ValueError(f"total: expected >= 1 step, got {total}")
        self.total, self.every_s, self.label = int(total), float(every_s), label
        self.out, self.clock = out, clock
        self.first: tuple[int, float] | None = None  # (step, time) of the first update
        self.last_t: float | None = None              # time of the last line

    def line(self, step: int, now: float) -> str:
        """The progress line for ``step`` at time ``now`` (no rate before two updates)."""
        text = f"{self.label} progress: step {step}/{self.total} ({100 * step // self.total}%)"
        if self.first is None or now <= self.first[1] or step <= self.first[0]:
            return text
        rate = (step - self.first[0]) / (now - self.first[1])
        eta = datetime.timedelta(seconds=round(max(self.total - step, 0) / rate))
        return f"{text}, {rate:.2f} steps/s, ETA {eta}"

    def update(self, step: int) -> str | None:
        """Record that ``step`` is done; returns the line written, or None when it is not
        yet time for one."""
        now = self.clock()
        due = (self.last_t is None or now - self.last_t >= self.every_s or step >= self.total)
        if self.first is None:
            self.first = (step, now)
        if not due:
            return None
        text = self.line(step, now)
        out = self.out or sys.stdout
        out.write(text + "\n")
        out.flush()
        self.last_t = now
        return text
