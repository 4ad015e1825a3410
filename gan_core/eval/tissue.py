"""Per-tissue HU error and the tissue-swap gate of a synthetic CT.

A synthetic CT can score a tolerable MAE and still give tissues each other's densities: the
unpaired CycleGAN of the phantom benchmark keeps MR's intensity order (fat bright, bone dark), so
fat comes out near +690 HU and cortical bone near -400 HU. :func:`tissue_report` measures each
tissue's mean HU (true vs synthetic) against a tissue label map and flags such permutations.

Definitions (``labels``: the label map of the true CT, ids of
:data:`gan_core.data.phantom.TISSUES`; every statistic inside the body mask):

* per tissue ``t`` with ``n_t`` voxels: reference ``r_t`` = mean true HU, prediction ``p_t`` =
  mean synthetic HU over the same voxels, error ``p_t - r_t``; ``nearest`` = the tissue whose
  reference is nearest to ``p_t`` (information only, see below).
* a tissue is *judged* when it is one of :data:`GATED_TISSUES` (air, soft tissue, fat, cortical
  bone, marrow, CSF, grey and white matter, sinus air; the vitreous of the eye is reported but
  not judged: a few hundred voxels at 3 mm, mostly partial volume with orbital fat and bone)
  and ``n_t >= min_voxels`` (default 100: a mean over fewer voxels is dominated by partial
  volume).
* a pair ``(a, b)`` of judged tissues is *separated* when ``|r_a - r_b| >= min_separation_hu``
  (default 100 HU: grey/white matter, CSF, soft tissue and eye lie within ~50 HU of each other
  and are never compared; fat, marrow, bone and air are each >= 100 HU from the rest).
* a separated pair is *swapped* when its predicted means are in the reverse order of its
  references and the reversed interval ``[min(p), max(p)]`` covers at least ``swap_fraction``
  (default 0.5) of the gap ``[min(r), max(r)]``. Equivalently: giving ``a`` the reference of
  ``b`` and ``b`` that of ``a`` lowers the two tissues' summed absolute error by at least
  ``2 * swap_fraction * |r_a - r_b|``: the two tissues traded places.
* ``flagged`` = some separated pair is swapped.

Why not "closer to another tissue's reference than to its own": a regression from T1 MR (the
non-learned baseline) cannot tell CSF, cortical bone and air apart (all dark on T1) and predicts
their blend, so its CSF mean sits nearer marrow's reference than CSF's, yet no two tissues
changed places (its CSF and marrow predictions are both above both references). The blend costs
MAE, which the metrics charge; a permutation is what the gate is for. ``nearest`` still reports
every tissue whose mean lies nearer another tissue's reference.

Without a label map the gate cannot be evaluated: :func:`tissue_report` is not called and the
cohort verdict (:func:`tissue_verdict`) says ``"not evaluable"`` with the reason; it never
reports a pass it did not measure.

>>> import numpy as np
>>> lab = np.repeat(np.array([2, 3, 7], np.uint8), 200)  # fat, cortical bone, white matter
>>> true = np.select([lab == 2, lab == 3], [-100.0, 1100.0], 25.0)
>>> tissue_report(true, true, lab)["flagged"]
False
>>> swapped = np.select([lab == 2, lab == 3], [700.0, -400.0], 560.0)  # MR's order, as CycleGAN
>>> r = tissue_report(true, swapped, lab); r["flagged"], r["swaps"][0]["tissues"]
(True, ['fat', 'cortical_bone'])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["TISSUE_LABELS", "GATED_TISSUES", "tissue_report", "tissue_verdict"]

#: Tissue name -> label id of the phantom's label map (``gan_core.data.phantom.TISSUES``).
TISSUE_LABELS: dict[str, int] = {
    "air": 0, "soft_tissue": 1, "fat": 2, "cortical_bone": 3, "marrow": 4, "csf": 5,
    "grey_matter": 6, "white_matter": 7, "sinus_air": 8, "eye": 9,
}
#: The tissues whose pairs the gate judges (the others are reported only).
GATED_TISSUES: tuple[str, ...] = ("air", "soft_tissue", "fat", "cortical_bone", "marrow", "csf",
                                  "grey_matter", "white_matter", "sinus_air")


def tissue_report(true_hu: np.ndarray, pred_hu: np.ndarray, labels: np.ndarray,
                  mask: np.ndarray | None = None, *, min_voxels: int = 100,
                  min_separation_hu: float = 100.0, swap_fraction: float = 0.5,
                  tissues: Mapping[str, int] | None = None,
                  gated: Sequence[str] = GATED_TISSUES) -> dict[str, Any]:
    """Per-tissue mean HU error and tissue-swap flag of one subject (definitions: module doc).

    ``mask``: body mask (default: everything); ``tissues``: name -> label id (default
    :data:`TISSUE_LABELS`); ``gated``: the names that can be judged. Returns ``{"tissues": {name: {"n", "ref_hu", "pred_hu", "error_hu",
    "judged", "nearest"}}, "swaps": [{"tissues", "ref_hu", "pred_hu", "reversed_fraction"}],
    "flagged", "params"}`` (JSON-ready).
    """
    true = np.asarray(true_hu, np.float64)
    pred = np.asarray(pred_hu, np.float64)
    lab = np.asarray(labels)
    if true.shape != pred.shape or true.shape != lab.shape:
        raise ValueError(f"tissue_report: true {true.shape}, prediction {pred.shape} and labels "
                         f"{lab.shape} must have the same shape")
    inside = np.ones(true.shape, bool) if mask is None else np.asarray(mask) > 0
    if inside.shape != true.shape:
        raise ValueError(f"tissue_report: mask shape {inside.shape} != image shape {true.shape}")
    for name, value in (("min_separation_hu", min_separation_hu), ("swap_fraction", swap_fraction)):
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"tissue_report: {name} must be a finite number > 0, got {value!r}")
    if int(min_voxels) < 1:
        raise ValueError(f"tissue_report: min_voxels must be >= 1, got {min_voxels!r}")
    table = dict(TISSUE_LABELS if tissues is None else tissues)
    stats: dict[str, dict[str, Any]] = {}
    for name, lid in table.items():
        sel = inside & (lab == lid)
        n = int(sel.sum())
        if n == 0:
            continue
        r, p = float(true[sel].mean()), float(pred[sel].mean())
        stats[name] = {"n": n, "ref_hu": r, "pred_hu": p, "error_hu": p - r,
                       "judged": n >= int(min_voxels) and name in gated, "nearest": name}
    judged = [t for t, s in stats.items() if s["judged"]]
    for t in judged:
        p = stats[t]["pred_hu"]
        stats[t]["nearest"] = min(judged, key=lambda u: (abs(p - stats[u]["ref_hu"]), u != t))
    swaps: list[dict[str, Any]] = []
    for i, a in enumerate(judged):
        for b in judged[i + 1:]:
            ra, rb, pa, pb = (stats[a]["ref_hu"], stats[b]["ref_hu"],
                              stats[a]["pred_hu"], stats[b]["pred_hu"])
            gap = abs(ra - rb)
            if gap < min_separation_hu or (pa - pb) * (ra - rb) >= 0:
                continue
            overlap = min(max(pa, pb), max(ra, rb)) - max(min(pa, pb), min(ra, rb))
            if overlap >= swap_fraction * gap:
                swaps.append({"tissues": [a, b], "ref_hu": [ra, rb], "pred_hu": [pa, pb],
                              "reversed_fraction": overlap / gap})
    return {"tissues": stats, "swaps": swaps, "flagged": bool(swaps),
            "params": {"min_voxels": int(min_voxels), "min_separation_hu": float(min_separation_hu),
                       "swap_fraction": float(swap_fraction)}}


def tissue_verdict(reports: Sequence[tuple[str, dict[str, Any] | None]]) -> dict[str, Any]:
    """Cohort verdict of the tissue-swap gate from ``(subject, tissue_report or None)`` pairs
    (None: that subject has no label map).

    ``status``: ``"flagged"`` when any subject with labels is flagged, ``"passed"`` when at
    least one subject had labels and none is flagged, ``"not evaluable"`` when no subject had
    labels (real data without a tissue map: the gate did not run, and says so). Also
    ``flagged`` (bool), ``reason``, ``subjects_with_labels``, ``flagged_subjects`` and
    ``tissues``: per tissue the mean over subjects of ``ref_hu``, ``pred_hu``, ``error_hu`` and
    ``abs_error_hu`` (subjects where the tissue is judged).

    >>> tissue_verdict([("a", None)])["status"]
    'not evaluable'
    """
    with_labels = [(s, r) for s, r in reports if r is not None]
    out: dict[str, Any] = {"subjects_with_labels": len(with_labels),
                           "subjects_without_labels": sorted(s for s, r in reports if r is None)}
    if not with_labels:
        out.update(status="not evaluable", flagged=False, flagged_subjects=[], tissues={},
                   reason="tissue-swap gate not evaluable: no evaluated subject has a tissue "
                          "label map (labels.nii.gz); tissue permutations were NOT checked")
        return out
    flagged = [s for s, r in with_labels if r["flagged"]]
    per: dict[str, dict[str, list[float]]] = {}
    for _, r in with_labels:
        for t, st in r["tissues"].items():
            if st["judged"]:
                d = per.setdefault(t, {"ref_hu": [], "pred_hu": [], "error_hu": []})
                for k in d:
                    d[k].append(st[k])
    out["tissues"] = {t: {"subjects": len(d["ref_hu"]),
                          **{k: float(np.mean(v)) for k, v in d.items()},
                          "abs_error_hu": float(np.mean(np.abs(d["error_hu"])))}
                      for t, d in per.items()}
    out["flagged_subjects"] = sorted(flagged)
    out["flagged"] = bool(flagged)
    if flagged:
        pairs = sorted({" <-> ".join(sw["tissues"]) for s, r in with_labels if r["flagged"]
                        for sw in r["swaps"]})
        out["status"] = "flagged"
        out["reason"] = (f"tissue swap in {len(flagged)}/{len(with_labels)} subjects: "
                         + "; ".join(pairs))
    else:
        out["status"] = "passed"
        out["reason"] = f"no tissue swap in {len(with_labels)} subjects with tissue labels"
    return out
