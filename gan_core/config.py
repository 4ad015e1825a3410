"""Typed training configuration: dataclasses, presets and YAML loading.

One ``TrainConfig`` describes a run completely; it is what checkpoints store, what MLflow logs as
params and what Ray Tune overrides (``apply_overrides(cfg, {"loss.cycle": 5.0})``).

>>> cfg = preset("demo", "pix2pix")
>>> cfg.loss.l1
100.0
>>> cfg = apply_overrides(cfg, {"loss.l1": 50, "optim.lr": 1e-4})
>>> (cfg.loss.l1, cfg.optim.lr)
(50.0, 0.0001)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class LossWeights:
    """Weights of the loss terms (the survey's Table 5). 0 disables a term."""

    gan: float = 1.0        # adversarial term weight
    l1: float = 100.0       # pix2pix lambda_L1 (image term)
    cycle: float = 10.0     # CycleGAN lambda_cycle (A->B->A and B->A->B)
    identity: float = 0.5   # CycleGAN lambda_identity, as a fraction of lambda_cycle (Zhu et al.)
    # further image-pair terms of Table 5 (gan_core.loss_terms), off by default; pix2pix applies
    # them to (G(A), B), CycleGAN to both cycle reconstructions
    gradient: float = 0.0   # L4: L1 between finite-difference gradients (edges)
    sharpness: float = 0.0  # L5: L1 weighted towards low-contrast regions
    structure: float = 0.0  # L8: 1 - SSIM (Gaussian window 11, sigma 1.5)
    frequency: float = 0.0  # L11: L1 between orthonormal k-space spectra
    regulation: float = 0.0  # L12: row/column mean and std profiles
    # feature/label terms of Table 5, off by default (pix2pix and CycleGAN)
    shape: float = 0.0       # L6: segmenter (trained on the real labels) agrees with the labels
    perceptual: float = 0.0  # L7: L1 between encoder features of G(A) and B
    style: float = 0.0       # L9: Gram-matrix style + feature content distance
    self_reg: float = 0.0    # L10: generated image stays close to its source (same modality)
    feature_encoder: str = ""  # perceptual/style extractor: a local ConvEncoder state_dict file;
    #                            "" = the framework's own discriminator features (no download)
    # UNIT (Liu et al.): VAE reconstruction, KL of the shared latent, cycle KL
    recon: float = 10.0
    kl: float = 0.01
    cycle_kl: float = 0.01


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
    norm: str = "instance"
    dropout: bool = False
    residual: bool = False   # G(x) = clamp(x + net(x)), net starts at 0 (same-modality tasks)
    z_dim: int = 100         # DCGAN / LAPGAN: noise dimension (Radford et al.: 100)
    levels: int = 3          # LAPGAN: pyramid levels K (K + 1 generators)
    init_type: str = "normal"  # normal (N(0, gain), the GAN papers) | kaiming | xavier | orthogonal
    init_gain: float = 0.02


@dataclass
class DataConfig:
    """How samples are drawn from packed shards."""

    image_size: int = 256                 # in-plane crop (2D) / patch edge (3D, in-plane)
    patch_depth: int = 32                 # 3D patches only: slices per patch
    batch_size: int = 1
    num_workers: int = 0
    flip: bool = True                     # random left-right flip augmentation
    min_body_fraction: float = 0.05       # skip slices with less body than this


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
    """What is mapped to what (``gan_core.tasks``) and the parameters of its degradation."""

    name: str = "mr2ct"            # mr2ct | ct2mr | labels2ct | kspace | lowdose | superres | synth
    n_classes: int = 10            # labels2ct: label values 0..n_classes-1 (the phantom's tissues)
    modality: str = "ct"           # synth: which modality to synthesize
    acceleration: int = 4          # kspace: undersampling factor (fastMRI: 4 or 8)
    center_fraction: float = 0.08  # kspace: fully sampled centre (fastMRI: 0.08 at 4x, 0.04 at 8x)
    mask: str = "random"           # kspace: random | equispaced (fastMRI mask functions)
    dose: float = 0.25             # lowdose: fraction of the full-dose photon count
    photons: float = 1e5           # lowdose: full-dose incident photons per detector bin (I0)
    factor: int = 2                # superres: through-plane downsampling factor


@dataclass
class TrainConfig:
    """A whole run."""

    framework: str = "cyclegan"
    gan_mode: str = "lsgan"               # vanilla | lsgan | hinge | wgangp
    pool_size: int = 50                   # CycleGAN image pool
    seed: int = 0
    amp: str = "auto"                     # auto (bf16 on CUDA) | bf16 | off
    channels_last: bool = True
    compile: bool = False
    log_every: int = 50
    checkpoint_every: int = 1000
    val_every: int = 0                    # 0: validate only at the end
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    task: TaskConfig = field(default_factory=TaskConfig)

    @property
    def total_steps(self) -> int:
        return self.optim.steps_constant + self.optim.steps_decay

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Dotted-key view, e.g. for MLflow params: ``{"loss.l1": 100.0, ...}``."""
        out: dict[str, Any] = {}

        def walk(prefix: str, d: dict) -> None:
            for k, v in d.items():
                if isinstance(v, dict):
                    walk(f"{prefix}{k}.", v)
                else:
                    out[f"{prefix}{k}"] = v

        walk("", self.to_dict())
        return out


PRESETS = ("demo", "full", "tiny")


def preset(name: str, framework: str, task: str | None = None) -> TrainConfig:
    """The named preset for a framework.

    - ``full``: the published recipe at 256 px (Isola et al. / Zhu et al.): 64 filters, batch 1,
      100k constant + 100k decay iterations; the framework sets its own G/D/norm/GAN mode.
    - ``demo``: CPU minutes: a full-resolution ConvNet generator (Kaiming init, lr 1e-3),
      PatchGAN, 32 px crops, batch 8, 1500 iterations; the framework's objective unchanged.
    - ``tiny``: seconds, for tests.
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    from gan_core.frameworks import get_framework

    cfg = TrainConfig(framework=framework)
    if task is not None:
        cfg.task.name = task
    if name in ("demo", "tiny"):
        # small and fast on a CPU: a full-resolution ConvNet generator (Kaiming init) learns the
        # MR -> CT intensity translation in minutes, where the published U-Net / ResNet with
        # N(0, 0.02) init needs hours (measured on the phantom: docs/benchmarks.md)
        m = cfg.model
        m.generator, m.g_filters, m.g_layers, m.norm, m.init_type = "convnet", 32, 6, "none", "kaiming"
        m.d_filters, m.d_layers = 32, 3
        cfg.optim.lr = 1e-3
    if name == "demo":
        cfg.data = DataConfig(image_size=32, batch_size=8, min_body_fraction=0.1)
        cfg.optim.steps_constant, cfg.optim.steps_decay = 750, 750
        cfg.log_every, cfg.checkpoint_every = 100, 500
    elif name == "tiny":
        cfg.data = DataConfig(image_size=32, batch_size=2)
        cfg.model.g_filters, cfg.model.g_layers, cfg.model.d_filters = 8, 3, 8
        cfg.optim.steps_constant, cfg.optim.steps_decay = 4, 4
        cfg.log_every, cfg.checkpoint_every = 2, 4
    get_framework(framework).configure(cfg, name)
    set_task_defaults(cfg)
    return cfg


def set_task_defaults(cfg: TrainConfig, keep: tuple[str, ...] = ()) -> None:
    """Set ``model.in_channels`` from the task (a one-hot label map has ``task.n_classes``
    channels; unconditional synthesis none), the task's loss weights (``Task.loss_defaults``) and
    model choices (``Task.model_defaults``), except the dotted keys in ``keep`` (overrides win)."""
    from gan_core.tasks import build_task

    task = build_task(cfg.task)
    if "model.in_channels" not in keep:
        cfg.model.in_channels = task.in_channels
    if "model.out_channels" not in keep:
        cfg.model.out_channels = 1
    for section, defaults in (("loss", task.loss_defaults), ("model", task.model_defaults)):
        for k, v in defaults.items():
            if f"{section}.{k}" not in keep:
                setattr(getattr(cfg, section), k, v)


def _coerce(tp: Any, value: Any, where: str) -> Any:
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


def _update(obj: Any, data: dict[str, Any], prefix: str = "") -> None:
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
            _update(current, value, where + ".")
        else:
            setattr(obj, key, _coerce(hints[key], value, where))


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a config from a (YAML) mapping: optional ``preset`` + ``framework`` then overrides."""
    data = dict(data)
    name = data.pop("preset", None)
    framework = data.get("framework", "cyclegan")
    task = data.get("task", {}).get("name") if isinstance(data.get("task"), dict) else None
    cfg = preset(name, framework, task) if name else TrainConfig(framework=framework)
    _update(cfg, data)
    if name and isinstance(data.get("task"), dict):  # task parameters may change the channels
        set_task_defaults(cfg, keep=tuple(_dotted(data)))
    return cfg


def _dotted(d: dict[str, Any], prefix: str = "") -> list[str]:
    out: list[str] = []
    for k, v in d.items():
        out += _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


def load_config(path: str | Path) -> TrainConfig:
    """Load a YAML config file (see ``from_dict``); errors name the file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at top level, got {type(data).__name__}")
    try:
        return from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return a copy with dotted-key overrides applied (``{"loss.cycle": 5}``)."""
    cfg = from_dict(cfg.to_dict())  # a deep copy, through the validated path
    for dotted, value in overrides.items():
        nested: dict[str, Any] = {}
        node = nested
        parts = dotted.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
        _update(cfg, nested)
    if any(k.startswith("task.") for k in overrides):
        set_task_defaults(cfg, keep=tuple(overrides))
    return cfg


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """``["loss.l1=50", "data.batch_size=8"]`` -> dict (values parsed as YAML scalars)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out
