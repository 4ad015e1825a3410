"""The register step's policy: the model card of a version and the rule that moves the alias.

Pure functions (no MLflow): :func:`model_card` (the version's tags: provenance, metrics, audit,
intended use), :func:`model_description`, :func:`decide_promotion` (the verdict for one candidate:
strictly lower test MAE on the same test set, a passed audit and a test MAE below the
non-learned baseline's take the alias; a model the tissue-swap gate flagged never does, whatever
its MAE and ``require_audit``) and
:func:`alias_target` (which version should hold the alias, given every version's tags: what
:func:`components.model_registry.settle_alias` converges to). :mod:`components.register` applies
them.

A *test set* is the data manifest's sha256 plus the evaluated split (tags
``data_manifest_sha256`` and ``eval_split``): MAEs on different test sets are never compared.

>>> decide_promotion(90.0, True, None)
(True, 'no champion yet; test MAE 90.00 HU and the audit passed')
>>> v1 = VersionFacts("1", mae=100.0, test_set="ab:test", eligible=True)
>>> v2 = VersionFacts("2", mae=90.0, test_set="ab:test", eligible=True)
>>> alias_target(v1, [v1, v2]).version
'2'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from components.step import code_info, finite_or_none

__all__ = ["INTENDED_USE", "SHA_TAG", "MAE_TAG", "EVAL_TAG", "DATA_TAG", "SPLIT_TAG", "AUDIT_REQUIRED_TAG",
           "BASELINE_TAG", "BASELINE_REQUIRED_TAG", "beats_baseline",
           "DECISION_TAG", "TISSUE_TAG", "VersionFacts", "alias_target", "decide_promotion", "model_card",
           "model_description", "test_set_id"]

#: What every registered model is for (a tag and part of the description).
INTENDED_USE = "research use only — not for clinical use"
#: Version tag holding the sha256 of ``model.pt`` (how a rerun finds its version again).
SHA_TAG = "model_sha256"
#: Version tag holding the test MAE (HU) the alias decision compares.
MAE_TAG = "test_mae_hu"
#: Version tag: sha256 of the evaluate manifest the card was made from.
EVAL_TAG = "evaluate_manifest_sha256"
#: Version tag: sha256 of the preprocess manifest the test MAE was measured on.
DATA_TAG = "data_manifest_sha256"
#: Version tag: the split the test MAE was measured on.
SPLIT_TAG = "eval_split"
#: Version tag: "false" when the version was registered with ``require_audit=False``.
AUDIT_REQUIRED_TAG = "audit_required"
#: Version tag: "true" when the test MAE is below the non-learned baseline's on the same subjects,
#: "false" when it is not, "unknown" when either is missing (see :func:`beats_baseline`).
BASELINE_TAG = "beats_baseline"
#: Version tag: "false" when the version was registered with ``require_baseline=False``.
BASELINE_REQUIRED_TAG = "baseline_required"
#: Version tag: the register step's alias verdict for this version (why it was or was not promoted).
DECISION_TAG = "alias_decision"
#: Version tag: the tissue-swap gate's status ("passed", "flagged", "not evaluable" without tissue
#: labels, "not run" when the evaluation had no gate); a "flagged" version is never eligible.
TISSUE_TAG = "tissue_swap"

_UNKNOWN = ("", "unknown", "none", "nan")


def test_set_id(data_sha: str | None, split: str | None) -> str | None:
    """The identity of a test set: ``"<data manifest sha256>:<split>"``; None when unknown.

    >>> test_set_id("ab12", "test"), test_set_id("unknown", "test"), test_set_id("ab12", None)
    ('ab12:test', None, None)
    """
    if not data_sha or not split or str(data_sha).lower() in _UNKNOWN or str(split).lower() in _UNKNOWN:
        return None
    return f"{data_sha}:{split}"


def _short(test_set: str | None) -> str:
    if test_set is None:
        return "unknown"
    sha, _, split = test_set.partition(":")
    return f"{split} split of data manifest {sha[:12]}…"


# --------------------------------------------------------------------------- versions and the alias


@dataclass(frozen=True)
class VersionFacts:
    """What the alias rule needs to know about one model version (read from its tags).

    ``eligible``: the tissue-swap gate did not flag it, the audit passed or the version was
    registered with ``require_audit=False``, and its test MAE is below the baseline's (tag
    ``beats_baseline`` not "false") or it was registered with ``require_baseline=False``.
    Versions registered before the baseline tag existed have no such tag and are not held back.
    """

    version: str
    mae: float | None
    test_set: str | None
    eligible: bool

    @classmethod
    def from_tags(cls, version: str | int, tags: Mapping[str, str]) -> "VersionFacts":
        """From a model version's tags (a :func:`model_card`); missing tags make it ineligible.

        >>> VersionFacts.from_tags("3", {"test_mae_hu": "88.5", "data_manifest_sha256": "ab",
        ...                              "eval_split": "test", "audit_passed": "false",
        ...                              "audit_required": "false"})
        VersionFacts(version='3', mae=88.5, test_set='ab:test', eligible=True)
        >>> VersionFacts.from_tags("4", {"audit_passed": "true", "tissue_swap": "flagged"}).eligible
        False
        >>> VersionFacts.from_tags("5", {"audit_passed": "true", "beats_baseline": "false"}).eligible
        False
        """
        audit_ok = ((tags.get("audit_passed") == "true" or tags.get(AUDIT_REQUIRED_TAG) == "false")
                    and tags.get(TISSUE_TAG) != "flagged"
                    and (tags.get(BASELINE_TAG) != "false" or tags.get(BASELINE_REQUIRED_TAG) == "false"))
        try:
            mae = finite_or_none(float(tags[MAE_TAG])) if MAE_TAG in tags else None
        except ValueError:
            mae = None
        return cls(str(version), mae, test_set_id(tags.get(DATA_TAG), tags.get(SPLIT_TAG)), audit_ok)


def _rank(v: VersionFacts) -> tuple[float, int]:
    return (float(v.mae), int(v.version)) if v.mae is not None else (float("inf"), int(v.version))


def alias_target(champion: VersionFacts | None, versions: Sequence[VersionFacts], *,
                 test_set: str | None = None) -> VersionFacts | None:
    """The version that should hold the alias, given the current ``champion`` and all ``versions``.

    * A champion without a finite MAE or a known test set stays (it is not replaced
      automatically: compare by hand).
    * Otherwise the eligible version with the lowest MAE *on the champion's test set* takes it if
      its MAE is strictly lower than the champion's (ties keep the champion; among equal
      challengers the oldest version wins).
    * No champion: the best eligible version on ``test_set`` (the caller's candidate's test set:
      the first champion fixes the test set later versions are compared on); None if there is none.

    Deterministic in its inputs, so every register step that reads the same registry state
    computes the same target: see :func:`components.model_registry.settle_alias`.

    >>> old = VersionFacts("1", 100.0, "ab:test", True)
    >>> alias_target(old, [old, VersionFacts("2", 90.0, "cd:test", True)]).version   # other test set
    '1'
    >>> alias_target(None, [VersionFacts("1", 80.0, "ab:test", False), VersionFacts("2", 90.0, "ab:test", True)],
    ...              test_set="ab:test").version
    '2'
    """
    if champion is not None:
        if champion.mae is None or champion.test_set is None:
            return champion
        pool = [v for v in versions if v.eligible and v.mae is not None
                and v.test_set == champion.test_set and v.mae < champion.mae]
        return min(pool, key=_rank) if pool else champion
    if test_set is None:
        return None
    pool = [v for v in versions if v.eligible and v.mae is not None and v.test_set == test_set]
    return min(pool, key=_rank) if pool else None


# --------------------------------------------------------------------------- the promotion rule


def beats_baseline(mae: float | None, baseline_mae: float | None) -> str:
    """The :data:`BASELINE_TAG` value: "true" when ``mae`` is strictly below ``baseline_mae``
    (the non-learned MR -> HU regression on the same test subjects), "false" when not, "unknown"
    when either is missing or not finite.

    >>> beats_baseline(90.0, 110.0), beats_baseline(110.0, 110.0), beats_baseline(90.0, None)
    ('true', 'false', 'unknown')
    """
    m, b = finite_or_none(mae), finite_or_none(baseline_mae)
    if m is None or b is None:
        return "unknown"
    return str(m < b).lower()


def decide_promotion(candidate_mae: float | None, audit_passed: bool, champion: dict[str, Any] | None,
                     *, require_audit: bool = True, test_set: str | None = None,
                     tissue_swap: str | None = None, tissue_reason: str = "",
                     baseline_mae: float | None = None, require_baseline: bool = True) -> tuple[bool, str]:
    """Should the candidate take the alias? Returns ``(promote, reason)``.

    ``champion``: ``{"version": str, "mae": float | None}`` or None when there is none; with a
    ``"test_set"`` key (:func:`test_set_id`) the candidate's ``test_set`` must be the same, else
    the MAEs are not compared and the candidate is not promoted.
    Lower MAE wins, strictly; a failed audit blocks promotion (unless ``require_audit=False``);
    so does a test MAE that is not strictly below ``baseline_mae``, the non-learned baseline's on
    the same subjects (unless ``require_baseline=False``; no gate when the baseline is unknown);
    ``tissue_swap="flagged"`` (the tissue-swap gate's status, :data:`TISSUE_TAG`) blocks it
    always, whatever the MAE and ``require_audit`` (``tissue_reason`` says which tissues); a
    champion without a recorded MAE is never replaced automatically.

    >>> decide_promotion(90.0, True, {"version": "1", "mae": 100.0})
    (True, 'test MAE 90.00 HU beats champion v1 (100.00 HU) and the audit passed')
    >>> decide_promotion(90.0, False, None)[0], decide_promotion(120.0, True, {"version": "1", "mae": 100.0})[0]
    (False, False)
    >>> decide_promotion(90.0, True, {"version": "1", "mae": 100.0, "test_set": "ab:test"},
    ...                  test_set="cd:test")[1]
    'not compared with champion v1: its test MAE is on the test split of data manifest ab… and this one on the test split of data manifest cd… (a different test set): registered, not promoted'
    >>> decide_promotion(1.0, True, None, require_audit=False, tissue_swap="flagged")[0]
    False
    >>> decide_promotion(150.0, False, None, require_audit=False, baseline_mae=158.0)[1]
    'no champion yet; test MAE 150.00 HU and beats the baseline (158.00 HU), the audit failed (not required)'
    >>> decide_promotion(240.0, True, None, baseline_mae=158.0)
    (False, 'test MAE 240.00 HU does not beat the non-learned baseline (158.00 HU on the same subjects)')
    """
    if tissue_swap == "flagged":
        return False, ("tissue-swap gate flagged the model" + (f" ({tissue_reason})" if tissue_reason else "")
                       + ": never promoted, whatever its test MAE")
    mae = finite_or_none(candidate_mae)
    audit_note = "the audit passed" if audit_passed else "the audit failed (not required)"
    if require_audit and not audit_passed:
        return False, "lesion hallucination audit failed: not promoted"
    if mae is None:
        return False, f"candidate has no finite test MAE ({candidate_mae!r}): not promoted"
    beaten = beats_baseline(mae, baseline_mae)
    if beaten == "false":
        if require_baseline:
            return False, (f"test MAE {mae:.2f} HU does not beat the non-learned baseline "
                           f"({baseline_mae:.2f} HU on the same subjects)")
        audit_note += f", and it does not beat the baseline ({baseline_mae:.2f} HU; not required)"
    elif beaten == "true":
        audit_note = f"beats the baseline ({baseline_mae:.2f} HU), {audit_note}"
    if champion is None:
        return True, f"no champion yet; test MAE {mae:.2f} HU and {audit_note}"
    if "test_set" in champion and (champion["test_set"] is None or champion["test_set"] != test_set):
        return False, (f"not compared with champion v{champion['version']}: its test MAE is on the "
                       f"{_short(champion['test_set'])} and this one on the {_short(test_set)} (a "
                       "different test set): registered, not promoted")
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
    >>> card["test_mae_hu"], card["audit_passed"], card["tissue_swap"], card["intended_use"]
    ('90.0', 'false', 'not run', 'research use only — not for clinical use')
    """
    out = eval_manifest.get("outputs", {})
    agg = out.get("aggregate", {})
    model_m, base_m = agg.get("model") or {}, agg.get("baseline") or {}
    audit = out.get("audit") or {}
    code = code_info()
    model = model_cfg.get("model") or {}
    card = {
        SHA_TAG: model_sha,
        DATA_TAG: data_sha or "unknown",
        EVAL_TAG: eval_sha,
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
        BASELINE_TAG: beats_baseline(model_m.get("mae"), base_m.get("mae")),
        "audit_passed": str(bool(out.get("audit_passed"))).lower(),
        "audit_summary": str(audit.get("reason", ""))[:1000],
        TISSUE_TAG: str(audit.get("tissue_swap_status", "not run")),
        "tissue_swap_summary": str((audit.get("tissue_swap") or {}).get(
            "reason", "the evaluation ran no tissue-swap gate"))[:1000],
        SPLIT_TAG: str((eval_manifest.get("params") or {}).get("split", "unknown")),
        "eval_subjects": str((eval_manifest.get("counts") or {}).get("evaluated", "unknown")),
        "model_uri": model_uri,
        "evaluation_uri": eval_uri,
        "intended_use": INTENDED_USE,
    }
    return card


def model_description(card: dict[str, str]) -> str:
    """The model version's description (markdown) from its :func:`model_card`: what the audit
    found (lesions and tissue swaps) and whether promotion required the lesion audit.

    >>> d = model_description({"framework": "pix2pix", "generator": "unet", "spatial_dims": "2",
    ...     "code_version": "1", "git_commit": "ab", "data_manifest_sha256": "cd", "eval_split": "test",
    ...     "eval_subjects": "2", "test_mae_hu": "60.0", "test_psnr": "25", "test_ssim": "0.8",
    ...     "baseline_mae_hu": "110", "audit_passed": "false", "audit_summary": "1/2 lesions kept",
    ...     "tissue_swap": "passed", "tissue_swap_summary": "no tissue swap", "audit_required": "false"})
    >>> "FAILED (1/2 lesions kept)" in d, "not required for promotion" in d
    (True, True)
    """
    required = card.get(AUDIT_REQUIRED_TAG, "true") != "false"
    base_required = card.get(BASELINE_REQUIRED_TAG, "true") != "false"
    beats = {"true": "beats", "false": "does NOT beat"}.get(card.get(BASELINE_TAG, ""), "was not compared with")
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
        f"Against the non-learned baseline: the model {beats} it; beating it is "
        f"{'required' if base_required else 'not required (registered with require_baseline=false)'} "
        "for promotion.\n"
        f"Audit: {'passed' if card['audit_passed'] == 'true' else 'FAILED'} ({card['audit_summary']}); "
        f"{'required' if required else 'not required'} for promotion"
        f"{'' if required else ' (registered with require_audit=false)'}.\n"
        f"Tissue-swap gate: {card.get(TISSUE_TAG, 'not run')} "
        f"({card.get('tissue_swap_summary', '')}); a flagged model is never promoted."
    )
