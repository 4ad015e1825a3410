"""components.step: the manifest contract, the exit-code convention, local copies, staged
outputs and the one config builder, on real files and a real S3-protocol server (moto)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from components import storage
from components.step import (MANIFEST, Manifest, StepInputError, arg, build_config, local_dir,
                             local_file, params_from_args, params_parser, read_manifest, run_cli,
                             shard_uris, staged, step_manifest, write_manifest)
from gan_core.presets import with_total_steps
from tests.test_storage import SECRET, endpoint, s3  # noqa: F401 - pytest fixtures


def _write(folder: Path, manifest: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).write_text(manifest if isinstance(manifest, str) else json.dumps(manifest))
    return folder


# ---------------------------------------------------------------- the manifest contract


def test_read_manifest_errors_name_file_field_and_step(tmp_path: Path) -> None:
    path = tmp_path / "x" / MANIFEST
    with pytest.raises(StepInputError, match=rf"^{path}: not found \(expected the output of step 'train'\)$"):
        read_manifest(str(tmp_path / "x"), "train")
    _write(tmp_path / "x", "{not json")
    with pytest.raises(StepInputError, match=rf"^{path}: not valid JSON .*step 'train'"):
        read_manifest(str(tmp_path / "x"), "train")
    _write(tmp_path / "x", [1, 2])
    with pytest.raises(StepInputError, match=rf"^{path}: expected a JSON object, got list$"):
        read_manifest(str(tmp_path / "x"), "train")
    _write(tmp_path / "x", {"step": "ingest"})
    with pytest.raises(StepInputError, match=rf"^{path}: field 'step' is 'ingest', expected 'preprocess'$"):
        read_manifest(str(tmp_path / "x"), "preprocess")
    _write(tmp_path / "x", {"step": "preprocess", "splits": {}})
    with pytest.raises(StepInputError, match=rf"^{path}: missing field 'splits.train' \(expected in the "
                                             r"manifest of step 'preprocess'\)$"):
        read_manifest(str(tmp_path / "x"), "preprocess", required=("splits", "splits.train"))


def test_manifest_fields_values_and_sha(tmp_path: Path) -> None:
    d = _write(tmp_path / "t", {"step": "train", "mlflow_run_id": None,
                                "outputs": {"mlflow_run_id": "abc", "model": "model.pt"}})
    m = read_manifest(str(d), "train", required=("outputs.model",))
    assert m.value("mlflow_run_id") == "abc"  # null at top level: falls through to outputs
    assert m.field("outputs.model") == "model.pt"
    assert m.output_uri("outputs.model") == str(d / "model.pt")
    import hashlib

    assert m.sha256 == hashlib.sha256((d / MANIFEST).read_bytes()).hexdigest()
    for bad in ("/etc/passwd", "../other/model.pt", "", 3):
        bad_m = Manifest(str(d), "train", {"outputs": {"model": bad}}, "")
        with pytest.raises(StepInputError, match=r"field 'outputs.model' = .*expected a relative path"):
            bad_m.output_uri("outputs.model")


def test_shard_paths_come_from_the_preprocess_manifest(tmp_path: Path) -> None:
    d = _write(tmp_path / "prep", {"step": "preprocess", "splits": {"train": ["a"]},
                                   "outputs": {"shards": {"train": {"path": "elsewhere/tr"},
                                                          "test": {"path": "elsewhere/te"}}}})
    m = read_manifest(str(d), "preprocess")
    assert shard_uris(m) == {"train": str(d / "elsewhere/tr"), "val": None}
    assert shard_uris(m, ("test",), optional=()) == {"test": str(d / "elsewhere/te")}
    with pytest.raises(StepInputError, match=r"missing field 'outputs.shards.val.path'"):
        shard_uris(m, ("train", "val"), optional=())
    # an old manifest without outputs.shards fails clearly, even if <data>/shards exists
    (tmp_path / "old" / "shards" / "train").mkdir(parents=True)
    old = read_manifest(str(_write(tmp_path / "old", {"step": "preprocess"})), "preprocess")
    with pytest.raises(StepInputError, match=rf"{tmp_path}/old/manifest.json: missing field 'outputs.shards'"):
        shard_uris(old)


def test_train_takes_its_shards_from_the_manifest(tmp_path: Path) -> None:
    """run_train resolves the shards the manifest names (and checks them) before Ray starts."""
    from components.train import run_train

    d = tmp_path / "prep"
    (d / "shards" / "train").mkdir(parents=True)  # the layout a rebuilt path would find
    _write(d, {"step": "preprocess", "splits": {"train": ["a"]},
               "outputs": {"shards": {"train": {"path": "moved/train"}}}})
    with pytest.raises(StepInputError, match=rf"field 'outputs.shards.train.path' points to "
                                             rf"{d}/moved/train, which is missing"):
        run_train(str(d), str(tmp_path / "out"), preset="tiny", framework="pix2pix")


def test_worker_lays_out_the_manifest_shards(tmp_path: Path) -> None:
    from components.raytrain import _data_dir

    (tmp_path / "a" / "tr").mkdir(parents=True)
    (tmp_path / "b" / "va").mkdir(parents=True)
    data = _data_dir({"train": str(tmp_path / "a" / "tr"), "val": str(tmp_path / "b" / "va")},
                     tmp_path / "data")
    assert (data / "train").resolve() == (tmp_path / "a" / "tr").resolve()
    assert (data / "val").resolve() == (tmp_path / "b" / "va").resolve()
    only_train = _data_dir({"train": str(tmp_path / "a" / "tr"), "val": None}, tmp_path / "d2")
    assert sorted(p.name for p in only_train.iterdir()) == ["train"]


def test_step_manifest_and_staged_output_keep_folders(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDGAN_GIT_COMMIT", "cafe01")
    m = step_manifest("demo", inputs={"a": 1}, params={"b": 2}, outputs={}, counts={"n": 1},
                      loss=float("nan"))
    assert m["git_commit"] == "cafe01" and m["code_version"] and m["timings"] == {}
    out = tmp_path / "out"
    (out / "ray" / "run1").mkdir(parents=True)
    (out / "ray" / "run1" / "ckpt").write_text("c")
    (out / "stale.txt").write_text("old")
    with staged(str(out), keep=("ray",)) as d:
        write_manifest(d, m)
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "manifest.json", "ray"]
    assert (out / "ray" / "run1" / "ckpt").read_text() == "c"
    written = read_manifest(str(out), "demo")
    assert written.data["loss"] is None  # strict JSON
    with pytest.raises(RuntimeError), staged(str(out), keep=("ray",)) as d:
        (d / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert not (out / "half.txt").exists() and (out / "ray" / "run1" / "ckpt").exists()


# ---------------------------------------------------------------- local copies


def test_local_dir_and_file_local(tmp_path: Path) -> None:
    assert local_dir(str(tmp_path)) == tmp_path
    with pytest.raises(StepInputError, match=rf"{tmp_path}/nope: no such directory"):
        local_dir(str(tmp_path / "nope"))
    (tmp_path / "f.bin").write_bytes(b"x")
    with local_file(str(tmp_path / "f.bin")) as f:
        assert f.read_bytes() == b"x"
    with pytest.raises(StepInputError, match="g.bin: file not found"), local_file(str(tmp_path / "g.bin")):
        pass


def test_local_dir_s3_is_cached_per_node(s3: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MEDGAN_CACHE_DIR", str(tmp_path / "cache"))
    storage.write_bytes(storage.join(s3, "shards", "train", "index.json"), b"{}")
    uri = storage.join(s3, "shards", "train")
    first = local_dir(uri)
    assert (first / "index.json").read_bytes() == b"{}" and first.is_relative_to(tmp_path / "cache")
    storage.write_bytes(storage.join(s3, "shards", "train", "index.json"), b"changed")
    assert local_dir(uri) == first and (first / "index.json").read_bytes() == b"{}"  # downloaded once
    with pytest.raises(StepInputError, match=rf"{storage.join(s3, 'absent')}"):
        local_dir(storage.join(s3, "absent"))
    with local_file(storage.join(uri, "index.json")) as f:
        assert f.read_bytes() == b"changed"


# ---------------------------------------------------------------- CLI and exit codes


@dataclass(frozen=True)
class _Params:
    data_uri: str = arg("input")
    steps: int | None = arg("iterations", default=None)
    overrides: dict | None = arg("KEY=VALUE, repeatable", default=None, flag="--set", append=True,
                                 convert=lambda v: dict(x.split("=", 1) for x in v) if v else None)
    audit: bool = arg("switch off", default=True, flag="--no-audit")
    mode: str = arg("one of a, b", default="a", choices=("a", "b"))

    def __post_init__(self) -> None:
        if self.data_uri == "bad":
            raise StepInputError("data_uri: 'bad' is not a folder")


def _cli(argv: list[str]) -> int:
    def fn(a: argparse.Namespace) -> dict:
        p = params_from_args(_Params, a)
        if p.data_uri == "crash":
            raise RuntimeError("disk on fire")
        return {"params": p.__dict__}

    return run_cli(params_parser(_Params, "demo", "demo step"), fn, argv)


def test_params_parser_round_trip() -> None:
    a = params_parser(_Params, "demo", "d").parse_args(
        ["--data-uri", "d", "--steps", "4", "--set", "x=1", "--set", "y=2", "--no-audit"])
    assert params_from_args(_Params, a) == _Params("d", 4, {"x": "1", "y": "2"}, False, "a")
    assert params_from_args(_Params, params_parser(_Params, "demo", "d").parse_args(
        ["--data-uri", "d"])) == _Params("d")


def test_exit_codes(capsys) -> None:
    assert _cli(["--data-uri", "ok", "--steps", "3"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["steps"] == 3
    assert _cli(["--data-uri", "bad"]) == 2
    assert "error: data_uri: 'bad' is not a folder" in capsys.readouterr().err
    assert _cli(["--data-uri", "d", "--set", "novalue"]) == 2  # convert's ValueError names the flag
    assert "error: --set:" in capsys.readouterr().err
    assert _cli(["--data-uri", "crash"]) == 1
    err = capsys.readouterr().err
    assert "error: unexpected RuntimeError: disk on fire" in err and "Traceback" in err
    for usage in (["--steps", "3"], ["--data-uri", "d", "--mode", "c"], ["--data-uri", "d", "--steps", "x"]):
        with pytest.raises(SystemExit) as e:
            _cli(usage)
        assert e.value.code == 2


def test_step_clis_share_the_convention(tmp_path: Path, capsys) -> None:
    from components import register, train, tune

    _write(tmp_path / "ing", {"step": "ingest"})
    assert train.main(["--data-uri", str(tmp_path / "ing"), "--output-uri", str(tmp_path / "o")]) == 2
    assert "field 'step' is 'ingest', expected 'preprocess'" in capsys.readouterr().err
    assert tune.main(["--data-uri", str(tmp_path / "ing"), "--output-uri", str(tmp_path / "o"),
                      "--num-samples", "0"]) == 2
    assert "num_samples: expected >= 1, got 0" in capsys.readouterr().err
    assert train.main(["--data-uri", "d", "--output-uri", "o", "--resources-per-worker", "{x"]) == 2
    assert "error: --resources-per-worker:" in capsys.readouterr().err
    assert register.main(["--model-uri", str(tmp_path / "none"), "--eval-uri", str(tmp_path),
                          "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]) == 2
    assert f"{tmp_path}/none/manifest.json: not found (expected the output of step 'train')" in \
        capsys.readouterr().err


# ---------------------------------------------------------------- the run's config


def test_one_steps_rule_keeps_the_lr_ratio() -> None:
    from gan_core.presets import preset

    base = preset("demo", "pix2pix")
    c = with_total_steps(base, 10)
    o = base.optim
    assert c.total_steps == 10
    assert c.optim.steps_constant == round(10 * o.steps_constant / (o.steps_constant + o.steps_decay))
    assert with_total_steps(base, 1).total_steps == 1
    for bad in (0, -3, 2.5, "x"):
        with pytest.raises(ValueError, match=r"^steps: expected a positive integer"):
            with_total_steps(base, bad)
    assert build_config("pix2pix", "demo", steps=10).optim == c.optim


def test_build_config_errors_name_the_input(tmp_path: Path) -> None:
    with pytest.raises(StepInputError, match=r"preset 'nope' / framework 'pix2pix'"):
        build_config("pix2pix", "nope")
    with pytest.raises(StepInputError, match=r"^overrides: "):
        build_config("pix2pix", "tiny", overrides={"loss.nope": 1})
    with pytest.raises(StepInputError, match=r"^steps: expected a positive integer, got 0"):
        build_config("pix2pix", "tiny", steps=0)
    (tmp_path / "c.yaml").write_text("- a list\n")
    with pytest.raises(StepInputError, match=rf"config {tmp_path}/c.yaml: expected a mapping"):
        build_config(config_uri=str(tmp_path / "c.yaml"))
    with pytest.raises(StepInputError, match=rf"config {tmp_path}/none.yaml"):
        build_config(config_uri=str(tmp_path / "none.yaml"))
