"""``medmtl export``: a prediction folder's lesions in the field's formats, without re-running the model.

Reads what ``medmtl predict`` (or ``medmtl classical``) wrote into ``PRED_DIR`` —
``predictions.csv`` (the lesions, LPS mm), ``predictions.json`` (the scans, also those without
a lesion) and the per-scan records under ``scans/`` (each scan's source path and the model's
provenance) — finds each scan's source again (the recorded path, or ``--scans``) and writes into
``OUT``:

* ``dicom-seg``: ``<scan>_seg.dcm``, one DICOM Segmentation per DICOM series
  (:mod:`medmtl.io.dicom_export`);
* ``dicom-sr``: ``<scan>_sr.dcm``, one TID 1500 Comprehensive 3D SR per DICOM series;
* ``monai-json``: ``monai_detection.json``, every scan's boxes as MONAI detection JSON
  (:mod:`medmtl.io.monai_export`).

DICOM objects need DICOM sources: a scan read from NIfTI, MetaImage or NRRD is refused with one
line (a SEG/SR must reference the instances the lesions were found on; converting the volume to
a new DICOM series would invent a study the PACS never saw). A series without any predicted
lesion gets no SEG and no SR (both need at least one lesion) and is listed as skipped.

Everything is read, checked and built in memory first; only then are the output names recorded
in ``OUT`` (:mod:`medmtl.io.outputs`: files medmtl did not write are never replaced) and each file
written atomically, so bad input leaves no partial output. The algorithm written into the DICOM
objects is the model's provenance as every scan record holds it (medmtl version and weights
SHA-256 from the model card), so export never loads torch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl.engine import predict_io as pio
from medmtl.errors import ConfigError, ExportError
from medmtl.io.dicom_export import Algorithm
from medmtl.io.types import Detection, ScanRef

#: The formats ``medmtl export`` writes.
FORMATS = ("dicom-seg", "dicom-sr", "monai-json")
#: File name of the MONAI detection JSON.
MONAI_FILE = "monai_detection.json"
_DICOM_FORMATS = ("dicom-seg", "dicom-sr")


@dataclass
class _Scan:
    """One scan of the prediction folder: its lesions (table order), record and source."""

    seriesuid: str
    lesions: list[Detection] = field(default_factory=list)
    record: dict[str, Any] | None = None
    ref: ScanRef | None = None


def _check_formats(formats: Sequence[str]) -> list[str]:
    from medmtl.errors import did_you_mean

    out = list(dict.fromkeys(formats))
    if not out:
        raise ConfigError(f"no export format given; allowed: {', '.join(FORMATS)}")
    for f in out:
        if f not in FORMATS:
            raise ConfigError(f"export format {f!r} is not known; allowed: {', '.join(FORMATS)}.{did_you_mean(f, FORMATS)}")
    return out


def _listed_scan_ids(pred_dir: Path) -> list[str]:
    """The scans ``predictions.json`` lists (those without any lesion too); empty when unreadable."""
    try:
        data = json.loads((pred_dir / "predictions.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return []
    scans = data.get("scans") if isinstance(data, dict) else None
    return [str(k) for k in scans] if isinstance(scans, dict) else []


def read_prediction_folder(pred_dir: Path) -> list[_Scan]:
    """The scans of a prediction folder with their lesions (in table order) and records.

    Raises:
        ExportError: ``pred_dir`` has no ``predictions.csv``.
        PredictionTableError: the table is invalid (one line naming the row and column).
    """
    from medmtl.engine.evaluate import read_predictions_csv

    table = pred_dir / "predictions.csv"
    if not table.is_file():
        raise ExportError(f"'{pred_dir}' holds no predictions.csv; pass the output folder of `medmtl predict` "
                          "(or `medmtl classical`)")
    scans: dict[str, _Scan] = {sid: _Scan(sid) for sid in _listed_scan_ids(pred_dir)}
    for det in read_predictions_csv(table):
        scans.setdefault(det.seriesuid, _Scan(det.seriesuid)).lesions.append(det)
    for scan in scans.values():
        scan.record = pio.load_record(pio.record_path(pred_dir, scan.seriesuid))
    return sorted(scans.values(), key=lambda s: s.seriesuid)


def _refs_under(root: Path) -> dict[str, ScanRef]:
    from medmtl.io.discover import discover_scans

    refs, _skipped = discover_scans(root)
    return {r.scan_id: r for r in refs}


def find_sources(scans: Sequence[_Scan], pred_dir: Path, scans_dir: Path | None) -> None:
    """Set each scan's source :class:`ScanRef`: from ``scans_dir`` when given, else from the path
    its record names (discovered again, so a DICOM folder's series are told apart).

    Raises:
        ExportError: a scan that cannot be found, with the fix (``--scans``).
    """
    if scans_dir is not None:
        found = _refs_under(scans_dir)
        missing = [s.seriesuid for s in scans if s.seriesuid not in found]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise ExportError(f"--scans '{scans_dir}' holds no scan '{missing[0]}'{more} of the predictions; pass the "
                              "folder the predictions were made from")
        for s in scans:
            s.ref = found[s.seriesuid]
        return
    cache: dict[Path, dict[str, ScanRef]] = {}
    for s in scans:
        raw = ((s.record or {}).get("input") or {}).get("path")
        if not isinstance(raw, str):
            raise ExportError(f"scan '{s.seriesuid}' has no record of its source in '{pred_dir / 'scans'}'; pass --scans "
                              "with the folder the predictions were made from")
        path = Path(raw)
        if not path.exists():
            raise ExportError(f"the source of scan '{s.seriesuid}' ('{path}') no longer exists; pass --scans with the "
                              "folder that holds it now")
        if path not in cache:
            cache[path] = _refs_under(path)
        if s.seriesuid not in cache[path]:
            raise ExportError(f"'{path}' no longer holds scan '{s.seriesuid}'; pass --scans with the folder that holds it")
        s.ref = cache[path][s.seriesuid]


def algorithm_of(scans: Sequence[_Scan]) -> Algorithm:
    """The algorithm that made the predictions, from the records' provenance (one model per folder).

    Raises:
        ExportError: the records name more than one model.
    """
    from medmtl import __version__

    seen = {(str(r.get("weights_sha256") or ""), str((r.get("provenance") or {}).get("method") or ""),
             str((r.get("provenance") or {}).get("medmtl_version") or __version__))
            for r in (s.record for s in scans) if r is not None}
    if len(seen) > 1:
        raise ExportError(f"the prediction records name {len(seen)} different models (weights hashes "
                          f"{sorted(w[:12] for w, _, _ in seen)}); export each model's predictions from its own folder")
    if not seen:
        return Algorithm(name="medmtl", version="unknown (no prediction records)", weights_sha256="",
                         software_version=__version__)
    sha, method, version = seen.pop()
    name = "medmtl classical detector" if method == "classical" else "medmtl multi-task lesion detector"
    label = "run" if method == "classical" else "weights"
    return Algorithm(name=name, version=f"medmtl {version} {label} {sha[:16]}", weights_sha256=sha,
                     software_version=version)


def _check_dicom(scans: Sequence[_Scan]) -> None:
    for s in scans:
        assert s.ref is not None  # set by find_sources
        if s.ref.format != "dicom":
            where = s.ref.paths[0] if s.ref.paths else s.ref.folder
            raise ExportError(f"scan '{s.seriesuid}' was read from a {s.ref.format} file ('{where}'), not a DICOM series; a "
                              "DICOM SEG/SR references the source DICOM instances — predict on the DICOM series, or "
                              "use --format monai-json")


def _dicom_objects(scans: Sequence[_Scan], formats: Sequence[str], algorithm: Algorithm,
                   skipped: list[dict[str, str]]) -> dict[str, Any]:
    """``{file name: dataset}`` of the SEG/SR asked for, built in memory (nothing written)."""
    from medmtl.io.dicom_export import build_seg, build_sr, read_source_series, require_highdicom

    require_highdicom()
    objects: dict[str, Any] = {}
    builders: dict[str, tuple[str, Callable[..., Any]]] = {"dicom-seg": ("seg", build_seg), "dicom-sr": ("sr", build_sr)}
    for s in scans:
        wanted = [f for f in formats if f in builders]
        if not s.lesions:
            skipped.extend({"seriesuid": s.seriesuid, "format": f, "reason": "no lesion predicted"} for f in wanted)
            continue
        assert s.ref is not None
        datasets = read_source_series(s.ref.paths, s.seriesuid)
        for f in wanted:
            suffix, build = builders[f]
            objects[f"{pio.safe_name(s.seriesuid)}_{suffix}.dcm"] = build(datasets, s.lesions, algorithm)
    return objects


def _check_out(out_dir: Path, scans: Sequence[_Scan], scans_dir: Path | None, names: Sequence[str]) -> None:
    """Refuse an output folder that is (inside) a scan folder or would replace files medmtl did not write."""
    from medmtl.io.outputs import check_output_path, check_outputs

    check_output_path(out_dir)
    out = out_dir.resolve()
    folders = [s.ref.folder for s in scans if s.ref is not None] + ([scans_dir] if scans_dir is not None else [])
    for folder in folders:
        f = Path(folder).resolve()
        if out == f or f in out.parents:
            raise ConfigError(f"output folder '{out_dir}' is {'a scan folder' if out == f else 'inside the scan folder'} "
                              f"'{folder}'; a later run would read the exported DICOM files as scans — choose -o outside it")
    check_outputs(out_dir, names)


def export_predictions(*, pred_dir: Path, out_dir: Path, formats: Sequence[str],
                       scans_dir: Path | None = None) -> dict[str, Any]:
    """Write a prediction folder's lesions in ``formats`` into ``out_dir`` (see the module docstring).

    Returns:
        ``{"pred_dir", "out_dir", "formats", "n_scans", "n_lesions", "files", "skipped", "algorithm"}``
        (``files``: names written under ``out_dir``; ``skipped``: scans without a SEG/SR and why).

    Raises:
        ExportError, ConfigError, PredictionTableError, ScanReadError: bad input, one line each;
            nothing is written then.
    """
    from medmtl.io.monai_export import ScanLesions, detection_datalist
    from medmtl.io.outputs import record_outputs
    from medmtl.io.writers import atomic_write_json

    pred_dir, out_dir = Path(pred_dir), Path(out_dir)
    formats = _check_formats(formats)
    scans = read_prediction_folder(pred_dir)
    find_sources(scans, pred_dir, Path(scans_dir) if scans_dir is not None else None)
    algorithm = algorithm_of(scans)
    skipped: list[dict[str, str]] = []
    objects: dict[str, Any] = {}
    if any(f in _DICOM_FORMATS for f in formats):
        _check_dicom(scans)
        objects = _dicom_objects(scans, formats, algorithm, skipped)
    datalist = None
    if "monai-json" in formats:
        datalist = detection_datalist([ScanLesions(s.seriesuid, _image_path(s), s.lesions) for s in scans])
    names = sorted(objects) + ([MONAI_FILE] if datalist is not None else [])
    _check_out(out_dir, scans, Path(scans_dir) if scans_dir is not None else None, names)
    record_outputs(out_dir, names)  # before writing: a killed export's files are still medmtl's
    _write(out_dir, objects, datalist, atomic_write_json)
    return {
        "pred_dir": str(pred_dir), "out_dir": str(out_dir), "formats": formats, "n_scans": len(scans),
        "n_lesions": sum(len(s.lesions) for s in scans), "files": names, "skipped": skipped,
        "algorithm": {"name": algorithm.name, "version": algorithm.version},
    }


def _image_path(scan: _Scan) -> Path:
    """What MONAI loads for a scan: the file, or a DICOM series' folder."""
    assert scan.ref is not None
    return scan.ref.folder if scan.ref.format == "dicom" else scan.ref.paths[0]


def _write(out_dir: Path, objects: Mapping[str, Any], datalist: dict[str, Any] | None,
           write_json: Callable[..., Path]) -> None:
    from medmtl.io.dicom_export import save_dataset

    for name, ds in objects.items():
        save_dataset(out_dir / name, ds)
    if datalist is not None:
        write_json(out_dir / MONAI_FILE, datalist)


__all__ = ["FORMATS", "MONAI_FILE", "algorithm_of", "export_predictions", "find_sources", "read_prediction_folder"]
