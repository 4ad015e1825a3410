"""A residual wrapper for same-modality generators (denoising, reconstruction, super-resolution).

``y = clamp(x + alpha * G(x), -1, 1)`` with a learnable scalar ``alpha`` starting at 0 (ReZero,
Bachlechner et al. 2020): the untrained generator is the identity, and the network learns only
the correction (the noise, the aliasing, the missing detail), as RED-CNN and DnCNN do.

>>> import torch
>>> net = ResidualGenerator(torch.nn.Conv2d(1, 1, 3, padding=1))
>>> x = torch.rand(1, 1, 8, 8) * 2 - 1
>>> bool(torch.equal(net(x), x))
True
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualGenerator(nn.Module):
    """``clamp(x + alpha * net(x), -1, 1)``; ``net`` must keep the channel count."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.alpha = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.alpha * self.net(x)).clamp(-1.0, 1.0)
