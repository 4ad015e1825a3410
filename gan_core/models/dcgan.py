"""DCGAN (Radford et al., 2016) and LAPGAN (Denton et al., 2015) networks, generic over ``spatial_dims``.

DCGAN: the generator projects a noise vector ``z`` to a ``4 x 4`` (``4 x 4 x 4``) map with
``8 * base_filters`` channels and doubles the size with fractionally-strided convolutions (kernel 4,
stride 2), halving the channels each step, BatchNorm + ReLU, Tanh output. The discriminator mirrors
it with strided convolutions, LeakyReLU(0.2) and BatchNorm (not on the first layer); its last
convolution covers the whole ``4 x 4`` map (the paper's flatten + single output) and returns a raw
logit (no sigmoid: pair it with ``GANLoss("vanilla")``). Sizes must be ``4 * 2**k`` (k >= 1).

``ConditionalDCGANGenerator`` is the label-conditioned variant (conditional synthesis from
segmentation maps): strided convolutions encode the condition down to the ``4 x 4`` level, the
noise is tiled over that map and concatenated, and the DCGAN decoder brings it back to full size,
with U-Net skip connections from the encoder (``skips=True``, the default).

LAPGAN: ``LapGANCoarseGenerator`` draws the coarsest pyramid level from noise, ``LapGANLevelGenerator``
draws one band-pass level from a noise plane and the upsampled coarser image, and
``LapGANDiscriminator`` judges a level (optionally with its condition concatenated).

>>> import torch
>>> g = DCGANGenerator(z_dim=16, size=32, base_filters=8)
>>> g(torch.zeros(2, 16)).shape
torch.Size([2, 1, 32, 32])
>>> DCGANDiscriminator(1, size=32, base_filters=8)(torch.zeros(2, 1, 32, 32)).shape
torch.Size([2, 1])
>>> c = ConditionalDCGANGenerator(10, size=32, z_dim=4, base_filters=8)
>>> c(torch.zeros(2, 10, 32, 32)).shape
torch.Size([2, 1, 32, 32])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

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

__all__ = [
    "dcgan_up_steps",
    "DCGANGenerator",
    "DCGANDiscriminator",
    "ConditionalDCGANGenerator",
    "LapGANCoarseGenerator",
    "LapGANLevelGenerator",
    "LapGANDiscriminator",
]


def dcgan_up_steps(size: int, where: str = "size") -> int:
    """``k`` with ``size == 4 * 2**k`` (k >= 1): the DCGAN generator's number of up-steps.

    >>> dcgan_up_steps(64), dcgan_up_steps(32)
    (4, 3)
    """
    k, s = 0, int(size)
    while s > 4 and s % 2 == 0:
        s, k = s // 2, k + 1
    if s != 4 or k < 1 or isinstance(size, bool):
        raise ValueError(f"{where} must be 4 * 2**k with k >= 1 (8, 16, 32, 64, 128, ...) for the "
                         f"DCGAN networks, got {size!r}")
    return k


def spatial_size(size: int | Sequence[int], spatial_dims: int, owner: str) -> tuple[int, ...]:
    """``size`` as one int per spatial axis (an int is repeated ``spatial_dims`` times)."""
    check_spatial_dims(spatial_dims)
    out = (int(size),) * spatial_dims if isinstance(size, int) else tuple(int(s) for s in size)
    if len(out) != spatial_dims or min(out) < 1:
        raise ValueError(f"{owner}: size must be a positive int or {spatial_dims} positive ints "
                         f"for spatial_dims={spatial_dims}, got {size!r}")
    return out


def _start_shape(size: tuple[int, ...], k: int, owner: str) -> tuple[int, ...]:
    if any(s % 2**k for s in size):
        raise ValueError(f"{owner}: every axis of size {size} must be divisible by 2**{k} = {2**k} "
                         f"(the last axis sets {k} resolution steps)")
    return tuple(s // 2**k for s in size)


def _check_norm(norm: str, owner: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"{owner}: norm must be one of {list(NORMS)}, got {norm!r}")


def _gen_channels(base_filters: int, k: int) -> list[int]:
    """Decoder channels per resolution, coarse to fine: 8*nf, 4*nf, ... (never below nf)."""
    return [base_filters * max(8 >> i, 1) for i in range(k)]


def _enc_channels(base_filters: int, k: int) -> list[int]:
    """Encoder / discriminator channels per strided step, fine to coarse: nf, 2*nf, ..., 8*nf."""
    return [base_filters * min(2**i, 8) for i in range(k)]


class _Decoder(nn.Module):
    """``k`` x (transposed conv 4/2/1, norm, ReLU); the last goes to ``out_channels`` and Tanh.

    ``skip_channels[i]`` extra channels are concatenated to the input of up-step ``i``.
    """

    def __init__(self, channels: list[int], out_channels: int, spatial_dims: int, norm: str,
                 skip_channels: list[int] | None = None) -> None:
        super().__init__()
        k = len(channels)
        skip = skip_channels or [0] * k
        convt, bias = conv_transpose(spatial_dims), uses_bias(norm)
        self.ups = nn.ModuleList()
        for i in range(k):
            last = i == k - 1
            cout = out_channels if last else channels[i + 1]
            layers: list[nn.Module] = [convt(channels[i] + skip[i], cout, kernel_size=4, stride=2,
                                             padding=1, bias=last or bias)]
            layers += [nn.Tanh()] if last else [norm_layer(norm, spatial_dims, cout), nn.ReLU(True)]
            self.ups.append(nn.Sequential(*layers))

    def forward(self, h: Tensor, skips: Sequence[Tensor | None] = ()) -> Tensor:
        for i, up in enumerate(self.ups):
            s = skips[i] if i < len(skips) else None
            h = up(h if s is None else torch.cat([h, s], 1))
        return h


class DCGANGenerator(nn.Module):
    """Noise ``(N, z_dim)`` (or ``(N, z_dim, 1, ...)``) -> image ``(N, out_channels, *size)`` in [-1, 1].

    The last axis of ``size`` sets the number of up-steps ``k`` (``size[-1] == 4 * 2**k``); the
    projection makes a ``size / 2**k`` map (``4 x 4``, or e.g. ``2 x 4 x 4`` for a 16 x 32 x 32 patch).
    """

    def __init__(self, z_dim: int = 100, out_channels: int = 1, *, size: int | Sequence[int] = 64,
                 spatial_dims: int = 2, base_filters: int = 64, norm: str = "batch",
                 init_type: str | None = "normal", init_gain: float = 0.02) -> None:
        super().__init__()
        _check_norm(norm, "DCGANGenerator")
        if z_dim < 1:
            raise ValueError(f"DCGANGenerator: z_dim must be >= 1, got {z_dim}")
        self.spatial_dims, self.z_dim = spatial_dims, z_dim
        self.size = spatial_size(size, spatial_dims, "DCGANGenerator")
        self.n_up = dcgan_up_steps(self.size[-1], "DCGANGenerator: size")
        start = _start_shape(self.size, self.n_up, "DCGANGenerator")
        ch = _gen_channels(base_filters, self.n_up)
        # a transposed conv with the start map's kernel on a 1-voxel input == the paper's projection
        self.project = nn.Sequential(
            conv_transpose(spatial_dims)(z_dim, ch[0], kernel_size=start, bias=uses_bias(norm)),
            norm_layer(norm, spatial_dims, ch[0]), nn.ReLU(True))
        self.decode = _Decoder(ch, out_channels, spatial_dims, norm)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() == 2:
            z = z.reshape(*z.shape, *([1] * self.spatial_dims))
        if z.dim() != self.spatial_dims + 2 or z.shape[1] != self.z_dim or any(s != 1 for s in z.shape[2:]):
            raise ValueError(f"DCGANGenerator: expected noise (N, {self.z_dim}), got {tuple(z.shape)}")
        return self.decode(self.project(z))


class DCGANDiscriminator(nn.Module):
    """Image ``(N, in_channels, *size)`` -> one raw logit per sample ``(N, 1)``.

    ``k`` strided convs (4/2/1) with ``nf, 2nf, 4nf, 8nf, 8nf, ...`` channels, LeakyReLU(0.2),
    norm on all but the first; then one convolution over the whole remaining map.
    """

    def __init__(self, in_channels: int, *, size: int | Sequence[int] = 64, spatial_dims: int = 2,
                 base_filters: int = 64, norm: str = "batch", init_type: str | None = "normal",
                 init_gain: float = 0.02) -> None:
        super().__init__()
        _check_norm(norm, "DCGANDiscriminator")
        self.spatial_dims = spatial_dims
        self.size = spatial_size(size, spatial_dims, "DCGANDiscriminator")
        k = dcgan_up_steps(self.size[-1], "DCGANDiscriminator: size")
        end = _start_shape(self.size, k, "DCGANDiscriminator")
        ch = _enc_channels(base_filters, k)
        c, bias = conv(spatial_dims), uses_bias(norm)
        layers: list[nn.Module] = []
        cin = in_channels
        for i in range(k):
            layers.append(c(cin, ch[i], kernel_size=4, stride=2, padding=1, bias=i == 0 or bias))
            if i:
                layers.append(norm_layer(norm, spatial_dims, ch[i]))
            layers.append(nn.LeakyReLU(0.2, True))
            cin = ch[i]
        layers.append(c(cin, 1, kernel_size=end))
        self.model = nn.Sequential(*layers)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.spatial_dims, "DCGANDiscriminator")
        if tuple(x.shape[2:]) != self.size:
            raise ValueError(f"DCGANDiscriminator: expected spatial size {self.size}, got {tuple(x.shape[2:])}")
        return self.model(x).flatten(1)


class ConditionalDCGANGenerator(nn.Module):
    """Condition ``(N, in_channels, *S)`` and noise ``(N, z_dim)`` -> image ``(N, out_channels, *S)``.

    Encoder: ``k`` strided convs (4/2/1, LeakyReLU(0.2), norm but on the first) to ``S / 2**k``
    (``4 x 4`` at the configured size, ``k`` from ``size[-1]``). There the noise, tiled over the map,
    is concatenated and fused by a 3x3 conv (norm, ReLU) into ``8 * base_filters`` channels; the
    DCGAN decoder follows. ``skips``: concatenate each encoder map to the decoder input of the same
    resolution (U-Net style), so the label layout reaches the output at full detail. Fully
    convolutional: any ``S`` divisible by ``2**k`` works. ``z=None`` draws standard normal noise.
    """

    def __init__(self, in_channels: int, out_channels: int = 1, *, size: int | Sequence[int] = 64,
                 z_dim: int = 100, spatial_dims: int = 2, base_filters: int = 64, norm: str = "batch",
                 skips: bool = True, init_type: str | None = "normal", init_gain: float = 0.02) -> None:
        super().__init__()
        _check_norm(norm, "ConditionalDCGANGenerator")
        if in_channels < 1 or z_dim < 1:
            raise ValueError(f"ConditionalDCGANGenerator: in_channels and z_dim must be >= 1, got "
                             f"{in_channels}, {z_dim}")
        self.spatial_dims, self.z_dim, self.skips = spatial_dims, z_dim, skips
        self.size = spatial_size(size, spatial_dims, "ConditionalDCGANGenerator")
        self.n_down = k = dcgan_up_steps(self.size[-1], "ConditionalDCGANGenerator: size")
        _start_shape(self.size, k, "ConditionalDCGANGenerator")
        enc, dec = _enc_channels(base_filters, k), _gen_channels(base_filters, k)
        c, bias = conv(spatial_dims), uses_bias(norm)
        self.encode = nn.ModuleList()
        cin = in_channels
        for i in range(k):
            layers: list[nn.Module] = [c(cin, enc[i], kernel_size=4, stride=2, padding=1,
                                         bias=i == 0 or bias)]
            if i:
                layers.append(norm_layer(norm, spatial_dims, enc[i]))
            layers.append(nn.LeakyReLU(0.2, True))
            self.encode.append(nn.Sequential(*layers))
            cin = enc[i]
        self.fuse = nn.Sequential(c(enc[-1] + z_dim, dec[0], kernel_size=3, padding=1, bias=bias),
                                  norm_layer(norm, spatial_dims, dec[0]), nn.ReLU(True))
        # up-step i starts at resolution S / 2**(k - i): the encoder map there is encode[k - 1 - i]'s
        skip_ch = [0] + [enc[k - 1 - i] if skips else 0 for i in range(1, k)]
        self.decode = _Decoder(dec, out_channels, spatial_dims, norm, skip_ch)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this."""
        return 2**self.n_down

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        check_input(x, self.spatial_dims, "ConditionalDCGANGenerator")
        check_divisible(x, self.multiple, "ConditionalDCGANGenerator", f"2**{self.n_down} = {self.multiple}")
        n = x.shape[0]
        if z is None:
            z = torch.randn(n, self.z_dim, device=x.device, dtype=x.dtype)
        if z.dim() != 2 or tuple(z.shape) != (n, self.z_dim):
            raise ValueError(f"ConditionalDCGANGenerator: expected noise ({n}, {self.z_dim}), got {tuple(z.shape)}")
        feats = []
        h = x
        for block in self.encode:
            h = block(h)
            feats.append(h)
        zt = z.to(h.dtype).reshape(n, self.z_dim, *([1] * self.spatial_dims)).expand(n, self.z_dim, *h.shape[2:])
        h = self.fuse(torch.cat([h, zt], 1))
        k = self.n_down
        skips = [None] + [feats[k - 1 - i] if self.skips else None for i in range(1, k)]
        return self.decode(h, skips)


def _conv_block(c, cin: int, cout: int, norm: str, spatial_dims: int, act: nn.Module,
                use_norm: bool = True, **kw) -> list[nn.Module]:
    layers: list[nn.Module] = [c(cin, cout, bias=not use_norm or uses_bias(norm), **kw)]
    if use_norm:
        layers.append(norm_layer(norm, spatial_dims, cout))
    return layers + [act]


class LapGANCoarseGenerator(nn.Module):
    """Noise ``(N, z_dim)`` -> the coarsest pyramid level ``(N, out_channels, *size)`` in [-1, 1].

    DCGAN-style for any small size: a projection to ``size`` with ``2 * base_filters`` channels,
    ``n_layers`` 3x3 convs (norm, ReLU), a 3x3 conv to ``out_channels`` and Tanh.

    >>> LapGANCoarseGenerator(8, size=4, base_filters=4)(torch.zeros(3, 8)).shape
    torch.Size([3, 1, 4, 4])
    """

    def __init__(self, z_dim: int = 100, out_channels: int = 1, *, size: int | Sequence[int] = 8,
                 spatial_dims: int = 2, base_filters: int = 64, n_layers: int = 2, norm: str = "batch",
                 init_type: str | None = "normal", init_gain: float = 0.02) -> None:
        super().__init__()
        _check_norm(norm, "LapGANCoarseGenerator")
        self.spatial_dims, self.z_dim = spatial_dims, z_dim
        self.size = spatial_size(size, spatial_dims, "LapGANCoarseGenerator")
        nf, c = 2 * base_filters, conv(spatial_dims)
        layers: list[nn.Module] = [conv_transpose(spatial_dims)(z_dim, nf, kernel_size=self.size,
                                                                bias=uses_bias(norm)),
                                   norm_layer(norm, spatial_dims, nf), nn.ReLU(True)]
        for _ in range(n_layers):
            layers += _conv_block(c, nf, nf, norm, spatial_dims, nn.ReLU(True), kernel_size=3, padding=1)
        layers += [c(nf, out_channels, kernel_size=3, padding=1), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"LapGANCoarseGenerator: expected noise (N, {self.z_dim}), got {tuple(z.shape)}")
        return self.model(z.reshape(*z.shape, *([1] * self.spatial_dims)))


class LapGANLevelGenerator(nn.Module):
    """``G_k``: (noise plane ``z_k``, low-pass ``l_k``) -> band-pass ``h_k``, same spatial size.

    As Denton et al., the noise enters as one extra input channel. ``n_layers`` 5x5 convs
    (norm, ReLU) and a 5x5 conv to ``channels``, linear output (a residual has no fixed range).
    ``z=None`` draws a standard normal plane.

    >>> LapGANLevelGenerator(1, base_filters=4)(torch.zeros(2, 1, 12, 12)).shape
    torch.Size([2, 1, 12, 12])
    """

    def __init__(self, channels: int = 1, *, spatial_dims: int = 2, base_filters: int = 64,
                 n_layers: int = 2, norm: str = "batch", init_type: str | None = "normal",
                 init_gain: float = 0.02) -> None:
        super().__init__()
        _check_norm(norm, "LapGANLevelGenerator")
        self.spatial_dims = check_spatial_dims(spatial_dims)
        c, nf = conv(spatial_dims), base_filters
        layers: list[nn.Module] = []
        cin = channels + 1
        for _ in range(n_layers):
            layers += _conv_block(c, cin, nf, norm, spatial_dims, nn.ReLU(True), kernel_size=5, padding=2)
            cin = nf
        layers.append(c(cin, channels, kernel_size=5, padding=2))
        self.model = nn.Sequential(*layers)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, low: Tensor, z: Tensor | None = None) -> Tensor:
        check_input(low, self.spatial_dims, "LapGANLevelGenerator")
        if z is None:
            z = torch.randn(low.shape[0], 1, *low.shape[2:], device=low.device, dtype=low.dtype)
        if tuple(z.shape) != (low.shape[0], 1, *low.shape[2:]):
            raise ValueError(f"LapGANLevelGenerator: expected a noise plane {(low.shape[0], 1, *low.shape[2:])}, "
                             f"got {tuple(z.shape)}")
        return self.model(torch.cat([z.to(low.dtype), low], 1))


class LapGANDiscriminator(nn.Module):
    """``D_k``: a level (with its condition concatenated, if any) ``(N, in_channels, *size)`` -> ``(N, 1)``.

    ``n_layers`` 5x5 convs (LeakyReLU(0.2), norm but on the first), stride 2 while the map is at
    least 8 voxels along every axis, else stride 1 (so a coarse 4 x 4 level keeps its map and the
    second layer's norm sees more than one value per channel); then one convolution over the whole
    remaining map (flatten + linear). Works for any ``size``.

    >>> LapGANDiscriminator(2, size=10, base_filters=4)(torch.zeros(2, 2, 10, 10)).shape
    torch.Size([2, 1])
    """

    def __init__(self, in_channels: int, *, size: int | Sequence[int] = 8, spatial_dims: int = 2,
                 base_filters: int = 64, n_layers: int = 2, norm: str = "batch",
                 init_type: str | None = "normal", init_gain: float = 0.02) -> None:
        super().__init__()
        _check_norm(norm, "LapGANDiscriminator")
        self.spatial_dims = spatial_dims
        self.size = spatial_size(size, spatial_dims, "LapGANDiscriminator")
        c = conv(spatial_dims)
        layers: list[nn.Module] = []
        cin, end = in_channels, self.size
        for i in range(n_layers):
            cout, stride = base_filters * min(2**i, 8), 2 if min(end) >= 8 else 1
            layers += _conv_block(c, cin, cout, norm, spatial_dims, nn.LeakyReLU(0.2, True),
                                  use_norm=i > 0, kernel_size=5, stride=stride, padding=2)
            cin, end = cout, tuple((s + stride - 1) // stride for s in end)
        layers.append(c(cin, 1, kernel_size=end))
        self.model = nn.Sequential(*layers)
        if init_type is not None:
            init_weights(self, init_type, init_gain)

    def forward(self, x: Tensor) -> Tensor:
        check_input(x, self.spatial_dims, "LapGANDiscriminator")
        if tuple(x.shape[2:]) != self.size:
            raise ValueError(f"LapGANDiscriminator: expected spatial size {self.size}, got {tuple(x.shape[2:])}")
        return self.model(x).flatten(1)
