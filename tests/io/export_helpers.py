"""Helpers for the export tests: prediction folders as ``medmtl predict`` writes them, without a model.

:func:`write_prediction_folder` writes per-scan records with :func:`medmtl.engine.predict_io.write_record`
and merges them with :func:`~medmtl.engine.predict_io.merge_outputs` (what predict itself calls), so
``predictions.csv``, ``predictions.json`` and ``scans/`` have predict's layout.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from medmtl.engine import predict_io as pio
from medmtl.io.types import Detection

REPO = Path(__file__).resolve().parents[2]
DICOM_EXAMPLE = REPO / "sample_data" / "dicom_example"
DICOM_SERIES = DICOM_EXAMPLE / "ct_a_0000"
WEIGHTS = "ab" * 32


def example_lesions() -> list[Detection]:
    """Detections at the annotated nodules of ``sample_data/dicom_example`` (LPS mm), with scores."""
    with open(DICOM_EXAMPLE / "annotations.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    return [Detection(seriesuid=r["seriesuid"], center_lps=(float(r["coordX"]), float(r["coordY"]), float(r["coordZ"])),
                      probability=0.9 - 0.2 * i, diameter_mm=float(r["diameter_mm"]), malignancy_prob=0.25 + 0.5 * i)
            for i, r in enumerate(rows)]


def write_prediction_folder(out: Path, scans: Sequence[tuple[str, str, Path, Sequence[Detection]]]) -> Path:
    """Write a prediction folder.

    Args:
        out: the folder.
        scans: ``(scan id, input format, source path, detections)`` per scan (the source path is
            the series folder for ``"dicom"``, the file otherwise).

    Returns:
        ``out``.
    """
    for sid, fmt, source, dets in scans:
        pio.write_record(out, {
            "format": pio.RECORD_FORMAT, "status": "complete", "seriesuid": sid, "weights_sha256": WEIGHTS,
            "input": {"format": fmt, "path": str(source), "n_files": 1},
            "lesions": [pio.detection_to_dict(d) for d in dets],
            "provenance": {"medmtl_version": "0.1.0", "checkpoint": "ckpt", "weights_sha256": WEIGHTS},
        })
    pio.merge_outputs(out, [s[0] for s in scans])
    return out


def example_folder(out: Path) -> Path:
    """A prediction folder of the DICOM example series with :func:`example_lesions`."""
    lesions = example_lesions()
    return write_prediction_folder(out, [(lesions[0].seriesuid, "dicom", DICOM_SERIES, lesions)])


def read_table(pred_dir: Path) -> list[dict[str, str]]:
    """The rows of ``pred_dir/predictions.csv``."""
    with open(pred_dir / "predictions.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))
