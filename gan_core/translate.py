"""Volume in -> synthetic CT out: NIfTI in HU with the input's affine and header.

>>> # translate_file("runs/p2p/model.pt", "sub/mr.nii.gz", "sub/sct.nii.gz")

2D models translate axial slices in batches; 3D models run sliding patches (50% overlap,
averaged). MR is normalised exactly as in training (robust percentiles inside the body mask);
the body mask comes from a file or is computed from the MR. Outside the body: -1000 HU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gan_core.data.masks import body_mask
from gan_core.data.nifti import Volume, check_same_grid, load_volume, save_volume
from gan_core.data.normalize import mr_to_unit, unit_to_ct
from gan_core.frameworks import GANFramework
from gan_core.train import load_model, translate_slices

AIR_HU = -1000.0


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
                acc[sl] += fw.generate(torch.from_numpy(xp[(slice(None), *sl)].copy())[None]).cpu().numpy()[0, 0]
                cnt[sl] += 1
    out = acc / np.maximum(cnt, 1)
    return out[: x.shape[1], : x.shape[2], : x.shape[3]]


def translate_array(fw: GANFramework, mr: np.ndarray, mask: np.ndarray | None = None, *,
                    batch_size: int = 16) -> np.ndarray:
    """MR volume (X, Y, Z) in scanner units -> synthetic CT (X, Y, Z) float32 in HU."""
    mr = np.asarray(mr, np.float32)
    if mr.ndim != 3:
        raise ValueError(f"translate expects a 3D MR volume, got shape {mr.shape}")
    mask = body_mask(mr) if mask is None else (np.asarray(mask) > 0).astype(np.uint8)
    x = np.moveaxis(mr_to_unit(mr, mask), 2, 0)  # (Z, X, Y)
    if fw.cfg.model.spatial_dims == 3:
        y = translate_patches(fw, x)
    else:
        outs = []
        for z in range(0, x.shape[0], batch_size):
            outs.append(translate_slices(fw, torch.from_numpy(x[z:z + batch_size].copy())[:, None]).numpy()[:, 0])
        y = np.concatenate(outs, 0)
    hu = unit_to_ct(np.moveaxis(y, 0, 2)).astype(np.float32)
    return np.where(mask > 0, hu, AIR_HU).astype(np.float32)


def translate_file(model: str | Path | GANFramework, mr_path: str | Path, out_path: str | Path, *,
                   mask_path: str | Path | None = None, batch_size: int = 16,
                   device: str = "cpu") -> Path:
    """Translate one NIfTI MR to a synthetic CT NIfTI (int16 HU, the MR's affine and header)."""
    fw = model if isinstance(model, GANFramework) else load_model(model, device)
    mr = load_volume(mr_path)
    mask = None
    if mask_path is not None:
        mvol = load_volume(mask_path)
        check_same_grid(mr, mvol, names=("MR", "mask"))
        mask = mvol.array
    hu = translate_array(fw, mr.array, mask, batch_size=batch_size)
    return save_volume(out_path, np.round(hu).astype(np.int16), like=mr, dtype=np.int16)


__all__ = ["translate_array", "translate_file", "translate_patches", "Volume"]
