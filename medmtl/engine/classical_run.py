"""``detect_folder``: the classical detector (:mod:`medmtl.engine.classical`) over a scan folder.

It writes the files ``medmtl predict`` writes, in the same formats (:mod:`medmtl.engine.predict_io`),
so ``medmtl evaluate`` reads them unchanged: ``scans/<id>.json`` per finished scan (atomically),
then ``predictions.csv``, ``predictions.json`` (per-scan lesions, provenance ``{"method":
"classical", "medmtl_version", "run_key", "params", ...}`` and timings) and ``failures.json``.

Like ``medmtl predict``, a rerun into the same folder skips the scans already complete for the
same settings (the record's ``weights_sha256`` holds the :func:`run_key`); a folder holding
predictions of anything else (a learned model, other settings) is refused unless
``overwrite=True``, which removes the earlier tables and per-scan records first. A scan that fails
(unreadable, MR, no lung) is recorded and the batch goes on; a folder with nothing but MR scans
is refused with one error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.engine import predict_io as pio
from medmtl.engine.classical import ClassicalParams, detect_volume
from medmtl.errors import ConfigError, MedmtlError, ScanReadError
from medmtl.io.types import ScanRef
from medmtl.progress import bar as progress_bar

log = logging.getLogger(__name__)

METHOD = "classical"
REFERENCE = ("Li, Sone & Doi, Selective enhancement filters for nodules, vessels, and airway walls in "
             "two- and three-dimensional CT scans, Med. Phys. 30(8), 2003")
TABLES = ("predictions.csv", "predictions.json", "failures.json")
STAGES = ("read", "mask", "enhance", "measure", "write")


class ModalityError(ScanReadError):
    """A scan is not a CT (the classical detector reads HU)."""


def run_key(params: ClassicalParams) -> str:
    """``classical-<16 hex>``: SHA-256 of the method and its settings (a rerun resumes when equal)."""
    state = json.dumps({"method": METHOD, "params": params.as_dict()}, sort_keys=True)
    return f"{METHOD}-{hashlib.sha256(state.encode()).hexdigest()[:16]}"


def _earlier_run(out_dir: Path) -> list[Path]:
    """The prediction files of an earlier run in ``out_dir`` (tables and per-scan records)."""
    files = [out_dir / n for n in TABLES if (out_dir / n).exists()]
    scans = out_dir / "scans"
    return files + (sorted(scans.glob("*.json")) if scans.is_dir() else [])


def _foreign_file(out_dir: Path, key: str) -> Path | None:
    """The first prediction file in ``out_dir`` not written by a run with this ``key`` (``None``: none)."""
    tables = out_dir / "predictions.json"
    if tables.exists():
        if ((pio.load_record(tables) or {}).get("run") or {}).get("run_key") != key:
            return tables
    elif (out_dir / "predictions.csv").exists():
        return out_dir / "predictions.csv"
    scans = out_dir / "scans"
    for path in sorted(scans.glob("*.json")) if scans.is_dir() else []:
        if not path.name.endswith(".failed.json") and (pio.load_record(path) or {}).get("weights_sha256") != key:
            return path
    return None


def prepare_out_dir(out_dir: Path, key: str, *, overwrite: bool) -> None:
    """Accept ``out_dir`` when it holds no predictions or only this run's; else refuse unless ``overwrite``.

    With ``overwrite`` the earlier tables and per-scan records are removed (nothing else is).

    Raises:
        ConfigError: ``out_dir`` is a file, or holds predictions of another method or settings.
    """
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"-o/--out {out_dir} is a file; give a folder for the predictions")
    if overwrite:
        for path in _earlier_run(out_dir):
            path.unlink()
        return
    foreign = _foreign_file(out_dir, key)
    if foreign is not None:
        raise ConfigError(
            f"output folder {out_dir} already holds predictions of another run ({foreign.relative_to(out_dir)});"
            " choose another folder or pass --overwrite to replace them"
        )


def _detect_scan(ref: ScanRef, out_dir: Path, params: ClassicalParams, key: str,
                 provenance: dict[str, Any]) -> dict[str, float]:
    """Read, detect and write one scan's record; returns its timings (s)."""
    from medmtl.io.read import read_scan

    t0 = time.perf_counter()
    scan = read_scan(ref)
    if scan.modality.upper() != "CT":
        raise ModalityError(f"scan '{ref.scan_id}' is {scan.modality}; the classical detector reads CT only (HU)")
    affine = np.asarray(scan.image.affine.detach().cpu().numpy(), dtype=np.float64)
    hu = np.asarray(scan.image.detach().cpu().numpy()[0], dtype=np.float32)
    t_read = time.perf_counter() - t0
    detections, timings = detect_volume(hu, affine, seriesuid=ref.scan_id, params=params)
    timings = {"read": t_read, **timings}
    t1 = time.perf_counter()
    record = {
        "format": pio.RECORD_FORMAT, "status": "complete", "seriesuid": ref.scan_id, "weights_sha256": key,
        "input": {"format": ref.format, "path": str(ref.paths[0] if ref.format != "dicom" else ref.folder),
                  "n_files": len(ref.paths)},
        "lesions": [pio.detection_to_dict(d) for d in detections],
        "provenance": {**provenance, "scan_warnings": list(scan.warnings)},
        "timings": timings,
        "geometry": {"input_shape": list(hu.shape), "input_affine_ras": affine.tolist()},
        "outputs": {"maps": [], "previews": None},
    }
    timings["write"] = time.perf_counter() - t1
    pio.write_record(out_dir, record)
    return timings


def _failure(ref: ScanRef, exc: BaseException) -> dict[str, Any]:
    reason = str(exc) if isinstance(exc, MedmtlError) else f"{type(exc).__name__}: {exc}"
    log.warning("scan %s failed: %s", ref.scan_id, reason)
    path = str(ref.paths[0] if ref.format != "dicom" else ref.folder)
    return {"seriesuid": ref.scan_id, "path": path, "reason": reason, "stage": "classical"}


def detect_folder(*, input_dir: Path, out_dir: Path, max_lesions: int = 50, progress: bool = False,
                  overwrite: bool = False, scan_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the classical detector on every scan of a folder (see :func:`medmtl.api.detect_classical`).

    Returns:
        Summary: ``n_scans``, ``n_done``, ``n_skipped`` (already complete), ``n_failed``, ``failures``,
        ``outputs``, ``timings`` (seconds per stage summed over the scans done, ``wall_s``,
        ``scans_per_s``), ``method``, ``run_key``.

    Raises:
        ConfigError: a bad ``max_lesions`` or ``out_dir`` (see :func:`prepare_out_dir`).
        ScanReadError: the folder holds no scan. ModalityError: it holds MR scans only.
    """
    from medmtl import __version__
    from medmtl.engine.predict import discover

    t_start = time.perf_counter()
    if isinstance(max_lesions, bool) or not isinstance(max_lesions, int) or max_lesions < 1:
        raise ConfigError(f"--max-lesions must be an integer >= 1, got {max_lesions!r}")
    params = ClassicalParams(max_lesions=max_lesions)
    key = run_key(params)
    pio.check_output_folder(Path(input_dir), Path(out_dir))
    refs, skipped = discover(Path(input_dir), scan_ids)
    out_dir = Path(out_dir)
    with pio.output_lock(out_dir):
        prepare_out_dir(out_dir, key, overwrite=overwrite)
        pending = [r for r in refs if not pio.is_complete(out_dir, r.scan_id, key, need_maps=False,
                                                           need_previews=False)]
        provenance = {"method": METHOD, "medmtl_version": __version__, "run_key": key, "reference": REFERENCE,
                      "params": params.as_dict(), "device": "cpu"}
        totals = dict.fromkeys(STAGES, 0.0)
        failures: list[dict[str, Any]] = []
        not_ct = 0
        for ref in progress_bar(pending, unit="scan", desc="classical", enabled=progress):
            try:
                for stage, sec in _detect_scan(ref, out_dir, params, key, provenance).items():
                    totals[stage] += sec
            except Exception as exc:  # a failing scan is recorded; the batch goes on
                failures.append(_failure(ref, exc))
                not_ct += isinstance(exc, ModalityError)
        n_done = len(pending) - len(failures)
        if refs and not_ct == len(refs):
            raise ModalityError(f"{input_dir} holds no CT scan: {failures[0]['reason']}"
                                f"{f' (and {not_ct - 1} more)' if not_ct > 1 else ''}; give a folder of chest CTs")
        failures += [{"seriesuid": Path(s.path).name, "path": str(s.path), "reason": s.reason, "stage": "discovery"}
                     for s in skipped if s.failed]
        wall = time.perf_counter() - t_start
        timings = {**totals, "wall_s": wall, "scans_per_s": n_done / wall if wall > 0 and n_done else 0.0}
        merged = pio.merge_outputs(out_dir, [r.scan_id for r in refs], extra_failures=failures,
                                   run_info={**provenance, "timings": timings})
        return {"n_scans": len(refs), "n_done": n_done, "n_skipped": len(refs) - len(pending),
                "n_failed": merged["n_failed"], "failures": merged["failures"], "outputs": merged["outputs"],
                "timings": timings, "method": METHOD, "run_key": key}
