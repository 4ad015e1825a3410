"""KFP v2 wrappers (no `from __future__ import annotations`: KFP reads real annotations) of the
pipeline steps: no logic here, each calls ``components.<step>`` (train and tune through their CLI,
so the Ray settings reach them as ``--ray-address``, ``--launcher``, ``--num-workers`` ...).

Outputs: ingest and preprocess write under ``<root>/<step>/<content key>``, a hash of what
identifies their content (their parameters, their input URI, the code version), so KFP's cache and
the folder agree: the same inputs give the same folder, reused by the next run. Tune, train and
evaluate write under ``<root>/<job>/<step>`` (``job``: the KFP job id; reruns never overwrite each
other, and a retry of the same task resumes from its own checkpoints).

The image already holds medgan and kfp (``infra/Dockerfile``): no step installs anything at start
(``install_kfp_package=False``).

>>> content_uri("s3://b/runs", "ingest", {"subjects": 8, "seed": 0}, code="abc")
's3://b/runs/ingest/94a39367f53dc797'
>>> ray_args("http://head:8265", "auto", num_workers=2, use_gpu=True, gpus_per_worker=1,
...          resources_per_worker="")
['--ray-address', 'http://head:8265', '--use-gpu', '--resources-per-worker', '{"GPU": 1}']
"""


import hashlib
import json
import os
from typing import Any

from kfp import dsl
from kfp.dsl import Metrics, Output

#: The one image of every step and of the Ray cluster (pinned by tag; infra/Dockerfile builds it).
IMAGE = os.environ.get("MEDGAN_IMAGE", "ghcr.io/medgan/medgan:0.1.0")


def content_uri(root: str, step: str, params: dict[str, Any], code: str | None = None) -> str:
    """``<root>/<step>/<16 hex>``: the folder of a cached step's output, keyed on ``params`` and
    the code version ``code`` (default: ``components.step.code_info()``, the image's commit)."""
    if code is None:
        from components.step import code_info

        info = code_info()
        code = f"{info['gan_core']}+{info['git_commit'] or 'unknown'}"
    key = json.dumps({"step": step, "params": params, "code": code}, sort_keys=True, default=str)
    return f"{root.rstrip('/')}/{step}/{hashlib.sha256(key.encode()).hexdigest()[:16]}"


def ray_args(ray_address: str, launcher: str, *, num_workers: int, use_gpu: bool,
             gpus_per_worker: float, resources_per_worker: str) -> list[str]:
    """The Ray CLI options of the train/tune steps (without the worker count's flag, which the
    two steps name differently). ``resources_per_worker``: JSON (``'{"CPU": 4}'``) or empty;
    with ``use_gpu`` it gets ``"GPU": gpus_per_worker`` unless it names GPU itself."""
    if num_workers < 1:
        raise ValueError(f"num_workers: expected >= 1, got {num_workers}")
    try:
        resources = json.loads(resources_per_worker or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"resources_per_worker: expected a JSON object such as "
                         f"'{{\"CPU\": 4}}', got {resources_per_worker!r} ({e})") from None
    if not isinstance(resources, dict):
        raise ValueError(f"resources_per_worker: expected a JSON object, got {resources_per_worker!r}")
    args = ["--ray-address", ray_address] if ray_address else []
    if launcher and launcher != "auto":
        args += ["--launcher", launcher]
    if use_gpu:
        args.append("--use-gpu")
        if gpus_per_worker <= 0:
            raise ValueError(f"gpus_per_worker: expected > 0 with use_gpu, got {gpus_per_worker}")
        resources.setdefault("GPU", gpus_per_worker)
    if resources:
        args += ["--resources-per-worker", json.dumps(resources)]
    return args


def set_args(overrides: str) -> list[str]:
    """``'{"task.acceleration": 8}'`` -> ``["--set", "task.acceleration=8"]`` (values as JSON,
    which the steps read back as YAML)."""
    try:
        values = json.loads(overrides or "{}")
    except json.JSONDecodeError as e:
        raise ValueError(f"overrides: expected a JSON object, got {overrides!r} ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"overrides: expected a JSON object, got {overrides!r}")
    return [a for k, v in values.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def run_step(module: str, argv: list[str]) -> None:
    """Run ``components.<module>.main(argv)``; a non-zero exit status fails the KFP task."""
    import importlib

    code = importlib.import_module(f"components.{module}").main(argv)
    if code:
        raise SystemExit(code)


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_op(root: str, source: str, subjects: int, seed: int, lesion_prevalence: float,
              misalign_mm: float, folder: str, collection: str) -> str:
    from components.ingest import run_ingest
    from pipelines.ops import content_uri

    out = content_uri(root, "ingest", {
        "source": source, "subjects": subjects, "seed": seed, "lesion_prevalence": lesion_prevalence,
        "misalign_mm": misalign_mm, "folder": folder, "collection": collection})
    run_ingest(source, out, subjects=subjects, seed=seed, lesion_prevalence=lesion_prevalence,
               misalign_mm=misalign_mm, folder=folder or None, collection=collection or None)
    return out


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess_op(root: str, input_uri: str, register: str, seed: int) -> str:
    from components.preprocess import run_preprocess
    from pipelines.ops import content_uri

    out = content_uri(root, "preprocess", {"input_uri": input_uri, "register": register, "seed": seed})
    run_preprocess(input_uri, out, register=register, seed=seed)
    return out


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune_op(root: str, job: str, data_uri: str, framework: str, preset: str, task: str,
            overrides: str, num_samples: int, max_steps_per_trial: int, tracking_uri: str,
            experiment: str, seed: int, ray_address: str, launcher: str, num_workers: int,
            use_gpu: bool, gpus_per_worker: float, resources_per_worker: str,
            max_concurrent_trials: int) -> str:
    from pipelines.ops import ray_args, run_step, set_args

    out = f"{root.rstrip('/')}/{job}/tune"
    argv = ["--data-uri", data_uri, "--output-uri", out, "--framework", framework,
            "--preset", preset, "--task", task, "--num-samples", str(num_samples),
            "--experiment", experiment, "--seed", str(seed),
            "--num-workers-per-trial", str(num_workers), *set_args(overrides),
            *ray_args(ray_address, launcher, num_workers=num_workers, use_gpu=use_gpu,
                      gpus_per_worker=gpus_per_worker, resources_per_worker=resources_per_worker)]
    if max_steps_per_trial:
        argv += ["--max-steps-per-trial", str(max_steps_per_trial)]
    if max_concurrent_trials:
        argv += ["--max-concurrent-trials", str(max_concurrent_trials)]
    if tracking_uri:
        argv += ["--tracking-uri", tracking_uri]
    run_step("tune", argv)
    return f"{out}/best_config.yaml"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(root: str, job: str, data_uri: str, framework: str, preset: str, task: str,
             overrides: str, config_uri: str, steps: int, tracking_uri: str, experiment: str,
             ray_address: str, launcher: str, num_workers: int, use_gpu: bool,
             gpus_per_worker: float, resources_per_worker: str) -> str:
    from pipelines.ops import ray_args, run_step, set_args

    out = f"{root.rstrip('/')}/{job}/train"
    argv = ["--data-uri", data_uri, "--output-uri", out, "--framework", framework,
            "--preset", preset, "--task", task, "--experiment", experiment,
            "--run-name", f"{framework}-{job}", "--num-workers", str(num_workers),
            *ray_args(ray_address, launcher, num_workers=num_workers, use_gpu=use_gpu,
                      gpus_per_worker=gpus_per_worker, resources_per_worker=resources_per_worker)]
    argv += ["--config-uri", config_uri] if config_uri else set_args(overrides)
    if steps:
        argv += ["--steps", str(steps)]
    if tracking_uri:
        argv += ["--tracking-uri", tracking_uri]
    run_step("train", argv)
    return out


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_op(root: str, job: str, data_uri: str, model_uri: str, tracking_uri: str,
                experiment: str, metrics: Output[Metrics]) -> str:
    from components.evaluate import run_evaluate

    out = f"{root.rstrip('/')}/{job}/evaluate"
    manifest = run_evaluate(data_uri, model_uri, out, tracking_uri=tracking_uri or None, experiment=experiment)
    for key, value in manifest.get("summary", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    return out


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_op(model_uri: str, eval_uri: str, data_uri: str, model_name: str, tracking_uri: str,
                experiment: str, require_audit: bool) -> str:
    import json

    from components.register import run_register

    manifest = run_register(model_uri, eval_uri, model_name=model_name, tracking_uri=tracking_uri or None,
                            experiment=experiment, data_manifest_uri=f"{data_uri.rstrip('/')}/manifest.json",
                            require_audit=require_audit)
    return json.dumps({k: manifest.get(k) for k in ("model_name", "version", "promoted", "reason")})
