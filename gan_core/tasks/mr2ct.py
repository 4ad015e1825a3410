"""MR -> synthetic CT (the product's main task); baseline: the intensity regression."""

from __future__ import annotations

import numpy as np

from gan_core.eval.baseline import IntensityRegressionBaseline
from gan_core.data.normalize import ct_to_unit, unit_to_ct
from gan_core.tasks import register
from gan_core.tasks.base import Degraded, Task


@register("mr2ct")
class MRToCT(Task):
    source, target = "mr", "ct"

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.regression = IntensityRegressionBaseline()

    def fit_baseline(self, train_slabs) -> None:
        self.regression.fit((s[self.source], unit_to_ct(s[self.target]), s["mask"]) for s in train_slabs)

    def baseline(self, deg: Degraded, slab) -> np.ndarray | None:
        if not self.regression.fitted:
            return None
        return ct_to_unit(self.regression.predict(deg.image[0], slab["mask"]))

    # -- evaluation: the lesion hallucination audit and HU figures ---------------------------
    metric_aliases = {"mae": "mae_hu"}

    def subject_fields(self, slab) -> dict:
        """``has_lesion``: the slab's lesion mask (packed from ``lesion.nii.gz``) marks a voxel."""
        return {"has_lesion": bool("lesion" in slab and np.any(slab["lesion"]))}

    def fit_audit(self, train_cases) -> None:
        """Learn the lesion audit's tissue-border margin from the baseline's errors on the
        training subjects (``gan_core.eval.metrics.learn_border_margin``); without a fitted
        baseline the audit keeps its default margin."""
        from gan_core.eval.metrics import learn_border_margin

        if not self.regression.fitted:
            return
        cases = []
        for slab, spacing in train_cases:
            if spacing is None:
                continue
            base = self.baseline(self.degrade(slab, None), slab)
            cases.append((unit_to_ct(np.asarray(slab[self.target], np.float32)), unit_to_ct(base),
                          slab.get("lesion"), slab["mask"], slab.get("labels"), spacing))
        if cases:
            self.border_margin = learn_border_margin(cases)

    #: the audit's learned tissue-border margin (``learn_border_margin``'s result), or None
    border_margin: dict | None = None

    def audit(self, pred, slab, spacing) -> dict:
        """The lesion hallucination audit (``gan_core.eval.metrics.lesion_audit``) in HU, with
        the tissue map when the slab has one, plus ``tissue``: the per-tissue HU report and swap
        flag (``gan_core.eval.tissue.tissue_report``; None without a tissue map). A slab without
        a lesion mask is audited for invented lesions only."""
        from gan_core.eval.metrics import lesion_audit
        from gan_core.eval.tissue import tissue_report

        if spacing is None:
            raise ValueError("mr2ct audit: the shard index gives no voxel spacing for this subject")
        true = unit_to_ct(np.asarray(slab[self.target], np.float32))
        hu = unit_to_ct(np.asarray(pred, np.float32))
        margin = None if self.border_margin is None else self.border_margin["margin_mm"]
        out = lesion_audit(true, hu, slab.get("lesion"), slab["mask"], spacing=spacing,
                           labels=slab.get("labels"), border_margin_mm=margin)
        out["tissue"] = (tissue_report(true, hu, slab["labels"], slab["mask"])
                         if "labels" in slab else None)
        return out

    def audit_summary(self, report: dict, method: str) -> dict:
        """Cohort verdict of the audit for ``method`` in a report: lesions and tissue swaps.

        ``passed`` is True only when at least one subject was audited, every audited subject
        passed the lesion audit (each evaluable true lesion kept, none invented), at least one
        true lesion was evaluable (otherwise preservation was not tested, and the reason says
        so) and the tissue-swap gate did not flag the model. ``tissue_swap``: the gate's cohort
        verdict (``gan_core.eval.tissue.tissue_verdict``: passed / flagged / not evaluable),
        its status also flat as ``tissue_swap_status`` and ``tissue_swap_flagged``.

        >>> from gan_core.config import TaskConfig
        >>> rep = {"per_subject": [{"subject": "a", "has_lesion": False, "model": {"audit": {
        ...     "n_true": 0, "n_evaluable": 0, "n_preserved": 0, "n_removed": 0, "n_invented": 1,
        ...     "passed": False, "tissue": None}}}], "failed": []}
        >>> s = MRToCT(TaskConfig()).audit_summary(rep, "model")
        >>> (s["passed"], s["lesion_free_subjects_with_invented"], s["tissue_swap_status"])
        (False, 1, 'not evaluable')
        """
        from gan_core.eval.tissue import tissue_verdict

        rows = report.get("per_subject", [])
        audited = [r for r in rows if isinstance(r.get(method), dict) and "audit" in r[method]]
        lesion_rows = [r for r in audited if r.get("has_lesion")]
        free_rows = [r for r in audited if not r.get("has_lesion")]
        a = lambda r: r[method]["audit"]  # noqa: E731
        tissue = tissue_verdict([(r["subject"], a(r).get("tissue")) for r in audited])
        margin = self.border_margin
        s: dict = {
            "subjects_evaluated": len(rows),
            "subjects_failed": len(report.get("failed", [])),
            "subjects_audited": len(audited),
            "subjects_not_audited": sorted(r["subject"] for r in rows if r not in audited),
            "subjects_passed": sum(bool(a(r)["passed"]) for r in audited),
            "lesion_subjects": len(lesion_rows),
            "lesion_subjects_all_preserved": sum(a(r)["n_preserved"] == a(r)["n_evaluable"]
                                                 for r in lesion_rows),
            "lesions_true": sum(int(a(r)["n_true"]) for r in audited),
            "lesions_evaluable": sum(int(a(r)["n_evaluable"]) for r in audited),
            "lesions_preserved": sum(int(a(r)["n_preserved"]) for r in audited),
            "lesions_removed": sum(int(a(r).get("n_removed", 0)) for r in audited),
            "lesion_free_subjects": len(free_rows),
            "lesion_free_subjects_with_invented": sum(int(a(r)["n_invented"]) > 0 for r in free_rows),
            "lesions_invented": sum(int(a(r)["n_invented"]) for r in audited),
            "failing_subjects": sorted(r["subject"] for r in audited if not a(r)["passed"]),
            "border_margin_mm": (margin["margin_mm"] if margin else
                                 (a(audited[0]).get("border_margin_mm") if audited else None)),
            "border_margin_source": (f"learned from the baseline's errors on {margin['cases']} "
                                     "training subjects" if margin else "default (no baseline fitted)"),
            "tissue_swap": tissue,
            "tissue_swap_status": tissue["status"],
            "tissue_swap_flagged": tissue["flagged"],
        }
        lesion_note = (f"{s['lesions_preserved']}/{s['lesions_evaluable']} evaluable lesions kept "
                       f"({s['lesions_removed']} removed) in {len(lesion_rows)} lesion subjects, "
                       f"{s['lesions_invented']} invented")
        if not audited:
            s["lesion_passed"], lesion_reason = False, "no subject could be audited: audit not performed"
        elif s["failing_subjects"]:
            s["lesion_passed"] = False
            lesion_reason = (f"lesion audit failed in {len(s['failing_subjects'])}/{len(audited)} "
                             f"subjects: {lesion_note}")
        elif s["lesions_evaluable"] == 0:
            s["lesion_passed"] = False
            lesion_reason = (f"lesion preservation untested: no evaluable true lesion in the "
                             f"{len(audited)} audited subjects ({s['lesions_invented']} invented)")
        else:
            s["lesion_passed"] = True
            lesion_reason = f"lesion audit passed in all {len(audited)} subjects: {lesion_note}"
        s["passed"] = bool(s["lesion_passed"] and not tissue["flagged"])
        s["reason"] = f"{lesion_reason}; {tissue['reason']}"
        return s

    def figure_panels(self, image, slab, preds, z) -> list:
        """MR | CT | per method: synthetic CT and its |error|, in HU (:func:`hu_panels`): HU
        window and colour bars, the slice's MAE, the lesion outlined, unscored voxels masked."""
        from gan_core.eval.report import hu_panels

        lesion = slab.get("lesion")
        return hu_panels(np.asarray(slab[self.source][z]),
                         unit_to_ct(np.asarray(slab[self.target][z], np.float32)),
                         {name: unit_to_ct(np.asarray(p[z], np.float32)) for name, p in preds.items()},
                         np.asarray(slab["mask"][z]) > 0,
                         None if lesion is None else np.asarray(lesion[z]) > 0, z=z)
