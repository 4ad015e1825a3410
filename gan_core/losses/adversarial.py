"""L1 adversarial loss of the survey's Table 5, in four flavours, and the WGAN-GP penalty.

>>> import torch
>>> crit = GANLoss("lsgan")
>>> float(crit(torch.ones(1, 1, 4, 4), target_is_real=True))
0.0
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GAN_MODES", "GANLoss", "gradient_penalty"]

GAN_MODES = ("vanilla", "lsgan", "hinge", "wgangp")


class GANLoss(nn.Module):
    """Adversarial loss on raw discriminator outputs (a tensor or a list of them, multi-scale).

    - ``vanilla``: binary cross-entropy with logits (Goodfellow et al.; pix2pix)
    - ``lsgan``: least squares to 1/0 (Mao et al.; CycleGAN)
    - ``hinge``: D: relu(1 - real) + relu(1 + fake); G: -fake
    - ``wgangp``: D: fake - real (+ ``gradient_penalty``); G: -fake
    """

    def __init__(self, mode: str = "lsgan") -> None:
        super().__init__()
        if mode not in GAN_MODES:
            raise ValueError(f"unknown gan_mode {mode!r}; expected one of {GAN_MODES}")
        self.mode = mode

    def _single(self, pred: Tensor, target_is_real: bool, for_discriminator: bool) -> Tensor:
        pred = pred.float()
        if self.mode == "vanilla":
            target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
            return F.binary_cross_entropy_with_logits(pred, target)
        if self.mode == "lsgan":
            target = torch.ones_like(pred) if target_is_real else torch.zeros_like(pred)
            return F.mse_loss(pred, target)
        if self.mode == "hinge" and for_discriminator:
            return F.relu(1.0 - pred).mean() if target_is_real else F.relu(1.0 + pred).mean()
        # wgangp (both roles) and hinge generator
        return -pred.mean() if target_is_real else pred.mean()

    def forward(self, pred: Tensor | list[Tensor], target_is_real: bool,
                for_discriminator: bool = True) -> Tensor:
        if isinstance(pred, (list, tuple)):
            return sum(self._single(p, target_is_real, for_discriminator) for p in pred) / len(pred)
        return self._single(pred, target_is_real, for_discriminator)


def gradient_penalty(netD: nn.Module, real: Tensor, fake: Tensor, weight: float = 10.0) -> Tensor:
    """WGAN-GP penalty (Gulrajani et al.): weight * E[(||grad D(x_hat)|| - 1)^2]."""
    alpha = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device)
    x_hat = (alpha * real.detach() + (1 - alpha) * fake.detach()).requires_grad_(True)
    out = netD(x_hat)
    outs = out if isinstance(out, (list, tuple)) else [out]
    grads = torch.autograd.grad([o.float().sum() for o in outs], x_hat, create_graph=True)[0]
    return weight * ((grads.flatten(1).norm(2, dim=1) - 1.0) ** 2).mean()
