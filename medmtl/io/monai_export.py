"""Predicted lesions as MONAI detection JSON: what MONAI's detection tooling reads and writes.

The layout is the one MONAI's LUNA16 detection tutorial writes from its inference loop
(``luna16_testing.py``) and reads back with ``monai.data.load_decathlon_datalist(...,
data_list_key="validation")``::

    {"validation": [{"image": "/abs/path/scan.nii.gz", "box": [[cx, cy, cz, w, h, d], ...],
                     "label": [0, ...], "score": [p, ...], ...}, ...],
     "box_mode": "cccwhd", "coordinate_system": "LPS world mm"}

Boxes are in MONAI's ``cccwhd`` mode (:class:`monai.data.box_utils.CenterSizeMode`: centre
``x, y, z`` then size ``w, h, d``) in **world millimetres of the LPS (ITK/DICOM) frame**, the
frame of MONAI's LUNA16 datalists (boxes are mapped to image coordinates with
``AffineBoxToImageCoordinated(..., affine_lps_to_ras=True)``) and of ``predictions.csv``: the
centre is the table's ``coordX, coordY, coordZ`` unchanged and the box is the cube around the
predicted sphere (``w = h = d = diameter_mm``). ``label`` is the class index (0, the lesion
class); ``score`` the detection probability. Besides MONAI's keys each entry carries
``seriesuid`` (a DICOM series' image is its folder, whose name is not the scan id),
``malignancy`` (the malignancy probability per box, ``null`` when unknown; read by
:func:`medmtl.io.annotations.read_datalist`) and ``diameter_mm``. The two top-level strings
state the box mode and frame; readers of the datalist key ignore them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmtl.errors import ExportError
from medmtl.io.types import Detection

#: The datalist key MONAI's detection inference writes its results under.
DATALIST_KEY = "validation"
#: The box mode of the written boxes (``monai.data.box_utils``).
BOX_MODE = "cccwhd"
#: Class index of a lesion.
LESION_LABEL = 0


@dataclass(frozen=True)
class ScanLesions:
    """One scan's entry: its id, the image path MONAI loads (a file, or a DICOM series' folder)
    and its detections (LPS mm)."""

    seriesuid: str
    image: Path
    lesions: Sequence[Detection]


def _box(d: Detection, n: int) -> list[float]:
    """``[cx, cy, cz, w, h, d]`` (cccwhd, LPS mm) of the cube around the lesion's sphere."""
    if not (math.isfinite(d.diameter_mm) and d.diameter_mm > 0):
        raise ExportError(f"lesion {n} of scan {d.seriesuid} has no diameter_mm ({d.diameter_mm}); a MONAI box needs "
                          "the predicted size")
    x, y, z = (float(v) for v in d.center_lps)
    return [x, y, z, float(d.diameter_mm), float(d.diameter_mm), float(d.diameter_mm)]


def _optional(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def detection_datalist(scans: Sequence[ScanLesions]) -> dict[str, Any]:
    """The MONAI detection JSON object of ``scans`` (see the module docstring).

    Raises:
        ExportError: a lesion without a finite, positive ``diameter_mm``.
    """
    entries = []
    for scan in scans:
        entries.append({
            "image": str(Path(scan.image).resolve()),
            "seriesuid": scan.seriesuid,
            "box": [_box(d, n + 1) for n, d in enumerate(scan.lesions)],
            "label": [LESION_LABEL] * len(scan.lesions),
            "score": [float(d.probability) for d in scan.lesions],
            "malignancy": [_optional(d.malignancy_prob) for d in scan.lesions],
            "diameter_mm": [float(d.diameter_mm) for d in scan.lesions],
        })
    return {DATALIST_KEY: entries, "box_mode": BOX_MODE, "coordinate_system": "LPS world mm"}


def write_detection_json(path: str | Path, scans: Sequence[ScanLesions]) -> Path:
    """Write :func:`detection_datalist` of ``scans`` to ``path`` atomically."""
    from medmtl.io.writers import atomic_write_json

    return atomic_write_json(Path(path), detection_datalist(scans))


__all__ = ["BOX_MODE", "DATALIST_KEY", "LESION_LABEL", "ScanLesions", "detection_datalist", "write_detection_json"]
