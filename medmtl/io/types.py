"""Plain records shared by every part: scan references, loaded scans, lesions, detections.

Coordinates in these records are **LPS world millimetres** (see :mod:`medmtl.io.coords`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from monai.data import MetaTensor


@dataclass(frozen=True)
class ScanRef:
    """Where one scan lives on disk.

    Attributes:
        scan_id: identifier used in every table (file name without extension, or the DICOM
            SeriesInstanceUID); never a patient name or ID.
        format: one of ``"nifti"``, ``"mha"``, ``"mhd"``, ``"nrrd"``, ``"dicom"``.
        paths: the file (one) or the DICOM series' files (sorted by position when read).
        folder: the folder that holds it.
    """

    scan_id: str
    format: str
    paths: tuple[Path, ...]
    folder: Path


@dataclass(frozen=True)
class Skipped:
    """A file or series that discovery did not turn into a scan, and why.

    Attributes:
        path: the file (or a DICOM series' first file / folder).
        reason: one line saying why.
        failed: ``True`` when it was meant to be a scan but could not be read (corrupt file,
            refused geometry): the CLI then exits 1. ``False`` for files skipped by design
            (label masks, localizers).
    """

    path: Path
    reason: str
    failed: bool = False


@dataclass
class Scan:
    """One loaded 3D scan.

    Attributes:
        ref: where it came from.
        image: ``MetaTensor`` of shape ``(1, I, J, K)`` float32 (HU for CT), whose ``affine``
            maps voxel ``(i, j, k)`` to RAS world mm.
        modality: ``"CT"`` or ``"MR"``.
        acquisition: DICOM acquisition tags when known (manufacturer, kernel, kVp,
            field strength, slice thickness); no patient-identifying tags.
        warnings: non-fatal problems found while reading (e.g. NaN voxels replaced).
    """

    ref: ScanRef
    image: MetaTensor
    modality: str
    acquisition: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    @property
    def scan_id(self) -> str:
        """The scan's table identifier (``seriesuid``)."""
        return self.ref.scan_id


@dataclass(frozen=True)
class Lesion:
    """One annotated lesion (a row of ``annotations.csv``).

    Attributes:
        seriesuid: scan id.
        center_lps: lesion centre, LPS world mm.
        diameter_mm: diameter in mm (> 0).
        malignancy: 0/1 label (or a probability in [0, 1]); ``None`` when not labelled.
        lesion_id: optional identifier.
        site: optional acquisition site / scanner name.
        extra: other columns (e.g. ``bayes_malignancy_prob``), kept as floats or strings.
    """

    seriesuid: str
    center_lps: tuple[float, float, float]
    diameter_mm: float
    malignancy: float | None = None
    lesion_id: str | None = None
    site: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Detection:
    """One predicted lesion (a row of ``predictions.csv``).

    Attributes:
        seriesuid: scan id.
        center_lps: predicted centre, LPS world mm.
        probability: detection score in [0, 1].
        diameter_mm: predicted diameter, mm.
        malignancy_prob: calibrated malignancy probability in [0, 1].
    """

    seriesuid: str
    center_lps: tuple[float, float, float]
    probability: float
    diameter_mm: float
    malignancy_prob: float
