"""Annotation tables: LUNA16-style CSV, MONAI detection datalist JSON, instance-label masks.

CSV columns (DESIGN.md): ``seriesuid,coordX,coordY,coordZ,diameter_mm[,malignancy][,lesion_id][,site]``
plus any extra columns (e.g. ``bayes_malignancy_prob``), kept in :attr:`Lesion.extra`.
Coordinates are **LPS world mm**; LUNA16's ``annotations.csv`` is a valid subset. Rows are
numbered from 1 for the first data row (the header is line 1 of the file, so row ``n`` is on
line ``n + 1``).

Every validation error is an :class:`~medmtl.errors.AnnotationError` naming the file, row,
column, value and what was expected.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import AnnotationError
from medmtl.io import coords
from medmtl.io.discover import scan_id_from_filename
from medmtl.io.manifest import resolve_under
from medmtl.io.types import Lesion, Scan
from medmtl.io.writers import atomic_write_csv

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
OPTIONAL_COLUMNS: tuple[str, ...] = ("malignancy", "lesion_id", "site")
_COORD_COLUMNS = ("coordX", "coordY", "coordZ")


def _number(value: str, where: str, column: str, expected: str) -> float:
    try:
        x = float(value)
    except ValueError:
        x = math.nan
        ok = False
    else:
        ok = math.isfinite(x)
    if not ok:
        raise AnnotationError(f"{where}, column {column}: {value!r} is not a number; expected {expected}")
    return x


def _extra_value(value: str) -> Any:
    if value == "":
        return None
    try:
        return float(value)
    except ValueError:
        return value


def _lesion_from_row(row: Mapping[str, str], where: str, extra_columns: Sequence[str]) -> Lesion:
    uid = row["seriesuid"].strip()
    if not uid:
        raise AnnotationError(f"{where}, column seriesuid: value is empty; expected the scan id (file name or SeriesInstanceUID)")
    center = tuple(_number(row[c].strip(), where, c, "a coordinate in mm (LPS world)") for c in _COORD_COLUMNS)
    diameter = _number(row["diameter_mm"].strip(), where, "diameter_mm", "a diameter in mm > 0")
    if diameter <= 0:
        raise AnnotationError(f"{where}, column diameter_mm: {row['diameter_mm']!r} is not > 0; expected a diameter in mm > 0")
    malignancy: float | None = None
    raw_m = (row.get("malignancy") or "").strip()
    if raw_m:
        malignancy = _number(raw_m, where, "malignancy", "a label or probability in [0, 1], or empty if unknown")
        if not 0.0 <= malignancy <= 1.0:
            raise AnnotationError(
                f"{where}, column malignancy: {raw_m!r} is outside [0, 1]; expected a label or probability "
                "in [0, 1], or empty if unknown"
            )
    lesion_id = (row.get("lesion_id") or "").strip() or None
    site = (row.get("site") or "").strip() or None
    extra = {c: _extra_value((row.get(c) or "").strip()) for c in extra_columns}
    return Lesion(
        seriesuid=uid,
        center_lps=(center[0], center[1], center[2]),
        diameter_mm=diameter,
        malignancy=malignancy,
        lesion_id=lesion_id,
        site=site,
        extra=extra,
    )


def duplicate_columns(header: list[str]) -> list[str]:
    """Column names that occur more than once in a CSV header (``csv.DictReader`` would let the
    last one win silently, e.g. attributing lesions to the wrong scan)."""
    return sorted({h for h in header if h and header.count(h) > 1})


def read_annotations_csv(path: str | Path) -> list[Lesion]:
    """Read and validate a LUNA16-style annotation CSV (see the module docstring).

    Args:
        path: the CSV file.

    Returns:
        One :class:`Lesion` per row, in file order (LPS mm; ``malignancy`` ``None`` when empty).

    Raises:
        AnnotationError: unreadable file, missing column, wrong field count, bad value.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"annotation file {p} cannot be read ({exc}); expected a UTF-8 CSV file") from exc
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in (reader.fieldnames or [])]
    if not header:
        raise AnnotationError(f"{p} is empty; expected a header row with columns {','.join(REQUIRED_COLUMNS)}")
    reader.fieldnames = header
    dup = duplicate_columns(header)
    if dup:
        raise AnnotationError(f"{p} has duplicated column(s) {', '.join(dup)}; each column may appear once — "
                              "remove or rename the copies")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        sep = next((d for d in (";", "\t", "|") if len(header) == 1 and d in header[0]), None)
        hint = f" — the file looks {sep!r}-separated; save it comma-separated" if sep else ""
        raise AnnotationError(
            f"{p} is missing column(s) {', '.join(missing)}; found: {', '.join(header)}; "
            f"required: {', '.join(REQUIRED_COLUMNS)}{hint}"
        )
    extra_columns = [c for c in header if c and c not in REQUIRED_COLUMNS and c not in OPTIONAL_COLUMNS]
    lesions: list[Lesion] = []
    for n, row in enumerate(reader, start=1):
        where = f"{p.name} row {n} (line {reader.line_num})"
        if None in row:
            raise AnnotationError(f"{where}: {len(header) + len(row[None])} fields for {len(header)} columns; expected one value per column")  # type: ignore[index]
        if any(v is None for v in row.values()):
            raise AnnotationError(f"{where}: fewer fields than the {len(header)} columns; expected one value per column")
        lesions.append(_lesion_from_row(row, where, extra_columns))
    return lesions


def _datalist_box(box: Any, where: str) -> tuple[tuple[float, float, float], float]:
    if not isinstance(box, (list, tuple)) or len(box) != 6:
        raise AnnotationError(f"{where}: {box!r} is not a box; expected [cx, cy, cz, w, h, d] in world mm (cccwhd)")
    vals = []
    for name, v in zip(("cx", "cy", "cz", "w", "h", "d"), box):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise AnnotationError(f"{where}, {name}: {v!r} is not a number; expected world mm")
        vals.append(float(v))
    if min(vals[3:]) <= 0:
        raise AnnotationError(f"{where}: box size {vals[3:]} has a size <= 0; expected w, h, d > 0 mm")
    return (vals[0], vals[1], vals[2]), float(np.mean(vals[3:]))


def read_datalist(path: str | Path) -> list[Lesion]:
    """Read lesions from a MONAI detection datalist JSON.

    Format: ``{"training": [{"image": "rel/path.nii.gz", "box": [[cx, cy, cz, w, h, d], ...],
    "label": [...]}], "validation": [...]}``; every list of entries is read. Boxes are
    ``cccwhd`` in world mm. medmtl assumes the **LPS (ITK) world frame**, as MONAI's detection
    tutorials write them (ITKReader with ``affine_lps_to_ras=False``), so box centres become
    ``center_lps`` unchanged; the diameter is the mean of ``w, h, d``. The ``seriesuid`` is the
    image's file name without extension; image paths must resolve under the JSON's folder.
    ``label`` values (class indices) go to ``extra["label"]``; an optional per-box
    ``malignancy`` list gives the malignancy.

    Raises:
        AnnotationError: invalid JSON or entries. PathEscapeError: an image path escapes.
    """
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"annotation file {p} cannot be read ({exc}); expected a UTF-8 JSON file") from exc
    except json.JSONDecodeError as exc:
        raise AnnotationError(f"{p} is not valid JSON (line {exc.lineno}: {exc.msg}); expected a MONAI detection datalist") from exc
    except RecursionError:
        raise AnnotationError(f"{p} is nested too deeply to parse; expected a MONAI detection datalist") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{p}: top level is {type(data).__name__}; expected an object like {{\"training\": [...]}}")
    lesions: list[Lesion] = []
    for key, entries in data.items():
        if not isinstance(entries, list):
            continue
        for i, entry in enumerate(entries):
            where = f"{p.name} {key}[{i}]"
            if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
                raise AnnotationError(f"{where}: entry has no 'image' path; expected {{\"image\": path, \"box\": [...]}}")
            image = resolve_under(p.parent, entry["image"])
            uid = scan_id_from_filename(image)
            boxes = entry.get("box", [])
            labels = entry.get("label", [None] * len(boxes))
            malig = entry.get("malignancy", [None] * len(boxes))
            if not isinstance(boxes, list) or not isinstance(labels, list) or len(labels) != len(boxes):
                raise AnnotationError(f"{where}: 'box' and 'label' must be lists of the same length; got {boxes!r} and {labels!r}")
            if not isinstance(malig, list) or len(malig) != len(boxes):
                raise AnnotationError(f"{where}, malignancy: expected a list with one value per box; got {malig!r}")
            for b, (box, label, m) in enumerate(zip(boxes, labels, malig)):
                center, diameter = _datalist_box(box, f"{where} box {b}")
                if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float)) or not 0 <= m <= 1):
                    raise AnnotationError(f"{where} box {b}, malignancy: {m!r} is not in [0, 1]; expected a label or probability, or null")
                lesions.append(
                    Lesion(
                        seriesuid=uid,
                        center_lps=center,
                        diameter_mm=diameter,
                        malignancy=None if m is None else float(m),
                        lesion_id=str(b),
                        extra={"label": label},
                    )
                )
    return lesions


def read_annotations(path: str | Path) -> list[Lesion]:
    """Read an annotation table: CSV (``.csv``) or MONAI detection datalist (``.json``).

    Args:
        path: the table.

    Returns:
        Lesions in LPS world mm, in file order.

    Raises:
        AnnotationError: unknown suffix or invalid content.
    """
    from medmtl.io.outputs import special_file_problem

    p = Path(path)
    problem = special_file_problem(p)  # a FIFO would block the read forever
    if problem is not None:
        raise AnnotationError(f"annotation file {problem} (a .csv table or a .json datalist)")
    suffix = p.suffix.lower()
    if suffix == ".csv":
        return read_annotations_csv(p)
    if suffix == ".json":
        return read_datalist(p)
    raise AnnotationError(f"annotation file {p}: suffix '{p.suffix}' not supported; allowed: .csv, .json")


def write_annotations_csv(path: str | Path, lesions: Iterable[Lesion]) -> Path:
    """Write lesions as a LUNA16-style CSV, atomically.

    Columns: ``seriesuid, coordX, coordY, coordZ, diameter_mm, malignancy, lesion_id, site``
    (LUNA16's five first), then the ``extra`` keys in first-seen order. Empty cells for
    ``None``.

    Returns:
        ``path``.
    """
    items = list(lesions)
    extra_cols: list[str] = []
    for les in items:
        extra_cols.extend(k for k in les.extra if k not in extra_cols and k not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
    rows = [
        {
            "seriesuid": les.seriesuid,
            "coordX": les.center_lps[0],
            "coordY": les.center_lps[1],
            "coordZ": les.center_lps[2],
            "diameter_mm": les.diameter_mm,
            "malignancy": les.malignancy,
            "lesion_id": les.lesion_id,
            "site": les.site,
            **{k: les.extra.get(k) for k in extra_cols},
        }
        for les in items
    ]
    return atomic_write_csv(path, rows, [*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS, *extra_cols])


def lesions_from_label_mask(mask_path: str | Path, scan_id: str) -> list[Lesion]:
    """One lesion per instance label of a label mask (0 = background).

    Args:
        mask_path: NIfTI / MHA / NRRD label volume (integer labels).
        scan_id: the ``seriesuid`` to give the lesions.

    Returns:
        Lesions (``lesion_id`` = the label value) with centre = centre of mass in LPS mm and
        diameter = equivalent-sphere diameter ``(6 V / pi)^(1/3)`` mm of the label's volume.

    Raises:
        AnnotationError: non-integer or negative labels, or unreadable mask.
    """
    from scipy import ndimage

    from medmtl.errors import ScanReadError
    from medmtl.io.discover import split_scan_name
    from medmtl.io.read import read_volume
    from medmtl.io.types import ScanRef

    p = Path(mask_path)
    split = split_scan_name(p.name)
    if split is None:
        raise AnnotationError(f"label mask {p}: suffix not supported; allowed: .nii, .nii.gz, .mha, .mhd, .nrrd")
    try:
        raw = read_volume(ScanRef(scan_id=scan_id, format=split[1], paths=(p,), folder=p.parent))
    except ScanReadError as exc:
        raise AnnotationError(f"label mask {p} cannot be read: {exc}") from exc
    arr = raw.array
    if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or arr.min() < 0:
        raise AnnotationError(f"label mask {p} has non-integer or negative values; expected instance labels 0 (background), 1, 2, ...")
    labels_arr = arr.astype(np.int64)
    ids = [int(v) for v in np.unique(labels_arr) if v != 0]
    if not ids:
        return []
    centers = np.asarray(ndimage.center_of_mass(np.ones_like(arr), labels_arr, ids), dtype=np.float64)
    counts = np.asarray(ndimage.sum_labels(np.ones_like(arr), labels_arr, ids), dtype=np.float64)
    voxel_mm3 = abs(float(np.linalg.det(raw.affine_ras[:3, :3])))
    centers_lps = coords.voxel_to_lps(centers, raw.affine_ras)
    diameters = (6.0 * counts * voxel_mm3 / math.pi) ** (1.0 / 3.0)
    return [
        Lesion(seriesuid=scan_id, center_lps=(float(c[0]), float(c[1]), float(c[2])), diameter_mm=float(d), lesion_id=str(i))
        for i, c, d in zip(ids, centers_lps, diameters)
    ]


def group_by_scan(lesions: Iterable[Lesion]) -> dict[str, list[Lesion]]:
    """Group lesions by ``seriesuid`` (scan order of first appearance, lesion order kept)."""
    out: dict[str, list[Lesion]] = {}
    for les in lesions:
        out.setdefault(les.seriesuid, []).append(les)
    return out


def _extent_lps(affine_ras: NDArray[np.float64], shape: Sequence[int]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    corners = np.array([[a, b, c] for a in (-0.5, shape[0] - 0.5) for b in (-0.5, shape[1] - 0.5) for c in (-0.5, shape[2] - 0.5)])
    pts = coords.voxel_to_lps(corners, affine_ras)
    return pts.min(axis=0), pts.max(axis=0)


def check_lesions_inside_geometry(
    lesions: Sequence[Lesion], geometry: Mapping[str, tuple[Any, Sequence[int]]]
) -> list[str]:
    """Check lesion centres against scan geometries given as ``{scan_id: (affine_ras, (I, J, K))}``.

    See :func:`check_lesions_inside`.
    """
    warnings: list[str] = []
    unmatched: dict[str, int] = {}
    for n, les in enumerate(lesions, start=1):
        if les.seriesuid not in geometry:
            unmatched[les.seriesuid] = unmatched.get(les.seriesuid, 0) + 1
            continue
        affine, shape = geometry[les.seriesuid]
        aff = np.asarray(affine.detach().cpu() if hasattr(affine, "detach") else affine, dtype=np.float64)
        ijk = coords.lps_to_voxel(les.center_lps, aff)
        if not bool(coords.inside_volume(ijk, shape)[0]):
            lo, hi = _extent_lps(aff, shape)
            ident = f" (lesion_id {les.lesion_id})" if les.lesion_id is not None else ""
            x, y, z = les.center_lps
            raise AnnotationError(
                f"lesion {n}{ident} of scan {les.seriesuid} at LPS ({x:.2f}, {y:.2f}, {z:.2f}) mm lies outside "
                f"the scan (LPS extent x {lo[0]:.1f}..{hi[0]:.1f}, y {lo[1]:.1f}..{hi[1]:.1f}, z {lo[2]:.1f}..{hi[2]:.1f} mm); "
                "expected a centre inside the scan in LPS world mm: check the coordinates' sign convention and the seriesuid"
            )
    for uid, count in unmatched.items():
        msg = f"{count} lesion(s) refer to seriesuid {uid}, which matches no scan"
        log.warning("%s", msg)
        warnings.append(msg)
    return warnings


def check_lesions_inside(lesions: Sequence[Lesion], scans: Sequence[Scan]) -> list[str]:
    """Check that every lesion's centre lies inside its scan's physical extent.

    The centre (LPS mm) is converted to voxel indices with :func:`coords.lps_to_voxel` and
    tested with :func:`coords.inside_volume` (half-voxel margin). Lesions whose ``seriesuid``
    matches no scan are not an error: they are returned as warnings (and logged).

    Args:
        lesions: lesions in table order (the error names the 1-based position).
        scans: loaded scans.

    Returns:
        Warnings for lesions of unknown scans.

    Raises:
        AnnotationError: naming the first lesion (position, lesion_id, seriesuid, LPS centre)
            outside its scan, with the scan's LPS extent.
    """
    geometry = {s.scan_id: (s.image.affine, tuple(s.image.shape[-3:])) for s in scans}
    return check_lesions_inside_geometry(lesions, geometry)
