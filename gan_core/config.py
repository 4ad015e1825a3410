"""Typed training configuration: the dataclasses and generic helpers (a leaf: the stdlib; yaml is
imported only by the functions that read or write it).

One ``TrainConfig`` describes a run completely; it is what checkpoints store, what MLflow logs as
params (``flat()``) and what Ray Tune overrides. Two sections belong to plug-ins: ``task`` is the
task's own ``Params`` (a :class:`TaskConfig`) and ``fw`` the framework's (a
:class:`FrameworkConfig`), declared next to their code; ``gan_core.presets`` builds configs with
the right ones (``preset``, ``from_dict``, ``load_config``, ``apply_overrides``).

>>> cfg = TrainConfig(framework="pix2pix")
>>> cfg.loss.image, cfg.flat()["optim.lr"]
(100.0, 0.0002)
"""

from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["LossWeights", "ModelConfig", "DataConfig", "OptimConfig", "TaskConfig",
           "FrameworkConfig", "TrainConfig", "coerce", "update", "save_config", "dotted", "nest",
           "parse_set"]


@dataclass
class LossWeights:
    """Weights of the survey's Table 5 loss terms, keyed like ``gan_core.losses.TERMS``; 0 disables
    a term. gan/image/cycle are applied by the frameworks' own objectives (pix2pix: gan + image,
    CycleGAN and UNIT: gan + cycle); the others, off by default, are added by
    ``gan_core.frameworks.base.GeneratorTerms`` (pix2pix to (G(A), B), CycleGAN and UNIT to both
    cycle reconstructions)."""

    gan: float = 1.0          # L1: adversarial term weight
    image: float = 100.0      # L2: pix2pix lambda_L1 (L1 between G(A) and B)
    cycle: float = 10.0       # L3: CycleGAN / UNIT lambda_cycle (A->B->A and B->A->B)
    gradient: float = 0.0     # L4: L1 between finite-difference gradients (edges)
    sharpness: float = 0.0    # L5: L1 weighted towards low-contrast regions
    shape: float = 0.0        # L6: tissue means agree with the label map's (needs labels)
    perceptual: float = 0.0   # L7: L1 between encoder features of G(A) and B
    structure: float = 0.0    # L8: 1 - SSIM (Gaussian window 11, sigma 1.5)
    style: float = 0.0        # L9: Gram-matrix style + feature content distance
    self_reg: float = 0.0     # L10: generated image stays close to its source (same modality)
    frequency: float = 0.0    # L11: L1 between orthonormal k-space spectra
    regulation: float = 0.0   # L12: row/column mean and std profiles
    # unpaired, source-referenced (a translation vs its OWN input; gan_core.losses.consistency)
    mind: float = 0.0         # L8: L1 between MIND descriptors of G(x) and x
    gradient_consistency: float = 0.0  # L4: 1 - local NCC^2 of the gradients of G(x) and x
    shape_consistency: float = 0.0     # L6: 1 - correlation ratio of G(x) over x's tissue labels
    segment_consistency: float = 0.0   # L6: CE of a target-domain segmentor on G(x) vs x's labels
    tissue_value: float = 0.0          # L6: L1 of G(x) to the target domain's means of x's tissues


@dataclass
class ModelConfig:
    """Network choices; names resolve through ``gan_core.models.build_generator/discriminator``."""

    generator: str = "resnet"
    discriminator: str = "patchgan"
    spatial_dims: int = 2
    in_channels: int = 1
    out_channels: int = 1
    g_filters: int = 64
    d_filters: int = 64
    n_blocks: int = 9        # ResNet generator
    n_downsampling: int = 2  # ResNet generator: stride-2 stages before the blocks
    g_layers: int = 6        # ConvNet generator: full-resolution conv layers
    num_downs: int = 8       # U-Net generator (input size divisible by 2**num_downs)
    d_layers: int = 3        # PatchGAN n_layers
    norm: str = "instance"   # the generator's normalisation
    d_norm: str = "instance"  # the discriminator's own (instance: Zhu et al.'s PatchGAN)
    dropout: bool = False
    residual: bool = False   # G(x) = clamp(x + net(x)), net starts at 0 (same-modality tasks)
    init_type: str = "normal"  # normal (N(0, gain), the GAN papers) | kaiming | xavier | orthogonal
    init_gain: float = 0.02
    feature_encoder: str = ""  # loss.perceptual / loss.style extractor: a local ConvEncoder
    #                            state_dict file; "" = the framework's own discriminator features


@dataclass
class DataConfig:
    """How samples are drawn from packed shards."""

    image_size: int = 256                 # in-plane crop (2D) / patch edge (3D, in-plane)
    patch_depth: int = 32                 # 3D patches only: slices per patch
    batch_size: int = 1
    num_workers: int = 0                  # 2D: batches read ahead by this many threads (0: in line)
    flip: bool = True                     # random left-right flip augmentation
    min_body_fraction: float = 0.05       # skip slices with less body than this
    device_resident: bool = False         # 2D: keep the training shards on the device (int16)


@dataclass
class OptimConfig:
    """Adam with a constant-then-linear-decay schedule (Isola et al.; Zhu et al.)."""

    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    steps_constant: int = 100_000
    steps_decay: int = 100_000


@dataclass
class TaskConfig:
    """What is mapped to what: the task's name (``gan_core.tasks``). Each task subclasses it as
    its ``Params`` with the parameters of its degradation (``task.acceleration`` ...)."""

    name: str = "mr2ct"


@dataclass
class FrameworkConfig:
    """Base of each framework's own ``Params`` (``fw.identity``, ``fw.z_dim`` ...); empty here."""


@dataclass
class TrainConfig:
    """A whole run."""

    framework: str = "cyclegan"
    gan_mode: str = "lsgan"               # vanilla | lsgan | hinge | wgangp
    seed: int = 0
    amp: str = "auto"                     # auto (bf16 on CUDA) | bf16 | off
    channels_last: bool = True
    compile: bool = False                 # torch.compile the networks (compile_mode)
    compile_mode: str = "default"         # default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs
    log_every: int = 50                   # steps between loss reads (history.jsonl)
    log_every_s: float = 10.0             # seconds between report() calls at log steps (0: every
                                          # log step); above Ray Train's 2 s report poll
    checkpoint_every: int = 1000
    sample_every_s: float = 300.0         # under Ray: seconds between MLflow sample figures
    #                                       (drawn at a report; always at the last step; 0: every report)
    val_every: int = 0                    # 0: validate only at the end
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    fw: FrameworkConfig = field(default_factory=FrameworkConfig)
    task: TaskConfig = field(default_factory=TaskConfig)

    @property
    def total_steps(self) -> int:
        return self.optim.steps_constant + self.optim.steps_decay

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. for MLflow params: ``{"loss.image": 100.0, ...}``."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[f"{prefix}{k}"] = v

        walk("", self.to_dict())
        return out


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as the field type ``tp`` (bool / int / float / str; other types unchanged), or a
    ValueError naming the field ``where``.

    >>> coerce(float, 5, "loss.image"), coerce(bool, "yes", "compile")
    (5.0, True)
    """
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ValueError(f"config field {where}: expected a boolean, got {value!r}")
    if tp in (int, float, str):
        try:
            if tp is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return tp(value)
        except (TypeError, ValueError):
            raise ValueError(f"config field {where}: expected {tp.__name__}, got {value!r}") from None
    return value


def update(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
    """Set the fields of the dataclass ``obj`` (recursively) from a mapping, coercing values;
    ValueError naming an unknown or badly typed field.

    >>> w = LossWeights(); update(w, {"image": 50}); w.image
    50.0
    """
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ValueError(f"unknown config field {where!r}; expected one of {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"config field {where}: expected a mapping, got {value!r}")
            update(current, value, where + ".")
        else:
            setattr(obj, key, coerce(hints[key], value, where))


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write ``cfg`` as YAML (a temporary file renamed into place); ``gan_core.presets.load_config``
    reads it back."""
    import yaml

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)


def dotted(data: dict[str, Any], prefix: str = "") -> list[str]:
    """The dotted keys of a nested mapping.

    >>> dotted({"loss": {"image": 1}, "seed": 0})
    ['loss.image', 'seed']
    """
    out: list[str] = []
    for k, v in data.items():
        out += dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def nest(overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted-key overrides as a nested mapping.

    >>> nest({"loss.image": 50, "seed": 1})
    {'loss': {'image': 50}, 'seed': 1}
    """
    nested: dict[str, Any] = {}
    for key, value in overrides.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ValueError(f"config override {key!r}: {p!r} is a value, not a section")
        node[parts[-1]] = value
    return nested


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["loss.image=50", "data.batch_size=8"]`` -> dict (values parsed as YAML scalars)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
