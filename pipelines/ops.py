"""KFP v2 wrappers (no `from __future__ import annotations`: KFP reads real annotations) of the
pipeline steps: no logic here, each calls ``components.<step>`` (train and tune through their CLI,
so the Ray settings reach them as ``--ray-address``, ``--launcher``, ``--num-workers`` ...).

Outputs: ingest and preprocess write under ``<root>/<step>/<content key>``, a hash of what
identifies their content (their parameters, their input URI, the code version), so KFP's cache and
the folder agree: the same inputs give the same folder, reused by the next run. Tune, train and
evaluate write under ``<root>/<job>/<step>`` (``job``: the KFP job id; reruns never overwrite each
other, and a retry of the same task resumes from its own checkpoints).

The image already holds medgan and kfp (``infra/Dockerfile``): no step installs anything at start
(``install_kfp_package=False``). What the steps run beside ``components`` lives in
:mod:`pipelines.runtime` (no kfp import: inside a step, ``kfp.dsl`` is the runtime subset).
"""


import os

from kfp import dsl
from kfp.dsl import Metrics, Output

#: The one image of every step and of the Ray cluster (pinned by tag; infra/Dockerfile builds it).
IMAGE = os.environ.get("MEDGAN_IMAGE", "ghcr.io/medgan/medgan:0.1.0")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def ingest_op(root: str, source: str, subjects: int, seed: int, lesion_prevalence: float,
              misalign_mm: float, folder: str, collection: str) -> str:
    from components.ingest import run_ingest
    from pipelines.runtime import content_uri

    out = content_uri(root, "ingest", {
        "source": source, "subjects": subjects, "seed": seed, "lesion_prevalence": lesion_prevalence,
        "misalign_mm": misalign_mm, "folder": folder, "collection": collection})
    run_ingest(source, out, subjects=subjects, seed=seed, lesion_prevalence=lesion_prevalence,
               misalign_mm=misalign_mm, folder=folder or None, collection=collection or None)
    return out


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def preprocess_op(root: str, input_uri: str, register: str, seed: int, ray_address: str,
                  unpaired: bool) -> str:
    from components.preprocess import run_preprocess
    from pipelines.runtime import content_uri

    # ray_address is not in the content key: the output is the same with or without Ray
    key = {"input_uri": input_uri, "register": register, "seed": seed}
    out = content_uri(root, "preprocess", {**key, "unpaired": True} if unpaired else key)
    run_preprocess(input_uri, out, register=register, seed=seed, ray_address=ray_address or None,
                   unpaired=unpaired)
    return out


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def tune_op(root: str, job: str, data_uri: str, framework: str, preset: str, task: str,
            overrides: str, num_samples: int, max_steps_per_trial: int, tracking_uri: str,
            experiment: str, seed: int, ray_address: str, launcher: str, num_workers: int,
            use_gpu: bool, gpus_per_worker: float, resources_per_worker: str,
            max_concurrent_trials: int, unpaired: bool) -> str:
    from pipelines.runtime import ray_args, run_step, set_args

    out = f"{root.rstrip('/')}/{job}/tune"
    argv = ["--data-uri", data_uri, "--output-uri", out, "--framework", framework,
            "--preset", preset, "--task", task, "--num-samples", str(num_samples),
            "--experiment", experiment, "--seed", str(seed),
            "--num-workers", str(num_workers), *set_args(overrides),
            *ray_args(ray_address, launcher, num_workers=num_workers, use_gpu=use_gpu,
                      gpus_per_worker=gpus_per_worker, resources_per_worker=resources_per_worker)]
    if max_steps_per_trial:
        argv += ["--max-steps-per-trial", str(max_steps_per_trial)]
    if max_concurrent_trials:
        argv += ["--max-concurrent-trials", str(max_concurrent_trials)]
    if unpaired:
        argv += ["--unpaired"]
    if tracking_uri:
        argv += ["--tracking-uri", tracking_uri]
    run_step("tune", argv)
    return f"{out}/best_config.yaml"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_op(root: str, job: str, data_uri: str, framework: str, preset: str, task: str,
             overrides: str, config_uri: str, steps: int, tracking_uri: str, experiment: str,
             ray_address: str, launcher: str, num_workers: int, use_gpu: bool,
             gpus_per_worker: float, resources_per_worker: str, unpaired: bool) -> str:
    from pipelines.runtime import ray_args, run_step, set_args

    out = f"{root.rstrip('/')}/{job}/train"
    argv = ["--data-uri", data_uri, "--output-uri", out, "--framework", framework,
            "--preset", preset, "--task", task, "--experiment", experiment,
            "--run-name", f"{framework}-{job}", "--num-workers", str(num_workers),
            *ray_args(ray_address, launcher, num_workers=num_workers, use_gpu=use_gpu,
                      gpus_per_worker=gpus_per_worker, resources_per_worker=resources_per_worker)]
    argv += ["--config-uri", config_uri] if config_uri else set_args(overrides)
    if steps:
        argv += ["--steps", str(steps)]
    if unpaired:
        argv += ["--unpaired"]
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
                experiment: str, require_audit: bool, require_baseline: bool) -> str:
    import json

    from components.register import run_register

    manifest = run_register(model_uri, eval_uri, model_name=model_name, tracking_uri=tracking_uri or None,
                            experiment=experiment, data_manifest_uri=f"{data_uri.rstrip('/')}/manifest.json",
                            require_audit=require_audit, require_baseline=require_baseline)
    return json.dumps({k: manifest.get(k) for k in ("model_name", "version", "promoted", "reason")})
