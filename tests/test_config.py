import pytest

from gan_core.config import (apply_overrides, from_dict, load_config, parse_set, preset,
                             save_config)


def test_presets_set_the_published_recipes():
    p2p = preset("full", "pix2pix")
    assert (p2p.model.generator, p2p.model.norm, p2p.gan_mode) == ("unet", "batch", "vanilla")
    assert p2p.loss.l1 == 100 and p2p.data.image_size == 256 and p2p.data.batch_size == 1
    cyc = preset("full", "cyclegan")
    assert (cyc.model.generator, cyc.model.n_blocks, cyc.gan_mode, cyc.pool_size) == ("resnet", 9, "lsgan", 50)
    assert (cyc.loss.cycle, cyc.loss.identity) == (10, 0.5)
    assert (cyc.optim.lr, cyc.optim.beta1, cyc.optim.beta2) == (2e-4, 0.5, 0.999)
    demo = preset("demo", "cyclegan")
    assert demo.data.image_size <= 128 and demo.model.g_filters < 64
    assert (demo.gan_mode, demo.pool_size, demo.loss.cycle) == ("lsgan", 50, 10)  # objective kept
    assert demo.model.generator == "convnet" and demo.model.init_type == "kaiming"


def test_unknown_preset_and_framework():
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge", "pix2pix")
    with pytest.raises(KeyError, match="unknown framework"):
        preset("demo", "nope")


def test_yaml_roundtrip_and_errors(tmp_path):
    cfg = apply_overrides(preset("demo", "pix2pix"), {"loss.l1": 42, "data.batch_size": 3})
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    back = load_config(path)
    assert back == cfg
    bad = tmp_path / "bad.yaml"
    bad.write_text("framework: pix2pix\nloss:\n  l2: 3\n")
    with pytest.raises(ValueError, match=r"bad.yaml.*loss.l2"):
        load_config(bad)
    bad.write_text("framework: pix2pix\ndata:\n  batch_size: many\n")
    with pytest.raises(ValueError, match="data.batch_size: expected int"):
        load_config(bad)
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_yaml_preset_plus_overrides():
    cfg = from_dict({"preset": "full", "framework": "cyclegan", "loss": {"cycle": 5}})
    assert cfg.loss.cycle == 5.0 and cfg.model.n_blocks == 9


def test_overrides_do_not_mutate_and_parse_set():
    base = preset("demo", "cyclegan")
    new = apply_overrides(base, parse_set(["loss.cycle=3.5", "compile=true"]))
    assert new.loss.cycle == 3.5 and new.compile is True
    assert base.loss.cycle == 10 and base.compile is False
    assert base.flat()["loss.cycle"] == 10
    with pytest.raises(ValueError, match="key=value"):
        parse_set(["oops"])
