"""Write a volume as a DICOM series (one file per slice) with SimpleITK.

Used by the phantom generator for the DICOM sample data. Geometry comes from the voxel→RAS
affine through :mod:`medmtl.io.coords` (DICOM geometry is LPS). No patient data is ever
written: ``PatientName`` is ``ANONYMOUS`` and ``PatientID`` a hash of the study UID. Dates
and times are fixed, so the same input gives the same files byte for byte.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from medmtl.errors import MedmtlError
from medmtl.io.coords import affine_ras_to_sitk

if TYPE_CHECKING:
    import SimpleITK as sitk

#: SOP classes of the written slices.
SOP_CLASS = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}

#: ``extra_tags`` keys (phantom acquisition names) mapped to DICOM tags.
TAG_NAMES = {
    "manufacturer": "0008|0070",
    "kernel": "0018|1210",
    "kvp": "0018|0060",
    "field_strength_t": "0018|0087",
}

_FIXED_DATE = "20000101"
_FIXED_TIME = "120000"


def _ds(value: float) -> str:
    """A DICOM decimal string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("", "-0"):
        text = "0"
    return text[:16]


def _series_tags(
    *,
    modality: str,
    series_uid: str,
    study_uid: str | None,
    spacing: tuple[float, ...],
    direction: tuple[float, ...],
    extra_tags: Mapping[str, str] | None,
) -> dict[str, str]:
    """The tags shared by every slice of the series (``"gggg|eeee"`` → value)."""
    study = study_uid or series_uid + ".1"
    patient_id = "ANON-" + hashlib.sha256(study.encode("utf-8")).hexdigest()[:12]
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    iop = "\\".join(_ds(v) for v in (*d[:, 0], *d[:, 1]))
    common = {
        "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
        "0008|0016": SOP_CLASS[modality],
        "0008|0020": _FIXED_DATE, "0008|0021": _FIXED_DATE, "0008|0030": _FIXED_TIME,
        "0008|0031": _FIXED_TIME, "0008|0012": _FIXED_DATE, "0008|0013": _FIXED_TIME,
        "0008|0060": modality,
        "0008|0070": "MEDMTL-PHANTOM",
        "0008|103e": f"medmtl phantom {modality}",
        "0010|0010": "ANONYMOUS",
        "0010|0020": patient_id,
        "0018|0050": _ds(spacing[2]),
        "0018|0088": _ds(spacing[2]),
        "0020|000d": study,
        "0020|000e": series_uid,
        "0020|0011": "1",
        "0020|0037": iop,
        "0020|0052": series_uid + ".2",
        "0028|0030": f"{_ds(spacing[1])}\\{_ds(spacing[0])}",
        "0028|1052": "0",
        "0028|1053": "1",
    }
    for key, value in (extra_tags or {}).items():
        tag = TAG_NAMES.get(key, key if "|" in key else None)
        if tag is not None:
            common[tag] = str(value)
    return common


def _write_slices(out: Path, img: sitk.Image, common: Mapping[str, str], series_uid: str) -> None:
    """Write each slice ``k`` of ``img`` atomically as ``out/IM_####.dcm`` with its tags."""
    import SimpleITK as sitk

    from medmtl.io.writers import atomic_save

    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(img.GetSize()[2]):
        sl = img[:, :, k : k + 1]  # a one-slice 3D image keeps the slice spacing
        for tag, value in common.items():
            sl.SetMetaData(tag, value)
        pos = img.TransformIndexToPhysicalPoint((0, 0, k))
        sl.SetMetaData("0020|0032", "\\".join(_ds(v) for v in pos))
        sl.SetMetaData("0020|1041", _ds(pos[2]))
        sl.SetMetaData("0020|0013", str(k + 1))
        sl.SetMetaData("0008|0018", f"{series_uid}.{k + 1}")

        def _write(tmp: Path, sl: sitk.Image = sl) -> None:
            writer.SetFileName(str(tmp))
            writer.Execute(sl)

        atomic_save(out / f"IM_{k + 1:04d}.dcm", _write)


def write_dicom_series(
    folder: str | Path,
    volume_ijk: ArrayLike,
    affine_ras: ArrayLike,
    *,
    modality: str,
    series_uid: str,
    study_uid: str | None = None,
    extra_tags: Mapping[str, str] | None = None,
) -> Path:
    """Write a 3D volume as a DICOM series, one file ``IM_####.dcm`` per slice ``k``.

    Args:
        folder: output folder (created; must not already hold ``.dcm`` files).
        volume_ijk: ``(I, J, K)`` array indexed like a medmtl ``MetaTensor`` (int16 HU for
            CT, uint16 for MR; other dtypes are rounded and stored as int16).
        affine_ras: 4×4 voxel→RAS mm affine; its k axis must be the slice axis.
        modality: ``"CT"`` or ``"MR"``.
        series_uid: SeriesInstanceUID (the scan id medmtl uses for the series).
        study_uid: StudyInstanceUID; derived from ``series_uid`` when ``None``.
        extra_tags: acquisition values by name (``manufacturer``, ``kernel``, ``kvp``,
            ``field_strength_t``) or by DICOM tag ``"gggg|eeee"``; unknown names are ignored.

    Returns:
        ``folder``.

    Raises:
        MedmtlError: bad modality, non-3D volume, or a folder that already holds DICOM files.
    """
    import SimpleITK as sitk

    if modality not in SOP_CLASS:
        raise MedmtlError(f"modality must be CT or MR, got {modality!r}; pass modality='CT' or 'MR'")
    arr = np.asarray(volume_ijk)
    if arr.ndim != 3:
        raise MedmtlError(f"volume must be 3D (I, J, K), got shape {arr.shape}; pass one volume")
    if arr.dtype not in (np.int16, np.uint16):
        arr = np.clip(np.rint(arr), -32768, 32767).astype(np.int16)
    out = Path(folder)
    if out.is_dir() and any(out.glob("*.dcm")):
        raise MedmtlError(f"DICOM folder {out} already holds .dcm files; remove it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    origin, spacing, direction = affine_ras_to_sitk(affine_ras)
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(arr, (2, 1, 0))))
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    common = _series_tags(modality=modality, series_uid=series_uid, study_uid=study_uid, spacing=spacing,
                          direction=direction, extra_tags=extra_tags)
    _write_slices(out, img, common, series_uid)
    return out
