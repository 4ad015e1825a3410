"""Pipeline step ``evaluate``: score a trained generator on held-out subjects beside the baseline.

Reads a preprocess output (``manifest.json`` with ``step == "preprocess"`` and ``splits``,
``shards/{train,<split>}``) and a train output (``model.pt``, ``manifest.json`` with
``step == "train"`` and ``mlflow_run_id``). Every task is scored by the one evaluator
(``gan_core.eval.evaluate.evaluate``) on the subjects of ``split`` in ``shards/<split>``: the
task's metrics (MR -> CT: SynthRAD2023 MAE/PSNR/SSIM in HU inside the body mask) next to its
non-learned baseline fitted on ``shards/train``, and the task's audit where it has one (MR -> CT:
the lesion hallucination audit); unconditional synthesis is scored by the in-domain Fréchet
distance. A subject that cannot be scored is listed under ``failed`` and the others are still
evaluated; when none can be, the step fails naming each subject and its error.

Output (published atomically through ``storage.staged_output``)::

    <out>/metrics.json    per subject + aggregate per method (gan_core.eval.evaluate report)
    <out>/results.txt     the results table (mean ± sd; the audit verdict where the task audits)
    <out>/figures/*.png   the task's figure panels for the first ``figures`` subjects
    <out>/manifest.json   step "evaluate": aggregate metrics, audit summary, audit_passed, and
                          ``summary``: the flat numeric metrics also logged to MLflow

MLflow (when a tracking URI is given or ``MLFLOW_TRACKING_URI`` is set): metrics
``test_<metric>`` / ``test_<metric>_sd`` for the model, ``test_raw_<metric>`` for its output
before the task's post-processing, ``baseline_<metric>`` for the baseline (the task's names:
``test_mae_hu``, ``test_psnr``, ``test_ssim``, ``baseline_mae_hu`` ... for MR -> CT;
``test_nmse`` ... for k-space), and, where the task audits, the ``audit_*`` counts. They are
logged to the training run (``run_id`` argument, else the train manifest's ``mlflow_run_id``,
else a new run in ``experiment``), with metrics.json, results.txt, the figures and the manifest
as artifacts under ``evaluation/`` and the tags ``audit_passed`` (false, with the reason in the
manifest, when the task has no audit) and ``medgan.task``.

>>> run_evaluate("work/processed", "work/train", "work/eval",               # doctest: +SKIP
...              tracking_uri="http://127.0.0.1:5000")["outputs"]["audit_passed"]
False

CLI: ``python -m components.evaluate --data-uri D --model-uri M --output-uri O``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gan_core
from components import storage

__all__ = [
    "EvaluateError", "run_evaluate", "read_manifest", "resolve_tracking_uri", "redact_uri",
    "code_info", "finite_or_none", "main",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_FILE = "model.pt"
METHOD = "model"  # key of the trained generator in metrics.json
BASELINE = "baseline"  # the task's non-learned method (gan_core.eval.evaluate.BASELINE)


from components.mlflow_utils import redact_uri, resolve_tracking_uri  # noqa: E402  (one source of truth)


class EvaluateError(ValueError):
    """A bad input to the evaluate/register steps; the message names the URI and field."""


# --------------------------------------------------------------------------- small shared helpers


def finite_or_none(x: Any) -> float | None:
    """A float for JSON/MLflow, or None for NaN/inf/non-numbers.

    >>> finite_or_none(1), finite_or_none(float("inf")), finite_or_none("x")
    (1.0, None, None)
    """
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _json_safe(obj: Any) -> Any:
    """Replace non-finite floats by None, recursively (manifests are strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def code_info() -> dict[str, str | None]:
    """``{"gan_core": version, "git_commit": sha or None}`` (``$MEDGAN_GIT_COMMIT`` wins over git).

    >>> code_info()["gan_core"] == gan_core.__version__
    True
    """
    commit = os.environ.get("MEDGAN_GIT_COMMIT") or None
    if commit is None:
        try:
            out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(gan_core.__file__).parent,
                                 capture_output=True, text=True, timeout=5, check=False)
            commit = out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None
        except (OSError, subprocess.SubprocessError):
            commit = None
    return {"gan_core": gan_core.__version__, "git_commit": commit}


def _get(d: dict[str, Any], dotted: str) -> Any:
    cur: Any = d
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            raise KeyError(dotted)
        cur = cur[part]
    return cur


def manifest_value(manifest: dict[str, Any], key: str) -> Any:
    """``key`` from a manifest's top level, else its ``outputs`` or ``params`` (None if absent)."""
    for where in (manifest, manifest.get("outputs") or {}, manifest.get("params") or {}):
        if isinstance(where, dict) and where.get(key) is not None:
            return where[key]
    return None


def read_manifest(uri: str, step: str, required: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    """Read ``<uri>/manifest.json``, check ``step`` and dotted ``required`` keys.

    Returns ``(manifest, sha256 of its bytes)``; raises :class:`EvaluateError` naming the file.

    >>> read_manifest("/nonexistent", "train")                     # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    EvaluateError: /nonexistent/manifest.json: not found (expected the output of step 'train')
    """
    path = storage.join(uri, MANIFEST)
    try:
        raw = storage.read_bytes(path)
    except storage.StorageNotFoundError as exc:
        raise EvaluateError(f"{path}: not found (expected the output of step {step!r})") from exc
    try:
        manifest = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvaluateError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict):
        raise EvaluateError(f"{path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("step") != step:
        raise EvaluateError(f"{path}: field 'step' is {manifest.get('step')!r}, expected {step!r}")
    for key in required:
        try:
            _get(manifest, key)
        except KeyError:
            raise EvaluateError(f"{path}: missing field {key!r} (step {step!r})") from None
    return manifest, hashlib.sha256(raw).hexdigest()


@contextlib.contextmanager
def fetched_file(uri: str) -> Iterator[Path]:
    """A local path for the file at ``uri`` (S3: downloaded to a temp dir removed on exit)."""
    if not storage.is_s3(uri):
        p = Path(uri[len("file://"):] if uri.startswith("file://") else uri)
        if not p.is_file():
            raise EvaluateError(f"{uri}: file not found")
        yield p
        return
    tmp = Path(tempfile.mkdtemp(prefix="medgan-file-"))
    try:
        dst = tmp / Path(storage.split_s3(uri)[1]).name
        try:
            dst.write_bytes(storage.read_bytes(uri))
        except storage.StorageNotFoundError as exc:
            raise EvaluateError(f"{uri}: file not found") from exc
        yield dst
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- inputs


def _shards(data_uri: str, root: Path | None, work: Path, split: str) -> Path:
    """The local folder of the preprocess step's ``shards/<split>`` (S3: downloaded)."""
    if root is not None:
        d = root / "shards" / split
    else:
        d = work / "shards" / split
        try:
            storage.download_dir(storage.join(data_uri, "shards", split), d)
        except storage.StorageNotFoundError as exc:
            raise EvaluateError(f"{storage.join(data_uri, 'shards', split)}: no {split} shards") from exc
    if not (d / "index.json").is_file():
        raise EvaluateError(f"{storage.join(data_uri, 'shards', split)}: not a shard directory "
                            f"(no index.json); expected the preprocess step's {split} shards")
    return d


# --------------------------------------------------------------------------- metrics


def _metric_prefixes(split: str) -> tuple[str, str]:
    """MLflow metric prefixes: ``test``/``baseline`` for the test split, else ``eval_<split>``/
    ``baseline_<split>`` (so an evaluation of ``val`` never overwrites training's ``val_mae``)."""
    return ("test", "baseline") if split == "test" else (f"eval_{split}", f"baseline_{split}")


def _mlflow_metrics(report: dict[str, Any], audit: dict[str, Any] | None, split: str,
                    aliases: dict[str, str]) -> dict[str, float]:
    """Flat metrics: mean and sd of each of the task's metrics (named through ``aliases``, e.g.
    ``mae`` -> ``mae_hu``) for the model, its raw output and the baseline; the numeric fields
    of the audit summary as ``audit_*``; subject counts."""
    model_p, base_p = _metric_prefixes(split)
    out: dict[str, float] = {}
    for name, prefix in ((METHOD, model_p), (f"{METHOD}-raw", f"{model_p}_raw"), (BASELINE, base_p)):
        for key, v in (report["aggregate"].get(name) or {}).items():
            if isinstance(v, dict):
                for stat, tail in (("mean", ""), ("sd", "_sd")):
                    x = finite_or_none(v.get(stat))
                    if x is not None:
                        out[f"{prefix}_{aliases.get(key, key)}{tail}"] = x
    if audit is not None:
        for key, v in audit.items():
            if isinstance(v, bool):
                out[f"audit_{key}"] = 1.0 if v else 0.0
            elif isinstance(v, (int, float)):
                out[f"audit_{key}"] = float(v)
    if "per_subject" in report:
        out[f"{model_p}_subjects"] = float(len(report["per_subject"]))
        out[f"{model_p}_subjects_failed"] = float(len(report["failed"]))
    return out


# --------------------------------------------------------------------------- MLflow


def _log_mlflow(tracking_uri: str, experiment: str, run_id: str | None, metrics: dict[str, float],
                tags: dict[str, str], out: Path) -> str:
    """Log metrics, tags and the evaluation files to ``run_id`` (or a new run); returns the id."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, RunTag
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=tracking_uri)
    created = False
    if run_id:
        try:
            client.get_run(run_id)
        except MlflowException as exc:
            raise EvaluateError(f"MLflow run {run_id!r} not found at {redact_uri(tracking_uri)}: "
                                f"{exc.message}") from exc
    else:
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment)
        run_id = client.create_run(exp_id, run_name="evaluate", tags={"medgan.step": "evaluate"}).info.run_id
        created = True
    ts = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, v, ts, 0) for k, v in sorted(metrics.items())],
                     tags=[RunTag(k, v) for k, v in sorted(tags.items())])
    for name in ("metrics.json", "results.txt"):
        client.log_artifact(run_id, str(out / name), artifact_path="evaluation")
    if (out / "figures").is_dir():
        client.log_artifacts(run_id, str(out / "figures"), artifact_path="evaluation/figures")
    if created:
        client.set_terminated(run_id)
    return run_id


# --------------------------------------------------------------------------- the step


def run_evaluate(data_uri: str, model_uri: str, output_uri: str, *, tracking_uri: str | None = None,
                 experiment: str = "medgan", run_id: str | None = None, split: str = "test",
                 figures: int = 3) -> dict[str, Any]:
    """Evaluate ``model_uri``'s ``model.pt`` on ``split`` of ``data_uri``; returns the manifest.

    >>> m = run_evaluate("work/processed", "work/train", "work/eval")   # doctest: +SKIP
    >>> m["outputs"]["aggregate"]["model"]["mae"], m["outputs"]["audit_passed"]  # doctest: +SKIP
    (142.3, False)
    """
    from gan_core.engine import load_model, pick_device
    from gan_core.eval.evaluate import EvaluationFailed, evaluate
    from gan_core.eval.report import results_table
    from gan_core.tasks import build_task

    t_start = time.monotonic()
    if figures < 0:
        raise EvaluateError(f"figures must be >= 0, got {figures}")
    tracking = resolve_tracking_uri(tracking_uri)
    data_manifest, data_sha = read_manifest(data_uri, "preprocess", required=("splits",))
    splits = data_manifest["splits"]
    data_mpath = storage.join(data_uri, MANIFEST)
    if not isinstance(splits, dict) or split not in splits:
        raise EvaluateError(f"{data_mpath}: field 'splits' has no split {split!r} "
                            f"(has {sorted(splits) if isinstance(splits, dict) else splits!r})")
    ids = splits[split]
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise EvaluateError(f"{data_mpath}: field 'splits.{split}' must be a non-empty list of "
                            f"subject ids, got {ids!r}")
    bad = [i for i in ids if not i or "/" in i or "\\" in i or i in (".", "..")]
    if bad:
        raise EvaluateError(f"{data_mpath}: field 'splits.{split}' holds invalid subject ids {bad!r} "
                            "(expected folder names under subjects/)")
    train_manifest, _ = read_manifest(model_uri, "train")
    run_id = run_id or manifest_value(train_manifest, "mlflow_run_id")
    if run_id and not tracking:
        log.warning("train manifest names MLflow run %s but no tracking URI is set "
                    "(--tracking-uri / MLFLOW_TRACKING_URI): nothing is logged to MLflow", run_id)

    timings: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medgan-eval-")))
        root = None if storage.is_s3(data_uri) else Path(stack.enter_context(storage.local_copy(data_uri)))
        model_path = stack.enter_context(fetched_file(storage.join(model_uri, MODEL_FILE)))
        model_sha = storage.sha256_file(model_path)
        t0 = time.monotonic()
        try:
            fw = load_model(model_path, pick_device())
        except (ValueError, FileNotFoundError) as exc:
            raise EvaluateError(f"{storage.join(model_uri, MODEL_FILE)}: {exc}") from exc
        task = build_task(fw.cfg.task)
        train_dir = _shards(data_uri, root, work, "train")
        test_dir = _shards(data_uri, root, work, split)
        timings["load_s"] = round(time.monotonic() - t0, 3)

        out = Path(stack.enter_context(storage.staged_output(output_uri)))
        t0 = time.monotonic()
        try:
            report = evaluate({METHOD: fw}, task, test_dir, out, train_shards=train_dir,
                              figures=figures, subjects=ids)
        except EvaluationFailed as exc:
            raise EvaluateError(f"no subject of split {split!r} in {data_uri} could be evaluated: "
                                f"{exc.reasons}") from exc
        timings["evaluate_s"] = round(time.monotonic() - t0, 3)
        for f in report["failed"]:
            log.warning("subject %s not evaluated: %s", f["subject"], f["error"])
        (out / "results.txt").write_text(results_table(report) + "\n")
        task_audit = (report.get("audit") or {}).get(METHOD)
        audit = task_audit or {"passed": False, "reason": f"task {task.name!r} has no audit"}
        agg = {name: {k: finite_or_none(v["mean"]) for k, v in a.items() if isinstance(v, dict)}
               for name, a in report["aggregate"].items() if a}
        figs = sorted(p.name for p in (out / "figures").glob("*.png")) if (out / "figures").is_dir() else []

        metrics = _mlflow_metrics(report, task_audit, split, task.metric_aliases)
        logged_run = None
        if tracking:
            t0 = time.monotonic()
            tags = {"audit_passed": str(audit["passed"]).lower(), "evaluation_uri": output_uri,
                    "evaluation_split": split, "medgan.task": task.name}
            logged_run = _log_mlflow(tracking, experiment, run_id, metrics, tags, out)
            timings["mlflow_s"] = round(time.monotonic() - t0, 3)
        timings["total_s"] = round(time.monotonic() - t_start, 3)
        evaluated = (len(report["per_subject"]) if "per_subject" in report
                     else len(ids) - len(report["failed"]))
        manifest = _json_safe({
            "step": "evaluate",
            "inputs": {"data_uri": data_uri, "model_uri": model_uri,
                       "data_manifest_sha256": data_sha, "model_sha256": model_sha},
            "params": {"split": split, "figures": figures, "experiment": experiment,
                       "tracking_uri": redact_uri(tracking), "task": task.name},
            "outputs": {"metrics": "metrics.json", "results": "results.txt",
                        "figures": [f"figures/{n}" for n in figs],
                        "aggregate": agg, "audit": audit, "audit_passed": audit["passed"],
                        "failed": report["failed"], "mlflow_run_id": logged_run,
                        "framework": fw.cfg.framework, "task": task.name, "unit": task.target_unit},
            "summary": metrics,
            "counts": {"subjects": len(ids), "evaluated": evaluated,
                       "failed": len(report["failed"]), "figures": len(figs)},
            "timings": timings,
            "code_version": gan_core.__version__,
            "git_commit": code_info()["git_commit"],
        })
        storage.write_json(out / MANIFEST, manifest)
        if logged_run:
            from mlflow import MlflowClient

            MlflowClient(tracking_uri=tracking).log_artifact(logged_run, str(out / MANIFEST), "evaluation")
    log.info("evaluate %s (task %s) on %s/%s -> %s: %s; audit %s", model_uri, task.name, data_uri,
             split, output_uri, agg.get(METHOD), "passed" if audit["passed"] else "failed")
    return manifest


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m components.evaluate`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m components.evaluate",
                                description="Evaluate a trained generator on held-out subjects beside the "
                                            "task's baseline; metrics, figures, audit, MLflow.")
    p.add_argument("--data-uri", required=True, help="preprocess output (local folder or s3://)")
    p.add_argument("--model-uri", required=True, help="train output holding model.pt + manifest.json")
    p.add_argument("--output-uri", required=True, help="where metrics.json, figures/ and manifest.json go")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI; "
                                                         "none: no MLflow logging)")
    p.add_argument("--experiment", default="medgan", help="MLflow experiment when a new run is needed")
    p.add_argument("--run-id", default=None, help="MLflow run to log to (default: the train manifest's)")
    p.add_argument("--split", default="test", help="which split of the preprocess manifest (default test)")
    p.add_argument("--figures", type=int, default=3, help="PNG figures for the first N subjects (default 3)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints a JSON summary; exit status 1 on a clear error."""
    from mlflow.exceptions import MlflowException

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = run_evaluate(args.data_uri, args.model_uri, args.output_uri, tracking_uri=args.tracking_uri,
                         experiment=args.experiment, run_id=args.run_id, split=args.split,
                         figures=args.figures)
    except (EvaluateError, storage.StorageError, MlflowException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    o = m["outputs"]
    print(json.dumps({"output_uri": args.output_uri, "aggregate": o["aggregate"],
                      "audit_passed": o["audit_passed"], "mlflow_run_id": o["mlflow_run_id"], **m["counts"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
