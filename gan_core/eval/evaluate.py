"""The one evaluator: score models on a task's held-out shards beside the task's baseline.

:func:`evaluate` works the same for every task (``gan_core.tasks``); what differs lives in the
task. Per test subject (a slab of the packed shards, the preprocess output): the task degrades
the slab (seeded per subject, so every method sees the same input), each model predicts the
target (2D models slice by slice, 3D models by sliding patches), the task post-processes (e.g.
k-space data consistency; the raw output is scored too, as ``<name>-raw``), then the task scores
each prediction (:meth:`Task.metrics`), audits it where it has an audit (MR -> CT: the lesion
hallucination audit) and draws the figure panels. A task scored over the whole cohort instead
(unconditional synthesis: the in-domain Fréchet distance) returns its report from
:meth:`Task.cohort_report`.

One bad subject is listed under ``failed`` and the others are still scored; when EVERY subject
fails, :class:`EvaluationFailed` names them and their errors (``metrics.json`` is written first).

>>> # from gan_core.tasks import build_task
>>> # report = evaluate({"pix2pix": fw}, build_task(fw.cfg.task), "shards/test", "eval/",
>>> #                   train_shards="shards/train")
>>> # print(results_table(report))
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from gan_core.data.shards import Shards
from gan_core.engine.infer import predict_volume
from gan_core.eval.metrics import aggregate
from gan_core.eval.report import pick_slices, save_panels, write_report
from gan_core.eval.viewer import VIEWER_FILE, SubjectView, subject_view, write_viewer

if TYPE_CHECKING:
    from gan_core.frameworks import GANFramework
    from gan_core.tasks import Task

__all__ = ["BASELINE", "INPUT", "EvaluationFailed", "evaluate"]

BASELINE = "baseline"
INPUT = "input"


class EvaluationFailed(ValueError):
    """No subject could be evaluated; ``failed`` lists ``{"subject", "error"}`` for each."""

    def __init__(self, where: str, failed: list[dict[str, str]]) -> None:
        self.failed = failed
        self.reasons = "; ".join(f"{f['subject']}: {f['error']}" for f in failed) or "no subject given"
        super().__init__(f"no subject of {where} could be evaluated: {self.reasons}")


def _slab_spacing(entry: dict[str, Any]) -> tuple[float, float, float] | None:
    """Voxel spacing (mm) along the slab axes ``(Z, H, W)``: the index stores the volume's
    ``(X, Y, Z)`` spacing and a slab is the volume with Z moved first."""
    sp = entry.get("spacing")
    return (float(sp[2]), float(sp[0]), float(sp[1])) if sp and len(sp) == 3 else None


def _indices(sh: Shards, subjects: Sequence[int | str] | None) -> list[tuple[int | None, str]]:
    """``(index or None, id)`` of the requested subjects (ids or indices; default: all)."""
    if subjects is None:
        return [(i, s["id"]) for i, s in enumerate(sh.subjects)]
    by_id = {s["id"]: i for i, s in enumerate(sh.subjects)}
    out: list[tuple[int | None, str]] = []
    for s in subjects:
        if isinstance(s, str):
            out.append((by_id.get(s), s))
        else:
            i = int(s)
            out.append((i, sh.subjects[i]["id"] if 0 <= i < len(sh.subjects) else f"#{i}"))
    return out


def _score_subjects(models: dict[str, "GANFramework"], task: "Task", sh: Shards, out_dir: Path, *,
                    seed: int, figures: int, figure_slices: int,
                    subjects: Sequence[int | str] | None, views: list[SubjectView] | None) -> dict[str, Any]:
    per_subject: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    methods: list[str] = []
    for i, sid in _indices(sh, subjects):
        try:
            if i is None:
                raise KeyError(f"subject {sid!r} is not in {sh.dir} (has "
                               f"{[s['id'] for s in sh.subjects]})")
            slab = sh.subject_slab(i)
            deg = task.degrade(slab, np.random.default_rng([seed, i]))
            preds: dict[str, np.ndarray] = {}
            for name, fw in models.items():
                raw = predict_volume(fw, deg.image)
                preds[name] = task.postprocess(raw, deg)
                if task.postprocesses:
                    preds[f"{name}-raw"] = raw
            base = task.baseline(deg, slab)
            if base is not None:
                preds[BASELINE] = base
            if task.source == task.target and deg.image.shape[0] == 1 and (
                    base is None or not np.array_equal(base, deg.image[0])):
                preds[INPUT] = deg.image[0]  # the degraded input itself, as a reference
            spacing = _slab_spacing(sh.subjects[i])
            row: dict[str, Any] = {"subject": sid, **task.subject_fields(slab)}
            for name, p in preds.items():
                row[name] = dict(task.metrics(p, slab))
                audit = task.audit(p, slab, spacing)
                if audit is not None:
                    row[name]["audit"] = audit
            per_subject.append(row)
            methods = methods or list(preds)
            if len(per_subject) <= figures:
                rows = [task.figure_panels(deg.image, slab, preds, int(z))
                        for z in pick_slices(slab["mask"], figure_slices)]
                save_panels(out_dir / "figures" / f"{sid}.png", rows)
                if views is not None:  # the viewer report shows the same subjects
                    views.append(subject_view(task, sid, deg.image, slab, preds, row, spacing,
                                              method=next(iter(models))))
        except Exception as exc:  # noqa: BLE001 - one bad subject does not kill the cohort
            failed.append({"subject": sid, "error": f"{type(exc).__name__}: {exc}"})
    scores = lambda r: {k: v for k, v in r.items() if k != "audit"}  # noqa: E731
    summary = {m: aggregate([scores(r[m]) for r in per_subject]) for m in methods} if per_subject else {}
    report: dict[str, Any] = {
        "task": task.name, "target": task.target, "unit": task.target_unit,
        "task_config": vars(task.cfg) if hasattr(task.cfg, "__dict__") else {},
        "methods": methods, "aggregate": summary, "per_subject": per_subject, "failed": failed}
    audits = {m: task.audit_summary(report, m) for m in methods}
    if any(a is not None for a in audits.values()):
        report["audit"] = {m: a for m, a in audits.items() if a is not None}
    return report


def evaluate(models: dict[str, "GANFramework"], task: "Task", shards: str | Path, out: str | Path, *,
             train_shards: str | Path | None = None, figures: int = 2, figure_slices: int = 3,
             subjects: Sequence[int | str] | None = None, seed: int = 0,
             device: str = "cpu", viewer: bool = True) -> dict[str, Any]:
    """Score every model (and the task's baseline) on the subjects of ``shards``; writes
    ``<out>/metrics.json`` atomically, PNG figures of the first ``figures`` subjects and, with
    ``viewer``, the 3-D viewer report of those subjects, ``<out>/report.html``
    (:mod:`gan_core.eval.viewer`; the first model's volumes).

    ``train_shards``: the training split; the task's baseline is fitted on it (no baseline when
    None) and the synthesis report trains its feature extractor on it. ``subjects``: subject ids
    or indices to score (default: all, in shard order). ``seed``: the degradation seed (subject
    ``i`` uses ``[seed, i]``), independent of the models' training seeds. ``device``: where a
    cohort report trains its helpers (the models stay where they are).

    Report: ``task``, ``target``, ``unit``, ``methods``, ``aggregate`` (per method: ``n`` and
    mean/sd/median of each metric), ``per_subject``, ``failed`` and, when the task audits,
    ``audit`` (per method: the cohort verdict). Raises :class:`EvaluationFailed` when no subject
    could be scored.
    """
    if not models:
        raise ValueError("evaluate: no model given")
    if figures < 0 or figure_slices < 1:
        raise ValueError(f"evaluate: figures must be >= 0 and figure_slices >= 1, got {figures}, "
                         f"{figure_slices}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = task.cohort_report(models, shards, out, train_shards=train_shards, seed=seed,
                                device=device)
    if report is None:
        if train_shards is not None:
            tr = Shards(train_shards)
            task.fit_baseline(tr.subject_slab(i) for i in range(len(tr.subjects)))
            task.fit_audit((tr.subject_slab(i), _slab_spacing(s)) for i, s in enumerate(tr.subjects))
        sh = Shards(shards)
        task.check_slab(sh.arrays, str(sh.dir))
        views: list[SubjectView] | None = [] if viewer and figures else None
        report = _score_subjects(models, task, sh, out, seed=seed, figures=figures,
                                 figure_slices=figure_slices, subjects=subjects, views=views)
        if views:
            write_viewer(out / VIEWER_FILE, report, views, task=task, method=next(iter(models)))
    write_report(report, out)
    if "per_subject" in report and not report["per_subject"]:
        raise EvaluationFailed(str(shards), report["failed"])
    return report
