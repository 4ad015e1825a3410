"""Tests for gan_core.models: the junyanz generators/discriminators, generic over spatial_dims."""

from __future__ import annotations

import doctest

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gan_core.models as models
from gan_core.models import (
    MultiScaleDiscriminator,
    PatchGANDiscriminator,
    ResnetGenerator,
    UnetGenerator,
    build_discriminator,
    build_generator,
    count_parameters,
    init_weights,
    norm_layer,
    pad_layer,
    patchgan_output_size,
)
from gan_core.models import convnet, layers, patchgan, resnet, unet

BF = 8  # base_filters for the tiny networks
SIZE = {2: (32, 32), 3: (16, 16, 16)}


def tiny_nets(spatial_dims: int, in_channels: int = 1) -> dict[str, nn.Module]:
    """One small instance of every network, sized for SIZE[spatial_dims]."""
    d = spatial_dims
    return {
        "resnet": ResnetGenerator(in_channels, 2, spatial_dims=d, base_filters=BF, n_blocks=2),
        "unet": UnetGenerator(in_channels, 2, spatial_dims=d, base_filters=BF, num_downs=5 if d == 2 else 4),
        "patchgan": PatchGANDiscriminator(in_channels, spatial_dims=d, base_filters=BF, n_layers=2),
        "multiscale": MultiScaleDiscriminator(in_channels, spatial_dims=d, base_filters=BF,
                                              n_layers=2 if d == 2 else 1, num_scales=2),
    }


def as_list(y: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return y if isinstance(y, list) else [y]


def expected_shapes(name: str, spatial_dims: int, batch: int = 2) -> list[tuple[int, ...]]:
    size = SIZE[spatial_dims]
    if name in ("resnet", "unet"):
        return [(batch, 2, *size)]
    if name == "patchgan":
        return [(batch, 1, *(patchgan_output_size(s, 2) for s in size))]
    n_layers = 2 if spatial_dims == 2 else 1
    half = tuple((s + 1) // 2 for s in size)  # avg pool 3/2/1
    return [(batch, 1, *(patchgan_output_size(s, n_layers) for s in sz)) for sz in (size, half)]


# ---------------------------------------------------------------- shapes, ranges


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", ["resnet", "unet", "patchgan", "multiscale"])
def test_output_shapes(name: str, spatial_dims: int) -> None:
    net = tiny_nets(spatial_dims)[name]
    ys = as_list(net(torch.randn(2, 1, *SIZE[spatial_dims])))
    assert [tuple(y.shape) for y in ys] == expected_shapes(name, spatial_dims)


def test_patchgan_70x70_output_size_matches_junyanz() -> None:
    d = PatchGANDiscriminator(1, base_filters=BF, n_layers=3)
    assert tuple(d(torch.zeros(1, 1, 64, 64)).shape) == (1, 1, 6, 6)
    # 256x256 pix2pix input -> 30x30 patch map; formula agrees with the network for odd sizes too
    assert patchgan_output_size(256, 3) == 30
    for size in (24, 37, 50):
        out = d(torch.zeros(1, 1, size, size + 3))
        assert tuple(out.shape[2:]) == (patchgan_output_size(size, 3), patchgan_output_size(size + 3, 3))


def test_patchgan_receptive_field_is_70() -> None:
    """One output unit of the n_layers=3 PatchGAN sees a 70x70 input window (the 70x70 PatchGAN)."""
    d = PatchGANDiscriminator(1, base_filters=4, n_layers=3, norm="none", init_type=None)
    x = torch.zeros(1, 1, 128, 128, requires_grad=True)
    d(x)[0, 0, 5, 5].backward()
    rows = torch.nonzero(x.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(x.grad[0, 0].abs().sum(0)).flatten()
    assert int(rows.max() - rows.min() + 1) == 70 and int(cols.max() - cols.min() + 1) == 70


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", ["resnet", "unet"])
def test_generators_end_in_tanh(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    net = tiny_nets(spatial_dims)[name]
    init_weights(net, "normal", 1.0)  # large weights: the pre-activation is far outside [-1, 1]
    with torch.no_grad():
        y = net(10 * torch.randn(1, 1, *SIZE[spatial_dims]))
    assert float(y.abs().max()) <= 1.0
    assert float(y.abs().max()) > 0.99  # saturated, so the range bound is Tanh's doing


def test_multiscale_second_output_is_patchgan_on_avg_pooled_input() -> None:
    torch.manual_seed(0)
    d = MultiScaleDiscriminator(1, base_filters=BF, n_layers=2, num_scales=2).eval()
    x = torch.randn(1, 1, 32, 32)
    pooled = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
    outs = d(x)
    torch.testing.assert_close(outs[0], d.discriminators[0](x))
    torch.testing.assert_close(outs[1], d.discriminators[1](pooled))


# ---------------------------------------------------------------- published parameter counts

def unet_param_count(in_c: int, out_c: int, num_downs: int, ngf: int, spatial_dims: int = 2) -> int:
    """junyanz U-Net with batch norm, counted layer by layer (kernel 4, no conv bias before BN)."""
    k = 4**spatial_dims
    total = 0
    for i in range(num_downs):
        inner = ngf * min(2**i, 8)
        outer = out_c if i == 0 else ngf * min(2 ** (i - 1), 8)
        src = in_c if i == 0 else outer
        innermost = i == num_downs - 1
        total += src * inner * k                                     # down conv
        total += 0 if (i == 0 or innermost) else 2 * inner           # down BatchNorm
        total += (inner if innermost else 2 * inner) * outer * k     # up (transposed) conv
        total += outer if i == 0 else 2 * outer                      # outermost bias / up BatchNorm
    return total


def test_published_parameter_counts() -> None:
    # CycleGAN resnet_9blocks, 64 filters, 3->3, instance norm: 11,378,179 (junyanz prints 11.378 M)
    assert count_parameters(build_generator("resnet_9blocks", in_channels=3, out_channels=3)) == 11_378_179
    # pix2pix unet_256, 64 filters, 3->3, batch norm: junyanz prints "54.414 M"; exactly 54,413,955
    unet256 = build_generator("unet_256", in_channels=3, out_channels=3, norm="batch")
    assert count_parameters(unet256) == unet_param_count(3, 3, 8, 64) == 54_413_955
    # pix2pix basic D (n_layers 3), 64 filters, 6 input channels (A and B), batch norm: 2.769 M
    assert count_parameters(build_discriminator("patchgan", in_channels=6, norm="batch")) == 2_768_705


def test_3d_counts_follow_the_same_layout() -> None:
    g = UnetGenerator(1, 1, spatial_dims=3, base_filters=4, num_downs=6, norm="batch")
    assert count_parameters(g) == unet_param_count(1, 1, 6, 4, spatial_dims=3)
    # every 3D conv weight has the 2D one's shape plus one more kernel axis
    g2 = UnetGenerator(1, 1, spatial_dims=2, base_filters=4, num_downs=6, norm="batch")
    s2, s3 = g2.state_dict(), g.state_dict()
    assert s2.keys() == s3.keys()
    for key, w in s2.items():
        assert s3[key].shape[: w.dim()] == w.shape


def test_state_dict_keys_match_junyanz_checkpoints() -> None:
    """Module indices as junyanz's, so its published 2D checkpoints load."""
    g = build_generator("resnet_9blocks", in_channels=3, out_channels=3, base_filters=4)
    keys = g.state_dict().keys()
    assert {"model.1.weight", "model.10.conv_block.1.weight", "model.10.conv_block.5.weight",
            "model.18.conv_block.5.bias", "model.19.weight", "model.22.weight", "model.26.weight"} <= keys
    assert not any(k.startswith(("model.20.", "model.27.")) for k in keys)  # instance norm, Tanh
    u = build_generator("unet_256", in_channels=3, out_channels=3, base_filters=4)
    innermost = "model.model.1" + ".model.3" * 6 + ".model.1.weight"
    assert innermost in u.state_dict() and u.state_dict()[innermost].shape == (32, 32, 4, 4)
    d = build_discriminator("patchgan", in_channels=6, norm="batch", base_filters=4)
    assert [k for k in d.state_dict() if k.endswith("weight")] == [
        "model.0.weight", "model.2.weight", "model.3.weight", "model.5.weight", "model.6.weight",
        "model.8.weight", "model.9.weight", "model.11.weight"]


def test_unet_dropout_in_the_num_downs_minus_5_inner_blocks() -> None:
    def n_dropout(net: nn.Module) -> int:
        return sum(isinstance(m, nn.Dropout) for m in net.modules())

    assert n_dropout(UnetGenerator(base_filters=2, num_downs=8)) == 3
    assert n_dropout(UnetGenerator(base_filters=2, num_downs=7)) == 2
    assert n_dropout(UnetGenerator(base_filters=2, num_downs=8, dropout=False)) == 0
    assert n_dropout(ResnetGenerator(base_filters=2, n_blocks=3, dropout=True)) == 3


def test_conv_bias_only_without_batch_norm() -> None:
    for norm, has_bias in (("batch", False), ("instance", True), ("none", True)):
        d = PatchGANDiscriminator(1, base_filters=2, norm=norm)
        assert (d.model[2].bias is not None) == has_bias  # a conv followed by a norm
        assert d.model[0].bias is not None and d.model[-1].bias is not None  # never normalised


# ---------------------------------------------------------------- init and gradients


def test_normal_init_std_0_02_and_batchnorm_around_1() -> None:
    torch.manual_seed(0)
    g = UnetGenerator(1, 1, base_filters=16, num_downs=6, norm="batch")
    convs = [m for m in g.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    w = torch.cat([m.weight.detach().flatten() for m in convs])
    assert abs(float(w.std()) - 0.02) < 0.001 and abs(float(w.mean())) < 0.001
    assert all(m.bias is None or not m.bias.any() for m in convs)
    bns = [m for m in g.modules() if isinstance(m, nn.BatchNorm2d)]
    bw = torch.cat([m.weight.detach() for m in bns])
    assert abs(float(bw.mean()) - 1.0) < 0.01 and 0.01 < float(bw.std()) < 0.03
    assert not torch.cat([m.bias.detach() for m in bns]).any()


@pytest.mark.parametrize("init_type", ["xavier", "kaiming", "orthogonal"])
def test_other_init_types(init_type: str) -> None:
    torch.manual_seed(0)
    conv = init_weights(nn.Conv2d(64, 64, 3), init_type, 0.02)
    fan_in = 64 * 9
    expected = {"xavier": 0.02 * (2 / (2 * fan_in)) ** 0.5, "kaiming": (2 / fan_in) ** 0.5}.get(init_type)
    if expected is not None:
        assert abs(float(conv.weight.detach().std()) / expected - 1) < 0.05
    else:  # orthogonal rows, scaled by gain
        flat = conv.weight.detach().reshape(64, -1)
        torch.testing.assert_close(flat @ flat.T, 0.02**2 * torch.eye(64), atol=1e-6, rtol=0)
    assert not conv.bias.any()


def test_init_type_none_keeps_pytorch_default_and_bad_init_type_raises() -> None:
    torch.manual_seed(0)
    g = ResnetGenerator(base_filters=8, n_blocks=1, init_type=None)
    assert g.model[1].bias.abs().sum() > 0  # PyTorch's default init leaves non-zero biases
    with pytest.raises(ValueError, match="init_type must be one of"):
        init_weights(g, "uniform")


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", ["resnet", "unet", "patchgan", "multiscale"])
def test_gradients_reach_every_parameter(name: str, spatial_dims: int) -> None:
    torch.manual_seed(0)
    net = tiny_nets(spatial_dims)[name].train()
    loss = sum(y.square().mean() for y in as_list(net(torch.randn(2, 1, *SIZE[spatial_dims]))))
    loss.backward()
    for pname, p in net.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        if pname.endswith("weight"):
            assert p.grad.abs().sum() > 0, pname


# ---------------------------------------------------------------- U-Net specifics


def test_unet_size_error_names_size_and_multiple() -> None:
    g = UnetGenerator(base_filters=BF, num_downs=6)
    with pytest.raises(ValueError, match=r"\(32, 32\).*divisible by 2\*\*num_downs = 64"):
        g(torch.zeros(1, 1, 32, 32))
    g3 = UnetGenerator(spatial_dims=3, base_filters=BF, num_downs=4)
    with pytest.raises(ValueError, match=r"\(16, 16, 24\).*= 16"):
        g3(torch.zeros(1, 1, 16, 16, 24))


@pytest.mark.parametrize("spatial_dims,num_downs,size", [(2, 5, 32), (3, 4, 16)])
def test_instance_norm_unet_batch_1_with_1_pixel_bottleneck(spatial_dims: int, num_downs: int,
                                                            size: int) -> None:
    g = UnetGenerator(spatial_dims=spatial_dims, base_filters=BF, num_downs=num_downs, norm="instance")
    g.train()
    seen: list[tuple[int, ...]] = []
    for m in g.modules():
        if isinstance(m, nn.modules.conv._ConvNd) and not isinstance(m, nn.modules.conv._ConvTransposeNd):
            m.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape[2:])))
    y = g(torch.randn(1, 1, *(size,) * spatial_dims))
    assert y.shape == (1, 1, *(size,) * spatial_dims) and torch.isfinite(y).all()
    assert min(seen) == (1,) * spatial_dims  # the bottleneck really is one pixel
    y.mean().backward()


# ---------------------------------------------------------------- bf16, channels_last


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("name", ["resnet", "unet", "patchgan", "multiscale"])
def test_bf16_autocast_forward(name: str, spatial_dims: int) -> None:
    """bf16 autocast stays within the rounding error bf16 itself implies.

    bf16 keeps 8 significant bits: unit roundoff u = 2^-8 ~ 0.0039. Each conv layer rounds its
    input, its weights and its output to bf16 (fp32 accumulation), so it adds a relative error
    of about u in norm; through L layers these add up at worst linearly (first order, layers
    of gain ~1): ||y_bf16 - y_fp32|| / ||y_fp32|| <= 2 u L, the 2 covering the three roundings
    per layer. Measured over 20 seeds the worst ratio is 0.73 u L (3D PatchGAN); a broken
    bf16 path (a layer in the wrong dtype or wrong math) is off by O(1). A per-element
    tolerance is the wrong test: single elements near zero have unbounded relative error
    (resnet-3 once failed on 1 of 16,384 elements, 0.055 off with atol 0.05).
    """
    torch.manual_seed(0)
    net = tiny_nets(spatial_dims)[name].eval()
    x = torch.randn(2, 1, *SIZE[spatial_dims])
    ref = as_list(net(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = as_list(net(x))
    assert [o.shape for o in out] == [r.shape for r in ref]
    convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Linear)
    depth = sum(isinstance(m, convs) for m in net.modules())  # >= the depth of any path
    bound = 2 * 2.0 ** -8 * depth
    for o, r in zip(out, ref):
        assert o.dtype == torch.bfloat16
        rel = float((torch.linalg.vector_norm(o.float() - r) / torch.linalg.vector_norm(r)).detach())
        assert rel <= bound, f"{name}-{spatial_dims}: relative error {rel:.4f} > 2 u L = {bound:.4f}"


@pytest.mark.parametrize("name", ["resnet", "unet", "patchgan", "multiscale"])
def test_channels_last_forward(name: str) -> None:
    torch.manual_seed(0)
    net = tiny_nets(2)[name].eval()
    x = torch.randn(2, 1, 32, 32)
    ref = as_list(net(x))
    net = net.to(memory_format=torch.channels_last)
    out = as_list(net(x.contiguous(memory_format=torch.channels_last)))
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- registry, errors


def test_registry_names_and_aliases() -> None:
    names = {"resnet", "resnet_9blocks", "resnet_6blocks", "unet", "unet_256", "unet_128"}
    assert names <= set(models.GENERATORS)
    assert {"patchgan", "multiscale"} <= set(models.DISCRIMINATORS)

    def n_blocks(net: nn.Module) -> int:
        return sum(isinstance(m, resnet.ResnetBlock) for m in net.modules())

    assert n_blocks(build_generator("resnet_9blocks", base_filters=2)) == 9
    assert n_blocks(build_generator("resnet_6blocks", base_filters=2)) == 6
    assert n_blocks(build_generator("resnet", base_filters=2, n_blocks=4)) == 4
    assert build_generator("unet_256", base_filters=2).num_downs == 8
    assert build_generator("unet_128", base_filters=2).num_downs == 7
    assert build_generator("unet_128", base_filters=2, num_downs=7, spatial_dims=3).spatial_dims == 3
    assert isinstance(build_discriminator("patchgan", in_channels=2, base_filters=2), PatchGANDiscriminator)
    ms = build_discriminator("multiscale", in_channels=2, base_filters=2, num_scales=3)
    assert isinstance(ms, MultiScaleDiscriminator) and len(ms.discriminators) == 3


def test_registry_errors() -> None:
    with pytest.raises(KeyError, match=r"unknown generator 'resnet_7'.*resnet_9blocks.*unet_256"):
        build_generator("resnet_7")
    with pytest.raises(KeyError, match=r"unknown discriminator 'pixel'.*multiscale.*patchgan"):
        build_discriminator("pixel", in_channels=1)
    with pytest.raises(ValueError, match="fixes num_downs=7, got num_downs=8"):
        build_generator("unet_128", num_downs=8)
    with pytest.raises(ValueError, match="already registered"):
        models.register_generator("unet", UnetGenerator)


def test_bad_arguments_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="spatial_dims must be 2 or 3, got 1"):
        ResnetGenerator(spatial_dims=1)
    with pytest.raises(ValueError, match="norm must be one of"):
        UnetGenerator(norm="group")
    with pytest.raises(ValueError, match="padding must be one of"):
        ResnetGenerator(padding="circular")
    with pytest.raises(ValueError, match=r"expected a 5D input .* got shape \(1, 1, 16, 16\)"):
        PatchGANDiscriminator(1, spatial_dims=3, base_filters=2)(torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"too small for n_layers=3.*at least 24"):
        PatchGANDiscriminator(1, base_filters=2)(torch.zeros(1, 1, 16, 64))
    assert tuple(PatchGANDiscriminator(1, base_filters=2)(torch.zeros(1, 1, 24, 24)).shape) == (1, 1, 1, 1)
    with pytest.raises(ValueError, match=r"divisible by 2\*\*n_downsampling = 4"):
        ResnetGenerator(base_filters=2, n_blocks=1)(torch.zeros(1, 1, 30, 32))


@pytest.mark.parametrize("padding", ["reflect", "replicate", "zero"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_paddings(padding: str, spatial_dims: int) -> None:
    x = torch.arange(8.0).reshape(1, 1, *(2,) * spatial_dims) if spatial_dims == 3 else \
        torch.arange(4.0).reshape(1, 1, 2, 2)
    y = pad_layer(padding, spatial_dims, 1)(x)
    assert y.shape[2:] == (4,) * spatial_dims
    corner = float(y.flatten()[0])
    assert corner == {"reflect": float(x.flatten()[-1]), "replicate": 0.0, "zero": 0.0}[padding]
    g = ResnetGenerator(spatial_dims=spatial_dims, base_filters=2, n_blocks=1, padding=padding)
    assert g(torch.randn(1, 1, *(8,) * spatial_dims)).shape == (1, 1, *(8,) * spatial_dims)


def test_norm_layers_as_junyanz() -> None:
    inst = norm_layer("instance", 3, 4)
    assert isinstance(inst, nn.InstanceNorm3d) and not inst.affine and not inst.track_running_stats
    bn = norm_layer("batch", 2, 4)
    assert isinstance(bn, nn.BatchNorm2d) and bn.affine and bn.track_running_stats
    assert isinstance(norm_layer("none", 2, 4), nn.Identity)


@pytest.mark.parametrize("module", [models, layers, resnet, unet, patchgan, convnet])
def test_docstring_examples_run(module) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_convnet_generator_keeps_shape_and_is_registered(spatial_dims):
    from gan_core.models import ConvNetGenerator, build_generator

    g = build_generator("convnet", in_channels=1, out_channels=1, spatial_dims=spatial_dims,
                        base_filters=4, n_layers=2)
    assert isinstance(g, ConvNetGenerator)
    x = torch.zeros((1, 1) + (9,) * spatial_dims)
    y = g(x)
    assert y.shape == x.shape and y.abs().max() <= 1
    with pytest.raises(ValueError, match="odd kernel_size"):
        ConvNetGenerator(kernel_size=4)


def _input_extent(g: nn.Module, shape: tuple[int, ...]) -> list[int]:
    """Per spatial axis, the width of the input region that the centre output voxel depends on
    (union of the gradient's support over a few random inputs, so a dead ReLU cannot hide a path)."""
    support = torch.zeros(shape, dtype=torch.bool)
    centre = tuple(s // 2 for s in shape)
    for seed in range(4):
        torch.manual_seed(seed)
        x = torch.randn((1, 1) + shape, requires_grad=True)
        g(x)[(0, 0) + centre].backward()
        support |= x.grad[0, 0] != 0
    idx = support.nonzero()
    return [int(idx[:, a].max() - idx[:, a].min() + 1) for a in range(len(shape))]


@pytest.mark.parametrize("spatial_dims,dilations,size", [(2, (1, 2, 4, 8, 16, 1), 71),
                                                         (3, (1, 2, 1), 13)])
def test_convnet_dilations_widen_the_receptive_field_at_full_resolution(spatial_dims, dilations,
                                                                        size):
    """Dilated layers: the output keeps the input's size, and the centre voxel sees exactly
    1 + 2 * sum(dilations) voxels per axis (65 for 1,2,4,8,16,1), against 1 + 2 * n_layers
    undilated, with the same number of parameters."""
    from gan_core.models import ConvNetGenerator

    torch.manual_seed(0)
    kw = dict(spatial_dims=spatial_dims, base_filters=4, init_type="kaiming")
    wide = ConvNetGenerator(1, 1, dilations=dilations, **kw)
    plain = ConvNetGenerator(1, 1, n_layers=len(dilations), **kw)
    shape = (size,) * spatial_dims
    assert wide(torch.zeros((2, 1) + shape)).shape == (2, 1) + shape
    assert wide.receptive_field == 1 + 2 * sum(dilations)
    assert _input_extent(wide, shape) == [wide.receptive_field] * spatial_dims
    assert _input_extent(plain, shape) == [1 + 2 * len(dilations)] * spatial_dims
    assert count_parameters(wide) == count_parameters(plain)


def test_convnet_dilations_through_the_registry_and_checked():
    from gan_core.models import ConvNetGenerator, build_generator, register_generator
    from gan_core.models import GENERATORS

    g = build_generator("convnet", in_channels=1, out_channels=1, base_filters=4,
                        dilations=(1, 2, 4, 8, 16, 1))
    assert g.dilations == (1, 2, 4, 8, 16, 1) and g.receptive_field == 65
    register_generator("convnet_test_ctx", ConvNetGenerator, dilations=(1, 2, 1))
    try:
        assert build_generator("convnet_test_ctx", base_filters=4).receptive_field == 9
        with pytest.raises(ValueError, match="fixes dilations"):
            build_generator("convnet_test_ctx", base_filters=4, dilations=(1, 1))
    finally:
        GENERATORS.remove("convnet_test_ctx")
    assert ConvNetGenerator(dilations="1, 2,4", base_filters=4).dilations == (1, 2, 4)
    assert ConvNetGenerator(n_layers=3, base_filters=4).dilations == (1, 1, 1)
    with pytest.raises(ValueError, match="3 dilations .* n_layers=2"):
        ConvNetGenerator(n_layers=2, dilations=(1, 2, 4))
    for bad in ("1,0,2", "1,x", (1, 2.5), ()):
        with pytest.raises(ValueError, match="positive integers, one per layer"):
            ConvNetGenerator(dilations=bad)
