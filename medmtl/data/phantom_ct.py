"""Synthetic CT chest phantom with lung nodules, for two scanner "sites".

Anatomy (world RAS mm, the body axis along z): an elliptic body (fat layer ≈ -100 HU over
soft tissue ≈ 40 HU), liver ≈ 60 HU under the right lung, heart ≈ 45 HU, two lungs
(≈ -860 HU with a smooth texture and a posterior density gradient), branching curved
pulmonary vessels (≈ 40 HU, diameters 2–8 mm: in cross-section they look like nodules and
are the realistic false-positive bait), vertebral bodies (cortical shell ≈ 900 HU, marrow ≈
300 HU) with discs, ribs (≈ 700 HU), a sternum and a patient table; air is -1000 HU.

Nodules: 0–4 per scan (mostly 1–4), diameter 3–30 mm from a log-normal skewed to small
(median 7 mm), inside the lungs; margin, texture and calcification drawn per nodule and
rendered (spikes, lobes, ground-glass ≈ -550 HU, solid core, calcified core ≈ 800 HU).
Malignancy from :data:`medmtl.data.malignancy.CT_MALIGNANCY_MODEL`.

Sites (:data:`CT_SITES`) differ like two scanners: in-plane spacing, slice thickness,
field of view, reconstruction kernel (sharp with edge overshoot vs smooth Gaussian blur),
noise level and HU calibration offset, and the NIfTI axis order (RAS vs LPS).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medmtl.data.lesions import LesionShape, core_value, lesion_geometry, render_lesion
from medmtl.data.malignancy import CT_MALIGNANCY_MODEL
from medmtl.data.render import (
    FloatArray,
    Grid,
    InsideFn,
    Phantom,
    ValueFn,
    affine_for,
    ellipsoid,
    smooth_field,
    tube,
)
from medmtl.io.coords import ras_to_voxel, spacing_from_affine
from medmtl.io.types import Lesion

#: Anatomy classes of :attr:`Phantom.tissue` for CT.
CT_TISSUES: dict[str, int] = {
    "air": 0, "fat": 1, "soft_tissue": 2, "lung": 3, "vessel": 4, "bone": 5, "lesion": 6, "table": 7,
    "liver": 8, "heart": 9,
}

#: Fraction of lesions whose malignancy label is left empty (partial labels).
UNLABELLED_FRACTION = 0.15
#: Fraction of nodules placed against the pleura (juxta-pleural); others may touch vessels.
JUXTA_PLEURAL_FRACTION = 0.15


@dataclass(frozen=True)
class CTSite:
    """Acquisition of one simulated CT scanner.

    Attributes:
        name: ``"a"`` or ``"b"``.
        spacing: voxel size ``(i, j, k)`` mm (k = slice spacing = slice thickness).
        default_shape: ``(I, J, K)`` voxels when no shape is given.
        axis_signs: ``(1, 1, 1)`` → RAS axis order, ``(-1, -1, 1)`` → LPS axis order.
        fov_center_ras: RAS mm of the grid centre.
        kernel: reconstruction kernel name (``ConvolutionKernel``).
        sharpen: unsharp-mask gain of a sharp kernel (edge overshoot), 0 for none.
        blur_mm: Gaussian blur sigma (mm, in-plane) of a smooth kernel, 0 for none.
        noise_hu: noise standard deviation in a uniform region, HU.
        noise_corr_vox: correlation length of the noise (Gaussian sigma, voxels).
        hu_offset: calibration offset added to every HU value.
        manufacturer: DICOM ``Manufacturer``.
        kvp: tube voltage, kV.
        anatomy_ss: super-sampling factor of the anatomy (body, organs, vessels, bones) per
            axis; lesions always use :data:`~medmtl.data.lesions.LESION_SS`. 1 is enough for
            sub-millimetre voxels (the kernel blur then sets the partial volume) and keeps a
            3-million-voxel scan at a few seconds.
    """

    name: str
    spacing: tuple[float, float, float]
    default_shape: tuple[int, int, int]
    axis_signs: tuple[int, int, int]
    fov_center_ras: tuple[float, float, float]
    kernel: str
    sharpen: float
    blur_mm: float
    noise_hu: float
    noise_corr_vox: float
    hu_offset: float
    manufacturer: str
    kvp: float
    anatomy_ss: int = 2


CT_SITES: dict[str, CTSite] = {
    "a": CTSite(
        name="a", spacing=(0.9, 0.9, 1.25), default_shape=(176, 144, 120), axis_signs=(1, 1, 1),
        fov_center_ras=(0.0, 0.0, -150.0), kernel="SHARP-B60", sharpen=0.3, blur_mm=0.45,
        noise_hu=20.0, noise_corr_vox=0.7, hu_offset=0.0, manufacturer="MEDMTL-PHANTOM-A", kvp=120.0,
        anatomy_ss=1,
    ),
    "b": CTSite(
        name="b", spacing=(1.4, 1.4, 5.0), default_shape=(128, 104, 32), axis_signs=(-1, -1, 1),
        fov_center_ras=(0.0, 8.0, -150.0), kernel="SMOOTH-B30", sharpen=0.0, blur_mm=1.2,
        noise_hu=30.0, noise_corr_vox=1.0, hu_offset=40.0, manufacturer="MEDMTL-PHANTOM-B", kvp=100.0,
        anatomy_ss=2,
    ),
}
"""The two simulated CT scanners. Site a: a modern thin-slice chest CT read for nodules
(0.9 × 0.9 mm in-plane, 1.25 mm slices, a sharp kernel: every nodule of 3 mm or more spans
at least 3 voxels in-plane), the field of view cropped to the thorax (158 × 130 × 150 mm).
Site b: an older scanner — 1.56× coarser in-plane, 4× thicker slices (5 mm), a wider field of
view, a smooth kernel, 1.5× more noise, +40 HU calibration offset, LPS axis order."""


def _sample_diameter(rng: np.random.Generator) -> float:
    """Nodule diameter (mm): log-normal (median 7 mm, sigma 0.6) restricted to [3, 30]."""
    while True:
        d = float(np.exp(rng.normal(np.log(7.0), 0.6)))
        if 3.0 <= d <= 30.0:
            return d


def sample_nodule_attributes(rng: np.random.Generator) -> tuple[float, str, str, str]:
    """Draw one nodule's ``(diameter_mm, margin, texture, calcification)``.

    Margins smooth/lobulated/spiculated with probabilities 0.5/0.3/0.2; textures
    solid/part-solid/ground-glass 0.65/0.2/0.15; 20 % of solid nodules are calcified.
    """
    d = _sample_diameter(rng)
    margin = str(rng.choice(["smooth", "lobulated", "spiculated"], p=[0.5, 0.3, 0.2]))
    texture = str(rng.choice(["solid", "part-solid", "ground-glass"], p=[0.65, 0.2, 0.15]))
    calc = "calcified" if texture == "solid" and rng.random() < 0.2 else "none"
    return d, margin, texture, calc


def _vessel_tree(
    rng: np.random.Generator, start: FloatArray, direction: FloatArray, radius: float,
    lung: tuple[FloatArray, FloatArray], depth: int, out: list[tuple[FloatArray, FloatArray]],
) -> None:
    """Grow one curved branch (4 mm steps) and recurse into two thinner children."""
    c, semi = lung
    pts = [np.asarray(start, dtype=np.float64)]
    d = direction / np.linalg.norm(direction)
    n_steps = int(rng.integers(4, 9))
    for _ in range(n_steps):
        d = d + rng.normal(0.0, 0.2, size=3)
        d /= np.linalg.norm(d)
        nxt = pts[-1] + 4.0 * d
        if (((nxt - c) / (semi - 2.0)) ** 2).sum() > 1.0:
            # Near the pleura: bend back towards the lung centre once, else stop.
            d = 0.5 * d + 0.5 * (c - pts[-1]) / np.linalg.norm(c - pts[-1])
            d /= np.linalg.norm(d)
            nxt = pts[-1] + 4.0 * d
            if (((nxt - c) / (semi - 2.0)) ** 2).sum() > 1.0:
                break
        pts.append(nxt)
    if len(pts) < 2:
        return
    r_end = radius * 0.9
    out.append((np.array(pts), np.linspace(radius, r_end, len(pts))))
    child_r = r_end * rng.uniform(0.65, 0.8)
    if depth <= 0 or child_r < 1.0:
        return
    for sign in (-1.0, 1.0):
        perp = np.cross(d, rng.normal(size=3))
        perp /= np.linalg.norm(perp)
        angle = np.deg2rad(rng.uniform(25.0, 45.0))
        nd = np.cos(angle) * d + sign * np.sin(angle) * perp
        _vessel_tree(rng, pts[-1], nd, child_r, lung, depth - 1, out)


def _paint(grid: Grid, vol: FloatArray, tissue: NDArray[np.uint8], inside: InsideFn,
           value: float | ValueFn | FloatArray, cls: int,
           center: FloatArray | None = None, radius: float | None = None, ss: int = 2) -> None:
    """Render a shape (whole grid, or a ball's box) and composite it; update ``tissue``."""
    if center is None or radius is None:
        lo, hi = grid.full_box()
    else:
        lo, hi = grid.box(center, radius)
    if isinstance(value, (int, float)):
        frac, _, _ = grid.render(inside, lo, hi, ss)
        vals = frac * float(value)
    elif callable(value):
        frac, vals, _ = grid.render(inside, lo, hi, ss, value)
    else:  # a voxel-wise array of values over the whole grid
        frac, _, _ = grid.render(inside, lo, hi, ss)
        sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        vals = frac * value[sl]
    grid.paint(vol, lo, hi, frac, vals)
    sl = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    tissue[sl][frac >= 0.5] = cls


def _anatomy(rng: np.random.Generator, grid: Grid, vol: FloatArray, tissue: NDArray[np.uint8],
             ss: int = 2) -> dict[str, Any]:
    """Paint body, organs, lungs, vessels and bones (super-sampling ``ss``); return the lung geometry."""
    paint = functools.partial(_paint, ss=ss)
    t = CT_TISSUES
    x0, y0 = rng.uniform(-8.0, 8.0), rng.uniform(-6.0, 6.0)
    z_l = -150.0 + rng.uniform(-6.0, 6.0) + 10.0
    ax, ay = rng.uniform(78.0, 88.0), rng.uniform(56.0, 64.0)
    fat = rng.uniform(6.0, 12.0)

    def cyl(a: float, b: float, cx: float = x0, cy: float = y0) -> InsideFn:
        return lambda p: np.asarray(((p[:, 0] - cx) / a) ** 2 + ((p[:, 1] - cy) / b) ** 2 <= 1.0)

    table_y = y0 - ay - rng.uniform(6.0, 10.0)
    paint(grid, vol, tissue, lambda p: (np.abs(p[:, 1] - table_y) <= 3.0) & (np.abs(p[:, 0] - x0) <= 110.0),
           150.0, t["table"])
    paint(grid, vol, tissue, cyl(ax, ay), -100.0, t["fat"])
    paint(grid, vol, tissue, cyl(ax - fat, ay - fat), 40.0, t["soft_tissue"])
    liver_c = np.array([x0 + 0.35 * ax, y0, z_l - 70.0])
    paint(grid, vol, tissue, ellipsoid(liver_c, np.array([0.5 * ax, 0.65 * ay, 45.0])), 60.0,
           t["liver"], liver_c, 0.7 * ax)
    # Lungs: density increases posteriorly (dependent lung), plus smooth texture.
    lung_semi = np.array([0.32 * ax, 0.68 * ay, rng.uniform(62.0, 75.0)])
    lungs = [np.array([x0 + s * 0.45 * ax, y0 - 3.0, z_l]) for s in (1.0, -1.0)]
    centres_ras = grid.points(*grid.full_box(), 1).reshape(*grid.shape, 3)
    # lung parenchyma texture correlated over ~3.6 mm whatever the voxel size
    si, sj, sk = (3.6 / float(v) for v in spacing_from_affine(grid.affine_ras))
    texture = smooth_field(rng, grid.shape, (si, sj, sk))
    lung_hu = -860.0 + 25.0 * texture + 50.0 * np.clip((y0 - centres_ras[..., 1]) / ay, -1.0, 1.0)
    for c in lungs:
        paint(grid, vol, tissue, ellipsoid(c, lung_semi), lung_hu, t["lung"], c, float(lung_semi.max()) + 3)
    heart_c = np.array([x0 - 0.12 * ax, y0 + 0.2 * ay, z_l - 25.0])
    heart_semi = np.array([0.42 * ax, 0.5 * ay, 40.0])
    paint(grid, vol, tissue, ellipsoid(heart_c, heart_semi), 45.0, t["heart"], heart_c, 0.5 * ax)
    # Pulmonary vessels from each hilum.
    branches: list[tuple[FloatArray, FloatArray]] = []
    for c in lungs:
        hilum = c + np.array([-np.sign(c[0] - x0) * 0.75 * lung_semi[0], 0.0, -5.0])
        for main_dir in ([0.2, 0.1, 1.0], [0.6, 0.2, -0.8], [0.5, 0.9, 0.1], [0.5, -0.9, -0.2],
                         [0.8, 0.3, 0.5], [0.7, -0.3, -0.6]):
            d = np.array(main_dir) * np.array([np.sign(c[0] - x0), 1.0, 1.0])
            _vessel_tree(rng, hilum, d, rng.uniform(2.5, 4.0), (c, lung_semi), 4, branches)
    for pts, radii in branches:
        mid, ext = pts.mean(axis=0), float(np.linalg.norm(pts - pts.mean(axis=0), axis=1).max() + radii.max())
        paint(grid, vol, tissue, tube(pts, radii), 40.0, t["vessel"], mid, ext + 1.0)
    # Spine: vertebral bodies (cortical shell + marrow) separated by discs; ribs; sternum.
    sp = np.array([x0, y0 - 0.62 * ay])
    for zc in np.arange(z_l - 120.0, z_l + 120.0, 27.0) + rng.uniform(0.0, 27.0):
        def vert(p: FloatArray, zc: float = zc) -> NDArray[np.bool_]:
            return np.asarray(((p[:, 0] - sp[0]) ** 2 + (p[:, 1] - sp[1]) ** 2) <= 15.0**2) & (np.abs(p[:, 2] - zc) <= 11.0)

        def vert_hu(p: FloatArray, zc: float = zc) -> FloatArray:
            rr = np.sqrt((p[:, 0] - sp[0]) ** 2 + (p[:, 1] - sp[1]) ** 2)
            return np.where((rr >= 12.5) | (np.abs(p[:, 2] - zc) >= 9.5), 900.0, 300.0)

        paint(grid, vol, tissue, vert, vert_hu, t["bone"], np.array([sp[0], sp[1], zc]), 20.0)
        paint(grid, vol, tissue, ellipsoid(np.array([sp[0], sp[1] - 24.0, zc]), np.array([5.0, 9.0, 8.0])),
               700.0, t["bone"], np.array([sp[0], sp[1] - 24.0, zc]), 10.0)
    for zk in np.arange(z_l - 70.0, z_l + 80.0, 24.0):
        for side in (1.0, -1.0):
            ang = np.linspace(-0.45 * np.pi, 0.4 * np.pi, 10)
            rib = np.stack([x0 + side * (ax - fat - 7.0) * np.cos(ang),
                            y0 + (ay - fat - 7.0) * np.sin(ang),
                            zk - 18.0 * (ang - ang[0]) / (ang[-1] - ang[0])], axis=1)
            for part in (rib[0:4], rib[3:7], rib[6:10]):  # short pieces: small render boxes
                mid = part.mean(axis=0)
                paint(grid, vol, tissue, tube(part, np.full(len(part), 3.5)), 700.0, t["bone"],
                       mid, float(np.linalg.norm(part - mid, axis=1).max()) + 5.0)
    st = np.array([x0, y0 + ay - fat - 6.0, z_l])
    paint(grid, vol, tissue, ellipsoid(st, np.array([12.0, 4.0, 55.0])), 500.0, t["bone"], st, 56.0)
    return {"lungs": lungs, "lung_semi": lung_semi, "heart": (heart_c, heart_semi)}


def _nodules(rng: np.random.Generator, grid: Grid, vol: FloatArray, mask: NDArray[np.int16],
             tissue: NDArray[np.uint8], geo: dict[str, Any], scan_id: str, site: str) -> list[Lesion]:
    """Place and render 0–4 nodules inside the lungs; draw their malignancy labels."""
    n = int(rng.choice([0, 1, 2, 3, 4], p=[0.06, 0.3, 0.3, 0.2, 0.14]))
    placed: list[tuple[FloatArray, float]] = []
    lesions: list[Lesion] = []
    shape = np.asarray(grid.shape, dtype=np.float64)
    for _ in range(n):
        d, margin, texture, calc = sample_nodule_attributes(rng)
        r = d / 2.0
        juxta_pleural = bool(rng.random() < JUXTA_PLEURAL_FRACTION)
        center = None
        for _try in range(200):
            lung = geo["lungs"][int(rng.integers(0, 2))]
            cand = lung + rng.uniform(-1.0, 1.0, size=3) * geo["lung_semi"]
            if (((cand - lung) / np.maximum(geo["lung_semi"] - r - 3.0, 1.0)) ** 2).sum() > 1.0:
                continue
            if juxta_pleural:  # pushed out until it touches the pleura (a harder, realistic case)
                off = cand - lung
                cand = lung + off / np.sqrt(((off / np.maximum(geo["lung_semi"] - 0.6 * r, 1.0)) ** 2).sum())
            hc, hs = geo["heart"]
            if (((cand - hc) / (hs + r + 3.0)) ** 2).sum() <= 1.0:
                continue
            ijk = ras_to_voxel(cand, grid.affine_ras)[0]
            margin_vox = r / np.asarray(spacing_from_affine(grid.affine_ras)) + 1.0
            if np.any(ijk < margin_vox) or np.any(ijk > shape - 1 - margin_vox):
                continue
            if any(np.linalg.norm(cand - c) < r + rr + 6.0 for c, rr in placed):
                continue
            center = cand
            break
        if center is None:
            continue
        inside, extent = lesion_geometry(rng, center, d, margin)
        base = {"solid": 35.0, "part-solid": -450.0, "ground-glass": -550.0}[texture]
        if calc == "calcified":
            value = core_value(center, max(0.35 * r, 1.0), 800.0, base)
        elif texture == "part-solid":
            value = core_value(center, 0.5 * r, 30.0, base)
        else:
            value = core_value(center, 0.0, base, base)
        label = len(lesions) + 1
        centre_lps = render_lesion(grid, vol, mask, tissue, LesionShape(center, d, extent, inside, value),
                                   label, CT_TISSUES["lesion"])
        if centre_lps is None:
            continue
        placed.append((center, extent))
        y = CT_MALIGNANCY_MODEL.draw_label(rng, d, margin, texture, calc)
        labelled = rng.random() >= UNLABELLED_FRACTION
        lesions.append(Lesion(
            seriesuid=scan_id, center_lps=centre_lps, diameter_mm=round(d, 2),
            malignancy=float(y) if labelled else None, lesion_id=f"{scan_id}_L{label}", site=site,
            extra={"bayes_malignancy_prob": round(CT_MALIGNANCY_MODEL.bayes_probability(d, margin, texture, calc), 6),
                   "margin": margin, "texture": texture, "calcification": calc,
                   "location": "juxta-pleural" if juxta_pleural else "intraparenchymal"},
        ))
    return lesions


def _scanner(rng: np.random.Generator, vol: FloatArray, s: CTSite) -> FloatArray:
    """Apply the site's reconstruction kernel, noise and HU offset; round and clip to int range."""
    from scipy.ndimage import gaussian_filter

    if s.blur_mm > 0:
        vol = gaussian_filter(vol, sigma=(s.blur_mm / s.spacing[0], s.blur_mm / s.spacing[1], 0.3), mode="nearest")
    if s.sharpen > 0:
        vol = vol + s.sharpen * (vol - gaussian_filter(vol, sigma=(0.8, 0.8, 0.0), mode="nearest"))
    noise = gaussian_filter(rng.normal(size=vol.shape), sigma=(s.noise_corr_vox, s.noise_corr_vox, 0.0), mode="wrap")
    noise *= s.noise_hu / float(noise.std())
    out = np.clip(np.rint(vol + noise + s.hu_offset), -1024.0, 3071.0)
    return np.asarray(out)


def generate_ct(
    seed: int, site: str = "a", shape: tuple[int, int, int] | None = None, *, scan_id: str = "phantom"
) -> Phantom:
    """Generate one CT chest phantom with lung nodules (deterministic per seed).

    Args:
        seed: random seed (``numpy.random.default_rng(seed)`` drives everything).
        site: ``"a"`` or ``"b"`` (see :data:`CT_SITES`).
        shape: ``(I, J, K)`` voxels, each 16..512; ``None`` for the site's default
            (64×64×48 for a, 56×56×24 for b). The spacing is the site's; the grid is
            centred on the site's field-of-view centre.
        scan_id: the id written into the lesions' ``seriesuid``.

    Returns:
        A :class:`~medmtl.data.render.Phantom` with ``volume`` in HU (I, J, K) float32.
    """
    from medmtl.data.phantom import validate_shape, validate_site

    s = CT_SITES[validate_site(site)]
    shp = s.default_shape if shape is None else validate_shape(shape)
    rng = np.random.default_rng(seed)
    grid = Grid(shp, affine_for(shp, s.spacing, s.fov_center_ras, s.axis_signs))
    vol = np.full(shp, -1000.0)
    tissue = np.zeros(shp, dtype=np.uint8)
    mask = np.zeros(shp, dtype=np.int16)
    geo = _anatomy(rng, grid, vol, tissue, s.anatomy_ss)
    lesions = _nodules(rng, grid, vol, mask, tissue, geo, scan_id, s.name)
    vol = _scanner(rng, vol, s)
    return Phantom(
        volume=vol.astype(np.float32), affine_ras=grid.affine_ras, lesions=lesions, label_mask=mask,
        site=s.name, spacing=s.spacing, modality="CT", tissue=tissue, scan_id=scan_id,
        acquisition={"manufacturer": s.manufacturer, "kernel": s.kernel, "kvp": s.kvp,
                     "slice_thickness_mm": s.spacing[2], "noise_hu": s.noise_hu, "hu_offset": s.hu_offset},
    )
