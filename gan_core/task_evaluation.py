"""Score models on a task's held-out subjects beside the task's non-learned baseline.

Works on packed shards for every task (``gan_core.tasks``): per test subject, the task degrades
the slab (seeded per subject, so every method sees the same input), each model predicts the
target slice by slice (3D models: sliding patches), the task post-processes (e.g. k-space data
consistency; the raw output is scored too, as ``<name>-raw``) and scores it. The MR -> CT NIfTI
path with the lesion audit stays in ``gan_core.evaluation``.

>>> # report = evaluate_task({"pix2pix": fw}, build_task(cfg.task), "shards/test", "eval/",
>>> #                        train_shards="shards/train")
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from gan_core.data.shards import Shards
from gan_core.engine.infer import predict_volume
from gan_core.evaluation import write_figure, write_report
from gan_core.frameworks import GANFramework
from gan_core.metrics import aggregate
from gan_core.tasks import Task

BASELINE = "baseline"
INPUT = "input"


def _train_slabs(train_shards: str | Path):
    sh = Shards(train_shards)
    for i in range(len(sh.subjects)):
        yield sh.subject_slab(i)


def save_task_figure(path: Path, task: Task, image: np.ndarray, target: np.ndarray,
                     preds: dict[str, np.ndarray], mask: np.ndarray, n_slices: int = 2) -> Path:
    """Rows: slices through the body; columns: input | target | each method | |error| of each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    zs = np.flatnonzero(mask.reshape(mask.shape[0], -1).sum(1) > 0)
    zs = zs if zs.size else np.arange(mask.shape[0])
    picks = zs[np.linspace(0, zs.size - 1, num=min(n_slices, zs.size)).round().astype(int)]
    shown = (np.argmax(image, 0) / max(image.shape[0] - 1, 1) * 2 - 1 if image.shape[0] > 1
             else image[0] if image.shape[0] == 1 else np.full_like(target, -1.0))
    cols = 2 + 2 * len(preds)
    fig, axes = plt.subplots(len(picks), cols, figsize=(2.1 * cols, 2.1 * len(picks)), squeeze=False)
    for r, z in enumerate(picks):
        panels = [("input", shown[z], (-1, 1)), (f"target ({task.target})", target[z], (-1, 1))]
        panels += [(name, p[z], (-1, 1)) for name, p in preds.items()]
        panels += [(f"|err| {name}", np.abs(p[z] - target[z]), (0, 0.5)) for name, p in preds.items()]
        for c, (title, img, (lo, hi)) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(img.T, cmap="gray" if not title.startswith("|err|") else "magma", vmin=lo,
                      vmax=hi, origin="lower")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return write_figure(fig, path, dpi=90)


def evaluate_task(models: dict[str, GANFramework], task: Task, test_shards: str | Path,
                  out_dir: str | Path, *, train_shards: str | Path | None = None, seed: int = 0,
                  figures: int = 2, subjects: Sequence[int] | None = None) -> dict:
    """Score every model (and the baseline, fitted on ``train_shards`` when it needs fitting) on
    every test subject; writes ``metrics.json`` atomically; one bad subject is reported, not fatal.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if train_shards is not None:
        task.fit_baseline(_train_slabs(train_shards))
    sh = Shards(test_shards)
    task.check_slab(sh.arrays, str(sh.dir))
    postprocesses = type(task).postprocess is not Task.postprocess
    per_subject, failed, methods = [], [], []
    for i in (range(len(sh.subjects)) if subjects is None else subjects):
        sid = sh.subjects[i]["id"] if 0 <= i < len(sh.subjects) else f"#{i}"
        try:
            slab = sh.subject_slab(i)
            deg = task.degrade(slab, np.random.default_rng([seed, i]))
            preds: dict[str, np.ndarray] = {}
            for name, fw in models.items():
                raw = predict_volume(fw, deg.image)
                preds[name] = task.postprocess(raw, deg)
                if postprocesses:
                    preds[f"{name}-raw"] = raw
            base = task.baseline(deg, slab)
            if base is not None:
                preds[BASELINE] = base
            if task.source == task.target and deg.image.shape[0] == 1 and (
                    base is None or not np.array_equal(base, deg.image[0])):
                preds[INPUT] = deg.image[0]  # the degraded input itself, as a reference
            per_subject.append({"subject": sid, **{n: task.metrics(p, slab) for n, p in preds.items()}})
            methods = methods or list(preds)
            if len(per_subject) <= figures:
                save_task_figure(out_dir / "figures" / f"{sid}.png", task, deg.image,
                                 slab[task.target], preds, slab["mask"])
        except Exception as exc:  # noqa: BLE001 - one bad subject does not kill the cohort
            failed.append({"subject": sid, "error": f"{type(exc).__name__}: {exc}"})
    summary = {m: aggregate([r[m] for r in per_subject]) for m in methods} if per_subject else {}
    report = {"task": task.name, "target": task.target, "unit": task.target_unit,
              "task_config": vars(task.cfg) if hasattr(task.cfg, "__dict__") else {},
              "methods": methods, "aggregate": summary, "per_subject": per_subject, "failed": failed}
    write_report(report, out_dir)
    return report


def task_table(report: dict, metrics: Sequence[str] | None = None) -> str:
    """Markdown table: method and mean ± sd of each metric over the test subjects."""
    agg = report["aggregate"]
    if not agg:
        return "(no subject scored)"
    keys = list(metrics or [k for k in next(iter(agg.values())) if k != "n"])
    lines = ["| method | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name in report["methods"]:
        a = agg[name]
        cells = []
        for k in keys:
            m, sd = a[k]["mean"], a[k]["sd"]
            fmt = ".4f" if abs(m) < 1 else ".2f" if abs(m) < 100 else ".1f"
            cells.append(f"{m:{fmt}} ± {sd:{fmt}}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
