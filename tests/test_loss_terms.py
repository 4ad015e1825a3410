"""Tests for gan_core.losses: every Table 5 term on tiny 2D and 3D tensors, no network, and the
one table of them (``TERMS``) that the config, the frameworks and Ray Tune read."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from gan_core import losses as lt
from gan_core.config import LossWeights
from gan_core.frameworks.base import GeneratorTerms
from gan_core.losses import adversarial

SHAPES = {"2d": (2, 1, 16, 16), "3d": (1, 1, 8, 8, 8)}
#: a 3-tissue target-domain segmentor (labels 0..2 as ``_labels``), values in [-1, 1]
STATS = lt.TissueStats(labels=(0, 1, 2), mean=(-0.9, 0.0, 0.6), sd=(0.05, 0.1, 0.2),
                       prior=(0.5, 0.3, 0.2))


def _pair(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(shape, generator=g) * 2 - 1
    p = (t + 0.3 * torch.randn(shape, generator=g)).clamp(-1, 1)
    return p, t


def _labels(shape: tuple[int, ...]) -> torch.Tensor:
    lab = torch.zeros((shape[0], *shape[2:]), dtype=torch.long)
    lab[..., : shape[-1] // 3] = 1
    lab[..., 2 * shape[-1] // 3:] = 2
    return lab


def _encoder(nd: int) -> nn.Module:
    torch.manual_seed(0)
    return lt.ConvEncoder(nd, 1, (4, 6))


def _make(name: str, nd: int) -> tuple[nn.Module, dict]:
    """(term, extra forward kwargs)."""
    if name in ("perceptual", "style"):
        return lt.TERMS[name].factory(_encoder(nd)), {}
    return lt.TERMS[name].factory(), {}


PAIRED = ["image", "cycle", "gradient", "sharpness", "perceptual", "structure", "style",
          "self_reg", "frequency", "regulation"]


def _check_scalar_grad(loss: torch.Tensor, pred: torch.Tensor) -> None:
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()
    assert pred.grad.abs().sum() > 0


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("name", PAIRED)
def test_term_zero_positive_and_grad(name: str, dim: str) -> None:
    shape = SHAPES[dim]
    term, kw = _make(name, len(shape) - 2)
    p, t = _pair(shape)
    same = term(t.clone(), t, **kw)
    assert same.dim() == 0 and torch.isfinite(same)
    assert abs(float(same)) < 1e-5, f"{name} not ~0 on identical inputs: {float(same)}"
    pred = p.clone().requires_grad_(True)
    loss = term(pred, t, **kw)
    assert loss.item() > 1e-4, f"{name} not positive on different inputs"
    _check_scalar_grad(loss, pred)
    # identical input still gives a finite gradient (no sqrt/abs NaN at 0)
    pz = t.clone().requires_grad_(True)
    term(pz, t, **kw).backward()
    assert torch.isfinite(pz.grad).all()


def test_terms_table_matches_weights() -> None:
    assert set(lt.TERMS) == {f.name for f in dataclasses.fields(LossWeights)}
    assert [t.row for t in lt.TERMS.values()] == [f"L{i}" for i in range(1, 13)] + ["L8", "L4", "L6",
                                                                                    "L6", "L6"]
    assert [n for n, t in lt.TERMS.items() if t.needs_stats] == ["segment_consistency",
                                                                  "tissue_value"]
    assert all(name == t.name for name, t in lt.TERMS.items())
    assert lt.TERMS["gan"].factory is adversarial.GANLoss          # re-export, not a copy
    assert lt.gradient_penalty is adversarial.gradient_penalty
    # the frameworks' own objective applies gan/image/cycle; the optional terms start off
    defaults = LossWeights()
    assert [n for n, t in lt.TERMS.items() if not t.optional] == ["gan", "image", "cycle"]
    assert all(getattr(defaults, n) == 0.0 for n in lt.optional_terms())
    assert lt.optional_terms("pair") == ["gradient", "sharpness", "structure", "frequency",
                                         "regulation"]
    for t in lt.TERMS.values():
        kind, lo, hi = t.search
        assert kind in ("uniform", "loguniform") and lo < hi and (kind == "uniform" or lo > 0)
    with pytest.raises(ValueError, match="kind"):
        lt.LossTerm("x", "L0", "nonsense", lt.ImageLoss, ("uniform", 0.0, 1.0))
    with pytest.raises(ValueError, match="kind"):
        lt.optional_terms("nonsense")


@pytest.mark.parametrize("name", lt.optional_terms())
def test_generator_terms_add_each_optional_term_by_its_kind(name: str) -> None:
    shape = SHAPES["2d"]
    p, t = _pair(shape)
    enc = _encoder(2)
    terms = GeneratorTerms(LossWeights(**{name: 2.0}), segment_stats=STATS)
    assert terms and not GeneratorTerms(LossWeights())
    out = terms(p, t, source=t, labels=_labels(shape), features=enc, prefix="G_")
    assert list(out) == [f"G_{name}"]
    kind = lt.TERMS[name].kind
    if kind == "pair":
        expect = lt.TERMS[name].factory()(p, t)
    elif kind == "label":
        expect = lt.ShapeLoss("mean")(p, t, _labels(shape))
    elif kind == "feature":
        expect = lt.TERMS[name].factory(enc, freeze=False)(p, t)
    elif lt.TERMS[name].needs_stats:  # the target domain's tissue stats vs the input's labels
        expect = lt.TERMS[name].factory(STATS)(p, _labels(shape))
    elif kind == "source_label":  # the output against its input's tissue labels
        expect = lt.TERMS[name].factory()(p, _labels(shape))
    else:  # source: the output against its own input
        expect = lt.TERMS[name].factory()(p, t)
    assert torch.allclose(out[f"G_{name}"], 2.0 * expect)
    assert not terms(p, t, source=t, labels=_labels(shape), features=enc, skip=(name,)) \
        or kind in ("pair", "feature")  # skip applies to the label and source terms


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_adversarial_reexport_works(dim: str) -> None:
    crit = lt.GANLoss("lsgan")
    pred = torch.zeros(SHAPES[dim]).requires_grad_(True)
    loss = crit(pred, target_is_real=True)
    assert math.isclose(loss.item(), 1.0)
    _check_scalar_grad(loss, pred)


def test_image_l1_l2_values() -> None:
    p, t = torch.full((1, 1, 4, 4), 0.5), torch.zeros(1, 1, 4, 4)
    assert math.isclose(float(lt.ImageLoss("l1")(p, t)), 0.5)
    assert math.isclose(float(lt.ImageLoss("l2")(p, t)), 0.25)
    with pytest.raises(ValueError, match="kind"):
        lt.ImageLoss("l3")
    with pytest.raises(ValueError, match="shapes differ"):
        lt.ImageLoss()(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        lt.ImageLoss()(torch.zeros(4, 4), torch.zeros(4, 4))


def test_cycle_function() -> None:
    rec = torch.zeros(1, 1, 4, 4, requires_grad=True)
    loss = lt.cycle_loss(rec, torch.ones(1, 1, 4, 4))
    assert math.isclose(loss.item(), 1.0)
    _check_scalar_grad(loss, rec)


def test_gradient_ignores_offset_but_sees_edges() -> None:
    t = torch.zeros(1, 1, 8, 8)
    t[..., 4:] = 1.0
    g = lt.GradientLoss()
    assert float(g(t + 0.5, t)) < 1e-7                       # constant offset: same gradients
    assert float(g(torch.zeros_like(t), t)) > 0              # the edge is gone
    # a 3D edge along depth only is seen (every spatial axis is used)
    v = torch.zeros(1, 1, 6, 6, 6)
    v[:, :, 3:] = 1.0
    assert float(g(torch.zeros_like(v), v)) > 0


def test_sharpness_weights_low_contrast_more() -> None:
    t = torch.zeros(1, 1, 16, 16)
    t[..., :, 8:] = torch.linspace(-1, 1, 8).repeat(16, 1) * ((-1) ** torch.arange(16))[:, None]
    s = lt.SharpnessLoss(beta=4.0)
    w = s.weight_map(t)
    assert w.shape == t.shape
    assert float(w[..., 2:14, :3].mean()) > float(w[..., 2:14, 12:].mean())   # flat > textured
    assert float(w.min()) >= 1.0 - 1e-6 and float(w.max()) <= 5.0 + 1e-6
    err = torch.zeros_like(t)
    flat_err, tex_err = err.clone(), err.clone()
    flat_err[..., 6:10, 1:3] = 0.2
    tex_err[..., 6:10, 12:14] = 0.2
    assert float(s(t + flat_err, t)) > float(s(t + tex_err, t))
    assert math.isclose(float(lt.SharpnessLoss(beta=0.0)(t + flat_err, t)),
                        float(lt.ImageLoss()(t + flat_err, t)), rel_tol=1e-5)


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("mode", ["mean", "dice"])
def test_shape_loss(dim: str, mode: str) -> None:
    shape = SHAPES[dim]
    lab = _labels(shape)
    means = torch.tensor([-0.8, 0.0, 0.7])
    t = means[lab].unsqueeze(1)                               # piecewise-constant tissues
    term = lt.ShapeLoss(mode=mode)
    same = float(term(t.clone(), t, lab))
    pred = (t + 0.4).requires_grad_(True)                     # shifts every tissue mean
    loss = term(pred, t, lab.unsqueeze(1))                    # (N, 1, *sp) labels accepted too
    assert loss.item() > same + 1e-3
    if mode == "mean":
        assert same < 1e-6
        assert math.isclose(loss.item(), 0.4, rel_tol=1e-5)
    else:
        assert same < 1e-3                                    # minimum: every voxel at its mean
    _check_scalar_grad(loss, pred)


def test_shape_loss_bad_labels() -> None:
    t = torch.zeros(1, 1, 4, 4)
    with pytest.raises(TypeError, match="labels"):
        lt.ShapeLoss()(t, t, torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="labels: expected shape"):
        lt.ShapeLoss()(t, t, torch.zeros(1, 5, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        lt.ShapeLoss(num_classes=1)(t, t, torch.ones(1, 4, 4, dtype=torch.long))


def test_perceptual_loads_local_weights(tmp_path) -> None:
    enc = _encoder(2)
    path = tmp_path / "enc.pt"
    torch.save(enc.state_dict(), path)
    fresh = lt.ConvEncoder(2, 1, (4, 6))                      # different random init
    p, t = _pair(SHAPES["2d"])
    before = lt.PerceptualLoss(lt.ConvEncoder(2, 1, (4, 6)), freeze=False)(p, t).item()
    loss_mod = lt.PerceptualLoss(fresh, weights_path=str(path))
    for a, b in zip(fresh.state_dict().values(), enc.state_dict().values()):
        assert torch.equal(a, b)
    assert not any(q.requires_grad for q in fresh.parameters())  # frozen
    loss_mod.train()
    assert not fresh.training                                 # stays in eval
    ref = float(lt.PerceptualLoss(enc)(p, t))
    assert math.isclose(float(loss_mod(p, t)), ref, rel_tol=1e-6)
    assert not math.isclose(before, ref, rel_tol=1e-3)
    pred = p.clone().requires_grad_(True)
    _check_scalar_grad(loss_mod(pred, t), pred)
    with pytest.raises(FileNotFoundError, match="weights_path"):
        lt.PerceptualLoss(lt.ConvEncoder(2, 1, (4, 6)), weights_path=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="does not fit"):
        lt.PerceptualLoss(lt.ConvEncoder(2, 1, (5,)), weights_path=path)


def test_perceptual_with_discriminator_callable_keeps_it_trainable() -> None:
    torch.manual_seed(0)
    disc = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.LeakyReLU(0.2),
                         nn.Conv2d(4, 1, 3, padding=1))

    def feats(x: torch.Tensor) -> list[torch.Tensor]:
        h = disc[1](disc[0](x))
        return [h, disc[2](h)]

    loss_mod = lt.PerceptualLoss(feats, layers=[0])
    assert all(q.requires_grad for q in disc.parameters())
    assert len(list(loss_mod.parameters())) == 0               # not registered in the loss
    p, t = _pair(SHAPES["2d"])
    pred = p.clone().requires_grad_(True)
    _check_scalar_grad(loss_mod(pred, t), pred)
    with pytest.raises(IndexError, match="layers"):
        lt.PerceptualLoss(feats, layers=[5])(p, t)


def test_ssim_identical_is_one_and_ms_ssim() -> None:
    p, t = _pair(SHAPES["2d"])
    assert math.isclose(float(lt.ssim(t, t)), 1.0, abs_tol=1e-6)
    assert float(lt.ssim(p, t)) < 0.99
    assert math.isclose(float(lt.ssim(t[:1].unsqueeze(2).expand(1, 1, 8, 16, 16),
                                      t[:1].unsqueeze(2).expand(1, 1, 8, 16, 16))), 1.0,
                        abs_tol=1e-6)
    # the SSIM of an image with a noisier copy is lower than with a less noisy one
    g = torch.Generator().manual_seed(3)
    n = torch.randn(t.shape, generator=g)
    assert float(lt.ssim(t + 0.05 * n, t)) > float(lt.ssim(t + 0.3 * n, t))
    # MS-SSIM: 48 px with window 3 allows all 5 scales
    big_t = torch.rand(1, 1, 48, 48, generator=g) * 2 - 1
    big_p = (big_t + 0.2 * torch.randn(big_t.shape, generator=g)).requires_grad_(True)
    ms = lt.StructureLoss(multiscale=True, window=3)
    assert float(ms(big_t.clone(), big_t)) < 1e-6
    loss = ms(big_p, big_t)
    assert 0 < loss.item() < 1
    _check_scalar_grad(loss, big_p)
    with pytest.raises(ValueError, match="scale"):
        lt.ms_ssim(p, t)                                      # 16 px, window 11: one scale only


def test_style_content_gram() -> None:
    f = torch.arange(8.0).view(1, 2, 2, 2)
    gm = lt.gram_matrix(f)
    assert gm.shape == (1, 2, 2)
    assert torch.allclose(gm, gm.transpose(1, 2))
    assert math.isclose(float(gm[0, 0, 0]), (0 + 1 + 4 + 9) / 8)
    enc = _encoder(2)
    p, t = _pair(SHAPES["2d"])
    style_only = lt.StyleContentLoss(enc, content_weight=0.0)
    content_only = lt.StyleContentLoss(enc, style_weight=0.0)
    both = lt.StyleContentLoss(enc)
    assert math.isclose(float(both(p, t)), float(style_only(p, t)) + float(content_only(p, t)),
                        rel_tol=1e-5)
    # style is invariant to a spatial permutation of the features; content is not
    flipped = t.flip(-1)
    assert float(lt.StyleContentLoss(lambda x: [x], content_weight=0.0)(flipped, t)) < 1e-6
    assert float(lt.StyleContentLoss(lambda x: [x], style_weight=0.0)(flipped, t)) > 0


def test_self_reg_with_feature_and_channel_mismatch() -> None:
    src = torch.rand(1, 2, 8, 8) * 2 - 1
    gen = torch.zeros(1, 1, 8, 8, requires_grad=True)
    with pytest.raises(ValueError, match="feature"):
        lt.SelfRegLoss()(gen, src)
    mean_c = lt.SelfRegLoss(feature=lambda x: x.mean(dim=1, keepdim=True))
    loss = mean_c(gen, src)
    assert math.isclose(loss.item(), float(src.mean(1).abs().mean()), rel_tol=1e-6)
    _check_scalar_grad(loss, gen)


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_frequency_mask_counts_only_sampled(dim: str) -> None:
    shape = SHAPES[dim]
    nd = len(shape) - 2
    dims = tuple(range(2, 2 + nd))
    _, t = _pair(shape)
    mask = torch.zeros(shape[2:])
    mask[(slice(0, 3),) * nd] = 1.0                          # low frequencies sampled
    k_out = (shape[2] // 2,) * nd                            # an unsampled coefficient
    delta = torch.zeros(shape[2:], dtype=torch.complex64)
    delta[k_out] = 1.0
    bump = torch.fft.ifftn(delta, dim=tuple(range(nd)), norm="ortho").real  # Nyquist: real
    term = lt.FrequencyLoss(mask=mask)
    assert float(term(t + 0.1 * bump, t)) < 1e-6             # change outside the mask: free
    assert float(lt.FrequencyLoss()(t + 0.1 * bump, t)) > 0  # ...but seen without a mask
    pred = (t + 0.1).requires_grad_(True)                     # DC change: sampled
    loss = term(pred, t)
    assert loss.item() > 0
    _check_scalar_grad(loss, pred)
    # value: mean |D| over sampled coefficients
    d = torch.fft.fftn(pred.detach() - t, dim=dims, norm="ortho").abs()
    expected = float((d * mask).sum() / (mask.sum() * shape[0] * shape[1]))
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    # centred mask gives the same result as the equivalent fft-order mask
    centred = torch.fft.fftshift(mask)
    assert math.isclose(lt.FrequencyLoss(mask=centred, centered=True)(pred, t).item(),
                        loss.item(), rel_tol=1e-6)
    # forward mask overrides; l2 is |D|^2
    l2 = lt.FrequencyLoss(kind="l2")(pred, t, mask=mask)
    assert math.isclose(l2.item(),
                        float(((d ** 2) * mask).sum() / (mask.sum() * shape[0] * shape[1])),
                        rel_tol=1e-5)
    with pytest.raises(ValueError, match="broadcast"):
        term(pred, t, mask=torch.ones(3, 3))
    with pytest.raises(ValueError, match="sums to 0"):
        term(pred, t, mask=torch.zeros(shape[2:]))


def test_regulation_sees_row_banding() -> None:
    t = torch.zeros(1, 1, 8, 8)
    band = t.clone()
    band[..., 2, :] = 0.5                                     # one brighter row
    r = lt.RegulationLoss()
    assert float(r(band, t)) > 0
    g = torch.Generator().manual_seed(1)
    perm = t + torch.rand(1, 1, 8, 8, generator=g)
    row_perm = perm[..., torch.randperm(8, generator=g)]  # permute columns: rows keep stats
    rows_only = lt.RegulationLoss(stats=("std",))
    # row std profile is unchanged by a column permutation, column profile changes
    mp, sp = lt.RegulationLoss.profiles(row_perm, 2)
    mt, st = lt.RegulationLoss.profiles(perm, 2)
    assert torch.allclose(sp, st, atol=1e-6) and torch.allclose(mp, mt, atol=1e-6)
    # so the whole loss is the column term alone, halved over the 2 axes
    mpc, spc = lt.RegulationLoss.profiles(row_perm, 3)
    mtc, stc = lt.RegulationLoss.profiles(perm, 3)
    expected = float((spc - stc).abs().mean()) / 2
    assert expected > 0
    assert math.isclose(float(rows_only(row_perm, perm)), expected, rel_tol=1e-5)
    full = float(r(row_perm, perm))
    assert math.isclose(full, expected + float((mpc - mtc).abs().mean()) / 2, rel_tol=1e-5)
    with pytest.raises(ValueError, match="stats"):
        lt.RegulationLoss(stats=("median",))


# ------------------------------------------------------------- unpaired structure consistency
def _anatomy(shape: tuple[int, ...], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A smooth random label map (4 tissues) and a 'T1' image painted from it."""
    g = torch.Generator().manual_seed(seed)
    field = torch.randn(shape, generator=g)
    for _ in range(3):
        field = lt.consistency._box_mean(field, 3)
    q = torch.quantile(field.flatten(), torch.tensor([0.25, 0.5, 0.75]))
    lab = torch.bucketize(field, q)                                    # (N, 1, *sp) in 0..3
    t1 = torch.tensor([-1.0, 0.6, -0.2, 0.9])[lab]                   # T1-like contrast
    return lab, t1


@pytest.mark.parametrize("dim", ["2d", "3d"])
@pytest.mark.parametrize("name", ["mind", "gradient_consistency", "shape_consistency"])
def test_structure_terms_zero_for_same_structure_positive_for_other(name: str, dim: str) -> None:
    """Each source-referenced term is finite and differentiable, ~0 for the same structure (an
    inverted, rescaled source; shape: any flat distinct value per tissue), smaller for a CT
    contrast of the same anatomy than for another anatomy, and clearly > 0 for the latter."""
    shape = SHAPES[dim]
    lab, t1 = _anatomy(shape, 0)
    ct = torch.tensor([-1.0, -0.1, 0.9, 0.0])[lab]                   # CT contrast, same anatomy
    lab2, _ = _anatomy(shape, 1)
    other = torch.tensor([-1.0, -0.1, 0.9, 0.0])[lab2]                # CT of another anatomy
    term = lt.TERMS[name].factory()

    def run(gen: torch.Tensor) -> torch.Tensor:
        return term(gen, lab) if name == "shape_consistency" else term(gen, t1)

    same = run(0.5 - 1.5 * t1)
    pred = other.clone().requires_grad_(True)
    diff = run(pred)
    assert torch.isfinite(same) and float(same) < 1e-4
    assert float(diff.detach()) > 0.05 and float(diff.detach()) > 2 * float(run(ct))
    _check_scalar_grad(diff, pred)
    if name != "shape_consistency":  # no gradient to the source (a constant)
        src = t1.clone().requires_grad_(True)
        term(other.clone().requires_grad_(True), src).backward()
        assert src.grad is None


def test_structure_terms_ignore_contrast_but_see_a_shift() -> None:
    """Contrast inversion costs nothing (T1 bone dark, CT bright); a 3-voxel shift does."""
    lab, t1 = _anatomy((1, 1, 32, 32), 3)
    for term in (lt.MINDLoss(), lt.GradientConsistencyLoss()):
        assert float(term(-t1, t1)) < 1e-4
        assert float(term(torch.roll(t1, 3, dims=-1), t1)) > 0.05
    assert float(lt.ShapeConsistencyLoss()(torch.full_like(t1, 0.3), lab)) == pytest.approx(1.0, abs=1e-3)


def test_structure_terms_bad_input() -> None:
    with pytest.raises(ValueError, match="source shapes differ"):
        lt.MINDLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9))
    with pytest.raises(ValueError, match="window"):
        lt.GradientConsistencyLoss(window=4)
    with pytest.raises(TypeError, match="labels"):
        lt.ShapeConsistencyLoss()(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="tissue labels"):
        GeneratorTerms(LossWeights(shape_consistency=1.0))(torch.zeros(1, 1, 8, 8),
                                                           torch.zeros(1, 1, 8, 8))


# ------------------------------------------------ segment consistency (Zhang et al.'s L6)
#: a CT-like segmentor in HU -> [-1, 1] (CT_MIN -1024, CT_MAX 3000): air, soft, fat, bone, marrow
_HU = {0: (-1000.0, 15.0), 1: (40.0, 15.0), 2: (-100.0, 15.0), 3: (1100.0, 160.0), 4: (300.0, 60.0)}


def _ct_stats() -> lt.TissueStats:
    unit = lambda hu: 2 * (hu + 1024.0) / 4024.0 - 1  # noqa: E731
    return lt.TissueStats(labels=tuple(_HU), mean=tuple(unit(m) for m, _ in _HU.values()),
                          sd=tuple(2 * s / 4024.0 for _, s in _HU.values()),
                          prior=(0.6, 0.2, 0.1, 0.05, 0.05))


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_segment_consistency_low_for_true_ct_high_for_a_tissue_swap(dim: str) -> None:
    """Finite and differentiable; about the Bayes error for a CT drawn from the segmentor's own
    tissue Gaussians with its labels; hundreds of times more for the same CT with fat and bone
    swapped (the unpaired CycleGAN's failure) and for T1-like bone (dark, like air)."""
    shape = SHAPES[dim]
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 5, (shape[0], *shape[2:]), generator=g)
    stats = _ct_stats()
    mean, sd = torch.tensor(stats.mean), torch.tensor(stats.sd)
    ct = (mean[lab] + sd[lab] * torch.randn(lab.shape, generator=g)).unsqueeze(1)
    term = lt.TERMS["segment_consistency"].factory(stats.to_json())   # JSON text works too
    true = float(term(ct, lab))
    swap = torch.tensor([0, 1, 3, 2, 4])[lab]                       # fat <-> bone
    swapped = (mean[swap] + sd[swap] * torch.randn(lab.shape, generator=g)).unsqueeze(1)
    pred = swapped.clone().requires_grad_(True)
    loss = term(pred, lab.unsqueeze(1))                             # (N, 1, *sp) labels too
    assert true < 0.5 and float(loss.detach()) > 100 * true
    _check_scalar_grad(loss, pred)
    # the gradient moves a swapped voxel towards its own tissue: fat down, bone up
    fat, bone = lab == 2, lab == 3
    assert (pred.grad[:, 0][fat] > 0).all() and (pred.grad[:, 0][bone] < 0).all()
    t1_bone = torch.where(bone.unsqueeze(1), mean[0], ct)             # bone as dark as air
    assert float(term(t1_bone, lab)) > float(term(ct, lab)) + 1.0
    # per-tissue sds (quadratic discriminant): the widest tissue (bone) owns every value far
    # from the narrow ones, so bone at -500 HU would cost nothing; the pooled sd does not allow it
    at_500 = torch.where(bone.unsqueeze(1), 2 * (-500.0 + 1024.0) / 4024.0 - 1, ct)
    qda = lt.SegmentConsistencyLoss(stats, shared_sd=False)
    assert float(qda(at_500, lab)) < float(qda(ct, lab)) + 0.1
    assert float(term(at_500, lab)) > float(term(ct, lab)) + 1.0
    # voxels whose label the segmentor does not know are ignored (none: 0, with a gradient path)
    assert float(term(ct, torch.full_like(lab, 7))) == 0.0


@pytest.mark.parametrize("dim", ["2d", "3d"])
def test_tissue_value_is_the_l1_to_the_target_tissue_means(dim: str) -> None:
    """Zero at the tissue means; the mean |offset| of the known voxels otherwise; a tissue swap
    costs the distance between the swapped tissues' means; the gradient moves each voxel towards
    its own tissue's mean (also inside the interval the classifier term is flat over); unknown
    labels are ignored."""
    shape = SHAPES[dim]
    g = torch.Generator().manual_seed(1)
    lab = torch.randint(0, 5, (shape[0], *shape[2:]), generator=g)
    stats = _ct_stats()
    mean = torch.tensor(stats.mean)
    term = lt.TERMS["tissue_value"].factory(stats.to_json())
    exact = mean[lab].unsqueeze(1)
    assert float(term(exact, lab)) == 0.0
    off = 0.01 * torch.randn(exact.shape, generator=g)
    assert float(term(exact + off, lab)) == pytest.approx(float(off.abs().mean()), rel=1e-4)
    swap = torch.tensor([0, 1, 3, 2, 4])[lab]                       # fat <-> bone
    moved = (lab == 2) | (lab == 3)
    expect = float((mean[2] - mean[3]).abs() * moved.float().mean())
    assert float(term(mean[swap].unsqueeze(1), lab)) == pytest.approx(expect, rel=1e-4)
    # a white-matter voxel a little off its mean, well inside its classifier interval
    pred = (exact + 0.002 * torch.sign(torch.randn(exact.shape, generator=g))).requires_grad_(True)
    loss = term(pred, lab)
    _check_scalar_grad(loss, pred)
    assert (torch.sign(pred.grad) == torch.sign(pred.detach() - exact)).all()
    # voxels whose label the stats do not know are ignored; none known: 0 with a gradient path
    partly = torch.where(lab == 0, 7, lab)
    assert float(term(exact + (lab == 0).unsqueeze(1) * 5.0, partly)) == 0.0
    assert float(term(exact, torch.full_like(lab, 7))) == 0.0


def test_segment_consistency_bad_input() -> None:
    for name in ("segment_consistency", "tissue_value"):
        with pytest.raises(ValueError, match=f"loss.{name} > 0 needs the target domain's tissue"):
            GeneratorTerms(LossWeights(**{name: 1.0}))
    with pytest.raises(ValueError, match="missing"):
        lt.SegmentConsistencyLoss({"labels": [0, 1]})
    with pytest.raises(ValueError, match="sd has 1 values"):
        lt.TissueStats(labels=(0, 1), mean=(0.0, 1.0), sd=(0.1,), prior=(0.5, 0.5))
    with pytest.raises(ValueError, match="sd > 0"):
        lt.TissueStats(labels=(0, 1), mean=(0.0, 1.0), sd=(0.1, 0.0), prior=(0.5, 0.5))
    with pytest.raises(ValueError, match="JSON"):
        lt.TissueStats.parse("not json {")
    # a YAML-parsed --set of the JSON, stored as a str field, still parses
    assert lt.TissueStats.parse(str({"labels": [0, 1], "mean": [0, 1], "sd": [1, 1],
                                     "prior": [1, 1]})).labels == (0, 1)
    with pytest.raises(TypeError, match="labels"):
        STATS and lt.SegmentConsistencyLoss(STATS)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
    with pytest.raises(ValueError, match="labels: expected shape"):
        lt.SegmentConsistencyLoss(STATS)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="labels: expected shape"):
        lt.TissueValueLoss(STATS)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(TypeError, match="labels"):
        lt.TissueValueLoss(STATS)(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4))
