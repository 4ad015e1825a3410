"""UNIT (Liu, Breuel & Kautz, 2017): coupled VAE-GANs with a shared latent space.

Two VAEs, ``(E_A, G_A)`` for domain A (MR) and ``(E_B, G_B)`` for domain B (CT), whose last
encoder and first decoder residual blocks are shared modules (``gan_core.models.vae``), so both
domains map to one latent code. A latent is ``N(mu, I)`` (the authors' code): ``z = mu + N(0, I)``
in training, ``z = mu`` for translation. With ``x_ab = G_B(z_a)``, ``x_ba = G_A(z_b)``,
``x_aba = G_A(E_B(x_ab) + noise)`` and ``x_bab = G_B(E_A(x_ba) + noise)``, the generator loss is

    L_G = gan * (L_GAN(D_B, x_ab) + L_GAN(D_A, x_ba))
          + recon * (||G_A(z_a) - x_a||_1 + ||G_B(z_b) - x_b||_1)
          + kl * (KL(mu_a) + KL(mu_b))
          + cycle * (cycle_a * ||x_aba - x_a||_1 + cycle_b * ||x_bab - x_b||_1)
          + cycle_kl * (KL(E_B(x_ab)) + KL(E_A(x_ba)))

with ``KL(mu) = mean(mu**2)``: the survey's eq. 11 (L_VAE + L_GAN + L_CC per domain; the
paper's eqs. 3-5) with the weights of the authors' code (``fw.recon`` 10, ``fw.kl`` 0.01,
``loss.cycle`` 10, ``fw.cycle_kl`` 0.01, ``loss.gan`` 1; ``fw.cycle_a`` = ``fw.cycle_b`` = 1),
plus any optional Table-5 term of ``LossWeights`` with a weight > 0, as in CycleGAN: pair terms on
the cycle reconstructions, source terms (mind, gradient_consistency, self_reg) on each
translation against its own input, shape_consistency and segment_consistency on ``x_ab`` against
the A slice's labels (segment_consistency's CT segmentor: ``fw.segment_stats``). D_A judges domain-A
images (real ``x_a`` vs ``x_ba``), D_B domain-B images; they are multi-scale PatchGANs (as many
scales, up to 3, as the training crop allows) with LSGAN, the adversarial terms summed over
scales as the authors' ``MsImageDis``.

Update order, as the authors' training loop (``dis_update`` then ``gen_update`` in
mingyuliutw/UNIT ``train.py``): first the discriminators, on translations drawn with the current
generator (no gradient to it); then the generator with a fresh forward pass judged by the just
updated discriminators. So the generator always trains against the discriminators' latest
state, and no image pool is used. After ``train_step`` the generator's
``.grad`` are those of its last update.

>>> from gan_core.presets import preset
>>> import torch
>>> fw = UNIT(preset("tiny", "unit"))
>>> fw.generate(torch.zeros(1, 1, 32, 32)).shape
torch.Size([1, 1, 32, 32])
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.config import FrameworkConfig
from gan_core.frameworks import register
from gan_core.frameworks.base import GANFramework, GeneratorTerms
from gan_core.losses.adversarial import GANLoss, gradient_penalty
from gan_core.losses.table import optional_terms
from gan_core.models import build_discriminator, patchgan_output_size
from gan_core.models.vae import SharedLatentVAE, latent_kl

#: UNIT's multi-scale discriminator uses (at most) this many scales
MAX_SCALES = 3
#: offset of the latent-noise RNG's seed (kept apart from the global seeds ``seed * 1000 + rank``)
NOISE_SEED = 0x5EED0000


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def fit_scales(size: int, n_layers: int, max_scales: int = MAX_SCALES) -> int:
    """How many discriminator scales (each average-pooled by 2, ``ceil(s / 2)``) of a PatchGAN
    with ``n_layers`` still give an output on a ``size`` crop, at most ``max_scales``.

    >>> fit_scales(256, 3), fit_scales(32, 3), fit_scales(32, 2), fit_scales(4, 1)
    (3, 1, 2, 0)
    """
    n = 0
    while n < max_scales and patchgan_output_size(size, n_layers) >= 1:
        n += 1
        size = (size + 1) // 2
    return n


def pad_to_multiple(x: Tensor, multiple: int, value: float = -1.0) -> tuple[Tensor, tuple[slice, ...]]:
    """Pad every spatial axis of ``x`` (centred, with ``value``) to a multiple of ``multiple``;
    returns the padded tensor and the index that crops an output back.

    >>> y, crop = pad_to_multiple(torch.zeros(1, 1, 5, 8), 4)
    >>> tuple(y.shape), tuple(y[crop].shape)
    ((1, 1, 8, 8), (1, 1, 5, 8))
    """
    pads: list[int] = []
    crop: list[slice] = [slice(None), slice(None)]
    for s in x.shape[2:]:
        p = (-s) % multiple
        crop.append(slice(p // 2, p // 2 + s))
        pads = [p // 2, p - p // 2] + pads  # F.pad: last axis first
    if any(pads):
        x = F.pad(x, pads, value=value)
    return x, tuple(crop)


@register("unit")
class UNIT(GANFramework):
    """UNIT: nets ``VAE`` (:class:`SharedLatentVAE`: E_A, G_A, E_B, G_B), ``D_A`` and ``D_B``.

    ``generate``: A -> B (MR -> CT) with the latent mean; ``generate_inverse``: B -> A. The VAE
    is one net (one optimizer group ``G``), so the shared blocks' parameters reach Adam once and
    a DDP wrapper sees one forward per generator update.
    """

    @dataclass
    class Params(FrameworkConfig):
        """``fw.*`` of UNIT: the VAE weights of the authors' code (Liu et al.)."""

        recon: float = 10.0     # within-domain VAE reconstruction L1
        kl: float = 0.01        # KL of the shared latent
        cycle_kl: float = 0.01  # KL of the cycle's latents
        cycle_a: float = 1.0    # A->B->A (MR->CT->MR) cycle L1 weight, a fraction of loss.cycle
        cycle_b: float = 1.0    # B->A->B (CT->MR->CT) cycle L1 weight, a fraction of loss.cycle
        # loss.segment_consistency's CT segmentor: per-tissue HU Gaussians fitted on the CT
        # domain's own subjects (JSON text of <pack>/ct_tissue_stats.json; in the checkpoint)
        segment_stats: str = ""

    paired = False
    loss_defaults = {"gan": 1.0, "cycle": 10.0}
    search_space = {"loss.gan": ("uniform", 0.5, 2.0), "loss.cycle": ("loguniform", 1.0, 30.0),
                    "fw.recon": ("loguniform", 1.0, 30.0), "fw.kl": ("loguniform", 1e-3, 0.1),
                    "fw.cycle_kl": ("loguniform", 1e-3, 0.1)}

    @classmethod
    def configure(cls, cfg, preset: str) -> None:
        """LSGAN, no image pool, multi-scale D; ``full``: the authors' recipe (Adam 1e-4,
        betas (0.5, 0.999), batch 1, instance norm, 64 filters, 2 downsamplings, 3 private +
        1 shared residual blocks per side).

        ``tiny``/``demo`` keep the presets' Kaiming init, lr and 32 px crops, with 1 + 1 (tiny) /
        3 + 1 (demo) residual blocks, 16 filters in the demo, 2-layer PatchGANs (so two
        discriminator scales fit a 32 px crop) and, unlike the other frameworks' CPU presets,
        instance norm as published: without normalisation this 10-layer-deep encoder/decoder
        with Kaiming init starts with a saturated Tanh (95-98% of output pixels beyond +-0.99 on
        the demo crops) and its reconstruction loss stalls (phantom, 400 demo iterations:
        within-domain L1 of CT 0.09 with instance norm vs 0.24 without).

        ``model.generator`` is set to ``"resnet"`` to name the family (a ResNet-style
        encoder/decoder; :func:`~gan_core.frameworks.base.generator_multiple` then gives the
        ``2**n_downsampling`` the VAE needs); UNIT builds its own coupled VAE whatever it says.
        """
        m = cfg.model
        cfg.gan_mode = "lsgan"
        m.generator, m.discriminator = "resnet", "multiscale"
        if preset == "full":
            m.norm, m.dropout = "instance", False
            m.g_filters = m.d_filters = 64
            m.n_downsampling, m.n_blocks = 2, 4
            cfg.optim.lr, cfg.optim.beta1, cfg.optim.beta2 = 1e-4, 0.5, 0.999
            cfg.data.batch_size = 1
        else:
            m.norm, m.n_downsampling, m.d_layers = "instance", 2, 2
            m.n_blocks = 2 if preset == "tiny" else 4
            if preset in ("demo", "structure"):
                m.g_filters = 16

    # -- networks ----------------------------------------------------------------------------
    def num_scales(self) -> int:
        """Discriminator scales: up to 3, as many as the smallest training-crop axis allows."""
        m, d = self.cfg.model, self.cfg.data
        size = min(d.image_size, d.patch_depth) if m.spatial_dims == 3 else d.image_size
        n = fit_scales(size, m.d_layers)
        if n < 1:
            raise ValueError(f"UNIT: a PatchGAN with model.d_layers={m.d_layers} gives no output on "
                             f"a {size}-voxel crop axis (data.image_size / data.patch_depth); use a "
                             "larger crop or fewer d_layers")
        return n

    def build_networks(self) -> dict[str, nn.Module]:
        m = self.cfg.model
        if m.in_channels < 1:
            raise ValueError(f"UNIT translates between two image domains: model.in_channels must be "
                             f">= 1 (task {self.cfg.task.name!r} gives {m.in_channels})")
        if m.n_blocks < 1:
            raise ValueError(f"UNIT: model.n_blocks must be >= 1 (the last is the shared latent "
                             f"block, the others private), got {m.n_blocks}")
        vae = SharedLatentVAE(m.in_channels, m.out_channels, spatial_dims=m.spatial_dims,
                              base_filters=m.g_filters, n_downsampling=m.n_downsampling,
                              n_private=m.n_blocks - 1, n_shared=1, norm=m.norm)

        def disc(cin: int) -> nn.Module:
            kw: dict[str, Any] = dict(in_channels=cin, spatial_dims=m.spatial_dims,
                                      base_filters=m.d_filters, n_layers=m.d_layers, norm=m.d_norm)
            if m.discriminator == "multiscale":
                kw["num_scales"] = self.num_scales()
            return build_discriminator(m.discriminator, **kw)

        return {"VAE": vae, "D_A": disc(m.in_channels), "D_B": disc(m.out_channels)}

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"G": ["VAE"], "D": ["D_A", "D_B"]}

    def __init__(self, cfg, device: str | torch.device = "cpu") -> None:
        super().__init__(cfg, device)
        self.crit = GANLoss(cfg.gan_mode)
        self.extra_terms = GeneratorTerms(cfg.loss, self.device, cfg.model.feature_encoder,
                                          segment_stats=cfg.fw.segment_stats)
        # the latent noise has its own RNG (per rank), checkpointed in ``extra_state``: a resumed
        # run draws exactly the noise an uninterrupted one would have drawn
        self.rank = _rank()
        self.noise = torch.Generator(device=self.device)
        self.noise.manual_seed(NOISE_SEED + cfg.seed * 1000 + self.rank)

    @property
    def vae(self) -> SharedLatentVAE:
        return self.nets["VAE"]  # type: ignore[return-value]

    # -- training ----------------------------------------------------------------------------
    def _adv(self, preds: Tensor | list[Tensor], real: bool, for_discriminator: bool) -> Tensor:
        """GAN loss summed over the discriminator's scales (``MsImageDis`` of the authors)."""
        preds = preds if isinstance(preds, (list, tuple)) else [preds]
        return sum(self.crit(p, real, for_discriminator=for_discriminator) for p in preds)

    def _backward_D(self, name: str, real: Tensor, fake: Tensor) -> Tensor:
        with self.autocast():
            pred_real = self.fwd[name](real)
            pred_fake = self.fwd[name](fake)
        loss = self._adv(pred_real, True, True) + self._adv(pred_fake, False, True)
        if self.cfg.gan_mode == "wgangp":
            loss = loss + gradient_penalty(self.fwd[name], real, fake)
        loss.backward()
        return loss

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = self.to_device(batch)
        x_a, x_b = b["A"], b["B"]
        w, p = self.cfg.loss, self.cfg.fw
        D_nets = [self.nets["D_A"], self.nets["D_B"]]

        # 1) discriminators, on translations of the current generator (sampled latents)
        with torch.no_grad(), self.autocast():
            x_ab = self.vae.translate(x_a, "A", "B", self.noise)
            x_ba = self.vae.translate(x_b, "B", "A", self.noise)
        self.set_requires_grad(D_nets, True)
        self.opts["D"].zero_grad(set_to_none=True)
        loss_D_A = self._backward_D("D_A", x_a, x_ba)
        loss_D_B = self._backward_D("D_B", x_b, x_ab)
        self.opts["D"].step()

        # 2) encoders + decoders, judged by the updated (frozen) discriminators
        self.set_requires_grad(D_nets, False)
        self.opts["G"].zero_grad(set_to_none=True)
        with self.autocast():
            out = self.fwd["VAE"](x_a, x_b, generator=self.noise)
            gan_A = self._adv(self.frozen["D_A"](out["x_ba"]), True, False) * w.gan
            gan_B = self._adv(self.frozen["D_B"](out["x_ab"]), True, False) * w.gan
        xa, xb = x_a.float(), x_b.float()
        terms = {
            "G_GAN_A": gan_A, "G_GAN_B": gan_B,
            "recon_A": F.l1_loss(out["x_aa"].float(), xa) * p.recon,
            "recon_B": F.l1_loss(out["x_bb"].float(), xb) * p.recon,
            "kl_A": latent_kl(out["mu_A"]) * p.kl,
            "kl_B": latent_kl(out["mu_B"]) * p.kl,
            "cycle_A": F.l1_loss(out["x_aba"].float(), xa) * w.cycle * p.cycle_a,
            "cycle_B": F.l1_loss(out["x_bab"].float(), xb) * w.cycle * p.cycle_b,
            "cycle_kl_A": latent_kl(out["mu_ab"]) * p.cycle_kl,
            "cycle_kl_B": latent_kl(out["mu_ba"]) * p.cycle_kl,
        }
        if self.extra_terms:  # optional Table-5 terms on the cycle reconstructions, as CycleGAN
            # (self-reg, mind: each translation against its own source; shape_consistency and
            # segment_consistency: x_ab against the A slice's labels. The B side has no labels
            # of its own, and the CT segmentor judges CT, not the synthetic MR x_ba)
            terms.update(self.extra_terms(out["x_aba"], x_a, source=x_a, generated=out["x_ab"],
                                          labels=b.get("labels"), prefix="cycle_A_",
                                          features=self.nets["D_A"].features))
            terms.update(self.extra_terms(out["x_bab"], x_b, source=x_b, generated=out["x_ba"],
                                          skip=("shape", *optional_terms("source_label")),
                                          prefix="cycle_B_",
                                          features=self.nets["D_B"].features))
        loss_G = sum(terms.values())
        loss_G.backward()
        self.opts["G"].step()
        self.set_requires_grad(D_nets, True)
        return {**{k: v.detach() for k, v in terms.items()}, "G": loss_G.detach(),
                "D_A": loss_D_A.detach(), "D_B": loss_D_B.detach(),
                "D": (loss_D_A + loss_D_B).detach()}

    # -- inference ---------------------------------------------------------------------------
    @torch.no_grad()
    def _translate(self, x: Tensor, src: str, dst: str) -> Tensor:
        """Eval-mode ``G_dst(E_src(x))`` with the latent mean (as ``infer``: autocast as
        configured, float32 out); any spatial size (padded with -1 to ``2**n_downsampling``
        and cropped back)."""
        vae = self.vae
        was_training = vae.training
        vae.eval()
        try:
            x, crop = pad_to_multiple(x.to(self.device), vae.multiple)
            if self._channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                y = vae.translate(x, src, dst)
            return y[crop].float().contiguous()
        finally:
            vae.train(was_training)

    def generate(self, x: Tensor) -> Tensor:
        """Domain A (MR) in [-1, 1] -> domain B (CT) in [-1, 1]: ``G_B(E_A(x))``, deterministic."""
        return self._translate(x, "A", "B")

    def generate_inverse(self, x: Tensor) -> Tensor:
        """Domain B -> domain A (CT -> MR): ``G_A(E_B(x))``, deterministic."""
        return self._translate(x, "B", "A")

    # -- checkpoint --------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"noise": self.noise.get_state(), "rank": self.rank}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.noise.set_state(state["noise"].cpu())  # (a checkpoint loaded with map_location=cuda)
        if state.get("rank", 0) != self.rank:
            # another rank's stream (DDP resume; rank 0 saved): branch off it deterministically
            seed = int(torch.randint(0, 2**31, (1,), generator=self.noise, device=self.device))
            self.noise.manual_seed(seed * 1000 + self.rank)
