"""Where a Ray step (``train``, ``tune``) runs: in this process, as a Ray job, or as a RayJob.

The steps take two params, ``ray_address`` and ``launcher`` (:data:`LAUNCHERS`):

==========  =====================================================================================
``auto``    ``jobs`` when ``ray_address`` is a Jobs API URL (``http(s)://<head>:8265``), else
            ``local``
``local``   in-process Ray, as before: ``ray.init(ray_address or $RAY_ADDRESS or None)`` (a GCS
            address ``host:port``, or none: a Ray started in this process; laptop, kfp.local, CI)
``jobs``    the step submits ITSELF (``python -m components.<step> <same params> --ray-address
            auto --launcher local``: the job's ``ray.init("auto")`` joins its own cluster) to
            ``ray_address`` through ``ray.job_submission.JobSubmissionClient``; the job's logs are
            streamed to this process's stdout; the step waits, fails with the job's error, and
            returns the manifest the job wrote at ``output_uri`` (shared storage: S3). SIGTERM /
            SIGINT (a stopped KFP run) stop the job, then the step exits non-zero.
``rayjob``  the same command as the entrypoint of a KubeRay ``RayJob`` with an ephemeral
            RayCluster (:mod:`components.rayjob`), created through the Kubernetes API, waited
            for and deleted.
==========  =====================================================================================

The job's environment: the variables of :data:`PASS_ENV` (and every ``MEDGAN_*``) that are set
here travel in the job's ``runtime_env.env_vars`` (S3 and MLflow credentials, endpoint, region).
Only their NAMES are logged. Anyone who can read the Ray cluster's job API can read them: the
cluster is in the same trust domain as the pipeline. No ``working_dir`` is uploaded: the
cluster's image has the code (the same image as the step).

Example (what a KFP train step does when the pipeline's ``ray_address`` is set)::

    >>> from components.train import TrainParams
    >>> p = TrainParams("s3://b/prep", "s3://b/train", ray_address="http://head:8265")
    >>> resolve_launcher(p.launcher, p.ray_address)
    'jobs'
    >>> entrypoint("components.train", p)  # doctest: +ELLIPSIS
    'python -m components.train --data-uri s3://b/prep --output-uri s3://b/train ... --ray-address auto --launcher local'
    >>> manifest = launch("components.train", "train", p)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
import typing
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TextIO
from urllib.parse import urlsplit

from components import rayjob, storage
from components.search_space import format_space
from components.step import StepInputError, arg, read_manifest

__all__ = ["LAUNCHERS", "JOB_RAY_ADDRESS", "RayParams", "PASS_ENV", "PASS_PREFIXES", "SECRET_ENV", "JobFailed", "resolve_launcher",
           "check_launcher", "is_remote", "job_env", "job_params", "step_argv", "entrypoint",
           "submission_id", "launch", "run_job", "manifest_of", "on_stop_signal", "plain_env",
           "run_rayjob"]

log = logging.getLogger(__name__)

LAUNCHERS = ("auto", "local", "jobs", "rayjob")
#: Variables passed to the Ray job when set in the step's environment (values never logged).
PASS_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
            "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "MLFLOW_TRACKING_URI",
            "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN")
#: Prefixes of further variables passed to the job (``MEDGAN_GIT_COMMIT``, ``MEDGAN_FAULT_KILL``...).
PASS_PREFIXES = ("MEDGAN_",)
#: Credentials among :data:`PASS_ENV`: a RayJob gets them from Kubernetes Secrets, never inline.
SECRET_ENV = frozenset({"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
                        "MLFLOW_TRACKING_TOKEN"})
#: What the job's command line says for ``ray_address``: the job joins the cluster it runs on.
JOB_RAY_ADDRESS = "auto"


def _json_object(text: str | None) -> Any:
    return json.loads(text) if text else None


@dataclass(frozen=True, kw_only=True)
class RayParams:
    """The Ray fields of the train and tune steps' params (one CLI option each; keyword-only,
    so a step's own required fields stay positional), checked on construction.

    >>> from components.train import TrainParams
    >>> p = TrainParams("s3://b/prep", "s3://b/train", num_workers=4, use_gpu=True,
    ...                 ray_address="http://head:8265")
    >>> isinstance(p, RayParams), resolve_launcher(p.launcher, p.ray_address)
    (True, 'jobs')
    """

    num_workers: int = arg("Ray Train workers (tune: per trial)", default=1)
    use_gpu: bool = arg("one GPU per worker (NCCL)", default=False)
    resources_per_worker: dict[str, float] | None = arg(
        'JSON, e.g. \'{"CPU": 4, "GPU": 1}\'', default=None, convert=_json_object)
    ray_address: str | None = arg(
        "Ray Jobs API URL http(s)://<head>:8265 (the work runs as a Ray job there), or a GCS "
        "address host:port for in-process Ray (default $RAY_ADDRESS or a local Ray)", default=None)
    launcher: str = arg("auto (jobs for an http(s) ray_address, else local) | local | jobs | "
                        "rayjob (components.launch)", default="auto", choices=LAUNCHERS)

    def __post_init__(self) -> None:
        check_launcher(self.launcher, self.ray_address)
        if self.num_workers < 1:
            raise StepInputError(f"num_workers: expected >= 1, got {self.num_workers}")


class JobFailed(RuntimeError):
    """The Ray job (or RayJob) ended FAILED or STOPPED; the message carries the job's message."""


def _is_url(address: str | None) -> bool:
    return bool(address) and str(address).startswith(("http://", "https://"))


def resolve_launcher(launcher: str, ray_address: str | None) -> str:
    """The launcher that runs: ``auto`` becomes ``jobs`` for an ``http(s)://`` address, else
    ``local``.

    >>> [resolve_launcher("auto", a) for a in ("http://head:8265", "", "head:6379")]
    ['jobs', 'local', 'local']
    """
    if launcher not in LAUNCHERS:
        raise StepInputError(f"launcher: expected one of {list(LAUNCHERS)}, got {launcher!r}")
    if launcher != "auto":
        return launcher
    return "jobs" if _is_url(ray_address) else "local"


def check_launcher(launcher: str, ray_address: str | None) -> None:
    """Refuse combinations that cannot work, naming the param (called by the params classes).

    >>> check_launcher("local", "http://head:8265")
    Traceback (most recent call last):
    ...
    components.step.StepInputError: ray_address 'http://head:8265' is a Jobs API URL, which launcher 'local' cannot use (ray.init needs a GCS address host:port); use launcher 'auto' or 'jobs'
    """
    kind = resolve_launcher(launcher, ray_address)
    if kind == "local" and _is_url(ray_address):
        raise StepInputError(f"ray_address {ray_address!r} is a Jobs API URL, which launcher "
                             f"'local' cannot use (ray.init needs a GCS address host:port); use "
                             f"launcher 'auto' or 'jobs'")
    if kind == "jobs" and not _is_url(ray_address):
        raise StepInputError(f"launcher 'jobs': ray_address must be the head's Jobs API URL "
                             f"http(s)://<head>:8265, got {ray_address!r}")
    if kind == "rayjob" and ray_address:
        raise StepInputError(f"launcher 'rayjob' creates its own Ray cluster: ray_address must "
                             f"be empty, got {ray_address!r}")


def is_remote(launcher: str, ray_address: str | None) -> bool:
    """True when the step's work runs elsewhere (``jobs`` / ``rayjob``)."""
    return resolve_launcher(launcher, ray_address) != "local"


def job_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables of :data:`PASS_ENV` / :data:`PASS_PREFIXES` set (non-empty) in ``environ``.

    >>> sorted(job_env({"AWS_SECRET_ACCESS_KEY": "s", "MEDGAN_GIT_COMMIT": "abc", "HOME": "/h"}))
    ['AWS_SECRET_ACCESS_KEY', 'MEDGAN_GIT_COMMIT']
    """
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items()
            if v and (k in PASS_ENV or k.startswith(PASS_PREFIXES))}


def job_params(params: Any, environ: Mapping[str, str] | None = None) -> tuple[Any, dict[str, str]]:
    """``(params for the job's command line, the job's environment)``: an explicit
    ``tracking_uri`` travels as ``$MLFLOW_TRACKING_URI`` (the step reads the param first, then
    that variable: same run), so a URI carrying ``user:password@`` never reaches a command
    line, a log or the job's entrypoint.

    >>> from components.train import TrainParams
    >>> p, env = job_params(TrainParams("d", "o", tracking_uri="http://u:pw@mlflow"), {})
    >>> p.tracking_uri, env
    (None, {'MLFLOW_TRACKING_URI': 'http://u:pw@mlflow'})
    """
    env = job_env(environ)
    uri = getattr(params, "tracking_uri", None)
    if uri:
        env["MLFLOW_TRACKING_URI"] = uri
        params = dataclasses.replace(params, tracking_uri=None)
    return params, env


# --------------------------------------------------------------------------- the job's command


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _set_items(value: dict[str, Any]) -> list[str]:
    # parse_set reads each value as a YAML scalar: JSON is valid YAML
    return [f"{k}={json.dumps(v)}" for k, v in value.items()]


#: How a repeatable option's parsed value is written back as CLI items, by flag.
_APPEND_ENCODERS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "--set": _set_items, "--space": format_space}


def _absolute(name: str, value: Any) -> Any:
    """Local ``*_uri`` paths made absolute (the job's working directory is not ours)."""
    if (name.endswith("_uri") and name != "tracking_uri" and isinstance(value, str) and value
            and "://" not in value):
        return os.path.abspath(value)
    return value


def step_argv(params: Any) -> list[str]:
    """The CLI arguments that rebuild the params dataclass ``params`` in the job, with
    ``--ray-address auto --launcher local`` (the job joins the cluster it runs on, in-process).
    Every set value is written out (the RayJob entrypoint shows workers and GPUs); local
    ``*_uri`` paths become absolute; tuples are comma-separated; ``None`` for a field whose
    default is not ``None`` is written ``none`` (its ``parse`` must read that back).

    >>> from components.train import TrainParams
    >>> a = step_argv(TrainParams("d", "s3://b/o", num_workers=2, use_gpu=True,
    ...                           overrides={"loss.image": 50}, ray_address="http://h:8265"))
    >>> a[a.index("--num-workers") + 1], "--use-gpu" in a, a[a.index("--set") + 1], a[-4:]
    ('2', True, 'loss.image=50', ['--ray-address', 'auto', '--launcher', 'local'])
    """
    hints = typing.get_type_hints(type(params))
    ray_fields = {f.name for f in dataclasses.fields(RayParams)}
    out: list[str] = []
    # the step's own options first, its Ray options (RayParams: inherited, so first) last
    for f in sorted(dataclasses.fields(params), key=lambda f: f.name in ray_fields):
        if f.name in ("ray_address", "launcher"):
            continue
        value = _absolute(f.name, getattr(params, f.name))
        flag = _flag(f)
        if value is None:
            if f.default is not None:
                if not f.metadata.get("parse"):
                    raise TypeError(f"step_argv: {type(params).__name__}.{f.name} is None but "
                                    f"defaults to {f.default!r}, and {flag} has no parser for "
                                    f"'none'")
                out += [flag, "none"]
            continue
        if hints[f.name] is bool or (isinstance(value, bool) and not f.metadata.get("parse")):
            if value != f.default:
                out.append(flag)
            continue
        if f.metadata.get("append"):
            encode = _APPEND_ENCODERS.get(flag)
            if encode is None:
                raise TypeError(f"step_argv: no encoder for the repeatable option {flag} of "
                                f"{type(params).__name__}.{f.name}; add one to _APPEND_ENCODERS")
            for item in encode(value):
                out += [flag, item]
            continue
        if isinstance(value, tuple):
            out += [flag, ",".join(str(v) for v in value)]
            continue
        out += [flag, json.dumps(value) if isinstance(value, (dict, list)) else str(value)]
    return [*out, "--ray-address", JOB_RAY_ADDRESS, "--launcher", "local"]


def entrypoint(module: str, params: Any, python: str = "python") -> str:
    """The shell command the job runs: ``python -m <module> <step_argv(params)>``."""
    return shlex.join([python, "-m", module, *step_argv(params)])


def submission_id(step: str, output_uri: str) -> str:
    """A fresh, readable job id: ``medgan-<step>-<hash of output_uri>-<random>``.

    >>> submission_id("train", "s3://b/o").startswith("medgan-train-")
    True
    """
    digest = hashlib.sha256(str(output_uri).rstrip("/").encode()).hexdigest()[:8]
    return f"medgan-{step}-{digest}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- dispatch


def launch(module: str, step: str, params: Any, **kw: Any) -> dict[str, Any]:
    """Run the step ``module`` with ``params`` on the launcher they name (``jobs`` or
    ``rayjob``) and return the manifest it wrote at ``params.output_uri``. ``kw`` go to
    :func:`run_job` / :func:`run_rayjob`."""
    kind = resolve_launcher(params.launcher, params.ray_address)
    check_launcher(params.launcher, params.ray_address)
    if kind == "jobs":
        return run_job(params.ray_address, module, step, params, **kw)
    if kind == "rayjob":
        return run_rayjob(module, step, params, **kw)
    raise ValueError(f"launch(): launcher {kind!r} runs in this process; call the step directly")


# --------------------------------------------------------------------------- Ray Jobs API


@contextlib.contextmanager
def on_stop_signal(stop: Callable[[int], None]) -> Iterator[None]:
    """While inside, SIGTERM / SIGINT call ``stop(signum)`` and then exit with ``128 + signum``
    (``SystemExit``). Only in the main thread (elsewhere Python cannot install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        log.warning("not in the main thread: SIGTERM/SIGINT will not stop the remote job")
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        signal.signal(signum, signal.SIG_IGN)  # a second signal must not interrupt the stop
        try:
            stop(signum)
        finally:
            raise SystemExit(128 + signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class _LogStream:
    """Copies a job's log to ``out`` from a background thread (``tail_job_logs``); after the
    job ends, :meth:`finish` prints whatever the tail missed (``get_job_logs``)."""

    def __init__(self, client: Any, job_id: str, out: TextIO) -> None:
        self.client, self.job_id, self.out = client, job_id, out
        self.written = 0
        self.lock = threading.Lock()
        self.closed = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=f"logs-{job_id}", daemon=True)

    def start(self) -> "_LogStream":
        self.thread.start()
        return self

    def _write(self, text: str) -> None:
        with self.lock:
            if self.closed or not text:
                return
            self.out.write(text)
            self.out.flush()
            self.written += len(text)

    def _run(self) -> None:
        async def tail() -> None:
            async for chunk in self.client.tail_job_logs(self.job_id):
                self._write(chunk)

        try:
            asyncio.run(tail())
        except BaseException as e:  # noqa: BLE001 - reported by finish(), which falls back
            self.error = e

    def finish(self, timeout: float = 15.0) -> None:
        self.thread.join(timeout)
        with self.lock:
            self.closed = True
            if self.error is not None or self.thread.is_alive():
                log.info("log tail of %s ended early (%s); copying the rest of the log",
                         self.job_id, self.error or "timeout")
                try:
                    rest = self.client.get_job_logs(self.job_id)[self.written:]
                except Exception as e:  # noqa: BLE001 - logs are best effort
                    log.warning("could not read the logs of %s: %s", self.job_id, e)
                    return
                self.out.write(rest)
                self.out.flush()
                self.written += len(rest)


def _job_error(message: str | None) -> str:
    """Ray's job message, with its copy of the log's tail (already streamed) cut to the last
    line, which for a step is its ``error: ...`` line.

    >>> _job_error("Job entrypoint command failed with exit code 2, last available logs "
    ...            "(truncated to 20,000 chars):\\nINFO x\\nerror: bad input\\n")
    'Job entrypoint command failed with exit code 2; last log line: error: bad input'
    """
    head, sep, logs = (message or "").partition(", last available logs")
    lines = [line for line in logs.splitlines()[1:] if line.strip()]
    if not sep or not lines:
        return message or "(no message)"
    return f"{head}; last log line: {lines[-1].strip()}"


def _wait(client: Any, job_id: str, poll_s: float, unreachable_s: float) -> Any:
    """Poll the job's status until it is terminal, riding out a Jobs API that does not answer
    for up to ``unreachable_s`` in a row."""
    since: float | None = None
    while True:
        try:
            status = client.get_job_status(job_id)
            since = None
            if status.is_terminal():
                return status
        except Exception as e:  # noqa: BLE001 - connection errors of requests/aiohttp, 5xx
            now = time.monotonic()
            since = now if since is None else since
            if now - since > unreachable_s:
                with contextlib.suppress(Exception):
                    client.stop_job(job_id)
                raise JobFailed(f"Ray job {job_id}: the Jobs API did not answer for "
                                f"{unreachable_s:.0f} s ({e}); asked the job to stop") from e
            log.warning("Ray job %s: status unavailable (%s); retrying", job_id, e)
        time.sleep(poll_s)


def run_job(address: str, module: str, step: str, params: Any, *, client: Any = None,
            poll_s: float = 1.0, out: TextIO | None = None, python: str = "python",
            stop_wait_s: float = 30.0, unreachable_s: float = 300.0) -> dict[str, Any]:
    """Submit ``python -m <module> ...`` to the Ray cluster whose Jobs API is ``address``,
    stream its log to ``out`` (default stdout), wait, and return the manifest it wrote.

    A FAILED / STOPPED job raises :class:`JobFailed` with the job's message (or
    :class:`StepInputError` when the job's step exited 2: bad input). SIGTERM / SIGINT stop the
    job (waiting up to ``stop_wait_s`` for it to end) and exit ``128 + signum``. A Jobs API
    that stops answering is retried for ``unreachable_s``; then the job is asked to stop (a
    retried step must not race a job still writing the same output) and the step fails.
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    out = out or sys.stdout
    if client is None:
        try:
            client = JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise StepInputError(f"ray_address {address!r}: cannot reach the Ray Jobs API "
                                 f"({e})") from None
    params, env = job_params(params)
    cmd = entrypoint(module, params, python)
    job_id = submission_id(step, params.output_uri)
    log.info("submitting Ray job %s to %s: %s", job_id, address, cmd)
    log.info("passing environment variables to the job (values not shown): %s",
             ", ".join(sorted(env)) or "none")
    client.submit_job(entrypoint=cmd, submission_id=job_id, runtime_env={"env_vars": env},
                      metadata={"medgan.step": step, "medgan.output_uri": str(params.output_uri)})

    def stop(signum: int) -> None:
        log.warning("%s: stopping Ray job %s", signal.Signals(signum).name, job_id)
        try:
            client.stop_job(job_id)
            deadline = time.monotonic() + stop_wait_s
            while time.monotonic() < deadline:
                if client.get_job_status(job_id).is_terminal():
                    break
                time.sleep(0.5)
            log.warning("Ray job %s is %s", job_id, client.get_job_status(job_id))
        except Exception as e:  # noqa: BLE001 - we are exiting anyway; say why the stop failed
            log.error("could not stop Ray job %s: %s", job_id, e)

    stream = _LogStream(client, job_id, out).start()
    with on_stop_signal(stop):
        status = _wait(client, job_id, poll_s, unreachable_s)
        stream.finish()
    info = client.get_job_info(job_id)
    log.info("Ray job %s ended %s", job_id, status)
    if status != JobStatus.SUCCEEDED:
        message = f"Ray job {job_id} on {address} ended {status}: {_job_error(info.message)}"
        if getattr(info, "driver_exit_code", None) == 2:
            raise StepInputError(message)
        raise JobFailed(message)
    return manifest_of(params.output_uri, step)


def manifest_of(output_uri: str, step: str) -> dict[str, Any]:
    """The manifest a remote run wrote (``storage`` URI); errors name the file."""
    if not storage.exists(storage.join(output_uri, "manifest.json")):
        raise JobFailed(f"{storage.join(output_uri, 'manifest.json')}: the {step} job succeeded "
                        f"but wrote no manifest there (is output_uri on storage shared with the "
                        f"Ray cluster?)")
    return read_manifest(output_uri, step).data


# --------------------------------------------------------------------------- KubeRay RayJob


def plain_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The job variables that may be written into a RayJob object: :data:`PASS_ENV` /
    ``MEDGAN_*`` minus the credentials (:data:`SECRET_ENV`: the Ray pods get those from Secrets),
    ``MEDGAN_RAYJOB_*`` (this launcher's settings) and a tracking URI carrying
    ``user:password@``.

    >>> plain_env({"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_SECRET_ACCESS_KEY": "s",
    ...            "MLFLOW_TRACKING_URI": "http://u:p@mlflow:5000"})
    {'AWS_ENDPOINT_URL': 'http://minio:9000'}
    """
    out = {}
    for k, v in job_env(environ).items():
        if k in SECRET_ENV or k.startswith("MEDGAN_RAYJOB_"):
            continue
        if k == "MLFLOW_TRACKING_URI" and urlsplit(v).password:
            log.warning("MLFLOW_TRACKING_URI carries credentials: not written into the RayJob; "
                        "give it to the Ray pods through a Secret (MEDGAN_RAYJOB_SECRETS)")
            continue
        out[k] = v
    return out


def _workers_and_gpus(params: Any) -> tuple[int, int]:
    """Worker pods and GPUs per pod for the step's params (train: ``num_workers``; tune:
    ``num_workers`` per trial x ``max_concurrent_trials``; a step without Ray params: 1)."""
    per = getattr(params, "num_workers", 1)
    n = int(per) * int(getattr(params, "max_concurrent_trials", None) or 1)
    gpus = 0
    if getattr(params, "use_gpu", False):
        gpus = int(float((getattr(params, "resources_per_worker", None) or {}).get("GPU", 1)))
    return n, max(gpus, 0)


def run_rayjob(module: str, step: str, params: Any, *, api: Any = None,
               settings: rayjob.RayJobSettings | None = None,
               environ: Mapping[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    """The step ``module`` with ``params`` as a KubeRay RayJob on an ephemeral cluster
    (:func:`components.rayjob.submit_rayjob`, SIGTERM/SIGINT delete it); returns the manifest
    it wrote at ``params.output_uri``. Settings: ``settings`` or ``MEDGAN_RAYJOB_*``
    (:class:`components.rayjob.RayJobSettings`). ``kw``: ``poll_s``, ``timeout_s``, ``out``,
    ``core`` (:func:`components.rayjob.submit_rayjob`)."""
    env = os.environ if environ is None else environ
    s = settings or rayjob.RayJobSettings.from_env(env)
    workers, gpus = _workers_and_gpus(params)
    params, variables = job_params(params, env)
    plain = plain_env(variables)
    body = rayjob.rayjob_manifest(
        rayjob.rayjob_name(submission_id(step, params.output_uri)), s.namespace, s.image,
        entrypoint(module, params), num_workers=workers, gpus_per_worker=gpus,
        cpus_per_worker=s.cpus_per_worker, memory_per_worker=s.memory_per_worker, env=plain,
        env_from_secrets=s.secrets, optional_secrets=s.optional_secrets,
        ray_version=s.ray_version, node_selector=s.node_selector, tolerations=s.tolerations,
        ttl_seconds=s.ttl_seconds, service_account=s.service_account,
        labels={"medgan.io/step": step})
    log.info("RayJob %s: %d worker pod(s), %d GPU(s) each; variables %s; Secrets %s",
             body["metadata"]["name"], workers, gpus, sorted(plain),
             [*s.secrets, *s.optional_secrets])
    rayjob.submit_rayjob(body, api=api, guard=on_stop_signal, **kw)
    return manifest_of(params.output_uri, step)
