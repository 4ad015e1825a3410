"""Validation during training: the task's error in its target units, or a synthesis distance.

>>> # mae = validate(fw, "shards/val")   # HU for CT targets, the [0, 1] magnitude for MR
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gan_core.data.shards import PatchDataset, Shards, SliceDataset
from gan_core.engine.infer import translate_patches, translate_slices
from gan_core.frameworks import GANFramework
from gan_core.tasks import Task, build_task

__all__ = ["validate", "synthesis_distance"]


@torch.no_grad()
def validate(fw: GANFramework, shard_dir: str | Path, max_slices: int = 64) -> float:
    """Mean absolute error inside the body mask, in the task's target units (HU for CT targets,
    the [0, 1] magnitude for MR), over (up to) ``max_slices`` val slices (3D models: every val
    subject, translated by sliding patches). Unconditional synthesis has no per-image target:
    there it is the 1-D Wasserstein distance between the pixel intensities of ``max_slices``
    samples and as many val slices (a cheap proxy for Ray Tune; ``gan_core.synthesis_eval`` has
    the Fréchet distance).
    """
    task = build_task(fw.cfg.task)
    scale = task.target_scale
    if task.in_channels == 0:
        return synthesis_distance(fw, shard_dir, task, n=max_slices) * scale
    err = n = 0.0
    if fw.cfg.model.spatial_dims == 3:
        sh = Shards(shard_dir)
        ds = PatchDataset(sh, patch=(1, 1, 1), task=task)
        for i in range(len(sh.subjects)):
            slab = sh.subject_slab(i)
            m = slab["mask"] > 0
            pred = translate_patches(fw, ds.inputs.subject_input(i))
            err += float((np.abs(pred - slab[task.target]) * scale)[m].sum())
            n += float(m.sum())
        return err / max(n, 1.0)
    ds = SliceDataset(shard_dir, min_body_fraction=0.05, task=task)
    idx = np.linspace(0, len(ds) - 1, num=min(max_slices, len(ds))).round().astype(int)
    for i in idx:
        s = ds[int(i)]
        pred = translate_slices(fw, s["A"][None])
        m = s["mask"][None] > 0
        err += float(((pred - s["B"][None]).abs() * scale)[m].sum())
        n += float(m.sum())
    return err / max(n, 1.0)


@torch.no_grad()
def synthesis_distance(fw: GANFramework, shard_dir: str | Path, task: Task, n: int = 64) -> float:
    """W1 distance (in [-1, 1] units) between pixel intensities of ``n`` samples and ``n`` val
    slices (seeded crops of the model's size): 0 when the intensity distributions agree.
    The samples come from ``fw.sample`` with seeded noise: the same samples at every validation."""
    s = fw.cfg.data.image_size
    ds = SliceDataset(shard_dir, image_size=s, min_body_fraction=fw.cfg.data.min_body_fraction,
                      seed=fw.cfg.seed, task=task)
    idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    real = np.sort(np.concatenate([ds[(0, int(i), int(i))]["B"].numpy().ravel() for i in idx]))
    fake = fw.sample(len(idx), generator=torch.Generator().manual_seed(fw.cfg.seed))
    fake = np.sort(fake.cpu().numpy().ravel())
    return float(np.abs(real - fake).mean())
