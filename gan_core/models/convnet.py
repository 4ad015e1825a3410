"""A plain full-resolution convolutional generator: the small, fast net of the CPU presets.

Stacks of ``kernel_size`` convolutions (norm, ReLU) at the input's resolution, a 1x1 head and
Tanh. Its receptive field is ``1 + n_layers * (kernel_size - 1)`` voxels: local context only,
which is what intensity translation mostly needs, and it learns in minutes on a CPU where the
published U-Net / ResNet generators need hours.

>>> import torch
>>> g = ConvNetGenerator(1, 1, base_filters=8, n_layers=3)
>>> g(torch.zeros(2, 1, 20, 24)).shape
torch.Size([2, 1, 20, 24])
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import check_input, check_spatial_dims, conv, init_weights, norm_layer, uses_bias


class ConvNetGenerator(nn.Module):
    """``n_layers`` x (conv k, norm, ReLU) at full resolution, then a 1x1 conv and Tanh."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, spatial_dims: int = 2,
                 base_filters: int = 32, n_layers: int = 6, kernel_size: int = 3, norm: str = "none",
                 dropout: bool = False, init_type: str | None = None, init_gain: float = 0.02) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if n_layers < 1 or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvNetGenerator: n_layers >= 1 and an odd kernel_size expected, "
                             f"got {n_layers}, {kernel_size}")
        self.spatial_dims = spatial_dims
        conv_cls = conv(spatial_dims)
        layers: list[nn.Module] = []
        ch = in_channels
        for _ in range(n_layers):
            layers += [conv_cls(ch, base_filters, kernel_size, padding=kernel_size // 2, bias=uses_bias(norm)),
                       norm_layer(norm, spatial_dims, base_filters), nn.ReLU(True)]
            if dropout:
                layers.append(nn.Dropout(0.1))
            ch = base_filters
        layers += [conv_cls(ch, out_channels, 1), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, "ConvNetGenerator")
        return self.model(x)
