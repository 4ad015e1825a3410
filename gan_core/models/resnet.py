"""The ResNet generator of CycleGAN / pix2pix (Johnson et al.), generic over ``spatial_dims``.

Follows junyanz/pytorch-CycleGAN-and-pix2pix ``ResnetGenerator`` layer for layer (the same
``model.<i>`` module indices, so its 2D checkpoints load): c7s1-64, d128, d256, n x R256, u128,
u64, c7s1-out, Tanh.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import (
    NORMS,
    PADDINGS,
    check_divisible,
    check_input,
    check_spatial_dims,
    conv,
    conv_transpose,
    init_weights,
    norm_layer,
    pad_layer,
    uses_bias,
)

__all__ = ["ResnetBlock", "ResnetGenerator"]


class ResnetBlock(nn.Module):
    """Residual block: pad, conv3, norm, ReLU, [dropout 0.5], pad, conv3, norm; plus the identity.

    With ``padding="zero"`` the convolutions pad themselves (as junyanz), so there is no pad layer.

    >>> block = ResnetBlock(8, spatial_dims=3)
    >>> block(torch.zeros(1, 8, 4, 4, 4)).shape
    torch.Size([1, 8, 4, 4, 4])
    """

    def __init__(self, channels: int, *, spatial_dims: int = 2, norm: str = "instance",
                 dropout: bool = False, padding: str = "reflect") -> None:
        super().__init__()
        if padding not in PADDINGS:
            raise ValueError(f"ResnetBlock: padding must be one of {list(PADDINGS)}, got {padding!r}")
        conv_cls, bias = conv(spatial_dims), uses_bias(norm)
        conv_pad = 1 if padding == "zero" else 0
        layers: list[nn.Module] = []
        for i in range(2):
            if padding != "zero":
                layers.append(pad_layer(padding, spatial_dims, 1))
            layers += [conv_cls(channels, channels, kernel_size=3, padding=conv_pad, bias=bias),
                       norm_layer(norm, spatial_dims, channels)]
            if i == 0:
                layers.append(nn.ReLU(True))
                if dropout:
                    layers.append(nn.Dropout(0.5))
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """ResNet image-to-image generator (junyanz ``ResnetGenerator``), 2D or 3D.

    ``n_downsampling`` stride-2 convolutions, ``n_blocks`` residual blocks at
    ``base_filters * 2**n_downsampling`` channels, as many transposed convolutions back, Tanh out.
    Spatial sizes must be divisible by ``2**n_downsampling``; the output has the input's shape
    (with ``out_channels``). ``padding`` is used by every pad layer (junyanz pads the two 7-wide
    convolutions by reflection whatever its ``padding_type``; with ``padding="reflect"``, the
    default, the two are the same network). Weights start as ``init_weights(init_type, init_gain)``
    (``init_type=None`` keeps PyTorch's default initialisation).

    >>> g = ResnetGenerator(1, 1, spatial_dims=2, base_filters=8, n_blocks=2)
    >>> g(torch.zeros(2, 1, 32, 32)).shape
    torch.Size([2, 1, 32, 32])
    >>> ResnetGenerator(spatial_dims=3, base_filters=4, n_blocks=1)(torch.zeros(1, 1, 8, 8, 8)).shape
    torch.Size([1, 1, 8, 8, 8])
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, spatial_dims: int = 2,
                 base_filters: int = 64, n_blocks: int = 9, n_downsampling: int = 2,
                 norm: str = "instance", dropout: bool = False, padding: str = "reflect",
                 init_type: str | None = "normal", init_gain: float = 0.02) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if norm not in NORMS:
            raise ValueError(f"ResnetGenerator: norm must be one of {list(NORMS)}, got {norm!r}")
        if padding not in PADDINGS:
            raise ValueError(f"ResnetGenerator: padding must be one of {list(PADDINGS)}, got {padding!r}")
        if n_blocks < 0 or n_downsampling < 0:
            raise ValueError(f"ResnetGenerator: n_blocks and n_downsampling must be >= 0, "
                             f"got {n_blocks} and {n_downsampling}")
        self.n_downsampling = n_downsampling
        conv_cls, conv_t, bias = conv(spatial_dims), conv_transpose(spatial_dims), uses_bias(norm)
        nf = base_filters
        model: list[nn.Module] = [
            pad_layer(padding, spatial_dims, 3),
            conv_cls(in_channels, nf, kernel_size=7, padding=0, bias=bias),
            norm_layer(norm, spatial_dims, nf),
            nn.ReLU(True),
        ]
        for i in range(n_downsampling):
            mult = 2**i
            model += [
                conv_cls(nf * mult, nf * mult * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                norm_layer(norm, spatial_dims, nf * mult * 2),
                nn.ReLU(True),
            ]
        mult = 2**n_downsampling
        model += [ResnetBlock(nf * mult, spatial_dims=spatial_dims, norm=norm, dropout=dropout,
                              padding=padding) for _ in range(n_blocks)]
        for i in range(n_downsampling):
            mult = 2 ** (n_downsampling - i)
            model += [
                conv_t(nf * mult, nf * mult // 2, kernel_size=3, stride=2, padding=1,
                       output_padding=1, bias=bias),
                norm_layer(norm, spatial_dims, nf * mult // 2),
                nn.ReLU(True),
            ]
        model += [pad_layer(padding, spatial_dims, 3),
                  conv_cls(nf, out_channels, kernel_size=7, padding=0),
                  nn.Tanh()]
        self.model = nn.Sequential(*model)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, "ResnetGenerator")
        multiple = 2**self.n_downsampling
        check_divisible(x, multiple, "ResnetGenerator", f"2**n_downsampling = {multiple}")
        return self.model(x)
