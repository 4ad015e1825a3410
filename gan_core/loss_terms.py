"""The loss library of the survey's Table 5 (L1 adversarial ... L12 regulation).

Every term is a small ``nn.Module`` (or function) that takes tensors in [-1, 1] shaped
``(N, C, H, W)`` (2D) or ``(N, C, D, H, W)`` (3D), returns a scalar tensor and is differentiable
with respect to the prediction. Targets (and, for self-regularisation, the source image) are
treated as constants: no gradient flows into them.

=====  ================  ==============================================================
Table  name              here
=====  ================  ==============================================================
L1     adversarial       :class:`GANLoss`, :func:`gradient_penalty` (from gan_core.losses)
L2     image             :class:`ImageLoss` (L1 / L2)
L3     cycle             :func:`cycle_loss`, :class:`CycleLoss`
L4     gradient          :class:`GradientLoss`
L5     sharpness         :class:`SharpnessLoss`
L6     shape             :class:`ShapeLoss`
L7     perceptual        :class:`PerceptualLoss` (+ :class:`ConvEncoder`)
L8     structure         :class:`StructureLoss`, :func:`ssim`, :func:`ms_ssim`
L9     style-content     :class:`StyleContentLoss`, :func:`gram_matrix`
L10    self-reg          :class:`SelfRegLoss`
L11    frequency         :class:`FrequencyLoss`
L12    regulation        :class:`RegulationLoss`
=====  ================  ==============================================================

``TERMS`` maps each name to its factory, :class:`LossTermWeights` holds one weight per term and
:func:`combine` forms the weighted sum.

>>> import torch
>>> p, t = torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)
>>> float(combine({"image": ImageLoss()(p, t)}, LossTermWeights()))
0.0
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.losses import GAN_MODES, GANLoss, gradient_penalty

__all__ = [
    "GAN_MODES", "GANLoss", "gradient_penalty", "ImageLoss", "cycle_loss", "CycleLoss",
    "GradientLoss", "SharpnessLoss", "ShapeLoss", "ConvEncoder", "PerceptualLoss", "ssim",
    "ms_ssim", "StructureLoss", "gram_matrix", "StyleContentLoss", "SelfRegLoss",
    "FrequencyLoss", "RegulationLoss", "TERMS", "LossTermWeights", "combine",
]

FeatureExtractor = Union[nn.Module, Callable[[Tensor], Union[Tensor, Sequence[Tensor]]]]


# --------------------------------------------------------------------------- helpers
def _spatial(x: Tensor, name: str = "pred") -> int:
    """Number of spatial dims of an (N, C, *spatial) tensor; 2 or 3, else ValueError."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (4, 5):
        raise ValueError(f"{name}: expected shape (N, C, H, W) or (N, C, D, H, W), "
                         f"got {tuple(x.shape)}")
    return x.dim() - 2


def _pair(pred: Tensor, target: Tensor, tname: str = "target") -> int:
    nd = _spatial(pred, "pred")
    _spatial(target, tname)
    if pred.shape != target.shape:
        raise ValueError(f"pred and {tname} shapes differ: {tuple(pred.shape)} vs "
                         f"{tuple(target.shape)}")
    return nd


def _dist(a: Tensor, b: Tensor, kind: str) -> Tensor:
    if kind == "l1":
        return F.l1_loss(a, b)
    if kind == "l2":
        return F.mse_loss(a, b)
    raise ValueError(f"kind: expected 'l1' or 'l2', got {kind!r}")


def _check_kind(kind: str) -> str:
    if kind not in ("l1", "l2"):
        raise ValueError(f"kind: expected 'l1' or 'l2', got {kind!r}")
    return kind


def _box_mean(x: Tensor, window: int) -> Tensor:
    """Local mean over a ``window``^d box (stride 1, same size, borders average what exists)."""
    pool = F.avg_pool2d if x.dim() == 4 else F.avg_pool3d
    return pool(x, window, stride=1, padding=window // 2, count_include_pad=False)


# --------------------------------------------------------------------------- L2 image
class ImageLoss(nn.Module):
    """L2 image loss: ``mean|p - t|`` (``kind="l1"``, pix2pix, Isola et al. 2017) or
    ``mean (p - t)^2`` (``kind="l2"``) over every voxel and channel.

    >>> float(ImageLoss("l2")(torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
    1.0
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        self.kind = _check_kind(kind)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _pair(pred, target)
        return _dist(pred, target.detach(), self.kind)


# --------------------------------------------------------------------------- L3 cycle
def cycle_loss(rec: Tensor, real: Tensor) -> Tensor:
    """L3 cycle-consistency loss (Zhu et al. 2017): ``mean|F(G(x)) - x|`` with ``rec = F(G(x))``.

    >>> float(cycle_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
    0.0
    """
    _pair(rec, real, "real")
    return F.l1_loss(rec, real.detach())


class CycleLoss(nn.Module):
    """Module form of :func:`cycle_loss`.

    >>> float(CycleLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
    0.0
    """

    def forward(self, rec: Tensor, real: Tensor) -> Tensor:
        return cycle_loss(rec, real)


# --------------------------------------------------------------------------- L4 gradient
def _finite_differences(x: Tensor) -> list[Tensor]:
    """Forward differences ``x[i+1] - x[i]`` along every spatial axis."""
    return [torch.diff(x, dim=ax) for ax in range(2, x.dim())]


class GradientLoss(nn.Module):
    """L4 gradient (edge) loss, a gradient-difference loss (Mathieu et al. 2016; Nie et al. 2018):

    ``(1/d) * sum_a mean|D_a p - D_a t|`` with ``D_a x = x[.., i+1, ..] - x[.., i, ..]`` the forward
    difference along spatial axis ``a`` (d = 2 or 3 axes); ``kind="l2"`` squares instead.
    Constant offsets cost nothing; misplaced or blurred edges do.

    >>> float(GradientLoss()(torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
    0.0
    """

    def __init__(self, kind: str = "l1") -> None:
        super().__init__()
        self.kind = _check_kind(kind)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        nd = _pair(pred, target)
        dp, dt = _finite_differences(pred), _finite_differences(target.detach())
        return sum(_dist(a, b, self.kind) for a, b in zip(dp, dt)) / nd


# --------------------------------------------------------------------------- L5 sharpness
class SharpnessLoss(nn.Module):
    """L5 sharpness loss: L1 error re-weighted towards the target's low-contrast regions.

    The survey's L5 scores low-contrast regions with a pre-trained network; here the contrast map
    is analytic, so nothing is downloaded. With ``s(x)`` the target's local standard deviation in a
    ``window``^d box (per sample and channel, ``s = sqrt(max(E[t^2] - E[t]^2, 0) + 1e-12)``) and
    ``s_max`` its per-(sample, channel) maximum::

        w(x)  = 1 + beta * (1 - s(x) / (s_max + 1e-8))          # in [1, 1 + beta]
        loss  = sum_x w(x) |p(x) - t(x)| / sum_x w(x)

    ``w`` is a constant (no gradient). ``beta = 0`` gives plain L1; the default ``beta = 4`` makes a
    flat-region error count up to 5x an error on an edge (where L1 and adversarial terms
    already push).

    >>> float(SharpnessLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
    0.0
    """

    def __init__(self, window: int = 5, beta: float = 4.0) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window: expected an odd positive int, got {window}")
        if beta < 0:
            raise ValueError(f"beta: expected >= 0, got {beta}")
        self.window, self.beta = window, float(beta)

    def weight_map(self, target: Tensor) -> Tensor:
        """The weight ``w`` above, same shape as ``target``, in [1, 1 + beta]."""
        _spatial(target, "target")
        t = target.detach().float()
        mu = _box_mean(t, self.window)
        var = (_box_mean(t * t, self.window) - mu * mu).clamp_min(0.0)
        s = torch.sqrt(var + 1e-12)
        s_max = s.flatten(2).amax(dim=2).view(*s.shape[:2], *([1] * (s.dim() - 2)))
        return 1.0 + self.beta * (1.0 - s / (s_max + 1e-8))

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _pair(pred, target)
        w = self.weight_map(target).to(pred.dtype)
        return (w * (pred - target.detach()).abs()).sum() / w.sum()


# --------------------------------------------------------------------------- L6 shape
def _one_hot(labels: Tensor, pred: Tensor, num_classes: int | None) -> Tensor:
    """(N, K, *spatial) float one-hot of a label map shaped (N, *spatial) or (N, 1, *spatial)."""
    if not isinstance(labels, Tensor) or labels.is_floating_point() or labels.is_complex():
        raise TypeError("labels: expected an integer (long) tensor of class indices")
    spatial = pred.shape[2:]
    if labels.dim() == pred.dim() and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.shape != (pred.shape[0], *spatial):
        raise ValueError(f"labels: expected shape (N, *spatial) = {(pred.shape[0], *spatial)} "
                         f"(or with a channel of 1), got {tuple(labels.shape)}")
    labels = labels.long()
    if labels.numel() and labels.min() < 0:
        raise ValueError("labels: class indices must be >= 0")
    k = int(labels.max()) + 1 if num_classes is None else int(num_classes)
    if labels.numel() and int(labels.max()) >= k:
        raise ValueError(f"labels: found class {int(labels.max())} but num_classes={k}")
    oh = F.one_hot(labels, k)                                   # (N, *spatial, K)
    return oh.movedim(-1, 1).to(pred.dtype)                     # (N, K, *spatial)


class ShapeLoss(nn.Module):
    """L6 shape (segmentation) loss over a tissue label map ``labels`` with K classes.

    Let ``R_k`` be the voxels of class k, ``|R_k|`` its size, ``|Omega|`` the image size and
    ``m_k(x) = mean_{R_k} x`` the mean of image ``x`` inside ``R_k`` (per sample and channel).

    - ``mode="mean"`` (default): ``sum_k (|R_k| / |Omega|) * |m_k(p) - m_k(t)|``, averaged over
      samples and channels: each tissue must keep its target intensity on average.
    - ``mode="dice"``: soft tissue maps of the prediction,
      ``P_k = softmax_k(-(p - m_k(t))^2 / tau^2)`` (nearest-class-mean assignment, temperature
      ``tau``), compared with the label one-hot ``Y_k`` by soft Dice:
      ``1 - mean_k 2 sum(P_k Y_k) / (sum P_k + sum Y_k + 1e-6)`` over the classes present.
      Its minimum is reached when every voxel is at its tissue's mean (not exactly 0).

    Both are differentiable w.r.t. ``pred``; classes absent from a sample are ignored.

    >>> lab = torch.zeros(1, 1, 4, 4, dtype=torch.long); lab[..., 2:] = 1
    >>> float(ShapeLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), lab))
    0.0
    """

    def __init__(self, mode: str = "mean", num_classes: int | None = None,
                 tau: float = 0.1) -> None:
        super().__init__()
        if mode not in ("mean", "dice"):
            raise ValueError(f"mode: expected 'mean' or 'dice', got {mode!r}")
        if tau <= 0:
            raise ValueError(f"tau: expected > 0, got {tau}")
        self.mode, self.num_classes, self.tau = mode, num_classes, float(tau)

    def forward(self, pred: Tensor, target: Tensor, labels: Tensor) -> Tensor:
        nd = _pair(pred, target)
        oh = _one_hot(labels, pred, self.num_classes)                # (N, K, *sp)
        dims = tuple(range(3, 3 + nd))
        count = oh.sum(dim=tuple(range(2, 2 + nd)))                  # (N, K)
        present = (count > 0).to(pred.dtype)                         # (N, K)
        denom = count.clamp_min(1.0).unsqueeze(1)                    # (N, 1, K)
        ohc = oh.unsqueeze(1)                                        # (N, 1, K, *sp)
        m_t = (target.detach().unsqueeze(2) * ohc).sum(dims) / denom  # (N, C, K)
        if self.mode == "mean":
            m_p = (pred.unsqueeze(2) * ohc).sum(dims) / denom
            frac = (count / count.sum(dim=1, keepdim=True).clamp_min(1.0)).unsqueeze(1)
            return (frac * (m_p - m_t).abs()).sum(dim=2).mean()
        # dice: soft nearest-mean tissue maps of pred vs the label one-hot
        shape = (*m_t.shape, *([1] * nd))
        logits = -((pred.unsqueeze(2) - m_t.view(shape)) ** 2) / self.tau ** 2  # (N, C, K, *sp)
        absent = (1.0 - present).view(pred.shape[0], 1, -1, *([1] * nd)) * 1e4
        probs = torch.softmax(logits - absent, dim=2)
        inter = (probs * ohc).sum(dims)                              # (N, C, K)
        dice = 2 * inter / (probs.sum(dims) + count.unsqueeze(1) + 1e-6)
        pres = present.unsqueeze(1).expand_as(dice)
        return 1.0 - (dice * pres).sum() / pres.sum().clamp_min(1.0)


# --------------------------------------------------------------------------- feature extractors
class ConvEncoder(nn.Module):
    """A small conv encoder returning the feature map after each stage (a list), 2D or 3D.

    Stage i: conv(k=3, stride 2 except the first) -> LeakyReLU(0.2). Useful as a local, trainable
    or pre-trained (``torch.save(enc.state_dict(), path)``) extractor for :class:`PerceptualLoss`.

    >>> [f.shape[1] for f in ConvEncoder(2, 1, (4, 8))(torch.zeros(1, 1, 8, 8))]
    [4, 8]
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 1,
                 widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims}")
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        stages, c = [], in_channels
        for i, w in enumerate(widths):
            stages.append(nn.Sequential(conv(c, w, 3, stride=1 if i == 0 else 2, padding=1),
                                        nn.LeakyReLU(0.2)))
            c = w
        self.stages = nn.ModuleList(stages)

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class _FeatureLoss(nn.Module):
    """Shared handling of a feature extractor (module or callable returning feature maps)."""

    def __init__(self, extractor: FeatureExtractor, weights_path: str | os.PathLike | None,
                 freeze: bool) -> None:
        super().__init__()
        if not callable(extractor):
            raise TypeError(f"extractor: expected an nn.Module or a callable returning feature "
                            f"maps, got {type(extractor).__name__}")
        if weights_path is not None:
            if not isinstance(extractor, nn.Module):
                raise TypeError("weights_path given but extractor is not an nn.Module")
            path = os.fspath(weights_path)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"weights_path: no such file {path!r}")
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, Mapping) and "state_dict" in state:
                state = state["state_dict"]
            try:
                extractor.load_state_dict(state)
            except RuntimeError as err:
                raise ValueError(f"weights_path {path!r} does not fit the extractor: "
                                 f"{err}") from err
        self.frozen = bool(freeze and isinstance(extractor, nn.Module))
        if self.frozen:
            extractor.requires_grad_(False).eval()
            self.extractor = extractor                       # registered: moves with .to()
        else:                                                # e.g. the live discriminator:
            self.__dict__["extractor"] = extractor           # not registered, not frozen

    def train(self, mode: bool = True) -> "_FeatureLoss":
        super().train(mode)
        if self.frozen:
            self.extractor.eval()                            # a frozen extractor stays in eval
        return self

    def features(self, x: Tensor) -> list[Tensor]:
        out = self.extractor(x)
        feats = [out] if isinstance(out, Tensor) else list(out)
        if not feats or not all(isinstance(f, Tensor) for f in feats):
            raise TypeError("extractor must return a tensor or a non-empty list of tensors")
        return feats

    @staticmethod
    def _select(feats: list[Tensor], layers: Sequence[int] | None, what: str) -> list[Tensor]:
        if layers is None:
            return feats
        try:
            return [feats[i] for i in layers]
        except IndexError as err:
            raise IndexError(f"{what}: {list(layers)} out of range for {len(feats)} "
                             f"feature maps") from err


# --------------------------------------------------------------------------- L7 perceptual
class PerceptualLoss(_FeatureLoss):
    """L7 perceptual loss (Johnson et al. 2016): ``sum_i w_i mean|phi_i(p) - phi_i(t)|``.

    ``phi_i`` are the feature maps (selected by ``layers``, default all) that ``extractor`` returns:
    typically the discriminator's intermediate features (pass a callable; it is neither frozen nor
    registered, so the discriminator keeps training), or an ``nn.Module`` encoder, optionally loaded
    from the local file ``weights_path`` (a ``state_dict`` saved with ``torch.save``; no downloads),
    frozen and kept in eval mode when ``freeze``. ``layer_weights`` default ``1/len(layers)``.
    Target features are computed without gradient.

    >>> enc = ConvEncoder(2, 1, (4,))
    >>> float(PerceptualLoss(enc)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
    0.0
    """

    def __init__(self, extractor: FeatureExtractor, layers: Sequence[int] | None = None,
                 weights_path: str | os.PathLike | None = None,
                 layer_weights: Sequence[float] | None = None, freeze: bool = True) -> None:
        super().__init__(extractor, weights_path, freeze)
        self.layers = None if layers is None else list(layers)
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _pair(pred, target)
        fp = self._select(self.features(pred), self.layers, "layers")
        with torch.no_grad():
            ft = self._select(self.features(target.detach()), self.layers, "layers")
        ws = self.layer_weights or [1.0 / len(fp)] * len(fp)
        if len(ws) != len(fp):
            raise ValueError(f"layer_weights: {len(ws)} weights for {len(fp)} feature maps")
        return sum(w * F.l1_loss(a, b) for w, a, b in zip(ws, fp, ft))


# --------------------------------------------------------------------------- L8 structure
def _gaussian_window(size: int, sigma: float, device: torch.device, dtype: torch.dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _gauss_filter(x: Tensor, g: Tensor) -> Tensor:
    """Separable Gaussian filter, 'valid' (no padding), applied per channel along every axis."""
    c, nd = x.shape[1], x.dim() - 2
    conv = F.conv2d if nd == 2 else F.conv3d
    for ax in range(nd):
        shape = [1] * nd
        shape[ax] = g.numel()
        x = conv(x, g.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def _ssim_terms(pred: Tensor, target: Tensor, window: int, sigma: float, data_range: float,
                k1: float, k2: float) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term per (N, C)."""
    win = min(window, *pred.shape[2:])
    win -= 1 - win % 2                                     # odd
    g = _gaussian_window(win, sigma, pred.device, pred.dtype)
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    mu_p, mu_t = _gauss_filter(pred, g), _gauss_filter(target, g)
    s_pp = _gauss_filter(pred * pred, g) - mu_p ** 2
    s_tt = _gauss_filter(target * target, g) - mu_t ** 2
    s_pt = _gauss_filter(pred * target, g) - mu_p * mu_t
    cs = (2 * s_pt + c2) / (s_pp + s_tt + c2)
    lum = (2 * mu_p * mu_t + c1) / (mu_p ** 2 + mu_t ** 2 + c1)
    return (lum * cs).flatten(2).mean(2), cs.flatten(2).mean(2)


def ssim(pred: Tensor, target: Tensor, data_range: float = 2.0, window: int = 11,
         sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """Mean SSIM (Wang et al. 2004) with a Gaussian window (size ``window``, ``sigma``), 'valid'
    filtering, ``C1 = (k1 L)^2, C2 = (k2 L)^2``, ``L = data_range`` (2 for [-1, 1]); separable, so
    2D and 3D alike. The window shrinks to the largest odd size that fits a small image.

    >>> float(ssim(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)))
    1.0
    """
    _pair(pred, target)
    return _ssim_terms(pred, target, window, sigma, data_range, k1, k2)[0].mean()


MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(pred: Tensor, target: Tensor, data_range: float = 2.0, window: int = 11,
            sigma: float = 1.5, levels: int = 5) -> Tensor:
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003): ``prod_j cs_j^{w_j}`` over scales
    ``j < L`` times ``ssim_L^{w_L}``, 2x average-pool between scales, the standard five weights
    (renormalised over the scales used). ``L = min(levels, scales the image size permits)``, a
    scale being usable while its smallest side is >= ``window``; fewer than 2 -> ValueError.
    Negative ``cs`` values are clamped at 0 (as in common implementations).

    >>> float(ms_ssim(torch.zeros(1, 1, 48, 48), torch.zeros(1, 1, 48, 48), window=7))
    1.0
    """
    nd = _pair(pred, target)
    if not 1 <= levels <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"levels: expected 1..{len(MS_SSIM_WEIGHTS)}, got {levels}")
    smallest = min(pred.shape[2:])
    usable = int(math.floor(math.log2(smallest / window))) + 1 if smallest >= window else 0
    n = min(levels, usable)
    if n < 2:
        raise ValueError(f"ms_ssim: image side {smallest} allows {max(usable, 0)} scale(s) with "
                         f"window {window}; need >= {2 * window} for 2 scales")
    w = torch.tensor(MS_SSIM_WEIGHTS[:n], device=pred.device, dtype=pred.dtype)
    w = w / w.sum()
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    vals = []
    for j in range(n):
        s, cs = _ssim_terms(pred, target, window, sigma, data_range, 0.01, 0.03)
        vals.append((s if j == n - 1 else cs).clamp_min(0.0))
        if j < n - 1:
            pred, target = pool(pred, 2), pool(target, 2)
    stacked = torch.stack(vals, dim=0)                            # (L, N, C)
    return torch.prod(stacked ** w.view(-1, 1, 1), dim=0).mean()


class StructureLoss(nn.Module):
    """L8 structure loss: ``1 - SSIM(p, t)`` (patch-wise, Gaussian window 11, sigma 1.5, data range
    2), or ``1 - MS-SSIM(p, t)`` with ``multiscale=True`` (see :func:`ms_ssim`). 2D and 3D.

    >>> float(StructureLoss()(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)))
    0.0
    """

    def __init__(self, multiscale: bool = False, window: int = 11, sigma: float = 1.5,
                 data_range: float = 2.0, levels: int = 5) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"window: expected an odd positive int, got {window}")
        self.multiscale, self.window, self.sigma = multiscale, window, float(sigma)
        self.data_range, self.levels = float(data_range), levels

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        t = target.detach()
        if self.multiscale:
            return 1.0 - ms_ssim(pred, t, self.data_range, self.window, self.sigma, self.levels)
        return 1.0 - ssim(pred, t, self.data_range, self.window, self.sigma)


# --------------------------------------------------------------------------- L9 style-content
def gram_matrix(feat: Tensor) -> Tensor:
    """Gram matrix ``G = F F^T / (C M)`` of a (N, C, *spatial) feature map with M positions.

    >>> gram_matrix(torch.ones(1, 2, 2, 2)).shape
    torch.Size([1, 2, 2])
    """
    n, c = feat.shape[:2]
    f = feat.reshape(n, c, -1)
    return f @ f.transpose(1, 2) / (c * f.shape[2])


class StyleContentLoss(_FeatureLoss):
    """L9 style-content loss (Gatys et al. 2016; Johnson et al. 2016)::

        style   = sum_{i in style_layers}   dist(G(phi_i(p)), G(phi_i(t)))   # Gram, see gram_matrix
        content = sum_{i in content_layers} mean|phi_i(p) - phi_i(t)|
        loss    = style_weight * style + content_weight * content

    ``dist`` is L1 (``kind="l1"``) or mean squared error (``"l2"``). Defaults: style on every
    feature map, content on the last. Extractor interface as :class:`PerceptualLoss`.

    >>> enc = ConvEncoder(2, 1, (4, 8))
    >>> float(StyleContentLoss(enc)(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8)))
    0.0
    """

    def __init__(self, extractor: FeatureExtractor, style_layers: Sequence[int] | None = None,
                 content_layers: Sequence[int] | None = (-1,), style_weight: float = 1.0,
                 content_weight: float = 1.0, kind: str = "l1",
                 weights_path: str | os.PathLike | None = None, freeze: bool = True) -> None:
        super().__init__(extractor, weights_path, freeze)
        self.kind = _check_kind(kind)
        self.style_layers = None if style_layers is None else list(style_layers)
        self.content_layers = None if content_layers is None else list(content_layers)
        self.style_weight, self.content_weight = float(style_weight), float(content_weight)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        _pair(pred, target)
        fp = self.features(pred)
        with torch.no_grad():
            ft = self.features(target.detach())
        sp = self._select(fp, self.style_layers, "style_layers")
        st = self._select(ft, self.style_layers, "style_layers")
        style = sum(_dist(gram_matrix(a), gram_matrix(b), self.kind) for a, b in zip(sp, st))
        cp = self._select(fp, self.content_layers, "content_layers")
        ct = self._select(ft, self.content_layers, "content_layers")
        content = sum(F.l1_loss(a, b) for a, b in zip(cp, ct))
        return self.style_weight * style + self.content_weight * content


# --------------------------------------------------------------------------- L10 self-reg
class SelfRegLoss(nn.Module):
    """L10 self-regularisation (Shrivastava et al. 2017, SimGAN): ``mean|psi(G(x)) - psi(x)|``,
    keeping the output close to its source ``x``. ``psi`` is the identity by default, or a callable
    feature map (e.g. a fixed low-pass / per-pixel mean over channels) given as ``feature``;
    ``x`` is a constant (no gradient).

    >>> float(SelfRegLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
    0.0
    """

    def __init__(self, feature: Callable[[Tensor], Tensor] | None = None) -> None:
        super().__init__()
        self.feature = feature

    def forward(self, generated: Tensor, source: Tensor) -> Tensor:
        _spatial(generated, "generated")
        _spatial(source, "source")
        a, b = generated, source.detach()
        if self.feature is not None:
            a, b = self.feature(a), self.feature(b)
        if a.shape != b.shape:
            raise ValueError(f"self-reg: generated and source (after feature) shapes differ: "
                             f"{tuple(a.shape)} vs {tuple(b.shape)}; pass a `feature` mapping "
                             f"both to the same shape")
        return F.l1_loss(a, b)


# --------------------------------------------------------------------------- L11 frequency
class FrequencyLoss(nn.Module):
    """L11 k-space data-fidelity loss (e.g. Yang et al. 2018, DAGAN)::

        D    = FFT(p) - FFT(t)        # torch.fft.fftn over the spatial dims, norm="ortho"
        loss = sum(M * |D|^q) / sum(M)   # q = 1 (kind="l1", complex modulus) or 2 ("l2")

    ``M`` is the undersampling mask (1 = sampled), broadcastable to the spectrum (N, C, *spatial),
    in ``torch.fft.fftn`` order (DC at index 0) or, with ``centered=True``, in ``fftshift`` order;
    ``M = 1`` everywhere when no mask is given. A mask passed to ``forward`` overrides the
    constructor's. Unsampled coefficients contribute nothing.

    >>> float(FrequencyLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
    0.0
    """

    def __init__(self, mask: Tensor | None = None, kind: str = "l1",
                 centered: bool = False) -> None:
        super().__init__()
        self.kind, self.centered = _check_kind(kind), bool(centered)
        self.register_buffer("mask", None if mask is None else torch.as_tensor(mask))

    def forward(self, pred: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
        nd = _pair(pred, target)
        dims = tuple(range(2, 2 + nd))
        x = pred - target.detach()          # fft is linear: FFT(p) - FFT(t) == FFT(p - t)
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        d = torch.fft.fftn(x, dim=dims, norm="ortho")
        err = d.abs() if self.kind == "l1" else d.real ** 2 + d.imag ** 2
        m = self.mask if mask is None else mask
        if m is None:
            return err.mean()
        m = torch.as_tensor(m, device=err.device).to(err.dtype)
        if self.centered:
            m = torch.fft.ifftshift(m, dim=tuple(range(m.dim() - nd, m.dim())))
        try:
            m = torch.broadcast_to(m, err.shape)
        except RuntimeError as err_:
            raise ValueError(f"mask: shape {tuple(m.shape)} does not broadcast to the spectrum "
                             f"{tuple(err.shape)}") from err_
        total = m.sum()
        if total <= 0:
            raise ValueError("mask: no sampled k-space location (mask sums to 0)")
        return (m * err).sum() / total


# --------------------------------------------------------------------------- L12 regulation
class RegulationLoss(nn.Module):
    """L12 regulation loss: contrast balance across rows and columns (and slices in 3D).

    For each spatial axis ``a`` and each index ``i`` along it, take the line/plane ``x[a = i]``
    (all other spatial positions) and its mean ``mu_{a,i}(x)`` and standard deviation
    ``sigma_{a,i}(x) = sqrt(var + 1e-8)``; per sample and channel::

        loss = (1/d) sum_a [ mean_i |mu_{a,i}(p) - mu_{a,i}(t)|
                             + mean_i |sigma_{a,i}(p) - sigma_{a,i}(t)| ]

    Why: the survey's L12 keeps the generated contrast balanced across rows and columns. Matching
    the per-row and per-column brightness (mean) and contrast (std) profiles penalises stripe/
    banding artefacts and drifting contrast along an axis, which a voxel-wise L1 averages away,
    while being invariant to permutations within a row (so it does not re-do the image loss).
    ``stats`` picks ``("mean", "std")`` (default) or either alone.

    >>> float(RegulationLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
    0.0
    """

    def __init__(self, stats: Sequence[str] = ("mean", "std")) -> None:
        super().__init__()
        stats = tuple(stats)
        if not stats or any(s not in ("mean", "std") for s in stats):
            raise ValueError(f"stats: expected a non-empty subset of ('mean', 'std'), got {stats}")
        self.stats = stats

    @staticmethod
    def profiles(x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        """(mean, std) of x over all spatial axes but ``axis``: shapes (N, C, size_axis)."""
        others = tuple(a for a in range(2, x.dim()) if a != axis)
        mu = x.mean(dim=others)
        var = x.var(dim=others, unbiased=False)
        return mu, torch.sqrt(var + 1e-8)

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        nd = _pair(pred, target)
        t = target.detach()
        total = pred.new_zeros(())
        for ax in range(2, 2 + nd):
            mp, sp = self.profiles(pred, ax)
            mt, st = self.profiles(t, ax)
            if "mean" in self.stats:
                total = total + F.l1_loss(mp, mt)
            if "std" in self.stats:
                total = total + F.l1_loss(sp, st)
        return total / nd


# --------------------------------------------------------------------------- registry & weights
TERMS: dict[str, Callable[..., Any]] = {
    "adversarial": GANLoss,
    "image": ImageLoss,
    "cycle": CycleLoss,
    "gradient": GradientLoss,
    "sharpness": SharpnessLoss,
    "shape": ShapeLoss,
    "perceptual": PerceptualLoss,
    "structure": StructureLoss,
    "style_content": StyleContentLoss,
    "self_reg": SelfRegLoss,
    "frequency": FrequencyLoss,
    "regulation": RegulationLoss,
}
"""Term name -> factory (``TERMS["image"](kind="l1")``); names match :class:`LossTermWeights`."""


@dataclass
class LossTermWeights:
    """One weight per Table 5 term; 0 disables it. Defaults keep pix2pix (adversarial 1, image L1
    100) and CycleGAN (cycle 10); every added term starts off. (Separate from
    ``gan_core.config.LossWeights``; CycleGAN's identity weight is not a Table 5 term.)

    >>> LossTermWeights(structure=1.0).active()
    {'adversarial': 1.0, 'image': 100.0, 'cycle': 10.0, 'structure': 1.0}
    """

    adversarial: float = 1.0
    image: float = 100.0
    cycle: float = 10.0
    gradient: float = 0.0
    sharpness: float = 0.0
    shape: float = 0.0
    perceptual: float = 0.0
    structure: float = 0.0
    style_content: float = 0.0
    self_reg: float = 0.0
    frequency: float = 0.0
    regulation: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) \
                    or v < 0:
                raise ValueError(f"LossTermWeights.{f.name}: expected a finite float >= 0, "
                                 f"got {v!r}")
            setattr(self, f.name, float(v))

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)

    def active(self) -> dict[str, float]:
        """The non-zero weights, in field order."""
        return {k: v for k, v in self.as_dict().items() if v != 0.0}


def combine(terms: Mapping[str, Tensor],
            weights: LossTermWeights | Mapping[str, float]) -> Tensor:
    """Weighted sum ``sum_k weights[k] * terms[k]``; terms whose weight is 0 are skipped (so a
    NaN in a disabled term cannot leak in). Every term must be a scalar tensor and have a weight.

    >>> float(combine({"image": torch.tensor(0.5), "cycle": torch.tensor(2.0)},
    ...               {"image": 2.0, "cycle": 0.0}))
    1.0
    """
    w = weights.as_dict() if isinstance(weights, LossTermWeights) else dict(weights)
    total: Tensor | None = None
    for name, value in terms.items():
        if name not in w:
            raise KeyError(f"combine: no weight for term {name!r}; weights have {sorted(w)}")
        if not isinstance(value, Tensor) or value.dim() != 0:
            raise ValueError(f"combine: term {name!r} must be a scalar tensor, got "
                             f"{getattr(value, 'shape', type(value).__name__)}")
        if float(w[name]) == 0.0:
            continue
        part = float(w[name]) * value
        total = part if total is None else total + part
    if total is None:
        first = next(iter(terms.values()), None)
        device = first.device if isinstance(first, Tensor) else None
        return torch.zeros((), device=device)
    return total
