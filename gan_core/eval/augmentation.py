"""Data augmentation with synthetic images, judged by a downstream tissue segmenter.

The question: does adding images a conditional generator made from label maps to a SMALL real
training set improve segmentation of held-out subjects? :func:`run_augmentation_experiment`:

* real set: the slices (image + tissue labels) of the first ``n_real_subjects`` training subjects
  (shard order), slices with a body fraction below ``min_body_fraction`` dropped;
* synthetic set: ``n_synthetic`` label-map slices drawn (seeded; without replacement while there
  are enough) from ALL training subjects, or from ``label_source_shards``, turned into images by
  ``synthesize(one_hot(labels))`` — label maps are cheap relative to paired images (an atlas,
  a segmentation of unpaired scans, or edited maps), so the default uses every training subject's
  labels although only ``n_real_subjects`` come with real images;
* two arms with the same steps and seed: a segmenter (:func:`gan_core.eval.segment.train_segmenter`)
  on real only, and one on real + synthetic (slices drawn uniformly from the union);
* evaluation per held-out test subject over its whole volume (3D Dice per class, then the mean
  over the foreground classes present; background excluded), reported as mean ± sd over test
  subjects, per-class Dice, and the gain (augmented − real);
* ``repeats > 1``: the whole experiment (label-map draw, synthesis, both trainings) is repeated
  with seeds ``seed, seed + 1, ...``; the spread over repeats is reported too.

A synthesizer is any callable ``one-hot (B, n_classes, H, W) -> image (B, 1, H, W)`` in [-1, 1]
(e.g. a label-conditioned generator's ``G(onehot)``); :func:`lut_synthesizer` is the
non-learned reference (each tissue painted with its mean training HU).

>>> # synth = lut_synthesizer("shards/train")
>>> # rep = run_augmentation_experiment("shards/train", "shards/test", synth, n_real_subjects=2,
>>> #                                   n_synthetic=200, steps=2000)
>>> # print(augmentation_table(rep))
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from gan_core.data.phantom import TISSUES
from gan_core.data.shards import Shards
from gan_core.eval.segment import class_mean, dice_per_class, load_slices, predict, train_segmenter
from gan_core.tasks.labels2ct import one_hot

__all__ = ["Synthesizer", "lut_synthesizer", "synthesize_slices", "run_augmentation_experiment",
           "augmentation_table", "class_names"]

Synthesizer = Callable[[Tensor], Tensor]
PathLike = str | os.PathLike


def class_names(n_classes: int) -> list[str]:
    """Tissue names of label values ``0..n_classes-1`` (``class_<i>`` beyond the phantom's)."""
    by_value = {v: k for k, v in TISSUES.items()}
    return [by_value.get(i, f"class_{i}") for i in range(n_classes)]


def lut_synthesizer(train_shards: PathLike, n_classes: int = len(TISSUES)) -> Synthesizer:
    """The ``labels2ct`` look-up-table baseline as a synthesizer: each label painted with its
    mean training HU (fitted on ``train_shards``), returned in [-1, 1] as ``(B, 1, H, W)`` CT
    (so only meaningful with ``modality="ct"``)."""
    from gan_core.tasks import build_task, task_config
    from gan_core.tasks.base import Degraded

    sh = Shards(train_shards)
    task = build_task(task_config("labels2ct", n_classes=n_classes))
    task.check_slab(sh.arrays, str(sh.dir))
    task.fit_baseline(sh.subject_slab(i) for i in range(len(sh.subjects)))

    def synthesize(onehot: Tensor) -> Tensor:
        if onehot.dim() != 4 or onehot.shape[1] != n_classes:
            raise ValueError(f"lut synthesizer: expected one-hot (B, {n_classes}, H, W), "
                             f"got shape {tuple(onehot.shape)}")
        chw = onehot.detach().cpu().numpy().transpose(1, 0, 2, 3)  # (C, B, H, W), as a slab input
        img = task.baseline(Degraded(chw), {})
        return torch.from_numpy(np.asarray(img, np.float32))[:, None].to(onehot.device)

    return synthesize


def synthesize_slices(synthesize: Synthesizer, labels: np.ndarray, n_classes: int, *,
                      seed: int = 0, batch_size: int = 32,
                      device: str | torch.device = "cpu") -> np.ndarray:
    """Images ``(N, 1, H, W)`` float32 in [-1, 1] from label maps ``(N, H, W)``.

    Runs ``synthesize`` without gradients on one-hot batches on ``device``, with torch's RNG
    seeded from ``seed`` (restored afterwards) so a stochastic generator is reproducible on CPU;
    outputs are clipped to [-1, 1]. ValueError for a wrong shape or non-finite output.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels: expected (N, H, W), got shape {labels.shape}")
    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for i in range(0, labels.shape[0], batch_size):
            lab = labels[i:i + batch_size]
            oh = torch.from_numpy(one_hot(lab, n_classes, "synthetic label maps")).transpose(0, 1)
            img = synthesize(oh.contiguous().to(device))
            if not isinstance(img, Tensor) or tuple(img.shape) != (lab.shape[0], 1, *lab.shape[1:]):
                shape = tuple(img.shape) if isinstance(img, Tensor) else type(img).__name__
                raise ValueError(f"synthesize: expected a tensor (B, 1, H, W) = "
                                 f"{(lab.shape[0], 1, *lab.shape[1:])}, got {shape}")
            img = img.detach().float().cpu()
            if not torch.isfinite(img).all():
                raise ValueError("synthesize: returned non-finite values")
            out.append(img.clamp(-1, 1).numpy())
    if not out:
        return np.zeros((0, 1, *labels.shape[1:]), np.float32)
    return np.concatenate(out).astype(np.float32)


def _none_if_nan(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return [_none_if_nan(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return None if math.isnan(float(x)) else float(x)
    return x


def _mean(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if not math.isnan(x)], np.float64)
    return float(v.mean()) if v.size else float("nan")


def _sd(values: Sequence[float]) -> float:
    v = np.asarray([x for x in values if not math.isnan(x)], np.float64)
    return float(v.std(ddof=1)) if v.size >= 2 else float("nan")


def _nanmean(a: np.ndarray, axis: int) -> np.ndarray:
    a = np.asarray(a, np.float64)
    n = (~np.isnan(a)).sum(axis)
    s = np.nansum(a, axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, s / np.maximum(n, 1), np.nan)


def _evaluate(model, test: tuple[np.ndarray, np.ndarray, np.ndarray], ids: list[str],
              n_classes: int) -> dict[str, Any]:
    """3D Dice per test subject (all its slices), then the arm's summary."""
    images, labels, subj = test
    pred = predict(model, images)
    per_subject, per_class_rows = [], []
    for i in np.unique(subj):
        sel = subj == i
        pc = dice_per_class(pred[sel], labels[sel], n_classes)
        per_class_rows.append(pc)
        per_subject.append({"id": ids[int(i)], "mean_dice": class_mean(pc), "per_class": pc.tolist()})
    means = [s["mean_dice"] for s in per_subject]
    return {"mean": _mean(means), "sd": _sd(means),
            "per_class": _nanmean(np.stack(per_class_rows), 0).tolist(),
            "per_subject": per_subject}


def _summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """An arm over repeats: mean, sd over test subjects (of each subject's repeat-mean), sd over
    repeats (of the subject-mean), per-class mean."""
    per_repeat = [r["mean"] for r in runs]
    subj = np.array([[s["mean_dice"] for s in r["per_subject"]] for r in runs], np.float64)
    subj_means = _nanmean(subj, 0)
    pcs = np.stack([np.asarray(r["per_class"], np.float64) for r in runs])
    return {"mean": _mean(per_repeat), "sd_subjects": _sd(list(subj_means)), "sd_repeats": _sd(per_repeat),
            "per_repeat": per_repeat, "per_class": _nanmean(pcs, 0).tolist(),
            "per_subject": [{"id": s["id"], "mean_dice": float(m)}
                            for s, m in zip(runs[0]["per_subject"], subj_means)]}


def run_augmentation_experiment(
    train_shards: PathLike, test_shards: PathLike, synthesize: Synthesizer | None, *,
    n_real_subjects: int, n_synthetic: int, label_source_shards: PathLike | None = None,
    modality: str = "ct", steps: int = 2000, seed: int = 0, repeats: int = 1,
    device: str | torch.device = "cpu", n_classes: int = len(TISSUES), batch_size: int = 8,
    lr: float = 3e-3, widths: Sequence[int] = (16, 32, 64), min_body_fraction: float = 0.05,
) -> dict[str, Any]:
    """Segmentation Dice on held-out subjects with and without synthetic training images.

    See the module docstring for the protocol. ``synthesize=None`` runs only the real-only arm
    (``augmented`` and ``gain`` are then None). ``n_classes``: label values / one-hot channels the
    synthesizer expects. Returns a JSON-ready dict (NaN written as None): ``settings``,
    ``class_names``, ``real`` / ``augmented`` (``mean``, ``sd_subjects``, ``sd_repeats``,
    ``per_repeat``, ``per_class``, ``per_subject``), ``gain`` (``mean``, ``sd_repeats``,
    ``per_repeat``, ``per_class``) and ``runs`` (each repeat's arms in full).
    """
    train_sh, test_sh = Shards(train_shards), Shards(test_shards)
    n_train = len(train_sh.subjects)
    if not 1 <= n_real_subjects <= n_train:
        raise ValueError(f"n_real_subjects: expected 1..{n_train} (training subjects in "
                         f"{train_sh.dir}), got {n_real_subjects}")
    if synthesize is not None and n_synthetic < 1:
        raise ValueError(f"n_synthetic: expected >= 1 with a synthesizer, got {n_synthetic}")
    if synthesize is not None and not callable(synthesize):
        raise TypeError(f"synthesize: expected a callable or None, got {type(synthesize).__name__}")
    if repeats < 1:
        raise ValueError(f"repeats: expected >= 1, got {repeats}")
    if steps < 1:
        raise ValueError(f"steps: expected >= 1, got {steps}")

    real_x, real_y, _ = load_slices(train_sh.dir, modality, min_body_fraction,
                                    subjects=range(n_real_subjects))
    if real_x.shape[0] == 0:
        raise ValueError(f"no real training slice with a body fraction >= {min_body_fraction} "
                         f"in the first {n_real_subjects} subjects of {train_sh.dir}")
    test = load_slices(test_sh.dir, modality, 0.0)
    test_ids = [s["id"] for s in test_sh.subjects]
    label_dir = Shards(label_source_shards).dir if label_source_shards is not None else train_sh.dir
    pool = None
    if synthesize is not None:
        _, pool, _ = load_slices(label_dir, modality, min_body_fraction)
        if pool.shape[1:] != real_y.shape[1:]:
            raise ValueError(f"label_source_shards {label_dir}: slices {pool.shape[1:]} differ "
                             f"from the training slices {real_y.shape[1:]}")
        if pool.shape[0] == 0:
            raise ValueError(f"{label_dir}: no label map with a body fraction >= {min_body_fraction}")

    train_kw = dict(n_classes=n_classes, steps=steps, batch_size=batch_size, lr=lr,
                    device=device, widths=widths)
    runs = []
    for r in range(repeats):
        s = seed + r
        run: dict[str, Any] = {"seed": s}
        model = train_segmenter(real_x, real_y, seed=s, **train_kw)
        run["real"] = _evaluate(model, test, test_ids, n_classes)
        if synthesize is not None:
            rng = np.random.default_rng([s, 0xA06])
            pick = rng.choice(pool.shape[0], size=n_synthetic, replace=n_synthetic > pool.shape[0])
            syn_y = pool[np.sort(pick)]
            syn_x = synthesize_slices(synthesize, syn_y, n_classes, seed=s, device=device)
            model = train_segmenter(np.concatenate([real_x, syn_x]), np.concatenate([real_y, syn_y]),
                                    seed=s, **train_kw)
            run["augmented"] = _evaluate(model, test, test_ids, n_classes)
            run["gain"] = run["augmented"]["mean"] - run["real"]["mean"]
        runs.append(run)

    report: dict[str, Any] = {
        "settings": {
            "train_shards": str(train_sh.dir), "test_shards": str(test_sh.dir),
            "label_source_shards": str(label_dir) if synthesize is not None else None,
            "modality": modality, "n_real_subjects": n_real_subjects,
            "real_subjects": [x["id"] for x in train_sh.subjects[:n_real_subjects]],
            "n_real_slices": int(real_x.shape[0]),
            "n_synthetic": int(n_synthetic) if synthesize is not None else 0,
            "n_label_maps_available": int(pool.shape[0]) if pool is not None else None,
            "test_subjects": test_ids, "steps": steps, "seed": seed, "repeats": repeats,
            "batch_size": batch_size, "lr": lr, "widths": list(widths), "n_classes": n_classes,
            "min_body_fraction": min_body_fraction, "device": str(device),
            "dice": "3D per test subject, mean over present foreground classes (background excluded)",
        },
        "class_names": class_names(n_classes),
        "real": _summarise([x["real"] for x in runs]),
        "augmented": None, "gain": None,
        "runs": runs,
    }
    if synthesize is not None:
        aug = _summarise([x["augmented"] for x in runs])
        gains = [x["gain"] for x in runs]
        report["augmented"] = aug
        per_class = np.asarray(aug["per_class"]) - np.asarray(report["real"]["per_class"])
        report["gain"] = {"mean": _mean(gains), "sd_repeats": _sd(gains), "per_repeat": gains,
                          "per_class": per_class.tolist()}
    return _json_ready(report)


def _json_ready(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_ready(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    return _none_if_nan(x)


def _fmt(x: float | None, sd: float | None = None) -> str:
    """``0.123``, ``0.123 ± 0.045`` (sd None: without it), ``–`` for a missing value."""
    if x is None:
        return "–"
    return f"{x:.3f}" if sd is None else f"{x:.3f} ± {sd:.3f}"


def augmentation_table(report: dict[str, Any]) -> str:
    """Markdown: the two arms (mean Dice ± sd over test subjects, sd over repeats, training
    slices) and the per-class Dice with the gain."""
    st = report["settings"]
    arms = [("real only", report["real"], st["n_real_slices"])]
    if report.get("augmented") is not None:
        arms.append(("real + synthetic", report["augmented"], st["n_real_slices"] + st["n_synthetic"]))
    lines = [
        f"Segmentation of {len(st['test_subjects'])} held-out subjects ({st['modality']}; "
        f"{st['n_real_subjects']} real training subjects, {st['n_synthetic']} synthetic slices, "
        f"{st['steps']} steps, {st['repeats']} repeat(s) from seed {st['seed']}). "
        "Mean 3D Dice over foreground classes.",
        "",
        "| arm | training slices | mean Dice ± sd (subjects) | sd (repeats) |",
        "|---|---:|---:|---:|",
    ]
    for name, arm, n in arms:
        lines.append(f"| {name} | {n} | {_fmt(arm['mean'], arm['sd_subjects'])} | {_fmt(arm['sd_repeats'])} |")
    gain = report.get("gain")
    if gain is not None:
        lines.append(f"| gain | | {_fmt(gain['mean'])} | {_fmt(gain['sd_repeats'])} |")
    lines += ["", "| class | " + " | ".join(n for n, _, _ in arms) + (" | gain |" if gain else " |"),
              "|---|" + "---:|" * (len(arms) + (1 if gain else 0))]
    for c, name in enumerate(report["class_names"]):
        if c == 0:
            continue
        cells = [_fmt(arm["per_class"][c]) for _, arm, _ in arms]
        if gain is not None:
            g = gain["per_class"][c]
            cells.append("–" if g is None else f"{g:+.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
