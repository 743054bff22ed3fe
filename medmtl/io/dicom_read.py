"""Read one DICOM series into an ``(I, J, K)`` array with a voxel→RAS affine.

Slices are read one by one with SimpleITK (GDCM; RescaleSlope/Intercept applied, so CT is in
HU), sorted by their position along the slice normal ``n = row × column`` (the
ImageOrientationPatient cosines), and checked:

* **non-uniform spacing**: a gap between consecutive slice positions along ``n`` differs from
  the mean gap by more than 1 % of it or 0.01 mm, whichever is larger;
* **gantry tilt**: the slice positions move off the slice normal (an in-plane offset of more
  than 0.01 mm + 1 % of the distance along the normal), i.e. the stack is sheared.

Either is refused with a :class:`~medmtl.errors.GeometryError` unless
``resample_nonuniform=True``: the series is then resampled onto a regular, unsheared grid
with directions ``(row, column, n)``, the same in-plane spacing, the mean slice gap and the
same number of slices (in-plane shift by linear interpolation, then linear interpolation
along ``n``), and a warning is added.

SimpleITK is imported inside the functions (GPU-only machines may lack it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import GeometryError, ScanReadError
from medmtl.io import coords
from medmtl.io.types import ScanRef

log = logging.getLogger(__name__)

#: DICOM acquisition tags kept in ``Scan.acquisition`` (never patient-identifying tags).
ACQUISITION_TAGS: dict[str, tuple[str, bool]] = {
    "manufacturer": ("0008|0070", False),
    "manufacturer_model": ("0008|1090", False),
    "convolution_kernel": ("0018|1210", False),
    "kvp": ("0018|0060", True),
    "magnetic_field_strength_t": ("0018|0087", True),
    "slice_thickness_mm": ("0018|0050", True),
}
TAG_MODALITY = "0008|0060"
_SPACING_REL_TOL = 0.01
_SPACING_ABS_TOL_MM = 0.01


@dataclass
class RawVolume:
    """A volume as read from disk, before it becomes a :class:`~medmtl.io.types.Scan`.

    Attributes:
        array: ``(I, J, K)`` float32 voxels (HU for CT).
        affine_ras: 4×4 voxel→RAS mm affine.
        modality_tag: modality stated by the file ("CT"/"MR") or ``None``.
        acquisition: acquisition tags (DICOM only).
        warnings: non-fatal problems met while reading.
    """

    array: NDArray[np.float32]
    affine_ras: NDArray[np.float64]
    modality_tag: str | None = None
    acquisition: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def normalise_modality(value: str | None) -> str | None:
    """Map a modality string (DICOM ``CT``/``MR``, MetaImage ``MET_MOD_CT``, ``MRI``...) to
    ``"CT"``/``"MR"``, or ``None`` when unknown."""
    if not value:
        return None
    v = value.strip().upper().replace("MET_MOD_", "")
    if v in ("CT", "CTA"):
        return "CT"
    if v in ("MR", "MRI"):
        return "MR"
    return None


def _acquisition(reader: Any) -> dict[str, Any]:
    keys = set(reader.GetMetaDataKeys())
    out: dict[str, Any] = {}
    for name, (tag, numeric) in ACQUISITION_TAGS.items():
        if tag not in keys:
            continue
        raw = reader.GetMetaData(tag).strip()
        if not raw:
            continue
        if numeric:
            try:
                out[name] = float(raw.split("\\")[0])
            except ValueError:
                out[name] = raw
        else:
            out[name] = raw
    return out


#: Largest slice gap that ``resample_nonuniform`` bridges, as a multiple of the median gap:
#: beyond it slices are missing, and interpolating across them would invent anatomy.
MAX_GAP_FACTOR = 3.0


def _pixel_spacing(reader: Any, img: Any, path: Path, scan_id: str) -> tuple[float, float]:
    """In-plane spacing from PixelSpacing (0028,0030); a zero, negative or unreadable value is
    refused (GDCM would quietly use 1 mm)."""
    key = "0028|0030"
    if key in reader.GetMetaDataKeys():
        raw = reader.GetMetaData(key).strip()
        try:
            values = [float(v) for v in raw.split("\\") if v.strip()]
        except ValueError:
            values = []
        if len(values) != 2 or not all(np.isfinite(v) and v > 0 for v in values):
            raise GeometryError(f"DICOM file {path.name} of series {scan_id} has PixelSpacing {raw!r}; allowed: two "
                                "positive numbers in mm (row\\column); fix the header or re-export the series")
    return float(img.GetSpacing()[0]), float(img.GetSpacing()[1])


def _read_slices(ref: ScanRef) -> tuple[list[NDArray[Any]], NDArray[np.float64], NDArray[np.float64], tuple[float, float], Any]:
    """Read every file: ``(slices (I, J) each, positions (K, 3) LPS, direction 3×3, (sx, sy), first reader)``."""
    import SimpleITK as sitk

    slices: list[NDArray[Any]] = []
    positions: list[tuple[float, ...]] = []
    direction: NDArray[np.float64] | None = None
    spacing: tuple[float, float] = (1.0, 1.0)
    first_reader: Any = None
    for path in ref.paths:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(path))
        reader.LoadPrivateTagsOff()
        try:
            img = reader.Execute()
        except RuntimeError as exc:
            raise ScanReadError(
                f"DICOM file {path} of series {ref.scan_id} cannot be read (truncated or corrupt); "
                "expected a complete DICOM image: re-export the series or remove the file"
            ) from exc
        size = img.GetSize()
        if img.GetNumberOfComponentsPerPixel() != 1 or (len(size) == 3 and size[2] != 1):
            raise ScanReadError(
                f"DICOM file {path} of series {ref.scan_id} is multi-frame or multi-component "
                f"(size {size}); medmtl reads single-frame grey-level series: convert it to NIfTI first"
            )
        arr = sitk.GetArrayFromImage(img)
        slices.append(arr.reshape(arr.shape[-2:]).T)  # (J, I) -> (I, J)
        positions.append(img.GetOrigin())
        d = np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)
        if direction is None:
            direction, spacing, first_reader = d, _pixel_spacing(reader, img, path, ref.scan_id), reader
        elif np.abs(d[:, :2] - direction[:, :2]).max() > 1e-4:
            raise GeometryError(
                f"DICOM series {ref.scan_id}: file {path.name} has a different ImageOrientationPatient "
                "from the first slice; allowed: one orientation per series; fix: split the series"
            )
    shapes = {s.shape for s in slices}
    if len(shapes) != 1:
        raise ScanReadError(
            f"DICOM series {ref.scan_id} mixes slice sizes {sorted(shapes)}; allowed: one size per series"
        )
    assert direction is not None  # at least one file (discovery guarantees 3)
    return slices, np.asarray(positions, dtype=np.float64), direction, spacing, first_reader


def _resample(
    vol: NDArray[np.float32], along: NDArray[np.float64], inplane: NDArray[np.float64], spacing: tuple[float, float]
) -> NDArray[np.float32]:
    """Resample a sheared / irregular stack onto a regular grid.

    Args:
        vol: ``(I, J, K)`` slices sorted along the normal.
        along: ``(K,)`` slice positions along the normal, mm (increasing).
        inplane: ``(K, 2)`` in-plane offsets of each slice from the first, mm along (row, column).
        spacing: in-plane spacing ``(sx, sy)`` mm.

    Returns:
        ``(I, J, K)`` volume on the grid ``along[0] + k * mean_gap``.
    """
    from scipy import ndimage

    fill = float(vol.min())
    shifted = np.empty_like(vol)
    for k in range(vol.shape[2]):
        shift = (inplane[k, 0] / spacing[0], inplane[k, 1] / spacing[1])
        if abs(shift[0]) < 1e-6 and abs(shift[1]) < 1e-6:
            shifted[:, :, k] = vol[:, :, k]
        else:
            shifted[:, :, k] = ndimage.shift(vol[:, :, k], shift, order=1, mode="constant", cval=fill)
    n_k = vol.shape[2]
    targets = np.linspace(along[0], along[-1], n_k)
    idx = np.clip(np.searchsorted(along, targets, side="right") - 1, 0, n_k - 2)
    w = ((targets - along[idx]) / (along[idx + 1] - along[idx])).astype(np.float32)
    out = shifted[:, :, idx] * (1.0 - w) + shifted[:, :, idx + 1] * w
    return out.astype(np.float32)


def read_dicom_series(ref: ScanRef, *, resample_nonuniform: bool = False) -> RawVolume:
    """Read a DICOM series (see the module docstring for the geometry checks).

    Args:
        ref: a ``format="dicom"`` reference whose ``paths`` are the series' files.
        resample_nonuniform: resample non-uniform or tilted series instead of refusing them.

    Returns:
        The series as a :class:`RawVolume` (``(I, J, K)``, voxel→RAS affine, Modality tag,
        acquisition tags).

    Raises:
        ScanReadError: a file is truncated/corrupt, or two slices share a position.
        GeometryError: non-uniform spacing or gantry tilt without ``resample_nonuniform``.
    """
    slices, positions, direction, spacing, reader = _read_slices(ref)
    row, col = direction[:, 0], direction[:, 1]
    normal = np.cross(row, col)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    gaps = np.diff(along)
    if gaps.min() < 1e-3:
        k = int(np.argmin(gaps))
        raise ScanReadError(
            f"DICOM series {ref.scan_id}: files {ref.paths[order[k]].name} and {ref.paths[order[k + 1]].name} "
            "have the same slice position; allowed: one slice per position; fix: remove the duplicate"
        )
    mean_gap = float((along[-1] - along[0]) / (len(along) - 1))
    problems: list[str] = []
    if np.abs(gaps - mean_gap).max() > max(_SPACING_ABS_TOL_MM, _SPACING_REL_TOL * mean_gap):
        problems.append(
            f"non-uniform slice spacing (gaps {gaps.min():.3g} to {gaps.max():.3g} mm, mean {mean_gap:.3g} mm)"
        )
    delta = positions - positions[0]
    offaxis = delta - np.outer(delta @ normal, normal)
    off = np.linalg.norm(offaxis, axis=1)
    dist = np.abs(along - along[0])
    if np.any(off > _SPACING_ABS_TOL_MM + _SPACING_REL_TOL * dist):
        angle = float(np.degrees(np.arctan2(off[-1], dist[-1])))
        problems.append(f"gantry tilt ({angle:.1f} degrees between slice positions and the slice normal)")
    vol = np.stack(slices, axis=-1).astype(np.float32)
    warnings: list[str] = []
    if problems:
        what = " and ".join(problems)
        if not resample_nonuniform:
            raise GeometryError(
                f"DICOM series {ref.scan_id} has {what}; allowed: evenly spaced slices along the slice normal; "
                "fix: pass --resample-nonuniform (resample_nonuniform=True) to resample onto a regular grid"
            )
        median_gap = float(np.median(gaps))
        if gaps.max() > MAX_GAP_FACTOR * median_gap:
            raise GeometryError(
                f"DICOM series {ref.scan_id} has a {gaps.max():.3g} mm gap between slices, "
                f"{gaps.max() / median_gap:.1f}× its median spacing ({median_gap:.3g} mm); slices are missing and "
                f"resampling bridges gaps of at most {MAX_GAP_FACTOR:g}×; fix: re-export the complete series"
            )
        inplane = np.stack([offaxis @ row, offaxis @ col], axis=1)
        vol = _resample(vol, along, inplane, spacing)
        warnings.append(f"DICOM series {ref.scan_id} had {what}; resampled onto a regular grid ({mean_gap:.3g} mm slices)")
        log.warning("%s", warnings[-1])
    lps_dir = np.stack([row, col, normal], axis=1)
    affine = coords.sitk_to_affine_ras(
        positions[0].tolist(), (spacing[0], spacing[1], mean_gap), lps_dir.reshape(-1).tolist()
    )
    modality = reader.GetMetaData(TAG_MODALITY).strip() if TAG_MODALITY in reader.GetMetaDataKeys() else None
    return RawVolume(
        array=vol,
        affine_ras=affine,
        modality_tag=modality,
        acquisition=_acquisition(reader),
        warnings=warnings,
    )
