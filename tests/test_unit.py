"""UNIT: coupled VAEs with shared latent layers, multi-scale LSGAN discriminators."""

import copy
import doctest
import json
import math

import pytest
import torch

from gan_core.presets import apply_overrides, preset
from gan_core.frameworks import available, build_framework, get_framework
from gan_core.frameworks import unit as unit_mod
from gan_core.models import MultiScaleDiscriminator, ResnetBlock
from gan_core.models import vae as vae_mod
from gan_core.models.vae import SharedLatentVAE, latent_kl
from gan_core.engine import load_model, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TERMS = ("G_GAN_A", "G_GAN_B", "recon_A", "recon_B", "kl_A", "kl_B", "cycle_A", "cycle_B",
         "cycle_kl_A", "cycle_kl_B")


def _batch(n=2, size=32, dims=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (n, 1, *(size,) * dims)
    return {"A": torch.rand(*shape, generator=g) * 2 - 1, "B": torch.rand(*shape, generator=g) * 2 - 1,
            "mask": torch.ones(*shape)}


def _parts(vae):
    return {"E_A.private": vae.E_A.private, "E_B.private": vae.E_B.private,
            "shared_encoder": vae.shared_encoder, "shared_decoder": vae.shared_decoder,
            "G_A.private": vae.G_A.private, "G_B.private": vae.G_B.private}


def test_registry_finds_unit():
    assert "unit" in available()
    cls = get_framework("unit")
    assert cls is unit_mod.UNIT and cls.name == "unit" and not cls.paired
    assert set(cls.search_space) == {"loss.gan", "fw.recon", "fw.kl", "loss.cycle", "fw.cycle_kl"}


def test_train_steps_finite_and_every_vae_part_gets_gradients():
    torch.manual_seed(0)
    fw = build_framework(preset("tiny", "unit"))
    before = {k: [p.detach().clone() for p in v.parameters()] for k, v in fw.networks().items()}
    for step in range(2):
        losses = fw.train_step(_batch(seed=step))
    assert set(TERMS) | {"G", "D", "D_A", "D_B"} <= set(losses)
    assert all(v.dim() == 0 and not v.requires_grad and math.isfinite(v) for v in losses.values())
    assert float(losses["G"]) == pytest.approx(sum(float(losses[k]) for k in TERMS), rel=1e-5)
    # the generator update is the last one: its gradients reach every private and shared part
    for name, part in _parts(fw.vae).items():
        grads = [p.grad for p in part.parameters()]
        assert grads and all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert all(g.abs().sum() > 0 for g in grads), f"{name}: a parameter got a zero gradient"
    for k, net in fw.networks().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[k], net.parameters())), f"{k} did not update"


def test_shared_layers_are_one_module_and_reach_adam_once():
    fw = build_framework(preset("tiny", "unit"))
    vae = fw.vae
    assert vae.E_A.shared is vae.E_B.shared and vae.G_A.shared is vae.G_B.shared
    assert vae.E_A.private is not vae.E_B.private and vae.shared_encoder is not vae.shared_decoder
    # UNIT's split of model.n_blocks: all but one private, one shared, on each side
    n_blocks = fw.cfg.model.n_blocks
    for enc_or_dec in (vae.E_A, vae.E_B, vae.G_A, vae.G_B):
        assert sum(isinstance(m, ResnetBlock) for m in enc_or_dec.private.modules()) == n_blocks - 1
        assert sum(isinstance(m, ResnetBlock) for m in enc_or_dec.shared.modules()) == 1
    unique = {id(p) for p in vae.parameters()}
    opt_params = fw.opts["G"].param_groups[0]["params"]
    assert len(opt_params) == len({id(p) for p in opt_params}) == len(unique)
    every = [p for m in (vae.E_A, vae.E_B, vae.G_A, vae.G_B) for p in m.parameters()]
    assert len(every) > len(unique)  # the shared layers would be counted twice without sharing
    shared_ids = [id(p) for p in vae.shared_encoder.parameters()]
    assert all(sum(id(p) == i for p in opt_params) == 1 for i in shared_ids)
    assert all(isinstance(fw.nets[k], MultiScaleDiscriminator) for k in ("D_A", "D_B"))
    assert len(fw.nets["D_A"].discriminators) == 2  # 2-layer PatchGANs on 32 px: two scales fit


def test_kl_term_is_mean_squared_latent_and_zero_for_zero_latents():
    assert float(latent_kl(torch.zeros(2, 8, 4, 4))) == 0.0
    mu = torch.randn(2, 8, 4, 4)
    assert float(latent_kl(mu)) == pytest.approx(float((mu**2).mean()))
    cfg = apply_overrides(preset("tiny", "unit"), {"fw.kl": 0.5})
    fw = build_framework(cfg)
    b = _batch()
    with torch.no_grad():  # encoders are not stochastic: the mean is what the step sees
        expect = 0.5 * float((fw.vae.E_A(b["A"]) ** 2).mean())
    out = fw.train_step(b)
    assert float(out["kl_A"]) == pytest.approx(expect, rel=1e-4) and expect > 0
    # zero encoders -> zero latent means -> every KL term is exactly 0
    fw = build_framework(cfg)
    with torch.no_grad():
        for enc in (fw.vae.E_A, fw.vae.E_B):
            for p in enc.parameters():
                p.zero_()
    out = fw.train_step(b)
    assert all(float(out[k]) == 0.0 for k in ("kl_A", "kl_B", "cycle_kl_A", "cycle_kl_B"))
    assert float(out["recon_A"]) > 0


def test_optional_table5_terms_join_the_generator_loss():
    fw = build_framework(apply_overrides(preset("tiny", "unit"), {"loss.gradient": 2.0}))
    out = fw.train_step(_batch())
    extra = [k for k in out if k.endswith("_gradient")]
    assert sorted(extra) == ["cycle_A_gradient", "cycle_B_gradient"]
    assert all(float(out[k]) > 0 for k in extra)
    assert float(out["G"]) == pytest.approx(sum(float(out[k]) for k in (*TERMS, *extra)), rel=1e-5)


def test_generate_is_deterministic_any_size_and_in_range():
    fw = build_framework(preset("tiny", "unit"))
    fw.train(True)
    x = torch.rand(3, 1, 30, 34) * 2 - 1   # not a multiple of 2**n_downsampling: padded, cropped
    y, y2, inv = fw.generate(x), fw.generate(x), fw.generate_inverse(x)
    assert y.shape == inv.shape == x.shape and y.dtype == torch.float32
    assert torch.equal(y, y2) and y.abs().max() <= 1 and not torch.equal(y, inv)
    assert fw.vae.training  # mode restored
    # latent mean, no noise: G_B(E_A(x)) in eval mode on a size the VAE takes as is
    x32 = torch.rand(2, 1, 32, 32) * 2 - 1
    fw.vae.eval()
    with torch.no_grad():
        ref = fw.vae.G_B(fw.vae.E_A(x32))
    assert torch.allclose(fw.generate(x32), ref, atol=1e-6)


def test_train_end_to_end_resume_and_load_model(tiny_shards, tmp_path):
    cfg = apply_overrides(preset("tiny", "unit"), {"checkpoint_every": 2, "log_every": 2})
    full = train(cfg, tiny_shards, tmp_path / "full", progress=False)
    assert full.model_path.exists() and full.val_mae is not None and 0 < full.val_mae < 3000
    assert all(math.isfinite(full.last[k]) for k in (*TERMS, "G", "D"))
    train(cfg, tiny_shards, tmp_path / "part", max_steps=4, progress=False)
    rest = train(cfg, tiny_shards, tmp_path / "part", progress=False)  # resumes from checkpoint.pt
    a, b = load_model(full.model_path), load_model(rest.model_path)
    for k in a.networks():
        for (n, p), q in zip(a.networks()[k].named_parameters(), b.networks()[k].parameters()):
            assert torch.equal(p, q), f"{k}.{n} differs after resume"
    c = load_model(tmp_path / "full" / "checkpoint.pt")
    assert c.vae.E_A.shared is c.vae.E_B.shared  # sharing survives the round trip
    x = torch.rand(2, 1, 40, 40) * 2 - 1
    assert torch.equal(a.generate(x), c.generate(x)) and torch.equal(a.generate(x), b.generate(x))


def test_3d_train_step_and_generate():
    cfg = apply_overrides(preset("tiny", "unit"), {"model.spatial_dims": 3, "data.patch_depth": 8,
                                                   "data.image_size": 16, "model.d_layers": 1})
    fw = build_framework(cfg)
    out = fw.train_step(_batch(n=1, size=8, dims=3))
    assert all(math.isfinite(v) for v in out.values())
    y = fw.generate(torch.rand(1, 1, 6, 10, 12) * 2 - 1)
    assert y.shape == (1, 1, 6, 10, 12) and y.abs().max() <= 1


def test_multichannel_domain_a_label_maps():
    cfg = preset("tiny", "unit", task="labels2ct")
    c = cfg.model.in_channels
    assert c > 1
    fw = build_framework(cfg)
    b = _batch()
    b["A"] = torch.rand(2, c, 32, 32) * 2 - 1
    assert all(math.isfinite(v) for v in fw.train_step(b).values())
    assert fw.generate(b["A"]).shape == (2, 1, 32, 32)
    assert fw.generate_inverse(b["B"]).shape == (2, c, 32, 32)


def test_full_preset_is_the_published_recipe():
    cfg = preset("full", "unit")
    m, o = cfg.model, cfg.optim
    assert (cfg.gan_mode, cfg.data.batch_size) == ("lsgan", 1)
    assert (cfg.fw.recon, cfg.fw.kl, cfg.fw.cycle_kl) == (10.0, 0.01, 0.01)
    assert not hasattr(cfg.fw, "pool_size")  # UNIT uses no image pool
    assert (o.lr, o.beta1, o.beta2) == (1e-4, 0.5, 0.999)
    assert (m.norm, m.discriminator, m.g_filters, m.d_filters, m.n_downsampling, m.n_blocks) == (
        "instance", "multiscale", 64, 64, 2, 4)
    fw = unit_mod.UNIT(cfg)
    assert fw.num_scales() == 3 and len(fw.nets["D_B"].discriminators) == 3


def test_clear_errors():
    with pytest.raises(ValueError, match="model.in_channels"):
        build_framework(preset("tiny", "unit", task="synth"))
    with pytest.raises(ValueError, match="model.n_blocks"):
        build_framework(apply_overrides(preset("tiny", "unit"), {"model.n_blocks": 0}))
    with pytest.raises(ValueError, match="d_layers"):
        build_framework(apply_overrides(preset("tiny", "unit"), {"data.image_size": 4}))
    with pytest.raises(ValueError, match="domain"):
        SharedLatentVAE(base_filters=2, n_private=0).encode(torch.zeros(1, 1, 8, 8), "C")


@pytest.mark.parametrize("module", [vae_mod, unit_mod])
def test_docstring_examples_run(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


# -- the unpaired benchmark's terms (docs/results.md, "UNIT on the unpaired benchmark") ------------
STATS = json.dumps({"labels": [0, 1, 2], "mean": [-1.0, -0.45, 0.1], "sd": [0.01, 0.01, 0.09],
                    "prior": [0.6, 0.3, 0.1]})


def _labelled_batch(n=2, size=32, seed=0):
    b = _batch(n, size, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    b["labels"] = torch.randint(0, 3, (n, 1, size, size), generator=g)
    return b


def _replay(fw, b):
    """The generator pass of ``fw.train_step(b)`` redone on a copy of the VAE from before the
    step with the same latent noise (the step's D phase draws two translations first)."""
    vae = copy.deepcopy(fw.vae)
    noise = torch.Generator().manual_seed(0)
    noise.set_state(fw.noise.get_state())
    with torch.no_grad():
        vae.translate(b["A"], "A", "B", noise)
        vae.translate(b["B"], "B", "A", noise)
        return vae(b["A"], b["B"], generator=noise)


def test_structure_preset_terms_judge_each_translation_against_its_own_source():
    cfg = preset("structure", "unit")
    assert (cfg.loss.mind, cfg.loss.shape_consistency) == (2.0, 1.0)
    assert (cfg.data.image_size, cfg.model.g_filters, cfg.model.d_norm) == (64, 16, "instance")
    # the same terms on the tiny nets: MIND(x_ab, x_a), MIND(x_ba, x_b) and the correlation ratio
    # of x_ab over the A slice's labels; no shape term on the B side (its labels are not given)
    fw = build_framework(apply_overrides(preset("tiny", "unit"),
                                         {"loss.mind": 2.0, "loss.shape_consistency": 1.0}))
    b = _labelled_batch()
    out = _replay(fw, b)
    losses = fw.train_step(b)
    extra = sorted(k for k in losses if k.startswith("cycle_") and k not in TERMS)
    assert extra == ["cycle_A_mind", "cycle_A_shape_consistency", "cycle_B_mind"]
    mind, shape = fw.extra_terms.built["mind"][1], fw.extra_terms.built["shape_consistency"][1]
    assert float(losses["cycle_A_mind"]) == pytest.approx(2 * float(mind(out["x_ab"], b["A"])), rel=1e-4)
    assert float(losses["cycle_B_mind"]) == pytest.approx(2 * float(mind(out["x_ba"], b["B"])), rel=1e-4)
    assert float(losses["cycle_A_shape_consistency"]) == pytest.approx(
        float(shape(out["x_ab"], b["labels"])), rel=1e-4)
    assert float(losses["cycle_A_mind"]) > 0


def test_segment_consistency_classifies_the_synthetic_ct_only(tmp_path, tiny_shards):
    with pytest.raises(ValueError, match="fw.segment_stats"):
        build_framework(apply_overrides(preset("tiny", "unit"), {"loss.segment_consistency": 1.0}))
    cfg = apply_overrides(preset("tiny", "unit"), {"loss.segment_consistency": 0.5,
                                                   "fw.segment_stats": STATS})
    fw = build_framework(cfg)
    b = _labelled_batch()
    out = _replay(fw, b)
    losses = fw.train_step(b)
    # the CT segmentor judges G_B(E_A(mr)) against the MR's labels; the synthetic MR x_ba is not
    # CT, and the batch's labels are not its labels: no B-side term
    assert [k for k in losses if "segment" in k] == ["cycle_A_segment_consistency"]
    seg = fw.extra_terms.built["segment_consistency"][1]
    expect = 0.5 * float(seg(out["x_ab"], b["labels"]))
    assert float(losses["cycle_A_segment_consistency"]) == pytest.approx(expect, rel=1e-4) and expect > 0
    # the statistics travel in the checkpoint, so a loaded model rebuilds its segmentor
    res = train(apply_overrides(cfg, {"data.batch_size": 2}), tiny_shards, tmp_path / "seg",
                progress=False)
    assert load_model(res.model_path).cfg.fw.segment_stats == STATS


def test_cycle_weights_per_direction():
    cfg = apply_overrides(preset("tiny", "unit"), {"fw.cycle_a": 0.0, "fw.cycle_b": 0.5})
    fw = build_framework(cfg)
    b = _batch()
    out = _replay(fw, b)
    losses = fw.train_step(b)
    assert float(losses["cycle_A"]) == 0.0
    expect = 0.5 * 10.0 * float(torch.nn.functional.l1_loss(out["x_bab"], b["B"]))
    assert float(losses["cycle_B"]) == pytest.approx(expect, rel=1e-4) and expect > 0
