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

    def audit(self, pred, slab, spacing) -> dict:
        """The lesion hallucination audit (``gan_core.eval.metrics.lesion_audit``) in HU; a slab
        without a lesion mask is audited for invented lesions only."""
        from gan_core.eval.metrics import lesion_audit

        if spacing is None:
            raise ValueError("mr2ct audit: the shard index gives no voxel spacing for this subject")
        return lesion_audit(unit_to_ct(np.asarray(slab[self.target], np.float32)),
                            unit_to_ct(np.asarray(pred, np.float32)), slab.get("lesion"),
                            slab["mask"], spacing=spacing)

    def audit_summary(self, report: dict, method: str) -> dict:
        """Cohort verdict of the lesion hallucination audit for ``method`` in a report.

        ``passed`` is True only when at least one subject was audited and every audited subject
        passed: each evaluable true lesion preserved and no invented lesion. Lesion-free subjects
        are audited for invented lesions only.

        >>> from gan_core.config import TaskConfig
        >>> rep = {"per_subject": [{"subject": "a", "has_lesion": False, "model": {"audit": {
        ...     "n_true": 0, "n_evaluable": 0, "n_preserved": 0, "n_invented": 1, "passed": False}}}],
        ...     "failed": []}
        >>> s = MRToCT(TaskConfig()).audit_summary(rep, "model")
        >>> (s["passed"], s["lesion_free_subjects_with_invented"])
        (False, 1)
        """
        rows = report.get("per_subject", [])
        audited = [r for r in rows if isinstance(r.get(method), dict) and "audit" in r[method]]
        lesion_rows = [r for r in audited if r.get("has_lesion")]
        free_rows = [r for r in audited if not r.get("has_lesion")]
        a = lambda r: r[method]["audit"]  # noqa: E731
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
            "lesion_free_subjects": len(free_rows),
            "lesion_free_subjects_with_invented": sum(int(a(r)["n_invented"]) > 0 for r in free_rows),
            "lesions_invented": sum(int(a(r)["n_invented"]) for r in audited),
            "failing_subjects": sorted(r["subject"] for r in audited if not a(r)["passed"]),
        }
        if not audited:
            s["passed"], s["reason"] = False, "no subject had a lesion mask: audit not performed"
        elif s["failing_subjects"]:
            s["passed"] = False
            s["reason"] = (f"{len(s['failing_subjects'])}/{len(audited)} audited subjects failed: "
                           f"{s['lesions_preserved']}/{s['lesions_evaluable']} evaluable lesions "
                           f"preserved, {s['lesions_invented']} invented")
        else:
            s["passed"] = True
            s["reason"] = (f"all {len(audited)} audited subjects passed: {s['lesions_preserved']}/"
                           f"{s['lesions_evaluable']} evaluable lesions preserved, none invented")
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
