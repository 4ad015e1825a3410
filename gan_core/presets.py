"""Configs built from the plug-ins: presets, YAML loading and dotted-key overrides.

``gan_core.config`` holds the dataclasses; this module fills them in with what the framework and
the task declare next to their code: their ``Params`` (the ``fw`` and ``task`` sections), the
framework's recipe (``configure``) and loss defaults, the task's channels and loss/model defaults.
Frameworks and tasks are found by name in their registries, so one registered at runtime (a test
file's toy framework) works here too.

>>> cfg = preset("demo", "pix2pix")
>>> cfg.loss.image
100.0
>>> cfg = apply_overrides(cfg, {"loss.image": 50, "optim.lr": 1e-4})
>>> (cfg.loss.image, cfg.optim.lr)
(50.0, 0.0001)
>>> preset("demo", "cyclegan").fw.identity
0.5
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


from gan_core.config import DataConfig, TrainConfig, dotted, nest, update
from gan_core.frameworks import get_framework
from gan_core.tasks import build_task, task_config

__all__ = ["PRESETS", "STRUCTURE_LOSS", "UNPAIRED_LOSS", "base_config", "preset", "set_task_defaults", "from_dict", "load_config",
           "apply_overrides", "with_total_steps", "config_from_yaml"]

PRESETS = ("demo", "full", "tiny", "structure", "unpaired")

#: the ``structure`` preset's Table-5 terms (``gan_core.losses.consistency``): a translation vs
#: its own input
STRUCTURE_LOSS: dict[str, float] = {"mind": 2.0, "shape_consistency": 1.0}
#: the ``unpaired`` preset's term on top: the CT domain's tissue values for the MR's tissues
#: (needs ``fw.segment_stats``, which the pipeline's train step and ``medgan train`` read from an
#: unpaired pack's ``ct_tissue_stats.json``)
UNPAIRED_LOSS: dict[str, float] = {"tissue_value": 100.0}


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"config field {field}: expected a name, got {value!r}")
    return value


def base_config(framework: str = "cyclegan", task: str = "mr2ct") -> TrainConfig:
    """The dataclass defaults with the framework's and the task's own ``Params`` (no recipe).

    >>> base_config("cyclegan", "kspace").task.acceleration
    4
    """
    fw_params = get_framework(_name(framework, "framework")).Params()
    return TrainConfig(framework=framework, fw=fw_params,
                       task=task_config(_name(task, "task.name")))


def preset(name: str, framework: str, task: str | None = None) -> TrainConfig:
    """The named preset for a framework.

    - ``full``: the published recipe at 256 px (Isola et al. / Zhu et al.): 64 filters, batch 1,
      100k constant + 100k decay iterations; the framework sets its own G/D/norm/GAN mode.
    - ``demo``: CPU minutes: a full-resolution ConvNet generator (Kaiming init, lr 1e-3),
      PatchGAN, 32 px crops, batch 8, 1500 iterations; the framework's objective unchanged.
    - ``tiny``: seconds, for tests.
    - ``structure``: unpaired frameworks only (CycleGAN, UNIT): ``demo`` plus what makes them
      learn MR -> CT from unpaired data (measured in ``docs/results.md``): the structure-
      consistency terms between each translation and its own input (:data:`STRUCTURE_LOSS`) and
      the framework's own changes (its ``configure(cfg, "structure")``).
    - ``unpaired``: ``structure`` plus the CT domain's tissue values for the source's tissues
      (:data:`UNPAIRED_LOSS`, ``loss.tissue_value``), lr 2e-3 and 2500 iterations: the CycleGAN
      that beats the baseline on the unpaired phantom benchmark (``docs/results.md``). Needs the
      target domain's tissue statistics (``fw.segment_stats``, from an unpaired pack).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {PRESETS}")
    fw_cls = get_framework(framework)
    cfg = base_config(framework, task if task is not None else "mr2ct")
    if name in ("structure", "unpaired") and fw_cls.paired:
        raise ValueError(f"preset {name!r} is for unpaired frameworks (cyclegan, unit); "
                         f"{framework!r} trains on pairs")
    recipe, name = name, "structure" if name == "unpaired" else name
    if name in ("demo", "tiny", "structure"):
        # small and fast on a CPU: a full-resolution ConvNet generator (Kaiming init) learns the
        # MR -> CT intensity translation in minutes, where the published U-Net / ResNet with
        # N(0, 0.02) init needs hours (measured on the phantom: docs/benchmarks.md)
        m = cfg.model
        m.generator, m.g_filters, m.g_layers, m.norm, m.init_type = "convnet", 32, 6, "none", "kaiming"
        m.d_filters, m.d_layers = 32, 3
        cfg.optim.lr = 1e-3
    if name in ("demo", "structure"):
        cfg.data = DataConfig(image_size=32, batch_size=8, min_body_fraction=0.1)
        cfg.optim.steps_constant, cfg.optim.steps_decay = 750, 750
        cfg.log_every, cfg.checkpoint_every = 100, 500
    if name == "structure":  # half-width nets on 64 px whole slices (the phantom benchmark's
        # size: the discriminator sees the whole head), batch 2, 400 iterations (CPU minutes)
        cfg.model.g_filters, cfg.model.d_filters = 16, 16
        cfg.data.image_size, cfg.data.batch_size = 64, 2
        cfg.optim.steps_constant, cfg.optim.steps_decay = 200, 200
    elif name == "tiny":
        cfg.data = DataConfig(image_size=32, batch_size=2)
        cfg.model.g_filters, cfg.model.g_layers, cfg.model.d_filters = 8, 3, 8
        cfg.optim.steps_constant, cfg.optim.steps_decay = 4, 4
        cfg.log_every, cfg.checkpoint_every = 2, 4
        cfg.log_every_s = 0.0  # tests see a report at every log step
    fw_cls.configure(cfg, name)
    update(cfg.loss, dict(fw_cls.loss_defaults), "loss.")
    set_task_defaults(cfg)
    if name == "structure":
        update(cfg.loss, dict(STRUCTURE_LOSS), "loss.")
    if recipe == "unpaired":
        update(cfg.loss, dict(UNPAIRED_LOSS), "loss.")
        cfg.optim.lr = 2e-3
        cfg.optim.steps_constant, cfg.optim.steps_decay = 1250, 1250
    return cfg


def set_task_defaults(cfg: TrainConfig, keep: tuple[str, ...] = ()) -> None:
    """Set ``model.in_channels`` from the task (a one-hot label map has ``task.n_classes``
    channels; unconditional synthesis none), the task's loss weights (``Task.loss_defaults``) and
    model choices (``Task.model_defaults``), except the dotted keys in ``keep`` (overrides win)."""
    task = build_task(cfg.task)
    if "model.in_channels" not in keep:
        cfg.model.in_channels = task.in_channels
    if "model.out_channels" not in keep:
        cfg.model.out_channels = 1
    for section, defaults in (("loss", task.loss_defaults), ("model", task.model_defaults)):
        update(getattr(cfg, section),
               {k: v for k, v in defaults.items() if f"{section}.{k}" not in keep}, f"{section}.")


def from_dict(data: dict[str, Any]) -> TrainConfig:
    """Build a config from a (YAML) mapping: optional ``preset`` + ``framework`` (+ ``task.name``),
    then the rest as overrides. The ``fw`` and ``task`` sections are the named framework's and
    task's ``Params``.

    >>> from_dict({"framework": "lapgan", "task": {"name": "synth"}, "fw": {"levels": 2}}).fw.levels
    2
    """
    data = dict(data)
    name = data.pop("preset", None)
    framework = _name(data.get("framework", "cyclegan"), "framework")
    task_section = data.get("task")
    task = task_section.get("name") if isinstance(task_section, dict) else None
    if task is not None:
        _name(task, "task.name")
    cfg = preset(name, framework, task) if name else base_config(framework, task or "mr2ct")
    update(cfg, data)
    if name and isinstance(task_section, dict):  # task parameters may change the channels
        set_task_defaults(cfg, keep=tuple(dotted(data)))
    return cfg


def load_config(path: str | Path) -> TrainConfig:
    """Load a YAML config file (see ``from_dict``); errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {path}") from None
    try:
        return config_from_yaml(text)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def config_from_yaml(text: str) -> TrainConfig:
    """A config from YAML text (``from_dict`` of its mapping); ValueError says what is wrong.

    >>> config_from_yaml("{preset: tiny, framework: pix2pix, loss: {image: 50}}").loss.image
    50.0
    """
    import yaml  # here, not at the top: training needs only torch + numpy

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"expected a mapping at top level, got {type(data).__name__}")
    return from_dict(data)


def apply_overrides(cfg: TrainConfig, overrides: dict[str, Any]) -> TrainConfig:
    """Return a copy with dotted-key overrides applied (``{"loss.cycle": 5}``).

    Switching ``framework`` or ``task.name`` starts that section over from the new plug-in's
    ``Params`` defaults (plus the overrides given for it); a task switch also re-applies the
    task's channels and defaults, except for keys overridden here.

    >>> cfg = apply_overrides(preset("tiny", "pix2pix"), {"task.name": "kspace"})
    >>> (cfg.task.acceleration, cfg.loss.frequency)
    (4, 10.0)
    """
    nested = nest(overrides)
    data = cfg.to_dict()
    framework = nested.get("framework", cfg.framework)
    if framework != cfg.framework:
        data["framework"], data["fw"] = framework, {}
    task_section = nested.get("task")
    task = task_section.get("name", cfg.task.name) if isinstance(task_section, dict) else cfg.task.name
    if task != cfg.task.name:
        data["task"] = {"name": task}
    out = from_dict(data)  # a deep copy (with the switched sections), through the validated path
    update(out, nested)
    if any(k.startswith("task.") for k in overrides):
        set_task_defaults(out, keep=tuple(overrides))
    return out


def with_total_steps(cfg: TrainConfig, steps: int) -> TrainConfig:
    """Copy of ``cfg`` running ``steps`` iterations, keeping the constant/decay LR ratio.

    The one ``--steps`` rule of the ``medgan`` CLI and of the pipeline steps.

    >>> c = with_total_steps(preset("demo", "pix2pix"), 10)
    >>> c.total_steps, c.optim.steps_constant
    (10, 5)
    """
    try:
        n = int(steps)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or n != steps:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    steps = n
    o = cfg.optim
    const = round(steps * o.steps_constant / max(o.steps_constant + o.steps_decay, 1))
    const = min(max(const, 0), steps)
    return apply_overrides(cfg, {"optim.steps_constant": const, "optim.steps_decay": steps - const})
