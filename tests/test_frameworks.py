import math

import pytest
import torch

from gan_core.presets import apply_overrides, preset
from gan_core.frameworks import Framework, ImagePool, available, build_framework, get_framework


def _batch(n=2, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"A": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
            "B": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
            "mask": torch.ones(n, 1, size, size),
            "labels": torch.randint(0, 4, (n, 1, size, size), generator=g)}


def test_registry_finds_frameworks_by_name():
    assert {"pix2pix", "cyclegan"} <= set(available())
    assert get_framework("pix2pix").paired and not get_framework("cyclegan").paired
    with pytest.raises(KeyError, match="available"):
        get_framework("stylegan9")


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan"])
@pytest.mark.parametrize("gan_mode", ["vanilla", "lsgan", "hinge", "wgangp"])
def test_train_step_losses_finite_and_weights_move(name, gan_mode):
    cfg = apply_overrides(preset("tiny", name), {"gan_mode": gan_mode})
    fw = build_framework(cfg)
    assert isinstance(fw, Framework)
    before = {k: [p.detach().clone() for p in v.parameters()] for k, v in fw.networks().items()}
    losses = fw.train_step(_batch())
    assert losses and all(math.isfinite(v) for v in losses.values())
    for k, net in fw.networks().items():
        moved = any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters()))
        assert moved, f"{name}/{gan_mode}: {k} did not update"


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan"])
def test_generator_gets_gradients_from_every_term(name):
    cfg = preset("tiny", name)
    fw = build_framework(cfg)
    fw.train_step(_batch())
    gnames = [k for k in fw.networks() if k.startswith("G")]
    for k in gnames:
        grads = [p.grad for p in fw.networks()[k].parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), k


def test_pix2pix_weights_change_the_objective():
    torch.manual_seed(0)
    a = build_framework(apply_overrides(preset("tiny", "pix2pix"), {"loss.image": 100}))
    torch.manual_seed(0)
    b = build_framework(apply_overrides(preset("tiny", "pix2pix"), {"loss.image": 1}))
    la, lb = a.train_step(_batch()), b.train_step(_batch())
    la, lb = {k: float(v) for k, v in la.items()}, {k: float(v) for k, v in lb.items()}
    assert la["G_L1"] == pytest.approx(lb["G_L1"] * 100, rel=1e-4)


def test_cyclegan_identity_off_is_zero():
    fw = build_framework(apply_overrides(preset("tiny", "cyclegan"), {"fw.identity": 0}))
    out = fw.train_step(_batch())
    assert out["idt_A"] == 0 and out["idt_B"] == 0


def test_generate_keeps_shape_and_range():
    fw = build_framework(preset("tiny", "cyclegan"))
    y = fw.generate(torch.zeros(3, 1, 32, 32))
    assert y.shape == (3, 1, 32, 32) and y.abs().max() <= 1


def test_state_dict_roundtrip_is_exact():
    cfg = preset("tiny", "cyclegan")
    a = build_framework(cfg)
    a.train_step(_batch())
    b = build_framework(cfg)
    b.load_state_dict(a.state_dict())
    for k in a.networks():
        for p, q in zip(a.networks()[k].parameters(), b.networks()[k].parameters()):
            assert torch.equal(p, q)
    assert len(b.pool_A.images) == len(a.pool_A.images) == 2
    with pytest.raises(ValueError, match="framework"):
        build_framework(preset("tiny", "pix2pix")).load_state_dict(a.state_dict())


def test_image_pool_behaviour():
    pool = ImagePool(size=3, seed=0)
    x = torch.arange(3.0).view(3, 1, 1, 1)
    assert torch.equal(pool.query(x), x)          # filling: returns its input
    outs = torch.cat([pool.query(torch.full((1, 1, 1, 1), 10.0 + i)) for i in range(40)])
    assert (outs < 10).any() and (outs >= 10).any()  # some swapped for history, some passed through
    assert ImagePool(0).query(x) is x
    sd = pool.state_dict()
    other = ImagePool(3, seed=99)
    other.load_state_dict(sd)
    y = torch.full((1, 1, 1, 1), 99.0)
    assert torch.equal(pool.query(y), other.query(y))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step()`")
def test_lr_schedule_constant_then_linear_decay():
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"optim.steps_constant": 2, "optim.steps_decay": 3})
    fw = build_framework(cfg)
    lrs = []
    for _ in range(5):
        lrs.append(fw.lr())
        fw.step_schedulers()
    lrs.append(fw.lr())
    lr0 = cfg.optim.lr
    assert lrs[:3] == [lr0] * 3
    assert lrs[3] == pytest.approx(lr0 * 3 / 4) and lrs[5] == pytest.approx(lr0 / 4)


def test_bf16_autocast_path_runs():
    fw = build_framework(apply_overrides(preset("tiny", "pix2pix"), {"amp": "bf16"}))
    assert fw.amp_dtype == torch.bfloat16
    out = fw.train_step(_batch())
    assert all(math.isfinite(v) for v in out.values())


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan", "unit"])
@pytest.mark.parametrize("term", ["gradient", "sharpness", "structure", "frequency", "regulation",
                                  "shape", "perceptual", "style", "self_reg", "mind",
                                  "gradient_consistency", "shape_consistency"])
def test_table5_terms_are_weighted_into_the_generator_loss(name, term):
    torch.manual_seed(0)
    off = build_framework(preset("tiny", name)).train_step(_batch())
    torch.manual_seed(0)
    fw = build_framework(apply_overrides(preset("tiny", name), {f"loss.{term}": 2.0}))
    on = fw.train_step(_batch())
    keys = [k for k in on if k.endswith(term)]
    assert keys and all(math.isfinite(float(on[k])) and float(on[k]) > 0 for k in keys)
    assert float(on["G"]) == pytest.approx(float(off["G"]) + sum(float(on[k]) for k in keys), rel=1e-4)
    g = [p.grad for k, net in fw.networks().items() if not k.startswith("D") for p in net.parameters()]
    assert any(x is not None and x.abs().sum() > 0 for x in g)


def test_terms_only_gradient_reaches_generator_without_gan_or_l1():
    """Each extra term alone (adversarial and L1 off) still trains the generator."""
    from gan_core.losses import TERMS, optional_terms

    for term in optional_terms():
        if TERMS[term].needs_stats:  # needs a CT domain's stats (CycleGAN's
            continue                 # fw.segment_stats): tests/test_unpaired.py
        cfg = apply_overrides(preset("tiny", "pix2pix"), {"loss.gan": 0.0, "loss.image": 0.0,
                                                          f"loss.{term}": 1.0})
        fw = build_framework(cfg)
        fw.train_step(_batch())
        g = [p.grad for p in fw.networks()["G"].parameters()]
        assert any(x is not None and x.abs().sum() > 0 for x in g), term


def test_perceptual_from_a_local_encoder_file_and_clear_errors(tmp_path):
    from gan_core.losses import ConvEncoder

    enc = ConvEncoder()
    path = tmp_path / "enc.pt"
    torch.save(enc.state_dict(), path)
    cfg = apply_overrides(preset("tiny", "pix2pix"), {"loss.perceptual": 1.0,
                                                      "model.feature_encoder": str(path)})
    fw = build_framework(cfg)
    assert fw.extra_terms.encoder is not None
    assert not any(p.requires_grad for p in fw.extra_terms.encoder.parameters())
    assert math.isfinite(float(fw.train_step(_batch())["G_perceptual"]))
    with pytest.raises(FileNotFoundError, match="weights_path"):
        build_framework(apply_overrides(cfg, {"model.feature_encoder": str(tmp_path / "none.pt")}))
    no_labels = {k: v for k, v in _batch().items() if k != "labels"}
    fw = build_framework(apply_overrides(preset("tiny", "pix2pix"), {"loss.shape": 1.0}))
    with pytest.raises(ValueError, match="labels"):
        fw.train_step(no_labels)


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan", "unit"])
def test_conditional_frameworks_refuse_to_sample(name):
    fw = build_framework(preset("tiny", name))
    assert isinstance(fw, Framework)
    with pytest.raises(ValueError, match=rf"{name}\.sample: .*conditional.*dcgan or lapgan"):
        fw.sample(2)


@pytest.mark.parametrize("name", ["dcgan", "lapgan"])
def test_unconditional_frameworks_sample_through_the_protocol(name):
    fw = build_framework(preset("tiny", name, "synth"))
    assert isinstance(fw, Framework)
    a = fw.sample(2, generator=torch.Generator().manual_seed(3))
    assert a.shape[:2] == (2, 1) and torch.equal(a, fw.sample(2, generator=torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("name", ["pix2pix", "cyclegan", "unit"])
def test_discriminator_norm_is_its_own_setting(name):
    """model.d_norm, not the generator's model.norm, normalises the discriminators (the demo
    presets' norm 'none' once stripped CycleGAN's discriminator of its instance norm)."""
    from torch import nn

    def norms(net):
        return [m for m in net.modules() if isinstance(m, (nn.InstanceNorm2d, nn.BatchNorm2d))]

    cfg = apply_overrides(preset("tiny", name), {"model.norm": "none"})
    assert cfg.model.d_norm == "instance"
    fw = build_framework(cfg)
    discs = [v for k, v in fw.networks().items() if k.startswith("D")]
    assert discs and all(norms(d) for d in discs)
    fw = build_framework(apply_overrides(cfg, {"model.d_norm": "none"}))
    assert not any(norms(v) for k, v in fw.networks().items() if k.startswith("D"))
    assert preset("full", "pix2pix").model.d_norm == "batch"


def test_cyclegan_asymmetric_cycle_weights():
    torch.manual_seed(0)
    fw = build_framework(apply_overrides(preset("tiny", "cyclegan"), {"fw.cycle_a": 0.0}))
    out = fw.train_step(_batch())
    assert float(out["cycle_A"]) == 0.0 and float(out["cycle_B"]) > 0


def test_structure_preset_is_for_unpaired_frameworks():
    from gan_core.presets import STRUCTURE_LOSS

    for name in ("cyclegan", "unit"):
        cfg = preset("structure", name)
        assert all(getattr(cfg.loss, k) == v for k, v in STRUCTURE_LOSS.items())
        out = build_framework(apply_overrides(cfg, {"data.image_size": 32})).train_step(_batch())
        assert all(math.isfinite(float(v)) for v in out.values())
        assert any(k.endswith(tuple(STRUCTURE_LOSS)) for k in out)
    assert preset("demo", "cyclegan").loss.mind == 0.0   # the published objective unchanged
    with pytest.raises(ValueError, match="unpaired"):
        preset("structure", "pix2pix")
