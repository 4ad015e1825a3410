"""Quality of unconditional synthesis (DCGAN, LAPGAN): in-domain Fréchet distance + sample grids.

The extractor is trained on the REAL training split (``gan_core.eval.fid``: the encoder of a tissue
segmenter, not ImageNet Inception). Every model's samples are compared with the held-out test
slices; the FD between the real training and real test slices is reported beside them as the
floor a perfect generator would reach with this many samples.

>>> # rep = synthesis_report({"dcgan": fw}, "shards/train", "shards/test", "eval/synth")
>>> # rep["aggregate"]["dcgan"]["fd"]["mean"]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gan_core.eval.fid import FeatureExtractor, fd_score
from gan_core.eval.report import save_grid
from gan_core.eval.segment import load_slices
from gan_core.frameworks import GANFramework

REAL = "real (train vs test)"


def _crops(images: np.ndarray, size: int, seed: int) -> np.ndarray:
    """Random ``size`` crops (one per slice, seeded) when the model works on crops."""
    h, w = images.shape[-2:]
    if size >= h and size >= w:
        return images
    rng = np.random.default_rng(seed)
    ys, xs = rng.integers(0, h - size + 1, len(images)), rng.integers(0, w - size + 1, len(images))
    return np.stack([im[:, y:y + size, x:x + size] for im, y, x in zip(images, ys, xs)])


def sample(fw: GANFramework, n: int, seed: int, batch_size: int = 64) -> np.ndarray:
    """``n`` samples ``(n, 1, s, s)`` in [-1, 1] from an unconditional framework (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(0, n, batch_size):
        k = min(batch_size, n - i)
        out.append(fw.sample(k, generator=g).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def synthesis_report(models: dict[str, GANFramework], train_shards: str | Path,
                     test_shards: str | Path, out_dir: str | Path, *, seed: int = 0,
                     device: str = "cpu", n_samples: int | None = None, repeats: int = 3,
                     extractor: FeatureExtractor | None = None, extractor_steps: int = 1500,
                     min_body_fraction: float = 0.1) -> dict:
    """FD (mean ± sd over ``repeats`` sample draws) of each model vs the real test slices, the
    real train-vs-test floor; writes the sample grids and the extractor weights under ``out_dir``
    and returns the report (``gan_core.eval.evaluate.evaluate`` writes it as ``metrics.json``)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not models:
        raise ValueError("synthesis_report: no model given")
    modality = next(iter(models.values())).cfg.task.modality
    size = next(iter(models.values())).cfg.data.image_size
    tr_img, tr_lab, _ = load_slices(train_shards, modality, min_body_fraction)
    te_img, _, _ = load_slices(test_shards, modality, min_body_fraction)
    if extractor is None:
        extractor = FeatureExtractor(device=device).fit(tr_img, tr_lab, steps=extractor_steps, seed=seed)
    extractor.save(out_dir / "fd_encoder.pt")
    n = int(n_samples or len(te_img))
    real_te = _crops(te_img, size, seed)
    agg: dict[str, dict] = {}
    floor = [fd_score(extractor, _crops(tr_img, size, seed + r), real_te) for r in range(repeats)]
    agg[REAL] = {"fd": {"mean": float(np.mean(floor)), "sd": float(np.std(floor, ddof=1)) if repeats > 1 else 0.0}}
    for name, fw in models.items():
        if fw.cfg.data.image_size != size or fw.cfg.task.modality != modality:
            raise ValueError(f"synthesis_report: model {name!r} makes {fw.cfg.data.image_size}px "
                             f"{fw.cfg.task.modality} slices, the first makes {size}px {modality}")
        scores = []
        for r in range(repeats):
            fake = sample(fw, n, seed=seed * 1000 + r)
            scores.append(fd_score(extractor, real_te, fake))
            if r == 0:
                save_grid(out_dir / "figures" / f"{name}_samples.png", fake[:32])
        agg[name] = {"fd": {"mean": float(np.mean(scores)),
                            "sd": float(np.std(scores, ddof=1)) if repeats > 1 else 0.0}}
    save_grid(out_dir / "figures" / "real_test.png", real_te[:32])
    lines = ["| samples | in-domain FD (mean ± sd over draws) |", "|---|---|"]
    lines += [f"| {k} | {v['fd']['mean']:.3f} ± {v['fd']['sd']:.3f} |" for k, v in agg.items()]
    report = {"task": "synth", "modality": modality, "image_size": size, "n_samples": n,
              "n_train_real": int(len(tr_img)), "n_test_real": int(len(te_img)), "repeats": repeats,
              "extractor": "SegUNet encoder trained on the real train split (fd_encoder.pt)",
              "methods": list(agg), "aggregate": agg, "failed": [], "table": "\n".join(lines)}
    return report
