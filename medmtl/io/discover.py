"""Find the scans under a folder tree.

* Each ``.nii``, ``.nii.gz``, ``.mha``, ``.mhd`` or ``.nrrd`` file is one scan; its id is the
  file name without the extension(s).
* Label files are skipped with a note: names ending in ``_lesions``, ``_mask`` or ``_seg``
  (before the extension), and any image under a folder named ``masks`` or ``labels``.
* DICOM files (recognised by the ``DICM`` preamble, whatever their extension) are grouped per
  folder by SeriesInstanceUID; the scan id is the SeriesInstanceUID (never a patient name or
  ID). Localizers/scouts (ImageType contains ``LOCALIZER``) and series of fewer than 3
  slices are skipped with a note.
* Other files (CSV, JSON, Markdown, PNG, ``.raw`` data of ``.mhd`` headers...) are ignored
  silently. DICOM files whose header cannot be read (truncated) are recorded as failed; when
  their folder holds a single series, that series is refused as a whole (a missing slice at
  either end would otherwise go unnoticed).

SimpleITK is imported inside the functions that need it.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path

from medmtl.errors import ScanReadError
from medmtl.io.types import ScanRef, Skipped

log = logging.getLogger(__name__)

#: Image suffixes (lower case) and the format name they map to; longest first.
SCAN_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".nii.gz", "nifti"),
    (".nii", "nifti"),
    (".mha", "mha"),
    (".mhd", "mhd"),
    (".nrrd", "nrrd"),
)
#: Name endings (before the suffix) that mark label / mask files, not scans.
LABEL_NAME_ENDINGS: tuple[str, ...] = ("_lesions", "_mask", "_seg")
#: Folder names whose images are labels, not scans.
LABEL_FOLDERS: frozenset[str] = frozenset({"masks", "labels"})
#: DICOM tags read during discovery (SimpleITK metadata keys).
TAG_SERIES_UID = "0020|000e"
TAG_IMAGE_TYPE = "0008|0008"
TAG_MODALITY = "0008|0060"
MIN_SLICES = 3


def split_scan_name(name: str) -> tuple[str, str] | None:
    """Split a file name into ``(stem, format)`` for the image suffixes medmtl reads.

    Args:
        name: a file name such as ``"case_01.nii.gz"``.

    Returns:
        ``("case_01", "nifti")``, or ``None`` if the suffix is not a scan suffix.
    """
    lower = name.lower()
    for suffix, fmt in SCAN_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)], fmt
    return None


def scan_id_from_filename(name: str | Path) -> str:
    """The scan id a file name gives: its name without the scan extension(s).

    ``"a/case_01.nii.gz"`` → ``"case_01"``; unknown suffixes drop only the last suffix.
    """
    base = Path(name).name
    split = split_scan_name(base)
    return split[0] if split is not None else Path(base).stem


def is_dicom_file(path: Path) -> bool:
    """Whether a file starts with the DICOM preamble (128 bytes then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def read_dicom_header(path: Path, keys: tuple[str, ...] = (TAG_SERIES_UID, TAG_IMAGE_TYPE, TAG_MODALITY)) -> dict[str, str]:
    """Read selected header tags of one DICOM file (no pixel data).

    Args:
        path: the DICOM file.
        keys: SimpleITK metadata keys, ``"gggg|eeee"``.

    Returns:
        ``{key: value}`` for the keys present (values stripped).

    Raises:
        ScanReadError: the header cannot be parsed.
    """
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetImageIO("GDCMImageIO")
    reader.SetFileName(str(path))
    reader.LoadPrivateTagsOff()
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise ScanReadError(
            f"DICOM file {path} cannot be read (header unreadable or truncated); "
            "expected a complete DICOM image file: re-export or remove it"
        ) from exc
    present = set(reader.GetMetaDataKeys())
    return {k: reader.GetMetaData(k).strip() for k in keys if k in present}


def _is_label_file(rel_parts: tuple[str, ...], stem: str) -> str | None:
    folders = [p for p in rel_parts[:-1] if p.lower() in LABEL_FOLDERS]
    if folders:
        return f"label file under a '{folders[-1]}' folder, not a scan"
    for ending in LABEL_NAME_ENDINGS:
        if stem.lower().endswith(ending):
            return f"label file (name ends with '{ending}'), not a scan"
    return None


def discover_scans(root: str | Path) -> tuple[list[ScanRef], list[Skipped]]:
    """Walk ``root`` recursively and list its scans.

    Args:
        root: a folder (or a single scan file).

    Returns:
        ``(refs, skipped)``: one :class:`ScanRef` per scan file or DICOM series (in path
        order), and what was skipped with a reason (``failed=True`` for unreadable files).

    Raises:
        ScanReadError: ``root`` does not exist or holds no scan at all.
    """
    root = Path(root)
    refs: list[ScanRef] = []
    skipped: list[Skipped] = []
    dicom_groups: dict[tuple[Path, str], list[Path]] = defaultdict(list)
    dicom_types: dict[tuple[Path, str], set[str]] = defaultdict(set)
    broken: dict[Path, list[tuple[Path, str]]] = defaultdict(list)

    if root.is_file():
        walk: list[tuple[str, list[str], list[str]]] = [(str(root.parent), [], [root.name])]
        base = root.parent
    elif root.is_dir():
        walk = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            walk.append((dirpath, dirnames, sorted(filenames)))
        base = root
    else:
        raise ScanReadError(f"scan folder {root} does not exist; give an existing folder of scans")

    for dirpath, _dirs, filenames in walk:
        folder = Path(dirpath)
        for name in filenames:
            if name.startswith("."):
                continue
            path = folder / name
            split = split_scan_name(name)
            if split is not None:
                stem, fmt = split
                label_reason = _is_label_file(path.relative_to(base).parts, stem)
                if label_reason is not None:
                    skipped.append(Skipped(path, label_reason))
                    continue
                refs.append(ScanRef(scan_id=stem, format=fmt, paths=(path,), folder=folder))
            elif is_dicom_file(path):
                try:
                    header = read_dicom_header(path)
                except ScanReadError as exc:
                    broken[folder].append((path, str(exc)))
                    continue
                uid = header.get(TAG_SERIES_UID, "")
                if not uid:
                    skipped.append(
                        Skipped(path, f"DICOM file {path} has no SeriesInstanceUID (0020,000E); cannot group it", failed=True)
                    )
                    continue
                dicom_groups[(folder, uid)].append(path)
                dicom_types[(folder, uid)].add(header.get(TAG_IMAGE_TYPE, "").upper())
            else:
                log.debug("ignoring non-image file %s", path)

    series_per_folder: dict[Path, int] = defaultdict(int)
    for folder, _uid in dicom_groups:
        series_per_folder[folder] += 1
    for folder, items in broken.items():
        if series_per_folder[folder] != 1:  # cannot tell which series it belonged to
            skipped.extend(Skipped(path, reason, failed=True) for path, reason in items)
    for (folder, uid), files in dicom_groups.items():
        types = dicom_types[(folder, uid)]
        if series_per_folder[folder] == 1 and broken.get(folder):
            # a missing slice would silently shorten the volume: refuse the whole series
            _bad_path, reason = broken[folder][0]
            skipped.append(Skipped(folder, f"DICOM series {uid}: {reason}", failed=True))
        elif any("LOCALIZER" in t for t in types):
            skipped.append(Skipped(folder, f"DICOM series {uid} ({len(files)} files) is a localizer/scout; skipped"))
        elif len(files) < MIN_SLICES:
            skipped.append(
                Skipped(
                    folder,
                    f"DICOM series {uid} has {len(files)} slice(s); a 3D series needs at least {MIN_SLICES} "
                    "(localizer/scout?); skipped",
                )
            )
        else:
            refs.append(ScanRef(scan_id=uid, format="dicom", paths=tuple(sorted(files)), folder=folder))

    unique: list[ScanRef] = []
    seen: dict[str, ScanRef] = {}
    for ref in refs:
        if ref.scan_id in seen:
            other = seen[ref.scan_id]
            skipped.append(
                Skipped(
                    ref.paths[0] if ref.format != "dicom" else ref.folder,
                    f"duplicate scan id '{ref.scan_id}' (also {other.paths[0]}); scan ids must be unique: rename one",
                    failed=True,
                )
            )
            continue
        seen[ref.scan_id] = ref
        unique.append(ref)

    if not unique:
        detail = f" ({len(skipped)} skipped; first: {skipped[0].path.name}: {skipped[0].reason})" if skipped else ""
        raise ScanReadError(
            f"no scans found in {root}{detail}; expected .nii/.nii.gz/.mha/.mhd/.nrrd files or DICOM series"
        )
    return unique, skipped
