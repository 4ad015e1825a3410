"""Where a CycleGAN's MR -> CT error on the unpaired benchmark comes from: bias or variance.

    python bench/unpaired.py --workdir unpaired_run --variants structure+segment1+lr2e-3 \\
        --steps 2500 --seeds 0,1,2                         # trains the models (bench/unpaired.py)
    python bench/unpaired_variance.py --workdir unpaired_run \\
        --runs 'structure+segment1+lr2e-3-s{0,1,2}-2500' --out variance.jsonl

For each trained model (``<workdir>/runs/<run>/model.pt``) and for the non-learned baseline (fitted
on the PAIRED benchmark's training subjects, as in ``bench/unpaired.py``), on the test subjects:

- the MAE (HU, body mask) split into *border* voxels (a tissue-label change within one voxel
  in-plane) and *interior* voxels, and into each tissue's share (``sum |error| / body voxels``,
  so the shares add up to the MAE);
- the MAE of the left-right flip test-time average (the model on the MR and on its mirror
  image, averaged; the phantom head is left-right symmetric in distribution, the baseline is a
  per-voxel map and does not change);
- the MAE of the models' mean (a seed ensemble), with and without the flip average;
- an oracle: the TRUE tissue labels painted with the CT domain's tissue means (the unpaired
  pack's ``ct_tissue_stats.json``): what a perfect segmenter of the MR would score with the
  values the unpaired data gives; the rest of its error is the texture within each tissue.

A model whose tissue means are right but whose voxels scatter around them (a GAN draws a sample
where the MAE-optimal estimate is the conditional median) loses most of its excess error to such
averages; a biased one does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan_core.data.normalize import unit_to_ct  # noqa: E402
from gan_core.data.phantom import TISSUES  # noqa: E402
from gan_core.data.shards import Shards  # noqa: E402
from gan_core.data.unpaired import CT_STATS_FILE  # noqa: E402
from gan_core.engine import load_model  # noqa: E402
from gan_core.engine.infer import predict_volume  # noqa: E402

from unpaired import REPORT_TISSUES, TISSUE_SHORT, _commit, _host, baseline_task  # noqa: E402


def expand(pattern: str) -> list[str]:
    """``a-s{0,1}-5`` -> ``["a-s0-5", "a-s1-5"]`` (one brace group; commas separate patterns)."""
    out: list[str] = []
    for part in re.split(r",(?![^{]*\})", pattern):
        m = re.search(r"\{([^}]*)\}", part)
        out += ([part[:m.start()] + v + part[m.end():] for v in m.group(1).split(",")]
                if m else [part])
    return out


def border_mask(labels: np.ndarray) -> np.ndarray:
    """Voxels with a different label within one voxel in-plane (the last two axes)."""
    edge = np.zeros(labels.shape, bool)
    for ax in (-2, -1):
        d = np.diff(labels, axis=ax) != 0
        lo = [slice(None)] * labels.ndim
        hi = [slice(None)] * labels.ndim
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    return edge


def decompose(pred: np.ndarray, gt: np.ndarray, body: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """MAE, its border/interior parts and each tissue's share (all in HU per body voxel)."""
    err = np.abs(pred - gt)
    n = float(body.sum())
    edge = border_mask(labels)
    out: dict[str, Any] = {"mae": float(err[body].mean()),
                           "border": float(err[body & edge].sum() / n),
                           "interior": float(err[body & ~edge].sum() / n),
                           "border_fraction": float((body & edge).sum() / n)}
    out["share"] = {t: float(err[body & (labels == TISSUES[t])].sum() / n)
                    for t in (*REPORT_TISSUES, "eye") if (body & (labels == TISSUES[t])).any()}
    return out


def _mean(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {k: float(np.mean([r[k] for r in rows]))
                           for k in ("mae", "border", "interior", "border_fraction")}
    out["share"] = {t: float(np.mean([r["share"].get(t, 0.0) for r in rows]))
                    for t in rows[0]["share"]}
    return out


def label_paint(labels: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """Each voxel's tissue mean in HU (``stats``: ``ct_tissue_stats``' labels / mean_hu)."""
    lut = np.zeros(max(int(labels.max()), *stats["labels"]) + 1, np.float32)
    lut[stats["labels"]] = stats["mean_hu"]
    return lut[labels]


def flip_average(fw, image: np.ndarray) -> np.ndarray:
    """The model's output on the image and on its left-right mirror (mirrored back), averaged."""
    a = predict_volume(fw, image)
    b = predict_volume(fw, np.ascontiguousarray(image[..., ::-1]))[..., ::-1]
    return (a + b) / 2


def analyse(work: Path, runs: list[str]) -> list[dict[str, Any]]:
    task = baseline_task(work / "paired")
    models = {r: load_model(work / "runs" / r / "model.pt", "cpu") for r in runs}
    test = Shards(work / "paired" / "test")
    stats = json.loads((work / "unpaired" / CT_STATS_FILE).read_text())
    per: dict[str, list[dict[str, Any]]] = {}
    for i, _subject in enumerate(test.subjects):
        slab = test.subject_slab(i)
        deg = task.degrade(slab, np.random.default_rng([0, i]))
        image = np.asarray(deg.image, np.float32)
        gt = unit_to_ct(np.asarray(slab["ct"], np.float32))
        body, labels = slab["mask"] > 0, slab["labels"]
        raw, tta = {}, {}
        for name, fw in models.items():
            raw[name] = unit_to_ct(predict_volume(fw, image))
            tta[name] = unit_to_ct(flip_average(fw, image))
            per.setdefault(name, []).append(decompose(raw[name], gt, body, labels))
            per.setdefault(f"{name} flip-avg", []).append(decompose(tta[name], gt, body, labels))
        base = unit_to_ct(np.asarray(task.baseline(deg, slab), np.float32))
        per.setdefault("baseline", []).append(decompose(base, gt, body, labels))
        per.setdefault("oracle: true labels, CT-domain means", []).append(
            decompose(label_paint(labels, stats), gt, body, labels))
        if len(models) > 1:
            per.setdefault(f"mean of {len(models)}", []).append(
                decompose(np.mean(list(raw.values()), 0), gt, body, labels))
            per.setdefault(f"mean of {len(models)} flip-avg", []).append(
                decompose(np.mean(list(tta.values()), 0), gt, body, labels))
    return [{"output": k, **_mean(v)} for k, v in per.items()]


def table(rows: list[dict[str, Any]]) -> str:
    head = ["output", "MAE (HU)", "border", "interior"] + [TISSUE_SHORT[t] for t in REPORT_TISSUES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["output"], f"{r['mae']:.1f}", f"{r['border']:.1f}", f"{r['interior']:.1f}"]
        cells += [f"{r['share'].get(t, 0.0):.1f}" for t in REPORT_TISSUES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", default="unpaired_run", help="bench/unpaired.py's workdir")
    p.add_argument("--runs", required=True,
                   help="run folders under <workdir>/runs, comma-separated; one {a,b} group expands")
    p.add_argument("--out", default="", help="append the rows as JSON lines here")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    runs = expand(a.runs)
    missing = [r for r in runs if not (Path(a.workdir) / "runs" / r / "model.pt").exists()]
    if missing:
        p.error(f"no model.pt under {a.workdir}/runs for {missing} (train them with bench/unpaired.py)")
    rows = analyse(Path(a.workdir), runs)
    if a.out:
        where = {"runs": runs, "code": _commit(), "host": _host()}
        with open(a.out, "a") as fh:
            for r in rows:
                fh.write(json.dumps({**where, **r}) + "\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
