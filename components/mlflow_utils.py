"""Small MLflow helpers shared by the pipeline steps (train, tune, evaluate, register).

* The tracking URI comes from the step's ``--tracking-uri`` argument or ``MLFLOW_TRACKING_URI``;
  components never choose a default store (the pipeline does, e.g. ``sqlite:///<work>/mlflow.db``).
* Credentials are never passed around: an MLflow server's ``MLFLOW_TRACKING_USERNAME`` /
  ``MLFLOW_TRACKING_PASSWORD`` (or token) are read by MLflow itself from the environment of each
  process that talks to it (driver and Ray workers). URIs are redacted (``user:pass@`` dropped)
  before they are recorded in a manifest or a log line.
* Runs are handled through :class:`mlflow.MlflowClient` with explicit run ids, so a driver, its
  Ray workers and Tune trial drivers can all write to one run without the fluent API's global
  "active run" state.

A step opens its run with :func:`tracked_run` (ended FINISHED, or FAILED when the block raises).

During training, :class:`AsyncLogger` keeps MLflow off the loop's critical path: the loop only
enqueues metrics (and figure tasks); one background thread sends them, batched, in order, and
``close()`` flushes them all and raises :class:`LoggingError` if any could not be logged.

Example:
    >>> import tempfile
    >>> from gan_core.presets import preset
    >>> uri = f"sqlite:///{tempfile.mkdtemp()}/mlflow.db"
    >>> run_id = create_run(uri, "medgan-doc", run_name="demo")          # doctest: +SKIP
    >>> log_config(uri, run_id, preset("tiny", "pix2pix"))               # doctest: +SKIP
    >>> redact_uri("https://alice:s3cret@mlflow.example.org/")
    'https://mlflow.example.org/'
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from gan_core.config import TrainConfig

__all__ = [
    "TRACKING_ENV",
    "PARENT_TAG",
    "COMMIT_TAG",
    "resolve_tracking_uri",
    "redact_uri",
    "client",
    "ensure_experiment",
    "create_run",
    "log_config",
    "log_metrics",
    "LoggingError",
    "AsyncLogger",
    "end_run",
    "tracked_run",
]

log = logging.getLogger(__name__)

#: Environment variable MLflow (and these helpers) read the tracking URI from.
TRACKING_ENV = "MLFLOW_TRACKING_URI"
#: Tag that makes a run a child ("nested run") of another in the MLflow UI.
PARENT_TAG = "mlflow.parentRunId"
#: Tag of every run: the git commit of the code that ran (components.step.code_info).
COMMIT_TAG = "medgan.git_commit"
#: MLflow's limit on a param value's length.
_MAX_PARAM = 6000


def resolve_tracking_uri(arg: str | None = None) -> str | None:
    """The tracking URI to use: ``arg`` if given, else ``$MLFLOW_TRACKING_URI``, else ``None``.

    ``None`` means "no MLflow logging" for the steps that treat MLflow as optional.

    >>> resolve_tracking_uri("sqlite:////tmp/m.db")
    'sqlite:////tmp/m.db'
    """
    uri = arg or os.environ.get(TRACKING_ENV) or None
    return uri.strip() if uri else None


def redact_uri(uri: str | None) -> str | None:
    """Drop ``user:password@`` from a URI before it is recorded anywhere.

    >>> redact_uri("http://u:p@mlflow:5000"), redact_uri("sqlite:////tmp/m.db")
    ('http://mlflow:5000', 'sqlite:////tmp/m.db')
    """
    if not uri:
        return uri
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def client(tracking_uri: str) -> "MlflowClient":
    """An :class:`mlflow.MlflowClient` bound to ``tracking_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _default_artifact_location(tracking_uri: str, name: str) -> str | None:
    """For a local ``sqlite:///path/mlflow.db`` store: ``<path>/mlartifacts/<name>``.

    MLflow's own default (``./mlruns`` of whatever process creates the experiment) would land in
    the current directory, e.g. inside the source tree or a Ray worker's session folder.
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    db = Path(tracking_uri[len(prefix):])
    if not db.is_absolute():
        db = Path.cwd() / db
    return (db.parent / "mlartifacts" / name).as_uri()


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Id of experiment ``name``, created if missing (safe against concurrent creation).

    >>> import tempfile
    >>> ensure_experiment(f"sqlite:///{tempfile.mkdtemp()}/m.db", "x")   # doctest: +SKIP
    '1'
    """
    from mlflow.exceptions import MlflowException

    if not name:
        raise ValueError("MLflow experiment name must not be empty")
    c = client(tracking_uri)
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return c.create_experiment(name, artifact_location=_default_artifact_location(tracking_uri, name))
    except MlflowException:  # created meanwhile by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def create_run(tracking_uri: str, experiment: str, *, run_name: str | None = None,
               parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> str:
    """Create a run (a child of ``parent_run_id`` when given) and return its id.

    The run stays RUNNING until :func:`end_run`; workers attach to it by id. Every run carries
    the code's git commit (tag ``medgan.git_commit``: ``$MEDGAN_GIT_COMMIT``, baked into the image).
    """
    from components.step import code_info

    exp_id = ensure_experiment(tracking_uri, experiment)
    all_tags = {COMMIT_TAG: code_info()["git_commit"] or "unknown", **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_TAG] = parent_run_id
    run = client(tracking_uri).create_run(exp_id, run_name=run_name, tags=all_tags)
    return run.info.run_id


def _param_value(v: Any) -> str:
    s = str(v)
    return s if len(s) <= _MAX_PARAM else s[: _MAX_PARAM - 3] + "..."


def log_config(tracking_uri: str, run_id: str, cfg: "TrainConfig",
               extra: dict[str, Any] | None = None) -> None:
    """Log ``cfg.flat()`` (dotted keys, e.g. ``loss.image``) plus ``extra`` as params of a run."""
    from mlflow.entities import Param

    params = {**cfg.flat(), **(extra or {})}
    items = [Param(k, _param_value(v)) for k, v in sorted(params.items())]
    c = client(tracking_uri)
    for i in range(0, len(items), 100):  # MLflow's batch limit for params
        c.log_batch(run_id, params=items[i:i + 100])


def _metric_items(metrics: dict[str, float], step: int | None, ts_ms: int) -> list[Any]:
    """``metrics`` as MLflow ``Metric`` entities (non-finite and non-numeric values skipped)."""
    from mlflow.entities import Metric

    return [Metric(k, float(v), ts_ms, int(step or 0)) for k, v in metrics.items()
            if not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)]


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float],
                step: int | None = None) -> None:
    """Log numeric ``metrics`` at ``step`` (non-finite and non-numeric values are skipped)."""
    items = _metric_items(metrics, step, int(time.time() * 1000))
    if items:
        client(tracking_uri).log_batch(run_id, metrics=items)


class LoggingError(RuntimeError):
    """Raised by :meth:`AsyncLogger.close` when metrics could not be logged to MLflow."""


#: MLflow's limit on metrics per ``log_batch`` request.
_MAX_BATCH_METRICS = 1000
_STOP = object()


class AsyncLogger:
    """Logs one MLflow run's metrics (and artifact tasks) from a background thread.

    * :meth:`log_metrics` only enqueues (stamped with the time of the call, MLflow's timestamp);
      the thread sends everything that has accumulated in one ``MlflowClient.log_batch``
      (<= 1000 metrics a request), in the order enqueued.
    * :meth:`submit` queues ``fn(client, run_id)`` (e.g. draw a figure and ``log_artifact`` it),
      run on the thread in order with the metrics. A task's failure is logged as a warning and
      does not fail the logger (a figure must never stop training); ``required=True`` makes it
      count like a metric batch.
    * The queue holds at most ``max_pending`` items: when MLflow is slower than training the
      loop waits (back-pressure) instead of dropping metrics or growing without bound.
    * The first failed metric batch is logged once, with its traceback; after it nothing more is
      sent (MLflow's client has already retried the request), what is left is counted, and
      :meth:`close` raises :class:`LoggingError` naming the first error and that count.
    * :meth:`flush` waits until everything enqueued so far is done; :meth:`close` flushes, stops
      and joins the thread (also as a context manager: on an exception in the block it still
      flushes but only logs its own error, the block's exception propagates).

    >>> with AsyncLogger("sqlite:////tmp/m.db", run_id) as ml:          # doctest: +SKIP
    ...     ml.log_metrics({"G": 0.5}, step=10)
    """

    def __init__(self, tracking_uri: str, run_id: str, *, max_pending: int = 256,
                 client_factory: Callable[[str], "MlflowClient"] | None = None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending: expected >= 1, got {max_pending}")
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self._client_factory = client_factory or client
        self._q: queue.Queue[Any] = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None  # the first failure (metric batch / required task)
        self.dropped = 0                          # items not logged because of it
        self.sent = 0                             # metric values logged
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"mlflow-logger-{run_id[:8]}",
                                        daemon=True)
        self._thread.start()

    # -- producer side (the training loop) ------------------------------------------------------
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Enqueue ``metrics`` at ``step`` (waits only while ``max_pending`` items are queued)."""
        self._put(("metrics", dict(metrics), step, int(time.time() * 1000)))

    def submit(self, fn: Callable[["MlflowClient", str], Any], what: str = "task",
               required: bool = False) -> None:
        """Enqueue ``fn(client, run_id)``, run on the logger's thread after what is queued."""
        self._put(("task", fn, what, required))

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything enqueued so far is done; False if ``timeout`` passed first."""
        done = threading.Event()
        self._put(("flush", done))
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done.wait(0.5):
            if not self._thread.is_alive():
                raise LoggingError(f"MLflow logger thread of run {self.run_id} is not running")
            if deadline is not None and time.monotonic() > deadline:
                return False
        return True

    def close(self, raise_errors: bool = True) -> None:
        """Flush, stop and join the thread (idempotent); raise :class:`LoggingError` if metrics
        were lost and ``raise_errors`` (else only log it)."""
        if not self._closed:
            self._closed = True
            if self._thread.is_alive():
                self._q.put(_STOP)
                self._thread.join()
        if self.error is not None:
            msg = (f"MLflow logging to run {self.run_id} at {redact_uri(self.tracking_uri)} failed: "
                   f"{type(self.error).__name__}: {self.error}; {self.dropped} queued item(s) "
                   f"(metric sets / tasks) were not logged")
            if raise_errors:
                raise LoggingError(msg) from self.error
            log.error("%s", msg)

    def __enter__(self) -> "AsyncLogger":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.close(raise_errors=exc_type is None)

    def _put(self, item: Any) -> None:
        if self._closed:
            raise RuntimeError(f"MLflow logger of run {self.run_id} is closed")
        self._q.put(item)

    # -- the thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        c: Any = None
        while True:
            items = [self._q.get()]
            while True:  # everything that accumulated meanwhile goes in one pass
                try:
                    items.append(self._q.get_nowait())
                except queue.Empty:
                    break
            try:
                c = self._process(c, items)
            except Exception as e:  # noqa: BLE001 - a bug here must not hang the producer
                self._fail(e, "queued items", len(items))
                for item in items:
                    if item is not _STOP and item[0] == "flush":
                        item[1].set()
            if any(item is _STOP for item in items):
                return

    def _process(self, c: Any, items: list[Any]) -> Any:
        pending: list[Any] = []  # Metric entities not yet sent, in order
        n_sets = 0
        for item in items:
            if item is _STOP:
                continue
            kind = item[0]
            if kind == "metrics":
                pending += _metric_items(item[1], item[2], item[3])
                n_sets += 1
                continue
            c = self._send(c, pending, n_sets)  # keep the order: metrics before the task
            pending, n_sets = [], 0
            if kind == "flush":
                item[1].set()
            elif kind == "task":
                c = self._task(c, item[1], item[2], item[3])
        return self._send(c, pending, n_sets)

    def _client(self, c: Any) -> Any:
        return c if c is not None else self._client_factory(self.tracking_uri)

    def _fail(self, e: BaseException, what: str, n: int) -> None:
        self.error = e
        self.dropped += n
        log.error("MLflow logging of %s to run %s failed; this logger sends nothing more and "
                  "raises when training ends: %s", what, self.run_id, e, exc_info=e)

    def _send(self, c: Any, items: list[Any], n_sets: int) -> Any:
        if not n_sets:
            return c
        if self.error is not None:
            self.dropped += n_sets
            return c
        try:
            c = self._client(c)
            for i in range(0, len(items), _MAX_BATCH_METRICS):
                c.log_batch(self.run_id, metrics=items[i:i + _MAX_BATCH_METRICS])
            self.sent += len(items)
        except Exception as e:  # noqa: BLE001 - kept and raised by close()
            self._fail(e, f"{len(items)} metric value(s)", n_sets)
        return c

    def _task(self, c: Any, fn: Callable[[Any, str], Any], what: str, required: bool) -> Any:
        if self.error is not None:
            self.dropped += 1
            return c
        try:
            c = self._client(c)
            fn(c, self.run_id)
        except Exception as e:  # noqa: BLE001 - a figure must never stop training
            if required:
                self._fail(e, what, 1)
            else:
                log.warning("MLflow %s for run %s failed: %s", what, self.run_id, e)
        return c


def end_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run FINISHED / FAILED / KILLED."""
    client(tracking_uri).set_terminated(run_id, status=status)


@contextlib.contextmanager
def tracked_run(tracking_uri: str | None, experiment: str, *, run_name: str | None = None,
                parent_run_id: str | None = None, tags: dict[str, str] | None = None,
                config: "TrainConfig | None" = None,
                params: dict[str, Any] | None = None) -> Iterator[str | None]:
    """Create a run, yield its id, end it FINISHED, or FAILED if the block raises (re-raised).

    ``tracking_uri=None`` means no MLflow logging: yields None. ``config`` / ``params`` are
    logged as the run's params (:func:`log_config`).

    >>> with tracked_run(None, "medgan") as run_id:
    ...     print(run_id)
    None
    """
    if not tracking_uri:
        log.info("no MLflow tracking URI (argument or %s): not logging to MLflow", TRACKING_ENV)
        yield None
        return
    run_id = create_run(tracking_uri, experiment, run_name=run_name, parent_run_id=parent_run_id,
                        tags=tags)
    try:
        if config is not None:
            log_config(tracking_uri, run_id, config, params)
        yield run_id
    except BaseException:
        with contextlib.suppress(Exception):
            end_run(tracking_uri, run_id, "FAILED")
        raise
    end_run(tracking_uri, run_id, "FINISHED")
