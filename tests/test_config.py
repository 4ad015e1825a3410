import ast
import dataclasses
from pathlib import Path

import pytest

from gan_core.config import FrameworkConfig, LossWeights, TaskConfig, parse_set, save_config
from gan_core.presets import apply_overrides, from_dict, load_config, preset


def test_presets_set_the_published_recipes():
    p2p = preset("full", "pix2pix")
    assert (p2p.model.generator, p2p.model.norm, p2p.gan_mode) == ("unet", "batch", "vanilla")
    assert p2p.loss.image == 100 and p2p.data.image_size == 256 and p2p.data.batch_size == 1
    cyc = preset("full", "cyclegan")
    assert (cyc.model.generator, cyc.model.n_blocks, cyc.gan_mode, cyc.fw.pool_size) == ("resnet", 9, "lsgan", 50)
    assert (cyc.loss.cycle, cyc.fw.identity) == (10, 0.5)
    assert (cyc.optim.lr, cyc.optim.beta1, cyc.optim.beta2) == (2e-4, 0.5, 0.999)
    demo = preset("demo", "cyclegan")
    assert demo.data.image_size <= 128 and demo.model.g_filters < 64
    assert (demo.gan_mode, demo.fw.pool_size, demo.loss.cycle) == ("lsgan", 50, 10)  # objective kept
    assert demo.model.generator == "convnet" and demo.model.init_type == "kaiming"


def test_presets_pin_the_numbers_of_each_framework_and_task():
    """The values the presets produced before the fw/task sections existed, under their new keys."""
    flat = preset("demo", "pix2pix").flat()
    assert (flat["loss.image"], flat["loss.gan"], flat["loss.cycle"]) == (100.0, 1.0, 10.0)
    assert not [k for k in flat if k.startswith("fw.")]          # pix2pix has no parameters
    assert preset("demo", "cyclegan").flat()["fw.identity"] == 0.5
    unit = preset("tiny", "unit")
    assert (unit.fw.recon, unit.fw.kl, unit.fw.cycle_kl, unit.loss.cycle) == (10.0, 0.01, 0.01, 10.0)
    dc = preset("full", "dcgan", "synth")
    assert (dc.fw.z_dim, dc.loss.image, dc.data.image_size, dc.task.modality) == (100, 0.0, 64, "ct")
    lap = preset("full", "lapgan", "synth")
    assert (lap.fw.z_dim, lap.fw.levels, lap.loss.image) == (100, 3, 100.0)
    k = preset("demo", "pix2pix", "kspace")
    assert (k.loss.frequency, k.model.residual, k.task.acceleration, k.task.center_fraction,
            k.task.mask) == (10.0, True, 4, 0.08, "random")
    assert preset("demo", "pix2pix").loss.frequency == 0.0
    low = preset("tiny", "cyclegan", "lowdose")
    assert (low.task.dose, low.task.photons, low.model.residual) == (0.25, 1e5, True)
    assert preset("tiny", "pix2pix", "superres").task.factor == 2
    assert preset("tiny", "pix2pix", "labels2ct").task.n_classes == 10
    assert preset("tiny", "pix2pix").model.feature_encoder == ""
    assert "pool_size" not in preset("tiny", "pix2pix").flat()


def test_loss_weights_are_exactly_the_loss_table():
    from gan_core.losses import TERMS

    assert set(TERMS) == {f.name for f in dataclasses.fields(LossWeights)}
    assert list(TERMS) == [f.name for f in dataclasses.fields(LossWeights)]  # same order too


def test_unknown_preset_and_framework():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge", "pix2pix")
    with pytest.raises(KeyError, match="unknown framework 'nope'; available: .*pix2pix"):
        preset("demo", "nope")
    with pytest.raises(KeyError, match="unknown task 'ct2pet'; available: .*kspace"):
        preset("demo", "pix2pix", "ct2pet")


@pytest.mark.parametrize("fw, task", [("pix2pix", "mr2ct"), ("cyclegan", "lowdose"),
                                      ("unit", "ct2mr"), ("lapgan", "synth"),
                                      ("pix2pix", "kspace"), ("dcgan", "labels2ct")])
def test_yaml_roundtrip_keeps_fw_and_task_sections(tmp_path, fw, task):
    cfg = preset("tiny", fw, task)
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    back = load_config(path)
    assert back == cfg
    assert type(back.fw) is type(cfg.fw) and type(back.task) is type(cfg.task)
    assert not list(tmp_path.glob(".*tmp"))  # written through a temporary name


def test_yaml_roundtrip_and_errors(tmp_path):
    cfg = apply_overrides(preset("demo", "pix2pix"), {"loss.image": 42, "data.batch_size": 3})
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    back = load_config(path)
    assert back == cfg and back.loss.image == 42.0
    bad = tmp_path / "bad.yaml"
    bad.write_text("framework: pix2pix\nloss:\n  l1: 3\n")  # the old name of loss.image
    with pytest.raises(ValueError, match=r"bad.yaml.*loss.l1.*'image'"):
        load_config(bad)
    bad.write_text("framework: pix2pix\ndata:\n  batch_size: many\n")
    with pytest.raises(ValueError, match="data.batch_size: expected int"):
        load_config(bad)
    bad.write_text("framework: pix2pix\nfw:\n  identity: 0.5\n")  # a CycleGAN parameter
    with pytest.raises(ValueError, match=r"bad.yaml.*'fw.identity'"):
        load_config(bad)
    bad.write_text("framework: cyclegan\ntask:\n  name: mr2ct\n  acceleration: 8\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*'task.acceleration'"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_preset_plus_overrides():
    cfg = from_dict({"preset": "full", "framework": "cyclegan", "loss": {"cycle": 5},
                     "fw": {"identity": 0.1}})
    assert cfg.loss.cycle == 5.0 and cfg.model.n_blocks == 9 and cfg.fw.identity == 0.1
    cfg = from_dict({"framework": "pix2pix", "task": {"name": "kspace", "acceleration": 8}})
    assert (cfg.task.acceleration, cfg.task.center_fraction) == (8, 0.08)


def test_overrides_do_not_mutate_and_parse_set():
    base = preset("demo", "cyclegan")
    new = apply_overrides(base, parse_set(["loss.cycle=3.5", "compile=true", "fw.identity=0"]))
    assert new.loss.cycle == 3.5 and new.compile is True and new.fw.identity == 0.0
    assert base.loss.cycle == 10 and base.compile is False and base.fw.identity == 0.5
    assert base.flat()["loss.cycle"] == 10
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["oops"])


def test_switching_framework_or_task_takes_the_new_params():
    cfg = apply_overrides(preset("tiny", "cyclegan"), {"framework": "unit", "fw.kl": 0.5})
    assert (cfg.fw.recon, cfg.fw.kl) == (10.0, 0.5) and not hasattr(cfg.fw, "identity")
    cfg = apply_overrides(preset("tiny", "pix2pix", "kspace"), {"task.name": "superres",
                                                                "task.factor": 3})
    assert cfg.task.factor == 3 and not hasattr(cfg.task, "acceleration")
    with pytest.raises(ValueError, match="'task.factor'"):
        apply_overrides(preset("tiny", "pix2pix"), {"task.factor": 3})  # mr2ct has no factor


def test_a_framework_and_task_registered_at_runtime_work_by_name(tmp_path):
    """A toy framework/task defined here (not in the packages) is found by presets, YAML,
    the CLI's --framework choices and Tune's default space."""
    from gan_core.frameworks import FRAMEWORKS, available, get_framework, register
    from gan_core.frameworks.pix2pix import Pix2Pix
    from gan_core.tasks import TASKS
    from gan_core.tasks import register as register_task
    from gan_core.tasks.mr2ct import MRToCT

    @register("toy_fw")
    class Toy(Pix2Pix):
        @dataclasses.dataclass
        class Params(FrameworkConfig):
            width: float = 2.0

        search_space = {"fw.width": ("uniform", 1.0, 3.0)}

    @register_task("toy_task")
    class ToyTask(MRToCT):
        @dataclasses.dataclass
        class Params(TaskConfig):
            name: str = "toy_task"
            blur: float = 1.5

        search_space = {"loss.structure": ("uniform", 0.0, 5.0)}

    try:
        assert "toy_fw" in available() and get_framework("toy_fw") is Toy and Toy.name == "toy_fw"
        cfg = preset("tiny", "toy_fw", "toy_task")
        assert (cfg.fw.width, cfg.task.blur, cfg.loss.image) == (2.0, 1.5, 100.0)
        cfg = apply_overrides(cfg, {"fw.width": 2.5, "task.blur": 0.5})
        save_config(cfg, tmp_path / "toy.yaml")
        assert load_config(tmp_path / "toy.yaml") == cfg
        from gan_core.cli import build_parser

        args = build_parser().parse_args(["train", "--framework", "toy_fw", "--task", "toy_task",
                                          "--data", "d", "--out", "o"])
        assert (args.framework, args.task) == ("toy_fw", "toy_task")
        from components.search_space import default_search_space

        assert default_search_space(cfg) == {"fw.width": ["uniform", 1.0, 3.0],
                                             "loss.structure": ["uniform", 0.0, 5.0]}
    finally:
        FRAMEWORKS.remove("toy_fw")
        TASKS.remove("toy_task")
    with pytest.raises(KeyError, match="unknown framework 'toy_fw'"):
        preset("tiny", "toy_fw")


def _import_graph(root: Path) -> dict[str, set[str]]:
    """gan_core module -> the gan_core modules it imports anywhere (deferred and TYPE_CHECKING
    imports included: they are circles all the same)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        mod = ".".join(("gan_core", *path.relative_to(root).with_suffix("").parts))
        mod = mod.removesuffix(".__init__")
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = mod.split(".")
                    parts = parts[:len(parts) - node.level + (path.name == "__init__.py")]
                    base = ".".join(parts + ([node.module] if node.module else []))
                deps |= {base} | {f"{base}.{a.name}" for a in node.names}
        graph[mod] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_config_is_a_leaf_and_the_plugin_modules_form_no_import_circle():
    root = Path(__file__).resolve().parents[1] / "gan_core"
    graph = _import_graph(root)
    assert graph["gan_core.config"] == set()
    assert graph["gan_core.registry"] == set()
    mine = ("gan_core.config", "gan_core.presets", "gan_core.registry", "gan_core.frameworks",
            "gan_core.tasks", "gan_core.losses", "gan_core.models")

    def reaches(start: str, goal: str) -> bool:
        todo, seen = list(graph[start]), set()
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo.extend(graph[m])
        return False

    circles = [m for m in graph if m.startswith(mine) and reaches(m, m)]
    assert not circles, circles
