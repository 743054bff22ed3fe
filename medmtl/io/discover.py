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
from dataclasses import dataclass, field
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


def _unreadable(path: Path) -> str | None:
    """Why ``path`` must not be opened (not a regular file, or permission denied), else ``None``."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return f"{path} cannot be examined ({exc.strerror}); skipped"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file (a FIFO, socket or device); skipped"
    if not os.access(path, os.R_OK):
        return f"{path}: permission denied (this user may not read it); fix its permissions or remove it"
    return None


def is_dicom_file(path: Path) -> bool:
    """Whether a file starts with the DICOM preamble (128 bytes then ``DICM``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


#: Tags that group DICOM files without a SeriesInstanceUID: orientation, pixel spacing, size.
GEOMETRY_TAGS = ("0020|0037", "0028|0030", "0028|0010", "0028|0011")


def geometry_series_id(folder: Path, header: dict[str, str]) -> str:
    """A stable scan id for DICOM files without a SeriesInstanceUID: the folder name and a hash of
    the geometry they share (ImageOrientationPatient, PixelSpacing, Rows, Columns)."""
    import hashlib

    key = "|".join(header.get(t, "") for t in GEOMETRY_TAGS)
    return f"{folder.name}-nouid-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


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


@dataclass
class _DicomFiles:
    """DICOM files met during the walk, grouped per ``(folder, SeriesInstanceUID)``.

    Attributes:
        groups: the files of each series.
        types: the upper-cased ImageType values seen in each series.
        broken: per folder, ``(path, reason)`` of the files whose header could not be read.
        no_uid: the groups made by geometry for files without a SeriesInstanceUID.
    """

    groups: dict[tuple[Path, str], list[Path]] = field(default_factory=lambda: defaultdict(list))
    types: dict[tuple[Path, str], set[str]] = field(default_factory=lambda: defaultdict(set))
    broken: dict[Path, list[tuple[Path, str]]] = field(default_factory=lambda: defaultdict(list))
    no_uid: set[tuple[Path, str]] = field(default_factory=set)


def _walk(root: Path) -> tuple[Path, list[tuple[Path, list[str]]]]:
    """``(base, [(folder, sorted file names), ...])`` to look at under ``root`` (folder or file).

    Raises:
        ScanReadError: ``root`` does not exist.
    """
    if root.is_file():
        return root.parent, [(root.parent, [root.name])]
    if not root.is_dir():
        raise ScanReadError(f"scan folder {root} does not exist; give an existing folder of scans")
    walk: list[tuple[Path, list[str]]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        walk.append((Path(dirpath), sorted(filenames)))
    return root, walk


def _add_dicom_file(path: Path, folder: Path, dicom: _DicomFiles, skipped: list[Skipped]) -> None:
    """Read one DICOM file's header and file it under its series (or as broken / skipped)."""
    try:
        header = read_dicom_header(path, (TAG_SERIES_UID, TAG_IMAGE_TYPE, TAG_MODALITY, *GEOMETRY_TAGS))
    except ScanReadError as exc:
        dicom.broken[folder].append((path, str(exc)))
        return
    uid = header.get(TAG_SERIES_UID, "")
    if not uid:  # de-identified data: group by geometry, as GDCM does
        uid = geometry_series_id(folder, header)
        dicom.no_uid.add((folder, uid))
    dicom.groups[(folder, uid)].append(path)
    dicom.types[(folder, uid)].add(header.get(TAG_IMAGE_TYPE, "").upper())


def _add_file(
    path: Path, base: Path, refs: list[ScanRef], skipped: list[Skipped], dicom: _DicomFiles
) -> None:
    """Sort one file into a scan file ref, a skipped label file, a DICOM file or nothing.

    Special files (FIFOs, sockets, devices: ``open()`` on a FIFO blocks forever) and files
    this user may not read are skipped with a note instead of being opened.
    """
    note = _unreadable(path)
    if note is not None:
        if split_scan_name(path.name) is not None or path.suffix.lower() in (".dcm", ".ima", ""):
            skipped.append(Skipped(path, note, failed=True))
        return
    split = split_scan_name(path.name)
    if split is not None:
        stem, fmt = split
        label_reason = _is_label_file(path.relative_to(base).parts, stem)
        if label_reason is not None:
            skipped.append(Skipped(path, label_reason))
        else:
            refs.append(ScanRef(scan_id=stem, format=fmt, paths=(path,), folder=path.parent))
    elif is_dicom_file(path):
        _add_dicom_file(path, path.parent, dicom, skipped)
    else:
        log.debug("ignoring non-image file %s", path)


def _dicom_series_refs(dicom: _DicomFiles, refs: list[ScanRef], skipped: list[Skipped]) -> None:
    """Turn the grouped DICOM files into series refs; skip localizers, short or broken series."""
    series_per_folder: dict[Path, int] = defaultdict(int)
    for folder, _uid in dicom.groups:
        series_per_folder[folder] += 1
    for folder, items in dicom.broken.items():
        if series_per_folder[folder] != 1:  # cannot tell which series it belonged to
            skipped.extend(Skipped(path, reason, failed=True) for path, reason in items)
    for (folder, uid), files in dicom.groups.items():
        types = dicom.types[(folder, uid)]
        if series_per_folder[folder] == 1 and dicom.broken.get(folder):
            # a missing slice would silently shorten the volume: refuse the whole series
            _bad_path, reason = dicom.broken[folder][0]
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
            if (folder, uid) in dicom.no_uid:
                skipped.append(Skipped(folder, f"{len(files)} DICOM files in {folder} have no SeriesInstanceUID; "
                                               f"grouped by geometry (orientation, pixel spacing, size) as {uid}"))


def _unique_ids(refs: list[ScanRef], skipped: list[Skipped]) -> list[ScanRef]:
    """The refs with the first of each scan id; later duplicates are recorded as failed."""
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
    return unique


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
    dicom = _DicomFiles()
    base, walk = _walk(root)
    for folder, filenames in walk:
        for name in filenames:
            if not name.startswith("."):
                _add_file(folder / name, base, refs, skipped, dicom)
    _dicom_series_refs(dicom, refs, skipped)
    unique = _unique_ids(refs, skipped)
    if not unique:
        detail = f" ({len(skipped)} skipped; first: {skipped[0].path.name}: {skipped[0].reason})" if skipped else ""
        where = f"{root} is not a scan file" if root.is_file() else f"no scans found in {root}"
        raise ScanReadError(f"{where}{detail}; expected .nii/.nii.gz/.mha/.mhd/.nrrd files or DICOM series")
    return unique, skipped
