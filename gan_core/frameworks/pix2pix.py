"""pix2pix (Isola et al., 2017): conditional GAN + lambda_L1 * L1, U-Net G and PatchGAN D.

L = E[log D(x, y)] + E[log(1 - D(x, G(x)))] + lambda_L1 * ||y - G(x)||_1   (survey eqs. 5-6)

``loss.gan`` weighs the adversarial term, ``loss.image`` is lambda_L1 (100); any optional Table-5
term with a weight > 0 is added on (G(A), B). No framework parameters (``fw`` is empty).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gan_core.frameworks import register
from gan_core.frameworks.base import GANFramework, GeneratorTerms, build_gen, per_sample_net
from gan_core.losses.adversarial import GANLoss, gradient_penalty
from gan_core.models import build_discriminator


@register("pix2pix")
class Pix2Pix(GANFramework):
    paired = True
    loss_defaults = {"gan": 1.0, "image": 100.0}
    search_space = {"loss.gan": ("uniform", 0.5, 2.0), "loss.image": ("loguniform", 10.0, 300.0)}

    @classmethod
    def configure(cls, cfg, preset: str) -> None:
        m = cfg.model
        cfg.gan_mode = "vanilla"
        if preset == "full":  # U-Net-256 + 70x70 PatchGAN, batch norm, dropout, batch 1
            m.generator, m.discriminator, m.norm, m.dropout = "unet", "patchgan", "batch", True
            m.d_norm = "batch"
            m.num_downs = 8
            cfg.data.batch_size = 1

    def build_networks(self) -> dict[str, nn.Module]:
        m = self.cfg.model
        return {
            "G": build_gen(m, m.in_channels, m.out_channels),
            "D": build_discriminator(m.discriminator, in_channels=m.in_channels + m.out_channels,
                                     spatial_dims=m.spatial_dims, base_filters=m.d_filters,
                                     n_layers=m.d_layers, norm=m.d_norm),
        }

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"G": ["G"], "D": ["D"]}

    def __init__(self, cfg, device="cpu") -> None:
        super().__init__(cfg, device)
        self.crit = GANLoss(cfg.gan_mode)
        self.extra_terms = GeneratorTerms(cfg.loss, self.device, cfg.model.feature_encoder)
        #: D judges real and generated pairs in one batched pass when that changes nothing: no
        #: batch statistics (BatchNorm) and no dropout in D (the published recipe's batch norm
        #: keeps two passes). ``False`` forces the two passes.
        self.batch_d = per_sample_net(self.nets["D"])

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = self.to_device(batch)
        real_A, real_B = b["A"], b["B"]
        w = self.cfg.loss
        with self.autocast():
            fake_B = self.fwd["G"](real_A)

        # D: real pairs -> 1, generated pairs -> 0
        self.set_requires_grad([self.nets["D"]], True)
        self.opts["D"].zero_grad(set_to_none=True)
        with self.autocast():
            fake_AB, real_AB = torch.cat([real_A, fake_B.detach()], 1), torch.cat([real_A, real_B], 1)
            if self.batch_d:  # one D pass over [fake; real]: per-sample D, the same values
                pred_fake, pred_real = self.fwd["D"](torch.cat([fake_AB, real_AB.to(fake_AB.dtype)], 0)).chunk(2)
            else:
                pred_fake, pred_real = self.fwd["D"](fake_AB), self.fwd["D"](real_AB)
        loss_D_fake = self.crit(pred_fake, False)
        loss_D_real = self.crit(pred_real, True)
        loss_D = 0.5 * (loss_D_fake + loss_D_real)
        if self.cfg.gan_mode == "wgangp":
            loss_D = loss_D + gradient_penalty(
                self.fwd["D"], torch.cat([real_A, real_B], 1), torch.cat([real_A, fake_B], 1))
        loss_D.backward()
        self.opts["D"].step()

        # G: fool D, stay close to the target in L1
        self.set_requires_grad([self.nets["D"]], False)
        self.opts["G"].zero_grad(set_to_none=True)
        with self.autocast():
            pred = self.frozen["D"](torch.cat([real_A, fake_B], 1))
        loss_G_GAN = self.crit(pred, True, for_discriminator=False) * w.gan
        loss_G_L1 = F.l1_loss(fake_B.float(), real_B.float()) * w.image
        extra = self.extra_terms(fake_B, real_B, source=real_A, labels=b.get("labels"), prefix="G_",
                                 features=lambda x: self.nets["D"].features(torch.cat([real_A, x.to(real_A.dtype)], 1)))
        loss_G = loss_G_GAN + loss_G_L1 + sum(extra.values())
        loss_G.backward()
        self.opts["G"].step()
        self.set_requires_grad([self.nets["D"]], True)
        return {**{k: v.detach() for k, v in extra.items()},
                "G_GAN": loss_G_GAN.detach(), "G_L1": loss_G_L1.detach(), "G": loss_G.detach(),
                "D_real": loss_D_real.detach(), "D_fake": loss_D_fake.detach(), "D": loss_D.detach()}

    def generate(self, x: Tensor) -> Tensor:
        """MR (or any source A) in [-1, 1] -> target B in [-1, 1]."""
        return self.infer("G", x)
