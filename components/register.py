"""Pipeline step ``register``: MLflow model version with a model card, alias only if it is better.

Reads the train output (``model.pt``, ``manifest.json`` with ``mlflow_run_id``) and the evaluate
output (``manifest.json``: aggregate MAE, ``audit_passed``, the evaluated model's sha256), then:

1. **Idempotent**: if a version of ``model_name`` already holds this run's model (same run id and
   the same ``model.pt`` sha256, tag ``model_sha256``) with the same evaluation (tag
   ``evaluate_manifest_sha256``), it is reused; nothing is registered twice.
2. Otherwise the pyfunc model (``components.pyfunc_model``: NIfTI paths in, synthetic CT NIfTI
   out; signature + input example) is logged into the training run and registered as a new
   version whose tags are the model card: data manifest sha256, code version and git commit,
   test MAE/PSNR/SSIM and the baseline's, audit verdict, framework, ``intended_use``.
3. The alias (default ``champion``) goes to the best *eligible* version: not flagged by the
   tissue-swap gate (never, whatever its MAE or ``require_audit``), audit passed (or the
   version registered with ``require_audit=False``), a finite test MAE strictly below the
   non-learned baseline's on the same subjects (or the version registered with
   ``require_baseline=False``), measured on the same test
   set as the champion's (data manifest sha256 + split; a model evaluated elsewhere is registered
   but not promoted, and the reason says so), strictly lower MAE than the champion's.
   :func:`components.registry_policy.decide_promotion` gives this version's verdict and
   :func:`~components.registry_policy.alias_target` the version the alias belongs on (pure
   functions; :func:`~components.registry_policy.model_card` is the card).
4. **Race-free**: the alias is written by :func:`components.model_registry.settle_alias`, a
   read-write-reread loop that converges on the best eligible version however many register
   steps run at once (the argument is in its docstring). The verdict is recorded in the
   manifest (``reason``) and on the version (tag ``alias_decision``).

Returns (and, with ``output_uri``, writes) a manifest with ``version``, ``created``, ``promoted``,
``reason``, the champion at the end and the previous champion's version, MAE and test set.
Credentials never reach the registry or the manifest: every URI recorded goes through
:func:`components.mlflow_utils.redact_uri`.

>>> run_register("work/train", "work/eval", tracking_uri="http://127.0.0.1:5000")  # doctest: +SKIP
{'step': 'register', 'outputs': {'version': '3', 'promoted': True, ...}, ...}

CLI: ``python -m components.register --model-uri M --eval-uri E [--output-uri O]``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components import storage
from components.mlflow_utils import redact_uri, resolve_tracking_uri
from components.model_registry import (champion, champion_mae, existing_version, fluent_target,
                                       logged_model_uri, settle_alias)
from components.registry_policy import (AUDIT_REQUIRED_TAG, BASELINE_REQUIRED_TAG, BASELINE_TAG,
                                        DECISION_TAG, INTENDED_USE, SHA_TAG, TISSUE_TAG, VersionFacts,
                                        decide_promotion, model_card, model_description,
                                        test_set_id)
from components.step import (MANIFEST, Manifest, StepInputError, arg, finite_or_none,
                             local_file, params_from_args, params_parser, read_manifest, run_cli,
                             staged, step_manifest, write_manifest)

__all__ = ["RegisterParams", "run_register", "main"]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- inputs


def _data_manifest_sha(data_manifest_uri: str) -> str:
    uri = data_manifest_uri if data_manifest_uri.endswith(".json") else storage.join(data_manifest_uri, MANIFEST)
    try:
        return hashlib.sha256(storage.read_bytes(uri)).hexdigest()
    except storage.StorageNotFoundError:
        raise StepInputError(f"{uri}: data manifest not found") from None


def _final_reason(verdict: str, decided: bool, promoted: bool, final: VersionFacts | None,
                  alias: str) -> str:
    """The recorded reason: this version's verdict, corrected by where the alias settled."""
    if promoted == decided:
        return verdict
    if promoted:
        return (f"{verdict}; but it holds alias '{alias}' after concurrent registrations settled: "
                "best eligible test MAE on the champion's test set")
    if final is None:
        return (f"{verdict}; but its version tags make it ineligible (audit / baseline / test MAE / "
                "test set)")
    return (f"{verdict}; but v{final.version} (test MAE {final.mae} HU, registered concurrently) "
            f"is better and holds alias '{alias}'")


# --------------------------------------------------------------------------- the step


@dataclass(frozen=True)
class RegisterParams:
    """Parameters of the register step (one CLI option each)."""

    model_uri: str = arg("train output holding model.pt + manifest.json")
    eval_uri: str = arg("evaluate output holding manifest.json")
    model_name: str = arg("registered model name", default="medgan-sct")
    tracking_uri: str | None = arg("MLflow tracking URI (default: $MLFLOW_TRACKING_URI)",
                                   default=None)
    experiment: str = arg("experiment for a new run if the train manifest has none",
                          default="medgan")
    alias: str = arg("alias to move when the model is better", default="champion")
    data_manifest_uri: str | None = arg(
        "preprocess output (or its manifest.json) to hash; default: the evaluation's", default=None)
    require_audit: bool = arg("let a model whose lesion audit failed take the alias (research "
                              "phantoms only)", default=True, flag="--no-require-audit")
    require_baseline: bool = arg("let a model whose test MAE does not beat the non-learned "
                                 "baseline's take the alias (tests and research only)", default=True,
                                 flag="--no-require-baseline")
    output_uri: str | None = arg("also write the manifest here (manifest.json)", default=None)

    def __post_init__(self) -> None:
        if not self.model_name or not self.alias:
            raise StepInputError(f"model_name and alias must be non-empty (got "
                                 f"{self.model_name!r}, {self.alias!r})")


def run_register(model_uri: str, eval_uri: str, **params: Any) -> dict[str, Any]:
    """Register ``model_uri``'s model (evaluated in ``eval_uri``) and maybe move ``alias``.

    ``params``: the other fields of :class:`RegisterParams`. ``require_audit=False`` lets a
    model whose lesion audit failed take the alias (research phantoms only; recorded in the
    manifest and the version tags); ``require_baseline=False`` likewise one whose test MAE does
    not beat the non-learned baseline's. ``output_uri``: also write the manifest there
    (``manifest.json``, published atomically).

    >>> m = run_register("work/train", "work/eval", tracking_uri="sqlite:///mlflow.db")  # doctest: +SKIP
    >>> m["outputs"]["version"], m["outputs"]["promoted"], m["outputs"]["reason"]          # doctest: +SKIP
    ('1', True, 'no champion yet; test MAE 88.10 HU and the audit passed')
    """
    import mlflow
    from mlflow import MlflowClient

    from components.pyfunc_model import FORMAT_TAGS, log_pyfunc_model
    from gan_core.engine import MODEL, read_model_file

    p = RegisterParams(model_uri, eval_uri, **params)
    t_start = time.monotonic()
    tracking = resolve_tracking_uri(p.tracking_uri)
    if not tracking:
        raise StepInputError("register needs an MLflow tracking URI: pass --tracking-uri or set "
                             "MLFLOW_TRACKING_URI")
    train_m = read_manifest(p.model_uri, "train")
    eval_m: Manifest = read_manifest(p.eval_uri, "evaluate", required=(
        "inputs.model_sha256", "outputs.aggregate.model.mae", "outputs.audit_passed"))
    eval_manifest = eval_m.data
    candidate_mae = eval_manifest["outputs"]["aggregate"]["model"]["mae"]
    baseline_mae = (eval_manifest["outputs"]["aggregate"].get("baseline") or {}).get("mae")
    audit_passed = eval_manifest["outputs"]["audit_passed"]
    if not isinstance(audit_passed, bool):
        raise StepInputError(f"{eval_m.path}: field 'outputs.audit_passed' must be true/false, "
                             f"got {audit_passed!r}")
    eval_data_sha = (eval_manifest.get("inputs") or {}).get("data_manifest_sha256")
    data_sha = eval_data_sha
    if p.data_manifest_uri:
        data_sha = _data_manifest_sha(p.data_manifest_uri)
        if eval_data_sha and eval_data_sha != data_sha:
            raise StepInputError(f"{eval_m.path}: the evaluation used data manifest sha256 "
                                 f"{eval_data_sha[:12]}…, but {p.data_manifest_uri} has "
                                 f"{data_sha[:12]}…: evaluate on that data first")

    # credentials leave the URI (into MLflow's env vars) for the whole MLflow part: nothing
    # MLflow prints or stores can hold them
    with fluent_target(tracking) as clean_uri:
        client = MlflowClient(tracking_uri=clean_uri, registry_uri=clean_uri)
        timings: dict[str, float] = {}
        model_file = storage.join(p.model_uri, MODEL)
        with local_file(model_file) as model_path:
            sha = storage.sha256_file(model_path)
            if eval_manifest["inputs"]["model_sha256"] != sha:
                evaluated = str(eval_manifest["inputs"]["model_sha256"])
                raise StepInputError(f"{eval_m.path}: field 'inputs.model_sha256' is {evaluated[:12]}…, "
                                     f"but {model_file} has sha256 {sha[:12]}…: this evaluation is "
                                     "of a different model")
            try:
                model_cfg = read_model_file(model_path).get("config") or {}
            except Exception as exc:  # noqa: BLE001 - reported with the file name
                raise StepInputError(f"{model_file}: not a medgan model ({exc})") from exc
            run_id = train_m.value("mlflow_run_id") or eval_m.value("mlflow_run_id")
            card = model_card(model_sha=sha, data_sha=data_sha, eval_manifest=eval_manifest,
                              eval_sha=eval_m.sha256, model_cfg=model_cfg,
                              model_uri=str(redact_uri(p.model_uri)), eval_uri=str(redact_uri(p.eval_uri)))
            card[AUDIT_REQUIRED_TAG] = str(p.require_audit).lower()
            card[BASELINE_REQUIRED_TAG] = str(p.require_baseline).lower()

            mv = existing_version(client, p.model_name, run_id, sha, eval_m.sha256)
            created = mv is None
            if created:
                t0 = time.monotonic()
                reuse = logged_model_uri(client, run_id, sha, FORMAT_TAGS) if run_id else None
                if reuse is None:
                    if run_id is None:
                        mlflow.set_experiment(p.experiment)
                    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "register") as run:
                        run_id = run.info.run_id
                        reuse = log_pyfunc_model(model_path, tags={SHA_TAG: sha}).model_uri
                else:
                    log.info("run %s already logged this model (%s): registering it, nothing uploaded",
                             run_id, reuse)
                mv = mlflow.register_model(reuse, p.model_name, tags=card)
                timings["log_model_s"] = round(time.monotonic() - t0, 3)
                log.info("registered %s version %s from run %s", p.model_name, mv.version, run_id)
            else:
                log.info("%s version %s already holds this model (run %s, sha256 %s…): reused",
                         p.model_name, mv.version, run_id, sha[:12])
            if not mv.description:
                client.update_model_version(p.model_name, mv.version, description=model_description(card))
            rm = client.get_registered_model(p.model_name)
            if not rm.description:
                client.update_registered_model(p.model_name, description=(
                    f"medgan synthetic CT generators; alias '{p.alias}' = best test MAE on the "
                    "champion's test set among eligible versions: never one the tissue-swap gate "
                    "flagged; the lesion audit passed unless the version was registered with "
                    "require_audit=false; a test MAE below the non-learned baseline's unless it "
                    "was registered with require_baseline=false (its tags audit_required, "
                    "audit_summary, beats_baseline, baseline_required and alias_decision say "
                    f"which). {INTENDED_USE}."))

        test_set = test_set_id(data_sha, card.get("eval_split"))
        champ = champion(client, p.model_name, p.alias)
        previous = None
        if champ is not None:
            facts = VersionFacts.from_tags(champ.version, champ.tags)
            previous = {"version": str(champ.version), "mae": champion_mae(client, champ),
                        "test_set": facts.test_set}
        if champ is not None and str(champ.version) == str(mv.version):
            decided, verdict = True, f"version {mv.version} already holds alias '{p.alias}'"
        else:
            decided, verdict = decide_promotion(candidate_mae, audit_passed, previous,
                                                require_audit=p.require_audit, test_set=test_set,
                                                tissue_swap=card[TISSUE_TAG],
                                                tissue_reason=card["tissue_swap_summary"],
                                                baseline_mae=baseline_mae,
                                                require_baseline=p.require_baseline)
        settled = settle_alias(client, p.model_name, p.alias, test_set=test_set)
        final = settled.champion
        promoted = final is not None and final.version == str(mv.version)
        moved = promoted and (champ is None or str(champ.version) != str(mv.version))
        reason = _final_reason(verdict, decided, promoted, final, p.alias)
        client.set_model_version_tag(p.model_name, str(mv.version), DECISION_TAG, reason)
        log.info("%s v%s: %s", p.model_name, mv.version, reason)
    timings["total_s"] = round(time.monotonic() - t_start, 3)
    manifest = step_manifest(
        "register",
        inputs={"model_uri": redact_uri(p.model_uri), "eval_uri": redact_uri(p.eval_uri),
                "data_manifest_uri": redact_uri(p.data_manifest_uri), "model_sha256": sha,
                "train_manifest_sha256": train_m.sha256, "evaluate_manifest_sha256": eval_m.sha256,
                "data_manifest_sha256": data_sha},
        params={"model_name": p.model_name, "alias": p.alias, "experiment": p.experiment,
                "tracking_uri": redact_uri(tracking), "require_audit": p.require_audit,
                "require_baseline": p.require_baseline},
        outputs={"model_name": p.model_name, "version": str(mv.version),
                 "model_version_uri": f"models:/{p.model_name}/{mv.version}",
                 "alias_uri": f"models:/{p.model_name}@{p.alias}", "mlflow_run_id": run_id,
                 "created": created, "promoted": promoted, "alias_moved": moved, "reason": reason,
                 "test_mae_hu": finite_or_none(candidate_mae), "audit_passed": audit_passed,
                 "tissue_swap": card[TISSUE_TAG], "beats_baseline": card[BASELINE_TAG],
                 "previous_champion": previous, "test_set": test_set,
                 "champion": None if final is None else {"version": final.version, "mae": final.mae},
                 "model_card": card},
        timings=timings,
        # flat copies for callers that only need the verdict (e.g. the KFP register op)
        model_name=p.model_name, version=str(mv.version), promoted=promoted, reason=reason,
        counts={"versions_created": int(created), "alias_moves": settled.moves,
                "alias_rounds": settled.rounds})
    if p.output_uri:
        with staged(p.output_uri) as out:
            write_manifest(out, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: prints a JSON summary (exit codes: components.step)."""
    parser = params_parser(RegisterParams, "python -m components.register",
                           "Register a trained, evaluated model in the MLflow registry (pyfunc + "
                           "model card); move the alias only if it is better.")

    def run(a: Any) -> dict[str, Any]:
        return run_register(**dataclasses.asdict(params_from_args(RegisterParams, a)))["outputs"]

    return run_cli(parser, run, argv, summary=("model_name", "version", "created", "promoted",
                                               "reason", "previous_champion"))


if __name__ == "__main__":
    raise SystemExit(main())
