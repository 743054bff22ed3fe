"""Read scans (NIfTI, MHA/MHD/NRRD, DICOM series) into MONAI ``MetaTensor`` s.

Every scan becomes a :class:`~medmtl.io.types.Scan` whose image is ``(1, I, J, K)`` float32
(HU for CT) with ``affine`` mapping voxel ``(i, j, k)`` to **RAS** mm:

* NIfTI (nibabel): the file's affine is already voxel→RAS.
* MHA / MHD / NRRD (SimpleITK): LPS origin/spacing/direction converted by
  :func:`medmtl.io.coords.sitk_to_affine_ras`; the ``(k, j, i)`` array is transposed to
  ``(i, j, k)``.
* DICOM series: :mod:`medmtl.io.dicom_read` (slice sorting, spacing and tilt checks).

Exactly three spatial dimensions are required (trailing singleton dimensions are squeezed).
NaN / infinite voxels are replaced by the smallest finite value, with a warning.
"""

from __future__ import annotations

import logging
import re
import warnings
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import MedmtlError, ScanReadError
from medmtl.io.dicom_read import RawVolume, normalise_modality, read_dicom_series
from medmtl.io.discover import discover_scans
from medmtl.io.types import Scan, ScanRef, Skipped

log = logging.getLogger(__name__)

_MAX_HEURISTIC_SAMPLES = 2_000_000


def _check_3d(shape: Sequence[int], source: str) -> tuple[int, ...]:
    """Squeeze trailing singleton dimensions; require three spatial dimensions > 1."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) != 3 or min(dims) < 2:
        raise ScanReadError(
            f"{source} has shape {tuple(shape)}; medmtl needs a 3D volume (three spatial dimensions, "
            "each > 1 voxel): give a 3D scan, or split a 4D series into 3D volumes"
        )
    return tuple(dims)


#: Largest volume read (voxels): 2^30 voxels are 4 GiB as float32. A header claiming more is
#: refused before anything is allocated.
MAX_VOXELS = 2**30


def check_header(shape: Sequence[int], affine: NDArray[Any], dtype: Any, source: str) -> None:
    """Trust nothing in a header before voxels are allocated: size, geometry and voxel type.

    Raises:
        ScanReadError: more than :data:`MAX_VOXELS` voxels, a non-finite or singular affine,
            or complex / non-numeric voxels.
    """
    n = int(np.prod([int(s) for s in shape], dtype=np.float64))
    if n > MAX_VOXELS:
        dims = "×".join(str(int(s)) for s in shape)
        raise ScanReadError(f"{source} declares {dims} voxels ({n * 4 / 2**30:.1f} GiB as float32), above the "
                            f"{MAX_VOXELS * 4 / 2**30:.0f} GiB limit; the header is corrupt or the scan must be cropped")
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4) or not np.isfinite(a).all() or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise ScanReadError(f"{source} has a non-finite or singular voxel-to-world matrix (spacing 0 or NaN in "
                            "the header); the geometry is unusable: fix the header or re-export the scan")
    kind = np.dtype(dtype).kind if dtype is not None else "f"
    if kind not in "biuf":
        raise ScanReadError(f"{source} has {np.dtype(dtype)} voxels; medmtl reads real-valued (integer or float) "
                            "images: convert the scan to a real data type")


def _sample(array: NDArray[Any]) -> NDArray[Any]:
    flat = np.ravel(array, order="K")  # a view for C- and Fortran-ordered arrays (no 300 MB copy)
    step = max(1, flat.size // _MAX_HEURISTIC_SAMPLES)
    return flat[::step]


def guess_modality(array: NDArray[Any]) -> str:
    """Guess CT or MR from intensities when no file metadata says.

    Heuristic: CT intensities are Hounsfield units, so a CT volume contains air (about
    -1000 HU) and nothing far below the -1024/-2048/-3024 padding values. A volume whose
    0.5th percentile is between -3100 and -500 and whose 99.5th percentile is at most
    5000 is called ``"CT"``; everything else (MR intensities are non-negative, arbitrary
    scale) ``"MR"``.

    Args:
        array: voxel values, any shape (finite).

    Returns:
        ``"CT"`` or ``"MR"``.
    """
    lo, hi = np.percentile(_sample(array), [0.5, 99.5])
    return "CT" if -3100.0 <= lo <= -500.0 and hi <= 5000.0 else "MR"


def _clean_nonfinite(array: NDArray[np.float32], source: str) -> list[str]:
    """Replace NaN/inf voxels by the minimum finite value (in place on our own copy)."""
    bad = ~np.isfinite(array)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return []
    if n_bad == array.size:
        raise ScanReadError(f"{source} has no finite voxel (all NaN/inf); expected real intensities")
    fill = float(array[~bad].min())
    array[bad] = fill
    msg = f"{source}: {n_bad} NaN/inf voxel(s) replaced by the minimum finite value {fill:g}"
    log.warning("%s", msg)
    return [msg]


def _nifti_modality(header: Any) -> str | None:
    texts = []
    for key in ("descrip", "intent_name"):
        try:
            raw = header[key]
        except (KeyError, ValueError):
            continue
        value = raw.item() if hasattr(raw, "item") else raw
        texts.append(value.decode("latin-1") if isinstance(value, bytes) else str(value))
    for token in re.split(r"[^A-Za-z0-9]+", " ".join(texts).upper()):
        found = normalise_modality(token)
        if found is not None:
            return found
    return None


def _c_float32(data: NDArray[Any]) -> NDArray[np.float32]:
    """A C-ordered float32 copy we own of a (Fortran-ordered, possibly read-only memmap) array.

    NIfTI stores voxels in Fortran order; the MetaTensor and the preprocessing want C order (on a
    512×512×300 scan MONAI's resampling took 8.2 s on the Fortran-ordered array, 3.0 s on a C
    copy). The cast and the reorder happen in one strided copy; torch's is threaded and took
    1.5 s there against 2.8 s for numpy's cast-then-reorder (2 cores, loaded, same process).
    numpy serves the dtypes torch cannot take (non-native byte order, unsigned > 8 bit).
    """
    import torch

    out = np.empty(data.shape, dtype=np.float32)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a read-only memmap: only read here
            torch.from_numpy(out).copy_(torch.from_numpy(data))
    except (TypeError, RuntimeError, ValueError):
        out[...] = data
    return out


def read_nifti(path: Path) -> RawVolume:
    """Read a ``.nii`` / ``.nii.gz`` file (affine already voxel→RAS).

    Raises:
        ScanReadError: corrupt or truncated file, or not a 3D volume.
    """
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        img: Any = nib.load(str(path))
        _check_3d(img.shape, f"scan file {path}")
        check_header(img.shape, img.affine, img.header.get_data_dtype(), f"scan file {path}")
        proxy = img.dataobj
        scaled = float(getattr(proxy, "slope", 1.0)) != 1.0 or float(getattr(proxy, "inter", 0.0)) != 0.0
        # unscaled: the file's own dtype (int16 for CT), cast once below; scaled: nibabel scales in float32
        data = np.asarray(proxy, dtype=np.float32) if scaled else np.asarray(proxy)
    except HeaderDataError as exc:
        raise ScanReadError(f"scan file {path} has a NIfTI data type medmtl cannot read ({exc}); "
                            "convert the scan to an integer or float type") from exc
    except (ImageFileError, OSError, EOFError, ValueError, zlib.error, TypeError) as exc:
        raise ScanReadError(
            f"scan file {path} cannot be read as NIfTI (corrupt or truncated: {type(exc).__name__}); "
            "expected a complete .nii/.nii.gz file: re-export or remove it"
        ) from exc
    shape = _check_3d(data.shape, f"scan file {path}")
    array = _c_float32(data.reshape(shape))
    return RawVolume(array=array, affine_ras=np.asarray(img.affine, dtype=np.float64), modality_tag=_nifti_modality(img.header))


def _direction3(direction: Sequence[float]) -> tuple[float, ...]:
    """The 3×3 part of an ITK direction (flattened; 4D images carry 16 values)."""
    d = len(direction)
    n = int(round(d ** 0.5))
    m = np.asarray(direction, dtype=np.float64).reshape(n, n)[:3, :3]
    return tuple(float(v) for v in m.reshape(-1))


def check_mhd_data_file(path: Path) -> None:
    """Refuse a MetaImage header whose ``ElementDataFile`` lies outside the header's folder
    (``..`` or an absolute path: a scan folder must not make medmtl read files elsewhere).

    Raises:
        ScanReadError: the data file escapes the folder.
    """
    if path.suffix.lower() != ".mhd":
        return
    try:
        lines = path.read_text(encoding="latin-1", errors="replace").splitlines()[:200]
    except OSError:
        return  # SimpleITK reports the unreadable header
    for line in lines:
        key, _, value = line.partition("=")
        if key.strip() != "ElementDataFile":
            continue
        value = value.strip()
        if value.upper() in ("LOCAL", "LIST") or "%" in value:
            return
        target = (path.parent / value).resolve()
        if not target.is_relative_to(path.parent.resolve()):
            raise ScanReadError(f"scan file {path} points its ElementDataFile to '{value}', outside its folder; "
                                "allowed: a data file next to the .mhd (or in a subfolder); move the data file")
        return


def read_itk_file(path: Path) -> RawVolume:
    """Read an ``.mha`` / ``.mhd`` / ``.nrrd`` file with SimpleITK (LPS geometry → RAS affine).

    A ``Modality`` metadata key (MetaImage ``MET_MOD_CT``, NRRD ``Modality:=CT``) is used when
    present.

    Raises:
        ScanReadError: unreadable file, vector pixels, or not a 3D volume.
    """
    import SimpleITK as sitk

    from medmtl.io import coords

    check_mhd_data_file(path)
    try:
        info = sitk.ImageFileReader()
        info.SetFileName(str(path))
        info.ReadImageInformation()  # the header only: checked before any voxel is allocated
        _check_3d(info.GetSize(), f"scan file {path}")
        check_header(info.GetSize(), coords.sitk_to_affine_ras(info.GetOrigin()[:3], info.GetSpacing()[:3],
                                                               _direction3(info.GetDirection())),
                     None, f"scan file {path}")
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise ScanReadError(
            f"scan file {path} cannot be read (corrupt or truncated, or its data file is missing); "
            "expected a complete .mha/.mhd/.nrrd image: re-export or remove it"
        ) from exc
    size = img.GetSize()
    _check_3d(size, f"scan file {path}")
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise ScanReadError(
            f"scan file {path} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
            "medmtl needs a scalar (grey-level) 3D volume"
        )
    if img.GetDimension() > 3:
        img = sitk.Extract(img, [*size[:3], *([0] * (len(size) - 3))], [0] * len(size))
    array = np.ascontiguousarray(sitk.GetArrayFromImage(img).astype(np.float32).transpose(2, 1, 0))
    affine = coords.sitk_to_affine_ras(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    modality = None
    for key in img.GetMetaDataKeys():
        if key.lower() == "modality":
            modality = normalise_modality(img.GetMetaData(key))
    return RawVolume(array=array, affine_ras=affine, modality_tag=modality)


def read_volume(ref: ScanRef, *, resample_nonuniform: bool = False) -> RawVolume:
    """Read the voxels and geometry of a scan reference (no modality decision, no NaN cleaning)."""
    if ref.format == "nifti":
        return read_nifti(ref.paths[0])
    if ref.format in ("mha", "mhd", "nrrd"):
        return read_itk_file(ref.paths[0])
    if ref.format == "dicom":
        return read_dicom_series(ref, resample_nonuniform=resample_nonuniform)
    raise ScanReadError(
        f"scan {ref.scan_id}: format '{ref.format}' not supported; allowed: nifti, mha, mhd, nrrd, dicom"
    )


def read_scan(ref: ScanRef, *, resample_nonuniform: bool = False) -> Scan:
    """Read one scan into a :class:`~medmtl.io.types.Scan`.

    Modality: the file's own statement (DICOM Modality tag, MetaImage/NRRD ``Modality`` key,
    a ``CT``/``MR`` word in the NIfTI ``descrip`` or ``intent_name``), else
    :func:`guess_modality`. Acquisition tags come from DICOM only (manufacturer, kernel,
    kVp, field strength, slice thickness), never patient tags.

    Args:
        ref: from :func:`medmtl.io.discover.discover_scans`.
        resample_nonuniform: resample DICOM series with non-uniform spacing or gantry tilt
            onto a regular grid instead of raising :class:`~medmtl.errors.GeometryError`.

    Returns:
        The scan: image ``MetaTensor (1, I, J, K)`` float32 with a voxel→RAS ``affine``
        (float64), ``modality`` "CT"/"MR", acquisition tags and warnings.

    Raises:
        ScanReadError: corrupt/truncated file, not 3D, no finite voxel.
        GeometryError: refused DICOM geometry (see :mod:`medmtl.io.dicom_read`).
    """
    import torch
    from monai.data import MetaTensor

    raw = read_volume(ref, resample_nonuniform=resample_nonuniform)
    source = f"scan {ref.scan_id}"
    warnings = list(raw.warnings) + _clean_nonfinite(raw.array, source)
    modality = normalise_modality(raw.modality_tag)
    modality_source = "metadata"
    if modality is None:
        if raw.modality_tag:
            warnings.append(f"{source}: modality '{raw.modality_tag}' is not CT or MR; guessed from intensities")
        modality = guess_modality(raw.array)
        modality_source = "intensity heuristic"
    affine = torch.as_tensor(raw.affine_ras, dtype=torch.float64)
    meta = {
        "filename_or_obj": str(ref.paths[0]),
        "scan_id": ref.scan_id,
        "format": ref.format,
        "modality": modality,
        "modality_source": modality_source,
        "original_affine": affine.clone(),
        "spatial_shape": np.asarray(raw.array.shape),
        "space": "RAS",
    }
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(raw.array)[None]), affine=affine, meta=meta)
    return Scan(ref=ref, image=image, modality=modality, acquisition=dict(raw.acquisition), warnings=warnings)


def _skip_path(ref: ScanRef) -> Path:
    return ref.folder if ref.format == "dicom" else ref.paths[0]


def iter_scans(
    refs: Sequence[ScanRef], *, resample_nonuniform: bool = False, progress: bool = True
) -> Iterator[Scan | Skipped]:
    """Read scans one at a time; a scan that fails becomes a ``Skipped(failed=True)``.

    Args:
        refs: scan references.
        resample_nonuniform: see :func:`read_scan`.
        progress: a progress bar over the scans, on stderr (:func:`medmtl.progress.bar`).

    Yields:
        A :class:`Scan` or a :class:`Skipped` per reference, in order.
    """
    from medmtl.progress import bar

    for ref in bar(refs, desc="reading scans", unit="scan", enabled=progress):
        try:
            yield read_scan(ref, resample_nonuniform=resample_nonuniform)
        except MedmtlError as exc:
            log.warning("skipping %s: %s", ref.scan_id, exc)
            yield Skipped(_skip_path(ref), str(exc), failed=True)


def load_folder(
    folder: str | Path, *, resample_nonuniform: bool = False, progress: bool = True
) -> tuple[list[Scan], list[Skipped]]:
    """Discover and read every scan under a folder.

    Args:
        folder: folder of NIfTI / MHA / MHD / NRRD files and/or DICOM series.
        resample_nonuniform: see :func:`read_scan`.
        progress: show a progress bar when there are many scans.

    Returns:
        ``(scans, skipped)``; scans that failed to read are in ``skipped`` with
        ``failed=True`` and the reason — the caller decides whether that is fatal.

    Raises:
        ScanReadError: no scan found, or none could be read.
    """
    refs, skipped = discover_scans(Path(folder))
    scans: list[Scan] = []
    for item in iter_scans(refs, resample_nonuniform=resample_nonuniform, progress=progress):
        if isinstance(item, Scan):
            scans.append(item)
        else:
            skipped.append(item)
    if not scans:
        raise no_scan_read_error(Path(folder), skipped)
    return scans, skipped


def no_scan_read_error(folder: Path, skipped: Sequence[Skipped]) -> ScanReadError:
    """The error for a folder where scans were found but none could be read."""
    failed = [s for s in skipped if s.failed] or list(skipped)
    first = failed[0].reason if failed else "unknown reason"
    return ScanReadError(f"no scan in {folder} could be read ({len(failed)} failed); first: {first}")
