"""gan_core.data.pack: all splits published at once or none, repacks never mix, leftovers go."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from gan_core.cli import main
from gan_core.data.pack import lesion_strata, pack_cohort, pack_splits
from gan_core.data.shards import Shards, cohort_subjects, split_subjects

SPLIT = (0.5, 0.25, 0.25)


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _packed_ids(out: Path) -> dict[str, list[str]]:
    return {name: [s["id"] for s in Shards(out / name).subjects]
            for name in ("train", "val", "test") if (out / name).is_dir()}


@pytest.fixture
def cohort(tiny_cohort: Path, tmp_path: Path) -> Path:
    """A private copy of the session cohort (the tests below break files in it)."""
    return Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))


def _break_test_subject(cohort: Path, seed: int) -> str:
    subs = cohort_subjects(cohort)
    sid = split_subjects([s.id for s in subs], SPLIT, seed,
                         strata=lesion_strata({s.id: s.lesion for s in subs}))["test"][0]
    ct = cohort / sid / "ct.nii.gz"
    ct.write_bytes(ct.read_bytes()[:400])  # truncated gzip
    return sid


def test_bad_test_subject_publishes_nothing(cohort: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    sid = _break_test_subject(cohort, seed=0)
    out = tmp_path / "shards"
    with pytest.raises(ValueError, match=rf"subject {sid} CT file .*{sid}/ct\.nii\.gz"):
        pack_cohort(cohort, out, split=SPLIT, seed=0)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort"]  # no staging left either
    rc = main(["pack", "--cohort", str(cohort), "--out", str(out), "--split", "0.5,0.25,0.25"])
    err = capsys.readouterr().err
    assert rc == 2 and sid in err and "ct.nii.gz" in err
    assert not out.exists()


def test_failed_repack_keeps_the_old_pack(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    first = pack_cohort(cohort, out, split=SPLIT, seed=0)
    before = _snapshot(out)
    _break_test_subject(cohort, seed=1)
    with pytest.raises(ValueError, match="ct.nii.gz"):
        pack_cohort(cohort, out, split=SPLIT, seed=1)
    assert _snapshot(out) == before
    assert _packed_ids(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort", "shards"]


def test_repack_with_another_seed_never_mixes_splits(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    a = pack_cohort(cohort, out, split=SPLIT, seed=0)
    b = pack_cohort(cohort, out, split=SPLIT, seed=1)
    assert a != b  # the seeds give different splits, so a mix would show
    packed = _packed_ids(out)
    assert packed == b == json.loads((out / "splits.json").read_text())
    ids = sum(packed.values(), [])
    assert len(ids) == len(set(ids)) == len(cohort_subjects(cohort))  # each subject once
    # a split that is empty in the new pack has no folder left over from the old one
    pack_cohort(cohort, out, split=(0.5, 0.5, 0.0), seed=2)
    assert not (out / "test").exists() and json.loads((out / "splits.json").read_text())["test"] == []


def test_leftovers_of_interrupted_runs_are_removed(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "shards"
    pack_cohort(cohort, out, split=SPLIT, seed=0)
    dead = 2 ** 31 - 2  # above any pid_max: no such process
    leftovers = [tmp_path / f".shards.staging-{dead}-x1", tmp_path / f".shards.old-{dead}-x2",
                 tmp_path / ".shards.k3j4l5m6",            # an older pack_shards temp name
                 out / ".val.abcd1234", out / f".train.tmp-{dead}-x3"]
    running = tmp_path / f".shards.staging-{os.getppid()}-y"  # a live process's: kept
    for d in (*leftovers, running):
        d.mkdir()
        (d / "mr.npy").write_bytes(b"partial")
    pack_cohort(cohort, out, split=SPLIT, seed=1)
    assert not [d for d in leftovers if d.exists()]
    assert running.exists()
    assert sorted(p.name for p in out.iterdir()) == ["splits.json", "test", "train", "val"]


def test_refuses_to_replace_a_folder_that_is_not_a_pack(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match=r"results holds files that are not part of a shard pack \(notes.txt\)"):
        pack_cohort(cohort, out, split=SPLIT, seed=0)
    assert (out / "notes.txt").read_text() == "mine" and sorted(os.listdir(out)) == ["notes.txt"]


def test_a_subject_in_two_splits_is_refused(cohort: Path, tmp_path: Path) -> None:
    subs = cohort_subjects(cohort)
    with pytest.raises(ValueError, match=f"subject {subs[0].id} is in both train and test"):
        pack_splits({"train": subs[:3], "test": subs[:1]}, tmp_path / "shards")
    with pytest.raises(ValueError, match="unknown split"):
        pack_splits({"training": subs}, tmp_path / "shards")
    assert not (tmp_path / "shards").exists()


def test_sources_resolve_from_any_working_directory(cohort: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    shutil.move(str(cohort), work / "cohort")
    monkeypatch.chdir(work)
    pack_cohort("cohort", "shards", split=SPLIT, seed=0)  # relative, as the README writes it
    index = json.loads(Path("shards/test/index.json").read_text())
    assert index["subjects"][0]["source"]["mr"].startswith("../../cohort/")  # relative to the index
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    for shards in (Shards(work / "shards/test"), Shards("../work/shards/test")):
        f = shards.subject_files(0)
        assert Path(f.mr).is_absolute() and Path(f.mr) == work / "cohort" / f.id / "mr.nii.gz"
        assert all(Path(p).is_file() for p in (f.mr, f.ct, f.mask))
    moved = tmp_path / "moved"  # pack and cohort moved together: still found
    shutil.move(str(work), moved)
    f = Shards(moved / "shards/test").subject_files(0)
    assert Path(f.ct) == moved / "cohort" / f.id / "ct.nii.gz" and Path(f.ct).is_file()


@pytest.mark.parametrize("module", ["gan_core.data.staging", "gan_core.data.pack"])
def test_docstring_examples_run(module: str) -> None:
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
