"""DCGAN (unconditional and label-conditioned): networks, training steps, sampling, train() end to end."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from gan_core.presets import apply_overrides, preset
from gan_core.frameworks import available, build_framework, get_framework
from gan_core.models.dcgan import (
    ConditionalDCGANGenerator,
    DCGANDiscriminator,
    DCGANGenerator,
    dcgan_up_steps,
)
from gan_core.engine import load_model, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _labels(n=2, size=32, classes=10, seed=0, spatial_dims=2):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, classes, (n, *([size] * spatial_dims)), generator=g)
    return torch.movedim(nn.functional.one_hot(lab, classes), -1, 1).float()


def _batch(cfg, n=2, seed=0):
    size, sd, c = cfg.data.image_size, cfg.model.spatial_dims, cfg.model.in_channels
    spatial = (cfg.data.patch_depth, size, size) if sd == 3 else (size, size)
    g = torch.Generator().manual_seed(seed)
    A = _labels(n, size, c, seed) if c else torch.zeros(n, 0, *spatial)
    if c and sd == 3:
        lab = torch.randint(0, c, (n, *spatial), generator=g)
        A = torch.movedim(nn.functional.one_hot(lab, c), -1, 1).float()
    return {"A": A, "B": torch.rand(n, 1, *spatial, generator=g) * 2 - 1, "mask": torch.ones(n, 1, *spatial)}


@pytest.fixture(params=["synth", "labels2ct"])
def cfg(request):
    return preset("tiny", "dcgan", task=request.param)


def test_registry_and_recipe():
    assert {"dcgan", "lapgan"} <= set(available())
    cls = get_framework("dcgan")
    assert cls.paired and cls.search_space == {"loss.gan": ("uniform", 0.5, 2.0)}
    c = preset("tiny", "dcgan", task="synth")
    assert (c.gan_mode, c.optim.lr, c.optim.beta1, c.fw.z_dim) == ("vanilla", 2e-4, 0.5, 100)
    assert (c.model.norm, c.model.init_type, c.model.init_gain, c.loss.image) == ("batch", "normal", 0.02, 0.0)
    assert c.model.in_channels == 0 and preset("tiny", "dcgan", task="labels2ct").model.in_channels == 10
    full = preset("full", "dcgan", task="synth")
    assert (full.data.image_size, full.data.batch_size, full.model.g_filters, full.model.d_filters) == (64, 64, 64, 64)


def test_paper_architecture_at_64px():
    g = DCGANGenerator(100, 1, size=64, base_filters=64)
    convt = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert [m.out_channels for m in convt] == [512, 256, 128, 64, 1]
    assert convt[0].kernel_size == (4, 4) and all(m.stride == (2, 2) for m in convt[1:])
    assert sum(isinstance(m, nn.BatchNorm2d) for m in g.modules()) == 4
    assert isinstance(list(g.modules())[-1], nn.Tanh) and g(torch.zeros(2, 100)).shape == (2, 1, 64, 64)
    d = DCGANDiscriminator(1, size=64, base_filters=64)
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert [m.out_channels for m in convs] == [64, 128, 256, 512, 1]
    assert sum(isinstance(m, nn.BatchNorm2d) for m in d.modules()) == 3  # none after the first conv
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())
    assert all(m.negative_slope == 0.2 for m in d.modules() if isinstance(m, nn.LeakyReLU))


def test_weights_start_as_normal_0_02(cfg):
    fw = build_framework(cfg)
    w = torch.cat([m.weight.detach().flatten() for net in fw.networks().values() for m in net.modules()
                   if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))])
    assert abs(float(w.mean())) < 2e-3 and float(w.std()) == pytest.approx(0.02, rel=0.1)


@pytest.mark.parametrize("size", [0, 4, 12, 40, 48, 100])
def test_bad_image_size_is_a_clear_error(size):
    with pytest.raises(ValueError, match=r"size must be 4 \* 2\*\*k"):
        dcgan_up_steps(size)
    if size >= 8:
        c = apply_overrides(preset("tiny", "dcgan", task="synth"), {"data.image_size": size})
        with pytest.raises(ValueError, match=r"data\.image_size must be 4 \* 2\*\*k"):
            build_framework(c)


def test_3d_patch_depth_must_fit():
    c = apply_overrides(preset("tiny", "dcgan", task="synth"),
                        {"model.spatial_dims": 3, "data.image_size": 16, "data.patch_depth": 6})
    with pytest.raises(ValueError, match="data.patch_depth"):
        build_framework(c)


def test_train_steps_finite_and_every_generator_parameter_gets_gradient(cfg):
    fw = build_framework(cfg)
    d_before = [p.detach().clone() for p in fw.networks()["D"].parameters()]
    for i in range(3):
        losses = fw.train_step(_batch(cfg, seed=i))
        assert {"G", "D", "G_GAN", "D_real", "D_fake"} <= set(losses)
        assert all(math.isfinite(float(v)) for v in losses.values())
        for name, p in fw.networks()["G"].named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, f"no gradient reaches G.{name}"
    assert any(not torch.equal(a, b) for a, b in zip(d_before, fw.networks()["D"].parameters()))


def test_conditional_image_term_is_optional():
    c = preset("tiny", "dcgan", task="labels2ct")
    assert float(build_framework(c).train_step(_batch(c))["G_L1"]) == 0.0
    c1 = apply_overrides(c, {"loss.image": 10.0})
    out = build_framework(c1).train_step(_batch(c1))
    assert float(out["G_L1"]) > 0 and float(out["G"]) == pytest.approx(float(out["G_GAN"] + out["G_L1"]), rel=1e-5)
    assert "G_L1" not in build_framework(preset("tiny", "dcgan", task="synth")).train_step(
        _batch(preset("tiny", "dcgan", task="synth")))


def test_sample_is_reproducible_and_in_range():
    c = preset("tiny", "dcgan", task="synth")
    fw = build_framework(c)
    fw.train_step(_batch(c))  # BatchNorm running statistics away from their initial values
    a = fw.sample(4, torch.Generator().manual_seed(7))
    b = fw.sample(4, torch.Generator().manual_seed(7))
    other = fw.sample(4, torch.Generator().manual_seed(8))
    assert a.shape == (4, 1, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.allclose(a, other)
    assert a.abs().max() <= 1 and not torch.allclose(a[0], a[1])  # samples within a batch differ
    assert all(net.training for net in fw.networks().values())  # modes restored after sampling


def test_generate_unconditional_checks_the_size():
    c = preset("tiny", "dcgan", task="synth")
    fw = build_framework(c)
    y = fw.generate(torch.zeros(3, 0, 32, 32))
    assert y.shape == (3, 1, 32, 32) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="data.image_size"):
        fw.generate(torch.zeros(3, 0, 40, 40))
    with pytest.raises(ValueError, match="conditional"):
        build_framework(preset("tiny", "dcgan", task="labels2ct")).sample(2)


def test_conditional_output_depends_on_the_label_map():
    c = preset("tiny", "dcgan", task="labels2ct")
    fw = build_framework(c)
    for i in range(2):
        fw.train_step(_batch(c, seed=i))
    x1, x2 = _labels(2, seed=1), _labels(2, seed=2)
    y1 = fw.generate(x1, torch.Generator().manual_seed(0))
    assert torch.equal(y1, fw.generate(x1, torch.Generator().manual_seed(0)))
    assert not torch.allclose(y1, fw.generate(x2, torch.Generator().manual_seed(0)), atol=1e-4)
    assert not torch.allclose(y1, fw.generate(x1, torch.Generator().manual_seed(1)), atol=1e-4)  # and on z
    # any size: replicate-padded to the encoder's multiple (8) and cropped back
    y = fw.generate(_labels(1, size=36)[..., :30])
    assert y.shape == (1, 1, 36, 30) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="in_channels"):
        fw.generate(torch.zeros(1, 3, 32, 32))


def test_conditional_generator_without_skips():
    g = ConditionalDCGANGenerator(10, 1, size=16, z_dim=4, base_filters=4, skips=False)
    assert g(_labels(2, size=16)).shape == (2, 1, 16, 16)
    with pytest.raises(ValueError, match="divisible"):
        g(_labels(1, size=10))


@pytest.mark.parametrize("task", ["synth", "labels2ct"])
def test_3d_networks_train_and_generate(task):
    c = apply_overrides(preset("tiny", "dcgan", task=task),
                        {"model.spatial_dims": 3, "data.image_size": 8, "data.patch_depth": 8,
                         "model.g_filters": 4, "model.d_filters": 4, "fw.z_dim": 8})
    fw = build_framework(c)
    assert isinstance(fw.networks()["G"].decode.ups[0][0], nn.ConvTranspose3d)
    losses = fw.train_step(_batch(c))
    assert all(math.isfinite(float(v)) for v in losses.values())
    x = _batch(c, n=1)["A"]
    assert fw.generate(x).shape == (1, 1, 8, 8, 8)


def test_state_dict_roundtrip():
    c = preset("tiny", "dcgan", task="labels2ct")
    a = build_framework(c)
    a.train_step(_batch(c))
    b = build_framework(c)
    b.load_state_dict(a.state_dict())
    x = _labels(1, seed=3)
    assert torch.equal(a.generate(x, torch.Generator().manual_seed(0)),
                       b.generate(x, torch.Generator().manual_seed(0)))


def test_resume_from_state_and_rng_is_exact(cfg):
    """What train() checkpoints (framework state_dict + the global RNG) continues a run exactly:
    the noise comes from the global RNG."""
    a = build_framework(cfg)
    a.train_step(_batch(cfg, seed=0))
    sd, rng = copy.deepcopy(a.state_dict()), torch.get_rng_state()
    for i in (1, 2):
        a.train_step(_batch(cfg, seed=i))
    b = build_framework(cfg)
    b.load_state_dict(sd)
    torch.set_rng_state(rng)
    for i in (1, 2):
        b.train_step(_batch(cfg, seed=i))
    for k in a.networks():
        for (n, p), q in zip(a.networks()[k].state_dict().items(), b.networks()[k].state_dict().values()):
            assert torch.equal(p, q), f"{k}.{n} differs after resume"


@pytest.mark.parametrize("task", ["synth", "labels2ct"])
def test_train_end_to_end_resume_and_load_model(tiny_shards, tmp_path, task):
    c = apply_overrides(preset("tiny", "dcgan", task=task), {"checkpoint_every": 2, "log_every": 2})
    part = train(c, tiny_shards, tmp_path / "r", max_steps=4, progress=False)
    assert part.steps == 4 and not part.model_path.exists()
    res = train(c, tiny_shards, tmp_path / "r", progress=False)  # resumes from checkpoint.pt
    assert res.steps == c.total_steps and res.model_path.exists()
    assert {"G", "D", "G_GAN"} <= set(res.last)
    assert all(math.isfinite(v) for k, v in res.last.items() if k != "val_mae")
    if task == "synth":  # no per-image target: W1 distance of intensities to val slices, in HU
        assert 0 < res.val_mae < 4024
    else:
        assert 0 < res.val_mae < 3000  # HU
    fw = load_model(res.model_path)
    assert not any(net.training for net in fw.networks().values())
    x = torch.zeros(2, 0, 32, 32) if task == "synth" else _labels(2)
    y = fw.generate(x, torch.Generator().manual_seed(0))
    assert y.shape == (2, 1, 32, 32) and torch.isfinite(y).all() and y.abs().max() <= 1
    assert torch.equal(y, fw.generate(x, torch.Generator().manual_seed(0)))
