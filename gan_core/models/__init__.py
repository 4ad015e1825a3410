"""GAN networks generic over ``spatial_dims`` (2D slices or 3D patches), and a small registry.

Generators: ``"resnet"`` (``"resnet_9blocks"``, ``"resnet_6blocks"``), ``"unet"`` (``"unet_256"``,
``"unet_128"``). Discriminators: ``"patchgan"``, ``"multiscale"``. An alias fixes some keyword
arguments (``"unet_128"`` is ``"unet"`` with ``num_downs=7``); passing a different value for one of
them is an error. Other modules add networks with :func:`register_generator` /
:func:`register_discriminator`.

>>> g = build_generator("resnet_6blocks", in_channels=1, out_channels=1, base_filters=8)
>>> count_parameters(g) == count_parameters(ResnetGenerator(base_filters=8, n_blocks=6))
True
>>> build_discriminator("patchgan", in_channels=2, spatial_dims=3, base_filters=4).spatial_dims
3
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from gan_core.registry import Registry

from .layers import (
    conv,
    conv_transpose,
    init_weights,
    norm_layer,
    pad_layer,
)
from .convnet import ConvNetGenerator
from .patchgan import MultiScaleDiscriminator, PatchGANDiscriminator, patchgan_output_size
from .resnet import ResnetBlock, ResnetGenerator
from .unet import UnetGenerator, UnetSkipConnectionBlock

__all__ = [
    "conv",
    "conv_transpose",
    "norm_layer",
    "pad_layer",
    "init_weights",
    "ResnetBlock",
    "ResnetGenerator",
    "UnetSkipConnectionBlock",
    "UnetGenerator",
    "PatchGANDiscriminator",
    "MultiScaleDiscriminator",
    "patchgan_output_size",
    "ConvNetGenerator",
    "GENERATORS",
    "DISCRIMINATORS",
    "register_generator",
    "register_discriminator",
    "build_generator",
    "build_discriminator",
    "count_parameters",
]

Factory = Callable[..., nn.Module]

#: name -> (factory, fixed keyword arguments)
GENERATORS: Registry[tuple[Factory, dict[str, Any]]] = Registry("generator")
DISCRIMINATORS: Registry[tuple[Factory, dict[str, Any]]] = Registry("discriminator")


def register_generator(name: str, factory: Factory, **fixed: Any) -> None:
    """Make ``build_generator(name, **kw)`` call ``factory(**fixed, **kw)``.

    >>> register_generator("resnet_2blocks", ResnetGenerator, n_blocks=2)
    >>> sum(isinstance(m, ResnetBlock) for m in build_generator("resnet_2blocks", base_filters=4).modules())
    2
    >>> GENERATORS.remove("resnet_2blocks")  # (keep the doctest from changing the registry)
    """
    GENERATORS.add(name, (factory, dict(fixed)))


def register_discriminator(name: str, factory: Factory, **fixed: Any) -> None:
    """Make ``build_discriminator(name, **kw)`` call ``factory(**fixed, **kw)``.

    >>> register_discriminator("patchgan_2layers", PatchGANDiscriminator, n_layers=2)
    >>> build_discriminator("patchgan_2layers", in_channels=1, base_filters=4).n_layers
    2
    >>> DISCRIMINATORS.remove("patchgan_2layers")  # (keep the doctest from changing the registry)
    """
    DISCRIMINATORS.add(name, (factory, dict(fixed)))


def _build(table: Registry[tuple[Factory, dict[str, Any]]], name: str,
           kwargs: dict[str, Any]) -> nn.Module:
    factory, fixed = table.get(name)  # KeyError listing the names if unknown
    kind = table.kind
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"{kind} {name!r} fixes {key}={value!r}, got {key}={kwargs[key]!r}")
    return factory(**{**fixed, **kwargs})


def build_generator(name: str, **kwargs: Any) -> nn.Module:
    """Build the generator registered as ``name`` (KeyError listing the names if unknown).

    >>> build_generator("unet_128", base_filters=4).num_downs
    7
    """
    return _build(GENERATORS, name, kwargs)


def build_discriminator(name: str, **kwargs: Any) -> nn.Module:
    """Build the discriminator registered as ``name`` (KeyError listing the names if unknown).

    >>> len(build_discriminator("multiscale", in_channels=1, num_scales=2, base_filters=4).discriminators)
    2
    """
    return _build(DISCRIMINATORS, name, kwargs)


def count_parameters(net: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``net`` (only those with ``requires_grad`` if ``trainable_only``).

    >>> count_parameters(nn.Conv2d(3, 8, 3))
    224
    """
    return sum(p.numel() for p in net.parameters() if p.requires_grad or not trainable_only)


register_generator("resnet", ResnetGenerator)
register_generator("resnet_9blocks", ResnetGenerator, n_blocks=9)
register_generator("resnet_6blocks", ResnetGenerator, n_blocks=6)
register_generator("unet", UnetGenerator)
register_generator("convnet", ConvNetGenerator)
register_generator("unet_256", UnetGenerator, num_downs=8)
register_generator("unet_128", UnetGenerator, num_downs=7)
register_discriminator("patchgan", PatchGANDiscriminator)
register_discriminator("multiscale", MultiScaleDiscriminator)
