"""A deterministic digital head phantom: paired T1 MR and CT (HU) with labels, mask and lesions.

The phantom is built to make MR -> CT synthesis genuinely hard rather than a lookup table:

* **air/bone ambiguity**: cortical bone and air (background, sinuses) are both near zero on T1,
  yet 2000 HU apart on CT; diploic marrow is intermediate on T1 and ~300 HU.
* anatomy: scalp, subcutaneous fat, outer/inner cortical tables with diploe between them, a skull
  base plate, CSF (subarachnoid layer, sulci, interhemispheric fissure, ventricles), a folded
  cortical grey-matter ribbon, deep grey nuclei, white matter, eyes in orbital fat, and
  air-filled frontal/ethmoid/sphenoid/maxillary sinuses and nasal cavity walled by bone.
* subject variability from the seed: head size/shape, skull thickness (varying over the skull),
  ventricle size, pose (rotation about all axes + translation), a smooth random deformation,
  tissue value jitter, noise levels; optional lesions (haemorrhage-like hyperdense or
  infarct-like hypodense, with T1 contrast) and an optional rigid MR-vs-CT misalignment.
* acquisition: CT gets partial-volume blur and Gaussian noise; MR gets partial-volume blur,
  a smooth multiplicative bias field and Rician noise.

Anatomy lives in physical millimetres, so the same head sampled at another spacing looks the
same. The affine is ``diag(spacing)`` with the volume centred on the world origin; arrays are
(X, Y, Z) with axial slices along Z. Label map, body mask and lesion mask are on the CT grid.

>>> s = generate_subject(3, shape=(48, 48, 16), spacing=(4.0, 4.0, 9.0))
>>> s.ct.shape, s.mr.dtype.name, s.labels.dtype.name
((48, 48, 16), 'float32', 'uint8')
>>> bool(s.ct[s.labels == TISSUES["cortical_bone"]].mean() > 500)
True
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from gan_core.data.nifti import save_volume

__all__ = [
    "TISSUES", "TISSUE_HU", "TISSUE_HU_RANGE", "TISSUE_T1", "COHORT_FILES", "PhantomSubject",
    "generate_subject", "write_cohort", "subject_seed", "add_phantom_args", "run_phantom_cli",
]

#: Label values of the tissue map (uint8). "air" is the background outside the head.
TISSUES: dict[str, int] = {
    "air": 0,
    "soft_tissue": 1,     # skin, galea, muscle, face
    "fat": 2,             # subcutaneous and orbital fat
    "cortical_bone": 3,   # outer/inner tables, skull base, sinus walls, orbit
    "marrow": 4,          # diploe between the tables
    "csf": 5,             # subarachnoid layer, sulci, fissure, ventricles
    "grey_matter": 6,     # cortical ribbon + deep grey nuclei
    "white_matter": 7,
    "sinus_air": 8,       # paranasal sinuses, nasal cavity
    "eye": 9,             # vitreous
}

#: Nominal CT value (HU) per tissue; each subject draws its own value from ``TISSUE_HU_RANGE``.
TISSUE_HU: dict[str, float] = {
    "air": -1000.0, "soft_tissue": 40.0, "fat": -100.0, "cortical_bone": 1100.0, "marrow": 300.0,
    "csf": 5.0, "grey_matter": 38.0, "white_matter": 25.0, "sinus_air": -1000.0, "eye": 10.0,
}

#: Range of the per-subject tissue HU (cortical bone also varies spatially, always within it).
TISSUE_HU_RANGE: dict[str, tuple[float, float]] = {
    "air": (-1000.0, -1000.0), "soft_tissue": (30.0, 55.0), "fat": (-120.0, -80.0),
    "cortical_bone": (700.0, 1500.0), "marrow": (220.0, 380.0), "csf": (0.0, 12.0),
    "grey_matter": (33.0, 44.0), "white_matter": (20.0, 30.0),
    "sinus_air": (-1000.0, -1000.0), "eye": (4.0, 16.0),
}

#: Nominal T1-weighted signal (arbitrary units): fat bright, WM > GM > CSF, bone ~ air ~ 0.
TISSUE_T1: dict[str, float] = {
    "air": 0.0, "soft_tissue": 380.0, "fat": 950.0, "cortical_bone": 15.0, "marrow": 420.0,
    "csf": 110.0, "grey_matter": 520.0, "white_matter": 760.0, "sinus_air": 0.0, "eye": 90.0,
}

#: Files of one cohort subject, with the dtype each is written as.
COHORT_FILES: dict[str, str] = {
    "mr": "float32", "ct": "int16", "mask": "uint8", "labels": "uint8", "lesion": "uint8",
}

_CT_CLIP = (-1024.0, 3071.0)
_PV_SIGMA_VOX = 1.0 / math.sqrt(12.0)  # a box voxel's blur, as a Gaussian (in voxels)
_ROUND = 4

_L = TISSUES  # short alias for the renderer


@dataclass
class PhantomSubject:
    """One phantom subject. Arrays are (X, Y, Z) on the same grid, described by ``affine``.

    ``mr``: T1 float32 (arbitrary units); ``ct``: HU float32 (integer-valued, fits int16);
    ``mask``/``labels``/``lesion``: uint8. ``meta``: JSON-ready description of the subject.
    """

    mr: np.ndarray
    ct: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    lesion: np.ndarray
    affine: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore


# --------------------------------------------------------------------------- validation

def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    try:
        vals = tuple(shape)
    except TypeError:
        raise ValueError(f"phantom shape: expected 3 integers >= 16 (X, Y, Z), got {shape!r}") from None
    if len(vals) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in vals) or any(v < 16 for v in vals):
        raise ValueError(f"phantom shape: expected 3 integers >= 16 (X, Y, Z), got {shape!r}")
    return tuple(int(v) for v in vals)  # type: ignore[return-value]


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in spacing)
    except (TypeError, ValueError):
        raise ValueError(f"phantom spacing: expected 3 positive numbers in mm, got {spacing!r}") from None
    if len(vals) != 3 or not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"phantom spacing: expected 3 positive numbers in mm, got {spacing!r}")
    return vals  # type: ignore[return-value]


def _check_prevalence(p: float) -> float:
    p = float(p)
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"phantom lesion_prevalence: expected a probability in [0, 1], got {p}")
    return p


def _check_misalign(m: float) -> float:
    m = float(m)
    if not (math.isfinite(m) and 0.0 <= m <= 50.0):
        raise ValueError(f"phantom misalign_mm: expected a distance in [0, 50] mm, got {m}")
    return m


def _check_seed(seed: int, what: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"phantom {what}: expected a non-negative integer, got {seed!r}")
    return int(seed)


# --------------------------------------------------------------------------- small helpers

def _rot(rx: float, ry: float, rz: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx from angles in degrees."""
    a, b, c = np.deg2rad([rx, ry, rz])
    Rx = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    Ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    Rz = np.array([[math.cos(c), -math.sin(c), 0], [math.sin(c), math.cos(c), 0], [0, 0, 1]])
    return Rz @ Ry @ Rx


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float]) -> np.ndarray:
    """``n`` random plane waves as rows (kx, ky, kz, phase), k in rad/mm."""
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    k = d * (2 * np.pi / rng.uniform(*wavelength, size=(n, 1)))
    return np.concatenate([k, rng.uniform(0, 2 * np.pi, size=(n, 1))], axis=1)


def _field(waves: np.ndarray, x, y, z) -> np.ndarray:
    """Smooth random field with unit standard deviation: normalised sum of plane waves."""
    out = None
    for kx, ky, kz, ph in waves.tolist():
        term = np.sin(x * kx + y * ky + z * kz + ph)
        out = term if out is None else out + term
    return (out * (1.0 / math.sqrt(len(waves) / 2.0))).astype(np.float32, copy=False)


def _ell2(ux, uy, uz, c: Sequence[float], r: Sequence[float]) -> np.ndarray:
    """Squared normalised ellipsoid radius ((u-c)/r)^2 summed; <= 1 inside."""
    return (((ux - c[0]) * (1.0 / r[0])) ** 2 + ((uy - c[1]) * (1.0 / r[1])) ** 2
            + ((uz - c[2]) * (1.0 / r[2])) ** 2)


def _r(x: Any) -> Any:
    """Round floats (also inside lists/dicts) for compact, stable JSON."""
    if isinstance(x, dict):
        return {k: _r(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_r(v) for v in (x.tolist() if isinstance(x, np.ndarray) else x)]
    if isinstance(x, (float, np.floating)):
        v = round(float(x), _ROUND)
        return 0.0 if v == 0 else v
    if isinstance(x, np.integer):
        return int(x)
    return x


def _grid_affine(shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> np.ndarray:
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(shape, spacing)]
    return aff


# --------------------------------------------------------------------------- the subject

def _draw_subject(rng: np.random.Generator) -> dict[str, Any]:
    """All random anatomy/appearance parameters of one subject (one RNG stream)."""
    scale = float(np.clip(rng.normal(1.0, 0.04), 0.92, 1.07))
    radii = [70.0 * scale * rng.uniform(0.97, 1.03), 84.0 * scale * rng.uniform(0.97, 1.03),
             70.0 * scale * rng.uniform(0.97, 1.03)]
    hu = {k: float(rng.uniform(*v)) for k, v in TISSUE_HU_RANGE.items()}
    hu["cortical_bone"] = float(rng.uniform(950.0, 1250.0))  # base; spatial variation on top
    t1 = {k: float(v * rng.uniform(0.93, 1.07)) for k, v in TISSUE_T1.items()}
    t1["cortical_bone"] = float(rng.uniform(5.0, 25.0))
    return {
        "scale": scale,
        "head_radii_mm": radii,
        "pose_rotation_deg": [float(rng.uniform(-8, 8)), float(rng.uniform(-5, 5)),
                              float(rng.uniform(-8, 8))],
        "pose_translation_mm": [float(rng.uniform(-4, 4)), float(rng.uniform(-4, 4)),
                                float(rng.uniform(-3, 3))],
        "deformation_mm": float(rng.uniform(1.5, 3.5)),
        "skull_scale": float(rng.uniform(0.8, 1.3)),
        "fat_mm": float(rng.uniform(2.0, 5.0)),
        "csf_mm": float(rng.uniform(1.5, 3.0)),
        "gm_mm": float(rng.uniform(2.2, 3.0)),
        "fold_mm": float(rng.uniform(4.0, 7.0)),
        "ventricle_scale": float(rng.uniform(0.75, 1.5)),
        "skull_base_mm": float(rng.uniform(5.0, 8.0)),
        "frontal_sinus": float(rng.uniform(0.6, 1.3)) if rng.random() > 0.1 else 0.0,
        "maxillary_sinus": float(rng.uniform(0.85, 1.15)),
        "tissue_hu": hu,
        "tissue_t1": t1,
        "ct_noise_hu": float(rng.uniform(10.0, 20.0)),
        "mr_noise_frac": float(rng.uniform(0.015, 0.035)),
        "bias_amplitude": float(rng.uniform(0.08, 0.25)),
        # smooth random fields: deformation (3), surface, fat, skull, bone density, folding, bias
        "w_def": [_waves(rng, 4, (90.0, 220.0)) for _ in range(3)],
        "w_surface": _waves(rng, 5, (50.0, 120.0)),
        "w_fat": _waves(rng, 4, (40.0, 100.0)),
        "w_skull": _waves(rng, 4, (50.0, 140.0)),
        "w_bone": _waves(rng, 4, (20.0, 60.0)),
        "w_fold": _waves(rng, 10, (14.0, 26.0)),
        "w_bias": _waves(rng, 3, (180.0, 400.0)),
    }


def _render(p: dict[str, Any], shape: tuple[int, int, int],
            spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (uint8), clean HU and clean T1 (float32) of the subject on the CT grid."""
    px, py, pz = (((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s)
                  for n, s in zip(shape, spacing))
    X, Y, Z = px[:, None, None], py[None, :, None], pz[None, None, :]
    R = _rot(*p["pose_rotation_deg"])
    t = p["pose_translation_mm"]
    # canonical head coordinates u = R^T (x - t) + smooth deformation
    Xt, Yt, Zt = X - t[0], Y - t[1], Z - t[2]
    u = []
    for i in range(3):
        ui = Xt * float(R[0, i]) + Yt * float(R[1, i]) + Zt * float(R[2, i])
        ui = ui + p["deformation_mm"] * _field(p["w_def"][i], X, Y, Z)
        u.append(ui.astype(np.float32, copy=False))
    ux, uy, uz = u

    ax, ay, az = p["head_radii_mm"]
    sk = p["skull_scale"]
    zb0 = -0.29 * az  # skull base height at uy = 0 (anterior fossa higher, posterior lower)

    def sig(v):
        return 1.0 / (1.0 + np.exp(-v))

    # head surface: ellipsoid, narrowing towards the jaw and continuing as a neck, slightly bumpy
    ax_eff = ax * (1.0 - 0.12 * sig(-(uz + 0.55 * az) / 8.0))
    uzc = np.maximum(uz, -0.6 * az)  # below this the cross-section stays constant (neck)
    r = np.sqrt((ux / ax_eff) ** 2 + (uy * (1.0 / ay)) ** 2 + (uzc * (1.0 / az)) ** 2)
    r *= 1.0 + 0.012 * _field(p["w_surface"], ux, uy, uz)
    norm_u = np.sqrt(ux * ux + uy * uy + uzc * uzc)
    depth = norm_u * (1.0 / np.maximum(r, 1e-3) - 1.0)  # mm below the head surface (approx.)
    del r, ax_eff, uzc, norm_u

    # layer boundaries (cumulative depths); skull thicker at front/back, thinner at the temples
    f_skull = _field(p["w_skull"], ux, uy, uz)
    temple = 1.0 - 0.35 * np.minimum((ux * (1.0 / ax)) ** 4, 1.0)
    d1 = 1.5
    d2 = d1 + p["fat_mm"] * np.clip(1.0 + 0.35 * _field(p["w_fat"], ux, uy, uz), 0.3, None)
    d3 = d2 + 1.5
    d4 = d3 + 1.9 * sk * temple * (1.0 + 0.2 * f_skull)
    d5 = d4 + 2.8 * sk * temple * np.clip(1.0 + 0.35 * f_skull, 0.3, None)
    d6 = d5 + 1.5 * sk * temple * (1.0 + 0.2 * f_skull)
    del f_skull, temple

    INTRA = 255
    labels = np.select(
        [depth <= 0, depth <= d1, depth <= d2, depth <= d3, depth <= d4, depth <= d5, depth <= d6],
        [_L["air"], _L["soft_tissue"], _L["fat"], _L["soft_tissue"], _L["cortical_bone"],
         _L["marrow"], _L["cortical_bone"]], default=INTRA).astype(np.uint8)
    intra = labels == INTRA

    # skull base: a bone plate (marrow core) under the brain, dropping into the posterior fossa;
    # below it face and neck: soft tissue (the skull tables stop there)
    zb = zb0 + 0.22 * uy - 5.0 * (ux * (1.0 / ax)) ** 2 - 16.0 * sig(-(uy + 0.2 * ay) / 8.0)
    hb = uz - zb
    tb = p["skull_base_mm"]
    labels[(hb < -tb) & (depth > d3)] = _L["soft_tissue"]
    plate = intra & (hb >= -tb) & (hb < 0)
    labels[plate] = np.where((hb[plate] > -0.7 * tb) & (hb[plate] < -0.3 * tb),
                             _L["marrow"], _L["cortical_bone"]).astype(np.uint8)
    brain = intra & (hb >= 0)
    # cervical spine under the foramen magnum: vertebral body (shell + marrow), canal, cord
    yc = -0.2 * ay
    q_body = _ell2(ux, uy, 0.0, (0.0, yc + 15.0, 0.0), (9.0, 7.5, 1.0))
    q_canal = _ell2(ux, uy, 0.0, (0.0, yc, 0.0), (7.0, 6.5, 1.0))
    below = hb < -tb
    labels[below & (q_body <= 1.4)] = _L["cortical_bone"]
    labels[below & (q_body <= 0.75)] = _L["marrow"]
    canal = (hb < 0) & (depth > d3) & (q_canal <= 1.0)
    labels[canal] = _L["csf"]
    labels[canal & (q_canal <= 0.35)] = _L["white_matter"]
    del plate, q_body, q_canal, below, canal

    # brain: CSF layer, folded cortical ribbon with sulcal CSF, white matter
    db = np.minimum(depth - d6, hb)[brain]
    b = db - p["csf_mm"]
    g = 0.5 + 0.5 * np.tanh(_field(p["w_fold"], ux[brain], uy[brain], uz[brain]))
    gm_mm = p["gm_mm"]
    b_gw = gm_mm + p["fold_mm"] * g
    sub = np.full(db.shape, _L["white_matter"], np.uint8)
    sub[b < b_gw] = _L["grey_matter"]
    sub[(g > 0.88) & (b < b_gw - 0.8 * gm_mm)] = _L["csf"]
    sub[b < 0] = _L["csf"]
    labels[brain] = sub
    del db, b, g, b_gw, sub, d1, d2, d3, d4, d5, d6

    # deep structures in normalised brain coordinates
    top = az - 10.0 * sk
    bz, hbz = (top + zb0) / 2.0, (top - zb0) / 2.0
    bx, by = ax - 10.0 * sk, ay - 10.0 * sk
    vx, vy, vz = ux[brain] * (1.0 / bx), uy[brain] * (1.0 / by), (uz[brain] - bz) * (1.0 / hbz)
    sub = labels[brain]
    deep = np.zeros(vx.shape, bool)
    for sx in (-1.0, 1.0):
        deep |= _ell2(vx, vy, vz, (0.12 * sx, -0.12, -0.05), (0.11, 0.17, 0.15)) <= 1  # thalamus
        deep |= _ell2(vx, vy, vz, (0.30 * sx, 0.12, -0.02), (0.08, 0.20, 0.15)) <= 1  # lentiform
        deep |= _ell2(vx, vy, vz, (0.17 * sx, 0.28, 0.12), (0.07, 0.10, 0.11)) <= 1   # caudate
    sub[deep & (sub == _L["white_matter"])] = _L["grey_matter"]
    vs = p["ventricle_scale"]
    vent = _ell2(vx, vy, vz, (0.0, -0.08, -0.08), (0.025 * vs, 0.14, 0.13 * vs)) <= 1  # 3rd
    for sx in (-1.0, 1.0):  # lateral ventricles, arched
        zc = 0.14 - 0.7 * (vy - 0.05) ** 2
        vent |= _ell2(vx, vy, vz - zc, (0.12 * sx, 0.05, 0.0), (0.085 * vs, 0.36, 0.1 * vs)) <= 1
    sub[vent] = _L["csf"]
    sub[(np.abs(ux[brain]) < 1.6) & (vz > 0.3)] = _L["csf"]  # interhemispheric fissure
    labels[brain] = sub
    del vx, vy, vz, sub, deep, vent, brain, hb, zb

    # face: orbits/eyes and air sinuses walled by bone (positions from the head surface)
    inside = depth > 0

    def surface_y(x: float, zz: float) -> float:
        q = 1.0 - (x / ax) ** 2 - (zz / az) ** 2
        return ay * math.sqrt(max(q, 0.05))

    s_max = p["maxillary_sinus"]
    z_eye = zb0 - 3.0
    eye_y = surface_y(0.44 * ax, z_eye) - 13.0
    z_max = zb0 - 30.0
    sinuses = [  # (centre, radii, wall mm)
        ((0.0, 0.12 * ay, zb0 - 10.0), (10.0, 9.0, 7.5), 1.5),                      # sphenoid
        ((0.0, surface_y(0.0, z_max) - 22.0, z_max + 2.0), (5.0, 19.0, 14.0), 1.5),  # nasal
    ]
    for sx in (-1.0, 1.0):
        sinuses.append(((sx * 0.11 * ax, eye_y - 4.0, zb0 - 4.0), (5.0, 11.0, 7.0), 1.2))  # ethmoid
        sinuses.append(((sx * 0.26 * ax, surface_y(0.26 * ax, z_max) - 27.0, z_max),
                        (11.0 * s_max, 13.0 * s_max, 13.0 * s_max), 2.0))               # maxillary
    if p["frontal_sinus"] > 0:
        zf = zb0 + 15.0
        fs = p["frontal_sinus"]
        sinuses.append(((0.0, surface_y(0.0, zf) - 5.0 - 5.5 * sk, zf),
                        (12.0 * fs, 4.5, 8.0 * fs), 2.0))
    for sx in (-1.0, 1.0):  # orbit: bony wall behind, fat, eye
        c = (sx * 0.44 * ax, eye_y, z_eye)
        d2o = _ell2(ux, uy, uz, c, (1.0, 1.0, 1.0))
        labels[inside & (d2o <= 17.5 ** 2) & (d2o > 15.5 ** 2) & (uy < eye_y)] = _L["cortical_bone"]
        labels[inside & (d2o <= 15.5 ** 2)] = _L["fat"]
        labels[inside & (d2o <= 11.5 ** 2)] = _L["eye"]
    q2 = [_ell2(ux, uy, uz, c, r) for c, r, _ in sinuses]
    for (c, r, w), qq in zip(sinuses, q2):  # walls first so neighbouring cavities stay open
        labels[inside & (qq <= ((min(r) + w) / min(r)) ** 2)] = _L["cortical_bone"]
    for qq in q2:
        labels[inside & (qq <= 1)] = _L["sinus_air"]
    del q2, d2o

    # intensities: lookup, then spatial variation of bone/marrow density
    hu_lut = np.zeros(256, np.float32)
    t1_lut = np.zeros(256, np.float32)
    for name, lab in TISSUES.items():
        hu_lut[lab] = p["tissue_hu"][name]
        t1_lut[lab] = p["tissue_t1"][name]
    hu = hu_lut[labels]
    t1 = t1_lut[labels]
    bone = labels == _L["cortical_bone"]
    f_bone = _field(p["w_bone"], ux[bone], uy[bone], uz[bone])
    base_boost = 1.0 + 0.15 * sig(-(uz[bone] - zb0) / 6.0)  # denser skull base / petrous
    lo, hi = TISSUE_HU_RANGE["cortical_bone"]
    hu[bone] = np.clip(hu[bone] * base_boost * (1.0 + 0.12 * f_bone), lo, hi)
    marrow = labels == _L["marrow"]
    hu[marrow] *= 1.0 + 0.12 * _field(p["w_bone"], uy[marrow], uz[marrow], ux[marrow])
    return labels, hu, t1


def _place_lesions(rng: np.random.Generator, labels: np.ndarray, hu: np.ndarray, t1: np.ndarray,
                   spacing: tuple[float, float, float], affine: np.ndarray,
                   prevalence: float) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Maybe add 1-2 lesions in brain parenchyma (in place on hu/t1); returns mask and list."""
    lesion = np.zeros(labels.shape, np.uint8)
    if not rng.random() < prevalence:
        return lesion, []
    n = int(rng.integers(1, 3))
    par = (labels == _L["grey_matter"]) | (labels == _L["white_matter"])
    cand = np.flatnonzero(par)
    if cand.size == 0:
        return lesion, []
    sp = np.asarray(spacing)
    out: list[dict[str, Any]] = []
    for _ in range(n):
        r0 = float(np.clip(rng.uniform(5.0, 10.0), 2.0 * max(sp[0], sp[1]), 15.0))
        radii = r0 * rng.uniform(0.8, 1.2, size=3)
        kind = "haemorrhage" if rng.random() < 0.5 else "infarct"
        if kind == "haemorrhage":
            delta = float(rng.uniform(30.0, 60.0))
            t1f = float(rng.uniform(0.25, 0.45)) * (1.0 if rng.random() < 0.6 else -1.0)
        else:
            delta = float(-rng.uniform(15.0, 25.0))
            t1f = float(-rng.uniform(0.25, 0.40))
        # centre: a parenchyma voxel whose surroundings (0.8 radius along each axis) are too
        picks = rng.choice(cand, size=min(400, cand.size), replace=False)
        ext = np.maximum(np.round(0.8 * radii / sp).astype(int), 1)
        centre = None
        for flat in picks:
            c = np.array(np.unravel_index(int(flat), labels.shape))
            ok = True
            for ax_ in range(3):
                for sgn in (-1, 1):
                    q = c.copy()
                    q[ax_] = np.clip(q[ax_] + sgn * ext[ax_], 0, labels.shape[ax_] - 1)
                    if not par[tuple(q)]:
                        ok = False
            if ok and all(np.linalg.norm((c - np.array(o["_idx"])) * sp)
                          > float(np.max(radii) + o["_rmax"] + 2.0) for o in out):
                centre = c
                break
        if centre is None:
            if out:
                break
            centre = np.array(np.unravel_index(int(picks[0]), labels.shape))
        span = np.ceil(radii / sp).astype(int) + 1
        lo = np.maximum(centre - span, 0)
        hi = np.minimum(centre + span + 1, labels.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi))
        d = [((np.arange(lo[k], hi[k]) - centre[k]) * sp[k] / radii[k]).astype(np.float32)
             for k in range(3)]
        q = np.sqrt(d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2)
        inside = (q <= 1.0) & par[box]
        w = inside.astype(np.float32)  # sharp here; the partial-volume blur softens the edge
        hu[box] += delta * w
        t1[box] *= 1.0 + t1f * w
        lesion[box] |= inside.astype(np.uint8)
        world = affine @ np.array([*centre, 1.0])
        out.append({
            "kind": kind, "centre_mm": world[:3].tolist(), "centre_voxel": centre.tolist(),
            "radii_mm": radii.tolist(), "radius_mm": float(np.mean(radii)),
            "ct_delta_hu": delta, "t1_relative_change": t1f, "voxels": int(inside.sum()),
            "_idx": centre.tolist(), "_rmax": float(np.max(radii)),
        })
    for o in out:
        del o["_idx"], o["_rmax"]
    return lesion, out


def generate_subject(subject_seed: int, *, shape: Sequence[int] = (128, 128, 48),
                     spacing: Sequence[float] = (1.5, 1.5, 3.0), lesion_prevalence: float = 0.3,
                     misalign_mm: float = 0.0) -> PhantomSubject:
    """Generate one phantom subject, fully determined by its arguments.

    Independent random streams drive anatomy, lesions, CT noise, MR noise and misalignment, so
    e.g. changing ``misalign_mm`` changes the MR but leaves CT, labels and masks identical.
    ``misalign_mm > 0`` moves the MR rigidly (translation of 0.5-1x that many mm, rotation up to
    ``min(3, misalign_mm)`` degrees per axis); ``meta["misalignment"]["matrix"]`` maps a CT
    world point to where that anatomy appears in the MR.

    >>> s = generate_subject(0, shape=(32, 32, 16), spacing=(6.0, 6.0, 9.0), lesion_prevalence=1)
    >>> s.meta["has_lesion"], int(s.lesion.max())
    (True, 1)
    """
    seed = _check_seed(subject_seed, "subject_seed")
    shape_ = _check_shape(shape)
    spacing_ = _check_spacing(spacing)
    prevalence = _check_prevalence(lesion_prevalence)
    mis = _check_misalign(misalign_mm)

    streams = np.random.SeedSequence(seed).spawn(5)
    r_anat, r_les, r_ct, r_mr, r_mis = (np.random.default_rng(s) for s in streams)
    p = _draw_subject(r_anat)
    affine = _grid_affine(shape_, spacing_)
    labels, hu, t1 = _render(p, shape_, spacing_)
    lesion, lesions = _place_lesions(r_les, labels, hu, t1, spacing_, affine, prevalence)
    mask = (labels != _L["air"]).astype(np.uint8)

    # CT: partial volume, noise, integer HU
    ct = ndimage.gaussian_filter(hu, _PV_SIGMA_VOX, truncate=2.0)
    ct += r_ct.standard_normal(ct.shape, dtype=np.float32) * np.float32(p["ct_noise_hu"])
    ct = np.clip(np.rint(ct), *_CT_CLIP).astype(np.float32)

    # MR: partial volume, optional rigid misalignment, bias field, Rician noise
    mr = ndimage.gaussian_filter(t1, _PV_SIGMA_VOX, truncate=2.0)
    mis_meta: dict[str, Any] = {"max_mm": mis, "rotation_deg": [0.0, 0.0, 0.0],
                                "translation_mm": [0.0, 0.0, 0.0], "matrix": np.eye(4).tolist()}
    if mis > 0:
        direction = r_mis.standard_normal(3)
        direction /= np.linalg.norm(direction)
        trans = direction * mis * r_mis.uniform(0.5, 1.0)
        rot_deg = r_mis.uniform(-1, 1, size=3) * min(3.0, mis)
        M = np.eye(4)
        M[:3, :3] = _rot(*rot_deg)
        M[:3, 3] = trans
        Minv = np.linalg.inv(M)
        S, Sinv = np.diag(spacing_), np.diag(1.0 / np.asarray(spacing_))
        c = affine[:3, 3]
        mat = Sinv @ Minv[:3, :3] @ S
        off = Sinv @ (Minv[:3, :3] @ c + Minv[:3, 3] - c)
        mr = ndimage.affine_transform(mr, mat, offset=off, order=1, mode="constant", cval=0.0)
        mis_meta.update(rotation_deg=rot_deg.tolist(), translation_mm=trans.tolist(),
                        matrix=M.tolist())
    px, py, pz = (((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s)
                  for n, s in zip(shape_, spacing_))
    bias = np.exp(p["bias_amplitude"] * _field(p["w_bias"], px[:, None, None],
                                                py[None, :, None], pz[None, None, :]))
    mr *= bias
    sigma = np.float32(p["mr_noise_frac"] * p["tissue_t1"]["white_matter"])
    n1 = r_mr.standard_normal(mr.shape, dtype=np.float32)
    n1 *= sigma
    mr += n1
    n2 = r_mr.standard_normal(mr.shape, dtype=np.float32)
    n2 *= sigma
    mr = np.sqrt(mr * mr + n2 * n2).astype(np.float32)

    meta = {
        "subject_seed": seed,
        "shape": list(shape_),
        "spacing_mm": list(spacing_),
        "has_lesion": bool(lesions),
        "lesions": lesions,
        "pose": {"rotation_deg": p["pose_rotation_deg"], "translation_mm": p["pose_translation_mm"]},
        "head_radii_mm": p["head_radii_mm"],
        "skull_scale": p["skull_scale"],
        "ventricle_scale": p["ventricle_scale"],
        "deformation_mm": p["deformation_mm"],
        "frontal_sinus": p["frontal_sinus"] > 0,
        "tissue_hu": p["tissue_hu"],
        "tissue_t1": p["tissue_t1"],
        "ct_noise_hu": p["ct_noise_hu"],
        "mr_noise_sigma": float(sigma),
        "mr_bias_amplitude": p["bias_amplitude"],
        "misalignment": mis_meta,
    }
    return PhantomSubject(mr=mr, ct=ct, mask=mask, labels=labels, lesion=lesion, affine=affine,
                          meta=_r(meta))


# --------------------------------------------------------------------------- the cohort

def subject_seed(seed: int, index: int) -> int:
    """Seed of subject ``index`` of a cohort: independent of the cohort size.

    >>> subject_seed(0, 3) == subject_seed(0, 3) != subject_seed(1, 3)
    True
    """
    ss = np.random.SeedSequence(_check_seed(seed, "seed"), spawn_key=(int(index),))
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_cohort(out_dir: str | os.PathLike, *, subjects: int = 8, seed: int = 0,
                 shape: Sequence[int] = (128, 128, 48), spacing: Sequence[float] = (1.5, 1.5, 3.0),
                 lesion_prevalence: float = 0.3, misalign_mm: float = 0.0) -> list[Path]:
    """Write a phantom cohort in the SynthRAD-like layout and return the subject directories.

    ``<out>/phantom_000/{mr,ct,mask,labels,lesion}.nii.gz`` (MR float32, CT int16 HU, the rest
    uint8) plus ``<out>/cohort.json`` (parameters, per-subject files with sha256, and meta; sorted
    keys, no timestamps). Subject ``i`` depends only on ``(seed, i)`` and the geometry/lesion/
    misalignment arguments, and the same arguments give byte-identical files. Each subject is
    written to a temporary directory then renamed into place (an existing one is replaced).

    >>> import tempfile
    >>> dirs = write_cohort(tempfile.mkdtemp(), subjects=1, shape=(32, 32, 16), spacing=(6, 6, 9))
    >>> sorted(p.name for p in dirs[0].iterdir())
    ['ct.nii.gz', 'labels.nii.gz', 'lesion.nii.gz', 'mask.nii.gz', 'mr.nii.gz']
    """
    if isinstance(subjects, bool) or not isinstance(subjects, (int, np.integer)) or subjects < 1:
        raise ValueError(f"phantom subjects: expected an integer >= 1, got {subjects!r}")
    seed = _check_seed(seed, "seed")
    shape_ = _check_shape(shape)
    spacing_ = _check_spacing(spacing)
    prevalence = _check_prevalence(lesion_prevalence)
    mis = _check_misalign(misalign_mm)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"phantom out_dir {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)

    dirs: list[Path] = []
    records = []
    for i in range(int(subjects)):
        sid = f"phantom_{i:03d}"
        sseed = subject_seed(seed, i)
        subj = generate_subject(sseed, shape=shape_, spacing=spacing_,
                                lesion_prevalence=prevalence, misalign_mm=mis)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sid}.", suffix=".tmp", dir=out))
        try:
            os.chmod(tmp, 0o755)
            arrays = {"mr": subj.mr, "ct": subj.ct, "mask": subj.mask, "labels": subj.labels,
                      "lesion": subj.lesion}
            files = {}
            for key, dtype in COHORT_FILES.items():
                fp = save_volume(tmp / f"{key}.nii.gz", arrays[key], affine=subj.affine,
                                 dtype=np.dtype(dtype))
                files[key] = {"path": f"{sid}/{fp.name}", "dtype": dtype, "sha256": _sha256(fp)}
            final = out / sid
            old = None
            if final.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{sid}.", suffix=".old", dir=out))
                os.replace(final, old / sid)
            os.replace(tmp, final)
            if old is not None:
                shutil.rmtree(old)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        dirs.append(final)
        records.append({"id": sid, "subject_seed": sseed, "files": files, "meta": subj.meta})

    doc = {
        "generator": "gan_core.data.phantom",
        "format_version": 1,
        "parameters": {"seed": seed, "subjects": int(subjects), "shape": list(shape_),
                       "spacing_mm": list(spacing_), "lesion_prevalence": prevalence,
                       "misalign_mm": mis},
        "tissues": TISSUES,
        "tissue_hu_nominal": TISSUE_HU,
        "files": COHORT_FILES,
        "subjects": records,
    }
    text = json.dumps(_r(doc), sort_keys=True, indent=2) + "\n"
    fd, tmpj = tempfile.mkstemp(prefix=".cohort.json.", suffix=".tmp", dir=out)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmpj, 0o644)
    os.replace(tmpj, out / "cohort.json")
    return dirs


# --------------------------------------------------------------------------- CLI helpers

def _triple(kind: type, what: str):
    def parse(text: str):
        parts = [s for s in text.replace("x", ",").split(",") if s.strip()]
        try:
            vals = tuple(kind(s) for s in parts)
        except ValueError:
            vals = ()
        if len(vals) != 3:
            raise argparse.ArgumentTypeError(
                f"{what}: expected three comma-separated {kind.__name__}s like "
                f"{'128,128,48' if kind is int else '1.5,1.5,3'}, got {text!r}")
        return vals
    return parse


def add_phantom_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the phantom cohort options to ``parser`` (``--out`` is required).

    >>> ap = add_phantom_args(argparse.ArgumentParser())
    >>> ap.parse_args(["--out", "x", "--shape", "64,64,24"]).shape
    (64, 64, 24)
    """
    parser.add_argument("--out", required=True, help="output directory of the cohort")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--subjects", type=int, default=8, help="number of subjects (default 8)")
    parser.add_argument("--shape", type=_triple(int, "--shape"), default=(128, 128, 48),
                        help="voxels X,Y,Z (default 128,128,48)")
    parser.add_argument("--spacing", type=_triple(float, "--spacing"), default=(1.5, 1.5, 3.0),
                        help="voxel size in mm X,Y,Z (default 1.5,1.5,3)")
    parser.add_argument("--lesion-prevalence", type=float, default=0.3,
                        help="probability that a subject has lesions (default 0.3)")
    parser.add_argument("--misalign-mm", type=float, default=0.0,
                        help="max rigid MR-vs-CT offset in mm, 0 = aligned (default 0)")
    return parser


def run_phantom_cli(args: argparse.Namespace) -> list[Path]:
    """Write the cohort described by parsed :func:`add_phantom_args` options."""
    return write_cohort(args.out, subjects=args.subjects, seed=args.seed, shape=args.shape,
                        spacing=args.spacing, lesion_prevalence=args.lesion_prevalence,
                        misalign_mm=args.misalign_mm)


if __name__ == "__main__":  # python -m gan_core.data.phantom --out /tmp/phantom
    _args = add_phantom_args(argparse.ArgumentParser(description=__doc__.split("\n")[0])).parse_args()
    for _d in run_phantom_cli(_args):
        print(_d)
