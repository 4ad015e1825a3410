"""Calibrate the lesion hallucination audit by controlled edits; write the table into docs/results.md.

The audit (``gan_core.eval.metrics.lesion_audit``) is run on synthetic CTs whose truth is known
because we made them:

* a *good output* of a subject: its true CT through a model-like degradation, ``sharp`` (the
  true CT plus independent 10 HU noise) or ``blurred`` (Gaussian blur 0.6/0.6/0.3 voxel in
  X/Y/Z plus 10 HU noise): no lesion removed, none invented;
* **erase**: one true lesion replaced by the same subject without it (the phantom draws
  anatomy, lesions and CT noise from independent streams, so ``lesion_prevalence=0`` gives the
  identical head and noise without the lesion), through the same degradation: must be flagged
  *removed*;
* **paste**: a synthetic lesion (a ball of radius 4/6/8/10 mm, clipped to brain parenchyma,
  +30..+60 HU haemorrhage-like or -15..-25 HU infarct-like, as the phantom draws its own) added
  at a random parenchyma location at least 15 mm from true lesions: must be flagged *invented*
  (an invented component whose centroid touches the pasted ball); reported apart for balls
  centred in the searched region and within the learned border margin (never searched);
* **clean**: the good output as is: any flag is a false alarm.

The tissue-border margin is learned from the non-learned baseline (intensity regression) on
separate training subjects, as the evaluation does. The baseline itself, the true CT and a
CycleGAN-like output that maps MR intensities monotonically to HU (the diagnosed failure of
issue 10) are audited too. Geometry: the demo's (64 x 64 x 32 voxels of 3 x 3 x 5 mm), MR
aligned (the pipeline registers it).

Run: ``OMP_NUM_THREADS=2 python bench/audit_calibration.py [--subjects 20] [--write]``;
``--write`` replaces the block between the audit markers of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gan_core.data.normalize import mr_to_unit  # noqa: E402
from gan_core.data.phantom import TISSUES, generate_subject  # noqa: E402
from gan_core.eval.baseline import IntensityRegressionBaseline  # noqa: E402
from gan_core.eval.metrics import (PARENCHYMA_LABELS, _region_maps, learn_border_margin,  # noqa: E402
                                   lesion_audit)
from gan_core.eval.tissue import tissue_report  # noqa: E402

SHAPE, SPACING = (64, 64, 32), (3.0, 3.0, 5.0)
RADII_MM = (4.0, 6.0, 8.0, 10.0)
NOISE_HU = 10.0
BLUR_VOX = {"sharp": None, "blurred": (0.6, 0.6, 0.3)}
START, END = "<!-- audit-calibration:start -->", "<!-- audit-calibration:end -->"


def degrade(ct: np.ndarray, blur, noise: np.ndarray) -> np.ndarray:
    out = ct if blur is None else ndimage.gaussian_filter(ct, blur)
    return (out + noise).astype(np.float32)


def paste_ball(labels: np.ndarray, lesion: np.ndarray, radius_mm: float, rng: np.random.Generator):
    """A ball mask of ``radius_mm`` in parenchyma, >= 15 mm from true lesions; None if no room."""
    par = np.isin(labels, PARENCHYMA_LABELS)
    far = ndimage.distance_transform_edt(~lesion.astype(bool), sampling=SPACING) > radius_mm + 15.0
    cand = np.flatnonzero(par & far)
    if cand.size == 0:
        return None
    grid = np.indices(SHAPE).reshape(3, -1).T * np.asarray(SPACING)
    for flat in rng.choice(cand, size=min(200, cand.size), replace=False):
        c = np.array(np.unravel_index(int(flat), SHAPE)) * np.asarray(SPACING)
        ball = (np.linalg.norm(grid - c, axis=1) <= radius_mm).reshape(SHAPE) & par
        if ball.sum() >= 0.6 * (4 / 3 * np.pi * radius_mm ** 3) / np.prod(SPACING) and ball.any():
            return ball
    return None


def run(n_subjects: int, n_train: int, seed: int) -> dict:
    t0 = time.monotonic()
    kw = dict(shape=SHAPE, spacing=SPACING)
    # the baseline and the margin, on training subjects (prevalence as the demo's)
    train = [generate_subject(seed + 1000 + i, lesion_prevalence=0.4, **kw) for i in range(n_train)]
    base = IntensityRegressionBaseline().fit((mr_to_unit(s.mr, s.mask), s.ct, s.mask) for s in train)
    predict = lambda s: base.predict(mr_to_unit(s.mr, s.mask), s.mask)  # noqa: E731
    margin = learn_border_margin([(s.ct, predict(s), s.lesion, s.mask, s.labels, SPACING) for s in train])
    m_mm = margin["margin_mm"]
    audit = lambda s, pred: lesion_audit(s.ct, pred, s.lesion, s.mask, spacing=SPACING,  # noqa: E731
                                         labels=s.labels, border_margin_mm=m_mm)

    rng = np.random.default_rng(seed)
    counts: dict = defaultdict(lambda: [0, 0])  # key -> [flagged, cases]
    extra: dict = defaultdict(lambda: [0, 0])
    whole = {name: [0, 0, 0] for name in ("true CT", "baseline", "monotone MR map (CycleGAN-like)")}
    n_audits = 0
    for k in range(n_subjects):
        s = generate_subject(seed + k, lesion_prevalence=1.0, **kw)
        twin = generate_subject(seed + k, lesion_prevalence=0.0, **kw)
        noise = rng.normal(0.0, NOISE_HU, SHAPE).astype(np.float32)
        mono = (-400.0 + 1300.0 * (mr_to_unit(s.mr, s.mask) + 1.0) / 2.0).astype(np.float32)
        for name, pred in zip(whole, (s.ct, predict(s), mono)):
            a = audit(s, pred)
            gate = tissue_report(s.ct, pred, s.labels, s.mask)
            whole[name][0] += a["passed"]
            whole[name][1] += not gate["flagged"]
            whole[name][2] += 1
            n_audits += 1
        lab_l, n_l = ndimage.label(s.lesion)
        # the region the audit searches for invented lesions (>= margin from a tissue border)
        _, _, dist = _region_maps(s.ct, s.mask > 0, s.labels, SPACING, (-50.0, 100.0))
        searched = np.isin(s.labels, PARENCHYMA_LABELS) & (dist >= m_mm - 1e-6)
        for variant, blur in BLUR_VOX.items():
            good = degrade(s.ct, blur, noise)
            a = audit(s, good)
            n_audits += 1
            counts[(variant, "clean: invented false alarm", "-", "-")][0] += a["n_invented"] > 0
            counts[(variant, "clean: invented false alarm", "-", "-")][1] += 1
            for e in a["lesions"]:
                key = (variant, "clean: true lesion called removed", "-", "-")
                counts[key][0] += e["status"] == "removed"
                counts[key][1] += 1
            # erase each true lesion in turn
            for j in range(1, n_l + 1):
                region = ndimage.binary_dilation(lab_l == j, iterations=2)
                erased = np.where(region, degrade(twin.ct, blur, noise), good)
                a = audit(s, erased)
                n_audits += 1
                e = next(x for x in a["lesions"] if x["label"] == j)
                meta = min(s.meta["lesions"], key=lambda m: np.linalg.norm(
                    np.asarray(m["centre_voxel"]) - np.asarray(ndimage.center_of_mass(lab_l == j))))
                size = f"r {int(meta['radius_mm'] // 2 * 2)}-{int(meta['radius_mm'] // 2 * 2 + 2)} mm"
                sign = "hyper" if meta["ct_delta_hu"] > 0 else "hypo"
                key = (variant, "erase -> removed", size, sign)
                counts[key][0] += e["status"] == "removed"
                counts[key][1] += 1
                extra[(variant, "erase: not evaluable")][0] += e["status"] == "not evaluable"
                extra[(variant, "erase: not evaluable")][1] += 1
            # paste one lesion of each size and sign
            for r_mm in RADII_MM:
                for sign in ("hyper", "hypo"):
                    ball = paste_ball(s.labels, s.lesion, r_mm, rng)
                    if ball is None:
                        continue
                    near = ndimage.binary_dilation(ball, iterations=1)
                    centre = tuple(int(round(c)) for c in ndimage.center_of_mass(ball))
                    delta = rng.uniform(30, 60) if sign == "hyper" else -rng.uniform(15, 25)
                    add = ndimage.gaussian_filter(ball.astype(np.float32) * np.float32(delta), 0.29)
                    pasted = degrade(s.ct + add, blur, noise)
                    a = audit(s, pasted)
                    n_audits += 1
                    hit = any(near[tuple(int(round(c)) for c in inv["centroid_voxel"])] for inv in a["invented"])
                    where = "searched region" if searched[centre] else "within the border margin"
                    key = (variant, f"paste ({where}) -> invented", f"r {int(r_mm)} mm", sign)
                    counts[key][0] += hit
                    counts[key][1] += 1
    return {"counts": {" | ".join(k): v for k, v in sorted(counts.items())},
            "extra": {" | ".join(k): v for k, v in sorted(extra.items())},
            "whole": whole, "margin": margin, "subjects": n_subjects, "train": n_train,
            "seed": seed, "audits": n_audits, "seconds": round(time.monotonic() - t0, 1)}


def table(res: dict) -> str:
    machine = f"{platform.machine()} {os.cpu_count()}-core CPU"
    lines = [
        START,
        f"Measured by `bench/audit_calibration.py --subjects {res['subjects']}` (seed {res['seed']}, "
        f"{res['audits']} audits in {res['seconds']} s on a {machine} shared with other jobs). "
        f"Demo geometry (64 x 64 x 32 voxels of 3 x 3 x 5 mm); every calibration subject has 1-2 "
        f"phantom lesions (radius 5-10 mm; haemorrhage +30..60 HU or infarct -15..-25 HU). "
        f"Border margin learned from the baseline on {res['train']} training subjects: "
        f"**{res['margin']['margin_mm']:.1f} mm** (the baseline's mean focal residual, in units of "
        f"the threshold, by distance to the border: "
        + ", ".join(f"{d} mm {v[0]:.2f}" for d, v in res['margin']['layers'].items())
        + f"; interior {res['margin']['interior_level']:.2f}).",
        "",
        "| good output | edit -> expected flag | lesion size | contrast | flagged / cases | rate |",
        "|---|---|---|---|---|---|",
    ]
    for key, (hit, n) in res["counts"].items():
        variant, edit, size, sign = key.split(" | ")
        rate = f"{hit / n:.2f}" if n else "-"
        lines.append(f"| {variant} | {edit} | {size} | {sign} | {hit}/{n} | {rate} |")
    lines += ["", "Rates: for `erase`/`paste` rows the sensitivity, for `clean` rows the false-alarm "
              "rate (per subject for invented, per true lesion for removed). Erased lesions the audit "
              "judged not evaluable (contrast under the noise floor) count as missed: "
              + ", ".join(f"{k.split(' | ')[0]} {v[0]}/{v[1]}" for k, v in res["extra"].items()) + ".",
              "", "| output (whole subjects) | lesion audit passed | tissue-swap gate passed |",
              "|---|---|---|"]
    for name, (la, tg, n) in res["whole"].items():
        lines.append(f"| {name} | {la}/{n} | {tg}/{n} |")
    lines.append(END)
    return "\n".join(lines)


def write_results(block: str, path: Path) -> None:
    text = path.read_text() if path.exists() else ""
    if START in text and END in text:
        text = text[:text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n## Audits\n\n" + block + "\n"
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(text)
    os.replace(f.name, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--subjects", type=int, default=20)
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--seed", type=int, default=500)
    ap.add_argument("--write", action="store_true", help="write the table into docs/results.md")
    a = ap.parse_args()
    res = run(a.subjects, a.train, a.seed)
    block = table(res)
    print(block)
    if a.write:
        write_results(block, Path(__file__).resolve().parents[1] / "docs" / "results.md")


if __name__ == "__main__":
    main()
