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
import os
import time
from collections.abc import Iterator
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


def log_metrics(tracking_uri: str, run_id: str, metrics: dict[str, float],
                step: int | None = None) -> None:
    """Log numeric ``metrics`` at ``step`` (non-finite and non-numeric values are skipped)."""
    import math

    from mlflow.entities import Metric

    ts = int(time.time() * 1000)
    items = []
    for k, v in metrics.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        items.append(Metric(k, float(v), ts, int(step or 0)))
    if items:
        client(tracking_uri).log_batch(run_id, metrics=items)


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
