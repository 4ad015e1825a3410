"""Pipeline step ``train``: Ray Train (``TorchTrainer``) over ``gan_core.engine.train``.

Inputs and outputs (``data_uri`` / ``output_uri``: a local folder or ``s3://bucket/prefix``)::

    <data_uri>/manifest.json           step "preprocess": splits, and the shard folders at
                                       outputs.shards.{train,val}.path (read from there)
    <out>/model.pt                     inference weights + config (gan_core.engine.save_model)
    <out>/config.yaml                  the full TrainConfig of the run
    <out>/manifest.json                step "train": mlflow_run_id, val_mae, steps, images_per_s,
                                       ray_storage_path, world_size, node_ids (the Ray
                                       node of each rank), ...
    <out>/ray/<run name>/              Ray Train run: checkpoints (RunConfig.storage_path)

How it runs (the Ray side is :mod:`components.raytrain`):

* Where (``launcher``, :mod:`components.launch`): with ``ray_address`` a Jobs API URL
  (``http://<head>:8265``) the step submits itself as a Ray job to that cluster, streams the
  job's log, and returns the manifest the job wrote (``output_uri`` on shared storage, S3);
  ``launcher=rayjob`` does the same through a KubeRay RayJob. Otherwise it runs here:
* The driver connects to ``ray_address`` (GCS ``host:port``) / ``$RAY_ADDRESS`` or starts a
  local Ray, creates the MLflow run (so its id is known) and fits a ``TorchTrainer`` (gloo on
  CPU, NCCL on GPU).
* Workers resume from the latest Ray checkpoint when Ray restarts them (``max_failures``
  times); rerunning the step with the same ``output_uri`` (and ``run_name``) resumes an
  interrupted run. Rank 0 logs losses (from a background thread), a ``resume_step`` marker per
  (re)start and, every ``sample_every_s`` seconds and at the last step, a PNG grid
  ``input | output | target`` to MLflow.
* Rank 0 writes the final ``model.pt`` (with its ``val_mae``) to ``<out>/.export/<run name>/``
  and returns the run's numbers; the driver publishes that file and those numbers as they are
  (``components.step.staged``, keeping ``ray/``), without reloading or revalidating anything.

Example:
    >>> m = run_train("runs/processed", "runs/train", framework="pix2pix",   # doctest: +SKIP
    ...               preset="demo", num_workers=2, tracking_uri="sqlite:///runs/mlflow.db")
    >>> m["val_mae"], m["mlflow_run_id"]                                  # doctest: +SKIP
    (142.7, '5f0c...')

CLI: ``python -m components.train --data-uri URI --output-uri URI [--num-workers 2 ...]``
(exit codes: :mod:`components.step`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import mlflow_utils as mlu
from components import storage
from components.launch import RayParams, is_remote, launch
from components.raytrain import (RAY_DIR, fault_from_env, fit, ray_run_name, ray_session,
                                 ray_storage, ray_uri, worker_config)
from components.step import (StepInputError, arg, build_config, local_file, params_from_args,
                             params_parser, read_manifest, run_cli, staged, step_manifest,
                             training_data, write_manifest)
from gan_core.config import parse_set, save_config
from gan_core.engine import MODEL

__all__ = ["EXPORT_DIR", "TrainParams", "run_train", "main"]

#: Folder (relative to the output) where rank 0 writes the final model; gone once published.
EXPORT_DIR = ".export"


@dataclass(frozen=True)
class TrainParams(RayParams):
    """Parameters of the train step (one CLI option each; the Ray ones: :class:`RayParams`)."""

    data_uri: str = arg("preprocess output (local path or s3://)")
    output_uri: str = arg("where model.pt, config.yaml and manifest.json go")
    framework: str = arg("gan_core framework", default="cyclegan")
    preset: str = arg("demo | full | tiny (ignored with --config-uri)", default="demo")
    task: str = arg("gan_core.tasks name (ignored with --config-uri)", default="mr2ct")
    config_uri: str | None = arg("YAML TrainConfig, e.g. the tune step's best_config.yaml",
                                 default=None)
    overrides: dict[str, Any] | None = arg(
        "config override, repeatable: --set loss.image=50 --set data.batch_size=8", default=None,
        flag="--set", append=True, metavar="KEY=VALUE", convert=parse_set)
    steps: int | None = arg("total training iterations (keeps the constant/decay LR ratio)",
                            default=None)
    max_failures: int = arg("worker failures retried from the latest checkpoint", default=2)
    unpaired: bool = arg("train on the preprocess output's unpaired set (preprocess --unpaired: "
                         "MR and CT from disjoint subjects)", default=False)
    tracking_uri: str | None = arg(f"MLflow tracking URI (default ${mlu.TRACKING_ENV})",
                                   default=None)
    experiment: str = arg("MLflow experiment", default="medgan")
    run_name: str | None = arg("Ray/MLflow run name (default: derived from --output-uri)",
                               default=None)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_failures < 0:
            raise StepInputError(f"max_failures: expected >= 0, got {self.max_failures}")


def run_train(data_uri: str, output_uri: str, **params: Any) -> dict[str, Any]:
    """Train on the preprocess output at ``data_uri`` with Ray Train; publish to ``output_uri``.

    ``params``: the other fields of :class:`TrainParams`. Returns the manifest (also written to
    ``<output_uri>/manifest.json``). MLflow logging is on when ``tracking_uri`` or
    ``$MLFLOW_TRACKING_URI`` is set (else ``mlflow_run_id`` is null).

    >>> m = run_train("work/processed", "work/train", framework="pix2pix", preset="tiny",
    ...               num_workers=2, tracking_uri="sqlite:///work/mlflow.db")  # doctest: +SKIP
    >>> sorted(storage.list_files("work/train"))[:3]                             # doctest: +SKIP
    ['_SUCCESS', 'config.yaml', 'manifest.json']
    """
    p = TrainParams(data_uri, output_uri, **params)
    if is_remote(p.launcher, p.ray_address):  # the same step, run by a Ray job / RayJob
        return launch("components.train", "train", p)
    t0 = time.perf_counter()
    prep = read_manifest(p.data_uri, "preprocess", required=("splits.train",))
    shards, cfg = training_data(prep, build_config(p.framework, p.preset, p.config_uri,
                                                   p.overrides, p.steps, p.task), p.unpaired)
    if not storage.exists(str(shards["train"])):
        field = "train_unpaired" if p.unpaired else "train"
        raise StepInputError(f"{prep.path}: field 'outputs.shards.{field}.path' points to "
                             f"{shards['train']}, which is missing")
    name = ray_run_name(p.output_uri, p.run_name)
    rays = storage.join(p.output_uri, RAY_DIR)
    export = storage.join(p.output_uri, EXPORT_DIR, name)
    tracking = mlu.resolve_tracking_uri(p.tracking_uri)
    with mlu.tracked_run(tracking, p.experiment, run_name=p.run_name or name, config=cfg,
                         tags={"medgan.step": "train", "medgan.ray_run": name,
                               "medgan.framework": cfg.framework},
                         params={"num_workers": p.num_workers, "use_gpu": p.use_gpu,
                                 "data_uri": p.data_uri}) as run_id:
        spec = worker_config(cfg, shards, tracking_uri=tracking, run_id=run_id,
                             fault=fault_from_env(), export_uri=export)
        with ray_session(p.ray_address):
            t_fit = time.perf_counter()
            result = fit(spec, name=name, store=ray_storage(rays), num_workers=p.num_workers,
                         use_gpu=p.use_gpu, resources_per_worker=p.resources_per_worker,
                         max_failures=p.max_failures, num_to_keep=2)
            fit_s = time.perf_counter() - t_fit
        ret = result.return_value or {}
        if ret.get("steps") != cfg.total_steps or result.checkpoint is None:
            raise RuntimeError(f"Ray run {name} ended at step {ret.get('steps')} with checkpoint "
                               f"{result.checkpoint}, expected step {cfg.total_steps}")
        splits = prep.field("splits")
        manifest = step_manifest(
            "train",
            inputs={"data_uri": p.data_uri, "config_uri": p.config_uri, "shards": shards,
                    "preprocess_manifest_sha256": prep.sha256,
                    "preprocess_code_version": prep.data.get("code_version")},
            params={**{k: v for k, v in dataclasses.asdict(p).items()
                       if k not in ("data_uri", "output_uri", "tracking_uri")},
                    "framework": cfg.framework, "preset": None if p.config_uri else p.preset,
                    "overrides": p.overrides or {},
                    "ray_address": p.ray_address or os.environ.get("RAY_ADDRESS"),
                    "config": cfg.to_dict()},
            outputs={"model": MODEL, "config": "config.yaml", "ray_storage_path": rays,
                     "ray_run": storage.join(rays, name),
                     "ray_checkpoint": ray_uri(p.output_uri, result.checkpoint.path)},
            timings={"fit_s": round(fit_s, 3), "total_s": round(time.perf_counter() - t0, 3),
                     "last_attempt_train_s": ret.get("seconds")},
            counts={"steps": ret["steps"], "world_size": p.num_workers,
                    "train_subjects": len(splits.get("train") or []),
                    **({f"unpaired_{k}": len(v) for k, v in
                        (prep.field("outputs.unpaired") or {}).items() if k.endswith("_subjects")}
                       if p.unpaired else {}),
                    "val_subjects": len(splits.get("val") or [])},
            mlflow_run_id=run_id, mlflow_tracking_uri=mlu.redact_uri(tracking),
            mlflow_experiment=p.experiment if run_id else None,
            val_mae=ret.get("val_mae"), steps=ret["steps"], images_per_s=ret.get("images_per_s"),
            ray_storage_path=rays, world_size=p.num_workers, node_ids=ret.get("node_ids"))
        with local_file(storage.join(export, MODEL)) as model, staged(p.output_uri, keep=(RAY_DIR,)) as d:
            shutil.copyfile(model, d / MODEL)
            save_config(cfg, d / "config.yaml")
            write_manifest(d, manifest)
        if run_id:
            val = ret.get("val_mae")
            mlu.log_metrics(tracking, run_id, {"final_val_mae": float("nan") if val is None else val,
                                               "images_per_s": ret.get("images_per_s") or 0.0},
                            step=ret["steps"])
            with tempfile.TemporaryDirectory() as d:
                save_config(cfg, Path(d) / "config.yaml")
                write_manifest(d, manifest)
                mlu.client(tracking).log_artifacts(run_id, d)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m components.train --help`` (exit codes: components.step)."""
    parser = params_parser(TrainParams, "python -m components.train", __doc__.split("\n")[0])
    return run_cli(parser, lambda a: run_train(**dataclasses.asdict(params_from_args(TrainParams, a))),
                   argv, summary=("mlflow_run_id", "val_mae", "steps", "images_per_s",
                                  "ray_storage_path"))


if __name__ == "__main__":
    raise SystemExit(main())
