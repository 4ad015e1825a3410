"""Shared fixtures: a tiny phantom cohort and its packed shards, made once per session."""

from __future__ import annotations

import os
from pathlib import Path

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
    from gan_core.cli import pack_cohort

    out = tmp_path_factory.mktemp("shards")
    pack_cohort(tiny_cohort, out, split=(0.5, 0.25, 0.25), seed=0)
    return out
