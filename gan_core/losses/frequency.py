"""L11 frequency (k-space fidelity) loss of the survey's Table 5.

>>> import torch
>>> float(FrequencyLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)))
0.0
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gan_core.losses._common import _check_kind, _pair

__all__ = ["FrequencyLoss"]


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
