"""The one training loop, shared by the local CLI and every Ray Train worker.

>>> # from gan_core.presets import preset
>>> # result = train(preset("demo", "pix2pix"), "shards", "runs/p2p")

What it does, in order: seed, build the framework, optionally wrap its nets (DDP), resume from
``<out>/checkpoint.pt`` if present (nets, optimizers, schedulers, image pools, RNG states, step),
then ``for step in range(start, total)``: one ``train_step``, ``step_schedulers``, log, checkpoint.
Samples come from ``InfiniteSampler`` keyed on the step, so a resumed run sees exactly the
batches an uninterrupted one would have seen.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gan_core.config import TrainConfig
from gan_core.data.shards import InfiniteSampler, PatchDataset, Shards, SliceDataset
from gan_core.frameworks import GANFramework, build_framework
from gan_core.frameworks.base import generator_multiple
from gan_core.presets import from_dict
from gan_core.tasks import build_task

CHECKPOINT = "checkpoint.pt"
MODEL = "model.pt"

ReportFn = Callable[[int, dict[str, float], "Path | None"], None]


@dataclass
class TrainResult:
    steps: int
    out_dir: Path
    model_path: Path
    seconds: float
    images_per_s: float
    val_mae: float | None
    last: dict[str, float] = field(default_factory=dict)


def pick_device(name: str | None = None) -> torch.device:
    if name and name != "auto":
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_dataset(cfg: TrainConfig, shard_dir: str | Path, *, train: bool = True):
    d = cfg.data
    task = build_task(cfg.task)
    if cfg.model.spatial_dims == 3:
        return PatchDataset(shard_dir, patch=(d.patch_depth, d.image_size, d.image_size),
                            flip=d.flip and train, seed=cfg.seed, task=task)
    return SliceDataset(shard_dir, image_size=d.image_size, flip=d.flip and train,
                        min_body_fraction=d.min_body_fraction, seed=cfg.seed, task=task)


def _rng_state() -> dict[str, Any]:
    st = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict[str, Any]) -> None:
    torch.set_rng_state(st["torch"])
    np.random.set_state(st["numpy"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_checkpoint(fw: GANFramework, step: int, path: Path) -> None:
    _atomic_save({"step": step, "config": fw.cfg.to_dict(), "framework": fw.state_dict(),
                  "rng": _rng_state()}, path)


def save_model(fw: GANFramework, path: Path, extra: dict[str, Any] | None = None) -> None:
    """Inference weights + config (no optimizer state): what ``load_model`` reads."""
    _atomic_save({"config": fw.cfg.to_dict(), "nets": {k: v.state_dict() for k, v in fw.nets.items()},
                  "framework": fw.name, **(extra or {})}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GANFramework:
    """A framework in eval mode from ``model.pt`` or ``checkpoint.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL if (path / MODEL).exists() else path / CHECKPOINT
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - reported with the file name
        raise ValueError(f"{path}: not a medgan model/checkpoint ({exc})") from exc
    if not isinstance(sd, dict) or "config" not in sd:
        raise ValueError(f"{path}: not a medgan model/checkpoint (no 'config' entry)")
    cfg = from_dict(sd["config"])
    cfg.compile = False
    fw = build_framework(cfg, device=device)
    nets = sd["nets"] if "nets" in sd else sd["framework"]["nets"]
    for k, net in fw.nets.items():
        net.load_state_dict(nets[k])
    fw.train(False)
    return fw


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
        from gan_core.translate import translate_patches  # (translate imports this module)

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
def synthesis_distance(fw: GANFramework, shard_dir: str | Path, task, n: int = 64) -> float:
    """W1 distance (in [-1, 1] units) between pixel intensities of ``n`` samples and ``n`` val
    slices (seeded crops of the model's size): 0 when the intensity distributions agree."""
    s = fw.cfg.data.image_size
    ds = SliceDataset(shard_dir, image_size=s, min_body_fraction=fw.cfg.data.min_body_fraction,
                      seed=fw.cfg.seed, task=task)
    idx = np.linspace(0, len(ds) - 1, num=min(n, len(ds))).round().astype(int)
    real = np.sort(np.concatenate([ds[(0, int(i), int(i))]["B"].numpy().ravel() for i in idx]))
    if hasattr(fw, "sample"):  # seeded noise: the same samples at every validation
        fake = fw.sample(len(idx), generator=torch.Generator().manual_seed(fw.cfg.seed))
    else:
        fake = fw.generate(torch.zeros(len(idx), 0, s, s))
    fake = np.sort(fake.cpu().numpy().ravel())
    return float(np.abs(real - fake).mean())


def translate_slices(fw: GANFramework, x: torch.Tensor) -> torch.Tensor:
    """Generate on (N, C, H, W) slices of any size: pad to the generator's multiple, crop back."""
    mult = generator_multiple(fw.cfg.model)
    h, w = x.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    if ph or pw:
        x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
    y = fw.generate(x).cpu()
    return y[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


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
        ck = torch.load(src, map_location=device, weights_only=False)
        fw.load_state_dict(ck["framework"])
        start = int(ck["step"])
        if world_size == 1:
            _set_rng_state(ck["rng"])
        else:  # each rank continues its own stream, deterministically from the step
            torch.manual_seed(cfg.seed * 1000 + rank + start)
    if wrap is not None:
        fw.wrap_networks(wrap)
    fw.train(True)
    if on_start is not None:
        on_start(fw)

    train_dir = data_dir / "train" if (data_dir / "train").is_dir() else data_dir
    val_dir = data_dir / "val" if (data_dir / "val").is_dir() else None
    ds = make_dataset(cfg, train_dir)
    bs = cfg.data.batch_size
    sampler = InfiniteSampler(len(ds), paired=fw.paired, seed=cfg.seed, rank=rank,
                              world_size=world_size, start=start * bs)
    loader = DataLoader(ds, batch_size=bs, sampler=sampler, num_workers=cfg.data.num_workers,
                        pin_memory=device.type == "cuda", drop_last=True,
                        # its own generator: starting the iterator must not draw from the global
                        # RNG that the frameworks' noise (DCGAN z, dropout) uses, or a resumed
                        # run would diverge from an uninterrupted one
                        generator=torch.Generator().manual_seed(cfg.seed * 1000 + rank),
                        persistent_workers=cfg.data.num_workers > 0)
    total = cfg.total_steps if max_steps is None else min(cfg.total_steps, max_steps)
    history_path = out_dir / "history.jsonl"
    last: dict[str, float] = {}
    val_mae: float | None = None
    t0 = time.perf_counter()
    batches = iter(loader)
    bar = tqdm(range(start, total), initial=start, total=total, disable=not (progress and is_main),
               desc=f"{cfg.framework}", dynamic_ncols=True)
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
            bar.set_postfix({k: f"{v:.3g}" for k, v in last.items() if k in ("G", "D", "val_mae")})
            ck_written = None
            if done % cfg.checkpoint_every == 0 or done == total:
                if is_main:
                    save_checkpoint(fw, done, ckpt_path)
                ck_written = ckpt_path
            if is_main:
                with history_path.open("a") as f:
                    f.write(json.dumps({"step": done, **last}) + "\n")
            if report is not None:
                report(done, last, ck_written)
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
