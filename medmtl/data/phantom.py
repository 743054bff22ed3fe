"""Phantom sets on disk: NIfTI (or DICOM) scans, instance masks and ``annotations.csv``.

:func:`write_phantom_set` writes ``n`` phantoms of one kind and site::

    out/
      <scan_id>.nii.gz               CT: int16 HU; MRI: uint16 intensity (RAS affine in the header)
      masks/<scan_id>_lesions.nii.gz int16 instance labels (n = lesion_id ``<scan_id>_L<n>``)
      annotations.csv                seriesuid,coordX,coordY,coordZ,diameter_mm,malignancy,
                                     lesion_id,site,bayes_malignancy_prob,margin,texture,
                                     calcification   (LPS mm; malignancy empty = unlabelled)
      generation.json                the parameters, per-scan seeds and the set's Bayes AUC

Scan ids are ``ct_a_0000``, ``ct_b_0003``, ``mri_a_0001``... With ``dicom=True`` each scan is
written instead as a DICOM series folder ``out/<scan_id>/`` (one file per slice, see
:mod:`medmtl.io.dicom_write`) whose SeriesInstanceUID is its scan id in ``annotations.csv``
and ``masks/``; the same scans are also written as NIfTI, named by that UID, in the
sibling folder ``<out>_nifti/`` (with the same ``annotations.csv``), so the two readers can
be compared scan by scan.

Scan ``i`` of a set is generated from the ``i``-th seed drawn from
``numpy.random.default_rng(seed)``, so a set is reproducible byte for byte.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmtl.data.phantom_ct import CT_SITES, CT_TISSUES, generate_ct
from medmtl.data.phantom_mri import MRI_TISSUES, generate_mri
from medmtl.data.render import Phantom
from medmtl.errors import ConfigError, MedmtlError
from medmtl.progress import bar

__all__ = [
    "ANNOTATION_COLUMNS", "CT_SITES", "CT_TISSUES", "MRI_TISSUES", "Phantom", "generate_ct",
    "generate_mri", "generated_shape", "make_uid", "phantom_rows", "read_generation", "validate_shape",
    "validate_site", "write_phantom_set",
]

logger = logging.getLogger(__name__)

KINDS: tuple[str, ...] = ("ct", "mri")
SITES: tuple[str, ...] = ("a", "b")
SHAPE_RANGE: tuple[int, int] = (16, 512)

#: Columns of the generated ``annotations.csv`` (a superset of the LUNA16 table).
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "malignancy", "lesion_id", "site",
    "bayes_malignancy_prob", "margin", "texture", "calcification",
)

#: Root of generated DICOM UIDs (pydicom's root for generated UIDs), followed by a hash.
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def validate_site(site: str) -> str:
    """Check a site name (``"a"`` or ``"b"``); raise :class:`ConfigError` otherwise."""
    if site not in SITES:
        raise ConfigError(f"site must be one of {', '.join(SITES)}, got {site!r}; pass --site a or --site b")
    return site


def validate_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    """Check a volume shape: three integers, each in 16..512; return it as a tuple."""
    lo, hi = SHAPE_RANGE
    vals = list(shape)
    if len(vals) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in vals):
        raise ConfigError(f"shape must be three integers (I J K), got {vals!r}; e.g. --shape 64 64 48")
    if not all(lo <= int(v) <= hi for v in vals):
        raise ConfigError(f"shape values must each be in {lo}..{hi}, got {vals!r}; e.g. --shape 64 64 48")
    return (int(vals[0]), int(vals[1]), int(vals[2]))


def make_uid(key: str) -> str:
    """A deterministic DICOM UID (≤ 64 characters) derived from a text key."""
    digits = str(int(hashlib.sha256(key.encode("utf-8")).hexdigest()[:24], 16))
    return UID_ROOT + digits


def phantom_rows(phantom: Phantom) -> list[dict[str, Any]]:
    """The ``annotations.csv`` rows of one phantom (LPS mm, 3 decimals)."""
    rows = []
    for les in phantom.lesions:
        rows.append({
            "seriesuid": les.seriesuid,
            "coordX": f"{les.center_lps[0]:.3f}",
            "coordY": f"{les.center_lps[1]:.3f}",
            "coordZ": f"{les.center_lps[2]:.3f}",
            "diameter_mm": f"{les.diameter_mm:.2f}",
            "malignancy": "" if les.malignancy is None else str(int(les.malignancy)),
            "lesion_id": les.lesion_id,
            "site": les.site,
            "bayes_malignancy_prob": f"{float(les.extra['bayes_malignancy_prob']):.6f}",
            "margin": les.extra["margin"],
            "texture": les.extra["texture"],
            "calcification": les.extra["calcification"],
        })
    return rows


def read_generation(folder: Path) -> dict[str, Any] | None:
    """The set record ``folder/generation.json`` that :func:`write_phantom_set` wrote (``kind``,
    ``site``, ``seed``, ``shape``, ``scans`` …), ``None`` when the folder holds no valid one."""
    import json

    try:
        meta = json.loads((folder / "generation.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(meta, dict) or not isinstance(meta.get("scans"), list) or not {"kind", "site", "seed"} <= set(meta):
        return None
    return meta


def generated_shape(folder: Path) -> tuple[int, int, int] | None:
    """The ``(I, J, K)`` voxels a phantom set was generated at, from its ``generation.json``;
    ``None`` for a folder not made by the generator or made at the site's default shape."""
    meta = read_generation(folder)
    shape = None if meta is None else meta.get("shape")
    if isinstance(shape, list) and len(shape) == 3 and all(isinstance(v, int) for v in shape):
        return (shape[0], shape[1], shape[2])
    return None


def _generated_ids(folder: Path) -> set[str] | None:
    """The scan ids and series folder names of the set recorded in ``folder/generation.json``
    (``None`` when it holds no generation.json written by medmtl). generation.json is the set's
    record of what medmtl wrote (see :mod:`medmtl.io.outputs`)."""
    meta = read_generation(folder)
    if meta is None:
        return None
    return {v for s in meta["scans"] if isinstance(s, dict) for v in (s.get("scan_id"), s.get("name"))
            if isinstance(v, str) and v}


def _set_names(ids: Sequence[str]) -> list[str]:
    """What a set with these scan ids (or series folder names) writes into a folder."""
    names = ["annotations.csv", "generation.json"]
    for i in ids:
        names += [f"{i}.nii.gz", f"masks/{i}_lesions.nii.gz", f"{i}/"]
    return names


def _check_target(folder: Path, overwrite: bool, ids: Sequence[str]) -> None:
    """Refuse ``folder`` unless it is new, empty, or (with ``overwrite``) holds a generated set in
    which every file this set would replace is one medmtl wrote (listed in its generation.json)."""
    from medmtl.io.outputs import check_outputs

    if folder.exists() and not folder.is_dir():
        raise MedmtlError(f"output {folder} is a file, not a folder; pass a folder path for OUT")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    old = _generated_ids(folder)
    if (folder / "annotations.csv").exists() and not overwrite:
        raise MedmtlError(
            f"output folder {folder} already holds a data set (annotations.csv); refusing to overwrite it; "
            + ("choose another folder or pass --overwrite (overwrite=True)" if old is not None else
               "it was not generated by medmtl (no generation.json), so choose another folder")
        )
    if old is None and not (folder / "annotations.csv").exists():
        raise MedmtlError(
            f"output folder {folder} is not empty and holds no generated data set (no annotations.csv); refusing to "
            "write into it so that none of its files is overwritten; choose a new or empty folder"
        )
    check_outputs(folder, _set_names(ids), option="OUT", recorded=_set_names(sorted(old)) if old is not None else ())


def _remove_stale(folder: Path, prefix: str, keep: set[str]) -> None:
    """With ``overwrite``: remove earlier generated scans of the same prefix not in ``keep`` (only
    those the folder's generation.json records: never a file medmtl did not write)."""
    ids = rf"({prefix}_\d{{4}}|{re.escape(UID_ROOT)}\d+)"
    pattern = re.compile(rf"^{ids}(\.nii\.gz|_lesions\.nii\.gz)?$")
    recorded = _generated_ids(folder) or set()
    for path in sorted([*folder.iterdir(), *((folder / "masks").iterdir() if (folder / "masks").is_dir() else [])]):
        m = pattern.match(path.name)
        if not m or m.group(1) in keep or m.group(1) not in recorded:
            continue
        logger.info("removing stale generated scan %s", path)
        if path.is_dir():
            if all(p.suffix == ".dcm" for p in path.iterdir()):
                shutil.rmtree(path)
        else:
            path.unlink()


def _check_set_args(kind: str, site: str, n: int, seed: int, shape: Sequence[int] | None) -> tuple[int, int, int] | None:
    """Validate :func:`write_phantom_set`'s settings; return the checked shape (or ``None``).

    Raises:
        ConfigError: a bad ``kind``, ``site``, ``n``, ``seed`` or ``shape``.
    """
    if kind not in KINDS:
        raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}; pass --kind ct or --kind mri")
    validate_site(site)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n (number of scans) must be an integer >= 1, got {n!r}; e.g. --n 4")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be an integer >= 0, got {seed!r}; e.g. --seed 0")
    return None if shape is None else validate_shape(shape)


def _write_nifti_scan(ph: Phantom, data: np.ndarray, scan_id: str, targets: list[tuple[Path, bool]]) -> None:
    """Write the mask (and, where ``as_nifti``, the scan) of one phantom into each target folder."""
    from medmtl.io.writers import save_nifti

    for folder, as_nifti in targets:
        if as_nifti:
            save_nifti(folder / f"{scan_id}.nii.gz", data, ph.affine_ras)
        save_nifti(folder / "masks" / f"{scan_id}_lesions.nii.gz", ph.label_mask, ph.affine_ras)


def _write_dicom_scan(
    ph: Phantom, data: np.ndarray, series_dir: Path, *, series_uid: str, study_uid: str, overwrite: bool
) -> None:
    """Write one phantom as a DICOM series folder, replacing an earlier generated one if ``overwrite``."""
    from medmtl.io.dicom_write import write_dicom_series

    if overwrite and series_dir.is_dir() and all(p.suffix == ".dcm" for p in series_dir.iterdir()):
        shutil.rmtree(series_dir)  # an earlier generated series of this scan
    write_dicom_series(
        series_dir, data, ph.affine_ras, modality=ph.modality, series_uid=series_uid,
        study_uid=study_uid, extra_tags={k: str(v) for k, v in ph.acquisition.items()},
    )


def _write_set_files(
    folders: list[Path], meta: dict[str, Any], rows: list[dict[str, Any]], *, prefix: str,
    keep: set[str], overwrite: bool,
) -> None:
    """Write ``generation.json`` and ``annotations.csv`` into each folder (after removing stale scans)."""
    from medmtl.io.writers import atomic_write_csv, atomic_write_json

    for folder in folders:
        if overwrite:
            _remove_stale(folder, prefix, keep)
        atomic_write_json(folder / "generation.json", meta)
        atomic_write_csv(folder / "annotations.csv", rows, ANNOTATION_COLUMNS)


def write_phantom_set(
    out: Path,
    *,
    kind: str,
    site: str,
    n: int,
    seed: int,
    shape: Sequence[int] | None = None,
    dicom: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Generate ``n`` phantoms and write them with masks and ``annotations.csv``.

    Args:
        out: output folder (created). A folder that already holds ``annotations.csv`` is
            refused unless ``overwrite``.
        kind: ``"ct"`` (chest, nodules) or ``"mri"`` (brain, tumours).
        site: ``"a"`` or ``"b"`` (the simulated scanner).
        n: number of scans, ≥ 1.
        seed: set seed; scan ``i`` uses the ``i``-th seed drawn from it.
        shape: ``(I, J, K)`` voxels, each 16..512; ``None`` for the site default.
        dicom: write DICOM series (scan id = SeriesInstanceUID) plus a NIfTI twin in
            ``<out>_nifti/`` (see the module docstring).
        overwrite: replace an existing generated set (stale generated scans are removed).
        progress: show a progress bar over scans.

    Returns:
        ``out``.

    Raises:
        ConfigError: a bad ``kind``, ``site``, ``n``, ``seed`` or ``shape``.
        MedmtlError: ``out`` already holds a data set and ``overwrite`` is false.
    """
    from medmtl.data.malignancy import bayes_auc

    shp = _check_set_args(kind, site, n, seed, shape)
    out = Path(out)
    twin = out.with_name(out.name + "_nifti") if dicom else None
    folders = [out] + ([twin] if twin is not None else [])
    prefix = f"{kind}_{site}"
    names = [f"{prefix}_{i:04d}" for i in range(n)]
    uids = [make_uid(f"medmtl-series:{kind}:{site}:{seed}:{i}") for i in range(n)] if dicom else []
    for folder in folders:
        _check_target(folder, overwrite, names + uids)
    scan_seeds = [int(s) for s in np.random.default_rng(seed).integers(0, 2**31 - 1, size=n)]
    ids = names
    targets = [(out, not dicom)] + ([(twin, True)] if twin is not None else [])
    rows: list[dict[str, Any]] = []
    scans: list[dict[str, Any]] = []
    for i, (name, sseed) in enumerate(bar(list(zip(ids, scan_seeds)), desc=f"{prefix} phantoms",
                                          unit="scan", enabled=progress)):
        uid = make_uid(f"medmtl-series:{kind}:{site}:{seed}:{i}") if dicom else None
        scan_id = uid if uid is not None else name
        ph = generate_ct(sseed, site, shp, scan_id=scan_id) if kind == "ct" else generate_mri(
            sseed, shp, site=site, scan_id=scan_id)
        data = ph.volume.astype(np.int16 if kind == "ct" else np.uint16)
        _write_nifti_scan(ph, data, scan_id, targets)
        if uid is not None:
            _write_dicom_scan(ph, data, out / name, series_uid=uid, overwrite=overwrite,
                              study_uid=make_uid(f"medmtl-study:{kind}:{site}:{seed}:{i}"))
        rows.extend(phantom_rows(ph))
        scans.append({"scan_id": scan_id, "name": name, "seed": sseed, "shape": list(ph.volume.shape),
                      "spacing_mm": list(ph.spacing), "n_lesions": len(ph.lesions)})
    auc = bayes_auc(rows)
    meta = {"kind": kind, "site": site, "n": n, "seed": seed, "shape": None if shp is None else list(shp),
            "dicom": dicom, "bayes_auc": None if not np.isfinite(auc) else round(auc, 6),
            "n_lesions": len(rows), "n_labelled": sum(r["malignancy"] != "" for r in rows), "scans": scans}
    _write_set_files(folders, meta, rows, prefix=prefix, keep=set(ids) | {s["scan_id"] for s in scans},
                     overwrite=overwrite)
    logger.info("wrote %d %s scans (%d lesions) to %s", n, prefix, len(rows), out)
    return out
