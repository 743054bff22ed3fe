"""Synthetic nodule volumes whose malignancy label is a function of what the image shows (readout tests)."""

from __future__ import annotations

import numpy as np

from medmtl.io.types import Lesion

SPACING = np.array([0.8, 0.8, 1.0])


def affine() -> np.ndarray:
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = [-40.0, -40.0, -30.0]
    return aff


def nodule_scan(rng: np.random.Generator, d_mm: float, *, calcified: bool, spiculated: bool,
                ground_glass: bool) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A 100×100×60 lung-like volume (−850 HU + noise) with one nodule at the centre (LPS mm returned)."""
    shape = (100, 100, 60)
    vol = rng.normal(-850.0, 25.0, size=shape).astype(np.float32)
    aff = affine()
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    centre_vox = np.array([50.0, 50.0, 30.0]) + rng.uniform(-0.5, 0.5, 3)
    off = (ijk - centre_vox) * SPACING
    dist = np.sqrt((off**2).sum(-1))
    r = d_mm / 2.0
    vol[dist <= r] = -550.0 if ground_glass else 30.0
    if calcified:
        vol[dist <= 0.4 * r] = 800.0
    if spiculated:
        for v in rng.normal(size=(10, 3)):
            v /= np.linalg.norm(v)
            along = off @ v
            perp = np.sqrt(np.maximum(dist**2 - along**2, 0.0))
            vol[(along > 0) & (along < 1.9 * r) & (perp < 0.8)] = 0.0
    ras = aff @ np.array([*centre_vox, 1.0])
    return vol, aff, (-float(ras[0]), -float(ras[1]), float(ras[2]))


def cohort(seed: int, n: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[Lesion]]:
    """Lesions whose label is a deterministic function of what the image shows."""
    rng = np.random.default_rng(seed)
    images, lesions = {}, []
    for i in range(n):
        kind = i % 4  # 0 spiculated solid, 1 smooth solid, 2 calcified, 3 ground-glass
        d = float(rng.uniform(6.0, 14.0))
        vol, aff, centre = nodule_scan(rng, d, calcified=kind == 2, spiculated=kind == 0, ground_glass=kind == 3)
        sid = f"s{seed}_{i}"
        images[sid] = (vol, aff)
        lesions.append(Lesion(seriesuid=sid, center_lps=centre, diameter_mm=d, malignancy=float(kind == 0)))
    return images, lesions


def attribute_cohort(seed: int, n: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[Lesion], np.ndarray]:
    """Lesions with recorded attributes and a *noisy* label: Bernoulli(p) with p set by the attributes.

    Returns the images, the lesions (``extra`` holds margin / texture / calcification) and the
    clean probability ``p`` of each lesion (what a perfect readout would rank by).
    """
    rng = np.random.default_rng(seed)
    images, lesions, probs = {}, [], []
    for i in range(n):
        kind = i % 4  # 0 spiculated solid, 1 smooth solid, 2 calcified, 3 ground-glass
        d = float(rng.uniform(6.0, 14.0))
        vol, aff, centre = nodule_scan(rng, d, calcified=kind == 2, spiculated=kind == 0, ground_glass=kind == 3)
        p = {0: 0.75, 1: 0.3, 2: 0.05, 3: 0.2}[kind]
        sid = f"a{seed}_{i}"
        images[sid] = (vol, aff)
        extra = {"margin": "spiculated" if kind == 0 else "smooth", "texture": "ground-glass" if kind == 3 else "solid",
                 "calcification": "calcified" if kind == 2 else "none"}
        lesions.append(Lesion(seriesuid=sid, center_lps=centre, diameter_mm=d, malignancy=float(rng.random() < p),
                              extra=extra))
        probs.append(p)
    return images, lesions, np.asarray(probs)
