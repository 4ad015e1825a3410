"""components.progress: the rank-0 training progress line (step/total, steps/s, ETA) on a time
interval, not one per report."""

import doctest
import io

import pytest

from components import progress
from components.progress import Progress


def test_module_examples():
    assert doctest.testmod(progress, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_lines_come_on_the_interval_and_at_the_end():
    now = [100.0]
    out = io.StringIO()
    p = Progress(1000, every_s=10, out=out, clock=lambda: now[0], label="pix2pix")
    printed = []
    for step in range(10, 1001, 10):  # a report every 10 steps, 1 s apart: 100 reports
        now[0] += 1.0
        printed.append(p.update(step))
    lines = out.getvalue().splitlines()
    assert lines == [x for x in printed if x] and len(lines) == 11  # t = 101, 111, ..., 191, 200
    assert lines[0] == "pix2pix progress: step 10/1000 (1%)"
    # 10 steps per second, measured from the first update
    assert lines[1] == "pix2pix progress: step 110/1000 (11%), 10.00 steps/s, ETA 0:01:29"
    assert lines[-1] == "pix2pix progress: step 1000/1000 (100%), 10.00 steps/s, ETA 0:00:00"


def test_bad_total_is_named():
    with pytest.raises(ValueError, match="total: expected >= 1 step, got 0"):
        Progress(0)
