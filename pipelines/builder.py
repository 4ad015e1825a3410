"""One DAG builder for every task pipeline, and the one CLI (``--compile / --host / --local``).

Per-task files (``pipelines/cyclegan_mr_ct.py``, ``kspace_recon.py``, ``lowdose_ct.py`` ...) only
pick a name, a framework, a task and defaults.
Credentials never travel as parameters: on Kubernetes they come from Secrets as environment
variables (``medgan-s3``: AWS_*; ``medgan-mlflow``: MLFLOW_TRACKING_*), see docs/deploy.md.
"""


import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

from kfp import dsl, kubernetes

from pipelines import ops

S3_SECRET = "medgan-s3"
MLFLOW_SECRET = "medgan-mlflow"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
           "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}
MLFLOW_KEYS = {"MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI",
               "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
               "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"}


def _secrets(task: dsl.PipelineTask, mlflow: bool = False) -> dsl.PipelineTask:
    kubernetes.use_secret_as_env(task, S3_SECRET, S3_KEYS, optional=True)
    if mlflow:
        kubernetes.use_secret_as_env(task, MLFLOW_SECRET, MLFLOW_KEYS, optional=True)
    return task


def build_pipeline(name: str, *, framework: str, task: str = "mr2ct", register: bool = True,
                   gpus: int = 0, description: str = "") -> Callable:
    # (no `from __future__ import annotations` in this module: KFP reads the real annotations)
    """The ingest -> preprocess -> [tune] -> train -> evaluate [-> register] DAG.

    ``framework`` and ``task`` are the defaults of the pipeline parameters of the same name
    (``overrides``: a JSON object of dotted config keys, e.g. ``{"task.acceleration": 8}``).
    ``register``: end with the MLflow registry step (the served model is MR in -> synthetic CT
    out, so only MR -> CT pipelines register; the others end at evaluate, logged to MLflow).
    ``gpus``: accelerators requested by the GPU steps (train drives Ray; evaluate translates).
    """

    default_framework, default_task = framework, task

    @dsl.pipeline(name=name, description=description or f"{framework}: MR -> synthetic CT")
    def pipeline(
        storage_root: str = "s3://medgan/runs",
        framework: str = default_framework,
        task: str = default_task,
        overrides: str = "{}",
        source: str = "phantom",
        subjects: int = 12,
        folder: str = "",
        collection: str = "",
        lesion_prevalence: float = 0.4,
        misalign_mm: float = 4.0,
        register_method: str = "rigid",
        preset: str = "demo",
        steps: int = 0,
        run_tune: bool = False,
        tune_samples: int = 4,
        tune_steps: int = 0,
        num_workers: int = 1,
        use_gpu: bool = False,
        tracking_uri: str = "",
        experiment: str = "medgan",
        model_name: str = "medgan-sct",
        require_audit: bool = True,
        seed: int = 0,
    ) -> str:
        job = dsl.PIPELINE_JOB_ID_PLACEHOLDER
        ingest = _secrets(ops.ingest_op(root=storage_root, job=job, source=source, subjects=subjects,
                                        seed=seed, lesion_prevalence=lesion_prevalence,
                                        misalign_mm=misalign_mm, folder=folder, collection=collection))
        prep = _secrets(ops.preprocess_op(root=storage_root, job=job, input_uri=ingest.output,
                                          register=register_method, seed=seed))
        with dsl.If(run_tune == True, name="tune-loss-weights"):  # noqa: E712 - KFP condition syntax
            tune = _secrets(ops.tune_op(root=storage_root, job=job, data_uri=prep.output,
                                        framework=framework, preset=preset, task=task,
                                        overrides=overrides, num_samples=tune_samples,
                                        max_steps_per_trial=tune_steps, tracking_uri=tracking_uri,
                                        experiment=experiment, seed=seed), mlflow=True)
            tuned = _secrets(ops.train_op(root=storage_root, job=job, data_uri=prep.output,
                                          framework=framework, preset=preset, task=task,
                                          overrides=overrides, config_uri=tune.output,
                                          steps=steps, num_workers=num_workers, use_gpu=use_gpu,
                                          tracking_uri=tracking_uri, experiment=experiment), mlflow=True)
        with dsl.Else(name="preset-loss-weights"):
            plain = _secrets(ops.train_op(root=storage_root, job=job, data_uri=prep.output,
                                          framework=framework, preset=preset, task=task,
                                          overrides=overrides, config_uri="",
                                          steps=steps, num_workers=num_workers, use_gpu=use_gpu,
                                          tracking_uri=tracking_uri, experiment=experiment), mlflow=True)
        model_uri = dsl.OneOf(tuned.output, plain.output)
        ev = _secrets(ops.evaluate_op(root=storage_root, job=job, data_uri=prep.output, model_uri=model_uri,
                                      tracking_uri=tracking_uri, experiment=experiment), mlflow=True)
        for t in (tuned, plain, ev, tune):
            t.set_caching_options(False)
            if gpus:
                t.set_accelerator_type("nvidia.com/gpu").set_accelerator_limit(gpus)
        if not register:
            return ev.outputs["Output"]
        reg = _secrets(ops.register_op(model_uri=model_uri, eval_uri=ev.outputs["Output"],
                                       data_uri=prep.output, model_name=model_name,
                                       tracking_uri=tracking_uri, experiment=experiment,
                                       require_audit=require_audit), mlflow=True)
        reg.set_caching_options(False)
        return reg.output

    return pipeline


def run_local(pipeline: Callable, workdir: str | Path, **params: Any) -> dict:
    """Run the whole DAG here with kfp.local (SubprocessRunner, this Python env) on local defaults:
    files under ``workdir``, MLflow on ``sqlite:///<workdir>/mlflow.db``, a local Ray."""
    from kfp import local

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    tracking = params.pop("tracking_uri", None) or f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ.setdefault("MLFLOW_TRACKING_URI", tracking)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(workdir / "kfp"))
    t0 = time.perf_counter()
    task = pipeline(storage_root=str(workdir / "runs"), tracking_uri=tracking, **params)
    return {"output": getattr(task, "output", None), "seconds": time.perf_counter() - t0,
            "tracking_uri": tracking, "workdir": str(workdir)}


def main(pipeline: Callable, argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(pipeline.description or pipeline.name) + "  (KFP v2)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compile", metavar="OUT.yaml", help="write the pipeline IR")
    mode.add_argument("--host", metavar="URL", help="submit a run to this Kubeflow Pipelines API")
    mode.add_argument("--local", action="store_true", help="run here with kfp.local on embedded defaults")
    p.add_argument("--experiment", default=None, help="KFP experiment name (with --host)")
    p.add_argument("--workdir", default="medgan_local", help="with --local: where everything is written")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="pipeline parameter (repeatable), e.g. subjects=8, run_tune=true")
    args = p.parse_args(argv)
    import yaml

    params = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.param)}
    if args.compile:
        from kfp import compiler

        compiler.Compiler().compile(pipeline, package_path=args.compile)
        print(f"wrote {args.compile}")
    elif args.host:
        import kfp

        client = kfp.Client(host=args.host)
        run = client.create_run_from_pipeline_func(pipeline, arguments=params,
                                                   experiment_name=args.experiment)
        print(f"submitted run {run.run_id} to {args.host}")
    else:
        res = run_local(pipeline, args.workdir, **params)
        print(f"pipeline finished in {res['seconds']:.0f}s; registry result: {res['output']}")
        print(f"browse: mlflow ui --backend-store-uri {res['tracking_uri']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run a task pipeline, e.g. python pipelines/cyclegan_mr_ct.py --help")
