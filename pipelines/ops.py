"""KFP v2 wrappers (no `from __future__ import annotations`: KFP reads real annotations) of the pipeline steps: no logic here, each calls ``components.<step>.run_<step>``.

Every step writes under ``<root>/<job>/<step>`` (root: a folder or ``s3://bucket/prefix``; job: the
KFP job id, so reruns never overwrite each other) and returns that URI for the next step.
"""


import os

from kfp import dsl
from kfp.dsl import Metrics, Output

IMAGE = os.environ.get("MEDGAN_IMAGE", "ghcr.io/medgan/medgan:latest")


@dsl.component(base_image=IMAGE)
def ingest_op(root: str, job: str, source: str, subjects: int, seed: int, lesion_prevalence: float,
              misalign_mm: float, folder: str, collection: str) -> str:
    from components.ingest import run_ingest

    out = f"{root.rstrip('/')}/{job}/ingest"
    run_ingest(source, out, subjects=subjects, seed=seed, lesion_prevalence=lesion_prevalence,
               misalign_mm=misalign_mm, folder=folder or None, collection=collection or None)
    return out


@dsl.component(base_image=IMAGE)
def preprocess_op(root: str, job: str, input_uri: str, register: str, seed: int) -> str:
    from components.preprocess import run_preprocess

    out = f"{root.rstrip('/')}/{job}/preprocess"
    run_preprocess(input_uri, out, register=register, seed=seed)
    return out


@dsl.component(base_image=IMAGE)
def tune_op(root: str, job: str, data_uri: str, framework: str, preset: str, task: str,
            overrides: str, num_samples: int, max_steps_per_trial: int, tracking_uri: str,
            experiment: str, seed: int) -> str:
    import json

    from components.tune import run_tune

    out = f"{root.rstrip('/')}/{job}/tune"
    run_tune(data_uri, out, framework=framework, preset=preset, task=task,
             overrides=json.loads(overrides or "{}"), num_samples=num_samples,
             max_steps_per_trial=max_steps_per_trial or None, tracking_uri=tracking_uri or None,
             experiment=experiment, seed=seed)
    return f"{out}/best_config.yaml"


@dsl.component(base_image=IMAGE)
def train_op(root: str, job: str, data_uri: str, framework: str, preset: str, task: str,
             overrides: str, config_uri: str, steps: int, num_workers: int, use_gpu: bool,
             tracking_uri: str, experiment: str) -> str:
    import json

    from components.train import run_train

    out = f"{root.rstrip('/')}/{job}/train"
    run_train(data_uri, out, framework=framework, preset=preset, task=task,
              overrides=None if config_uri else json.loads(overrides or "{}"),
              config_uri=config_uri or None,
              steps=steps or None, num_workers=num_workers, use_gpu=use_gpu,
              tracking_uri=tracking_uri or None, experiment=experiment, run_name=f"{framework}-{job}")
    return out


@dsl.component(base_image=IMAGE)
def evaluate_op(root: str, job: str, data_uri: str, model_uri: str, tracking_uri: str,
                experiment: str, metrics: Output[Metrics]) -> str:
    from components.evaluate import run_evaluate

    out = f"{root.rstrip('/')}/{job}/evaluate"
    manifest = run_evaluate(data_uri, model_uri, out, tracking_uri=tracking_uri or None, experiment=experiment)
    for key, value in manifest.get("summary", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics.log_metric(key, float(value))
    return out


@dsl.component(base_image=IMAGE)
def register_op(model_uri: str, eval_uri: str, data_uri: str, model_name: str, tracking_uri: str,
                experiment: str, require_audit: bool) -> str:
    import json

    from components.register import run_register

    manifest = run_register(model_uri, eval_uri, model_name=model_name, tracking_uri=tracking_uri or None,
                            experiment=experiment, data_manifest_uri=f"{data_uri.rstrip('/')}/manifest.json",
                            require_audit=require_audit)
    return json.dumps({k: manifest.get(k) for k in ("model_name", "version", "promoted", "reason")})
