"""A plain full-resolution convolutional generator: the small, fast net of the CPU presets.

Stacks of ``kernel_size`` convolutions (norm, ReLU) at the input's resolution, a 1x1 head and
Tanh. Layer ``i`` may be dilated by ``dilations[i]`` (default 1 everywhere); the receptive field
is ``1 + (kernel_size - 1) * sum(dilations)`` voxels. Undilated that is local context only (13 px
for 6 layers of 3x3), which is what intensity translation mostly needs, and it learns in minutes
on a CPU where the published U-Net / ResNet generators need hours. Doubling dilations
(1, 2, 4, 8, 16, 1: 65 px) widen the context to a whole 64 px slice at the same resolution, the
same parameter count and the same multiply count (Yu & Koltun 2016), for tissues whose intensity
alone is ambiguous (T1-dark CSF, cortical bone and sinus air); on the unpaired MR -> CT
benchmark they scored worse than undilated (docs/results.md, "Unpaired").

>>> import torch
>>> g = ConvNetGenerator(1, 1, base_filters=8, n_layers=3)
>>> g(torch.zeros(2, 1, 20, 24)).shape, g.receptive_field
(torch.Size([2, 1, 20, 24]), 7)
>>> ConvNetGenerator(1, 1, base_filters=8, dilations=(1, 2, 4, 8, 16, 1)).receptive_field
65
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .layers import check_input, check_spatial_dims, conv, init_weights, norm_layer, uses_bias


def parse_dilations(dilations: Sequence[int] | str | None, n_layers: int | None) -> tuple[int, ...]:
    """Per-layer dilations from a sequence or a comma-separated string (``"1,2,4"``); ``None`` or
    ``""``: 1 for each of ``n_layers`` layers (6 if that is ``None`` too). ValueError unless every
    dilation is a positive integer and their number matches ``n_layers`` (when given).

    >>> parse_dilations("1, 2,4", None), parse_dilations(None, 3)
    ((1, 2, 4), (1, 1, 1))
    """
    if dilations is None or (isinstance(dilations, str) and not dilations.strip()):
        return (1,) * (6 if n_layers is None else int(n_layers))
    items = dilations.split(",") if isinstance(dilations, str) else list(dilations)
    try:
        out = tuple(int(str(d).strip()) for d in items)
    except ValueError:
        out = ()
    if not out or any(d < 1 for d in out) or any(
            isinstance(d, float) and not float(d).is_integer() for d in items):
        raise ValueError(f"ConvNetGenerator: dilations must be positive integers, one per layer "
                         f"(e.g. '1,2,4,8,16,1'), got {dilations!r}")
    if n_layers is not None and len(out) != n_layers:
        raise ValueError(f"ConvNetGenerator: {len(out)} dilations {out} for n_layers={n_layers}; "
                         f"expected one per layer")
    return out


class ConvNetGenerator(nn.Module):
    """``n_layers`` x (conv k with dilation d_i, norm, ReLU) at full resolution, then a 1x1 conv
    and Tanh. ``n_layers`` defaults to the number of ``dilations`` (6 without them)."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, *, spatial_dims: int = 2,
                 base_filters: int = 32, n_layers: int | None = None, kernel_size: int = 3,
                 norm: str = "none", dropout: bool = False,
                 dilations: Sequence[int] | str | None = None, init_type: str | None = None,
                 init_gain: float = 0.02) -> None:
        super().__init__()
        check_spatial_dims(spatial_dims)
        if (n_layers is not None and n_layers < 1) or kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"ConvNetGenerator: n_layers >= 1 and an odd kernel_size expected, "
                             f"got {n_layers}, {kernel_size}")
        self.spatial_dims = spatial_dims
        self.dilations = parse_dilations(dilations, n_layers)
        self.receptive_field = 1 + (kernel_size - 1) * sum(self.dilations)
        conv_cls = conv(spatial_dims)
        layers: list[nn.Module] = []
        ch = in_channels
        for d in self.dilations:
            layers += [conv_cls(ch, base_filters, kernel_size, padding=d * (kernel_size // 2),
                                dilation=d, bias=uses_bias(norm)),
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
