"""Layer factories generic over ``spatial_dims`` (2 or 3), and the junyanz weight initialisation.

One network class serves 2D slices and 3D patches: it asks these factories for the layer type
instead of naming ``nn.Conv2d`` or ``nn.Conv3d`` itself (the MONAI pattern).

>>> import torch
>>> conv(3)(1, 4, kernel_size=3, padding=1)(torch.zeros(1, 1, 4, 4, 4)).shape
torch.Size([1, 4, 4, 4, 4])
>>> type(norm_layer("instance", 2, 8)).__name__
'InstanceNorm2d'
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = [
    "NORMS",
    "PADDINGS",
    "INIT_TYPES",
    "check_spatial_dims",
    "check_input",
    "conv",
    "conv_transpose",
    "avg_pool",
    "norm_layer",
    "pad_layer",
    "uses_bias",
    "init_weights",
]

NORMS = ("instance", "batch", "none")
PADDINGS = ("reflect", "replicate", "zero")
INIT_TYPES = ("normal", "xavier", "kaiming", "orthogonal")

_CONV = {2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}
_AVG_POOL = {2: nn.AvgPool2d, 3: nn.AvgPool3d}
_INSTANCE = {2: nn.InstanceNorm2d, 3: nn.InstanceNorm3d}
_BATCH = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_PAD = {
    ("reflect", 2): nn.ReflectionPad2d,
    ("reflect", 3): nn.ReflectionPad3d,
    ("replicate", 2): nn.ReplicationPad2d,
    ("replicate", 3): nn.ReplicationPad3d,
    ("zero", 2): nn.ZeroPad2d,
    ("zero", 3): nn.ZeroPad3d,
}


def check_spatial_dims(spatial_dims: int) -> int:
    """Return ``spatial_dims`` if it is 2 or 3, else raise ValueError.

    >>> check_spatial_dims(3)
    3
    """
    if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return int(spatial_dims)


def _check_choice(kind: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{kind} must be one of {list(choices)}, got {value!r}")
    return value


def check_input(x: torch.Tensor, spatial_dims: int, owner: str) -> None:
    """Raise ValueError unless ``x`` is shaped ``(N, C, *spatial)`` with ``spatial_dims`` axes.

    >>> check_input(torch.zeros(1, 1, 8, 8), 2, "net")
    """
    if x.dim() != spatial_dims + 2:
        raise ValueError(
            f"{owner}: expected a {spatial_dims + 2}D input (N, C, {', '.join('DHW'[-spatial_dims:])}) "
            f"for spatial_dims={spatial_dims}, got shape {tuple(x.shape)}"
        )


def check_divisible(x: torch.Tensor, multiple: int, owner: str, why: str) -> None:
    """Raise ValueError unless every spatial size of ``x`` is a multiple of ``multiple``.

    >>> check_divisible(torch.zeros(1, 1, 8, 8), 4, "net", "2**n = 4")
    """
    if any(s % multiple for s in x.shape[2:]):
        raise ValueError(f"{owner}: spatial size {tuple(x.shape[2:])} must be divisible by {why}")


def conv(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``.

    >>> conv(2)
    <class 'torch.nn.modules.conv.Conv2d'>
    """
    return _CONV[check_spatial_dims(spatial_dims)]


def conv_transpose(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``.

    >>> conv_transpose(3)
    <class 'torch.nn.modules.conv.ConvTranspose3d'>
    """
    return _CONV_T[check_spatial_dims(spatial_dims)]


def avg_pool(spatial_dims: int) -> type[nn.Module]:
    """``nn.AvgPool2d`` or ``nn.AvgPool3d``.

    >>> avg_pool(2)
    <class 'torch.nn.modules.pooling.AvgPool2d'>
    """
    return _AVG_POOL[check_spatial_dims(spatial_dims)]


def norm_layer(name: str, spatial_dims: int, channels: int) -> nn.Module:
    """A normalisation layer as junyanz ``get_norm_layer``.

    ``"instance"``: InstanceNorm without affine parameters and without running statistics;
    ``"batch"``: BatchNorm with affine parameters and running statistics; ``"none"``: identity.

    >>> n = norm_layer("batch", 3, 4)
    >>> type(n).__name__, n.affine, n.track_running_stats
    ('BatchNorm3d', True, True)
    """
    _check_choice("norm", name, NORMS)
    check_spatial_dims(spatial_dims)
    if name == "instance":
        return _INSTANCE[spatial_dims](channels, affine=False, track_running_stats=False)
    if name == "batch":
        return _BATCH[spatial_dims](channels, affine=True, track_running_stats=True)
    return nn.Identity()


def uses_bias(norm: str) -> bool:
    """Whether a convolution followed by ``norm`` has a bias.

    BatchNorm has its own shift, so convolutions before it have none (as junyanz); with instance
    norm (no affine, as junyanz) or no norm at all the convolution keeps its bias.

    >>> uses_bias("batch"), uses_bias("instance"), uses_bias("none")
    (False, True, True)
    """
    return _check_choice("norm", norm, NORMS) != "batch"


def pad_layer(name: str, spatial_dims: int, p: int) -> nn.Module:
    """A padding layer of ``p`` on every side of every spatial axis.

    ``name`` is ``"reflect"``, ``"replicate"`` or ``"zero"``.

    >>> pad_layer("reflect", 3, 1)(torch.zeros(1, 1, 2, 2, 2)).shape
    torch.Size([1, 1, 4, 4, 4])
    """
    _check_choice("padding", name, PADDINGS)
    return _PAD[(name, check_spatial_dims(spatial_dims))](p)


def init_weights(net: nn.Module, init_type: str = "normal", gain: float = 0.02) -> nn.Module:
    """Initialise ``net`` in place as junyanz ``init_weights``; returns ``net``.

    Conv/ConvTranspose/Linear weights: ``normal`` N(0, gain), ``xavier`` (xavier_normal, gain),
    ``kaiming`` (kaiming_normal, fan_in, gain unused) or ``orthogonal`` (gain); their biases 0.
    BatchNorm weights N(1, gain), biases 0.

    >>> net = init_weights(nn.Conv2d(1, 64, 3), "normal", 0.02)
    >>> abs(float(net.weight.detach().std()) - 0.02) < 0.005, float(net.bias.detach().abs().sum())
    (True, 0.0)
    """
    _check_choice("init_type", init_type, INIT_TYPES)
    for m in net.modules():
        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear)):
            with torch.no_grad():
                if init_type == "normal":
                    nn.init.normal_(m.weight, 0.0, gain)
                elif init_type == "xavier":
                    nn.init.xavier_normal_(m.weight, gain=gain)
                elif init_type == "kaiming":
                    nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
                else:
                    nn.init.orthogonal_(m.weight, gain=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            with torch.no_grad():
                nn.init.normal_(m.weight, 1.0, gain)
                nn.init.zeros_(m.bias)
    return net
