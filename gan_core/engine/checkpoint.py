"""Training checkpoints and inference models on disk: written atomically, read without running code.

Both files are ``torch.save`` dicts of tensors and plain Python values only (the config is a plain
dict, the numpy/Python RNG states are tensors and ints), so they load with
``torch.load(weights_only=True)``: a crafted ``model.pt`` whose pickle would execute code is
refused with a ``ValueError`` naming the file instead.

``checkpoint.pt`` (resume): ``step``, ``config``, ``framework`` (nets, optimizers, schedulers,
framework extras such as image pools) and ``rng`` (torch, numpy, Python, CUDA states).
``model.pt`` (inference): ``config``, ``nets``, ``framework`` (its name) and any extra plain
values (``val_mae``, ``step``).

>>> # save_model(fw, Path("runs/p2p/model.pt"), {"val_mae": 81.5})
>>> # fw = load_model("runs/p2p")          # model.pt, else checkpoint.pt, of a run folder
"""

from __future__ import annotations

import os
import random
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gan_core.presets import from_dict
from gan_core.frameworks import GANFramework, build_framework

__all__ = ["CHECKPOINT", "MODEL", "rng_state", "set_rng_state", "save_checkpoint",
           "load_checkpoint", "save_model", "read_model_file", "load_model"]

#: Training checkpoint file name inside a run folder.
CHECKPOINT = "checkpoint.pt"
#: Inference model file name inside a run folder.
MODEL = "model.pt"

_PLAIN = (type(None), bool, int, float, str, bytes, torch.Tensor, torch.dtype, torch.device,
          torch.Size)


# -- RNG states as tensors and ints -----------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """The global torch / numpy / Python (and CUDA) RNG states, as tensors and plain values."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    st: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, np.int64)),
                  "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (the CUDA states only where CUDA is available)."""
    torch.set_rng_state(st["torch"].cpu())
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = st["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in st["cuda"]])


# -- writing ----------------------------------------------------------------------------------
def _check_plain(obj: Any, where: str) -> None:
    """Raise ``TypeError`` unless ``obj`` is tensors and plain values (what weights_only loads)."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, (dict, OrderedDict)):
        for k, v in obj.items():
            _check_plain(k, f"{where} key")
            _check_plain(v, f"{where}.{k}")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
        return
    raise TypeError(f"{where}: {type(obj).__module__}.{type(obj).__qualname__} cannot be stored in a "
                    "medgan model file (expected tensors, numbers, strings, lists and dicts)")


def _atomic_save(obj: dict[str, Any], path: Path) -> None:
    _check_plain(obj, path.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(fw: GANFramework, step: int, path: str | Path) -> None:
    """Everything an exact resume needs, atomically (temp file, then rename)."""
    _atomic_save({"step": int(step), "config": fw.cfg.to_dict(), "framework": fw.state_dict(),
                  "rng": rng_state()}, Path(path))


def save_model(fw: GANFramework, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Inference weights + config (no optimizer state), atomically: what :func:`load_model` reads.

    ``extra``: plain values stored beside them (e.g. ``{"val_mae": 81.5, "step": 2000}``).
    """
    _atomic_save({"config": fw.cfg.to_dict(), "nets": {k: v.state_dict() for k, v in fw.nets.items()},
                  "framework": fw.name, **(extra or {})}, Path(path))


# -- reading ----------------------------------------------------------------------------------
def _reason(exc: Exception) -> str:
    """The informative line of a ``torch.load`` error (not torch's advice to load unsafely)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Weights only load failed", "Check the doc"))]
    return f"{type(exc).__name__}: {useful[0]}" if useful else type(exc).__name__


def read_model_file(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict in a ``model.pt`` / ``checkpoint.pt``, loaded with ``weights_only=True``.

    Raises ``FileNotFoundError`` when it is missing and ``ValueError`` naming the file when it is
    not a medgan model (including a pickle that would run code, or an unreadable file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        sd = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - reported with the file name
        raise ValueError(f"{path}: not a medgan model/checkpoint: it does not load as tensors and "
                         f"plain values, and nothing in it was run ({_reason(exc)})") from exc
    if not isinstance(sd, dict) or not isinstance(sd.get("config"), dict):
        raise ValueError(f"{path}: not a medgan model/checkpoint (expected a dict with a "
                         "'config' mapping)")
    return sd


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A training checkpoint (``step``, ``config``, ``framework``, ``rng``), safely loaded."""
    sd = read_model_file(path, map_location)
    missing = [k for k in ("step", "framework", "rng") if k not in sd]
    if missing or not isinstance(sd["framework"], dict):
        raise ValueError(f"{path}: not a medgan training checkpoint (missing {missing or ['framework']}); "
                         f"model.pt files hold inference weights only")
    return sd


def load_model(path: str | Path, device: str | torch.device = "cpu") -> GANFramework:
    """A framework in eval mode from ``model.pt`` / ``checkpoint.pt`` or a run folder holding one.

    >>> # fw = load_model("runs/p2p/model.pt"); fw.generate(x)
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL if (path / MODEL).exists() else path / CHECKPOINT
    sd = read_model_file(path)
    nets = sd.get("nets")
    if nets is None and isinstance(sd.get("framework"), dict):
        nets = sd["framework"].get("nets")
    if not isinstance(nets, dict):
        raise ValueError(f"{path}: not a medgan model/checkpoint (no network weights)")
    cfg = from_dict(sd["config"])
    cfg.compile = False
    fw = build_framework(cfg, device=device)
    for k, net in fw.nets.items():
        if k not in nets:
            raise ValueError(f"{path}: no weights for network {k!r} of framework {fw.name!r}")
        net.load_state_dict(nets[k])
    fw.train(False)
    return fw
