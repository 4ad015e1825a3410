"""Write-then-rename for output folders: temp folders beside the target, a swap, leftover cleanup.

Every temp folder of a target ``<parent>/<name>`` is a hidden sibling named
``.<name>.<kind>-<pid>-<random>`` (``kind``: ``tmp``, ``staging`` or ``old``). The process id
lets the next run tell the leftovers of an interrupted run (their process is gone) from the
temp folders of a run still going on, which are left alone.

>>> import tempfile
>>> from pathlib import Path
>>> final = Path(tempfile.mkdtemp()) / "pack"
>>> tmp = staging_dir(final, "staging")
>>> _ = (tmp / "a.txt").write_text("new")
>>> swap_in(tmp, final)
>>> sorted(p.name for p in final.parent.iterdir())
['pack']
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

KINDS = ("tmp", "staging", "old")


def staging_dir(final: str | Path, kind: str = "staging") -> Path:
    """A new empty hidden folder beside ``final`` (same file system, so a rename publishes it).

    >>> import tempfile
    >>> staging_dir(Path(tempfile.mkdtemp()) / "out", "tmp").name.startswith(".out.tmp-")
    True
    """
    if kind not in KINDS:
        raise ValueError(f"staging_dir: kind {kind!r}, expected one of {', '.join(KINDS)}")
    final = Path(os.path.abspath(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{kind}-{os.getpid()}-", dir=final.parent))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the published folder is an ordinary one
    return tmp


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_leftovers(final: str | Path) -> list[Path]:
    """Delete the temp folders of ``final`` left by interrupted runs; return what was removed.

    Removed: ``.<name>.<kind>-<pid>-*`` whose process is gone, and ``.<name>.<8 chars>`` (the
    temp folders of shard packs written before the process id was part of the name).
    """
    final = Path(os.path.abspath(final))
    if not final.parent.is_dir():
        return []
    ours = re.compile(rf"^\.{re.escape(final.name)}\.(?:{'|'.join(KINDS)})-(\d+)-")
    legacy = re.compile(rf"^\.{re.escape(final.name)}\.[a-z0-9_]{{8}}$")
    removed = []
    for p in final.parent.iterdir():
        m = ours.match(p.name)
        if (m and not _alive(int(m.group(1)))) or (not m and legacy.match(p.name)):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def swap_in(staged: str | Path, final: str | Path) -> None:
    """Publish the folder ``staged`` as ``final``, replacing what was there.

    The old ``final`` is renamed aside, ``staged`` renamed into place, then the old one deleted;
    if the second rename fails the old one is put back, so ``final`` is always either the old
    or the new folder, never a mix. ``staged`` must be a sibling of ``final``.
    """
    staged, final = Path(os.path.abspath(staged)), Path(os.path.abspath(final))
    if staged.parent != final.parent:
        raise ValueError(f"swap_in: {staged} is not beside {final}")
    if final.exists() and not final.is_dir():
        raise FileExistsError(f"cannot publish {final}: a file (not a folder) is there")
    old = None
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
        os.replace(final, old)  # onto the empty folder mkdtemp reserved
    try:
        os.replace(staged, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
