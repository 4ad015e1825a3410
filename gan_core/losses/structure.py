"""L8 structure loss of the survey's Table 5: ``1 - SSIM`` / ``1 - MS-SSIM``, 2D and 3D.

>>> import torch
>>> float(StructureLoss()(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)))
0.0
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.losses._common import _pair

__all__ = ["ssim", "ms_ssim", "MS_SSIM_WEIGHTS", "StructureLoss"]


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
