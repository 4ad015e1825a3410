"""The U-Net generator of pix2pix (Isola et al.), generic over ``spatial_dims``.

Follows junyanz/pytorch-CycleGAN-and-pix2pix ``UnetGenerator`` / ``UnetSkipConnectionBlock``:
the same recursive blocks and ``model.<i>`` module indices, so its 2D checkpoints load. Down path:
LeakyReLU(0.2), conv 4/2/1, norm; up path: ReLU, transposed conv 4/2/1, norm; skip connections by
channel concatenation; the outermost block has no norm and ends in Tanh; the innermost has no norm
on its down-convolution, so its 1-pixel bottleneck never meets a norm (instance norm at batch 1
and batch norm at batch 1 both work).
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import (
    NORMS,
    check_divisible,
    check_input,
    check_spatial_dims,
    conv,
    conv_transpose,
    init_weights,
    norm_layer,
    uses_bias,
)

__all__ = ["UnetSkipConnectionBlock", "UnetGenerator"]


class UnetSkipConnectionBlock(nn.Module):
    """One U-Net level: ``x -> [x, up(submodule(down(x)))]`` (the outermost returns only the up path).

    ``outer_channels`` is what this level returns to its parent (before the concatenation),
    ``inner_channels`` what its down-convolution makes; ``in_channels`` defaults to ``outer_channels``.

    >>> inner = UnetSkipConnectionBlock(8, 16, innermost=True)
    >>> inner(torch.zeros(1, 8, 2, 2)).shape
    torch.Size([1, 16, 2, 2])
    """

    def __init__(self, outer_channels: int, inner_channels: int, in_channels: int | None = None,
                 submodule: nn.Module | None = None, *, outermost: bool = False,
                 innermost: bool = False, spatial_dims: int = 2, norm: str = "batch",
                 dropout: bool = False) -> None:
        super().__init__()
        if (submodule is None) != innermost:
            raise ValueError("UnetSkipConnectionBlock: exactly the innermost block has no submodule")
        self.outermost = outermost
        in_channels = outer_channels if in_channels is None else in_channels
        bias = uses_bias(norm)
        down_in = inner_channels if innermost else inner_channels * 2
        layers: list[nn.Module] = []
        if not outermost:
            # junyanz uses an in-place LeakyReLU here; ReLU(LeakyReLU(x)) == ReLU(x) in the parent's
            # up path, so the out-of-place one computes the same and leaves the skip tensor alone.
            layers.append(nn.LeakyReLU(0.2, False))
        layers.append(conv(spatial_dims)(in_channels, inner_channels, kernel_size=4, stride=2,
                                         padding=1, bias=bias))
        if not (outermost or innermost):
            layers.append(norm_layer(norm, spatial_dims, inner_channels))
        if submodule is not None:
            layers.append(submodule)
        layers += [nn.ReLU(True),
                   conv_transpose(spatial_dims)(down_in, outer_channels, kernel_size=4, stride=2,
                                                padding=1, bias=True if outermost else bias)]
        if outermost:
            layers.append(nn.Tanh())
        else:
            layers.append(norm_layer(norm, spatial_dims, outer_channels))
            if dropout:
                layers.append(nn.Dropout(0.5))
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        return torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    """pix2pix U-Net generator (junyanz ``UnetGenerator``), 2D or 3D.

    ``num_downs`` levels; level ``i`` (0 = outermost) makes ``base_filters * min(2**i, 8)``
    channels; with ``dropout`` the ``num_downs - 5`` levels between the fifth and the innermost
    (all at ``8 * base_filters``) use dropout 0.5, as junyanz. ``unet_256`` is ``num_downs=8``,
    ``unet_128`` is ``num_downs=7``. Spatial sizes must be divisible by ``2**num_downs``.
    Weights start as ``init_weights(init_type, init_gain)`` (``None`` keeps PyTorch's default).

    >>> g = UnetGenerator(1, 1, spatial_dims=2, base_filters=8, num_downs=5)
    >>> g(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 1, 32, 32])
    >>> UnetGenerator(spatial_dims=3, base_filters=4, num_downs=4, norm="instance")(
    ...     torch.zeros(1, 1, 16, 16, 16)).shape
    torch.Size([1, 1, 16, 16, 16])
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, spatial_dims: int = 2,
                 base_filters: int = 64, num_downs: int = 8, norm: str = "batch",
                 dropout: bool = True, init_type: str | None = "normal",
                 init_gain: float = 0.02) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if norm not in NORMS:
            raise ValueError(f"UnetGenerator: norm must be one of {list(NORMS)}, got {norm!r}")
        if num_downs < 1:
            raise ValueError(f"UnetGenerator: num_downs must be >= 1, got {num_downs}")
        self.num_downs = num_downs

        def inner(i: int) -> int:
            return base_filters * min(2**i, 8)

        block: nn.Module | None = None
        for i in reversed(range(num_downs)):
            block = UnetSkipConnectionBlock(
                out_channels if i == 0 else inner(i - 1),
                inner(i),
                in_channels if i == 0 else None,
                block,
                outermost=i == 0,
                innermost=i == num_downs - 1,
                spatial_dims=spatial_dims,
                norm=norm,
                dropout=dropout and 4 <= i < num_downs - 1,
            )
        self.model = block
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, "UnetGenerator")
        multiple = 2**self.num_downs
        check_divisible(x, multiple, "UnetGenerator",
                        f"2**num_downs = {multiple} (num_downs={self.num_downs})")
        return self.model(x)
