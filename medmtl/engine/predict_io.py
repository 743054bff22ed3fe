"""Files of a prediction run: per-scan records (the resume unit), merged tables, NIfTI maps.

Layout of ``out_dir``::

    scans/<id>.json          one record per finished scan (written last, atomically)
    scans/<id>.failed.json   one record per failed scan (removed when the scan later succeeds)
    maps/<id>_{heatmap,diameter,malignancy}.nii.gz   optional, in the input's exact geometry
    previews/<id>_lesion<k>.png                       optional
    predictions.csv / predictions.json / failures.json   merged by :func:`merge_outputs`

A scan is *complete* when its record exists with ``status == "complete"``, the same weights
SHA-256, the same adaptation state (:func:`resume_key`: the card's adaptation and
harmonisation records and the ``--adapt`` mode) and every output file it lists; a rerun skips it.

Every record also carries the call's :func:`resume_stamp` (a hash of the card file's bytes and
the options that fix the resume key), so a rerun can learn its weights hash and resume key from
an earlier record (:func:`stamped_provenance`) and check completeness without loading the model.
This module imports neither torch nor MONAI at import time (torch only inside :func:`world_maps`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmtl.io import coords
from medmtl.io.outputs import check_outputs, record_outputs
from medmtl.io.types import Detection
from medmtl.io.writers import atomic_write_csv, atomic_write_json, save_nifti

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from medmtl.engine.card import ModelCard
    from medmtl.engine.decode import DecodeSettings

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
PREDICTION_COLUMNS = (
    "seriesuid", "coordX", "coordY", "coordZ", "probability", "diameter_mm", "malignancy_prob",
)
#: Map file suffixes and what each holds (after conversion from the network's outputs).
MAP_FILES = {"heatmap": "detection probability", "diameter": "diameter (mm)", "malignancy": "malignancy probability"}


def safe_name(scan_id: str) -> str:
    """A file-name-safe, collision-free version of a scan id.

    Anything but ``[A-Za-z0-9._-]`` becomes ``_``, and then 8 hex digits of the id's SHA-256 are
    appended, so ``x y`` and ``x_y`` never share an output name; safe ids are kept as they are.
    """
    import hashlib

    name = re.sub(r"[^A-Za-z0-9._-]", "_", scan_id)
    if name == scan_id and name not in ("", ".", ".."):
        return name
    return f"{name}-{hashlib.sha256(scan_id.encode('utf-8')).hexdigest()[:8]}"


#: Lock file of an output folder (hidden), held while one process writes into it.
LOCK_FILE = ".medmtl.lock"
#: What a prediction run writes into its output folder (recorded before writing: medmtl.io.outputs).
OUTPUT_NAMES = ("predictions.csv", "predictions.json", "failures.json", "scans/", "maps/", "previews/")


@contextlib.contextmanager
def output_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out_dir`` so two predictions never write into one folder at once.

    Stale temporary files of a killed earlier run (``.<name>.<random>.tmp…``) are removed once
    the lock is held: no other process can be writing them.

    Raises:
        ConfigError: ``out_dir`` is a file or cannot be written, or another process holds the lock.
    """
    import fcntl

    from medmtl.errors import ConfigError

    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"output '{out_dir}' is a file, not a folder; pass a folder path to -o")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fh = open(out_dir / LOCK_FILE, "a+", encoding="utf-8")  # noqa: SIM115 (held for the whole block)
    except OSError as exc:
        raise ConfigError(f"output folder '{out_dir}' cannot be written ({exc.strerror}); choose a writable -o") from None
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"another medmtl process is writing into '{out_dir}' (it holds {LOCK_FILE}); wait "
                              "for it to finish or choose another -o") from None
        record_outputs(out_dir, OUTPUT_NAMES)  # before any output is written (checked by check_output_folder)
        for folder in (out_dir, out_dir / "scans", out_dir / "maps", out_dir / "previews"):
            for stale in folder.glob(".*.tmp*") if folder.is_dir() else ():
                if stale.is_file():
                    stale.unlink()
        yield
    finally:
        fh.close()


def record_path(out_dir: Path, scan_id: str) -> Path:
    """``out_dir/scans/<id>.json``."""
    return out_dir / "scans" / f"{safe_name(scan_id)}.json"


def failure_path(out_dir: Path, scan_id: str) -> Path:
    """``out_dir/scans/<id>.failed.json``."""
    return out_dir / "scans" / f"{safe_name(scan_id)}.failed.json"


def detection_to_dict(d: Detection) -> dict[str, Any]:
    """A detection as a JSON object (LPS mm)."""
    return {
        "coordX": d.center_lps[0],
        "coordY": d.center_lps[1],
        "coordZ": d.center_lps[2],
        "probability": d.probability,
        "diameter_mm": d.diameter_mm,
        "malignancy_prob": d.malignancy_prob,
    }


def load_record(path: Path) -> dict[str, Any] | None:
    """Read a per-scan record; ``None`` when missing or unreadable (it is then redone)."""
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        log.warning("ignoring unreadable record %s (%s); the scan is predicted again", path, exc)
        return None
    return rec if isinstance(rec, dict) else None


def check_output_folder(input_dir: Path, out_dir: Path) -> None:
    """Refuse an output folder that is the input folder or lies inside it, or one that holds a
    file medmtl would replace but did not write (see :mod:`medmtl.io.outputs`).

    Writing there would put medmtl's tables beside (or over) the user's own files, and a rerun
    would discover its own NIfTI maps as scans.

    Raises:
        ConfigError: ``out_dir`` equals ``input_dir`` or is below it, or holds a foreign
            ``predictions.csv`` (or another :data:`OUTPUT_NAMES` entry).
    """
    from medmtl.errors import ConfigError

    inp, out = Path(input_dir).resolve(), Path(out_dir).resolve()
    if out == inp or inp in out.parents:
        raise ConfigError(f"output folder '{out_dir}' is {'the input folder' if out == inp else 'inside the input folder'} "
                          f"'{input_dir}'; a rerun would read its own outputs as scans — choose -o outside '{input_dir}'")
    check_outputs(Path(out_dir), OUTPUT_NAMES)


def resume_key(card: ModelCard, adapt: str, decode: DecodeSettings | None = None,
               window: Mapping[str, Any] | None = None) -> str:
    """Hash of what, besides the weights, changes a scan's predictions: the card's
    ``adaptation`` and ``harmonisation`` records, the ``--adapt`` mode, decode settings that
    differ from the card's (``--threshold``) and the sliding-window settings that change which
    windows are averaged (``window``: ``--overlap`` and ``--tta``) (SHA-256, 16 hex).

    Device, ``--amp`` and ``--sw-batch-size`` change only the float rounding, not the lesions,
    and are left out. A rerun reuses a scan's record only when this key matches too (see
    :func:`is_complete`).
    """
    from medmtl.io.hashing import sha256_bytes

    state: dict[str, Any] = {"weights_sha256": card.weights_sha256,
                             "adaptation": [a.to_dict() for a in card.adaptation],
                             "harmonisation": card.harmonisation.to_dict() if card.harmonisation is not None else None,
                             "adapt": adapt}
    if decode is not None and decode != card.decode:  # e.g. --threshold: other lesions
        state["decode"] = decode.to_dict()
    if window is not None:  # --overlap / --tta: other windows averaged, other lesions
        state["window"] = dict(window)
    return sha256_bytes(json.dumps(state, sort_keys=True, default=str).encode())[:16]


def is_complete(out_dir: Path, scan_id: str, weights_sha256: str, *, need_maps: bool, need_previews: bool,
                resume: str | None = None) -> bool:
    """Whether a scan's outputs in ``out_dir`` are complete for these weights and options
    (and, when ``resume`` is given, for the same :func:`resume_key`)."""
    rec = load_record(record_path(out_dir, scan_id))
    if rec is None or rec.get("status") != "complete" or rec.get("format") != RECORD_FORMAT:
        return False
    if rec.get("seriesuid") != scan_id or rec.get("weights_sha256") != weights_sha256:
        return False
    if resume is not None and (rec.get("provenance") or {}).get("resume_key") != resume:
        return False
    outputs = rec.get("outputs", {})
    if need_maps and not outputs.get("maps"):
        return False
    if need_previews and outputs.get("previews") is None:
        return False
    files = list(outputs.get("maps") or []) + list(outputs.get("previews") or [])
    return all((out_dir / f).is_file() for f in files)


def resume_stamp(checkpoint: Path, adapt: str, threshold: float | None,
                 window: Mapping[str, Any] | None = None) -> str | None:
    """A cheap key of what fixes a call's :func:`resume_key` and weights hash (SHA-256, 16 hex).

    It hashes the bytes of the checkpoint's ``model_card.json`` (the card holds the weights
    hash, the adaptation and harmonisation records and the decode settings), the ``--adapt``
    mode, the ``--threshold`` override (type and value), the sliding-window settings of
    :func:`resume_key` and the medmtl version — without
    reading the card into a :class:`~medmtl.engine.card.ModelCard` (which imports torch and
    MONAI). Calls with the same stamp have the same resume key, so a record written under this
    stamp tells a rerun its weights hash and resume key (:func:`stamped_provenance`). A
    different stamp only means the rerun loads the model to find out.

    Returns:
        The stamp, or ``None`` when the card file cannot be read (loading the checkpoint then
        reports the problem).
    """
    from medmtl import __version__
    from medmtl.engine.checkpoint import CARD_FILE
    from medmtl.io.hashing import sha256_bytes, sha256_file

    try:
        card_sha256 = sha256_file(Path(checkpoint) / CARD_FILE)
    except OSError:
        return None
    state = {"card_sha256": card_sha256, "adapt": adapt, "threshold": threshold, "medmtl_version": __version__,
             "window": dict(window) if window is not None else None}
    # ``repr`` for anything JSON has no type for (a numpy float threshold stamps apart from a float)
    return sha256_bytes(json.dumps(state, sort_keys=True, default=repr).encode())[:16]


def stamped_provenance(out_dir: Path, scan_ids: Iterable[str], stamp: str) -> dict[str, Any] | None:
    """The provenance of the first complete record among ``scan_ids`` written under ``stamp``.

    Its ``weights_sha256``, ``resume_key``, ``decode`` and ``adaptation_in_card`` are those a
    call with the same :func:`resume_stamp` computes from the loaded card; ``None`` when no
    record has the stamp (records of older medmtl versions have none).
    """
    for sid in scan_ids:
        rec = load_record(record_path(out_dir, sid)) or {}
        prov = rec.get("provenance")
        if (rec.get("status") == "complete" and isinstance(prov, dict) and prov.get("resume_stamp") == stamp
                and isinstance(prov.get("resume_key"), str) and isinstance(rec.get("weights_sha256"), str)):
            return {**prov, "weights_sha256": rec["weights_sha256"]}
    return None


def weights_match(checkpoint: Path, weights_sha256: str) -> bool:
    """Whether the checkpoint's weights file exists and hashes to ``weights_sha256`` (the check
    loading it makes; a mismatch is left to the loader, which names the problem)."""
    from medmtl.engine.checkpoint import WEIGHTS_FILE
    from medmtl.io.hashing import sha256_file

    try:
        return sha256_file(Path(checkpoint) / WEIGHTS_FILE) == weights_sha256
    except OSError:
        return False


def write_record(out_dir: Path, record: Mapping[str, Any]) -> Path:
    """Write a complete per-scan record (atomically) and drop a stale failure record."""
    sid = str(record["seriesuid"])
    record_outputs(out_dir, OUTPUT_NAMES)  # sharded ranks write without the lock
    path = atomic_write_json(record_path(out_dir, sid), dict(record))
    stale = failure_path(out_dir, sid)
    if stale.exists():
        stale.unlink()
    return path


def write_failure(out_dir: Path, scan_id: str, path: str, reason: str) -> Path:
    """Record a failed scan (``scans/<id>.failed.json``)."""
    record_outputs(out_dir, OUTPUT_NAMES)
    return atomic_write_json(failure_path(out_dir, scan_id), {"seriesuid": scan_id, "path": path, "reason": reason, "stage": "predict"})


def world_maps(maps: Mapping[str, torch.Tensor], decode: DecodeSettings) -> dict[str, np.ndarray]:
    """Network maps → user maps on the preprocessed grid: probabilities and diameter in mm.

    Args:
        maps: the network's ``heatmap``, ``log_diameter`` and ``malignancy`` maps.
        decode: the card's decode settings (temperature ``T``, size calibration ``a``, ``b``).

    Returns:
        ``heatmap`` (sigmoid), ``diameter`` (``exp(a + b · log-diameter)``, mm), ``malignancy``
        (``sigmoid(logit / T)``), each ``(I, J, K)`` float32 — the values a detection there
        would carry.
    """
    import torch

    def vol(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to("cpu", torch.float32).reshape(t.shape[-3:])

    return {
        "heatmap": torch.sigmoid(vol(maps["heatmap"])).numpy(),
        "diameter": decode.diameter_map(vol(maps["log_diameter"])).numpy(),
        "malignancy": decode.malignancy_map(vol(maps["malignancy"])).numpy(),
    }


def resample_to_input(
    volume: np.ndarray, affine_src: np.ndarray, affine_dst: np.ndarray, shape_dst: Sequence[int]
) -> np.ndarray:
    """Trilinear resampling of a volume from one voxel grid onto another (same world).

    Args:
        volume: ``(I, J, K)`` on the source grid.
        affine_src: source voxel→RAS affine (the preprocessed grid).
        affine_dst: destination voxel→RAS affine (the input scan's).
        shape_dst: destination shape ``(I, J, K)``.

    Returns:
        ``(I, J, K)`` float32 on the destination grid (edge values continue outside the source).
    """
    from scipy.ndimage import affine_transform

    # destination voxel → source voxel, through world RAS (only coords converts frames)
    basis = np.vstack([np.zeros(3), np.eye(3)])
    src = coords.ras_to_voxel(coords.voxel_to_ras(basis, affine_dst), affine_src)
    offset = src[0]
    matrix = (src[1:] - offset).T  # columns: source displacement per destination unit step
    return affine_transform(
        volume.astype(np.float32), matrix, offset=offset, output_shape=tuple(int(s) for s in shape_dst[-3:]),
        order=1, mode="nearest",
    ).astype(np.float32)


def save_maps(
    out_dir: Path,
    scan_id: str,
    maps: Mapping[str, torch.Tensor],
    *,
    affine_pre: np.ndarray,
    affine_input: np.ndarray,
    shape_input: Sequence[int],
    decode: DecodeSettings,
) -> list[str]:
    """Write the three maps as NIfTI in the input scan's exact geometry (affine equal to the input's).

    Returns:
        Paths relative to ``out_dir``.
    """
    written: list[str] = []
    for name, vol in world_maps(maps, decode).items():
        arr = resample_to_input(vol, affine_pre, affine_input, shape_input)
        rel = f"maps/{safe_name(scan_id)}_{name}.nii.gz"
        save_nifti(out_dir / rel, arr, affine_input)
        written.append(rel)
    return written


def merge_outputs(
    out_dir: Path, scan_ids: Iterable[str], *, extra_failures: Sequence[Mapping[str, Any]] = (),
    run_info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge per-scan records into ``predictions.csv``, ``predictions.json`` and ``failures.json``.

    Args:
        out_dir: the run folder.
        scan_ids: the scans of the run (sorted here); each is complete, failed or missing.
        extra_failures: failures that are not scans (e.g. unreadable DICOM files found by
            discovery): ``{"seriesuid", "path", "reason"}``.
        run_info: run-level provenance stored in ``predictions.json``.

    Returns:
        ``{"n_complete", "n_failed", "n_missing", "failures", "outputs"}``.
    """
    rows: list[dict[str, Any]] = []
    scans: dict[str, Any] = {}
    failures: list[dict[str, Any]] = []
    missing: list[str] = []
    for sid in sorted(set(scan_ids)):
        rec = load_record(record_path(out_dir, sid))
        if rec is not None and rec.get("status") == "complete":
            scans[sid] = {k: rec[k] for k in ("lesions", "provenance", "timings", "geometry", "outputs") if k in rec}
            for les in rec.get("lesions", []):
                rows.append({"seriesuid": sid, **{k: les[k] for k in PREDICTION_COLUMNS[1:]}})
            continue
        fail = load_record(failure_path(out_dir, sid))
        if fail is not None:
            failures.append(fail)
        else:
            missing.append(sid)
    failures.extend(dict(f) for f in extra_failures)
    record_outputs(out_dir, OUTPUT_NAMES)
    csv_path = atomic_write_csv(out_dir / "predictions.csv", rows, PREDICTION_COLUMNS)
    json_path = atomic_write_json(
        out_dir / "predictions.json",
        {"format": RECORD_FORMAT, "run": dict(run_info or {}), "scans": scans, "missing": missing},
    )
    fail_path = atomic_write_json(out_dir / "failures.json", failures)
    return {
        "n_complete": len(scans),
        "n_failed": len(failures),
        "n_missing": len(missing),
        "failures": failures,
        "outputs": {"predictions_csv": str(csv_path), "predictions_json": str(json_path),
                    "failures_json": str(fail_path)},
    }
