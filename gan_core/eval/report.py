"""Writing an evaluation's outputs: the strict-JSON report, figures and the results table.

Every file is written under a temporary name and renamed into place, so a reader never sees a
half-written ``metrics.json`` or PNG.

>>> print(results_table({"methods": ["net"], "aggregate": {"net": {
...     "n": 2, "mae": {"mean": 50.0, "sd": 2.0, "median": 50.0}}}}))
| method | mae |
|---|---|
| net | 50.00 ± 2.00 |
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["finite", "write_report", "write_figure", "pick_slices", "save_panels", "save_grid",
           "results_table", "HU_WINDOW", "ERROR_RANGE_HU", "hu_panels"]

Panel = tuple[str, np.ndarray, dict]
#: The HU window of CT figures (level 250, width 2500: air, soft tissue and bone all readable).
HU_WINDOW = (-1000.0, 1500.0)
#: The range of the |error| maps (HU).
ERROR_RANGE_HU = (0.0, 500.0)
#: Keys of a panel's keywords that :func:`save_panels` reads itself (the rest go to ``imshow``).
_PANEL_KEYS = ("colorbar", "outline", "hide")
_NOT_SCORED = "#2b4a6f"  # the colour of voxels outside the scored mask


def finite(obj: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python numbers, non-finite floats (PSNR of a perfect
    prediction is inf) -> None, so a report stays strict JSON.

    >>> finite({"psnr": float("inf"), "n": np.int64(3)})
    {'psnr': None, 'n': 3}
    """
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def write_report(report: dict, out_dir: str | Path, name: str = "metrics.json") -> Path:
    """Write a report as strict JSON (non-finite numbers as null) atomically; returns the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.tmp"
    tmp.write_text(json.dumps(finite(report), indent=2, allow_nan=False))
    os.replace(tmp, out_dir / name)
    return out_dir / name


def write_figure(fig, path: Path, dpi: int = 90, pad: float | None = None) -> Path:
    """Lay out, save atomically (temp name, then rename) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout(**({} if pad is None else {"pad": pad}))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def pick_slices(mask: np.ndarray, n: int) -> np.ndarray:
    """Up to ``n`` slice indices of a ``(Z, H, W)`` mask spread evenly over the slices that hold
    body (all slices when none does).

    >>> m = np.zeros((10, 2, 2)); m[2:8] = 1
    >>> pick_slices(m, 3).tolist()
    [2, 4, 7]
    """
    mask = np.asarray(mask)
    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).sum(1) > 0)
    zs = zs if zs.size else np.arange(mask.shape[0])
    return zs[np.linspace(0, zs.size - 1, num=min(n, zs.size)).round().astype(int)]


def hu_panels(mr: np.ndarray, ct_hu: np.ndarray, preds_hu: dict[str, np.ndarray],
              scored: np.ndarray, lesion: np.ndarray | None = None,
              z: int | None = None) -> list[Panel]:
    """One figure row of an MR -> CT evaluation at one slice, for a radiologist: MR with the
    scored region outlined | CT | per method: synthetic CT and its |error|, in HU.

    CT and synthetic CT share :data:`HU_WINDOW` and a colour bar; the |error| maps have their
    own (:data:`ERROR_RANGE_HU`) and the slice's MAE in the title. Voxels outside ``scored``
    (outside the body, or outside the registered MR's field of view: no MR data there) are
    drawn in a flat blue, not as error, exactly as the metrics leave them out. ``lesion``: the
    lesion mask, outlined in red on the CT and synthetic CTs. ``z``: the slice index, shown in
    the MR panel's title.

    >>> z = np.zeros((8, 8)); m = np.ones((8, 8), bool); m[6:] = False
    >>> [t for t, _, _ in hu_panels(z, z, {"net": z + 10}, m)]
    ['MR (scored region outlined)', 'CT  W 2500 / L 250', 'net sCT', 'net |err|  MAE 10 HU']
    """
    scored = np.asarray(scored) > 0
    lo, hi = HU_WINDOW
    win = dict(cmap="gray", vmin=lo, vmax=hi, colorbar="HU")
    if lesion is not None and np.asarray(lesion).any():
        win["outline"] = np.asarray(lesion) > 0
    ct_hu = np.asarray(ct_hu, np.float32)
    panels: list[Panel] = [
        (f"MR{'' if z is None else f' z={z}'} (scored region outlined)", np.asarray(mr), dict(cmap="gray", outline=scored)),
        (f"CT  W {hi - lo:.0f} / L {(hi + lo) / 2:.0f}", ct_hu, win)]
    for name, pred in preds_hu.items():
        pred = np.asarray(pred, np.float32)
        err = np.abs(pred - ct_hu)
        slice_mae = float(err[scored].mean()) if scored.any() else float("nan")
        panels += [(f"{name} sCT", pred, {**win, "hide": ~scored}),
                   (f"{name} |err|  MAE {slice_mae:.0f} HU", err,
                    dict(cmap="inferno", vmin=ERROR_RANGE_HU[0], vmax=ERROR_RANGE_HU[1],
                         colorbar="|error| HU", hide=~scored))]
    return panels


def save_panels(path: Path, rows: Sequence[Sequence[Panel]]) -> Path:
    """A grid figure: one row per entry of ``rows``, each panel ``(title, 2D image, keywords)``
    drawn transposed with the origin at the bottom (axial slices as in a viewer). Every row
    keeps its titles (each row is a different slice).

    The keywords go to ``imshow``, except: ``colorbar`` (a label: draw a colour bar),
    ``outline`` (a 2D boolean mask: its contour is drawn, red on CT, cyan on gray MR) and
    ``hide`` (a 2D boolean mask: those voxels are drawn flat blue, "not scored").
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.3 * cols, 2.2 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (title, img, kw) in enumerate(row):
            ax = axes[r, c]
            extra = {k: kw[k] for k in _PANEL_KEYS if k in kw}
            shown = np.asarray(img, dtype=float).T
            kw = {k: v for k, v in kw.items() if k not in _PANEL_KEYS}
            if "hide" in extra:
                shown = np.ma.masked_array(shown, mask=np.asarray(extra["hide"]).T)
                kw["cmap"] = plt.get_cmap(kw.pop("cmap", None)).with_extremes(bad=_NOT_SCORED)
            im = ax.imshow(shown, origin="lower", **kw)
            if "outline" in extra and np.asarray(extra["outline"]).any():
                colour = "red" if "colorbar" in extra else "cyan"
                ax.contour(np.asarray(extra["outline"], dtype=float).T, levels=[0.5],
                           colors=colour, linewidths=0.7, origin="lower")
            if "colorbar" in extra:
                bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
                bar.ax.tick_params(labelsize=5)
                bar.set_label(extra["colorbar"], fontsize=5)
            ax.set_title(title, fontsize=6)
    return write_figure(fig, path)


def save_grid(path: Path, images: np.ndarray, cols: int = 8) -> Path:
    """Sample grid of ``(N, 1, H, W)`` images in [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, im in zip(axes.ravel(), images):
        ax.imshow(im[0].T, cmap="gray", vmin=-1, vmax=1, origin="lower")
    return write_figure(fig, path, dpi=80, pad=0.1)


def results_table(report: dict, metrics: Sequence[str] | None = None) -> str:
    """Markdown table of an evaluation report: method and mean ± sd of each metric, plus the
    audit verdict per method when the task audits (its reasons listed below the table). A
    report that carries its own ``table`` (the synthesis report) returns that."""
    if "table" in report:
        return report["table"]
    agg = report["aggregate"]
    if not agg:
        return "(no subject scored)"
    keys = list(metrics or [k for k in next(iter(agg.values())) if k != "n"])
    audits = report.get("audit") or {}
    head = keys + (["audit"] if audits else [])
    lines = ["| method | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
    for name in report["methods"]:
        a = agg.get(name)
        if not a:
            continue
        cells = []
        for k in keys:
            m, sd = a[k]["mean"], a[k]["sd"]
            fmt = ".4f" if abs(m) < 1 else ".2f" if abs(m) < 100 else ".1f"
            cells.append(f"{m:{fmt}} ± {sd:{fmt}}")
        if audits:
            cells.append("passed" if (audits.get(name) or {}).get("passed") else "failed")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if audits:
        lines += [""] + [f"audit of {name}: {s.get('reason', '')}" for name, s in audits.items()]
    return "\n".join(lines)
