"""components.tune on a REAL 2-node loopback Ray cluster: Optuna + ASHA over loss weights, nested MLflow runs."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import yaml

from tests.ray_cluster import SharedCluster
from tests.test_ray_train import preprocessed_dir

pytest_plugins = ("tests.ray_cluster",)  # shared_cluster: one cluster for every module using Ray


@pytest.fixture(scope="module")
def cluster(shared_cluster: SharedCluster) -> Iterator[str]:
    """The session's 2-node loopback cluster (1 CPU per node); run_tune finds it through
    ``$RAY_ADDRESS``."""
    c = shared_cluster.cluster
    with c.activated():
        c.heal()
        yield c.address


def test_search_space_comes_from_the_framework_and_task():
    from components.step import build_config
    from components.search_space import default_search_space

    space = default_search_space(build_config("pix2pix", "tiny"))
    assert space == {"loss.gan": ["uniform", 0.5, 2.0], "loss.image": ["loguniform", 10.0, 300.0]}
    cyc = default_search_space(build_config("cyclegan", "tiny"))
    assert cyc == {"loss.gan": ["uniform", 0.5, 2.0], "loss.cycle": ["loguniform", 1.0, 30.0],
                   "fw.identity": ["uniform", 0.0, 1.0]}


def test_search_space_covers_new_frameworks_and_task_terms():
    from components.step import StepInputError, build_config
    from components.search_space import default_search_space, parse_space

    unit = default_search_space(build_config("unit", "tiny"))
    assert set(unit) == {"loss.gan", "fw.recon", "fw.kl", "loss.cycle", "fw.cycle_kl"}
    assert unit["fw.kl"] == ["loguniform", 1e-3, 0.1]
    assert set(default_search_space(build_config("dcgan", "tiny", task="synth"))) == {"loss.gan"}
    # the k-space task adds its frequency term to the framework's own
    kspace = default_search_space(build_config("pix2pix", "tiny", task="kspace"))
    assert set(kspace) == {"loss.gan", "loss.image", "loss.frequency"}
    assert kspace["loss.frequency"] == ["loguniform", 1.0, 100.0]
    # a Table-5 term named without a range takes the loss table's default
    assert parse_space(["loss.structure", "loss.image=loguniform:1:10"]) == {
        "loss.structure": None, "loss.image": ["loguniform", 1.0, 10.0]}
    named = default_search_space(build_config("pix2pix", "tiny"), ["loss.structure"])
    assert named["loss.structure"] == ["uniform", 0.0, 20.0] and "loss.image" in named
    with pytest.raises(StepInputError, match="'optim.lr': no default range"):
        default_search_space(build_config("pix2pix", "tiny"), ["optim.lr"])


def test_bad_search_space_is_named(tiny_shards, tmp_path):
    from components.step import StepInputError
    from components.tune import run_tune

    data = preprocessed_dir(tiny_shards, tmp_path / "processed")
    with pytest.raises(StepInputError, match=r"unknown config fields \['loss.nope'\]"):
        run_tune(str(data), str(tmp_path / "out"), search_space={"loss.nope": ["uniform", 0, 1]})
    with pytest.raises(StepInputError, match=r"'loss.image': unknown kind 'gauss'"):
        run_tune(str(data), str(tmp_path / "out"), framework="pix2pix",
                 search_space={"loss.image": ["gauss", 0, 1]})
    with pytest.raises(StepInputError, match=r"'loss.l1': no default range"):  # (the old name)
        run_tune(str(data), str(tmp_path / "out"), framework="pix2pix",
                 search_space={"loss.l1": None})


def test_tune_optuna_asha_nested_runs(cluster, tiny_shards, tmp_path):
    from components import mlflow_utils as mlu
    from components.tune import run_tune

    data = preprocessed_dir(tiny_shards, tmp_path / "processed")
    tracking = f"sqlite:///{tmp_path}/mlflow.db"
    out = tmp_path / "tune"
    # 3 trials of 8 steps, 2 at a time (1 worker each, one per 1-CPU node)
    m = run_tune(str(data), str(out), framework="pix2pix", preset="tiny", num_samples=3,
                 max_steps_per_trial=8, grace_period=4, tracking_uri=tracking,
                 experiment="medgan-tune-test", seed=3)
    assert json.loads((out / "manifest.json").read_text()) == m
    assert (out / "_SUCCESS").exists() and (out / "ray").is_dir()
    trials = m["trials"]
    assert len(trials) == 3 and m["counts"]["trials"] == 3 and m["counts"]["error"] == 0
    sampled = [t["params"] for t in trials]
    assert len({t["loss.image"] for t in sampled}) == 3  # Optuna proposed distinct points
    for p in sampled:
        assert 10 <= p["loss.image"] <= 300 and 0.5 <= p["loss.gan"] <= 2
    assert m["best"]["params"] in sampled
    assert m["best_val_mae"] == min(t["val_mae"] for t in trials
                                       if t["status"] == "completed")
    assert all(t["val_mae"] is not None and 0 < t["val_mae"] < 3000 for t in trials)

    best_cfg = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best_cfg["framework"] == "pix2pix"
    assert {"loss.image": best_cfg["loss"]["image"], "loss.gan": best_cfg["loss"]["gan"]} == m["best"]["params"]
    assert best_cfg["optim"]["steps_constant"] + best_cfg["optim"]["steps_decay"] == 8  # tiny preset
    assert best_cfg["val_every"] == 0  # the tune-only settings stay out of the best config

    c = mlu.client(tracking)
    parent = c.get_run(m["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_mae"] == pytest.approx(m["best_val_mae"])
    children = c.search_runs([parent.info.experiment_id],
                             filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 3
    by_id = {r.info.run_id: r for r in children}
    for t in trials:
        child = by_id[t["mlflow_run_id"]]
        assert float(child.data.params["loss.image"]) == pytest.approx(t["params"]["loss.image"])
        assert child.info.status == {"completed": "FINISHED", "stopped": "KILLED"}[t["status"]]
        steps = sorted(h.step for h in c.get_metric_history(child.info.run_id, "val_mae"))
        # workers may run ahead of what Tune has seen when ASHA stops a trial
        assert t["steps"] in steps and steps[-1] >= t["steps"]
        assert (steps[-1] == 8) if t["status"] == "completed" else (t["steps"] < 8)
