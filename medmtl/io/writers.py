"""Atomic writers: every output file of medmtl is written to a temporary file in the same
folder and then renamed over the target (``os.replace``), so a crash or a kill never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

_COMPOUND_SUFFIXES = (".nii.gz", ".tar.gz", ".csv.gz", ".json.gz")


def _full_suffix(path: Path) -> str:
    """The file's suffix, keeping compound ones such as ``.nii.gz`` whole."""
    name = path.name.lower()
    for suffix in _COMPOUND_SUFFIXES:
        if name.endswith(suffix):
            return path.name[-len(suffix) :]
    return path.suffix


def _temp_path(path: Path) -> Path:
    """A fresh, unused temporary path next to ``path`` that keeps its suffix (``.nii.gz``...)."""
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp" + _full_suffix(path))
    os.close(fd)
    return Path(name)


def current_umask() -> int:
    """The process umask (read without changing it for long: set, then restored at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: Path, *, folder: bool = False) -> None:
    """Give ``path`` the mode a plain ``open()`` / ``mkdir()`` would have: ``0o666`` (files) or
    ``0o777`` (folders) less the umask. ``tempfile`` creates 0600 files and 0700 folders, which
    would leave results unreadable to colleagues whatever their umask."""
    os.chmod(path, (0o777 if folder else 0o666) & ~current_umask())


def atomic_save(path: str | Path, write_fn: Callable[[Path], None]) -> Path:
    """Write a file atomically through a callback.

    ``write_fn`` receives a temporary path in the target's folder whose name ends with the
    target's suffix (e.g. ``.nii.gz``, so libraries that choose the format from the name
    work); once it returns, the temporary file is renamed to ``path``. If it raises, the
    temporary file is removed and the target is left untouched.

    Args:
        path: final file path; its parent folders are created.
        write_fn: writes the content to the path it is given.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_path(target)
    try:
        write_fn(tmp)
        honour_umask(tmp)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    return target


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (flushed and fsynced before the rename)."""

    def _write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    return atomic_save(path, _write)


def atomic_write_text(path: str | Path, text: str, *, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (no newline translation)."""
    return atomic_write_bytes(path, text.encode(encoding))


def _jsonable(obj: Any) -> Any:
    """Turn numpy scalars/arrays, paths, tuples and non-finite floats into plain JSON values."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return _jsonable(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist"):  # torch tensors, without importing torch
        return _jsonable(obj.tolist())
    return obj


def atomic_write_json(path: str | Path, obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON atomically.

    numpy scalars and arrays, tensors, paths and tuples are converted to plain JSON values;
    NaN and infinite floats become ``null`` so the file is always valid JSON.
    """
    text = json.dumps(_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    return atomic_write_text(path, text)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "" if not math.isfinite(v) else repr(v)
    if isinstance(value, np.generic):
        return str(value.item())
    return str(value)


def atomic_write_csv(
    path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]
) -> Path:
    """Write rows (mappings) as a CSV with a header, atomically.

    Args:
        path: output file.
        rows: one mapping per row; missing keys and ``None``/NaN become empty cells; floats are
            written with full precision.
        fieldnames: the column order.

    Raises:
        ValueError: a row has a key not in ``fieldnames`` (a programming error).
    """
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(v) for k, v in row.items()})
    return atomic_write_text(path, buf.getvalue())


def save_nifti(path: str | Path, array: Any, affine_ras: Any) -> Path:
    """Save a volume as NIfTI (``.nii`` / ``.nii.gz``) atomically.

    Args:
        path: output file; ``.nii.gz`` is compressed.
        array: ``(I, J, K)`` or ``(C, I, J, K)`` array or tensor indexed like a medmtl
            ``MetaTensor`` (a single channel is squeezed; several channels are stored as the
            4th NIfTI dimension, ``(I, J, K, C)``). Booleans are stored as uint8, float64 as
            float32.
        affine_ras: 4×4 voxel→RAS mm affine (e.g. the input scan's ``MetaTensor.affine``);
            written as both qform and sform (code 1, scanner).

    Returns:
        ``path``.

    Raises:
        ValueError: the array is not 3D or 4D (a programming error).
    """
    import nibabel as nib

    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    arr = np.asarray(array)
    if arr.ndim == 4:
        arr = arr[0] if arr.shape[0] == 1 else np.moveaxis(arr, 0, -1)
    if arr.ndim != 3 and arr.ndim != 4:
        raise ValueError(f"save_nifti needs an (I, J, K) or (C, I, J, K) array, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    aff = np.asarray(affine_ras.detach().cpu() if hasattr(affine_ras, "detach") else affine_ras, dtype=np.float64)
    img = nib.Nifti1Image(np.ascontiguousarray(arr), aff)
    img.set_qform(aff, code=1)
    img.set_sform(aff, code=1)
    return atomic_save(path, lambda tmp: nib.save(img, str(tmp)))
