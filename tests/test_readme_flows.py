"""The README's command sequences, as written (relative paths), run as a user would: a fresh
``python -m gan_core.cli`` process per command, from a temporary working directory.

The engine block is read from README.md itself; sizes are cut to seconds by appending options
(``CUTS``: ``--preset tiny``, ``--steps 2``, a few small subjects); the paths and the order of
the commands are the README's.
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


#: What each README command gets appended to run in seconds (argparse: a later option wins).
CUTS = {"phantom": ["--subjects", "5", "--shape", "40,40,16", "--spacing", "6,6,9"],
        "train": ["--preset", "tiny", "--steps", "2", "--device", "cpu", "--quiet"],
        "demo": ["--subjects", "4", "--steps", "2", "--device", "cpu"]}


def readme_engine_commands() -> list[list[str]]:
    """The ``.venv/bin/medgan`` lines of the README's "The engine alone" block, as written
    (comments dropped), each as its argument list."""
    import shlex

    text = (REPO / "README.md").read_text()
    block = text.split("## The engine alone", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in block.splitlines()
            if line.startswith(".venv/bin/medgan ")]


def test_the_readme_engine_block_as_written(tmp_path: Path) -> None:
    """Every command of the block, in order, from a fresh working directory: all outputs land
    under the git-ignored ``medgan_local/``, and the translated MR is a held-out test subject."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    commands = readme_engine_commands()
    assert [c[0] for c in commands] == ["phantom", "pack", "train", "evaluate", "translate", "demo"]
    for args in commands:
        proc = medgan(cwd, *args, *CUTS.get(args[0], []), timeout=600)
        if args[0] == "evaluate":
            out = Path(cwd / args[args.index("--out") + 1])
            test_ids = json.loads((cwd / "medgan_local/shards/splits.json").read_text())["test"]
            _evaluated_all(out, test_ids, proc.stderr)
            assert list((out / "figures").glob("*.png"))
        if args[0] == "translate":
            src, dst = (cwd / args[args.index(k) + 1] for k in ("--input", "--output"))
            assert src.parent.name in test_ids, f"{src} is not a held-out test subject {test_ids}"
            assert nib.load(dst).shape == nib.load(src).shape
        if args[0] == "demo":
            engine = cwd / "medgan_local/engine"  # `medgan demo`'s default workdir
            _evaluated_all(engine / "eval", json.loads(
                (engine / "shards/splits.json").read_text())["test"], proc.stderr)
            assert (engine / "sct_pix2pix.nii.gz").is_file() and "demo wall time" in proc.stdout
    assert [p.name for p in cwd.iterdir()] == ["medgan_local"]  # nothing else in the checkout
    assert "medgan_local/" in (REPO / ".gitignore").read_text().splitlines()


def test_relative_paths_from_another_folder(tmp_path: Path) -> None:
    """The same pack evaluated from another folder, through relative paths."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    medgan(cwd, "phantom", "--out", "cohort", *CUTS["phantom"], "--seed", "0")
    medgan(cwd, "pack", "--cohort", "cohort", "--out", "shards")
    medgan(cwd, "train", "--framework", "pix2pix", "--data", "shards", "--out", "runs/pix2pix",
           *CUTS["train"])
    test_ids = json.loads((cwd / "shards/splits.json").read_text())["test"]
    other = tmp_path / "other"
    other.mkdir()
    ev = medgan(other, "evaluate", "--model", "../work/runs/pix2pix", "--data", "../work/shards",
                "--out", "eval", "--no-baseline")
    _evaluated_all(other / "eval", test_ids, ev.stderr)
