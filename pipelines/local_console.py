"""A quiet console for ``--local`` runs: kfp.local's output goes to one log file per step, the
terminal gets one line per step and a closing summary.

kfp.local writes everything of a run to ``sys.stdout`` (its own log lines, the executor-input
JSON, the step's streamed output) and its warnings through :mod:`warnings`. While
:func:`quiet_console` is active, ``sys.stdout`` is a :class:`StepConsole`: it follows kfp.local's
``Executing task '<name>'`` / ``Task '<name>' finished with status <S>`` lines, writes each
task's lines to ``<log_dir>/<nn>-<task>.log`` and prints, when the task ends, one line: the step,
its wall time and what it produced (read from the step's ``manifest.json``)::

    ingest        2s  12 subjects (12 with a lesion mask)
    preprocess   21s  12 subjects registered (12 accepted); split 8/2/2; 0 voxels outside the MR field of view
    train       171s  600 steps, 8 train subjects, val MAE 96.3 HU
    evaluate     25s  test MAE 128.7 HU (baseline 190.9), SSIM 0.80 (0.68); audit failed; 2 figures
    register      3s  medgan-sct version 1, promoted to champion

A failed task prints its status and its last error line (kfp.local may retry it); the caller
prints the end of its log (:meth:`StepConsole.log_tail`) when the run fails. Everything is
restored on exit.

>>> import io
>>> out, logs = io.StringIO(), Path(tempfile.mkdtemp())
>>> con = StepConsole(logs, out)
>>> _ = con.write("12:00:00.0 - INFO - Executing task \\x1b[96m'ingest-op'\\x1b[0m\\nhello\\n")
>>> _ = con.write("12:00:01.0 - INFO - Task 'ingest-op' finished with status SUCCESS\\n" + "-" * 40 + "\\n")
>>> out.getvalue().split()[0], (logs / "01-ingest.log").read_text().splitlines()[1]
('ingest', 'hello')
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

__all__ = ["StepConsole", "StepResult", "quiet_console", "step_summary", "run_summary"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_OUTPUT = re.compile(r"^\s+Output: '(.*)'\s*$")
_RULE = re.compile(r"^-{20,}\s*$")
#: Lines of a failed step's log shown on the console.
FAILED_TAIL = 25


@dataclass
class StepResult:
    """One finished task of a local run: its KFP task name, step name, status, seconds, the
    task's ``Output`` value (a URI or JSON text) and its log file."""

    task: str
    step: str
    status: str = "RUNNING"
    seconds: float = 0.0
    output: str | None = None
    log: Path | None = None
    started: float = field(default_factory=time.perf_counter)


def _step_name(task: str) -> str:
    """``'train-op-2'`` -> ``'train'``."""
    return re.sub(r"-op(-\d+)?$", "", task)


class StepConsole(io.TextIOBase):
    """A write-only text stream standing in for ``sys.stdout`` during a kfp.local run (see the
    module docstring). ``results`` lists the finished tasks in order."""

    def __init__(self, log_dir: Path, console: TextIO) -> None:
        self.log_dir, self.console = Path(log_dir), console
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.results: list[StepResult] = []
        self._pending = ""
        self._current: StepResult | None = None
        self._file: TextIO | None = None
        self._run_log = open(self.log_dir / "00-run.log", "a", encoding="utf-8")  # noqa: SIM115

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._line(line)
        return len(text)

    def flush(self) -> None:
        for f in (self._file, self._run_log):
            if f is not None and not f.closed:
                f.flush()

    def close(self) -> None:
        if self._pending:
            self._line(self._pending)
            self._pending = ""
        self._finish()
        self._run_log.close()
        super().close()

    def warn(self, message: str) -> None:
        """A warning raised during the run: into the current step's log (or the run's)."""
        (self._file or self._run_log).write(f"WARNING {message.rstrip()}\n")

    # -- the parser ---------------------------------------------------------------------------
    def _line(self, raw: str) -> None:
        line = _ANSI.sub("", raw)
        start = _START.search(line)
        if start:
            self._finish()
            task = start.group(1)
            n = len(self.results) + 1
            self._current = StepResult(task, _step_name(task),
                                       log=self.log_dir / f"{n:02d}-{_step_name(task)}.log")
            self._file = open(self._current.log, "w", encoding="utf-8")  # noqa: SIM115
        (self._file or self._run_log).write(line + "\n")
        cur = self._current
        if cur is None:
            return
        end = _END.search(line)
        if end and end.group(1) == cur.task:
            cur.status, cur.seconds = end.group(2), time.perf_counter() - cur.started
            return
        out = _OUTPUT.match(line)
        if out and cur.status != "RUNNING":
            cur.output = out.group(1)
        elif _RULE.match(line) and cur.status != "RUNNING":
            self._finish()

    def _finish(self) -> None:
        cur, self._current = self._current, None
        if cur is None:
            return
        if self._file is not None:
            self._file.close()
            self._file = None
        if cur.status == "RUNNING":  # the run stopped inside the task
            cur.status, cur.seconds = "FAILURE", time.perf_counter() - cur.started
        self.results.append(cur)
        if cur.status == "SUCCESS":
            self.console.write(f"{cur.step:<11}{cur.seconds:5.0f}s  {step_summary(cur)}\n")
        else:  # kfp.local retries a task that has retries left: one line now, the tail at the end
            reason = next((t.strip() for t in reversed(self.log_tail(cur, FAILED_TAIL))
                           if t.strip() and "finished with status" not in t and not _RULE.match(t)), "")
            self.console.write(f"{cur.step:<11}{cur.seconds:5.0f}s  {cur.status}: {reason[:160]}; "
                               f"log: {cur.log}\n")
        self.console.flush()

    @staticmethod
    def log_tail(res: StepResult, n: int = FAILED_TAIL) -> list[str]:
        """The last ``n`` lines of a task's log file."""
        if res.log is None or not res.log.is_file():
            return []
        return res.log.read_text(encoding="utf-8").splitlines()[-n:]


# --------------------------------------------------------------------------- what a step did


def _manifest(uri: str | None) -> dict[str, Any]:
    """The ``manifest.json`` of a local step output folder (empty when there is none)."""
    if not uri or "://" in uri:
        return {}
    path = Path(uri) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _num(x: Any, fmt: str = ".1f") -> str:
    return format(x, fmt) if isinstance(x, (int, float)) and not isinstance(x, bool) else "?"


def step_summary(res: StepResult) -> str:
    """What one finished step produced, in a few words, from its manifest (or, for register,
    its JSON output); the output itself when the step is not one this module knows."""
    if res.step == "register":
        try:
            reg = json.loads(res.output or "")
        except ValueError:
            return str(res.output)
        verdict = "promoted to champion" if reg.get("promoted") else f"not promoted ({reg.get('reason')})"
        return f"{reg.get('model_name')} version {reg.get('version')}, {verdict}"
    m = _manifest(res.output if res.step != "tune" else str(Path(res.output or "").parent))
    c = m.get("counts") or {}
    if res.step == "ingest":
        return f"{c.get('subjects')} subjects ({c.get('with_lesion', 0)} with a lesion mask)"
    if res.step == "preprocess":
        return (f"{c.get('subjects')} subjects registered ({c.get('registration_accepted')} "
                f"accepted); split {c.get('train')}/{c.get('val')}/{c.get('test')}; "
                f"{c.get('outside_fov_voxels', 0)} body voxels outside the MR field of view "
                "left out")
    if res.step == "train":
        mr, ct = c.get("unpaired_mr_subjects"), c.get("unpaired_ct_subjects")
        subjects = (f"unpaired: MR of {mr} and CT of {ct} other train subjects" if mr
                    else f"{c.get('train_subjects')} train subjects")
        return f"{m.get('steps')} steps, {subjects}, val MAE {_num(m.get('val_mae'))}"
    if res.step == "evaluate":
        out = m.get("outputs") or {}
        agg, unit = out.get("aggregate") or {}, out.get("unit") or ""
        model, base = agg.get("model") or {}, agg.get("baseline") or {}
        parts = []
        for key, label in (("mae", "MAE"), ("nmse", "NMSE"), ("ssim", "SSIM"), ("fid", "FD")):
            if key in model:
                fmt = ".1f" if key in ("mae", "fid") else ".3f"
                u = f" {unit}" if key == "mae" and unit else ""
                b = f" (baseline {_num(base.get(key), fmt)})" if key in base else ""
                parts.append(f"{label} {_num(model[key], fmt)}{u}{b}")
        audit = "passed" if out.get("audit_passed") else "failed"
        return (f"{m.get('params', {}).get('split', 'test')} " + ", ".join(parts)
                + f"; audit {audit}; {c.get('figures', 0)} figures")
    return str(res.output)


def _mlflow_command(tracking_uri: str) -> str:
    """An ``mlflow ui`` command that runs as printed: this Python's own ``mlflow`` script."""
    exe = Path(sys.executable).parent / "mlflow"
    return f"{exe if exe.exists() else 'mlflow'} ui --backend-store-uri {tracking_uri}"


def run_summary(results: list[StepResult], tracking_uri: str, log_dir: Path,
                seconds: float) -> str:
    """The closing lines of a successful local run: where the model, metrics and figures are,
    the logs, and the command that browses the MLflow store."""
    by_step = {r.step: r for r in results}
    lines = [f"pipeline finished in {seconds:.0f}s"]
    train = by_step.get("train")
    if train and train.output:
        lines.append(f"  model:    {Path(train.output) / 'model.pt'}")
    ev = by_step.get("evaluate")
    if ev and ev.output:
        lines.append(f"  metrics:  {Path(ev.output) / 'metrics.json'}")
        lines.append(f"  figures:  {Path(ev.output) / 'figures'}")
    if "register" in by_step:
        lines.append(f"  registry: {step_summary(by_step['register'])}")
    lines.append(f"  logs:     {log_dir}")
    lines.append(f"  browse:   {_mlflow_command(tracking_uri)}")
    return "\n".join(lines)


@contextlib.contextmanager
def quiet_console(log_dir: str | Path) -> Iterator[StepConsole]:
    """Route ``sys.stdout`` and warnings to per-step log files under ``log_dir`` for the
    duration; one line per step reaches the real ``sys.stdout``. Restores both on exit."""
    console = sys.stdout
    con = StepConsole(Path(log_dir), console)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda msg, cat, fname, lineno, file=None, line=None: con.warn(
            f"{fname}:{lineno}: {cat.__name__}: {msg}")
        sys.stdout = con
        try:
            yield con
        finally:
            sys.stdout = console
            con.close()
