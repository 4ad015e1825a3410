"""PatchGAN and multi-scale discriminators, generic over ``spatial_dims``.

``PatchGANDiscriminator`` follows junyanz/pytorch-CycleGAN-and-pix2pix ``NLayerDiscriminator``
(same ``model.<i>`` indices, so its 2D checkpoints load); ``n_layers=3`` is the 70x70 PatchGAN.
``MultiScaleDiscriminator`` runs one PatchGAN per scale on progressively average-pooled inputs, as
pix2pixHD's ``MultiscaleDiscriminator`` (used by UNIT and pix2pixHD-style training).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .layers import (
    NORMS,
    avg_pool,
    check_input,
    check_spatial_dims,
    conv,
    init_weights,
    norm_layer,
    uses_bias,
)

__all__ = ["PatchGANDiscriminator", "MultiScaleDiscriminator", "patchgan_output_size"]


def patchgan_output_size(size: int, n_layers: int = 3) -> int:
    """Output length along one axis of a PatchGAN with ``n_layers`` on an input of ``size``.

    Each kernel-4, padding-1 convolution maps ``s`` to ``(s - 2) // stride + 1``: ``n_layers`` with
    stride 2, then two with stride 1.

    >>> patchgan_output_size(256), patchgan_output_size(64), patchgan_output_size(32)
    (30, 6, 2)
    """
    for stride in [2] * n_layers + [1, 1]:
        size = (size - 2) // stride + 1
    return size


class PatchGANDiscriminator(nn.Module):
    """PatchGAN discriminator (junyanz ``NLayerDiscriminator``), 2D or 3D.

    conv4/2 + LeakyReLU(0.2); ``n_layers - 1`` x (conv4/2, norm, LeakyReLU); conv4/1, norm,
    LeakyReLU; conv4/1 to one channel. Channels ``base_filters * min(2**n, 8)``. Returns raw
    logits (no sigmoid), one per patch: a ``(N, 1, *patchgan_output_size(s, n_layers))`` map.
    Weights start as ``init_weights(init_type, init_gain)`` (``None`` keeps PyTorch's default).

    >>> d = PatchGANDiscriminator(2, spatial_dims=2, base_filters=8)
    >>> d(torch.zeros(1, 2, 64, 64)).shape
    torch.Size([1, 1, 6, 6])
    >>> d3 = PatchGANDiscriminator(1, spatial_dims=3, base_filters=4, n_layers=2)
    >>> d3(torch.zeros(1, 1, 16, 16, 16)).shape
    torch.Size([1, 1, 2, 2, 2])
    """

    def __init__(self, in_channels: int, *, spatial_dims: int = 2, base_filters: int = 64,
                 n_layers: int = 3, norm: str = "instance", init_type: str | None = "normal",
                 init_gain: float = 0.02) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if norm not in NORMS:
            raise ValueError(f"PatchGANDiscriminator: norm must be one of {list(NORMS)}, got {norm!r}")
        if n_layers < 1:
            raise ValueError(f"PatchGANDiscriminator: n_layers must be >= 1, got {n_layers}")
        self.n_layers = n_layers
        conv_cls, bias, nf = conv(spatial_dims), uses_bias(norm), base_filters
        seq: list[nn.Module] = [conv_cls(in_channels, nf, kernel_size=4, stride=2, padding=1),
                                nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            seq += [conv_cls(nf * prev, nf * mult, kernel_size=4, stride=2 if n < n_layers else 1,
                             padding=1, bias=bias),
                    norm_layer(norm, spatial_dims, nf * mult),
                    nn.LeakyReLU(0.2, True)]
        seq.append(conv_cls(nf * mult, 1, kernel_size=4, stride=1, padding=1))
        self.model = nn.Sequential(*seq)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.spatial_dims, "PatchGANDiscriminator")
        out = [patchgan_output_size(s, self.n_layers) for s in x.shape[2:]]
        if min(out) < 1:
            raise ValueError(
                f"PatchGANDiscriminator: spatial size {tuple(x.shape[2:])} is too small for "
                f"n_layers={self.n_layers} (output would be {tuple(out)}); each axis needs at least "
                f"{_min_size(self.n_layers)}"
            )
        return self.model(x)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations after every LeakyReLU (the perceptual/style terms' default extractor)."""
        feats = []
        for layer in self.model:
            x = layer(x)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(x)
        return feats


def _min_size(n_layers: int) -> int:
    size = 1
    while patchgan_output_size(size, n_layers) < 1:
        size += 1
    return size


class MultiScaleDiscriminator(nn.Module):
    """``num_scales`` PatchGANs, each on the input average-pooled once more than the last.

    Pooling: kernel 3, stride 2, padding 1, ``count_include_pad=False`` (pix2pixHD). ``forward``
    returns a list of PatchGAN maps, finest (full resolution) first. Extra keyword arguments go to
    every :class:`PatchGANDiscriminator`.

    >>> d = MultiScaleDiscriminator(1, spatial_dims=2, num_scales=2, base_filters=8, n_layers=2)
    >>> [tuple(o.shape) for o in d(torch.zeros(1, 1, 32, 32))]
    [(1, 1, 6, 6), (1, 1, 2, 2)]
    """

    def __init__(self, in_channels: int, *, spatial_dims: int = 2, num_scales: int = 3,
                 **patchgan_kwargs: Any) -> None:
        super().__init__()
        self.spatial_dims = check_spatial_dims(spatial_dims)
        if num_scales < 1:
            raise ValueError(f"MultiScaleDiscriminator: num_scales must be >= 1, got {num_scales}")
        self.discriminators = nn.ModuleList(
            PatchGANDiscriminator(in_channels, spatial_dims=spatial_dims, **patchgan_kwargs)
            for _ in range(num_scales)
        )
        self.downsample = avg_pool(spatial_dims)(3, stride=2, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        check_input(x, self.spatial_dims, "MultiScaleDiscriminator")
        outputs = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.downsample(x)
            outputs.append(d(x))
        return outputs

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every scale's PatchGAN features, finest first."""
        feats: list[torch.Tensor] = []
        for i, d in enumerate(self.discriminators):
            if i:
                x = self.downsample(x)
            feats += d.features(x)
        return feats
