"""Describe the scans of a folder: geometry in LPS mm, modality, intensity percentiles.

Used by ``medmtl inspect``. Scans are read one at a time (only the row is kept), so large
folders do not fill memory.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.io import coords
from medmtl.io.types import Scan, Skipped

#: Intensity percentiles reported per scan.
PERCENTILES: tuple[float, ...] = (0.5, 50.0, 99.5)


def _pct_key(q: float) -> str:
    return f"{q:g}"


def scan_row(scan: Scan, root: Path | None = None) -> dict[str, Any]:
    """One inspect row for a loaded scan.

    Args:
        scan: the scan.
        root: folder the ``path`` is reported relative to.

    Returns:
        ``id``, ``format``, ``path``, ``shape`` (I, J, K), ``spacing_mm``, ``orientation``
        (nibabel axis code, e.g. ``"LPS"``), ``origin_lps`` (LPS mm of voxel 0,0,0),
        ``direction`` (9 row-major LPS direction cosines, as SimpleITK's ``GetDirection``),
        ``modality``, ``modality_source``, ``percentiles`` {"0.5", "50", "99.5"},
        ``acquisition``, ``warnings``.
    """
    affine = np.asarray(scan.image.affine.detach().cpu(), dtype=np.float64)
    origin, spacing, direction = coords.affine_ras_to_sitk(affine)
    arr = scan.image.detach().cpu().numpy().reshape(-1)
    step = max(1, arr.size // 4_000_000)
    values = np.percentile(arr[::step], list(PERCENTILES))
    path = scan.ref.folder if scan.ref.format == "dicom" else scan.ref.paths[0]
    if root is not None:
        try:
            path = path.relative_to(root)
        except ValueError:
            pass
    return {
        "id": scan.scan_id,
        "format": scan.ref.format,
        "path": str(path),
        "shape": [int(s) for s in scan.image.shape[-3:]],
        "spacing_mm": [float(s) for s in spacing],
        "orientation": coords.orientation_code(affine),
        "origin_lps": [float(v) for v in origin],
        "direction": [float(v) for v in direction],
        "modality": scan.modality,
        "modality_source": str(scan.image.meta.get("modality_source", "")),
        "percentiles": {_pct_key(q): float(v) for q, v in zip(PERCENTILES, values)},
        "acquisition": dict(scan.acquisition),
        "warnings": list(scan.warnings),
    }


def _skipped_row(item: Skipped, root: Path) -> dict[str, Any]:
    try:
        path = str(item.path.relative_to(root))
    except ValueError:
        path = str(item.path)
    return {"path": path, "reason": item.reason, "failed": item.failed}


def inspect_folder(
    folder: str | Path,
    *,
    resample_nonuniform: bool = False,
    annotations: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Describe every scan under a folder, and optionally validate an annotation table.

    Args:
        folder: scan folder, or one scan file.
        resample_nonuniform: resample DICOM series with non-uniform spacing or gantry tilt.
        annotations: optional CSV / datalist JSON whose lesions must lie inside their scans.
        progress: a progress bar over the scans (on stderr).

    Returns:
        ``{"folder": str, "scans": [row, ...], "skipped": [{"path", "reason", "failed"}],
        "n_failed": int}`` (rows: see :func:`scan_row`); with ``annotations`` also
        ``"annotations": {"path", "n_lesions", "n_scans", "warnings"}``.

    Raises:
        ScanReadError: no scan found, or none could be read.
        AnnotationError / PathEscapeError: the annotation table is invalid, or a lesion lies
            outside its scan.
    """
    from medmtl.io.annotations import check_lesions_inside_geometry, group_by_scan, read_annotations
    from medmtl.io.discover import discover_scans
    from medmtl.io.read import iter_scans, no_scan_read_error

    root = Path(folder)
    lesions = read_annotations(annotations) if annotations is not None else None
    refs, skipped = discover_scans(root)
    base = root if root.is_dir() else root.parent  # paths are shown relative to the folder (of a file)
    rows: list[dict[str, Any]] = []
    geometry: dict[str, tuple[Any, Sequence[int]]] = {}
    for item in iter_scans(refs, resample_nonuniform=resample_nonuniform, progress=progress):
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        rows.append(scan_row(item, base))
        geometry[item.scan_id] = (np.asarray(item.image.affine, dtype=np.float64), tuple(item.image.shape[-3:]))
    if not rows:
        raise no_scan_read_error(root, skipped)
    result: dict[str, Any] = {
        "folder": str(root),
        "scans": rows,
        "skipped": [_skipped_row(s, base) for s in skipped],
        "n_failed": sum(1 for s in skipped if s.failed),
    }
    if lesions is not None:
        warnings = check_lesions_inside_geometry(lesions, geometry)
        result["annotations"] = {
            "path": str(annotations),
            "n_lesions": len(lesions),
            "n_scans": len(group_by_scan(lesions)),
            "warnings": warnings,
        }
    return result


def format_table(result: dict[str, Any]) -> str:
    """Render :func:`inspect_folder`'s result as aligned text columns (plus skipped lines)."""
    headers = ["id", "format", "shape", "spacing_mm", "orient", "origin_lps", "direction", "modality", "p0.5", "p50", "p99.5", "warnings"]
    table: list[list[str]] = [headers]
    for r in result["scans"]:
        pct = r["percentiles"]
        table.append(
            [
                r["id"],
                r["format"],
                "x".join(str(s) for s in r["shape"]),
                "x".join(f"{s:.3g}" for s in r["spacing_mm"]),
                r["orientation"],
                "(" + ", ".join(f"{v:.2f}" for v in r["origin_lps"]) + ")",
                "[" + " ".join(f"{v:.3g}" for v in r["direction"]) + "]",
                r["modality"],
                f"{pct['0.5']:.1f}",
                f"{pct['50']:.1f}",
                f"{pct['99.5']:.1f}",
                "; ".join(r["warnings"]) or "-",
            ]
        )
    widths = [max(len(row[c]) for row in table) for c in range(len(headers) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths)) + "  " + row[-1] for row in table]
    lines.append(f"{len(result['scans'])} scan(s) read")
    if result["skipped"]:
        lines.append(f"skipped ({len(result['skipped'])}):")
        lines.extend(f"  {s['path']}: {s['reason']}" for s in result["skipped"])
    ann = result.get("annotations")
    if ann is not None:
        lines.append(
            f"annotations {ann['path']}: {ann['n_lesions']} lesion(s) in {ann['n_scans']} scan(s), all inside their scans"
        )
        lines.extend(f"  warning: {w}" for w in ann["warnings"])
    return "\n".join(lines)
