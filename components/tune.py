"""Pipeline step ``tune``: Ray Tune over the loss weights, each trial a Ray Train run.

Inputs and outputs (``data_uri`` / ``output_uri``: a local folder or ``s3://bucket/prefix``)::

    <data_uri>/manifest.json      step "preprocess" (validated), shards under <data_uri>/shards
    <out>/best_config.yaml        full TrainConfig with the best trial's loss weights (what
                                  ``components.train --config-uri`` takes)
    <out>/manifest.json           step "tune": best params, best val_mae, every trial,
                                  the MLflow parent run
    <out>/ray/<name>/             Ray Tune experiment + each trial's Ray Train run

How it runs:

* Search space: by default the ranges the framework and the task declare next to their code
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

import argparse
import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import gan_core
from components import mlflow_utils as mlu
from components import storage
from components.train import (RAY_DIR, TrainStepError, build_config, load_preprocess_manifest,
                              publish_output, ray_run_name, ray_session, ray_storage,
                              train_loop_per_worker, with_total_steps)
from gan_core.config import TrainConfig, save_config
from gan_core.presets import apply_overrides

__all__ = ["METRIC", "MODE", "default_search_space", "to_domain", "run_tune", "main"]

log = logging.getLogger(__name__)

METRIC = "val_mae"
#: A trial driver only waits on its TorchTrainer: no CPU (Tune needs a non-empty request).
_DRIVER_RESOURCES = {"cpu": 0, "memory": 1}
MODE = "min"
MANIFEST = "manifest.json"
BEST_CONFIG = "best_config.yaml"

def default_search_space(cfg: TrainConfig, named: Iterable[str] = ()) -> dict[str, list]:
    """``{"<dotted key>": [kind, low, high]}``: the framework's ``search_space`` plus the task's
    (the framework's range wins for a key both declare), plus, for each key in ``named`` that
    neither declares, the loss table's default range of that Table-5 term (``loss.structure``).

    >>> from components.train import build_config
    >>> default_search_space(build_config("cyclegan", "tiny"))["loss.cycle"]
    ['loguniform', 1.0, 30.0]
    >>> default_search_space(build_config("pix2pix", "tiny"), ["loss.structure"])["loss.structure"]
    ['uniform', 0.0, 20.0]
    """
    from gan_core.frameworks import get_framework
    from gan_core.losses import TERMS
    from gan_core.tasks import get_task

    try:
        space = dict(get_framework(cfg.framework).search_space)
        task_space = get_task(cfg.task.name).search_space
    except KeyError as e:
        raise TrainStepError(str(e.args[0])) from None
    for key, rng in task_space.items():
        space.setdefault(key, rng)
    for key in named:
        if key in space:
            continue
        section, _, term = key.partition(".")
        if section != "loss" or term not in TERMS:
            raise TrainStepError(f"search space {key!r}: no default range (the loss table has "
                                 f"loss.<term> for {list(TERMS)}); give KEY=KIND:LOW:HIGH")
        space[key] = TERMS[term].search
    return {k: list(v) for k, v in space.items()}


def to_domain(key: str, spec: Any) -> Any:
    """A Ray Tune domain from ``[kind, low, high]`` / ``{"type", "low", "high"}`` /
    ``["choice", [values]]``, a Tune domain (kept) or a constant (kept).

    >>> d = to_domain("loss.image", ["loguniform", 10, 300]); (d.lower, d.upper)
    (10.0, 300.0)
    """
    from ray import tune
    from ray.tune.search.sample import Domain

    if isinstance(spec, Domain) or isinstance(spec, (int, float, str, bool)):
        return spec
    if isinstance(spec, dict):
        kind = spec.get("type")
        args = [spec.get("values")] if kind == "choice" else [spec.get("low"), spec.get("high")]
    elif isinstance(spec, (list, tuple)) and spec:
        kind, args = spec[0], list(spec[1:])
    else:
        raise TrainStepError(f"search space {key!r}: expected [kind, low, high], got {spec!r}")
    try:
        if kind == "uniform":
            lo, hi = (float(a) for a in args)
            return tune.uniform(lo, hi)
        if kind == "loguniform":
            lo, hi = (float(a) for a in args)
            if lo <= 0:
                raise ValueError("loguniform needs low > 0")
            return tune.loguniform(lo, hi)
        if kind == "choice":
            (values,) = args
            return tune.choice(list(values))
    except (TypeError, ValueError) as e:
        raise TrainStepError(f"search space {key!r}: bad bounds {args!r} for {kind!r} ({e})") from None
    raise TrainStepError(f"search space {key!r}: unknown kind {kind!r}; "
                         f"expected uniform, loguniform or choice")


def _trial_driver(config: dict[str, Any], setup: dict[str, Any]) -> None:
    """One Tune trial: a child MLflow run and a ``TorchTrainer`` reporting through Tune."""
    import ray.train
    import ray.tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from gan_core.presets import from_dict

    trial_id = ray.tune.get_context().get_trial_id()
    overrides = {k: v for k, v in config.items() if k in setup["space_keys"]}
    cfg = apply_overrides(from_dict(setup["config"]), overrides)
    tracking, run_id = setup["tracking_uri"], None
    if tracking and setup["parent_run_id"]:
        run_id = mlu.create_run(tracking, setup["experiment"], run_name=f"trial-{trial_id}",
                                parent_run_id=setup["parent_run_id"],
                                tags={"medgan.step": "tune", "medgan.trial_id": trial_id})
        mlu.log_config(tracking, run_id, cfg, {"trial_id": trial_id})
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"config": cfg.to_dict(), "shards_uri": setup["shards_uri"],
                           "mlflow": {"tracking_uri": tracking, "run_id": run_id} if run_id else None,
                           "fault": None},
        torch_config=TorchConfig(backend="nccl" if setup["use_gpu"] else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=setup["num_workers"],
                                               use_gpu=setup["use_gpu"],
                                               resources_per_worker=setup["resources_per_worker"]),
        run_config=ray.train.RunConfig(
            name=f"{setup['name']}-{trial_id}", storage_path=setup["storage_path"],
            storage_filesystem=setup["storage_filesystem"], callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=setup["max_failures"]),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1)))
    try:
        trainer.fit()
    except BaseException as e:
        log.info("trial %s: fit() ended by %s (a trial stopped by the scheduler ends so): %s",
                 trial_id, type(e).__name__, e)
        if run_id:
            with contextlib.suppress(Exception):
                mlu.end_run(tracking, run_id, "FAILED")
        raise
    if run_id:
        mlu.end_run(tracking, run_id, "FINISHED")


def _max_concurrent(num_workers: int, use_gpu: bool, resources: dict[str, float] | None) -> int:
    import ray

    total = ray.cluster_resources()
    if use_gpu:
        per = float((resources or {}).get("GPU", 1)) * num_workers
        return max(1, int(total.get("GPU", 0) // per))
    per = float((resources or {}).get("CPU", 1)) * num_workers
    return max(1, int(total.get("CPU", 1) // per))


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


def run_tune(data_uri: str, output_uri: str, *, framework: str = "cyclegan", preset: str = "demo",
             task: str = "mr2ct", num_samples: int = 4, max_steps_per_trial: int | None = None,
             grace_period: int | None = None, search_space: dict[str, Any] | None = None,
             num_workers_per_trial: int = 1, use_gpu: bool = False,
             resources_per_worker: dict[str, float] | None = None,
             overrides: dict[str, Any] | None = None, max_concurrent_trials: int | None = None,
             tracking_uri: str | None = None, experiment: str = "medgan", seed: int = 0,
             name: str | None = None, ray_address: str | None = None) -> dict[str, Any]:
    """Search loss weights with Optuna + ASHA; write ``best_config.yaml`` and the manifest.

    ``max_steps_per_trial``: trial length (default: the preset's ``total_steps``), rounded up to
    a multiple of ``log_every`` so the last report carries a validation. ``grace_period``: ASHA's
    minimum steps before stopping a trial (default: a quarter of the trial, at least one report).
    ``search_space``: ``{"loss.image": ["loguniform", 10, 300], ...}``; a key mapped to ``None``
    takes its default range (default: the framework's and the task's ranges, see
    :func:`default_search_space`). ``overrides``: applied to the preset first
    (and kept in ``best_config.yaml``).

    >>> m = run_tune("work/processed", "work/tune", framework="pix2pix", preset="tiny",
    ...              num_samples=2, tracking_uri="sqlite:///work/mlflow.db")  # doctest: +SKIP
    """
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    t0 = time.perf_counter()
    if num_samples < 1:
        raise TrainStepError(f"num_samples: expected >= 1, got {num_samples}")
    prep = load_preprocess_manifest(data_uri)
    shards_uri = storage.join(data_uri, "shards")
    base = build_config(framework, preset, None, overrides, None, task)  # what best_config.yaml starts from
    steps = int(max_steps_per_trial or base.total_steps)
    every = max(1, base.log_every)
    steps = max(every, math.ceil(steps / every) * every)
    trial_cfg = with_total_steps(base, steps)
    trial_cfg = apply_overrides(trial_cfg, {"val_every": every, "log_every": every})
    grace = int(grace_period or max(every, steps // 4))
    if not 1 <= grace <= steps:
        raise TrainStepError(f"grace_period: expected 1..{steps} steps, got {grace}")
    if search_space is None:
        spec = default_search_space(base)
    else:
        defaults = default_search_space(base, [k for k, v in search_space.items() if v is None])
        spec = {k: defaults[k] if v is None else v for k, v in search_space.items()}
    if not spec:
        raise TrainStepError("search_space is empty: nothing to tune")
    unknown = sorted(set(spec) - set(base.flat()))
    if unknown:
        raise TrainStepError(f"search_space: unknown config fields {unknown}; expected dotted "
                             f"keys such as {sorted(default_search_space(base))}")
    space = {k: to_domain(k, v) for k, v in spec.items()}
    study = name or ray_run_name(output_uri).replace("train-", "tune-", 1)
    ray_uri = storage.join(output_uri, RAY_DIR)
    storage_path, filesystem = ray_storage(ray_uri)
    tracking = mlu.resolve_tracking_uri(tracking_uri)
    parent = None
    spec_json = json.loads(json.dumps(spec, default=str))
    if tracking:
        parent = mlu.create_run(tracking, experiment, run_name=study,
                                tags={"medgan.step": "tune", "medgan.framework": framework})
        mlu.log_config(tracking, parent, trial_cfg, {
            "tune.num_samples": num_samples, "tune.max_steps_per_trial": steps,
            "tune.grace_period": grace, "tune.seed": seed, "tune.search_space": json.dumps(spec_json),
            "tune.num_workers_per_trial": num_workers_per_trial})
    else:
        log.warning("no MLflow tracking URI (--tracking-uri or %s): not logging to MLflow",
                    mlu.TRACKING_ENV)
    setup = {"config": trial_cfg.to_dict(), "space_keys": sorted(space), "shards_uri": shards_uri,
             "tracking_uri": tracking, "parent_run_id": parent, "experiment": experiment,
             "num_workers": num_workers_per_trial, "use_gpu": use_gpu,
             "resources_per_worker": resources_per_worker, "name": study,
             "storage_path": storage_path, "storage_filesystem": filesystem, "max_failures": 1}
    try:
        with ray_session(ray_address):
            concurrent = max_concurrent_trials or _max_concurrent(num_workers_per_trial, use_gpu,
                                                                  resources_per_worker)
            tuner = tune.Tuner(
                tune.with_resources(tune.with_parameters(_trial_driver, setup=setup), _DRIVER_RESOURCES),
                param_space=space,
                tune_config=tune.TuneConfig(
                    search_alg=OptunaSearch(metric=METRIC, mode=MODE, seed=seed),
                    scheduler=ASHAScheduler(time_attr="step", metric=METRIC, mode=MODE, max_t=steps,
                                            grace_period=grace, reduction_factor=2,
                                            stop_last_trials=False),
                    num_samples=num_samples, max_concurrent_trials=concurrent),
                run_config=tune.RunConfig(name=study, storage_path=storage_path,
                                          storage_filesystem=filesystem))
            t_fit = time.perf_counter()
            results = tuner.fit()
            fit_s = time.perf_counter() - t_fit
        rows = _trials_table(results, sorted(space), steps)
        best = _pick_best(rows)
        if tracking and parent:
            _close_children(tracking, experiment, parent, rows)
        best_cfg = apply_overrides(base, best["params"])
        counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "error")}
        manifest: dict[str, Any] = {
            "step": "tune",
            "inputs": {"data_uri": data_uri, "preprocess_code_version": prep.get("code_version")},
            "params": {"framework": framework, "preset": preset, "overrides": overrides or {},
                       "num_samples": num_samples, "max_steps_per_trial": steps,
                       "grace_period": grace, "search_space": spec_json, "seed": seed,
                       "num_workers_per_trial": num_workers_per_trial, "use_gpu": use_gpu,
                       "max_concurrent_trials": concurrent, "metric": METRIC, "mode": MODE,
                       "searcher": "optuna", "scheduler": "asha", "experiment": experiment},
            "outputs": {"best_config": BEST_CONFIG, "ray_storage_path": ray_uri,
                        "ray_experiment": storage.join(ray_uri, study)},
            "counts": {"trials": len(rows), **counts},
            "timings": {"fit_s": round(fit_s, 3), "total_s": round(time.perf_counter() - t0, 3)},
            "code_version": gan_core.__version__,
            "best": {"trial_id": best["trial_id"], "params": best["params"],
                     "val_mae": best["val_mae"], "mlflow_run_id": best.get("mlflow_run_id")},
            "best_params": best["params"],
            "best_val_mae": best["val_mae"],
            "trials": rows,
            "mlflow_parent_run_id": parent,
            "mlflow_tracking_uri": mlu.redact_uri(tracking),
            "ray_storage_path": ray_uri,
        }

        def fill(d: Path) -> None:
            save_config(best_cfg, d / BEST_CONFIG)
            storage.write_json(str(d / MANIFEST), manifest)

        publish_output(output_uri, fill)
        if tracking and parent:
            mlu.log_metrics(tracking, parent, {"best_val_mae": best["val_mae"]})
            from mlflow.entities import Param

            mlu.client(tracking).log_batch(parent, params=[
                Param(f"best.{k}", str(v)) for k, v in sorted(best["params"].items())])
            with tempfile.TemporaryDirectory() as d:
                save_config(best_cfg, Path(d) / BEST_CONFIG)
                storage.write_json(str(Path(d) / MANIFEST), manifest)
                mlu.client(tracking).log_artifacts(parent, d)
            mlu.end_run(tracking, parent, "FINISHED")
    except BaseException:
        if parent:
            with contextlib.suppress(Exception):
                mlu.end_run(tracking, parent, "FAILED")
        raise
    return manifest


def _parse_space(items: list[str] | None) -> dict[str, list | None] | None:
    """``["loss.image=loguniform:10:300", "loss.gan=choice:0.5,1,2", "loss.structure"]`` -> spec
    dict (a bare key: ``None``, its default range)."""
    if not items:
        return None
    out: dict[str, list | None] = {}
    for item in items:
        key, sep, rhs = item.partition("=")
        parts = rhs.split(":")
        if not sep and key.strip():
            out[key.strip()] = None
            continue
        if not sep or len(parts) < 2:
            raise TrainStepError(f"--space expects KEY=KIND:LOW:HIGH, KEY=choice:A,B,... or KEY, got {item!r}")
        if parts[0] == "choice":
            out[key.strip()] = ["choice", [json.loads(v) for v in parts[1].split(",")]]
        elif len(parts) == 3:
            out[key.strip()] = [parts[0], float(parts[1]), float(parts[2])]
        else:
            raise TrainStepError(f"--space {item!r}: expected KIND:LOW:HIGH")
    return out


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: ``python -m components.tune --help``."""
    from gan_core.config import parse_set

    p = argparse.ArgumentParser(prog="python -m components.tune", description=__doc__.split("\n")[0])
    p.add_argument("--data-uri", required=True, help="preprocess output (local path or s3://)")
    p.add_argument("--output-uri", required=True, help="where best_config.yaml and manifest go")
    p.add_argument("--framework", default="cyclegan")
    p.add_argument("--preset", default="demo")
    p.add_argument("--task", default="mr2ct", help="gan_core.tasks name")
    p.add_argument("--set", dest="overrides", action="append", metavar="KEY=VALUE",
                   help="config override applied before tuning, repeatable")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--max-steps-per-trial", type=int)
    p.add_argument("--grace-period", type=int, help="ASHA: steps before a trial may be stopped")
    p.add_argument("--space", action="append", metavar="KEY=KIND:LOW:HIGH",
                   help="search dimension, repeatable (default: the framework's and task's "
                        "ranges), e.g. --space loss.image=loguniform:10:300; a bare Table-5 "
                        "term (--space loss.structure) takes the loss table's default range")
    p.add_argument("--num-workers-per-trial", type=int, default=1)
    p.add_argument("--use-gpu", action="store_true")
    p.add_argument("--max-concurrent-trials", type=int)
    p.add_argument("--tracking-uri", help=f"MLflow tracking URI (default ${mlu.TRACKING_ENV})")
    p.add_argument("--experiment", default="medgan")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--name", help="Ray Tune experiment name (default: derived from --output-uri)")
    p.add_argument("--ray-address", help="Ray cluster address (default $RAY_ADDRESS or a local Ray)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = run_tune(a.data_uri, a.output_uri, framework=a.framework, preset=a.preset, task=a.task,
                     num_samples=a.num_samples, max_steps_per_trial=a.max_steps_per_trial,
                     grace_period=a.grace_period, search_space=_parse_space(a.space),
                     num_workers_per_trial=a.num_workers_per_trial, use_gpu=a.use_gpu,
                     overrides=parse_set(a.overrides), max_concurrent_trials=a.max_concurrent_trials,
                     tracking_uri=a.tracking_uri, experiment=a.experiment, seed=a.seed,
                     name=a.name, ray_address=a.ray_address)
    except (TrainStepError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"best": m["best"], "mlflow_parent_run_id": m["mlflow_parent_run_id"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
