"""Evaluate generators on held-out subjects beside the non-learned baseline.

Per subject: translate the MR, SynthRAD-exact MAE/PSNR/SSIM inside the body mask, the lesion
hallucination audit where a lesion mask exists, and a PNG figure (MR | CT | synthetic CT | error
for a few slices). Writes ``metrics.json`` (per subject + aggregate per method) atomically.

>>> # report = evaluate({"pix2pix": load_model("runs/p2p")}, "shards", "eval/")
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from gan_core.baseline import IntensityRegressionBaseline
from gan_core.data.nifti import load_volume
from gan_core.data.normalize import mr_to_unit, unit_to_ct
from gan_core.data.shards import Shards, SubjectFiles
from gan_core.frameworks import GANFramework
from gan_core.metrics import aggregate, lesion_audit, score
from gan_core.engine import translate_array

BASELINE = "baseline"


def fit_baseline(train_shards: str | Path) -> IntensityRegressionBaseline:
    """Fit the MR->HU intensity regression on a training split's shards (memory-mapped)."""
    sh = Shards(train_shards)

    def pairs():
        for i in range(len(sh.subjects)):
            slab = sh.subject_slab(i)
            yield slab["mr"], unit_to_ct(slab["ct"]), slab["mask"]

    return IntensityRegressionBaseline().fit(pairs())


def save_figure(path: Path, mr: np.ndarray, ct: np.ndarray, preds: dict[str, np.ndarray],
                mask: np.ndarray, n_slices: int = 3) -> Path:
    """Rows: slices through the body; columns: MR | CT | per method: synthetic CT, |error|."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = np.flatnonzero(mask.reshape(-1, mask.shape[2]).sum(0) > 0)
    if zs.size == 0:
        zs = np.arange(mask.shape[2])
    picks = zs[np.linspace(0, zs.size - 1, num=min(n_slices, zs.size)).round().astype(int)]
    cols = 2 + 2 * len(preds)
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.2 * cols, 2.2 * len(picks)), squeeze=False)
    ct_win = dict(cmap="gray", vmin=-1000, vmax=1500)
    for r, z in enumerate(picks):
        panels = [("MR", mr[..., z].T, dict(cmap="gray")), ("CT", ct[..., z].T, ct_win)]
        for name, p in preds.items():
            panels.append((f"{name} sCT", p[..., z].T, ct_win))
            err = np.abs(p[..., z] - ct[..., z]) * (mask[..., z] > 0)
            panels.append((f"{name} |err|", err.T, dict(cmap="inferno", vmin=0, vmax=500)))
        for c, (title, img, kw) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img, origin="lower", **kw)
            ax.set_axis_off()
            if r == 0:
                ax.set_title(title, fontsize=8)
    return write_figure(fig, path)


def write_figure(fig, path: Path, dpi: int = 80, pad: float | None = None) -> Path:
    """Lay out, save atomically (temp name, then rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout(**({} if pad is None else {"pad": pad}))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def write_report(report: dict, out_dir: Path, name: str = "metrics.json") -> Path:
    """Write a report as strict JSON (non-finite numbers as null) atomically."""
    tmp = out_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(_finite(report), indent=2, allow_nan=False))
    os.replace(tmp, out_dir / name)
    return out_dir / name


def evaluate_subjects(models: dict[str, GANFramework], subjects: Sequence[SubjectFiles],
                      baseline: IntensityRegressionBaseline | None, out_dir: str | Path, *,
                      figures: int = 3, figure_slices: int = 3) -> dict:
    """Score every model (and the baseline) on every subject; one bad subject is reported, not fatal."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_subject: list[dict] = []
    failed: list[dict] = []
    drawn = 0
    for s in subjects:
        try:
            mr, ct, mask = load_volume(s.mr), load_volume(s.ct), load_volume(s.mask)
            m = (mask.array > 0).astype(np.uint8)
            preds = {name: translate_array(fw, mr.array, m) for name, fw in models.items()}
            if baseline is not None:
                preds[BASELINE] = baseline.predict(mr_to_unit(mr.array, m), m)
            lesion = load_volume(s.lesion).array if s.lesion else None
            row: dict = {"subject": s.id, "has_lesion": bool(lesion is not None and lesion.any())}
            for name, p in preds.items():
                row[name] = score(ct.array, p, m)
                row[name]["audit"] = lesion_audit(ct.array, p, lesion, m, spacing=ct.spacing)
            per_subject.append(row)
            if drawn < figures:
                drawn += 1
                save_figure(out_dir / "figures" / f"{s.id}.png", mr.array, ct.array, preds, m, figure_slices)
        except Exception as exc:  # noqa: BLE001 - one bad subject does not kill the cohort
            failed.append({"subject": s.id, "error": f"{type(exc).__name__}: {exc}"})
    methods = list(models) + ([BASELINE] if baseline is not None else [])
    summary = {}
    for name in methods:
        rows = [r[name] for r in per_subject]
        agg = aggregate([{k: v for k, v in r.items() if k != "audit"} for r in rows]) if rows else {}
        audits = [r["audit"] for r in rows if "audit" in r]
        if audits:
            agg["audit"] = {
                "lesions_true": sum(a["n_true"] for a in audits),
                "lesions_preserved": sum(a["n_preserved"] for a in audits),
                "lesions_invented": sum(a["n_invented"] for a in audits),
                "subjects_passed": sum(bool(a["passed"]) for a in audits),
                "subjects": len(audits),
            }
        summary[name] = agg
    report = {"methods": methods, "aggregate": summary, "per_subject": per_subject, "failed": failed}
    write_report(report, out_dir)
    return report


def _finite(obj):
    """JSON-safe copy: numpy scalars -> Python numbers, non-finite floats (PSNR of a perfect
    prediction is inf) -> None, so metrics.json stays strict JSON."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def results_table(report: dict) -> str:
    """A plain-text table: method, MAE (HU), PSNR (dB), SSIM as mean ± sd."""
    lines = [f"{'method':<12} {'MAE [HU]':>16} {'PSNR [dB]':>14} {'SSIM':>14}  lesions kept/true, invented"]
    for name in report["methods"]:
        a = report["aggregate"].get(name, {})
        if not a:
            continue
        cell = lambda k, f: f"{a[k]['mean']:{f}} ± {a[k]['sd']:{f}}"  # noqa: E731
        audit = a.get("audit")
        au = f"  {audit['lesions_preserved']}/{audit['lesions_true']}, {audit['lesions_invented']}" if audit else ""
        lines.append(f"{name:<12} {cell('mae', '7.1f'):>16} {cell('psnr', '5.2f'):>14} {cell('ssim', '.3f'):>14}{au}")
    return "\n".join(lines)
