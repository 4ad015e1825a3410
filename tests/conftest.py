"""Shared fixtures: a tiny phantom cohort and its packed shards and a real ``mlflow server``,
each made once per test session (per xdist worker under ``pytest -n``).

The session runs with one OpenMP/intra-op thread unless the caller set ``OMP_NUM_THREADS``: the
models here are tiny, and on a small shared machine (2 cores) OpenMP's spinning threads cost far
more than they give. Set before torch is imported, so every subprocess the tests start (pipeline
steps, Ray workers, servers) inherits it too.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    from gan_core.data.phantom import write_cohort

    root = tmp_path_factory.mktemp("cohort")
    write_cohort(root, subjects=6, seed=1, shape=(40, 40, 16), spacing=(6.0, 6.0, 9.0),
                 lesion_prevalence=0.5)
    return root


@pytest.fixture(scope="session")
def tiny_shards(tiny_cohort, tmp_path_factory) -> Path:
    from gan_core.data.pack import pack_cohort

    out = tmp_path_factory.mktemp("shards")
    pack_cohort(tiny_cohort, out, split=(0.5, 0.25, 0.25), seed=0)
    return out


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a shared 2-core box: one intra-op thread avoids OpenMP spin contention
    (10x faster here under load); restored afterwards."""
    import torch

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend) on loopback, shared by the whole session (its
    start-up is seconds of imports per module otherwise). Tests that use it must not depend on
    what others wrote there: each uses its own registered-model names (``medgan-sct-<test>``)
    and looks up only its own runs and experiments."""
    from tests.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


#: Test modules that start Ray (a local instance or a loopback cluster). Under ``pytest -n 2
#: --dist loadgroup`` they all run on one worker, one at a time: two Ray instances at once on a
#: small machine starve each other's raylets and health checks (and some Ray APIs refuse to pick
#: between two instances on one host), so the other worker takes the rest of the suite.
RAY_MODULES = frozenset({"test_launch.py", "test_multinode.py", "test_pipeline.py",
                         "test_preprocess.py", "test_ray_train.py", "test_task_pipelines.py",
                         "test_tune.py"})


def pytest_configure(config: pytest.Config) -> None:
    # pytest-xdist registers it too; here so a run without xdist knows the mark
    config.addinivalue_line("markers", "xdist_group(name): run these tests on one xdist worker")


@pytest.hookimpl(tryfirst=True)  # before xdist's worker hook reads the marks into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put every test of :data:`RAY_MODULES` in the ``xdist_group`` ``"ray"`` (no effect without
    pytest-xdist or without ``--dist loadgroup``)."""
    for item in items:
        if item.path.name in RAY_MODULES:
            item.add_marker(pytest.mark.xdist_group("ray"))
