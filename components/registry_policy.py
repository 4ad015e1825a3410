"""The register step's policy: the model card of a version and the rule that moves the alias.

Pure functions (no MLflow): :func:`model_card` (the version's tags: provenance, metrics, audit,
intended use), :func:`model_description` and :func:`decide_promotion` (strictly lower test MAE
and a passed audit take the alias). :mod:`components.register` applies them.

>>> decide_promotion(90.0, True, None)
(True, 'no champion yet; test MAE 90.00 HU and the audit passed')
"""

from __future__ import annotations

from typing import Any

from components.step import code_info, finite_or_none

__all__ = ["INTENDED_USE", "SHA_TAG", "MAE_TAG", "decide_promotion", "model_card",
           "model_description"]

#: What every registered model is for (a tag and part of the description).
INTENDED_USE = "research use only — not for clinical use"
#: Version tag holding the sha256 of ``model.pt`` (how a rerun finds its version again).
SHA_TAG = "model_sha256"
#: Version tag holding the test MAE (HU) the alias decision compares.
MAE_TAG = "test_mae_hu"


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


def model_description(card: dict[str, str]) -> str:
    """The model version's description (markdown) from its :func:`model_card`."""
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
