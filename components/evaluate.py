"""Pipeline step ``evaluate``: score a trained generator on held-out subjects beside the baseline.

Reads a preprocess output (``manifest.json`` with ``step == "preprocess"``, ``splits`` and the
shard folders at ``outputs.shards.<split>.path``, read from there) and a train output
(``model.pt``, ``manifest.json`` with ``step == "train"`` and ``mlflow_run_id``). Every task is
scored by the one evaluator (``gan_core.eval.evaluate.evaluate``) on the subjects of ``split``
in that split's shards: the task's metrics (MR -> CT: SynthRAD2023 MAE/PSNR/SSIM in HU inside
the body mask) next to its non-learned baseline fitted on the train shards, and the task's audit
where it has one (MR -> CT: the lesion hallucination audit); unconditional synthesis is scored
by the in-domain Fréchet distance. A subject that cannot be scored is listed under ``failed``
and the others are still evaluated; when none can be, the step fails naming each subject and
its error.

Output (published atomically through ``components.step.staged``)::

    <out>/metrics.json    per subject + aggregate per method (gan_core.eval.evaluate report)
    <out>/results.txt     the results table (mean ± sd; the audit verdict where the task audits)
    <out>/figures/*.png   the task's figure panels for the first ``figures`` subjects
    <out>/report.html     the 3-D viewer report of those subjects (gan_core.eval.viewer: one
                          self-contained page, no network needed to view it)
    <out>/manifest.json   step "evaluate": aggregate metrics, audit summary, audit_passed, and
                          ``summary``: the flat numeric metrics also logged to MLflow

MLflow (when a tracking URI is given or ``MLFLOW_TRACKING_URI`` is set): metrics
``test_<metric>`` / ``test_<metric>_sd`` for the model, ``test_raw_<metric>`` for its output
before the task's post-processing, ``baseline_<metric>`` for the baseline (the task's names:
``test_mae_hu``, ``test_psnr``, ``test_ssim``, ``baseline_mae_hu`` ... for MR -> CT;
``test_nmse`` ... for k-space), and, where the task audits, the ``audit_*`` counts. They are
logged to the training run (``run_id`` argument, else the train manifest's ``mlflow_run_id``,
else a new run ``evaluate`` in ``experiment``), with metrics.json, results.txt, report.html, the
figures and the manifest as artifacts under ``evaluation/`` and the tags ``audit_passed`` (false, with the
reason in the manifest, when the task has no audit) and ``medgan.task``.

>>> run_evaluate("work/processed", "work/train", "work/eval",               # doctest: +SKIP
...              tracking_uri="http://127.0.0.1:5000")["outputs"]["audit_passed"]
False

CLI: ``python -m components.evaluate --data-uri D --model-uri M --output-uri O``
(exit codes: :mod:`components.step`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import mlflow_utils as mlu
from components import storage
from components.eval_summary import METHOD, flat_metrics
from gan_core.eval.viewer import VIEWER_FILE
from components.step import (MANIFEST, Manifest, StepInputError, arg, finite_or_none, json_safe,
                             local_dir, local_file, params_from_args, params_parser,
                             read_manifest, run_cli, shard_uris, staged, step_manifest,
                             write_manifest)

__all__ = ["EvaluateParams", "run_evaluate", "main"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class EvaluateParams:
    """Parameters of the evaluate step (one CLI option each)."""

    data_uri: str = arg("preprocess output (local folder or s3://)")
    model_uri: str = arg("train output holding model.pt + manifest.json")
    output_uri: str = arg("where metrics.json, figures/ and manifest.json go")
    tracking_uri: str | None = arg(f"MLflow tracking URI (default: ${mlu.TRACKING_ENV}; none: "
                                   "no MLflow logging)", default=None)
    experiment: str = arg("MLflow experiment when a new run is needed", default="medgan")
    run_id: str | None = arg("MLflow run to log to (default: the train manifest's)", default=None)
    split: str = arg("which split of the preprocess manifest", default="test")
    figures: int = arg("PNG figures and the viewer report (report.html) for the first N subjects",
                       default=3)

    def __post_init__(self) -> None:
        if self.figures < 0:
            raise StepInputError(f"figures must be >= 0, got {self.figures}")


# --------------------------------------------------------------------------- inputs


def _split_ids(prep: Manifest, split: str) -> list[str]:
    """The subject ids of ``split`` in the preprocess manifest (checked: folder names)."""
    splits = prep.field("splits")
    if not isinstance(splits, dict) or split not in splits:
        raise StepInputError(f"{prep.path}: field 'splits' has no split {split!r} "
                             f"(has {sorted(splits) if isinstance(splits, dict) else splits!r})")
    ids = splits[split]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise StepInputError(f"{prep.path}: field 'splits.{split}' must be a non-empty list of "
                             f"subject ids, got {ids!r}")
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i in (".", "..")]
    if bad:
        raise StepInputError(f"{prep.path}: field 'splits.{split}' holds invalid subject ids "
                             f"{bad!r} (expected folder names under subjects/)")
    return ids


def _shard_dir(uri: str, split: str) -> Path:
    """The local folder of the ``split`` shards at ``uri`` (``s3://``: the node's cache)."""
    d = local_dir(uri)
    if not (d / "index.json").is_file():
        raise StepInputError(f"{uri}: not a shard directory (no index.json); expected the "
                             f"preprocess step's {split} shards")
    return d


# --------------------------------------------------------------------------- MLflow


def _log_mlflow(tracking: str, experiment: str, run_id: str | None, metrics: dict[str, float],
                tags: dict[str, str], out: Path) -> str:
    """Log metrics, tags and the evaluation files to ``run_id`` (or a new run); returns the id."""
    from mlflow.entities import RunTag
    from mlflow.exceptions import MlflowException

    def log_to(rid: str) -> None:
        c = mlu.client(tracking)
        mlu.log_metrics(tracking, rid, dict(sorted(metrics.items())), step=0)
        c.log_batch(rid, tags=[RunTag(k, v) for k, v in sorted(tags.items())])
        for name in ("metrics.json", "results.txt", VIEWER_FILE):
            if (out / name).is_file():
                c.log_artifact(rid, str(out / name), artifact_path="evaluation")
        if (out / "figures").is_dir():
            c.log_artifacts(rid, str(out / "figures"), artifact_path="evaluation/figures")

    if run_id:
        try:
            mlu.client(tracking).get_run(run_id)
        except MlflowException as exc:
            raise StepInputError(f"MLflow run {run_id!r} not found at "
                                 f"{mlu.redact_uri(tracking)}: {exc.message}") from None
        log_to(run_id)
        return run_id
    with mlu.tracked_run(tracking, experiment, run_name="evaluate",
                         tags={"medgan.step": "evaluate"}) as new_id:
        log_to(str(new_id))
    return str(new_id)


# --------------------------------------------------------------------------- the step


def run_evaluate(data_uri: str, model_uri: str, output_uri: str, **params: Any) -> dict[str, Any]:
    """Evaluate ``model_uri``'s ``model.pt`` on ``split`` of ``data_uri``; returns the manifest.

    ``params``: the other fields of :class:`EvaluateParams` (``tracking_uri``, ``experiment``,
    ``run_id``, ``split``, ``figures``). Bad input raises
    :class:`~components.step.StepInputError` naming the file or field; nothing is published.

    >>> m = run_evaluate("work/processed", "work/train", "work/eval")   # doctest: +SKIP
    >>> m["outputs"]["aggregate"]["model"]["mae"], m["outputs"]["audit_passed"]  # doctest: +SKIP
    (142.3, False)
    """
    from gan_core.engine import MODEL, load_model, pick_device
    from gan_core.eval.evaluate import EvaluationFailed, evaluate
    from gan_core.eval.report import results_table
    from gan_core.tasks import build_task

    p = EvaluateParams(data_uri, model_uri, output_uri, **params)
    t_start = time.monotonic()
    tracking = mlu.resolve_tracking_uri(p.tracking_uri)
    prep = read_manifest(p.data_uri, "preprocess", required=("splits",))
    ids = _split_ids(prep, p.split)
    train_m = read_manifest(p.model_uri, "train")
    run_id = p.run_id or train_m.value("mlflow_run_id")
    if run_id and not tracking:
        log.warning("train manifest names MLflow run %s but no tracking URI is set "
                    "(--tracking-uri / MLFLOW_TRACKING_URI): nothing is logged to MLflow", run_id)
    shards = shard_uris(prep, ("train", p.split), optional=())

    timings: dict[str, float] = {}
    model_uri_file = storage.join(p.model_uri, MODEL)
    with local_file(model_uri_file) as model_path, staged(p.output_uri) as out:
        model_sha = storage.sha256_file(model_path)
        t0 = time.monotonic()
        try:
            fw = load_model(model_path, pick_device())
        except (ValueError, FileNotFoundError) as exc:
            raise StepInputError(f"{model_uri_file}: {exc}") from None
        task = build_task(fw.cfg.task)
        train_dir = _shard_dir(str(shards["train"]), "train")
        test_dir = _shard_dir(str(shards[p.split]), p.split)
        timings["load_s"] = round(time.monotonic() - t0, 3)

        t0 = time.monotonic()
        try:
            report = evaluate({METHOD: fw}, task, test_dir, out, train_shards=train_dir,
                              figures=p.figures, subjects=ids)
        except EvaluationFailed as exc:
            raise StepInputError(f"no subject of split {p.split!r} in {p.data_uri} could be "
                                 f"evaluated: {exc.reasons}") from None
        timings["evaluate_s"] = round(time.monotonic() - t0, 3)
        for f in report["failed"]:
            log.warning("subject %s not evaluated: %s", f["subject"], f["error"])
        (out / "results.txt").write_text(results_table(report) + "\n")
        task_audit = (report.get("audit") or {}).get(METHOD)
        audit = task_audit or {"passed": False, "reason": f"task {task.name!r} has no audit"}
        agg = {name: {k: finite_or_none(v["mean"]) for k, v in a.items() if isinstance(v, dict)}
               for name, a in report["aggregate"].items() if a}
        figs = sorted(f.name for f in (out / "figures").glob("*.png")) if (out / "figures").is_dir() else []

        metrics = flat_metrics(report, task_audit, p.split, task.metric_aliases)
        logged_run = None
        if tracking:
            t0 = time.monotonic()
            tags = {"audit_passed": str(audit["passed"]).lower(), "evaluation_uri": p.output_uri,
                    "evaluation_split": p.split, "medgan.task": task.name}
            logged_run = _log_mlflow(tracking, p.experiment, run_id, metrics, tags, out)
            timings["mlflow_s"] = round(time.monotonic() - t0, 3)
        timings["total_s"] = round(time.monotonic() - t_start, 3)
        evaluated = (len(report["per_subject"]) if "per_subject" in report
                     else len(ids) - len(report["failed"]))
        manifest = json_safe(step_manifest(
            "evaluate",
            inputs={"data_uri": p.data_uri, "model_uri": p.model_uri,
                    "data_manifest_sha256": prep.sha256, "model_sha256": model_sha},
            params={"split": p.split, "figures": p.figures, "experiment": p.experiment,
                    "tracking_uri": mlu.redact_uri(tracking), "task": task.name},
            outputs={"metrics": "metrics.json", "results": "results.txt",
                     "viewer": VIEWER_FILE if (out / VIEWER_FILE).is_file() else None,
                     "figures": [f"figures/{n}" for n in figs],
                     "aggregate": agg, "audit": audit, "audit_passed": audit["passed"],
                     "failed": report["failed"], "mlflow_run_id": logged_run,
                     "framework": fw.cfg.framework, "task": task.name, "unit": task.target_unit},
            timings=timings,
            summary=metrics,
            counts={"subjects": len(ids), "evaluated": evaluated,
                    "failed": len(report["failed"]), "figures": len(figs)}))
        write_manifest(out, manifest)
        if logged_run:
            mlu.client(tracking).log_artifact(logged_run, str(out / MANIFEST), "evaluation")
    log.info("evaluate %s (task %s) on %s/%s -> %s: %s; audit %s", p.model_uri, task.name,
             p.data_uri, p.split, p.output_uri, agg.get(METHOD),
             "passed" if audit["passed"] else "failed")
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints a JSON summary (exit codes: :mod:`components.step`)."""
    parser = params_parser(EvaluateParams, "python -m components.evaluate",
                           "Evaluate a trained generator on held-out subjects beside the task's "
                           "baseline; metrics, figures, audit, MLflow.")

    def run(a: Any) -> dict[str, Any]:
        m = run_evaluate(**dataclasses.asdict(params_from_args(EvaluateParams, a)))
        o = m["outputs"]
        return {"output_uri": a.output_uri, "aggregate": o["aggregate"],
                "audit_passed": o["audit_passed"], "mlflow_run_id": o["mlflow_run_id"],
                **m["counts"]}

    return run_cli(parser, run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
