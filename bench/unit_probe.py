"""Why UNIT does (not) learn MR -> CT on the unpaired benchmark: measurements of a trained model.

    python bench/unit_probe.py --workdir unpaired_run --results bench/data/unpaired_unit.jsonl

For every UNIT row of ``--results`` (written by ``bench/unpaired.py``) whose model is still under
``<workdir>/runs/<variant>-s<seed>-<steps>``, this measures on the TEST subjects of the paired
benchmark (both MR and CT of one subject, so both VAEs and the translation can be judged) and
adds the result to the row as ``probe`` (the file is rewritten via a temp file and a rename):

- ``recon``: each VAE within its own domain, from the latent mean: the MR VAE's L1 in the [-1, 1]
  input units (``mr_l1``; ``mr_l1_rel``: divided by the MR's own mean absolute deviation in the
  body, 1.0 = no better than a constant) and the CT VAE's MAE in HU (``ct_mae``) and signed mean
  HU per tissue (``ct_tissue_hu``).
- ``translation``: ``G_B(E_A(mr))``: MAE in HU and signed mean HU per tissue (``tissue_hu``), as
  ``bench/unpaired.py`` scores it.
- ``latent``: the KL term ``mean(mu**2)`` per domain (``kl_mr``, ``kl_ct``: UNIT's posterior is
  N(mu, I), so the training noise has variance 1 per unit) and the latent's signal variance
  across positions (``var_mr``, ``var_ct``: mean over channels; well below 1 means the unit
  noise drowns the code); ``align``: ``E||mu_A(mr) - mu_B(ct)||^2 / E||mu_B(ct) - mean||^2`` over
  the same subject's slices (0: MR and CT land on one shared code, 1: no closer than the CT
  latent's own spread, > 1: farther).
- ``probe``: linear probes of the tissue label of each latent cell (majority label of its
  ``2**n_downsampling`` block) by multinomial logistic regression, fitted on the paired
  TRAINING subjects' MR latents (``mr->``) or CT latents (``ct->``) and scored on the test
  subjects' MR (``->mr``) and CT (``->ct``) latents: balanced accuracy over the tissues present.
  A shared latent carries tissue identity the same way for both domains, so ``mr->ct`` is about
  ``mr->mr``. ``input_mr`` / ``input_ct``: the same probe on the raw image blocks (the tissue
  information a linear read-out finds in the input itself, the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from gan_core.data.normalize import unit_to_ct  # noqa: E402
from gan_core.data.phantom import TISSUES  # noqa: E402
from gan_core.data.shards import Shards  # noqa: E402
from gan_core.engine import load_model  # noqa: E402

#: tissues reported (as bench/unpaired.py; eye is left out: a few voxels per slab)
REPORT_TISSUES = ("air", "fat", "soft_tissue", "grey_matter", "white_matter", "csf",
                  "cortical_bone", "marrow", "sinus_air")
#: training cells per probe (random subset; the logistic regression runs on one thread)
PROBE_CELLS = 20000


def _slabs(pack: Path) -> list[tuple[str, dict[str, np.ndarray]]]:
    sh = Shards(pack)
    return [(s["id"], sh.subject_slab(i)) for i, s in enumerate(sh.subjects)]


@torch.no_grad()
def _vae_pass(fw, slab: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Latent means and decodings of one slab's MR and CT (axial slices, eval mode: z = mu)."""
    vae = fw.vae
    vae.eval()
    mr = torch.from_numpy(np.array(slab["mr"], np.float32))[:, None]
    ct = torch.from_numpy(np.array(slab["ct"], np.float32))[:, None]
    mu_a, mu_b = vae.encode(mr, "A"), vae.encode(ct, "B")
    return {"mu_a": mu_a.numpy(), "mu_b": mu_b.numpy(),
            "x_aa": vae.decode(mu_a, "A")[:, 0].numpy(), "x_bb": vae.decode(mu_b, "B")[:, 0].numpy(),
            "x_ab": vae.decode(mu_a, "B")[:, 0].numpy()}


def _tissue_hu(hu: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return {t: float(hu[labels == TISSUES[t]].mean()) for t in REPORT_TISSUES
            if (labels == TISSUES[t]).any()}


def block_labels(labels: np.ndarray, block: int) -> np.ndarray:
    """Majority label of each ``block x block`` cell of a ``(Z, H, W)`` label map -> ``(Z, H/b, W/b)``.

    >>> lab = np.zeros((1, 4, 4), np.uint8); lab[0, :2, :2] = 3; lab[0, 0, 2] = 5
    >>> block_labels(lab, 2)[0].tolist()
    [[3, 0], [0, 0]]
    """
    z, h, w = labels.shape
    cells = labels.reshape(z, h // block, block, w // block, block).transpose(0, 1, 3, 2, 4)
    cells = cells.reshape(z, h // block, w // block, block * block).astype(np.int64)
    counts = np.stack([(cells == k).sum(-1) for k in range(int(labels.max()) + 1)], -1)
    return counts.argmax(-1)


def _cells(mu: np.ndarray) -> np.ndarray:
    """``(Z, C, h, w)`` latent -> ``(Z*h*w, C)`` one row per latent cell."""
    return np.moveaxis(mu, 1, -1).reshape(-1, mu.shape[1])


def _blocks(img: np.ndarray, block: int) -> np.ndarray:
    """``(Z, H, W)`` image -> ``(Z*H/b*W/b, b*b)`` the raw pixels of each cell."""
    z, h, w = img.shape
    x = img.reshape(z, h // block, block, w // block, block).transpose(0, 1, 3, 2, 4)
    return x.reshape(-1, block * block)


def _fit_probe(x: np.ndarray, y: np.ndarray, seed: int = 0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    keep = rng.permutation(len(y))[:PROBE_CELLS]
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    return clf.fit(x[keep], y[keep])


def _balanced(clf, x: np.ndarray, y: np.ndarray) -> float:
    import warnings

    from sklearn.metrics import balanced_accuracy_score

    keep = y != TISSUES["eye"]
    with warnings.catch_warnings():  # a probe may predict eye, which the score leaves out
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(y[keep], clf.predict(x[keep])))


def probe_model(model: Path, bench: Path) -> dict[str, Any]:
    """All measurements of the module docstring for one trained UNIT ``model``."""
    fw = load_model(model, "cpu")
    if fw.cfg.framework != "unit":
        raise ValueError(f"{model}: a {fw.cfg.framework!r} model; unit_probe measures UNIT only")
    block = fw.vae.multiple
    feats: dict[str, dict[str, list[np.ndarray]]] = {
        split: {k: [] for k in ("mu_a", "mu_b", "in_a", "in_b", "y")} for split in ("train", "test")}
    per_subject = []
    for split in ("train", "test"):
        for sid, slab in _slabs(bench / "paired" / split):
            out = _vae_pass(fw, slab)
            y = block_labels(np.asarray(slab["labels"]), block).ravel()
            f = feats[split]
            f["mu_a"].append(_cells(out["mu_a"]))
            f["mu_b"].append(_cells(out["mu_b"]))
            f["in_a"].append(_blocks(np.asarray(slab["mr"], np.float32), block))
            f["in_b"].append(_blocks(np.asarray(slab["ct"], np.float32), block))
            f["y"].append(y)
            if split != "test":
                continue
            body = np.asarray(slab["mask"]) > 0
            lab = np.asarray(slab["labels"])
            mr = np.asarray(slab["mr"], np.float32)
            gt = unit_to_ct(np.asarray(slab["ct"], np.float32))
            rec_ct, sct = unit_to_ct(out["x_bb"]), unit_to_ct(out["x_ab"])
            mu_a, mu_b = out["mu_a"].astype(np.float64), out["mu_b"].astype(np.float64)
            spread_b = ((mu_b - mu_b.mean(axis=(0, 2, 3), keepdims=True)) ** 2).sum(1).mean()
            per_subject.append({
                "subject": sid,
                "mr_l1": float(np.abs(out["x_aa"] - mr)[body].mean()),
                "mr_l1_rel": float(np.abs(out["x_aa"] - mr)[body].mean()
                                   / np.abs(mr[body] - mr[body].mean()).mean()),
                "ct_mae": float(np.abs(rec_ct - gt)[body].mean()),
                "ct_tissue_hu": _tissue_hu(rec_ct, lab),
                "sct_mae": float(np.abs(sct - gt)[body].mean()),
                "tissue_hu": _tissue_hu(sct, lab),
                "true_tissue_hu": _tissue_hu(gt, lab),
                "kl_mr": float((mu_a ** 2).mean()), "kl_ct": float((mu_b ** 2).mean()),
                "var_mr": float(mu_a.var(axis=(0, 2, 3)).mean()),
                "var_ct": float(mu_b.var(axis=(0, 2, 3)).mean()),
                "align": float(((mu_a - mu_b) ** 2).sum(1).mean() / spread_b),
            })
    cat = {s: {k: np.concatenate(v) for k, v in f.items()} for s, f in feats.items()}
    tr, te = cat["train"], cat["test"]
    probes = {}
    for name, key in (("mr", "mu_a"), ("ct", "mu_b")):
        clf = _fit_probe(tr[key], tr["y"])
        probes[f"{name}->mr"] = _balanced(clf, te["mu_a"], te["y"])
        probes[f"{name}->ct"] = _balanced(clf, te["mu_b"], te["y"])
    for name, key in (("input_mr", "in_a"), ("input_ct", "in_b")):
        probes[name] = _balanced(_fit_probe(tr[key], tr["y"]), te[key], te["y"])

    def mean(k: str) -> float:
        return float(np.mean([r[k] for r in per_subject]))

    def mean_tissue(k: str) -> dict[str, float]:
        return {t: float(np.mean([r[k][t] for r in per_subject if t in r[k]])) for t in REPORT_TISSUES}

    return {"recon": {"mr_l1": mean("mr_l1"), "mr_l1_rel": mean("mr_l1_rel"), "ct_mae": mean("ct_mae"),
                      "ct_tissue_hu": mean_tissue("ct_tissue_hu")},
            "translation": {"mae": mean("sct_mae"), "tissue_hu": mean_tissue("tissue_hu"),
                            "true_tissue_hu": mean_tissue("true_tissue_hu")},
            "latent": {k: mean(k) for k in ("kl_mr", "kl_ct", "var_mr", "var_ct", "align")},
            "probe": probes, "per_subject": per_subject}


def run_dir(work: Path, row: dict[str, Any]) -> Path:
    """Where ``bench/unpaired.py`` trained the row's model."""
    return work / "runs" / f"{row['variant']}-s{row['seed']}-{row['steps']}"


def summary(row: dict[str, Any]) -> str:
    """One line per probed row: the numbers docs/results.md quotes."""
    p = row["probe"]
    r, t, lat, pr = p["recon"], p["translation"], p["latent"], p["probe"]
    hu = " ".join(f"{k[:5]} {v:+.0f}" for k, v in t["tissue_hu"].items())
    return (f"{row['variant']} s{row['seed']} {row['steps']}: recon MR L1 {r['mr_l1']:.3f} "
            f"(rel {r['mr_l1_rel']:.2f}) CT {r['ct_mae']:.0f} HU | sCT {t['mae']:.0f} HU [{hu}] | "
            f"KL mr {lat['kl_mr']:.3f} ct {lat['kl_ct']:.3f} var mr {lat['var_mr']:.3f} "
            f"ct {lat['var_ct']:.3f} align {lat['align']:.2f} | probe "
            + " ".join(f"{k} {v:.2f}" for k, v in pr.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workdir", required=True, help="bench/unpaired.py's --workdir")
    p.add_argument("--results", required=True, help="its JSON lines file; probed rows are updated")
    p.add_argument("--redo", action="store_true", help="probe rows that already have a probe")
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    work, res = Path(a.workdir), Path(a.results)
    rows = [json.loads(x) for x in res.read_text().splitlines() if x.strip()]
    for row in rows:
        if row.get("framework") != "unit" or ("probe" in row and not a.redo):
            continue
        model = run_dir(work, row)
        if not model.exists():
            print(f"{row['variant']} s{row['seed']}: no model under {model}; skipped", flush=True)
            continue
        row["probe"] = probe_model(model, work)
        print(summary(row), flush=True)
        tmp = res.with_suffix(res.suffix + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tmp.replace(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
