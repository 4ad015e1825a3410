"""The flat, MLflow-ready numbers of an evaluation report (``gan_core.eval.evaluate``).

The evaluate step logs these to MLflow and records them as its manifest's ``summary``; the
register step and the pipelines read them by name. Names: ``<prefix>_<metric>`` (mean) and
``<prefix>_<metric>_sd`` with the task's metric aliases (``mae`` -> ``mae_hu`` for MR -> CT),
the prefix ``test`` / ``test_raw`` / ``baseline`` for the test split (``eval_<split>`` /
``eval_<split>_raw`` / ``baseline_<split>`` otherwise, so evaluating ``val`` never overwrites
training's ``val_mae``), the audit's numeric fields as ``audit_*``, the tissue-swap gate's
per-tissue mean HU error as ``tissue_<tissue>_error_hu`` (and ``_abs_error_hu``) and the subject
counts.

>>> report = {"aggregate": {"model": {"n": 2, "mae": {"mean": 90.0, "sd": 5.0}},
...                         "baseline": {"mae": {"mean": 120.0, "sd": float("nan")}}},
...           "per_subject": [{}, {}], "failed": []}
>>> flat_metrics(report, {"passed": False, "lesions_true": 3}, "test", {"mae": "mae_hu"})
{'test_mae_hu': 90.0, 'test_mae_hu_sd': 5.0, 'baseline_mae_hu': 120.0, 'audit_passed': 0.0, \
'audit_lesions_true': 3.0, 'test_subjects': 2.0, 'test_subjects_failed': 0.0}
"""

from __future__ import annotations

from typing import Any

from components.step import finite_or_none

__all__ = ["METHOD", "BASELINE", "metric_prefixes", "flat_metrics"]

#: Key of the trained generator in the report's methods.
METHOD = "model"
#: Key of the task's non-learned method (``gan_core.eval.evaluate.BASELINE``).
BASELINE = "baseline"


def metric_prefixes(split: str) -> tuple[str, str]:
    """``(model prefix, baseline prefix)`` of the metrics of ``split``.

    >>> metric_prefixes("test"), metric_prefixes("val")
    (('test', 'baseline'), ('eval_val', 'baseline_val'))
    """
    return ("test", "baseline") if split == "test" else (f"eval_{split}", f"baseline_{split}")


def flat_metrics(report: dict[str, Any], audit: dict[str, Any] | None, split: str,
                 aliases: dict[str, str]) -> dict[str, float]:
    """Mean and sd of each of the task's metrics (named through ``aliases``) for the model, its
    raw output and the baseline; the numeric fields of ``audit`` as ``audit_*``; the per-tissue
    mean HU errors of its ``tissue_swap`` verdict as ``tissue_<name>_error_hu`` /
    ``tissue_<name>_abs_error_hu``; subject counts. Non-finite values are left out.

    >>> flat_metrics({"aggregate": {}}, {"tissue_swap": {"tissues": {"fat": {"error_hu": 790.0,
    ...     "abs_error_hu": 790.0}}}, "tissue_swap_flagged": True}, "test", {})
    {'audit_tissue_swap_flagged': 1.0, 'tissue_fat_error_hu': 790.0, 'tissue_fat_abs_error_hu': 790.0}
    """
    model_p, base_p = metric_prefixes(split)
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
        for name, st in ((audit.get("tissue_swap") or {}).get("tissues") or {}).items():
            for stat in ("error_hu", "abs_error_hu"):
                x = finite_or_none(st.get(stat))
                if x is not None:
                    out[f"tissue_{name}_{stat}"] = x
    if "per_subject" in report:
        out[f"{model_p}_subjects"] = float(len(report["per_subject"]))
        out[f"{model_p}_subjects_failed"] = float(len(report["failed"]))
    return out
