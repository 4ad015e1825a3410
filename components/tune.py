"""Pipeline step ``tune``: Ray Tune over the loss weights, each trial a Ray Train run.

Inputs and outputs (``data_uri`` / ``output_uri``: a local folder or ``s3://bucket/prefix``)::

    <data_uri>/manifest.json      step "preprocess" (validated), shards under <data_uri>/shards
    <out>/best_config.yaml        full TrainConfig with the best trial's loss weights (what
                                  ``components.train --config-uri`` takes)
    <out>/manifest.json           step "tune": best params, best val_mae, every trial,
                                  the MLflow parent run
    <out>/ray/<name>/             Ray Tune experiment + each trial's Ray Train run

How it runs:

* Where: in this process, or (``ray_address`` a Jobs API URL, or ``launcher=rayjob``) as a Ray
  job / RayJob on a separate cluster that runs this same step (:mod:`components.launch`).
* Search space (:mod:`components.search_space`): by default the ranges the framework and the task declare next to their code
  (``search_space``; pix2pix: ``loss.image`` log-uniform [10, 300], ``loss.gan`` [0.5, 2];
  CycleGAN: ``loss.cycle`` log-uniform [1, 30], ``fw.identity`` [0, 1], ``loss.gan`` [0.5, 2];
  the k-space task adds ``loss.frequency``), so a new framework or task is searched without
  touching this module. A Table-5 term named without a range (``--space loss.structure``) gets
  the loss table's default (``gan_core.losses.TERMS``).
* ``OptunaSearch`` (TPE, seeded) proposes trials; ``ASHAScheduler`` on the ``step`` axis stops
  weak ones after ``grace_period`` steps. The metric is ``val_mae``: validation MAE in HU
  inside the body mask, computed by every report (``val_every = log_every``).
* Each trial is a driver function that builds a ``TorchTrainer`` over the same worker loop as
  ``components.train`` with ``TuneReportCallback``; trial drivers take no CPU, and the number
  of concurrent trials is what the cluster's CPUs/GPUs allow.
* MLflow: a parent run for the study; one child run per trial (tag ``mlflow.parentRunId``), to
  which the trial's rank-0 worker logs params, losses, ``val_mae`` and sample images.
  Children stopped by ASHA are marked KILLED.

Example:
    >>> m = run_tune("work/processed", "work/tune", framework="pix2pix", preset="demo",
    ...              num_samples=8, tracking_uri="sqlite:///work/mlflow.db")  # doctest: +SKIP
    >>> m["best"]["params"], m["best"]["val_mae"]                          # doctest: +SKIP
    ({'loss.gan': 1.3, 'loss.image': 61.2}, 118.4)

CLI: ``python -m components.tune --data-uri URI --output-uri URI [--num-samples 8 ...]``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import mlflow_utils as mlu
from components import storage
from components.launch import RayParams, is_remote, launch
from components.search_space import parse_space, resolve_space, to_domain
from components.raytrain import RAY_DIR, fit, ray_run_name, ray_session, ray_storage, worker_config
from components.step import (StepInputError, arg, build_config, params_from_args, params_parser,
                             read_manifest, run_cli, staged, step_manifest, training_data,
                             write_manifest)
from gan_core.config import parse_set, save_config
from gan_core.presets import apply_overrides, with_total_steps

__all__ = ["METRIC", "MODE", "BEST_CONFIG", "TuneParams", "run_tune", "main"]

log = logging.getLogger(__name__)

METRIC = "val_mae"
#: A trial driver only waits on its TorchTrainer: no CPU (Tune needs a non-empty request).
_DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
MODE = "min"
BEST_CONFIG = "best_config.yaml"


def _trial_driver(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: a child MLflow run and a Ray Train run reporting through Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from gan_core.presets import from_dict

    trial_id = ray.tune.get_context().get_trial_id()
    overrides = {k: v for k, v in config.items() if k in setup["space_keys"]}
    cfg = apply_overrides(from_dict(setup["config"]), overrides)
    tracking = setup["tracking_uri"] if setup["parent_run_id"] else None
    with mlu.tracked_run(tracking, setup["experiment"], run_name=f"trial-{trial_id}",
                         parent_run_id=setup["parent_run_id"], config=cfg,
                         params={"trial_id": trial_id},
                         tags={"medgan.step": "tune", "medgan.trial_id": trial_id}) as run_id:
        try:
            fit(worker_config(cfg, setup["shards"], tracking_uri=tracking, run_id=run_id),
                name=f"{setup['name']}-{trial_id}", store=setup["store"],
                num_workers=setup["num_workers"], use_gpu=setup["use_gpu"],
                resources_per_worker=setup["resources_per_worker"],
                max_failures=setup["max_failures"], num_to_keep=1,
                callbacks=[TuneReportCallback()])
        except BaseException as e:
            log.info("trial %s: fit() ended by %s (a trial stopped by the scheduler ends so): %s",
                     trial_id, type(e).__name__, e)
            raise


#: The Ray cluster's capacity at its autoscaling maximum, JSON (``{"CPU": 32, "GPU": 4}``): set
#: on the RayCluster (infra/kuberay/raycluster.yaml: maxReplicas x each worker's resources).
MAX_RESOURCES_ENV = "MEDGAN_RAY_MAX_RESOURCES"


def _max_concurrent(num_workers: int, use_gpu: bool, resources: dict[str, float] | None) -> int:
    """Trials that fit at once in the cluster's maximum capacity: ``$MEDGAN_RAY_MAX_RESOURCES``
    (an autoscaling cluster, whose nodes now may be fewer), else the resources of the nodes the
    cluster has (a cluster that does not autoscale: a local Ray, a RayJob's fixed cluster)."""
    raw = os.environ.get(MAX_RESOURCES_ENV)
    if raw:
        try:
            total = json.loads(raw)
            if not isinstance(total, dict) or not all(isinstance(v, (int, float)) for v in total.values()):
                raise ValueError("not an object of numbers")
        except ValueError as e:
            raise StepInputError(f"${MAX_RESOURCES_ENV}: expected a JSON object of numbers such as "
                                 f'{{"CPU": 32, "GPU": 4}}, got {raw!r} ({e})') from None
    else:
        import ray

        total = ray.cluster_resources()
    key = "GPU" if use_gpu else "CPU"
    per = float((resources or {}).get(key, 1)) * num_workers
    return max(1, int(float(total.get(key, 0)) // per))


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def _trials_table(results: Any, space_keys: list[str], steps: int) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        m = r.metrics or {}
        df = r.metrics_dataframe
        vals = [] if df is None or METRIC not in df else [v for v in df[METRIC].tolist()
                                                         if _finite(v) is not None]
        last_step = int(m.get("step") or 0)
        status = "error" if r.error else ("completed" if last_step >= steps else "stopped")
        rows.append({"trial_id": m.get("trial_id") or Path(str(r.path)).name,
                     "params": {k: r.config.get(k) for k in space_keys},
                     "val_mae": _finite(m.get(METRIC)),
                     "best_val_mae": min(vals) if vals else None,
                     "steps": last_step, "status": status,
                     "error": str(r.error)[:500] if r.error else None})
    return sorted(rows, key=lambda row: row["trial_id"])


def _pick_best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Lowest final val MAE among trials that ran the full budget (ASHA-stopped trials never
    reached it), else among all trials that reported one."""
    scored = [r for r in rows if r["val_mae"] is not None]
    full = [r for r in scored if r["status"] == "completed"]
    pool = full or scored
    if not pool:
        errors = [r["error"] for r in rows if r["error"]]
        raise RuntimeError(f"no tune trial reported {METRIC}" + (f"; first error: {errors[0]}"
                                                                  if errors else ""))
    return min(pool, key=lambda r: r["val_mae"])


def _close_children(tracking: str, experiment: str, parent: str,
                    rows: list[dict[str, Any]]) -> None:
    """Link trials to their child runs; children of trials stopped by ASHA become KILLED."""
    c = mlu.client(tracking)
    exp_id = mlu.ensure_experiment(tracking, experiment)
    runs = c.search_runs([exp_id], filter_string=f"tags.`{mlu.PARENT_TAG}` = '{parent}'",
                         max_results=10000)
    by_trial = {r.data.tags.get("medgan.trial_id"): r for r in runs}
    for row in rows:
        run = by_trial.get(row["trial_id"])
        row["mlflow_run_id"] = run.info.run_id if run else None
        if run is None:
            continue
        want = {"completed": "FINISHED", "stopped": "KILLED", "error": "FAILED"}[row["status"]]
        # ASHA stops a trial by removing its resources, so its driver sees fit() fail (also at
        # the last rung, when all steps already ran): Tune's view (no error) decides.
        if run.info.status != want and (row["status"] != "error" or run.info.status == "RUNNING"):
            mlu.end_run(tracking, run.info.run_id, want)


@dataclass(frozen=True)
class TuneParams(RayParams):
    """Parameters of the tune step (one CLI option each; the Ray ones: :class:`RayParams`,
    ``num_workers`` per trial)."""

    data_uri: str = arg("preprocess output (local path or s3://)")
    output_uri: str = arg("where best_config.yaml and manifest.json go")
    framework: str = arg("gan_core framework", default="cyclegan")
    preset: str = arg("demo | full | tiny", default="demo")
    task: str = arg("gan_core.tasks name", default="mr2ct")
    num_samples: int = arg("trials", default=4)
    max_steps_per_trial: int | None = arg(
        "trial length (default: the preset's total_steps), rounded up to a multiple of "
        "log_every so the last report carries a validation", default=None)
    grace_period: int | None = arg("ASHA: steps before a trial may be stopped (default: a "
                                   "quarter of the trial, at least one report)", default=None)
    search_space: dict[str, Any] | None = arg(
        "search dimension, repeatable (default: the framework's and task's ranges; a bare KEY takes the loss table's range), e.g. "
        "--space loss.image=loguniform:10:300", default=None, flag="--space", append=True,
        metavar="KEY=KIND:LOW:HIGH", convert=parse_space)
    overrides: dict[str, Any] | None = arg(
        "config override applied before tuning (kept in best_config.yaml), repeatable",
        default=None, flag="--set", append=True, metavar="KEY=VALUE", convert=parse_set)
    max_concurrent_trials: int | None = arg("default: what the cluster's CPUs/GPUs allow",
                                            default=None)
    tracking_uri: str | None = arg(f"MLflow tracking URI (default ${mlu.TRACKING_ENV})",
                                   default=None)
    experiment: str = arg("MLflow experiment", default="medgan")
    seed: int = arg("Optuna seed", default=0)
    name: str | None = arg("Ray Tune experiment name (default: derived from --output-uri)",
                           default=None)
    unpaired: bool = arg("tune on the preprocess output's unpaired set (preprocess --unpaired)",
                         default=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise StepInputError(f"num_samples: expected >= 1, got {self.num_samples}")


def run_tune(data_uri: str, output_uri: str, **params: Any) -> dict[str, Any]:
    """Search loss weights with Optuna + ASHA; write ``best_config.yaml`` and the manifest.

    ``params``: the other fields of :class:`TuneParams`. ``search_space``:
    ``{"loss.image": ["loguniform", 10, 300], ...}`` (default: the framework's loss terms, see
    :func:`default_search_space`). ``overrides``: applied to the preset first (and kept in
    ``best_config.yaml``).

    >>> m = run_tune("work/processed", "work/tune", framework="pix2pix", preset="tiny",
    ...              num_samples=2, tracking_uri="sqlite:///work/mlflow.db")  # doctest: +SKIP
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    p = TuneParams(data_uri, output_uri, **params)
    if is_remote(p.launcher, p.ray_address):  # the same step, run by a Ray job / RayJob
        return launch("components.tune", "tune", p)
    t0 = time.perf_counter()
    prep = read_manifest(p.data_uri, "preprocess", required=("splits.train",))
    # best_config's start
    shards, base = training_data(prep, build_config(p.framework, p.preset, None, p.overrides,
                                                    None, p.task), p.unpaired)
    steps = int(p.max_steps_per_trial or base.total_steps)
    every = max(1, base.log_every)
    steps = max(every, math.ceil(steps / every) * every)
    trial_cfg = apply_overrides(with_total_steps(base, steps), {"val_every": every, "log_every": every,
                                                                 "log_every_s": 0})  # ASHA: every rung
    grace = int(p.grace_period or max(every, steps // 4))
    if not 1 <= grace <= steps:
        raise StepInputError(f"grace_period: expected 1..{steps} steps, got {grace}")
    spec = resolve_space(base, p.search_space)
    space = {k: to_domain(k, v) for k, v in spec.items()}
    study = p.name or ray_run_name(p.output_uri, prefix="tune")
    rays = storage.join(p.output_uri, RAY_DIR)
    store = ray_storage(rays)
    tracking = mlu.resolve_tracking_uri(p.tracking_uri)
    spec_json = json.loads(json.dumps(spec, default=str))
    with mlu.tracked_run(tracking, p.experiment, run_name=study, config=trial_cfg,
                         tags={"medgan.step": "tune", "medgan.framework": p.framework},
                         params={"tune.num_samples": p.num_samples, "tune.max_steps_per_trial": steps,
                                 "tune.grace_period": grace, "tune.seed": p.seed,
                                 "tune.search_space": json.dumps(spec_json),
                                 "tune.num_workers_per_trial": p.num_workers}) as parent:
        setup = {"config": trial_cfg.to_dict(), "space_keys": sorted(space), "shards": shards,
                 "tracking_uri": tracking, "parent_run_id": parent, "experiment": p.experiment,
                 "num_workers": p.num_workers, "use_gpu": p.use_gpu,
                 "resources_per_worker": p.resources_per_worker, "name": study, "store": store,
                 "max_failures": 1}
        with ray_session(p.ray_address):
            concurrent = p.max_concurrent_trials or _max_concurrent(
                p.num_workers, p.use_gpu, p.resources_per_worker)
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(_trial_driver, setup=setup), _DRIVER_RESOURCES),
                param_space=space,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(metric=METRIC, mode=MODE, seed=p.seed),
                    scheduler=ASHAScheduler(time_attr="step", metric=METRIC, mode=MODE, max_t=steps,
                                            grace_period=grace, reduction_factor=2,
                                            stop_last_trials=False),
                    num_samples=p.num_samples, max_concurrent_trials=concurrent),
                run_config=tune.RunConfig(name=study, storage_path=store[0],
                                          storage_filesystem=store[1]))
            t_fit = time.perf_counter()
            results = tuner.fit()
            fit_s = time.perf_counter() - t_fit
        rows = _trials_table(results, sorted(space), steps)
        best = _pick_best(rows)
        if parent:
            _close_children(tracking, p.experiment, parent, rows)
        best_cfg = apply_overrides(base, best["params"])
        counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "error")}
        manifest = step_manifest(
            "tune",
            inputs={"data_uri": p.data_uri, "shards": shards, "preprocess_manifest_sha256": prep.sha256,
                    "preprocess_code_version": prep.data.get("code_version")},
            params={"framework": p.framework, "preset": p.preset, "overrides": p.overrides or {},
                    "num_samples": p.num_samples, "max_steps_per_trial": steps,
                    "grace_period": grace, "search_space": spec_json, "seed": p.seed,
                    "num_workers_per_trial": p.num_workers, "use_gpu": p.use_gpu,
                    "max_concurrent_trials": concurrent, "metric": METRIC, "mode": MODE,
                    "searcher": "optuna", "scheduler": "asha", "experiment": p.experiment},
            outputs={"best_config": BEST_CONFIG, "ray_storage_path": rays,
                     "ray_experiment": storage.join(rays, study)},
            timings={"fit_s": round(fit_s, 3), "total_s": round(time.perf_counter() - t0, 3)},
            counts={"trials": len(rows), **counts},
            best={"trial_id": best["trial_id"], "params": best["params"],
                  "val_mae": best["val_mae"], "mlflow_run_id": best.get("mlflow_run_id")},
            best_params=best["params"], best_val_mae=best["val_mae"], trials=rows,
            mlflow_parent_run_id=parent, mlflow_tracking_uri=mlu.redact_uri(tracking),
            ray_storage_path=rays)
        with staged(p.output_uri, keep=(RAY_DIR,)) as d:
            save_config(best_cfg, d / BEST_CONFIG)
            write_manifest(d, manifest)
        if parent:
            from mlflow.entities import Param

            mlu.log_metrics(tracking, parent, {"best_val_mae": best["val_mae"]})
            mlu.client(tracking).log_batch(parent, params=[
                Param(f"best.{k}", str(v)) for k, v in sorted(best["params"].items())])
            with tempfile.TemporaryDirectory() as d:
                save_config(best_cfg, Path(d) / BEST_CONFIG)
                write_manifest(d, manifest)
                mlu.client(tracking).log_artifacts(parent, d)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m components.tune --help`` (exit codes: components.step)."""
    parser = params_parser(TuneParams, "python -m components.tune", __doc__.split("\n")[0])
    return run_cli(parser, lambda a: run_tune(**dataclasses.asdict(params_from_args(TuneParams, a))),
                   argv, summary=("best", "mlflow_parent_run_id"))


if __name__ == "__main__":
    raise SystemExit(main())
