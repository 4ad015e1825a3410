"""In-domain Fréchet distance (FD) between sets of images — NOT the ImageNet FID.

The standard FID (Heusel et al. 2017) compares Inception-v3 features learnt on natural photos;
for CT/MR slices those features are out of domain and no ImageNet weights are needed here. This
module uses an *in-domain* encoder instead: the encoder half of the tissue segmenter
:class:`gan_core.eval.segment.SegUNet`, trained to segment tissue on the REAL training split
(:meth:`FeatureExtractor.fit`), or loaded from a user's own local weights file
(:meth:`FeatureExtractor.load`). A slice's feature vector is the global average pool of the
encoder's bottleneck (``F = widths[-1]`` channels), divided by one scalar ``feature_scale``: the
RMS per-dimension standard deviation of the real training features (set by ``fit``, saved with
the weights; 1 for a bare state_dict), so an FD of ~F means "as far apart as the spread of real
training slices" whatever the activation scale. Scores are only comparable between runs that use
the same extractor weights; report the weights file with the score.

``FD = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))`` of the feature means/covariances, computed
as pytorch-fid does (``scipy.linalg.sqrtm``; ``eps * I`` added to both covariances when the
product's square root is not finite, e.g. singular covariances of few samples; a negligible
imaginary part is dropped).

>>> import numpy as np
>>> frechet_distance(np.zeros(1), np.eye(1), np.full(1, 2.0), 4 * np.eye(1))  # 4 + (1 - 2)^2
5.0
>>> # fx = FeatureExtractor().fit(train_images, train_labels, n_classes=10, steps=2000)
>>> # fx.save("fd_encoder.pt"); fd_score(fx, real_images, generated_images)
"""

from __future__ import annotations

import os
import warnings
from typing import Sequence

import numpy as np
import torch
from scipy import linalg

from gan_core.eval.segment import SegUNet, load_segmenter, save_segmenter, segmenter_extra, train_segmenter

__all__ = ["FeatureExtractor", "statistics", "frechet_distance", "fd_score"]


class FeatureExtractor:
    """Global-average-pooled bottleneck features of an in-domain segmenter's encoder.

    ``model``: an existing :class:`SegUNet` (e.g. the one :func:`gan_core.eval.segment.train_segmenter`
    returned); otherwise call :meth:`fit` or :meth:`load` before :meth:`features`.
    ``feature_scale``: features are divided by it (see the module docstring).
    """

    def __init__(self, model: SegUNet | None = None, *, feature_scale: float = 1.0,
                 device: str | torch.device = "cpu") -> None:
        if model is not None and not isinstance(model, SegUNet):
            raise TypeError(f"model: expected a gan_core.eval.segment.SegUNet, got {type(model).__name__}")
        if not (np.isfinite(feature_scale) and feature_scale > 0):
            raise ValueError(f"feature_scale: expected a finite value > 0, got {feature_scale}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval() if model is not None else None
        self.feature_scale = float(feature_scale)

    def fit(self, train_images: np.ndarray | torch.Tensor, train_labels: np.ndarray | torch.Tensor,
            *, n_classes: int = 10, steps: int = 2000, batch_size: int = 8, lr: float = 3e-3,
            seed: int = 0, widths: Sequence[int] = (16, 32, 64)) -> "FeatureExtractor":
        """Train the encoder by segmenting tissue on real training slices ``(N, 1, H, W)`` with
        labels ``(N, H, W)`` (see :func:`gan_core.eval.segment.train_segmenter`), then set
        ``feature_scale`` from those slices' features; returns ``self``."""
        self.model = train_segmenter(train_images, train_labels, n_classes=n_classes, steps=steps,
                                     batch_size=batch_size, lr=lr, seed=seed, device=self.device,
                                     widths=widths)
        self.feature_scale = 1.0
        f = self.features(train_images)
        rms = float(np.sqrt(f.var(0).mean())) if f.shape[0] >= 2 else 0.0
        self.feature_scale = rms if np.isfinite(rms) and rms > 0 else 1.0
        return self

    def save(self, path: str | os.PathLike) -> None:
        """Write the weights and ``feature_scale`` (a :func:`gan_core.eval.segment.save_segmenter` file)."""
        save_segmenter(self._require(), path, extra={"feature_scale": self.feature_scale,
                                                     "features": "gap_bottleneck"})

    @classmethod
    def load(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
             **bare_state_dict_config) -> "FeatureExtractor":
        """An extractor from a local weights file (``save``'s format, or a bare ``SegUNet``
        state_dict with ``n_classes=``/``widths=``/``in_channels=``)."""
        model = load_segmenter(path, device, **bare_state_dict_config)
        scale = float(segmenter_extra(path).get("feature_scale", 1.0))
        return cls(model, feature_scale=scale, device=device)

    @property
    def dim(self) -> int:
        """Feature length ``F``."""
        return self._require().widths[-1]

    def _require(self) -> SegUNet:
        if self.model is None:
            raise RuntimeError("FeatureExtractor has no weights: call .fit(...) or "
                               "FeatureExtractor.load(path) first")
        return self.model

    @torch.no_grad()
    def features(self, images: np.ndarray | torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """``(N, F)`` float64 features of ``images (N, 1, H, W)`` in [-1, 1]."""
        model = self._require()
        x = torch.as_tensor(np.asarray(images, np.float32) if isinstance(images, np.ndarray) else images)
        if x.dim() != 4 or x.shape[1] != model.in_channels:
            raise ValueError(f"images: expected (N, {model.in_channels}, H, W), got shape {tuple(x.shape)}")
        out = [model.encode(x[i:i + batch_size].float().to(self.device))[-1].mean((2, 3)).cpu()
               for i in range(0, x.shape[0], batch_size)]
        if not out:
            return np.zeros((0, self.dim), np.float64)
        return torch.cat(out).double().numpy() / self.feature_scale


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(F,)`` and covariance ``(F, F)`` (rows are samples, ``ddof=1``) of ``(N, F)``."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features: expected (N, F) with N >= 2 samples, got shape {f.shape}")
    return f.mean(0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray,
                     eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Non-negative up to rounding (a tiny negative value is possible for identical inputs, as in
    pytorch-fid).
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mu1 {mu1.shape} and mu2 {mu2.shape}: expected vectors of the same length")
    if s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"sigma1 {s1.shape} and sigma2 {s2.shape}: expected ({d}, {d}) covariances")
    diff = mu1 - mu2
    with warnings.catch_warnings():  # singular products are handled below, as in pytorch-fid
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.max(np.abs(np.diagonal(covmean).imag))
        scale = max(1.0, float(np.max(np.abs(np.diagonal(covmean).real))))
        if imag > 1e-3 * scale:
            raise ValueError(f"frechet_distance: sqrt of the covariance product has an imaginary "
                             f"component {imag:.3g} (covariances not positive semi-definite?)")
        covmean = covmean.real
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def fd_score(extractor: FeatureExtractor, real: np.ndarray | torch.Tensor,
             fake: np.ndarray | torch.Tensor) -> float:
    """In-domain FD between ``real`` and ``fake`` images ``(N, 1, H, W)`` (each N >= 2)."""
    mu1, s1 = statistics(extractor.features(real))
    mu2, s2 = statistics(extractor.features(fake))
    return frechet_distance(mu1, s1, mu2, s2)
