"""The README's command sequences, as written (relative paths), run as a user would: a fresh
``python -m gan_core.cli`` process per command, from a temporary working directory.

Sizes are cut to seconds (``--preset tiny``, ``--steps 2``, a few small subjects); the paths and
the order of the commands are the README's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib

REPO = Path(__file__).resolve().parents[1]


def medgan(cwd: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-m", "gan_core.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"medgan {' '.join(args)} -> {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc


def _evaluated_all(eval_dir: Path, test_ids: list[str], stderr: str) -> None:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["failed"] == [], metrics["failed"]
    assert sorted(r["subject"] for r in metrics["per_subject"]) == sorted(test_ids)
    assert "failed" not in stderr


def test_quickstart_with_relative_paths(tmp_path: Path) -> None:
    cwd = tmp_path / "work"
    cwd.mkdir()
    medgan(cwd, "phantom", "--out", "cohort", "--subjects", "5", "--seed", "0",
           "--shape", "40,40,16", "--spacing", "6,6,9")
    packed = json.loads(medgan(cwd, "pack", "--cohort", "cohort", "--out", "shards").stdout)
    assert packed == {"train": 3, "val": 1, "test": 1}
    test_ids = json.loads((cwd / "shards/splits.json").read_text())["test"]
    medgan(cwd, "train", "--framework", "pix2pix", "--preset", "tiny", "--steps", "2",
           "--data", "shards", "--out", "runs/pix2pix", "--device", "cpu", "--quiet")
    assert (cwd / "runs/pix2pix/model.pt").is_file()
    ev = medgan(cwd, "evaluate", "--model", "runs/pix2pix", "--data", "shards", "--out", "eval")
    _evaluated_all(cwd / "eval", test_ids, ev.stderr)
    medgan(cwd, "translate", "--model", "runs/pix2pix", "--input", "cohort/phantom_000/mr.nii.gz",
           "--output", "sct.nii.gz")
    assert nib.load(cwd / "sct.nii.gz").shape == nib.load(cwd / "cohort/phantom_000/mr.nii.gz").shape
    # the same pack evaluated from another folder, still through relative paths
    other = tmp_path / "other"
    other.mkdir()
    ev = medgan(other, "evaluate", "--model", "../work/runs/pix2pix", "--data", "../work/shards",
                "--out", "eval", "--no-baseline")
    _evaluated_all(other / "eval", test_ids, ev.stderr)


def test_demo_with_a_relative_workdir(tmp_path: Path) -> None:
    proc = medgan(tmp_path, "demo", "--workdir", "demo_out", "--subjects", "4", "--steps", "2",
                  "--device", "cpu", timeout=600)
    out = tmp_path / "demo_out"
    assert (out / "sct_pix2pix.nii.gz").is_file() and (out / "eval/metrics.json").is_file()
    test_ids = json.loads((out / "shards/splits.json").read_text())["test"]
    _evaluated_all(out / "eval", test_ids, proc.stderr)
    assert "demo wall time" in proc.stdout
