"""One DAG builder for every application: ingest -> preprocess -> [tune] -> train -> evaluate
[-> register].

The applications (name, framework, task, defaults) are rows of ``pipelines/apps.py``; the CLI is
``python -m pipelines``. Credentials never travel as parameters: on Kubernetes they come from Secrets
as environment variables (``medgan-s3``: AWS_*; ``medgan-mlflow``: MLFLOW_TRACKING_*), see
docs/deploy.md.

>>> p = build_pipeline("toy", framework="pix2pix", task="kspace", register=False, description="toy")
>>> parameter_types(p)["subjects"] is int
True
"""


import inspect
import os
import re
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from kfp import dsl, kubernetes

from pipelines import ops

S3_SECRET = "medgan-s3"
MLFLOW_SECRET = "medgan-mlflow"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
           "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION": "AWS_DEFAULT_REGION"}
MLFLOW_KEYS = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
               "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
               "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}


def _secrets(task: dsl.PipelineTask, mlflow: bool = False) -> dsl.PipelineTask:
    """Mount the S3 Secret (and MLflow's) as environment variables: required, not optional, so a
    missing Secret stops the pod from starting instead of a step writing to the wrong place."""
    kubernetes.use_secret_as_env(task, S3_SECRET, S3_KEYS)
    if mlflow:
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_KEYS)
    return task


def _place(task: dsl.PipelineTask, cpu: str, memory: str, node_selector: Any,
           tolerations: Any) -> dsl.PipelineTask:
    """CPU/memory requests (never an accelerator: GPUs belong to the Ray workers; compile-time
    values, see :func:`pod_requests_from_env`), the node selector and the tolerations (pipeline
    parameters) of a KFP task."""
    task.set_cpu_request(cpu).set_memory_request(memory)
    kubernetes.add_node_selector_json(task, node_selector)
    kubernetes.add_toleration_json(task, tolerations)
    return task


GPUS_ENV = "MEDGAN_PIPELINE_GPUS"
CPU_ENV = "MEDGAN_PIPELINE_CPU"
MEMORY_ENV = "MEDGAN_PIPELINE_MEMORY"
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
#: Retries of the train and tune tasks (a retry resumes from the run's latest Ray checkpoint).
RETRIES = 2


def gpus_from_env() -> float:
    """GPUs per Ray Train worker by default (``gpus_per_worker``; ``use_gpu`` defaults to
    ``gpus > 0``): ``$MEDGAN_PIPELINE_GPUS``, default 1. The KFP pods themselves request none.

    ``MEDGAN_PIPELINE_GPUS=0 python -m pipelines kspace_recon --compile k.yaml`` compiles a
    pipeline that trains on CPU by default.
    """
    raw = os.environ.get(GPUS_ENV, "1")
    try:
        gpus = float(raw)
    except ValueError:
        gpus = -1.0
    if not gpus >= 0:
        raise ValueError(f"{GPUS_ENV}: expected a non-negative number (GPUs per Ray worker), got {raw!r}")
    return gpus


def pod_requests_from_env() -> tuple[str, str]:
    """CPU and memory every KFP pod requests: ``$MEDGAN_PIPELINE_CPU`` (default ``"2"``) and
    ``$MEDGAN_PIPELINE_MEMORY`` (default ``"8Gi"``), Kubernetes quantities. Compile-time, not
    pipeline parameters: KFP resolves a parameter in a resource request only outside the If/Else
    branches (kfp.local fails on it inside them).

    >>> pod_requests_from_env()
    ('2', '8Gi')
    """
    out = []
    for env, default in ((CPU_ENV, "2"), (MEMORY_ENV, "8Gi")):
        raw = os.environ.get(env, default)
        if not _QUANTITY.match(raw):
            raise ValueError(f"{env}: expected a Kubernetes quantity such as {default!r}, got {raw!r}")
        out.append(raw)
    return out[0], out[1]


def build_pipeline(name: str, *, framework: str, task: str, register: bool, description: str,
                   gpus: float = 0, cpu_request: str = "2", memory_request: str = "8Gi",
                   defaults: Mapping[str, Any] | None = None) -> Callable:
    # (no `from __future__ import annotations` in this module: KFP reads the real annotations)
    """The ingest -> preprocess -> [tune] -> train -> evaluate [-> register] DAG, named ``name``.

    ``framework`` and ``task`` are the defaults of the pipeline parameters of the same name: any
    name ``gan_core`` resolves at run time (``gan_core.frameworks.get_framework`` /
    ``gan_core.tasks.get_task``), the builder holds no list of them. ``defaults``: other pipeline
    parameters' defaults (e.g. ``{"subjects": 8}``; ``overrides`` is a JSON object of dotted config
    keys, e.g. ``'{"task.acceleration": 8}'``).
    ``register``: end with the MLflow registry step (the served model is MR in -> synthetic CT
    out, so only MR -> CT pipelines register; the others end at evaluate, logged to MLflow).
    ``gpus``: the default of ``gpus_per_worker`` (GPUs per Ray Train worker); ``use_gpu``
    defaults to ``gpus > 0``. No KFP pod requests a GPU: train and tune hand GPU count, workers
    and per-worker resources to Ray's ScalingConfig.

    Ray parameters: ``ray_address`` (empty: a Ray inside the train/tune step's pod and
    preprocess without Ray; ``http://<head>:8265``: preprocess, tune and train submit themselves
    to that cluster's Jobs API, preprocess's subjects then run as Ray tasks there), ``launcher`` (auto | local | jobs |
    rayjob), ``num_workers`` (per training run / per trial), ``use_gpu``, ``gpus_per_worker``,
    ``resources_per_worker`` (JSON, e.g. ``'{"CPU": 8}'``), ``max_concurrent_trials`` (0: what the
    Ray cluster holds at its autoscaling maximum). Pod parameters: ``node_selector``
    (``{"pool": "cpu"}``) and ``tolerations`` (a list of Kubernetes tolerations) for every KFP
    task. ``cpu_request``/``memory_request`` (builder arguments, Kubernetes quantities): what
    every KFP pod requests.
    """
    for key, value in (("cpu_request", cpu_request), ("memory_request", memory_request)):
        if not _QUANTITY.match(str(value)):
            raise ValueError(f"pipeline {name!r}: {key}: expected a Kubernetes quantity, got {value!r}")
    if not gpus >= 0:
        raise ValueError(f"pipeline {name!r}: gpus: expected >= 0 (GPUs per Ray worker), got {gpus!r}")
    defaults = dict(defaults or {})
    for key in ("framework", "task"):
        if key in defaults:
            raise ValueError(f"pipeline {name!r}: pass {key} as build_pipeline({key}=...), not in defaults")
    defaults.update(framework=framework, task=task)
    defaults.setdefault("use_gpu", gpus > 0)
    defaults.setdefault("gpus_per_worker", float(gpus) if gpus > 0 else 1.0)

    def pipeline(
        storage_root: str = "s3://medgan/runs",
        framework: str = "",  # set from `framework` below
        task: str = "",  # set from `task` below
        overrides: str = "{}",
        source: str = "phantom",
        subjects: int = 12,
        folder: str = "",
        collection: str = "",
        lesion_prevalence: float = 0.4,
        misalign_mm: float = 4.0,
        register_method: str = "rigid",
        unpaired: bool = False,
        preset: str = "demo",
        steps: int = 0,
        run_tune: bool = False,
        tune_samples: int = 4,
        tune_steps: int = 0,
        ray_address: str = "",
        launcher: str = "auto",
        num_workers: int = 1,
        use_gpu: bool = False,  # set from `gpus` below
        gpus_per_worker: float = 1.0,  # set from `gpus` below
        resources_per_worker: str = "",
        max_concurrent_trials: int = 0,
        node_selector: dict = {},  # noqa: B006 - a KFP parameter default, never mutated
        tolerations: list = [],  # noqa: B006 - a KFP parameter default, never mutated
        tracking_uri: str = "",
        experiment: str = "medgan",
        model_name: str = "medgan-sct",
        require_audit: bool = True,
        require_baseline: bool = True,
        seed: int = 0,
    ) -> str:
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER

        def place(t: dsl.PipelineTask) -> dsl.PipelineTask:
            return _place(t, cpu_request, memory_request, node_selector, tolerations)

        ray = dict(ray_address=ray_address, launcher=launcher, num_workers=num_workers,
                   use_gpu=use_gpu, gpus_per_worker=gpus_per_worker,
                   resources_per_worker=resources_per_worker)
        ingest = place(_secrets(ops.ingest_op(
            root=storage_root, source=source, subjects=subjects, seed=seed,
            lesion_prevalence=lesion_prevalence, misalign_mm=misalign_mm, folder=folder,
            collection=collection)))
        prep = place(_secrets(ops.preprocess_op(root=storage_root, input_uri=ingest.output,
                                                register=register_method, seed=seed,
                                                ray_address=ray_address, unpaired=unpaired)))
        with dsl.If(run_tune == True, name="tune-loss-weights"):  # noqa: E712 - KFP condition syntax
            tune = place(_secrets(ops.tune_op(
                root=storage_root, job=job, data_uri=prep.output, framework=framework,
                preset=preset, task=task, overrides=overrides, num_samples=tune_samples,
                max_steps_per_trial=tune_steps, tracking_uri=tracking_uri, experiment=experiment,
                seed=seed, max_concurrent_trials=max_concurrent_trials, unpaired=unpaired, **ray),
                mlflow=True))
            tuned = place(_secrets(ops.train_op(
                root=storage_root, job=job, data_uri=prep.output, framework=framework,
                preset=preset, task=task, overrides=overrides, config_uri=tune.output, steps=steps,
                tracking_uri=tracking_uri, experiment=experiment, unpaired=unpaired, **ray),
                mlflow=True))
        with dsl.Else(name="preset-loss-weights"):
            plain = place(_secrets(ops.train_op(
                root=storage_root, job=job, data_uri=prep.output, framework=framework,
                preset=preset, task=task, overrides=overrides, config_uri="", steps=steps,
                tracking_uri=tracking_uri, experiment=experiment, unpaired=unpaired, **ray),
                mlflow=True))
        model_uri = dsl.OneOf(tuned.output, plain.output)
        ev = place(_secrets(ops.evaluate_op(root=storage_root, job=job, data_uri=prep.output,
                                            model_uri=model_uri, tracking_uri=tracking_uri,
                                            experiment=experiment), mlflow=True))
        for t in (tuned, plain, tune):  # resume from the latest checkpoint makes a retry safe
            t.set_retry(num_retries=RETRIES, backoff_duration="60s", backoff_factor=2.0)
        for t in (tuned, plain, ev, tune):  # per-run outputs (job id): nothing to reuse
            t.set_caching_options(False)
        if not register:
            return ev.outputs["Output"]
        reg = place(_secrets(ops.register_op(model_uri=model_uri, eval_uri=ev.outputs["Output"],
                                             data_uri=prep.output, model_name=model_name,
                                             tracking_uri=tracking_uri, experiment=experiment,
                                             require_audit=require_audit,
                                             require_baseline=require_baseline), mlflow=True))
        reg.set_caching_options(False)
        return reg.output

    _set_defaults(name, pipeline, defaults)
    return dsl.pipeline(name=name, description=description)(pipeline)


def _typed(key: str, kind: type, value: Any) -> Any:
    """``value`` as a pipeline parameter of type ``kind`` (an int is a float; a bool is no int)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ValueError(f"pipeline parameter {key!r}: expected {kind.__name__}, got {value!r}")


def _set_defaults(name: str, fn: Callable, defaults: Mapping[str, Any]) -> None:
    """Replace the defaults of ``fn``'s parameters (all keyword parameters with a default)."""
    params = inspect.signature(fn).parameters
    unknown = sorted(set(defaults) - set(params))
    if unknown:
        raise ValueError(f"pipeline {name!r}: unknown parameter(s) {unknown}; known: {sorted(params)}")
    fn.__defaults__ = tuple(_typed(k, p.annotation, defaults[k]) if k in defaults else p.default
                            for k, p in params.items())


def parameter_types(pipeline: Callable) -> dict[str, type]:
    """Each pipeline parameter's Python type (``str``, ``int``, ``float``, ``bool``, ``dict`` or
    ``list``)."""
    return {k: p.annotation for k, p in inspect.signature(pipeline.pipeline_func).parameters.items()}


def parse_params(pipeline: Callable, pairs: list[str]) -> dict[str, Any]:
    """``["subjects=8", "run_tune=true", 'overrides={"task.dose": 0.1}']`` -> typed parameters.

    A ``str`` parameter takes the text as written; the others are read as YAML (a ``dict`` or
    ``list`` parameter as a JSON/YAML object or list: ``node_selector={"pool": "cpu"}``).

    >>> p = build_pipeline("toy", framework="pix2pix", task="kspace", register=False, description="")
    >>> parse_params(p, ["subjects=8", "run_tune=true", "overrides={}"])
    {'subjects': 8, 'run_tune': True, 'overrides': '{}'}
    """
    import yaml

    types = parameter_types(pipeline)
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep:
            raise ValueError(f"--param {pair!r}: expected KEY=VALUE")
        if key not in types:
            raise ValueError(f"--param {pair!r}: unknown pipeline parameter {key!r}; known: {sorted(types)}")
        kind = types[key]
        if kind is str:
            params[key] = text
            continue
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"--param {pair!r}: expected a {kind.__name__}: {exc}") from None
        params[key] = _typed(key, kind, value)
    return params


def run_local(pipeline: Callable, workdir: str | Path, **params: Any) -> dict:
    """Run the whole DAG here with kfp.local (SubprocessRunner, this Python env) on local defaults:
    files under ``workdir``, MLflow on ``sqlite:///<workdir>/mlflow.db``, a local Ray (or the Ray
    cluster of ``ray_address``), ``use_gpu`` only when this machine has a CUDA GPU (unless given).
    ``storage_root`` (default ``<workdir>/runs``) may be ``s3://...`` (credentials from the
    ``AWS_*`` environment). Pod settings (requests, node selector, tolerations, Secrets) do not
    apply here."""
    from kfp import local

    if "use_gpu" not in params:
        import torch

        params["use_gpu"] = bool(torch.cuda.is_available())

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracking = params.pop("tracking_uri", None) or f"sqlite:///{workdir / 'mlflow.db'}"
    # the steps (subprocesses) read these; restored afterwards so a caller's later MLflow/Ray use
    # does not silently inherit this run's tracking store
    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "RAY_AUTH_MODE")}
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "kfp"))
    t0 = time.perf_counter()
    try:
        params.setdefault("storage_root", str(workdir / "runs"))
        task = pipeline(tracking_uri=tracking, **params)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {"output": getattr(task, "output", None), "seconds": time.perf_counter() - t0,
            "tracking_uri": tracking, "workdir": str(workdir)}
