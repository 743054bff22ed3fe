"""Synthetic T1-weighted MRI brain phantom with tumours.

Anatomy (world RAS mm): a head ellipsoid with scalp (bright, fatty), skull (dark), a CSF
layer, a cortical grey-matter ribbon with a folded (noise-modulated) surface, white
matter and two lateral ventricles. Relative T1 intensities: WM 0.85, GM 0.55, CSF 0.2,
skull 0.08, scalp 0.75, air 0.

Tumours: 1–2 per scan, diameter 8–30 mm (log-normal, median 15 mm), inside the brain;
margin (smooth / lobulated / spiculated = infiltrative), texture (solid ≈ 0.45, necrotic =
a solid rim around a dark core, cystic ≈ 0.15 with a thin rim) and calcification (a dark
spot) drawn per tumour. Malignancy from :data:`medmtl.data.malignancy.MRI_MALIGNANCY_MODEL`.

Acquisition: a smooth multiplicative bias field (site a ±15 %, site b ±30 %), an
arbitrary global intensity scale ×U(200, 3000), and Rician noise (the magnitude of a
complex signal with Gaussian noise in both channels, σ = 2.5 % (a) or 4 % (b) of WM).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from medmtl.data.lesions import LesionShape, lesion_geometry, render_lesion
from medmtl.data.malignancy import MRI_MALIGNANCY_MODEL
from medmtl.data.render import FloatArray, Grid, Phantom, affine_for, ellipsoid, smooth_field
from medmtl.io.types import Lesion

#: Anatomy classes of :attr:`Phantom.tissue` for MRI.
MRI_TISSUES: dict[str, int] = {
    "background": 0, "scalp": 1, "skull": 2, "csf": 3, "grey_matter": 4, "white_matter": 5, "lesion": 6,
}

#: MRI voxel size (mm) and default shape ``(I, J, K)``.
MRI_SPACING: tuple[float, float, float] = (3.0, 3.0, 3.0)
MRI_DEFAULT_SHAPE: tuple[int, int, int] = (64, 64, 56)

#: Per-site bias-field amplitude and noise (fraction of the WM intensity).
MRI_SITE_PARAMS: dict[str, dict[str, float]] = {
    "a": {"bias": 0.15, "noise": 0.025, "field_t": 3.0},
    "b": {"bias": 0.30, "noise": 0.04, "field_t": 1.5},
}

UNLABELLED_FRACTION = 0.15


def _tumour_value(
    rng: np.random.Generator, center: FloatArray, r: float, texture: str, calc: str
) -> Callable[[FloatArray], FloatArray]:
    """Intensity function of a tumour (relative T1 units) from its texture and calcification."""
    calc_c = center + rng.uniform(-0.3, 0.3, size=3) * r
    calc_r = max(0.2 * r, 1.5)

    def fn(p: FloatArray) -> FloatArray:
        d = np.linalg.norm(p - center, axis=1)
        if texture == "solid":
            v = np.full(len(p), 0.45)
        elif texture == "necrotic":
            v = np.where(d <= 0.55 * r, 0.2, 0.5)
        else:
            v = np.where(d <= 0.8 * r, 0.15, 0.45)
        if calc == "calcified":
            v = np.where(np.linalg.norm(p - calc_c, axis=1) <= calc_r, 0.05, v)
        return np.asarray(v)

    return fn


def _tumours(rng: np.random.Generator, grid: Grid, vol: FloatArray, mask: NDArray[np.int16],
             tissue: NDArray[np.uint8], brain_c: FloatArray, brain_semi: FloatArray,
             scan_id: str, site: str) -> list[Lesion]:
    """Place and render 1–2 tumours inside the brain; draw their malignancy labels."""
    lesions: list[Lesion] = []
    placed: list[tuple[FloatArray, float]] = []
    for _ in range(int(rng.choice([1, 2], p=[0.6, 0.4]))):
        while True:
            d = float(np.exp(rng.normal(np.log(15.0), 0.4)))
            if 8.0 <= d <= 30.0:
                break
        margin = str(rng.choice(["smooth", "lobulated", "spiculated"], p=[0.4, 0.35, 0.25]))
        texture = str(rng.choice(["solid", "necrotic", "cystic"], p=[0.5, 0.3, 0.2]))
        calc = "calcified" if rng.random() < 0.15 else "none"
        r = d / 2.0
        center = None
        for _try in range(200):
            cand = brain_c + rng.uniform(-1.0, 1.0, size=3) * brain_semi
            if (((cand - brain_c) / (brain_semi - 1.8 * r - 4.0)) ** 2).sum() > 1.0:
                continue
            if any(np.linalg.norm(cand - c) < r + rr + 6.0 for c, rr in placed):
                continue
            center = cand
            break
        if center is None:
            continue
        inside, extent = lesion_geometry(rng, center, d, margin)
        label = len(lesions) + 1
        shape = LesionShape(center, d, extent, inside, _tumour_value(rng, center, r, texture, calc))
        centre_lps = render_lesion(grid, vol, mask, tissue, shape, label, MRI_TISSUES["lesion"])
        if centre_lps is None:
            continue
        placed.append((center, extent))
        y = MRI_MALIGNANCY_MODEL.draw_label(rng, d, margin, texture, calc)
        labelled = rng.random() >= UNLABELLED_FRACTION
        lesions.append(Lesion(
            seriesuid=scan_id, center_lps=centre_lps, diameter_mm=round(d, 2),
            malignancy=float(y) if labelled else None, lesion_id=f"{scan_id}_L{label}", site=site,
            extra={"bayes_malignancy_prob": round(MRI_MALIGNANCY_MODEL.bayes_probability(d, margin, texture, calc), 6),
                   "margin": margin, "texture": texture, "calcification": calc},
        ))
    return lesions


def generate_mri(
    seed: int, shape: tuple[int, int, int] | None = None, *, site: str = "a", scan_id: str = "phantom"
) -> Phantom:
    """Generate one T1-like MRI brain phantom with tumours (deterministic per seed).

    Args:
        seed: random seed (``numpy.random.default_rng(seed)`` drives everything).
        shape: ``(I, J, K)`` voxels, each 16..512; ``None`` for 64×64×56 (3 mm isotropic,
            RAS axis order).
        site: ``"a"`` or ``"b"`` (bias-field strength and noise level, see
            :data:`MRI_SITE_PARAMS`).
        scan_id: the id written into the lesions' ``seriesuid``.

    Returns:
        A :class:`~medmtl.data.render.Phantom`; ``volume`` is a positive intensity (arbitrary
        units, already rounded to integers), ``modality`` ``"MR"``.
    """
    from medmtl.data.phantom import validate_shape, validate_site

    params = MRI_SITE_PARAMS[validate_site(site)]
    shp = MRI_DEFAULT_SHAPE if shape is None else validate_shape(shape)
    rng = np.random.default_rng(seed)
    grid = Grid(shp, affine_for(shp, MRI_SPACING, (0.0, 10.0, 20.0)))
    vol = np.zeros(shp)
    tissue = np.zeros(shp, dtype=np.uint8)
    mask = np.zeros(shp, dtype=np.int16)
    t = MRI_TISSUES
    c = np.array([rng.uniform(-5, 5), 10.0 + rng.uniform(-5, 5), 20.0 + rng.uniform(-5, 5)])
    head = np.array([rng.uniform(68, 74), rng.uniform(84, 90), rng.uniform(72, 78)])
    lo, hi = grid.full_box()
    sl = (slice(None),) * 3
    layers = [(0.0, 0.75, "scalp"), (5.0, 0.08, "skull"), (11.0, 0.2, "csf"), (14.0, 0.55, "grey_matter")]
    for depth, value, name in layers:
        frac, _, _ = grid.render(ellipsoid(c, head - depth), lo, hi, 2)
        grid.paint(vol, lo, hi, frac, frac * value)
        tissue[sl][frac >= 0.5] = t[name]
    # White matter under a folded cortex: its surface is modulated by random sinusoids
    # (wavelength ~ 15-30 mm), so the GM ribbon is 2-7 mm thick and gyrated.
    brain_semi = head - 14.0
    wm_semi = brain_semi - 4.5
    waves = rng.normal(size=(6, 3))
    waves *= (2 * np.pi / rng.uniform(15.0, 30.0, size=6) / np.linalg.norm(waves, axis=1))[:, None]
    phases = rng.uniform(0.0, 2 * np.pi, size=6)

    def white_matter(p: FloatArray) -> NDArray[np.bool_]:
        rho = np.sqrt((((p - c) / wm_semi) ** 2).sum(axis=1))
        fold = np.sin((p - c) @ waves.T + phases).mean(axis=1)
        return np.asarray(rho <= 1.0 + 0.12 * fold)

    frac, _, _ = grid.render(white_matter, lo, hi, 2)
    grid.paint(vol, lo, hi, frac, frac * 0.85)
    tissue[sl][frac >= 0.5] = t["white_matter"]
    for side in (1.0, -1.0):
        vc = c + np.array([side * 8.0, 0.0, 5.0])
        frac, _, _ = grid.render(ellipsoid(vc, np.array([5.0, 22.0, 9.0])), lo, hi, 2)
        grid.paint(vol, lo, hi, frac, frac * 0.2)
        tissue[sl][frac >= 0.5] = t["csf"]
    lesions = _tumours(rng, grid, vol, mask, tissue, c, brain_semi, scan_id, site)
    bias = np.exp(params["bias"] * smooth_field(rng, shp, (shp[0] / 3.0, shp[1] / 3.0, shp[2] / 3.0)))
    scale = rng.uniform(200.0, 3000.0)
    sigma = params["noise"] * 0.85
    signal = vol * bias
    mag = np.sqrt((signal + rng.normal(0.0, sigma, shp)) ** 2 + rng.normal(0.0, sigma, shp) ** 2)
    out = np.clip(np.rint(mag * scale), 0, 65535).astype(np.float32)
    return Phantom(
        volume=out, affine_ras=grid.affine_ras, lesions=lesions, label_mask=mask, site=site,
        spacing=MRI_SPACING, modality="MR", tissue=tissue, scan_id=scan_id,
        acquisition={"manufacturer": f"MEDMTL-PHANTOM-MR-{site.upper()}", "field_strength_t": params["field_t"],
                     "intensity_scale": round(float(scale), 3), "bias_amplitude": params["bias"]},
    )
