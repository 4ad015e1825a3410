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
           "results_table"]

Panel = tuple[str, np.ndarray, dict]


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


def save_panels(path: Path, rows: Sequence[Sequence[Panel]]) -> Path:
    """A grid figure: one row per entry of ``rows``, each panel ``(title, 2D image, imshow
    keywords)`` drawn transposed with the origin at the bottom (axial slices as in a viewer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.1 * cols, 2.1 * len(rows)), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for r, row in enumerate(rows):
        for c, (title, img, kw) in enumerate(row):
            ax = axes[r, c]
            ax.imshow(np.asarray(img).T, origin="lower", **kw)
            if r == 0:
                ax.set_title(title, fontsize=7)
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
