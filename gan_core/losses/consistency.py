"""Structure-consistency terms for unpaired cross-modality translation (survey Table 5 rows L8
structure, L4 gradient, L6 shape), comparing a translation with its OWN input, not with a target.

Unpaired MR -> CT has no aligned CT to compare with, and cycle consistency alone lets a generator
keep the MR's tissue order (fat bright, bone dark) with CT-like values: a tissue swap. These
terms tie the synthetic image's anatomy to its source's, whatever the two modalities' contrasts:

- :class:`MINDLoss` (L8): L1 between the modality-independent neighbourhood descriptors (MIND,
  Heinrich et al. 2012) of the translation and of its source (Yang et al. 2018's
  structure-constrained CycleGAN).
- :class:`GradientConsistencyLoss` (L4): one minus the local normalised cross-correlation of
  their gradient magnitudes (so a contrast inversion is no mismatch; after Hiasa et al. 2018's
  gradient-consistency loss).
- :class:`ShapeConsistencyLoss` (L6): against the SOURCE's tissue labels only: one minus the
  correlation ratio (between-tissue / total variance) of the translation over those labels.

Each takes ``(generated, source)`` (``ShapeConsistencyLoss``: ``(generated, labels)``) shaped
``(N, C, H, W)`` or ``(N, C, D, H, W)``; the source is a constant (no gradient).

>>> import torch
>>> x = torch.rand(1, 1, 16, 16)
>>> round(float(MINDLoss()(x, x)), 6), round(float(GradientConsistencyLoss()(-x, x)), 6)
(0.0, 0.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.losses._common import _box_mean, _pair, _spatial
from gan_core.losses.shape import _one_hot

__all__ = ["mind_descriptor", "MINDLoss", "GradientConsistencyLoss", "ShapeConsistencyLoss"]


def _shift(x: Tensor, axis: int, step: int) -> Tensor:
    """``x`` moved by ``step`` voxels along spatial ``axis`` (border replicated), same shape."""
    nd = x.dim() - 2
    pad = [0, 0] * nd
    k = 2 * (nd - 1 - axis)                     # F.pad lists the last axis first
    pad[k], pad[k + 1] = abs(step), abs(step)
    xp = F.pad(x, pad, mode="replicate")
    start = abs(step) + step
    return xp.narrow(axis + 2, start, x.shape[axis + 2])


def mind_descriptor(x: Tensor, radius: int = 1, dilation: int = 2) -> Tensor:
    """MIND (Heinrich et al. 2012) over the 2d (4 in 2D, 6 in 3D) axis neighbours at
    ``dilation`` voxels: ``exp(-D(x, r) / V(x))`` normalised by its maximum over ``r``, with
    ``D(x, r)`` the box-filtered (``2 radius + 1``) squared difference between the image and its
    shift by ``r`` and ``V`` their mean over ``r`` (clamped to [1e-3, 1e3] x its image mean).
    Shape ``(N, C * 2d, *spatial)``; invariant to a change of contrast that keeps the edges.

    >>> mind_descriptor(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 4, 8, 8])
    """
    nd = _spatial(x, "x")
    win = 2 * radius + 1
    d = torch.stack([_box_mean((x - _shift(x, ax, s)) ** 2, win)
                     for ax in range(nd) for s in (-dilation, dilation)], dim=2)  # (N, C, R, *sp)
    v = d.mean(dim=2, keepdim=True)
    vm = v.flatten(1).mean(1).view(-1, *([1] * (v.dim() - 1)))
    v = torch.maximum(torch.minimum(v, 1e3 * vm + 1e-12), 1e-3 * vm + 1e-12)
    m = torch.exp(-d / v)
    m = m / m.amax(dim=2, keepdim=True)
    return m.flatten(1, 2)


class MINDLoss(nn.Module):
    """L8 structure consistency: ``mean |MIND(generated) - MIND(source)|`` (see
    :func:`mind_descriptor`); 0 for images with the same structure, whatever their contrast.

    >>> x = torch.rand(1, 1, 16, 16)
    >>> round(float(MINDLoss()(2 * x - 1, x)), 5)
    0.0
    """

    def __init__(self, radius: int = 1, dilation: int = 2) -> None:
        super().__init__()
        if radius < 0 or dilation < 1:
            raise ValueError(f"MINDLoss: expected radius >= 0 and dilation >= 1, got {radius}, {dilation}")
        self.radius, self.dilation = radius, dilation

    def forward(self, generated: Tensor, source: Tensor) -> Tensor:
        _pair(generated, source, "source")
        with torch.no_grad():
            ms = mind_descriptor(source.float(), self.radius, self.dilation)
        return F.l1_loss(mind_descriptor(generated.float(), self.radius, self.dilation), ms)


class GradientConsistencyLoss(nn.Module):
    """L4 gradient consistency between a translation and its source, sign-free:

    ``1 - (sum_x,a max(cov_a(x), 0)^2 + e) / (sum_x,a var_a(p, x) var_a(s, x) + e)`` with
    ``cov_a``, ``var_a`` the local (``window``^d box) covariance and variances of the absolute
    forward differences ``|D_a|`` along axis ``a`` of the generated image ``p`` and the source
    ``s``, summed per sample (so windows with strong edges count most), averaged over samples
    and channels; ``e = 1e-8``. By Cauchy-Schwarz in [0, 1]; 0 when the edge strengths are
    locally proportional, whatever their sign (T1 bone is dark, CT bone bright). Magnitudes,
    not signed differences: two modalities order tissue pairs differently, so neighbouring
    edges of one window flip sign independently.

    >>> x = torch.rand(1, 1, 16, 16)
    >>> round(float(GradientConsistencyLoss()(1 - 3 * x, x)), 6)
    0.0
    """

    def __init__(self, window: int = 5, eps: float = 1e-8) -> None:
        super().__init__()
        if window < 1 or window % 2 == 0:
            raise ValueError(f"GradientConsistencyLoss: window must be odd and positive, got {window}")
        self.window, self.eps = window, float(eps)

    def forward(self, generated: Tensor, source: Tensor) -> Tensor:
        nd = _pair(generated, source, "source")
        p, s = generated.float(), source.detach().float()
        num = den = 0.0
        for ax in range(nd):
            gp, gs = torch.diff(p, dim=ax + 2).abs(), torch.diff(s, dim=ax + 2).abs()
            mp, ms = _box_mean(gp, self.window), _box_mean(gs, self.window)
            cov = _box_mean(gp * gs, self.window) - mp * ms
            vp = (_box_mean(gp * gp, self.window) - mp ** 2).clamp_min(0)
            vs = (_box_mean(gs * gs, self.window) - ms ** 2).clamp_min(0)
            num = num + (cov.clamp_min(0) ** 2).flatten(2).sum(2)
            den = den + (vp * vs).flatten(2).sum(2)
        return (1.0 - (num + self.eps) / (den + self.eps)).clamp_min(0.0).mean()


class ShapeConsistencyLoss(nn.Module):
    """L6 shape consistency against the source's tissue labels only (no target-domain labels or
    images): ``1 - eta^2``, ``eta^2`` the correlation ratio of the generated image over the label
    map, i.e. ``sum_k |R_k| (m_k - m)^2 / sum_x (p(x) - m)^2`` per sample and channel (``m_k``
    the mean inside tissue ``R_k``, ``m`` the image mean). 0 when each tissue of the source is
    one flat, distinct value in the translation; 1 when the tissues cannot be told apart (a flat
    image included). It asks
    the generator to separate tissues its source's intensities confuse (T1 bone and air), and
    leaves which value each tissue takes to the adversarial term.

    >>> lab = torch.zeros(1, 1, 4, 4, dtype=torch.long); lab[..., 2:] = 1
    >>> round(float(ShapeConsistencyLoss()(lab.float() * 2 - 1, lab)), 6)
    0.0
    """

    def __init__(self, num_classes: int | None = None, eps: float = 1e-8) -> None:
        super().__init__()
        self.num_classes, self.eps = num_classes, float(eps)

    def forward(self, generated: Tensor, labels: Tensor) -> Tensor:
        nd = _spatial(generated, "generated")
        p = generated.float()
        oh = _one_hot(labels, p, self.num_classes).unsqueeze(1)       # (N, 1, K, *sp)
        sp = tuple(range(3, 3 + nd))
        count = oh.sum(sp)                                             # (N, 1, K)
        m_k = (p.unsqueeze(2) * oh).sum(sp) / count.clamp_min(1.0)     # (N, C, K)
        m = p.flatten(2).mean(2, keepdim=True)                         # (N, C, 1)
        between = (count * (m_k - m) ** 2).sum(2)                      # (N, C)
        total = ((p - m.view(*m.shape, *([1] * (nd - 1)))) ** 2).flatten(2).sum(2)
        return (1.0 - between / (total + self.eps)).mean()
