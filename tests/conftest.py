"""Shared fixtures: a tiny phantom cohort and its packed shards, made once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


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


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """A real ``mlflow server`` (sqlite backend) on loopback, one per test module."""
    from tests.mlflow_server import MlflowServer

    with MlflowServer(tmp_path_factory.mktemp("mlflow")) as url:
        yield url
