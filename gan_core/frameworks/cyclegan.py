"""CycleGAN (Zhu et al., 2017): two generators, two discriminators, cycle + identity losses.

L = L_GAN(G_A, D_A) + L_GAN(G_B, D_B) + lambda_cycle * (||G_B(G_A(a)) - a||_1 + ||G_A(G_B(b)) - b||_1)
    + lambda_identity * lambda_cycle * (||G_A(b) - b||_1 + ||G_B(a) - a||_1)          (survey eqs. 7-9)

Update order as the authors' code: both generators first (discriminators frozen), then D_A and
D_B on images drawn from a pool of 50 past fakes. D_A judges domain B (the output of G_A).

Weights: ``loss.gan``, ``loss.cycle`` (lambda_cycle 10) and ``fw.identity`` (lambda_identity, a
fraction of lambda_cycle: 0.5); ``fw.pool_size`` past fakes per pool; ``fw.cycle_a`` /
``fw.cycle_b`` scale each direction's cycle term (1: the published symmetric objective; an
MR->CT->MR cycle cannot be met by a correct MR->CT map, which loses T1 contrast).
"""

from __future__ import annotations

import torch.nn.functional as F
from dataclasses import dataclass

from torch import Tensor, nn

from gan_core.config import FrameworkConfig
from gan_core.frameworks import register
from gan_core.frameworks.base import (GANFramework, GeneratorTerms, ImagePool, batched_calls,
                                      build_gen, per_sample_net)
from gan_core.losses.adversarial import GANLoss, gradient_penalty
from gan_core.losses.table import optional_terms
from gan_core.models import build_discriminator


@register("cyclegan")
class CycleGAN(GANFramework):
    @dataclass
    class Params(FrameworkConfig):
        """``fw.*`` of CycleGAN (Zhu et al.)."""

        identity: float = 0.5   # lambda_identity, as a fraction of lambda_cycle
        pool_size: int = 50     # image pool of past fakes per discriminator (0: none)
        cycle_a: float = 1.0    # A->B->A (MR->CT->MR) cycle weight, a fraction of loss.cycle
        cycle_b: float = 1.0    # B->A->B (CT->MR->CT) cycle weight, a fraction of loss.cycle
        # loss.segment_consistency's CT segmentor: per-tissue HU Gaussians fitted on the CT
        # domain's own subjects (JSON text of <pack>/ct_tissue_stats.json; in the checkpoint)
        segment_stats: str = ""

    paired = False
    loss_defaults = {"gan": 1.0, "cycle": 10.0}
    search_space = {"loss.gan": ("uniform", 0.5, 2.0), "loss.cycle": ("loguniform", 1.0, 30.0),
                    "fw.identity": ("uniform", 0.0, 1.0)}

    @classmethod
    def configure(cls, cfg, preset: str) -> None:
        m = cfg.model
        cfg.gan_mode = "lsgan"
        cfg.fw.pool_size = 50
        if preset == "full":  # ResNet-9 + 70x70 PatchGAN, instance norm, batch 1
            m.generator, m.discriminator, m.norm, m.dropout = "resnet", "patchgan", "instance", False
            m.d_norm = "instance"
            m.n_blocks = 9
            cfg.data.batch_size = 1
        elif preset == "structure":  # unpaired MR -> CT that learns (docs/results.md, "Unpaired")
            # the MR -> CT -> MR cycle cannot be met by the right map (T1 contrast is lost), and
            # the identity term pulls G_A towards the MR's tissue order: both off; the structure
            # terms (gan_core.presets.STRUCTURE_LOSS) tie each translation to its input instead
            cfg.fw.cycle_a, cfg.fw.identity = 0.0, 0.0

    def build_networks(self) -> dict[str, nn.Module]:
        m = self.cfg.model

        def gen(cin: int, cout: int) -> nn.Module:
            return build_gen(m, cin, cout)

        def disc(cin: int) -> nn.Module:
            return build_discriminator(m.discriminator, in_channels=cin, spatial_dims=m.spatial_dims,
                                       base_filters=m.d_filters, n_layers=m.d_layers, norm=m.d_norm)

        return {"G_A": gen(m.in_channels, m.out_channels), "G_B": gen(m.out_channels, m.in_channels),
                "D_A": disc(m.out_channels), "D_B": disc(m.in_channels)}

    def optimizer_groups(self) -> dict[str, list[str]]:
        return {"G": ["G_A", "G_B"], "D": ["D_A", "D_B"]}

    def __init__(self, cfg, device="cpu") -> None:
        super().__init__(cfg, device)
        self.crit = GANLoss(cfg.gan_mode)
        self.extra_terms = GeneratorTerms(cfg.loss, self.device, cfg.model.feature_encoder,
                                          segment_stats=cfg.fw.segment_stats)
        self.pool_A = ImagePool(cfg.fw.pool_size, seed=cfg.seed * 2 + 1)
        self.pool_B = ImagePool(cfg.fw.pool_size, seed=cfg.seed * 2 + 2)
        #: the generators' calls whose inputs are ready together run as one batched call when
        #: that changes nothing (no BatchNorm, no dropout in G_A and G_B): G_A on [a; b]
        #: (translation, identity), G_B on [G_A(a); b; a] (cycle, translation, identity), then
        #: G_A on G_B(b): 3 calls instead of 6. ``False`` forces the separate calls.
        self.batch_g = per_sample_net(self.nets["G_A"]) and per_sample_net(self.nets["G_B"])
        #: each discriminator judges [real; pooled fake] in one pass and one backward serves
        #: both, when neither has BatchNorm or dropout. ``False`` forces the separate passes.
        self.batch_d = per_sample_net(self.nets["D_A"]) and per_sample_net(self.nets["D_B"])

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        b = self.to_device(batch)
        real_A, real_B = b["A"], b["B"]
        w, fw = self.cfg.loss, self.cfg.fw
        idt = fw.identity
        G_A, G_B = self.fwd["G_A"], self.fwd["G_B"]
        D_nets = [self.nets["D_A"], self.nets["D_B"]]

        # generators (D frozen)
        self.set_requires_grad(D_nets, False)
        self.opts["G"].zero_grad(set_to_none=True)
        with self.autocast():
            # same_B = G_A(real_B) and same_A = G_B(real_A): the identity calls (idt > 0)
            if self.batch_g:
                fake_B, *same_B = batched_calls(G_A, [real_A, real_B] if idt > 0 else [real_A])
                rec_A, fake_A, *same_A = batched_calls(
                    G_B, [fake_B, real_B, real_A] if idt > 0 else [fake_B, real_B])
                rec_B = G_A(fake_A)
            else:
                fake_B = G_A(real_A)
                rec_A = G_B(fake_B)
                fake_A = G_B(real_B)
                rec_B = G_A(fake_A)
                same_B, same_A = ([G_A(real_B)], [G_B(real_A)]) if idt > 0 else ([], [])
            loss_G_A = self.crit(self.frozen["D_A"](fake_B), True, for_discriminator=False) * w.gan
            loss_G_B = self.crit(self.frozen["D_B"](fake_A), True, for_discriminator=False) * w.gan
            loss_cyc_A = F.l1_loss(rec_A.float(), real_A.float()) * w.cycle * fw.cycle_a
            loss_cyc_B = F.l1_loss(rec_B.float(), real_B.float()) * w.cycle * fw.cycle_b
            loss_idt_A = loss_idt_B = rec_A.new_zeros((), dtype=real_A.dtype).float()
            if idt > 0:
                loss_idt_A = F.l1_loss(same_B[0].float(), real_B.float()) * w.cycle * idt
                loss_idt_B = F.l1_loss(same_A[0].float(), real_A.float()) * w.cycle * idt
        # the extra terms compare each cycle reconstruction with its real image (shape: with the
        # A slice's labels); the source terms each translation with its own input (self_reg,
        # mind, gradient_consistency; shape_consistency with the A slice's labels)
        extra = {**self.extra_terms(rec_A, real_A, source=real_A, generated=fake_B,
                                    labels=b.get("labels"), prefix="cycle_A_",
                                    features=getattr(self.nets["D_B"], "features", None)),
                 **self.extra_terms(rec_B, real_B, source=real_B, generated=fake_A,
                                    skip=("shape", *optional_terms("source_label")),
                                    prefix="cycle_B_", features=getattr(self.nets["D_A"], "features", None))
                 } if self.extra_terms else {}
        loss_G = (loss_G_A + loss_G_B + loss_cyc_A + loss_cyc_B + loss_idt_A + loss_idt_B
                  + sum(extra.values()))
        loss_G.backward()
        self.opts["G"].step()

        # discriminators, on pooled fakes
        self.set_requires_grad(D_nets, True)
        self.opts["D"].zero_grad(set_to_none=True)
        fake_B_pool, fake_A_pool = self.pool_B.query(fake_B), self.pool_A.query(fake_A)
        if self.batch_d:
            loss_D_A = self._loss_D("D_A", real_B, fake_B_pool)
            loss_D_B = self._loss_D("D_B", real_A, fake_A_pool)
            (loss_D_A + loss_D_B).backward()
        else:
            loss_D_A = self._backward_D("D_A", real_B, fake_B_pool)
            loss_D_B = self._backward_D("D_B", real_A, fake_A_pool)
        self.opts["D"].step()
        return {**{k: v.detach() for k, v in extra.items()},
                "G_A": loss_G_A.detach(), "G_B": loss_G_B.detach(), "cycle_A": loss_cyc_A.detach(),
                "cycle_B": loss_cyc_B.detach(), "idt_A": loss_idt_A.detach(), "idt_B": loss_idt_B.detach(),
                "G": loss_G.detach(), "D_A": loss_D_A.detach(), "D_B": loss_D_B.detach()}

    def _loss_D(self, name: str, real: Tensor, fake: Tensor) -> Tensor:
        """D ``name``'s loss on [real; fake] judged in one pass (a per-sample D)."""
        with self.autocast():
            pred_real, pred_fake = batched_calls(self.fwd[name], [real, fake.detach()])
        loss = 0.5 * (self.crit(pred_real, True) + self.crit(pred_fake, False))
        if self.cfg.gan_mode == "wgangp":
            loss = loss + gradient_penalty(self.fwd[name], real, fake)
        return loss

    def _backward_D(self, name: str, real: Tensor, fake: Tensor) -> Tensor:
        with self.autocast():
            pred_real = self.fwd[name](real)
            pred_fake = self.fwd[name](fake.detach())
        loss = 0.5 * (self.crit(pred_real, True) + self.crit(pred_fake, False))
        if self.cfg.gan_mode == "wgangp":
            loss = loss + gradient_penalty(self.fwd[name], real, fake)
        loss.backward()
        return loss

    def generate(self, x: Tensor) -> Tensor:
        """Domain A (MR) in [-1, 1] -> domain B (CT) in [-1, 1] through G_A."""
        return self.infer("G_A", x)

    def generate_inverse(self, x: Tensor) -> Tensor:
        """Domain B -> domain A through G_B (CT -> MR)."""
        return self.infer("G_B", x)

    def extra_state(self) -> dict:
        return {"pool_A": self.pool_A.state_dict(), "pool_B": self.pool_B.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        if state:
            self.pool_A.load_state_dict(state["pool_A"], self.device)
            self.pool_B.load_state_dict(state["pool_B"], self.device)
