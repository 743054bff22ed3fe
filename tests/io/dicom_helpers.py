"""A tiny DICOM-series writer for tests (independent of medmtl.io.dicom_write).

Writes one CT/MR slice per file with SimpleITK, with the geometry tags medmtl reads:
ImagePositionPatient (0020,0032), ImageOrientationPatient (0020,0037), PixelSpacing,
SeriesInstanceUID (0020,000E), Modality (0008,0060), ImageType (0008,0008).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

STUDY_UID = "1.2.826.0.1.3680043.8.498.1"


def write_series(
    folder: Path,
    volume_ijk: np.ndarray,
    *,
    origin_lps: Sequence[float],
    spacing: Sequence[float],
    direction: Sequence[float] = (1, 0, 0, 0, 1, 0, 0, 0, 1),
    series_uid: str = "1.2.826.0.1.3680043.8.498.100",
    modality: str = "CT",
    positions: Sequence[Sequence[float]] | None = None,
    image_type: str = "ORIGINAL\\PRIMARY\\AXIAL",
    prefix: str = "slice",
    suffix: str = ".dcm",
) -> list[Path]:
    """Write an ``(I, J, K)`` int16 volume as a DICOM series, one file per k slice.

    Args:
        folder: output folder (created).
        volume_ijk: ``(I, J, K)`` array (HU for CT), indexed like medmtl arrays.
        origin_lps: LPS mm of voxel (0, 0, 0).
        spacing: ``(sx, sy, sz)`` mm.
        direction: 9 row-major LPS direction cosines (SimpleITK order; columns are i, j, k).
        series_uid: SeriesInstanceUID.
        modality: ``"CT"`` or ``"MR"``.
        positions: per-slice ImagePositionPatient override (for non-uniform / tilted series).
        image_type: ImageType value (``...\\LOCALIZER`` for scouts).
        prefix: file name prefix.
        suffix: file suffix ("" for none).

    Returns:
        The written files, in slice order.
    """
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    row, col, normal = d[:, 0], d[:, 1], d[:, 2]
    origin = np.asarray(origin_lps, dtype=float)
    n_k = volume_ijk.shape[2]
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for k in range(n_k):
        pos = np.asarray(positions[k], dtype=float) if positions is not None else origin + k * spacing[2] * normal
        img = sitk.GetImageFromArray(np.ascontiguousarray(volume_ijk[:, :, k].T.astype(np.int16)))
        img.SetSpacing((float(spacing[0]), float(spacing[1])))
        tags = {
            "0008|0008": image_type,
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2" if modality == "CT" else "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{k + 1}",
            "0008|0060": modality,
            "0008|0070": "TestVendor",
            "0010|0010": "Doe^Jane",
            "0010|0020": "PID12345",
            "0018|0050": f"{spacing[2]:.4f}",
            "0018|0060": "120",
            "0018|1210": "B30f",
            "0020|000d": STUDY_UID,
            "0020|000e": series_uid,
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos),
            "0020|0037": "\\".join(f"{v:.6f}" for v in (*row, *col)),
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for key, value in tags.items():
            img.SetMetaData(key, value)
        path = folder / f"{prefix}{k:03d}{suffix}"
        writer.SetFileName(str(path))
        writer.SetImageIO("GDCMImageIO")
        writer.Execute(img)
        files.append(path)
    return files
