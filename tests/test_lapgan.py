"""LAPGAN: Laplacian pyramid helpers, per-level training, coarse-to-fine sampling, train() end to end."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gan_core.presets import apply_overrides, preset
from gan_core.frameworks import available, build_framework, get_framework
from gan_core.frameworks.lapgan import (
    downsample,
    gaussian_pyramid,
    laplacian_pyramid,
    reconstruct,
    upsample,
)
from gan_core.engine import load_model, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**over):
    return apply_overrides(preset("tiny", "lapgan", task="synth"), over)


def _batch(cfg, n=2, seed=0):
    s = cfg.data.image_size
    spatial = (cfg.data.patch_depth, s, s) if cfg.model.spatial_dims == 3 else (s, s)
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.zeros(n, 0, *spatial), "B": torch.rand(n, 1, *spatial, generator=g) * 2 - 1,
            "mask": torch.ones(n, 1, *spatial)}


def test_registry_and_recipe():
    assert {"dcgan", "lapgan"} <= set(available())
    assert get_framework("lapgan").paired and get_framework("lapgan").search_space == {"loss.gan": ("uniform", 0.5, 2.0)}
    c = _cfg()
    assert (c.gan_mode, c.optim.lr, c.optim.beta1, c.model.norm, c.model.in_channels) == (
        "vanilla", 2e-4, 0.5, "batch", 0)
    full = preset("full", "lapgan", task="synth")
    assert (full.data.image_size, full.fw.levels, full.data.batch_size) == (64, 3, 64)


@pytest.mark.parametrize("shape", [(2, 1, 32, 32), (1, 2, 16, 24), (1, 1, 8, 16, 16)])
def test_pyramid_round_trip_is_exact(shape):
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pyr = laplacian_pyramid(x, 3)
    assert len(pyr) == 4
    assert [tuple(p.shape[2:]) for p in pyr] == [tuple(s // 2**k for s in shape[2:]) for k in range(4)]
    assert torch.allclose(reconstruct(pyr), x, atol=1e-6, rtol=0)
    # in float64 the round trip is exact to double precision
    x64 = x.double()
    assert (reconstruct(laplacian_pyramid(x64, 3)) - x64).abs().max() < 1e-12
    # the low-pass residual is the Gaussian pyramid's top: block means of the image
    g = gaussian_pyramid(x, 3)
    assert torch.equal(pyr[-1], g[-1])
    assert torch.allclose(g[-1].mean(), x.mean(), atol=1e-6)


def test_pyramid_of_a_constant_has_no_detail_and_the_ops():
    x = torch.full((1, 1, 16, 16), 0.3)
    pyr = laplacian_pyramid(x, 2)
    assert all(h.abs().max() < 1e-6 for h in pyr[:-1]) and torch.allclose(pyr[-1], torch.full((1, 1, 4, 4), 0.3))
    y = torch.rand(1, 1, 8, 8)
    assert upsample(y).shape == (1, 1, 16, 16) and downsample(y).shape == (1, 1, 4, 4)
    assert torch.allclose(downsample(y)[0, 0, 0, 0], y[0, 0, :2, :2].mean())  # 2x2 block mean
    # bilinear u interpolates: inside, each output is a 3/4-1/4 blend of its two nearest inputs
    assert torch.allclose(upsample(y)[0, 0, 1, 1], (9 * y[0, 0, 0, 0] + 3 * y[0, 0, 0, 1] + 3 * y[0, 0, 1, 0]
                                                    + y[0, 0, 1, 1]) / 16, atol=1e-6)


def test_pyramid_errors():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 8"):
        laplacian_pyramid(torch.zeros(1, 1, 36, 36), 3)
    with pytest.raises(ValueError, match="does not match"):
        reconstruct([torch.zeros(1, 1, 10, 10), torch.zeros(1, 1, 4, 4)])
    with pytest.raises(ValueError, match="empty"):
        reconstruct([])


@pytest.mark.parametrize("over,match", [({"data.image_size": 36}, r"data\.image_size must be divisible by 2\*\*fw\.levels = 8"),
                                        ({"fw.levels": 0}, r"fw\.levels must be >= 1"),
                                        ({"task.name": "labels2ct"}, "unconditional")])
def test_bad_configs_are_clear_errors(over, match):
    with pytest.raises(ValueError, match=match):
        build_framework(_cfg(**over))


def test_one_generator_and_discriminator_per_level():
    fw = build_framework(_cfg(**{"fw.levels": 2}))
    assert sorted(fw.networks()) == ["D0", "D1", "D2", "G0", "G1", "G2"]
    assert fw.sample(1, torch.Generator().manual_seed(0), return_pyramid=True)[-1].shape == (1, 1, 8, 8)


def test_train_steps_finite_and_every_generator_parameter_gets_gradient():
    c = _cfg()
    fw = build_framework(c)
    d_before = {k: [p.detach().clone() for p in v.parameters()] for k, v in fw.networks().items()
                if k.startswith("D")}
    for i in range(3):
        losses = fw.train_step(_batch(c, seed=i))
        assert {"G", "D", "G0", "G3", "D0", "D3"} <= set(losses)
        assert all(math.isfinite(float(v)) for v in losses.values())
        for k in ("G0", "G1", "G2", "G3"):
            for name, p in fw.networks()[k].named_parameters():
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"{k}.{name}"
                assert p.grad.abs().sum() > 0, f"no gradient reaches {k}.{name}"
    for k, before in d_before.items():
        assert any(not torch.equal(a, b) for a, b in zip(before, fw.networks()[k].parameters())), k


def test_levels_train_independently():
    """Each G_k is conditioned on the real pyramid, so changing G_3 leaves level 0 untouched."""
    c = _cfg()
    torch.manual_seed(0)
    a = build_framework(c)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.networks()["G3"].parameters():
            p.add_(0.5)
    torch.manual_seed(1)
    la = a.train_step(_batch(c))
    torch.manual_seed(1)
    lb = b.train_step(_batch(c))
    for k in ("G0", "D0", "G1", "D1"):
        assert float(la[k]) == float(lb[k]), k
    assert float(la["G3"]) != float(lb["G3"])


def test_sample_is_reproducible_coarse_to_fine_and_in_range():
    c = _cfg()
    fw = build_framework(c)
    fw.train_step(_batch(c))
    a = fw.sample(3, torch.Generator().manual_seed(5))
    assert a.shape == (3, 1, 32, 32) and a.dtype == torch.float32 and a.abs().max() <= 1
    assert torch.equal(a, fw.sample(3, torch.Generator().manual_seed(5)))
    assert not torch.allclose(a, fw.sample(3, torch.Generator().manual_seed(6)))
    levels = fw.sample(3, torch.Generator().manual_seed(5), return_pyramid=True)
    assert [tuple(t.shape[2:]) for t in levels] == [(32, 32), (16, 16), (8, 8), (4, 4)]
    assert torch.equal(levels[0], a)
    # each finer level adds the generated detail to the upsampled coarser one
    with torch.no_grad():
        fw.networks()["G0"].model[-1].weight.zero_()
        fw.networks()["G0"].model[-1].bias.zero_()
    flat = fw.sample(3, torch.Generator().manual_seed(5), return_pyramid=True)
    assert torch.allclose(flat[0], upsample(flat[1]).clamp(-1, 1), atol=1e-6)
    assert all(net.training for net in fw.networks().values())


def test_generate_takes_the_empty_synth_input():
    fw = build_framework(_cfg())
    assert fw.generate(torch.zeros(4, 0, 32, 32)).shape == (4, 1, 32, 32)
    with pytest.raises(ValueError, match="data.image_size"):
        fw.generate(torch.zeros(4, 0, 40, 40))
    with pytest.raises(ValueError, match="n must be >= 1"):
        fw.sample(0)


def test_3d_levels_train_and_sample():
    c = _cfg(**{"model.spatial_dims": 3, "data.image_size": 8, "data.patch_depth": 8, "fw.levels": 2,
                "model.g_filters": 4, "model.d_filters": 4, "fw.z_dim": 8})
    fw = build_framework(c)
    assert isinstance(fw.networks()["G0"].model[0], nn.Conv3d)
    losses = fw.train_step(_batch(c))
    assert all(math.isfinite(float(v)) for v in losses.values())
    assert fw.sample(2).shape == (2, 1, 8, 8, 8)
    assert fw.generate(torch.zeros(1, 0, 8, 8, 8)).shape == (1, 1, 8, 8, 8)


def test_resume_from_state_and_rng_is_exact():
    c = _cfg()
    a = build_framework(c)
    a.train_step(_batch(c, seed=0))
    sd, rng = copy.deepcopy(a.state_dict()), torch.get_rng_state()
    a.train_step(_batch(c, seed=1))
    b = build_framework(c)
    b.load_state_dict(sd)
    torch.set_rng_state(rng)
    b.train_step(_batch(c, seed=1))
    for k in a.networks():
        for (n, p), q in zip(a.networks()[k].state_dict().items(), b.networks()[k].state_dict().values()):
            assert torch.equal(p, q), f"{k}.{n} differs after resume"


def test_train_end_to_end_and_load_model(tiny_shards, tmp_path):
    c = apply_overrides(_cfg(), {"checkpoint_every": 2, "log_every": 2})
    part = train(c, tiny_shards, tmp_path / "r", max_steps=4, progress=False)
    assert part.steps == 4 and not part.model_path.exists()
    res = train(c, tiny_shards, tmp_path / "r", progress=False)  # resumes from checkpoint.pt
    assert res.steps == c.total_steps and res.model_path.exists()
    assert 0 < res.val_mae < 4024  # intensity W1 distance to the val slices, in HU
    assert all(math.isfinite(v) for k, v in res.last.items() if k != "val_mae")
    fw = load_model(res.model_path)
    y = fw.sample(2, torch.Generator().manual_seed(0))
    assert y.shape == (2, 1, 32, 32) and torch.isfinite(y).all() and y.abs().max() <= 1
    assert torch.equal(y, load_model(tmp_path / "r" / "checkpoint.pt").sample(2, torch.Generator().manual_seed(0)))
