"""L6 shape (segmentation) loss of the survey's Table 5: tissue means against a label map.

>>> import torch
>>> lab = torch.zeros(1, 1, 4, 4, dtype=torch.long)
>>> float(ShapeLoss()(torch.ones(1, 1, 4, 4), torch.ones(1, 1, 4, 4), lab))
0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.losses._common import _pair

__all__ = ["ShapeLoss"]


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
