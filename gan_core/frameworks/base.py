"""The framework protocol, a shared base class and the CycleGAN image pool.

A framework owns its networks, optimizers and LR schedulers; the training loop
(``gan_core.engine.loop``) only feeds batches, steps schedulers and checkpoints ``state_dict()``.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from gan_core.models import build_generator, init_weights

from gan_core.config import FrameworkConfig

if TYPE_CHECKING:
    from gan_core.config import TrainConfig


@runtime_checkable
class Framework(Protocol):
    """What the training loop, translate and the Ray workers rely on."""

    name: str
    paired: bool

    def networks(self) -> dict[str, nn.Module]: ...
    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """One G and D update; returns every loss term as a detached 0-dim tensor (no host sync)."""
        ...
    def generate(self, x: Tensor) -> Tensor: ...
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` unconditional samples ``(n, 1, *size)`` in [-1, 1] (raises for conditional ones)."""
        ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, sd: dict[str, Any]) -> None: ...


def build_gen(m, in_channels: int, out_channels: int) -> nn.Module:
    """The generator named by ``ModelConfig.generator`` with the knobs its family takes."""
    kw: dict[str, Any] = dict(in_channels=in_channels, out_channels=out_channels,
                              spatial_dims=m.spatial_dims, base_filters=m.g_filters, norm=m.norm,
                              dropout=m.dropout)
    if m.generator.startswith("unet"):
        kw.update(num_downs=m.num_downs)
    elif m.generator.startswith("resnet"):
        kw.update(n_blocks=m.n_blocks, n_downsampling=m.n_downsampling)
    elif m.generator == "convnet":
        kw.update(n_layers=m.g_layers)
    net = build_generator(m.generator, **kw)
    if getattr(m, "residual", False):
        if in_channels != out_channels:
            raise ValueError(f"model.residual needs as many input as output channels, got "
                             f"{in_channels} -> {out_channels} (a same-modality task)")
        from gan_core.models.residual import ResidualGenerator

        net = ResidualGenerator(net)
    return net


def generator_multiple(m) -> int:
    """Input sizes the generator accepts are multiples of this."""
    if m.generator.startswith("unet"):
        return 2 ** m.num_downs
    if m.generator.startswith("resnet"):
        return 2 ** m.n_downsampling
    return 1


class GeneratorTerms:
    """The optional Table-5 terms (``gan_core.losses.TERMS`` entries with ``optional``; weight > 0
    in ``LossWeights``) added to a generator's loss, by their kind:

    - ``pair`` (gradient, sharpness, structure, frequency, regulation) on (pred, target);
    - ``label`` (shape): :class:`~gan_core.losses.ShapeLoss` (tissue means) against the batch's
      label map (the shards must hold labels);
    - ``feature`` (perceptual, style): on the features of a local ConvEncoder file
      (``model.feature_encoder``) or, by default, of the framework's own discriminator (the
      ``features`` callable each call passes); nothing is downloaded;
    - ``source`` (self_reg, mind, gradient_consistency): the output (``generated``) against its
      own input (``source``): self_reg is L1 (same-modality tasks: denoising, reconstruction,
      super-resolution); mind and gradient_consistency compare structure across modalities;
    - ``source_label`` (shape_consistency, segment_consistency, tissue_value): the output against
      its input's tissue labels; segment_consistency classifies the output with, and
      tissue_value compares it with the tissue means of, the target domain's ``segment_stats``
      (:class:`~gan_core.losses.TissueStats` or its JSON text).

    >>> from gan_core.config import LossWeights
    >>> terms = GeneratorTerms(LossWeights(gradient=1.0))
    >>> sorted(terms(torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8), prefix="G_"))
    ['G_gradient']
    """

    def __init__(self, weights, device: torch.device | str = "cpu", feature_encoder: str = "",
                 segment_stats: Any = None) -> None:
        from gan_core.losses import TERMS, ConvEncoder, PerceptualLoss, optional_terms

        weight = {k: float(getattr(weights, k)) for k in optional_terms() if getattr(weights, k) > 0}
        #: name -> (weight, term), per kind, each in table order
        self.by_kind: dict[str, dict[str, tuple[float, Any]]] = {
            kind: {k: (weight[k], TERMS[k].factory) for k in optional_terms(kind) if k in weight}
            for kind in ("pair", "label", "feature", "source", "source_label")}
        for k in weight:
            if TERMS[k].needs_stats and not segment_stats:
                raise ValueError(f"loss.{k} > 0 needs the target domain's tissue statistics "
                                 "(fw.segment_stats: the JSON text of the pack's "
                                 "ct_tissue_stats.json, written by gan_core.data.unpaired)")

        def build(k: str, f: Callable[..., Any]) -> Any:
            if k == "shape":
                return f("mean")
            return f(segment_stats).to(device) if TERMS[k].needs_stats else f()

        #: name -> (weight, built term) of every kind but ``feature`` (built per call)
        self.built = {k: (w, build(k, f))
                      for kind, terms in self.by_kind.items() if kind != "feature"
                      for k, (w, f) in terms.items()}
        self.encoder: nn.Module | None = None
        if feature_encoder and self.by_kind["feature"]:
            enc = ConvEncoder()
            PerceptualLoss(enc, weights_path=feature_encoder)  # loads, checks, freezes
            self.encoder = enc.to(device)

    def __bool__(self) -> bool:
        return any(self.by_kind.values())

    def __call__(self, pred: Tensor, target: Tensor, *, source: Tensor | None = None,
                 labels: Tensor | None = None,
                 features: Callable[[Tensor], list[Tensor]] | None = None,
                 generated: Tensor | None = None, skip: tuple[str, ...] = (),
                 prefix: str = "") -> dict[str, Tensor]:
        """Weighted terms keyed ``<prefix><name>``. ``source``/``source_label`` terms compare
        ``generated`` (default ``pred``) with ``source`` / ``labels``; ``skip`` leaves out named
        terms for this call."""
        p, t = pred.float(), target.float()
        out = {f"{prefix}{name}": self.built[name][0] * self.built[name][1](p, t)
               for name in self.by_kind["pair"]}
        for name in (*self.by_kind["label"], *self.by_kind["source_label"]):
            if name in skip:
                continue
            if labels is None:
                raise ValueError(f"loss.{name} > 0 needs tissue labels in the batch: pack shards "
                                 "from subjects with a labels.nii.gz")
            w, fn = self.built[name]
            out[f"{prefix}{name}"] = w * (fn(p, t, labels.long()) if name in self.by_kind["label"]
                                          else fn((pred if generated is None else generated).float(),
                                                  labels.long()))
        extractor = self.encoder if self.encoder is not None else features
        for name, (w, factory) in self.by_kind["feature"].items():
            if extractor is None:
                raise ValueError(f"loss.{name} > 0: this framework passes no feature extractor; "
                                 "set model.feature_encoder to a local ConvEncoder weights file")
            out[f"{prefix}{name}"] = w * factory(extractor, freeze=False)(p, t)
        for name in self.by_kind["source"]:
            if name in skip:
                continue
            g = pred if generated is None else generated
            if source is None or source.shape != g.shape:
                raise ValueError(f"loss.{name} > 0 needs a source with the output's shape "
                                 f"(one channel in, one out); got {None if source is None else tuple(source.shape)}"
                                 f" vs {tuple(g.shape)}")
            w, fn = self.built[name]
            out[f"{prefix}{name}"] = w * fn(g.float(), source.float())
        return out


def linear_decay(steps_constant: int, steps_decay: int) -> Callable[[int], float]:
    """LR multiplier: 1 for ``steps_constant`` steps, then linear to ~0 over ``steps_decay``."""

    def fn(step: int) -> float:
        return 1.0 - max(0, step - steps_constant) / float(steps_decay + 1)

    return fn


def per_sample_net(net: nn.Module) -> bool:
    """True when ``net``'s output for one sample does not depend on the rest of the batch nor on
    the RNG: no BatchNorm and no dropout layers. Two calls may then be batched into one."""
    return not any(isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd))
                   for m in net.modules())


def batched_calls(net: Callable[..., Any], xs: list[Tensor]) -> list[Any]:
    """``[net(x) for x in xs]`` in one call per group of inputs of the same per-sample shape,
    on their concatenation along the batch dimension, split back (a list output, e.g. a
    multi-scale discriminator's, is split item by item). For a :func:`per_sample_net` this gives
    the separate calls' values, to the summation order of the bigger kernels.

    Inputs of different dtypes (a bf16 fake beside a float32 real under autocast) are
    concatenated in the wider one, exactly; a net whose first operation autocast casts (a
    convolution, after any padding) then sees the values the separate calls give it.

    >>> net = nn.Conv2d(1, 2, 3, padding=1)
    >>> a, b = torch.rand(2, 1, 8, 8), torch.rand(3, 1, 8, 8)
    >>> ya, yb = batched_calls(net, [a, b])
    >>> ya.shape, bool(torch.allclose(yb, net(b), atol=1e-6))
    (torch.Size([2, 2, 8, 8]), True)
    """
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, x in enumerate(xs):
        groups.setdefault(tuple(x.shape[1:]), []).append(i)
    out: list[Any] = [None] * len(xs)
    for idx in groups.values():
        if len(idx) == 1:
            out[idx[0]] = net(xs[idx[0]])
            continue
        sizes = [xs[i].shape[0] for i in idx]
        y = net(torch.cat([xs[i] for i in idx], 0))
        parts = ([list(p) for p in zip(*(t.split(sizes, 0) for t in y))]
                 if isinstance(y, (list, tuple)) else list(y.split(sizes, 0)))
        for i, p in zip(idx, parts):
            out[i] = p
    return out


class ScheduledLR:
    """``lr = base_lr * fn(step)`` on every param group of ``opt``: what ``LambdaLR`` computes,
    without its check that ``optimizer.step()`` ran first (the loop steps the schedule every
    iteration, also where a framework skipped an optimizer; that check only warned). Its
    ``state_dict`` reads the ``last_epoch`` / ``base_lrs`` of a ``LambdaLR`` checkpoint too.

    >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    >>> s = ScheduledLR(opt, linear_decay(1, 3)); s.step(); s.step(); opt.param_groups[0]["lr"]
    0.75
    """

    def __init__(self, opt: torch.optim.Optimizer, fn: Callable[[int], float]) -> None:
        self.opt, self.fn = opt, fn
        self.base_lrs = [g["lr"] for g in opt.param_groups]
        self.last_epoch = 0
        self._apply()

    def _apply(self) -> None:
        for g, base in zip(self.opt.param_groups, self.base_lrs):
            g["lr"] = base * self.fn(self.last_epoch)

    def step(self) -> None:
        self.last_epoch += 1
        self._apply()

    def state_dict(self) -> dict[str, Any]:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs)}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.last_epoch = int(sd["last_epoch"])
        self.base_lrs = [float(v) for v in sd.get("base_lrs", self.base_lrs)]
        self._apply()


#: ``compile_mode`` values (``torch.compile``'s modes; ``reduce-overhead`` uses CUDA graphs)
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def make_adam(params: list[nn.Parameter], device: torch.device, **kw: Any) -> torch.optim.Adam:
    """Adam with the fastest kernel the device has: ``fused`` on CUDA, ``foreach`` elsewhere
    (same update rule as the per-parameter loop, to rounding)."""
    if device.type == "cuda":
        return torch.optim.Adam(params, fused=True, **kw)
    return torch.optim.Adam(params, foreach=True, **kw)


class GANFramework:
    """Base class: builds nets (``build_networks``), Adam optimizers per group, schedulers.

    Subclasses define ``build_networks() -> dict``, ``optimizer_groups() -> dict[str, list[str]]``,
    ``train_step`` and ``generate``; optionally ``configure(cfg, preset)`` to set their recipe,
    and next to their code: ``Params`` (the config's ``fw`` section, a :class:`FrameworkConfig`),
    ``loss_defaults`` (``LossWeights`` values every preset sets) and ``search_space`` (what Ray
    Tune searches by default: ``{"loss.gan": ("uniform", 0.5, 2.0), ...}`` by dotted config key).
    """

    name: str = "base"
    paired: bool = True
    Params: ClassVar[type[FrameworkConfig]] = FrameworkConfig
    loss_defaults: ClassVar[dict[str, float]] = {}
    search_space: ClassVar[dict[str, tuple[str, float, float]]] = {}

    def __init__(self, cfg: "TrainConfig", device: str | torch.device = "cpu") -> None:
        self.cfg = cfg
        self.device = torch.device(device)
        self.nets: dict[str, nn.Module] = self.build_networks()
        for net in self.nets.values():
            init_weights(net, cfg.model.init_type, cfg.model.init_gain)
            for m in net.modules():
                if hasattr(m, "zero_last"):  # a residual generator starts as the identity
                    m.zero_last()
            net.to(self.device)
            if self._channels_last:
                net.to(memory_format=torch.channels_last)
        # ``fwd``: what trains (DDP/compiled); ``frozen``: used where no gradient sync is wanted
        # (a discriminator judging the generator's output during the generator update).
        self.fwd: dict[str, Callable[..., Any]] = dict(self.nets)
        self.frozen: dict[str, Callable[..., Any]] = dict(self.nets)
        # optimizers and schedulers are built on first use (``opts`` / ``scheds``): a model
        # loaded for inference never needs them, and building the first Adam imports
        # torch._dynamo (seconds of CPU per evaluate / register / serve process)
        self._opts: dict[str, torch.optim.Optimizer] | None = None
        self._scheds: dict[str, ScheduledLR] = {}
        if cfg.amp == "bf16" or (cfg.amp == "auto" and self.device.type == "cuda"):
            self.amp_dtype: torch.dtype | None = torch.bfloat16
        elif cfg.amp in ("auto", "off"):
            self.amp_dtype = None
        else:
            raise ValueError(f"config field amp: expected auto | bf16 | off, got {cfg.amp!r}")
        if cfg.compile_mode not in COMPILE_MODES:
            raise ValueError(f"config field compile_mode: expected one of {' | '.join(COMPILE_MODES)}, "
                             f"got {cfg.compile_mode!r}")
        if cfg.compile:
            self.fwd = {k: self._compiled(v) for k, v in self.fwd.items()}
            self.frozen = {k: self._compiled(v) for k, v in self.frozen.items()}

    @property
    def opts(self) -> dict[str, torch.optim.Optimizer]:
        """One Adam per ``optimizer_groups()`` group (built on first access)."""
        if self._opts is None:
            o = self.cfg.optim
            self._opts = {
                group: make_adam([p for n in names for p in self.nets[n].parameters()],
                                 self.device, lr=o.lr, betas=(o.beta1, o.beta2))
                for group, names in self.optimizer_groups().items()
            }
            self._scheds = {group: ScheduledLR(opt, linear_decay(o.steps_constant, o.steps_decay))
                            for group, opt in self._opts.items()}
        return self._opts

    @property
    def scheds(self) -> dict[str, ScheduledLR]:
        """Each optimizer's learning-rate schedule (built with :attr:`opts`)."""
        _ = self.opts
        return self._scheds

    # -- to be defined by subclasses ---------------------------------------------------------
    @classmethod
    def configure(cls, cfg: "TrainConfig", preset: str) -> None:
        """Set the framework's published recipe on a preset config (in place)."""

    def build_networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def optimizer_groups(self) -> dict[str, list[str]]:
        raise NotImplementedError

    def train_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        raise NotImplementedError

    def generate(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Unconditional samples; conditional frameworks translate an input instead."""
        raise ValueError(f"{self.name}.sample: framework {self.name!r} is conditional (it translates "
                         f"a task {self.cfg.task.name!r} input with generate(x)); sampling needs an "
                         "unconditional framework (dcgan or lapgan with task 'synth')")

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # -- shared machinery --------------------------------------------------------------------
    @property
    def _channels_last(self) -> bool:
        return self.cfg.channels_last and self.cfg.model.spatial_dims == 2

    def networks(self) -> dict[str, nn.Module]:
        return self.nets

    def batch_keys(self) -> frozenset[str]:
        """Batch entries ``train_step`` reads: ``A`` and ``B``, plus ``labels`` when a label loss
        (``loss.shape``, or a source-label one: ``loss.shape_consistency``,
        ``loss.segment_consistency``) is on. Only these are read from the shards and sent to the
        device."""
        from gan_core.losses import optional_terms

        keys = {"A", "B"}
        if any(getattr(self.cfg.loss, k) > 0
               for k in (*optional_terms("label"), *optional_terms("source_label"))):
            keys.add("labels")
        return frozenset(keys)

    def _compiled(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        return torch.compile(fn, mode=self.cfg.compile_mode)

    def wrap_networks(self, fn: Callable[[nn.Module], Any], names: list[str] | None = None) -> None:
        """Wrap trainable nets, e.g. with DDP (``ray.train.torch.prepare_model``)."""
        for k in names or list(self.nets):
            wrapped = fn(self.nets[k])
            self.fwd[k] = self._compiled(wrapped) if self.cfg.compile else wrapped

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def to_device(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        fmt = torch.channels_last if self._channels_last else torch.contiguous_format
        out = {}
        for k, v in batch.items():
            if isinstance(v, Tensor):
                v = v.to(self.device, non_blocking=True)
                if v.dim() == 4:
                    v = v.contiguous(memory_format=fmt)
            out[k] = v
        return out

    @staticmethod
    def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
        for net in nets:
            for p in net.parameters():
                p.requires_grad_(flag)

    def step_schedulers(self) -> None:
        for s in self.scheds.values():
            s.step()

    def lr(self) -> float:
        return next(iter(self.opts.values())).param_groups[0]["lr"]

    def train(self, mode: bool = True) -> None:
        for net in self.nets.values():
            net.train(mode)

    @torch.no_grad()
    def infer(self, net_name: str, x: Tensor) -> Tensor:
        """Eval-mode forward of one net (autocast as configured), output in float32."""
        net = self.nets[net_name]
        was_training = net.training
        net.eval()
        try:
            x = x.to(self.device)
            if self._channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with self.autocast():
                y = net(x)
            return y.float().contiguous()
        finally:
            net.train(was_training)

    def state_dict(self) -> dict[str, Any]:
        return {
            "framework": self.name,
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "opts": {k: v.state_dict() for k, v in self.opts.items()},
            "scheds": {k: v.state_dict() for k, v in self.scheds.items()},
            "extra": self.extra_state(),
        }

    def load_state_dict(self, sd: dict[str, Any], *, weights_only: bool = False) -> None:
        if sd.get("framework") != self.name:
            raise ValueError(f"checkpoint is for framework {sd.get('framework')!r}, not {self.name!r}")
        for k, net in self.nets.items():
            net.load_state_dict(sd["nets"][k])
        if weights_only:
            return
        for k, opt in self.opts.items():
            opt.load_state_dict(sd["opts"][k])
        for k, s in self.scheds.items():
            s.load_state_dict(sd["scheds"][k])
        self.load_extra_state(sd.get("extra", {}))


class ImagePool:
    """History of generated images (Shrivastava et al.), as in Zhu et al.'s CycleGAN.

    With ``size`` 0 it returns its input. Once full, each image is, with probability 1/2,
    swapped for a random stored one. Its RNG is its own, so checkpoints resume it exactly.
    """

    def __init__(self, size: int = 50, seed: int = 0) -> None:
        self.size = size
        self.images: list[Tensor] = []
        self.gen = torch.Generator().manual_seed(seed)

    def query(self, images: Tensor) -> Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand(1, generator=self.gen).item() > 0.5:
                idx = int(torch.randint(0, self.size, (1,), generator=self.gen).item())
                out.append(self.images[idx].clone())
                self.images[idx] = img.clone()
            else:
                out.append(img)
        return torch.cat(out, 0)

    def state_dict(self) -> dict[str, Any]:
        return {"size": self.size, "images": [t.cpu() for t in self.images],
                "gen": self.gen.get_state()}

    def load_state_dict(self, sd: dict[str, Any], device: torch.device | str = "cpu") -> None:
        self.size = sd["size"]
        self.images = [t.to(device) for t in sd["images"]]
        self.gen.set_state(sd["gen"].cpu())  # a CUDA map_location moves it; set_state needs CPU
