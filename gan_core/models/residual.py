"""A residual wrapper for same-modality generators (denoising, reconstruction, super-resolution).

``y = clamp(x + net(x), -1, 1)``, with the last convolution of ``net`` zeroed after weight init
(``zero_last``, called by the framework): the untrained generator is exactly the identity and
still receives gradients, and the network learns only the correction (the noise, the aliasing,
the missing detail), as RED-CNN and DnCNN do. (A ReZero-style scalar gain starting at 0 was
tried first: on the phantom its gradient and the network's vanished together and the
super-resolution generator stayed the identity.)

>>> import torch
>>> net = ResidualGenerator(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1),
...                                             torch.nn.Conv2d(4, 1, 1), torch.nn.Tanh()))
>>> net.zero_last()
>>> x = torch.rand(1, 1, 8, 8) * 2 - 1
>>> bool(torch.equal(net(x), x))
True
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualGenerator(nn.Module):
    """``clamp(x + net(x), -1, 1)``; ``net`` must keep the channel count."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def zero_last(self) -> None:
        """Zero the weights and bias of the last convolution, so ``net(x) == 0`` at the start
        (for a net ending in conv [+ tanh])."""
        convs = [m for m in self.net.modules()
                 if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d))]
        if not convs:
            raise ValueError("ResidualGenerator: the wrapped network has no convolution to zero")
        with torch.no_grad():
            convs[-1].weight.zero_()
            if convs[-1].bias is not None:
                convs[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.net(x)).clamp(-1.0, 1.0)
