"""Inference, driven by the model's task: slices, 3D patches, whole volumes and NIfTI files.

>>> # translate_file("runs/p2p/model.pt", "sub/mr.nii.gz", "sub/sct.nii.gz")   # MR -> CT, int16 HU
>>> # translate_file("runs/k4/model.pt", "sub/mr.nii.gz", "sub/recon.nii.gz")  # k-space, [0, 1]

A volume goes the way the task saw its training data: the raw input is normalised into the
network's unit space (``Task.normalize_input``: MR by robust percentiles inside the body mask, CT
from HU, label maps as integers), the task builds the network input from it (``Task.degrade``,
seeded: e.g. k-space undersampling; identity for MR -> CT), 2D models translate axial slices in
batches and 3D models run sliding patches (50% overlap, averaged), the task post-processes
(``Task.postprocess``, e.g. k-space data consistency) and the result goes back to the target's
units (``Task.to_target_units``: HU for CT with -1000 outside the body, the [0, 1] magnitude for
MR with 0 outside). The body mask comes from a file or from the input (``Task.input_mask``).
NIfTI output keeps the input's affine and header (CT: int16 HU; MR: float32) and is written to a
temporary name, then renamed.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from gan_core.engine.checkpoint import load_model
from gan_core.frameworks import GANFramework
from gan_core.frameworks.base import generator_multiple
from gan_core.tasks import build_task
from gan_core.tasks.base import Degraded

__all__ = ["translate_slices", "translate_patches", "predict_volume", "translate_array",
           "translate_file"]


def translate_slices(fw: GANFramework, x: torch.Tensor) -> torch.Tensor:
    """Generate on (N, C, H, W) slices of any size: pad to the generator's multiple, crop back."""
    mult = generator_multiple(fw.cfg.model)
    h, w = x.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    if ph or pw:
        x = torch.nn.functional.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1.0)
    y = fw.generate(x).cpu()
    return y[..., ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


def _starts(n: int, size: int) -> list[int]:
    if n <= size:
        return [0]
    step = max(size // 2, 1)
    s = list(range(0, n - size + 1, step))
    return s + [n - size] if s[-1] != n - size else s


def translate_patches(fw: GANFramework, x: np.ndarray) -> np.ndarray:
    """3D model on a normalised ``(Z, X, Y)`` slab (or a ``(C, Z, X, Y)`` multi-channel input):
    sliding patches with 50% overlap, averaged; returns ``(Z, X, Y)``."""
    x = np.asarray(x, np.float32)
    if x.ndim == 3:
        x = x[None]
    d = fw.cfg.data
    size = (d.patch_depth, d.image_size, d.image_size)
    pad = [(0, 0)] + [(0, max(0, s - n)) for s, n in zip(size, x.shape[1:])]
    xp = np.pad(x, pad, constant_values=-1.0)
    acc = np.zeros(xp.shape[1:], np.float32)
    cnt = np.zeros(xp.shape[1:], np.float32)
    for z in _starts(xp.shape[1], size[0]):
        for i in _starts(xp.shape[2], size[1]):
            for j in _starts(xp.shape[3], size[2]):
                sl = (slice(z, z + size[0]), slice(i, i + size[1]), slice(j, j + size[2]))
                patch = torch.from_numpy(xp[(slice(None), *sl)].copy())[None]
                acc[sl] += fw.generate(patch).cpu().numpy()[0, 0]
                cnt[sl] += 1
    out = acc / np.maximum(cnt, 1)
    return out[: x.shape[1], : x.shape[2], : x.shape[3]]


def predict_volume(fw: GANFramework, image: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """A model's output ``(Z, H, W)`` in [-1, 1] for a ``(C, Z, H, W)`` network input
    (2D models: axial slices in batches; 3D models: sliding patches)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 4:
        raise ValueError(f"predict_volume: expected a (C, Z, H, W) input, got shape {image.shape}")
    if fw.cfg.model.spatial_dims == 3:
        return translate_patches(fw, image)
    x = np.array(np.moveaxis(image, 1, 0))  # (Z, C, H, W), writable
    outs = [translate_slices(fw, torch.from_numpy(x[z:z + batch_size])).numpy()[:, 0]
            for z in range(0, x.shape[0], batch_size)]
    return np.concatenate(outs, 0).astype(np.float32)


def translate_array(fw: GANFramework, volume: np.ndarray, mask: np.ndarray | None = None, *,
                    batch_size: int = 16, seed: int = 0, degraded_input: bool = False) -> np.ndarray:
    """A raw input volume ``(X, Y, Z)`` of the model's task (MR in scanner units, CT in HU or a
    label map) -> its prediction ``(X, Y, Z)`` float32 in the target's units (module docstring).

    ``mask``: the body mask (default: ``Task.input_mask`` of the volume). ``seed``: the task's
    degradation RNG (e.g. the k-space sampling mask). ``degraded_input``: the volume is already
    the task's input as a scanner acquires it (``Task.acquired_input``: a real low-dose CT), so
    no degradation is simulated on it.
    """
    task = build_task(fw.cfg.task)
    if task.in_channels == 0:
        raise ValueError(f"task {task.name!r} is unconditional synthesis: the model has no input "
                         "volume to translate (sample it instead)")
    vol = np.asarray(volume, np.float32)
    if vol.ndim != 3:
        raise ValueError(f"translate expects a 3D {task.source} volume (X, Y, Z), got shape {vol.shape}")
    mask = task.input_mask(vol) if mask is None else (np.asarray(mask) > 0).astype(np.uint8)
    if mask.shape != vol.shape:
        raise ValueError(f"translate: the mask has shape {mask.shape}, the volume {vol.shape}")
    slab = {task.source: np.moveaxis(task.normalize_input(vol, mask), 2, 0),  # (Z, X, Y)
            "mask": np.moveaxis(mask, 2, 0)}
    if degraded_input:
        if not task.acquired_input:
            raise ValueError(f"task {task.name!r} simulates its input from a clean {task.source} "
                             "volume (it cannot take an acquired one): drop --degraded-input")
        deg = Degraded(np.asarray(slab[task.source], np.float32)[None])
    else:
        deg = task.degrade(slab, np.random.default_rng(seed))
    pred = task.postprocess(predict_volume(fw, deg.image, batch_size), deg)
    return task.to_target_units(np.moveaxis(pred, 0, 2), mask)


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def translate_file(model: str | Path | GANFramework, input_path: str | Path, out_path: str | Path,
                   *, mask_path: str | Path | None = None, batch_size: int = 16,
                   device: str = "cpu", seed: int = 0, degraded_input: bool = False) -> Path:
    """Translate one NIfTI input of the model's task to a NIfTI of its target, with the input's
    affine and header: CT targets as int16 HU, MR targets as float32 [0, 1]. The output may not
    be the input or the mask file (also through a symlink or another relative path)."""
    from gan_core.data.nifti import check_same_grid, load_volume, save_volume  # nibabel: only here

    input_path, out_path = Path(input_path), Path(out_path)
    for role, p in (("input", input_path), ("mask", mask_path)):
        if p is not None and _same_file(out_path, Path(p)):
            raise ValueError(f"--output {out_path} is the {role} file {p}: refusing to overwrite it; "
                             "choose another output path")
    fw = model if isinstance(model, GANFramework) else load_model(model, device)
    task = build_task(fw.cfg.task)
    vol = load_volume(input_path, name=f"input ({task.source or 'none'})")
    mask = None
    if mask_path is not None:
        mvol = load_volume(mask_path, name="mask")
        check_same_grid(vol, mvol, names=("input", "mask"))
        mask = mvol.array
    out = translate_array(fw, vol.array, mask, batch_size=batch_size, seed=seed,
                          degraded_input=degraded_input)
    if task.target == "ct":
        return save_volume(out_path, np.round(out).astype(np.int16), like=vol, dtype=np.int16)
    return save_volume(out_path, out, like=vol, dtype=np.float32)
