"""Data fingerprints: per-scan acquisition and intensity descriptors, cohort summaries and
cohort-to-cohort effect sizes.

A fingerprint is what a physicist would check first when a model trained at one site is used
at another: voxel spacing and slice thickness, field of view, orientation, the intensity
distribution *inside the body*, the noise level, and (CT) whether the Hounsfield scale is
calibrated (air ≈ −1000 HU, fat ≈ −100 HU, water/soft tissue ≈ 0–40 HU) — and whether a bright soft
tissue is a scale offset (air and fat move too) or contrast enhancement (they do not). The idea follows the
dataset fingerprint of nnU-Net (Isensee et al., "nnU-Net: a self-configuring method for deep
learning-based biomedical image segmentation", Nature Methods 2021), extended with the HU and
noise checks used in multi-site radiomics harmonisation studies.

Effect sizes between cohorts are Hedges' g (Cohen's d with the small-sample correction;
Hedges, "Distribution theory for Glass's estimator of effect size", 1981) with a two-sided
Mann-Whitney U p-value per feature.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage, stats

from medmtl.transforms.intensity import body_mask

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.io.types import Scan

PERCENTILES: tuple[float, ...] = (0.5, 10.0, 50.0, 90.0, 99.5)
"""Intensity percentiles recorded inside the body."""

#: Expected CT values (HU) of reference tissues and the search window of each mode.
HU_EXPECTED: dict[str, tuple[float, tuple[float, float]]] = {
    "air": (-1000.0, (-1100.0, -850.0)),
    "fat": (-100.0, (-220.0, -20.0)),
    "soft_tissue": (20.0, (-20.0, 260.0)),  # up to 260 HU: contrast-enhanced tissue and blood pool
}
#: Unenhanced soft tissue (muscle, organs, water) lies in this band (HU).
SOFT_TISSUE_BAND = (0.0, 40.0)
#: What :func:`hu_status` can say about a CT scan.
HU_STATUSES = ("calibrated", "miscalibrated", "contrast_enhanced", "soft_tissue_atypical", "unverified",
               "not_measurable")
G_CAP = 99.0
"""|Hedges' g| is capped here (constant cohorts)."""
HU_TOLERANCE = 20.0
"""A measured tissue mode further than this from its expected value (HU) raises a flag."""

#: Numeric per-scan fields compared between cohorts (effect sizes).
NUMERIC_FIELDS: tuple[str, ...] = (
    "spacing_i",
    "spacing_j",
    "spacing_k",
    "slice_thickness",
    "fov_i_mm",
    "fov_j_mm",
    "fov_k_mm",
    "p0_5",
    "p10",
    "p50",
    "p90",
    "p99_5",
    "noise",
    "body_fraction",
)


#: Human name of each numeric field, with ``{u}`` standing for the intensity unit (HU for CT,
#: a.u. for MR); intensities are measured inside the body mask.
FIELD_LABELS: dict[str, str] = {
    "spacing_i": "voxel spacing, i axis (mm)",
    "spacing_j": "voxel spacing, j axis (mm)",
    "spacing_k": "voxel spacing, k axis (mm)",
    "slice_thickness": "slice thickness (mm)",
    "fov_i_mm": "field of view, i axis (mm)",
    "fov_j_mm": "field of view, j axis (mm)",
    "fov_k_mm": "field of view, k axis (mm)",
    "p0_5": "0.5th percentile intensity ({u})",
    "p10": "10th percentile intensity ({u})",
    "p50": "median intensity ({u})",
    "p90": "90th percentile intensity ({u})",
    "p99_5": "99.5th percentile intensity ({u})",
    "noise": "noise SD in homogeneous tissue ({u})",
    "body_fraction": "body fraction of the volume (0–1)",
}
#: Where ``slice_thickness`` comes from: the DICOM tag, or the spacing between slices.
THICKNESS_FROM_DICOM = "dicom"
THICKNESS_FROM_SPACING = "spacing"


def field_label(name: str, modality: str) -> str:
    """Human name and unit of a fingerprint field, e.g. ``p0_5`` → "0.5th percentile intensity (HU)"."""
    return FIELD_LABELS.get(name, name).format(u="HU" if modality == "CT" else "a.u.")


def _pkey(p: float) -> str:
    """Field name of a percentile: 0.5 → ``p0_5``, 10 → ``p10``."""
    text = f"{p:g}".replace(".", "_")
    return f"p{text}"


def image_array(scan: Scan) -> NDArray[np.float32]:
    """The scan's voxels as an ``(I, J, K)`` float32 numpy array (HU for CT)."""
    img = scan.image
    arr = img.detach().cpu().numpy() if hasattr(img, "detach") else np.asarray(img)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim == 4:
        arr = arr[0]
    return arr


def spacing_of(affine: Any) -> tuple[float, float, float]:
    """Voxel spacing (mm) along i, j, k from a 4×4 voxel→world affine."""
    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    sp = np.sqrt((a[:3, :3] ** 2).sum(axis=0))
    return float(sp[0]), float(sp[1]), float(sp[2])


def orientation_code(affine: Any) -> str:
    """Three-letter orientation code (e.g. ``"RAS"``) of a voxel→RAS affine (nibabel)."""
    import nibabel as nib

    a = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
    return "".join(nib.orientations.aff2axcodes(a))


def noise_estimate(arr: NDArray[np.floating[Any]], mask: NDArray[np.bool_]) -> float:
    """Robust noise standard deviation inside homogeneous body regions.

    The high-pass residual (image minus its 3×3×3 mean) is taken where the local gradient is
    low (bottom 30% of the body's gradient magnitudes, i.e. homogeneous tissue), and its
    median absolute deviation is scaled to a Gaussian sigma (× 1.4826) and corrected for the
    variance removed by the 27-voxel mean (× sqrt(27/26)).

    Args:
        arr: ``(I, J, K)`` intensities.
        mask: body mask.

    Returns:
        The noise sigma in the image's units (HU for CT).
    """
    a = arr.astype(np.float32)
    residual = a - ndimage.uniform_filter(a, size=3, mode="nearest")
    grad = ndimage.gaussian_gradient_magnitude(a, sigma=1.0)
    inner = ndimage.binary_erosion(mask, iterations=2)
    if inner.sum() < 100:
        inner = mask
    g = grad[inner]
    if g.size == 0:
        return float("nan")
    homogeneous = inner & (grad <= np.percentile(g, 30.0))
    r = residual[homogeneous]
    if r.size < 10:
        r = residual[inner]
    mad = float(np.median(np.abs(r - np.median(r))))
    return mad * 1.4826 * math.sqrt(27.0 / 26.0)


def _mode_in(values: NDArray[np.floating[Any]], lo: float, hi: float) -> float | None:
    """Highest interior peak of the (2 HU bins, smoothed) histogram of ``values`` in ``[lo, hi]``.

    A maximum on the window's edge is the tail of a neighbouring tissue, not a mode: when no
    interior local maximum exists the tissue is reported as not measurable (``None``).
    """
    v = values[(values >= lo) & (values <= hi)]
    if v.size < 50:
        return None
    hist, edges = np.histogram(v, bins=max(int((hi - lo) / 2.0), 8), range=(lo, hi))
    h = ndimage.gaussian_filter1d(hist.astype(np.float64), sigma=2.0)
    interior = np.arange(3, h.size - 3)
    peaks = [i for i in interior if h[i] >= h[i - 1] and h[i] >= h[i + 1] and h[i] > 0]
    if not peaks:
        return None
    i = max(peaks, key=lambda j: h[j])
    return float(0.5 * (edges[i] + edges[i + 1]))


def _tissue_modes(arr: NDArray[np.floating[Any]], mask: NDArray[np.bool_]) -> dict[str, float | None]:
    """Measured HU of each tissue of :data:`HU_EXPECTED` (``None`` when not measurable): air is the
    median at least 3 voxels outside the body, fat and soft tissue the histogram modes inside."""
    far = ~ndimage.binary_dilation(mask, iterations=3)
    outside = arr[far] if far.sum() >= 50 else arr[~mask]
    inside = arr[mask]
    out: dict[str, float | None] = {}
    for tissue, (_, (lo, hi)) in HU_EXPECTED.items():
        if tissue == "air":  # background is flat: its median is the most robust estimate
            in_win = outside[(outside >= lo) & (outside <= hi)]
            out[tissue] = float(np.median(in_win)) if in_win.size >= 50 else None
        else:
            out[tissue] = _mode_in(inside, lo, hi)
    return out


def _soft_tissue_deviation(measured: float) -> float:
    """How far (HU) a soft-tissue mode lies outside its 0–40 HU band (0 inside it)."""
    lo, hi = SOFT_TISSUE_BAND
    return 0.0 if lo <= measured <= hi else min(abs(measured - lo), abs(measured - hi))


def hu_status(tissues: Mapping[str, Mapping[str, Any]]) -> str:
    """What the tissue checks say about the scan (one of :data:`HU_STATUSES`).

    A miscalibration moves the whole Hounsfield scale, so air and fat move with soft tissue;
    iodinated contrast brightens perfused soft tissue and blood (to about 100–200 HU) and
    leaves air and fat where they were. Hence: ``miscalibrated`` when air or fat is off,
    ``contrast_enhanced`` when soft tissue is brighter than its band while the measured air
    and fat are at their usual values, ``soft_tissue_atypical`` when soft tissue is darker than its band
    with air and fat in place (not a scale offset), ``unverified`` when soft tissue is off and
    neither air nor fat can be measured (offset and enhancement cannot be told apart),
    ``not_measurable`` when no tissue is, else ``calibrated``.
    """
    refs = [tissues[t] for t in ("air", "fat") if tissues.get(t, {}).get("measured") is not None]
    soft = tissues.get("soft_tissue", {})
    if any(r["flag"] for r in refs):
        return "miscalibrated"
    if soft.get("measured") is None:
        return "calibrated" if refs else "not_measurable"
    if not soft["flag"]:
        return "calibrated"
    if not refs:
        return "unverified"
    return "contrast_enhanced" if soft["measured"] > SOFT_TISSUE_BAND[1] else "soft_tissue_atypical"


def hu_calibration(arr: NDArray[np.floating[Any]], mask: NDArray[np.bool_]) -> dict[str, Any]:
    """Check a CT scan's Hounsfield calibration against air, fat and soft tissue, telling a
    scale offset from contrast enhancement (:func:`hu_status`).

    Each measured tissue (:func:`_tissue_modes`) is compared with its expected value and marked
    when it is off by more than :data:`HU_TOLERANCE` HU (soft tissue: outside its 0–40 HU band
    by more than that). A tissue with too few voxels in its window is ``None`` (not measurable).

    Returns:
        ``{"<tissue>": {"expected", "measured", "offset", "flag"}, "status": hu_status,
        "offset_hu": median offset of the measured tissues (soft tissue left out when the scan
        is contrast-enhanced: its brightness is not an offset), "flag": status is
        "miscalibrated", "contrast_enhanced": status is "contrast_enhanced"}``.
    """
    out: dict[str, Any] = {}
    for tissue, measured in _tissue_modes(arr, mask).items():
        expected = HU_EXPECTED[tissue][0]
        if measured is None:
            out[tissue] = {"expected": expected, "measured": None, "offset": None, "flag": False}
            continue
        offset = measured - expected
        dev = _soft_tissue_deviation(measured) if tissue == "soft_tissue" else abs(offset)
        out[tissue] = {"expected": expected, "measured": measured, "offset": offset, "flag": bool(dev > HU_TOLERANCE)}
    status = hu_status(out)
    offsets = [out[t]["offset"] for t in HU_EXPECTED if out[t]["offset"] is not None
               and not (t == "soft_tissue" and status == "contrast_enhanced")]
    out["status"] = status
    out["offset_hu"] = float(np.median(offsets)) if offsets else None
    out["flag"] = status == "miscalibrated"
    out["contrast_enhanced"] = status == "contrast_enhanced"
    return out


def scan_fingerprint(scan: Scan) -> dict[str, Any]:
    """Fingerprint of one scan (JSON-safe).

    Args:
        scan: a loaded scan (image ``(1, I, J, K)``, RAS affine, HU for CT).

    Returns:
        Dict with ``scan_id``, ``modality``, ``shape``, ``spacing_i/j/k`` (mm),
        ``slice_thickness`` (mm; the DICOM SliceThickness tag (0018,0050) when the scan came
        from DICOM, else the k spacing), ``slice_thickness_source`` (``"dicom"`` or
        ``"spacing"``), ``slice_spacing`` (the k spacing, mm),
        ``fov_i/j/k_mm``, ``orientation``, percentiles ``p0_5 … p99_5`` inside the body,
        ``noise``, ``body_fraction``, ``hu_calibration`` (CT) and ``acquisition`` tags.
    """
    arr = image_array(scan)
    mask = body_mask(arr, scan.modality)
    sp = spacing_of(scan.image.affine)
    inside = arr[mask]
    pct = np.percentile(inside, PERCENTILES) if inside.size else np.full(len(PERCENTILES), np.nan)
    acq = {k: v for k, v in (scan.acquisition or {}).items() if v is not None}
    tag = acq.get("slice_thickness_mm", acq.get("slice_thickness"))  # DICOM SliceThickness (0018,0050)
    thick = float(tag) if isinstance(tag, (int, float)) else math.nan
    from_tag = math.isfinite(thick) and thick > 0
    fp: dict[str, Any] = {
        "scan_id": scan.scan_id,
        "modality": scan.modality,
        "shape": [int(s) for s in arr.shape],
        "spacing_i": sp[0],
        "spacing_j": sp[1],
        "spacing_k": sp[2],
        "slice_thickness": thick if from_tag else sp[2],
        "slice_thickness_source": THICKNESS_FROM_DICOM if from_tag else THICKNESS_FROM_SPACING,
        "slice_spacing": sp[2],
        "fov_i_mm": sp[0] * arr.shape[0],
        "fov_j_mm": sp[1] * arr.shape[1],
        "fov_k_mm": sp[2] * arr.shape[2],
        "orientation": orientation_code(scan.image.affine),
        "noise": noise_estimate(arr, mask),
        "body_fraction": float(mask.mean()),
        "acquisition": {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in acq.items()},
    }
    for p, v in zip(PERCENTILES, pct):
        fp[_pkey(p)] = float(v)
    if scan.modality == "CT":
        fp["hu_calibration"] = hu_calibration(arr, mask)
    return fp


def cohort_summary(fingerprints: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Summarise a cohort's fingerprints: mean/std/min/max/median of each numeric field,
    counts of orientations, modalities and acquisition tag values, and the share of CT scans
    whose HU calibration is flagged.

    Args:
        fingerprints: per-scan dicts from :func:`scan_fingerprint`.

    Returns:
        JSON-safe summary dict (``n`` scans, ``fields``, ``orientation``, ``modality``,
        ``acquisition``, ``hu_flagged`` (miscalibrated), ``hu_contrast_enhanced``).
    """
    fields: dict[str, dict[str, float]] = {}
    for name in NUMERIC_FIELDS:
        vals = np.array([float(fp[name]) for fp in fingerprints if fp.get(name) is not None], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            continue
        fields[name] = {
            "mean": float(vals.mean()),
            "std": float(vals.std(ddof=1)) if vals.size > 1 else 0.0,
            "median": float(np.median(vals)),
            "min": float(vals.min()),
            "max": float(vals.max()),
        }

    def _counts(values: Sequence[Any]) -> dict[str, int]:
        out: dict[str, int] = {}
        for v in values:
            out[str(v)] = out.get(str(v), 0) + 1
        return out

    acq_keys = sorted({k for fp in fingerprints for k in (fp.get("acquisition") or {})})
    hu = [fp["hu_calibration"] for fp in fingerprints if "hu_calibration" in fp]
    offsets = [h["offset_hu"] for h in hu if h.get("offset_hu") is not None]
    return {
        "n": len(fingerprints),
        "fields": fields,
        "orientation": _counts([fp.get("orientation") for fp in fingerprints]),
        "modality": _counts([fp.get("modality") for fp in fingerprints]),
        "acquisition": {k: _counts([(fp.get("acquisition") or {}).get(k) for fp in fingerprints]) for k in acq_keys},
        "hu_flagged": int(sum(1 for h in hu if h.get("flag"))),
        "hu_contrast_enhanced": int(sum(1 for h in hu if h.get("contrast_enhanced"))),
        "hu_offset_median": float(np.median(offsets)) if offsets else None,
    }


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Hedges' g (bias-corrected Cohen's d) of ``b`` relative to ``a``.

    ``d = (mean_b − mean_a) / s_pooled``; ``g = d · (1 − 3 / (4(n_a + n_b) − 9))``.
    Zero when both groups are constant and equal; capped at ±:data:`G_CAP` (two constant,
    different cohorts would otherwise give an infinite value).
    """
    xa = np.asarray(a, dtype=np.float64)
    xb = np.asarray(b, dtype=np.float64)
    na, nb = xa.size, xb.size
    if na < 2 or nb < 2:
        return float("nan")
    pooled = ((na - 1) * xa.var(ddof=1) + (nb - 1) * xb.var(ddof=1)) / (na + nb - 2)
    diff = float(xb.mean() - xa.mean())
    scale = math.sqrt(max(pooled, 1e-12 * (1.0 + diff * diff)))
    d = diff / scale
    g = d * (1.0 - 3.0 / (4.0 * (na + nb) - 9.0))
    return float(np.clip(g, -G_CAP, G_CAP))


def effect_sizes(
    source: Sequence[Mapping[str, Any]], target: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Per-feature effect sizes between two cohorts' fingerprints.

    Args:
        source: source fingerprints (each a :func:`scan_fingerprint` dict).
        target: target fingerprints.

    Returns:
        One row per numeric field: ``field``, ``source_mean``, ``target_mean``, ``hedges_g``
        (target relative to source), ``mann_whitney_p`` (two-sided; 1.0 when both cohorts are
        identical constants), ``large`` (|g| ≥ 0.8, Cohen's "large").
    """
    rows: list[dict[str, Any]] = []
    for name in NUMERIC_FIELDS:
        a = [float(fp[name]) for fp in source if fp.get(name) is not None and math.isfinite(float(fp[name]))]
        b = [float(fp[name]) for fp in target if fp.get(name) is not None and math.isfinite(float(fp[name]))]
        if len(a) < 2 or len(b) < 2:
            continue
        try:
            p = float(stats.mannwhitneyu(a, b, alternative="two-sided").pvalue)
        except ValueError:
            p = 1.0
        if not math.isfinite(p):
            p = 1.0
        g = hedges_g(a, b)
        rows.append(
            {
                "field": name,
                "source_mean": float(np.mean(a)),
                "target_mean": float(np.mean(b)),
                "hedges_g": g,
                "mann_whitney_p": p,
                "large": bool(math.isfinite(g) and abs(g) >= 0.8),
            }
        )
    return rows


def body_quantiles(arrays: Sequence[NDArray[np.floating[Any]]], modality: str, n_levels: int = 257) -> dict[str, Any]:
    """Reference quantile table of body intensities, for histogram matching.

    Each scan's body-voxel quantile function is computed at ``n_levels`` evenly spaced levels
    in [0, 1]; the table is their average (the 1D Wasserstein barycentre of the cohort's
    intensity distributions).

    Returns:
        ``{"levels": [...], "values": [...], "per_scan_std": [...], "modality": ...}``.
    """
    levels = np.linspace(0.0, 1.0, n_levels)
    per_scan = []
    for arr in arrays:
        mask = body_mask(arr, modality)
        per_scan.append(np.quantile(arr[mask], levels))
    q = np.stack(per_scan) if per_scan else np.zeros((1, n_levels))
    return {
        "levels": [round(float(v), 6) for v in levels],
        "values": [round(float(v), 4) for v in q.mean(axis=0)],
        "per_scan_std": [round(float(v), 4) for v in q.std(axis=0)],
        "modality": modality,
    }


def intensity_histogram(
    arrays: Sequence[NDArray[np.floating[Any]]], modality: str, bins: int = 64
) -> dict[str, Any]:
    """Normalised body-intensity histogram of a cohort (the report's per-cohort histogram).

    CT uses fixed edges −1100…1500 HU; MR uses 0…the 99.5th percentile of the pooled body.
    """
    bodies = [arr[body_mask(arr, modality)] for arr in arrays]
    pooled = np.concatenate(bodies) if bodies else np.zeros(1)
    hi = 1500.0 if modality == "CT" else float(np.percentile(pooled, 99.5))
    lo = -1100.0 if modality == "CT" else float(min(0.0, pooled.min()))
    hist, edges = np.histogram(pooled, bins=bins, range=(lo, max(hi, lo + 1.0)), density=True)
    return {"edges": [float(e) for e in edges], "density": [float(h) for h in hist]}
