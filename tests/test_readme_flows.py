"""The README's engine command block, as written (relative paths), from a fresh working
directory; then the same outputs used through relative paths from another folder, by a fresh
``python -m gan_core.cli`` process.

The block is read from README.md itself; sizes are cut to seconds by appending options
(``CUTS``: ``--preset tiny``, ``--steps 2``, a few small subjects); the paths and the order of
the commands are the README's. The block's commands run in this process (``gan_core.cli.main``
from the working directory: the same argument parsing and relative paths, without paying the
torch import per command).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import pytest

from gan_core.cli import main

REPO = Path(__file__).resolve().parents[1]
#: What each README command gets appended to run in seconds (argparse: a later option wins).
CUTS = {"phantom": ["--subjects", "5", "--shape", "40,40,16", "--spacing", "6,6,9"],
        "train": ["--preset", "tiny", "--steps", "2", "--device", "cpu", "--quiet"],
        "demo": ["--subjects", "4", "--steps", "2", "--device", "cpu"]}


def readme_engine_commands() -> list[list[str]]:
    """The ``.venv/bin/medgan`` lines of the README's "The engine alone" block, as written
    (comments dropped), each as its argument list."""
    text = (REPO / "README.md").read_text()
    block = text.split("## The engine alone", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line.split("#", 1)[0])[1:] for line in block.splitlines()
            if line.startswith(".venv/bin/medgan ")]


def _evaluated_all(eval_dir: Path, test_ids: list[str], stderr: str) -> None:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    assert metrics["failed"] == [], metrics["failed"]
    assert sorted(r["subject"] for r in metrics["per_subject"]) == sorted(test_ids)
    assert "failed" not in stderr


def test_the_readme_engine_block_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """Every command of the block, in order: all outputs land under the git-ignored
    ``medgan_local/``, and the translated MR is a held-out test subject."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    commands = readme_engine_commands()
    assert [c[0] for c in commands] == ["phantom", "pack", "train", "evaluate", "translate", "demo"]
    test_ids: list[str] = []
    for args in commands:
        assert main([*args, *CUTS.get(args[0], [])]) == 0, args
        printed = capsys.readouterr()
        if args[0] == "pack":
            test_ids = json.loads((cwd / "medgan_local/shards/splits.json").read_text())["test"]
        if args[0] == "evaluate":
            out = cwd / args[args.index("--out") + 1]
            _evaluated_all(out, test_ids, printed.err)
            assert list((out / "figures").glob("*.png"))
        if args[0] == "translate":
            src, dst = (cwd / args[args.index(k) + 1] for k in ("--input", "--output"))
            assert src.parent.name in test_ids, f"{src} is not a held-out test subject {test_ids}"
            assert nib.load(dst).shape == nib.load(src).shape
        if args[0] == "demo":
            engine = cwd / "medgan_local/engine"  # `medgan demo`'s default workdir
            _evaluated_all(engine / "eval", json.loads(
                (engine / "shards/splits.json").read_text())["test"], printed.err)
            assert (engine / "sct_pix2pix.nii.gz").is_file() and "demo wall time" in printed.out
    assert [p.name for p in cwd.iterdir()] == ["medgan_local"]  # nothing else in the checkout
    assert "medgan_local/" in (REPO / ".gitignore").read_text().splitlines()

    # the same pack and model, from another folder, through relative paths, by a fresh process
    other = tmp_path / "other"
    other.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "gan_core.cli", "evaluate", "--model",
                           "../work/medgan_local/runs/pix2pix", "--data", "../work/medgan_local/shards",
                           "--out", "eval", "--no-baseline"], cwd=other, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    _evaluated_all(other / "eval", test_ids, proc.stderr)
