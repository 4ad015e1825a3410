"""Pipeline step ``register``: MLflow model version with a model card, alias only if it is better.

Reads the train output (``model.pt``, ``manifest.json`` with ``mlflow_run_id``) and the evaluate
output (``manifest.json``: aggregate MAE, ``audit_passed``, the evaluated model's sha256), then:

1. **Idempotent**: if a version of ``model_name`` already holds this run's model (same run id and
   the same ``model.pt`` sha256, tag ``model_sha256``), it is reused; nothing is logged twice.
2. Otherwise the pyfunc model (``components.pyfunc_model``: NIfTI paths in, synthetic CT NIfTI
   out; signature + input example) is logged into the training run and registered as a new
   version whose tags are the model card: data manifest sha256, code version and git commit,
   test MAE/PSNR/SSIM and the baseline's, audit verdict, framework, ``intended_use``.
3. The alias (default ``champion``) moves to this version only if the audit passed and its test
   MAE is lower than the current champion's (no champion yet: the audit decides alone).
   :func:`decide_promotion` is that rule, as a pure function.

Returns (and, with ``output_uri``, writes) a manifest with ``version``, ``created``, ``promoted``,
``reason`` and the previous champion's version and MAE.

Two registers racing for the same alias may both read the old champion; run one register at a
time per model name (the pipeline does).

>>> run_register("work/train", "work/eval", tracking_uri="http://127.0.0.1:5000")  # doctest: +SKIP
{'step': 'register', 'outputs': {'version': '3', 'promoted': True, ...}, ...}

CLI: ``python -m components.register --model-uri M --eval-uri E [--output-uri O]``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gan_core
from components import storage
from components.evaluate import (
    EvaluateError,
    code_info,
    fetched_file,
    finite_or_none,
    manifest_value,
    read_manifest,
    redact_uri,
    resolve_tracking_uri,
)

__all__ = ["RegisterError", "INTENDED_USE", "decide_promotion", "model_card", "run_register", "main"]

log = logging.getLogger(__name__)

INTENDED_USE = "research use only — not for clinical use"
MODEL_FILE = "model.pt"
SHA_TAG = "model_sha256"
MAE_TAG = "test_mae_hu"


class RegisterError(EvaluateError):
    """A bad input to the register step; the message names the URI and field."""


# --------------------------------------------------------------------------- the promotion rule


def decide_promotion(candidate_mae: float | None, audit_passed: bool, champion: dict[str, Any] | None,
                     *, require_audit: bool = True) -> tuple[bool, str]:
    """Should the candidate take the alias? Returns ``(promote, reason)``.

    ``champion``: ``{"version": str, "mae": float | None}`` or None when there is none.
    Lower MAE wins, strictly; a failed audit blocks promotion (unless ``require_audit=False``);
    a champion without a recorded MAE is never replaced automatically.

    >>> decide_promotion(90.0, True, {"version": "1", "mae": 100.0})
    (True, 'test MAE 90.00 HU beats champion v1 (100.00 HU) and the audit passed')
    >>> decide_promotion(90.0, False, None)[0], decide_promotion(120.0, True, {"version": "1", "mae": 100.0})[0]
    (False, False)
    """
    mae = finite_or_none(candidate_mae)
    audit_note = "the audit passed" if audit_passed else "the audit failed (not required)"
    if require_audit and not audit_passed:
        return False, "lesion hallucination audit failed: not promoted"
    if mae is None:
        return False, f"candidate has no finite test MAE ({candidate_mae!r}): not promoted"
    if champion is None:
        return True, f"no champion yet; test MAE {mae:.2f} HU and {audit_note}"
    champ_mae = finite_or_none(champion.get("mae"))
    if champ_mae is None:
        return False, (f"champion v{champion['version']} has no recorded test MAE: it is not replaced "
                       "automatically (compare by hand and move the alias)")
    if mae < champ_mae:
        return True, (f"test MAE {mae:.2f} HU beats champion v{champion['version']} ({champ_mae:.2f} HU) "
                      f"and {audit_note}")
    return False, f"test MAE {mae:.2f} HU does not beat champion v{champion['version']} ({champ_mae:.2f} HU)"


# --------------------------------------------------------------------------- model card


def _fmt(x: Any) -> str:
    """Full precision (``repr``) so a champion's MAE tag compares exactly; "nan" if missing."""
    v = finite_or_none(x)
    return "nan" if v is None else repr(v)


def model_card(*, model_sha: str, data_sha: str | None, eval_manifest: dict[str, Any],
               eval_sha: str, model_cfg: dict[str, Any], model_uri: str, eval_uri: str) -> dict[str, str]:
    """Model-version tags (all strings): provenance, metrics, audit, intended use.

    >>> ev = {"params": {"split": "test"}, "counts": {"evaluated": 2},
    ...       "outputs": {"aggregate": {"model": {"mae": 90.0, "psnr": 25.0, "ssim": 0.8}},
    ...                   "audit_passed": False, "audit": {"reason": "x"}}}
    >>> card = model_card(model_sha="ab", data_sha="cd", eval_manifest=ev, eval_sha="ef",
    ...                   model_cfg={"framework": "pix2pix"}, model_uri="m", eval_uri="e")
    >>> card["test_mae_hu"], card["audit_passed"], card["intended_use"]
    ('90.0', 'false', 'research use only — not for clinical use')
    """
    out = eval_manifest.get("outputs", {})
    agg = out.get("aggregate", {})
    model_m, base_m = agg.get("model") or {}, agg.get("baseline") or {}
    audit = out.get("audit") or {}
    code = code_info()
    model = model_cfg.get("model") or {}
    card = {
        SHA_TAG: model_sha,
        "data_manifest_sha256": data_sha or "unknown",
        "evaluate_manifest_sha256": eval_sha,
        "code_version": code["gan_core"] or "unknown",
        "git_commit": code["git_commit"] or "unknown",
        "framework": str(model_cfg.get("framework", "unknown")),
        "generator": str(model.get("generator", "unknown")),
        "spatial_dims": str(model.get("spatial_dims", "unknown")),
        MAE_TAG: _fmt(model_m.get("mae")),
        "test_psnr": _fmt(model_m.get("psnr")),
        "test_ssim": _fmt(model_m.get("ssim")),
        "baseline_mae_hu": _fmt(base_m.get("mae")),
        "baseline_psnr": _fmt(base_m.get("psnr")),
        "baseline_ssim": _fmt(base_m.get("ssim")),
        "audit_passed": str(bool(out.get("audit_passed"))).lower(),
        "audit_summary": str(audit.get("reason", ""))[:1000],
        "eval_split": str((eval_manifest.get("params") or {}).get("split", "unknown")),
        "eval_subjects": str((eval_manifest.get("counts") or {}).get("evaluated", "unknown")),
        "model_uri": model_uri,
        "evaluation_uri": eval_uri,
        "intended_use": INTENDED_USE,
    }
    return card


def _description(card: dict[str, str]) -> str:
    return (
        "medgan MR -> synthetic CT generator (MLflow pyfunc: NIfTI MR paths in, synthetic CT NIfTI "
        "in HU out).\n\n"
        f"Intended use: {INTENDED_USE}. Synthetic CTs can contain hallucinated or missing "
        "structures; they must not inform diagnosis or treatment.\n\n"
        f"Framework: {card['framework']} ({card['generator']}, {card['spatial_dims']}D). "
        f"Code: gan_core {card['code_version']}, commit {card['git_commit']}.\n"
        f"Data manifest sha256: {card['data_manifest_sha256']}.\n"
        f"Test ({card['eval_split']}, {card['eval_subjects']} subjects): MAE {card[MAE_TAG]} HU, "
        f"PSNR {card['test_psnr']} dB, SSIM {card['test_ssim']}; baseline MAE {card['baseline_mae_hu']} HU.\n"
        f"Lesion hallucination audit: {'passed' if card['audit_passed'] == 'true' else 'FAILED'} "
        f"({card['audit_summary']})."
    )


# --------------------------------------------------------------------------- MLflow plumbing


@contextlib.contextmanager
def _fluent_target(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (needed by ``log_model``) at ``uri``; restore everything after."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_t, saved_r = getattr(trk_utils, "_tracking_uri", None), getattr(reg_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_t)
        reg_utils._registry_uri = saved_r
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _existing_version(client: Any, name: str, run_id: str | None, sha: str) -> Any | None:
    """The version of ``name`` already holding this model (same sha256 and, if known, run)."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    for mv in sorted(versions, key=lambda v: int(v.version)):
        if mv.tags.get(SHA_TAG) == sha and (run_id is None or mv.run_id == run_id):
            return mv
    return None


def _champion(client: Any, name: str, alias: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def _champion_mae(client: Any, mv: Any) -> float | None:
    """The champion's test MAE: its model-card tag, else its run's ``test_mae_hu`` metric."""
    v = finite_or_none(mv.tags.get(MAE_TAG))
    if v is None and mv.run_id:
        with contextlib.suppress(Exception):
            v = finite_or_none(client.get_run(mv.run_id).data.metrics.get(MAE_TAG))
    return v


def _read_manifest(uri: str, step: str, required: Sequence[str] = ()) -> tuple[dict[str, Any], str]:
    try:
        return read_manifest(uri, step, required)
    except RegisterError:
        raise
    except EvaluateError as exc:
        raise RegisterError(str(exc)) from exc


def _data_manifest_sha(data_manifest_uri: str) -> str:
    uri = data_manifest_uri if data_manifest_uri.endswith(".json") else storage.join(data_manifest_uri, "manifest.json")
    try:
        return hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    except storage.StorageNotFoundError as exc:
        raise RegisterError(f"{uri}: data manifest not found") from exc


# --------------------------------------------------------------------------- the step


def run_register(model_uri: str, eval_uri: str, *, model_name: str = "medgan-sct",
                 tracking_uri: str | None = None, experiment: str = "medgan", alias: str = "champion",
                 data_manifest_uri: str | None = None, require_audit: bool = True,
                 output_uri: str | None = None) -> dict[str, Any]:
    """Register ``model_uri``'s model (evaluated in ``eval_uri``) and maybe move ``alias``.

    ``require_audit=False`` lets a model whose lesion audit failed take the alias (research
    phantoms only; recorded in the manifest and the version tags). ``output_uri``: also write
    the manifest there (``manifest.json``, published atomically).

    >>> m = run_register("work/train", "work/eval", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    >>> m["outputs"]["version"], m["outputs"]["promoted"], m["outputs"]["reason"]          # doctest: +SKIP
    ('1', True, 'no champion yet; test MAE 88.10 HU and the audit passed')
    """
    import mlflow
    from mlflow import MlflowClient

    from components.pyfunc_model import log_pyfunc_model
    from gan_core.engine import read_model_file

    t_start = time.monotonic()
    tracking = resolve_tracking_uri(tracking_uri)
    if not tracking:
        raise RegisterError("register needs an MLflow tracking URI: pass --tracking-uri or set MLFLOW_TRACKING_URI")
    if not model_name or not alias:
        raise RegisterError(f"model_name and alias must be non-empty (got {model_name!r}, {alias!r})")
    train_manifest, train_sha = _read_manifest(model_uri, "train")
    eval_manifest, eval_sha = _read_manifest(
        eval_uri, "evaluate", required=("inputs.model_sha256", "outputs.aggregate.model.mae",
                                        "outputs.audit_passed"))
    eval_path = storage.join(eval_uri, "manifest.json")
    candidate_mae = eval_manifest["outputs"]["aggregate"]["model"]["mae"]
    audit_passed = eval_manifest["outputs"]["audit_passed"]
    if not isinstance(audit_passed, bool):
        raise RegisterError(f"{eval_path}: field 'outputs.audit_passed' must be true/false, got {audit_passed!r}")
    eval_data_sha = (eval_manifest.get("inputs") or {}).get("data_manifest_sha256")
    data_sha = eval_data_sha
    if data_manifest_uri:
        data_sha = _data_manifest_sha(data_manifest_uri)
        if eval_data_sha and eval_data_sha != data_sha:
            raise RegisterError(f"{eval_path}: the evaluation used data manifest sha256 {eval_data_sha[:12]}…, "
                                f"but {data_manifest_uri} has {data_sha[:12]}…: evaluate on that data first")

    client = MlflowClient(tracking_uri=tracking, registry_uri=tracking)
    timings: dict[str, float] = {}
    with fetched_file(storage.join(model_uri, MODEL_FILE)) as model_path:
        sha = storage.sha256_file(model_path)
        if eval_manifest["inputs"]["model_sha256"] != sha:
            evaluated = str(eval_manifest["inputs"]["model_sha256"])
            raise RegisterError(f"{eval_path}: field 'inputs.model_sha256' is {evaluated[:12]}…, "
                                f"but {storage.join(model_uri, MODEL_FILE)} has sha256 {sha[:12]}…: "
                                "this evaluation is of a different model")
        try:
            model_cfg = read_model_file(model_path).get("config") or {}
        except Exception as exc:  # noqa: BLE001 - reported with the file name
            raise RegisterError(f"{storage.join(model_uri, MODEL_FILE)}: not a medgan model ({exc})") from exc
        run_id = manifest_value(train_manifest, "mlflow_run_id") or manifest_value(eval_manifest, "mlflow_run_id")
        card = model_card(model_sha=sha, data_sha=data_sha, eval_manifest=eval_manifest, eval_sha=eval_sha,
                          model_cfg=model_cfg, model_uri=model_uri, eval_uri=eval_uri)
        card["audit_required"] = str(require_audit).lower()

        mv = _existing_version(client, model_name, run_id, sha)
        created = mv is None
        if created:
            t0 = time.monotonic()
            with _fluent_target(tracking):
                if run_id is None:
                    mlflow.set_experiment(experiment)
                with mlflow.start_run(run_id=run_id, run_name=None if run_id else "register") as run:
                    run_id = run.info.run_id
                    info = log_pyfunc_model(model_path, tags={SHA_TAG: sha})
                mv = mlflow.register_model(info.model_uri, model_name, tags=card)
            timings["log_model_s"] = round(time.monotonic() - t0, 3)
            log.info("registered %s version %s from run %s", model_name, mv.version, run_id)
        else:
            log.info("%s version %s already holds this model (run %s, sha256 %s…): reused",
                     model_name, mv.version, run_id, sha[:12])
        if not mv.description:
            client.update_model_version(model_name, mv.version, description=_description(card))
        rm = client.get_registered_model(model_name)
        if not rm.description:
            client.update_registered_model(model_name, description=(
                f"medgan synthetic CT generators; alias '{alias}' = best test MAE with a passed "
                f"lesion audit. {INTENDED_USE}."))

    champ = _champion(client, model_name, alias)
    previous = None if champ is None else {"version": str(champ.version), "mae": _champion_mae(client, champ)}
    if champ is not None and str(champ.version) == str(mv.version):
        promoted, moved, reason = True, False, f"version {mv.version} already holds alias '{alias}'"
    else:
        promoted, reason = decide_promotion(candidate_mae, audit_passed, previous, require_audit=require_audit)
        moved = promoted
        if promoted:
            client.set_registered_model_alias(model_name, alias, str(mv.version))
    log.info("%s v%s: %s", model_name, mv.version, reason)
    timings["total_s"] = round(time.monotonic() - t_start, 3)
    manifest = {
        "step": "register",
        "inputs": {"model_uri": model_uri, "eval_uri": eval_uri, "data_manifest_uri": data_manifest_uri,
                   "model_sha256": sha, "train_manifest_sha256": train_sha, "evaluate_manifest_sha256": eval_sha,
                   "data_manifest_sha256": data_sha},
        "params": {"model_name": model_name, "alias": alias, "experiment": experiment,
                   "tracking_uri": redact_uri(tracking), "require_audit": require_audit},
        "outputs": {"model_name": model_name, "version": str(mv.version),
                    "model_version_uri": f"models:/{model_name}/{mv.version}",
                    "alias_uri": f"models:/{model_name}@{alias}", "mlflow_run_id": run_id,
                    "created": created, "promoted": promoted, "alias_moved": moved, "reason": reason,
                    "test_mae_hu": finite_or_none(candidate_mae), "audit_passed": audit_passed,
                    "previous_champion": previous, "model_card": card},
        # flat copies for callers that only need the verdict (e.g. the KFP register op)
        "model_name": model_name, "version": str(mv.version), "promoted": promoted, "reason": reason,
        "counts": {"versions_created": int(created), "alias_moves": int(moved)},
        "timings": timings,
        "code_version": gan_core.__version__,
    }
    if output_uri:
        with storage.staged_output(output_uri) as out:
            storage.write_json(Path(out) / "manifest.json", manifest)
    return manifest


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m components.register`` argument parser."""
    p = argparse.ArgumentParser(prog="python -m components.register",
                                description="Register a trained, evaluated model in the MLflow registry "
                                            "(pyfunc + model card); move the alias only if it is better.")
    p.add_argument("--model-uri", required=True, help="train output holding model.pt + manifest.json")
    p.add_argument("--eval-uri", required=True, help="evaluate output holding manifest.json")
    p.add_argument("--model-name", default="medgan-sct", help="registered model name (default medgan-sct)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    p.add_argument("--experiment", default="medgan", help="experiment for a new run if the train manifest has none")
    p.add_argument("--alias", default="champion", help="alias to move when the model is better (default champion)")
    p.add_argument("--data-manifest-uri", default=None,
                   help="preprocess output (or its manifest.json) to hash; default: the evaluation's")
    p.add_argument("--no-require-audit", dest="require_audit", action="store_false",
                   help="let a model whose lesion audit failed take the alias (research phantoms only)")
    p.add_argument("--output-uri", default=None, help="also write the manifest here (manifest.json)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints a JSON summary; exit status 1 on a clear error."""
    from mlflow.exceptions import MlflowException

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        m = run_register(args.model_uri, args.eval_uri, model_name=args.model_name,
                         tracking_uri=args.tracking_uri, experiment=args.experiment, alias=args.alias,
                         data_manifest_uri=args.data_manifest_uri, require_audit=args.require_audit,
                         output_uri=args.output_uri)
    except (EvaluateError, storage.StorageError, MlflowException) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    o = m["outputs"]
    print(json.dumps({k: o[k] for k in ("model_name", "version", "created", "promoted", "reason",
                                         "previous_champion")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
