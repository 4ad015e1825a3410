"""The one training loop, shared by the local CLI and every Ray Train worker.

>>> # from gan_core.presets import preset
>>> # result = train(preset("demo", "pix2pix"), "shards", "runs/p2p")

What it does, in order: seed, build the framework, optionally wrap its nets (DDP), resume from
``<out>/checkpoint.pt`` if present (nets, optimizers, schedulers, image pools, RNG states, step),
then ``for step in range(start, total)``: one ``train_step``, ``step_schedulers``, log, checkpoint.
Samples come from ``InfiniteSampler`` keyed on the step, so a resumed run sees exactly the
batches an uninterrupted one would have seen. 2D batches are read by
:class:`gan_core.data.batches.SliceBatches` (one gather per array, crop/flip on the device, only
the arrays ``fw.batch_keys()`` names; ``data.device_resident`` keeps the split on the device);
3D patches by a ``DataLoader`` over :class:`~gan_core.data.shards.PatchDataset`.

Losses are read from the device every ``log_every`` steps (history.jsonl); ``report`` is called
at those steps once ``log_every_s`` seconds passed since the last call (all ranks decide
together), at every checkpoint and at the end.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from gan_core.config import TrainConfig
from gan_core.data.batches import SliceBatches, prefetch
from gan_core.data.shards import InfiniteSampler, PatchDataset, Shards, SliceDataset
from gan_core.engine.checkpoint import (CHECKPOINT, MODEL, load_checkpoint, save_checkpoint,
                                        save_model, set_rng_state)
from gan_core.engine.validate import validate
from gan_core.frameworks import GANFramework, build_framework
from gan_core.tasks import build_task

__all__ = ["ReportFn", "TrainResult", "pick_device", "make_dataset", "train"]

#: ``report(step, metrics, checkpoint_path_or_None)``, called on every rank at the same steps:
#: log steps ``log_every_s`` apart, checkpoint steps and the last step.
ReportFn = Callable[[int, dict[str, float], "Path | None"], None]


@dataclass
class TrainResult:
    """What :func:`train` returns: steps reached, where the model is, speed and the val error."""

    steps: int
    out_dir: Path
    model_path: Path
    seconds: float
    images_per_s: float
    val_mae: float | None
    last: dict[str, float] = field(default_factory=dict)


def pick_device(name: str | None = None) -> torch.device:
    """``name`` as a device; ``None`` / ``"auto"``: CUDA when available, else the CPU."""
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_dataset(cfg: TrainConfig, shard_dir: str | Path, *, train: bool = True) -> Dataset:
    """The task's samples from a shard folder: slices (2D models) or patches (3D models)."""
    d = cfg.data
    task = build_task(cfg.task)
    if cfg.model.spatial_dims == 3:
        return PatchDataset(shard_dir, patch=(d.patch_depth, d.image_size, d.image_size),
                            flip=d.flip and train, seed=cfg.seed, task=task)
    return SliceDataset(shard_dir, image_size=d.image_size, flip=d.flip and train,
                        min_body_fraction=d.min_body_fraction, seed=cfg.seed, task=task)


def train(cfg: TrainConfig, data_dir: str | Path, out_dir: str | Path, *,
          device: str | torch.device | None = None, rank: int = 0, world_size: int = 1,
          wrap: Callable[[torch.nn.Module], Any] | None = None, report: ReportFn | None = None,
          resume_from: str | Path | None = None, max_steps: int | None = None,
          progress: bool = True,
          on_start: Callable[[GANFramework], None] | None = None) -> TrainResult:
    """Train ``cfg`` on ``<data_dir>/train`` shards; checkpoints and the model go to ``out_dir``.

    ``wrap``: applied to every net (e.g. DDP via ``ray.train.torch.prepare_model``).
    ``report(step, metrics, checkpoint_path_or_None)``: called on every rank at each log step.
    ``resume_from``: checkpoint file to resume (default ``<out_dir>/checkpoint.pt`` if present).
    ``max_steps``: stop early after this global step (the run stays resumable).
    ``on_start(fw)``: called once with the live framework (built, resumed, wrapped) before the
    first step, e.g. for a ``report`` hook that draws figures or exports the final model.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(str(device) if device is not None else None)
    is_main = rank == 0
    torch.manual_seed(cfg.seed * 1000 + rank)
    np.random.seed(cfg.seed * 1000 + rank)
    random.seed(cfg.seed * 1000 + rank)

    fw = build_framework(cfg, device=device)
    ckpt_path = out_dir / CHECKPOINT
    start = 0
    src = Path(resume_from) if resume_from else (ckpt_path if ckpt_path.exists() else None)
    if src is not None:
        ck = load_checkpoint(src, map_location=device)
        fw.load_state_dict(ck["framework"])
        start = int(ck["step"])
        if world_size == 1:
            set_rng_state(ck["rng"])
        else:  # each rank continues its own stream, deterministically from the step
            torch.manual_seed(cfg.seed * 1000 + rank + start)
    if wrap is not None:
        fw.wrap_networks(wrap)
    fw.train(True)
    if on_start is not None:
        on_start(fw)

    train_dir = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    val_dir = data_dir / "val" if (data_dir / "val").is_dir() else None
    bs = cfg.data.batch_size
    batches = _batch_stream(cfg, fw, train_dir, device, rank, world_size, start)
    total = cfg.total_steps if max_steps is None else min(cfg.total_steps, max_steps)
    history_path = out_dir / "history.jsonl"
    last: dict[str, float] = {}
    val_mae: float | None = None
    t0 = time.perf_counter()
    t_report = t0
    bar = _progress(range(start, total), initial=start, total=total,
                    enabled=progress and is_main, desc=f"{cfg.framework}")
    try:
        for step in bar:
            losses = fw.train_step(next(batches))
            fw.step_schedulers()
            done = step + 1
            if done % cfg.log_every == 0 or done == total:
                last = {**{k: float(v) for k, v in losses.items()}, "lr": fw.lr()}
                if cfg.val_every and done % cfg.val_every == 0 and val_dir is not None:
                    val_mae = validate(fw, val_dir)
                    fw.train(True)
                    last["val_mae"] = val_mae
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k in ("G", "D", "val_mae")})
                ck_written = None
                if done % cfg.checkpoint_every == 0 or done == total:
                    if is_main:
                        save_checkpoint(fw, done, ckpt_path)
                    ck_written = ckpt_path
                if is_main:
                    with history_path.open("a") as f:
                        f.write(json.dumps({"step": done, **last}) + "\n")
                now = time.perf_counter()
                if report is not None and _report_due(now - t_report >= cfg.log_every_s,
                                                      ck_written is not None or done == total,
                                                      world_size if cfg.log_every_s > 0 else 1):
                    report(done, last, ck_written)
                    t_report = now
    finally:
        if hasattr(batches, "close"):  # stops the reader threads now, not at garbage collection
            batches.close()
    seconds = time.perf_counter() - t0
    steps_run = max(total - start, 0)
    if val_dir is not None and total == cfg.total_steps and "val_mae" not in last:
        val_mae = validate(fw, val_dir)
        last["val_mae"] = val_mae
    model_path = out_dir / MODEL
    if is_main and total == cfg.total_steps:
        save_model(fw, model_path, {"val_mae": val_mae})
    return TrainResult(steps=total, out_dir=out_dir, model_path=model_path, seconds=seconds,
                       images_per_s=steps_run * bs * world_size / max(seconds, 1e-9),
                       val_mae=val_mae, last=last)


def _batch_stream(cfg: TrainConfig, fw: GANFramework, train_dir: Path, device: torch.device,
                  rank: int, world_size: int, start: int) -> Iterator[dict]:
    """This rank's training batches from step ``start`` on."""
    d, bs = cfg.data, cfg.data.batch_size
    if cfg.model.spatial_dims == 2:
        sb = SliceBatches(Shards(train_dir), image_size=d.image_size, flip=d.flip, seed=cfg.seed,
                          task=build_task(cfg.task), min_body_fraction=d.min_body_fraction,
                          keys=fw.batch_keys(), device=device, resident=d.device_resident)
        sampler = InfiniteSampler(len(sb), paired=fw.paired, seed=cfg.seed, rank=rank,
                                  world_size=world_size, start=start * bs)
        return prefetch(sb, sampler.batches(bs), batch_size=bs, workers=d.num_workers)
    if d.device_resident:
        raise ValueError("data.device_resident: only 2D models (model.spatial_dims: 2) keep shards "
                         "on the device; 3D patches are read by a DataLoader")
    ds = make_dataset(cfg, train_dir)
    sampler = InfiniteSampler(len(ds), paired=fw.paired, seed=cfg.seed, rank=rank,
                              world_size=world_size, start=start * bs)
    loader = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=d.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        # its own generator: starting the iterator must not draw from the global
                        # RNG that the frameworks' noise (DCGAN z, dropout) uses, or a resumed
                        # run would diverge from an uninterrupted one
                        generator=torch.Generator().manual_seed(cfg.seed * 1000 + rank),
                        persistent_workers=d.num_workers > 0)
    return iter(loader)


def _report_due(interval_passed: bool, must: bool, world_size: int) -> bool:
    """Whether to call ``report`` now: every rank gets the same answer (a Ray report is a barrier
    across ranks), so with several ranks the interval is decided by rank 0 and broadcast."""
    if must:
        return True
    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = torch.tensor([1 if interval_passed else 0])
        if torch.distributed.get_backend() == "nccl":
            flag = flag.cuda()
        torch.distributed.broadcast(flag, src=0)
        return bool(flag.item())
    return interval_passed


def _progress(it: range, *, initial: int, total: int, enabled: bool, desc: str):
    """A tqdm bar over ``it`` when enabled (tqdm is imported only then), else ``it`` itself."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, initial=initial, total=total, desc=desc, dynamic_ncols=True)
