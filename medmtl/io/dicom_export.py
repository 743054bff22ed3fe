"""Predicted lesions as DICOM objects a PACS reads: a Segmentation (SEG) and a TID 1500 measurement
report (Comprehensive 3D SR), both referencing the source series. Built with ``highdicom``.

**SEG.** One BINARY Segmentation per series, one segment per lesion: the **sphere of the
predicted diameter at the predicted LPS centre** (a pixel belongs to it when its centre lies
within ``diameter_mm / 2`` of the lesion centre; a lesion smaller than a voxel keeps the voxel
nearest its centre). Spheres are drawn rather than thresholded heatmaps because every
prediction folder has the table, while maps exist only with ``predict --save-maps``, and the
sphere is exactly what the table states. Segment *n* is labelled ``"Nodule n"`` (CT) or
``"Lesion n"`` (MR), coded as SNOMED CT *Morphologically abnormal structure* / *Nodule*
(27925004) in the *Lung* (39607008) for CT, *Lesion* (52988006) for MR, segment algorithm
type AUTOMATIC with the algorithm identification (family *Artificial Intelligence*, name and
version from the model card and the weights hash). Frames without any lesion are omitted
(highdicom's default); every source instance is still referenced.

**SR.** A Comprehensive 3D SR holding a TID 1500 *Imaging Measurement Report*: per lesion one
TID 1410 planar-ROI group tracked as ``"Nodule n"`` (the same tracking UID as the SEG segment)
whose image region is a SCOORD3D **POINT** at the centre (LPS mm, in the source series' frame
of reference), finding type *Nodule* (site *Lung* for CT), and three measurements: *Diameter*
(SCT 81827009, UCUM ``mm``), *Certainty of Finding* (DCM 111012, the detection probability in
[0, 1], UCUM ``1``) and *Probability of cancer* (DCM 111047, the malignancy probability in
[0, 1], UCUM ``1``). A series without lesions gets neither object (TID 1500 needs a measurement
group, a SEG a segment).

Geometry comes from each source instance's ImagePositionPatient, ImageOrientationPatient and
PixelSpacing, which are LPS world millimetres already (no frame conversion is made here).
The patient and study attributes are copied from the source by highdicom; nothing else about
the patient is added. UIDs are derived from the series, the lesions and the model
(:func:`pydicom.uid.generate_uid` with entropy sources), so the same predictions give the same
objects, and the SEG and SR of one series share their tracking UIDs.

``highdicom`` and ``pydicom`` are imported inside the functions (``pip install medmtl[dicom]``).
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import ExportError
from medmtl.io.types import Detection

if TYPE_CHECKING:  # pragma: no cover
    from pydicom import Dataset

#: SeriesNumber of the written objects (SEG, SR): far from a scanner's own numbers.
SERIES_NUMBER = {"seg": 901, "sr": 902}
_INSTALL_HINT = "install medmtl[dicom] (pip install 'medmtl[dicom]', which brings highdicom)"


@dataclass(frozen=True)
class Algorithm:
    """Who made the predictions, as written into the SEG and SR.

    Attributes:
        name: algorithm name (AlgorithmName, ≤ 64 characters), e.g. ``"medmtl efficientnet-lite0 acs"``.
        version: algorithm version (≤ 64 characters): the medmtl version and the weights hash.
        weights_sha256: the checkpoint's weights hash (the DeviceSerialNumber is its first 16 hex digits).
        software_version: the medmtl version.
    """

    name: str
    version: str
    weights_sha256: str
    software_version: str


def require_highdicom() -> Any:
    """Import and return ``highdicom``, or raise one line saying how to install it."""
    try:
        import highdicom
    except ImportError:
        raise ExportError(f"DICOM SEG/SR export needs the highdicom package, which is not installed; "
                          f"{_INSTALL_HINT}") from None
    return highdicom


def _geometry(ds: Dataset, path: Path) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """``(origin (3,), [row_dir, col_dir, normal] (3, 3), (row spacing, column spacing))`` of one instance."""
    try:
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        spacing = np.asarray([float(v) for v in ds.PixelSpacing], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        raise ExportError(f"DICOM file {path} lacks a readable ImagePositionPatient, ImageOrientationPatient or "
                          "PixelSpacing; a SEG/SR needs the source geometry — re-export the series") from None
    if origin.shape != (3,) or iop.shape != (6,) or spacing.shape != (2,) or not np.all(spacing > 0):
        raise ExportError(f"DICOM file {path} has malformed geometry tags (ImagePositionPatient {origin.tolist()}, "
                          f"PixelSpacing {spacing.tolist()}); re-export the series")
    row, col = iop[:3], iop[3:]
    return origin, np.stack([row, col, np.cross(row, col)]), spacing


def read_source_series(paths: Sequence[Path], series_uid: str) -> list[Dataset]:
    """Read the headers (no pixel data) of a series' instances, sorted along the slice normal.

    Args:
        paths: the series' files (as discovery lists them).
        series_uid: the scan id, which must be their SeriesInstanceUID.

    Raises:
        ExportError: a file cannot be read, belongs to another series, or lacks the UIDs and
            geometry a SEG/SR needs.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    items: list[tuple[float, Dataset]] = []
    for path in paths:
        try:
            ds = pydicom.dcmread(str(path), stop_before_pixels=True)
        except (OSError, InvalidDicomError) as exc:
            raise ExportError(f"DICOM file {path} of series {series_uid} cannot be read ({exc})") from None
        if str(getattr(ds, "SeriesInstanceUID", "")) != series_uid:
            raise ExportError(f"DICOM file {path} has SeriesInstanceUID {getattr(ds, 'SeriesInstanceUID', '')!r}, not "
                              f"the scan id {series_uid!r}; DICOM SEG/SR need the series' own UIDs (a series grouped "
                              "without a SeriesInstanceUID cannot be referenced)")
        for tag in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "FrameOfReferenceUID"):
            if not str(getattr(ds, tag, "")):
                raise ExportError(f"DICOM file {path} of series {series_uid} has no {tag}; a SEG/SR must reference it "
                                  "— re-export the series with its UIDs")
        origin, axes, _ = _geometry(ds, Path(path))
        items.append((float(origin @ axes[2]), ds))
    if not items:
        raise ExportError(f"series {series_uid} has no DICOM files to reference")
    items.sort(key=lambda t: t[0])
    return [ds for _, ds in items]


def _check_inside(datasets: Sequence[Dataset], lesion: Detection, n: int) -> None:
    """Refuse a lesion centre outside the series' volume (by more than half a voxel)."""
    first, axes, spacing = _geometry(datasets[0], Path("?"))
    last = _geometry(datasets[-1], Path("?"))[0]
    v = np.asarray(lesion.center_lps, dtype=np.float64) - first
    a, b = v @ axes[0] / spacing[1], v @ axes[1] / spacing[0]
    depth, gap = float(v @ axes[2]), float((last - first) @ axes[2])
    step = gap / max(len(datasets) - 1, 1)
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    inside = -0.5 <= a <= cols - 0.5 and -0.5 <= b <= rows - 0.5 and -0.5 * step - 1e-6 <= depth <= gap + 0.5 * step + 1e-6
    if not inside:
        raise ExportError(f"lesion {n} of series {lesion.seriesuid} at LPS {list(lesion.center_lps)} mm lies outside "
                          "the series' volume; are the predictions from this series? (check --scans)")


def sphere_masks(datasets: Sequence[Dataset], lesions: Sequence[Detection]) -> NDArray[np.bool_]:
    """Binary masks of the lesions' spheres on the source frames.

    Args:
        datasets: the source instances (one frame each), in the order the SEG references them.
        lesions: detections with a centre (LPS mm) and ``diameter_mm``.

    Returns:
        ``(frames, rows, columns, lesions)`` bool; lesion *n*'s sphere in ``[..., n]``, never empty.

    Raises:
        ExportError: a lesion without a finite, positive diameter or outside the volume.
    """
    rows, cols = int(datasets[0].Rows), int(datasets[0].Columns)
    masks = np.zeros((len(datasets), rows, cols, len(lesions)), dtype=bool)
    geometry = [_geometry(ds, Path("?")) for ds in datasets]
    r_idx, c_idx = np.arange(rows, dtype=np.float64)[:, None], np.arange(cols, dtype=np.float64)[None, :]
    for n, lesion in enumerate(lesions):
        if not (math.isfinite(lesion.diameter_mm) and lesion.diameter_mm > 0):
            raise ExportError(f"lesion {n + 1} of series {lesion.seriesuid} has no diameter_mm "
                              f"({lesion.diameter_mm}); a SEG draws spheres of the predicted diameter")
        _check_inside(datasets, lesion, n + 1)
        centre, radius = np.asarray(lesion.center_lps, dtype=np.float64), lesion.diameter_mm / 2.0
        nearest: tuple[float, int, int, int] = (math.inf, 0, 0, 0)
        for f, (origin, axes, spacing) in enumerate(geometry):
            v = centre - origin
            a, b, dz = float(v @ axes[0]), float(v @ axes[1]), float(v @ axes[2])
            if abs(dz) < nearest[0]:
                nearest = (abs(dz), f, int(np.clip(round(b / spacing[0]), 0, rows - 1)),
                           int(np.clip(round(a / spacing[1]), 0, cols - 1)))
            if abs(dz) <= radius:
                masks[f, :, :, n] = (c_idx * spacing[1] - a) ** 2 + (r_idx * spacing[0] - b) ** 2 <= radius**2 - dz**2
        if not masks[..., n].any():
            masks[nearest[1], nearest[2], nearest[3], n] = True
    return masks


@contextlib.contextmanager
def _source_names_as_they_are() -> Iterator[None]:
    """Silence highdicom's warning about the *source's* person-name form (e.g. ``ANONYMOUS``):
    it is copied as the source carries it, not ours to judge or change."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        yield


def _uid(*parts: object) -> str:
    """A deterministic UID from its parts (pydicom's root, SHA-512 of the parts)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=[repr(p) for p in parts]))


def _lesion_key(lesions: Sequence[Detection]) -> str:
    return repr([(d.center_lps, d.diameter_mm, d.probability, d.malignancy_prob) for d in lesions])


def tracking_uids(series_uid: str, lesions: Sequence[Detection], algorithm: Algorithm) -> list[str]:
    """One tracking UID per lesion, the same in the SEG and the SR of the same predictions."""
    key = _lesion_key(lesions)
    return [_uid("medmtl-lesion", series_uid, algorithm.weights_sha256, key, n) for n in range(len(lesions))]


def _is_ct(datasets: Sequence[Dataset]) -> bool:
    return str(getattr(datasets[0], "Modality", "")).upper() == "CT"


def lesion_label(n: int, ct: bool) -> str:
    """``"Nodule n"`` (CT) or ``"Lesion n"`` (MR), ``n`` from 1."""
    return f"{'Nodule' if ct else 'Lesion'} {n}"


def build_seg(datasets: Sequence[Dataset], lesions: Sequence[Detection], algorithm: Algorithm) -> Dataset:
    """The DICOM Segmentation of ``lesions`` on the source series ``datasets`` (see the module docstring).

    Raises:
        ExportError: highdicom is missing, no lesion, or a lesion without diameter / outside the volume.
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    series_uid = str(datasets[0].SeriesInstanceUID)
    if not lesions:
        raise ExportError(f"series {series_uid} has no predicted lesion; a DICOM SEG needs at least one segment")
    ct = _is_ct(datasets)
    masks = sphere_masks(datasets, lesions)
    algo = hd.AlgorithmIdentificationSequence(name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence,
                                              version=algorithm.version[:64])
    uids = tracking_uids(series_uid, lesions, algorithm)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=n + 1, segment_label=lesion_label(n + 1, ct),
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Nodule if ct else codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algo,
            tracking_uid=uids[n], tracking_id=lesion_label(n + 1, ct),
            anatomic_regions=[codes.SCT.Lung] if ct else None)
        for n in range(len(lesions))
    ]
    key = (series_uid, algorithm.weights_sha256, _lesion_key(lesions))
    with _source_names_as_they_are():
        return _segmentation(hd, datasets, masks, descriptions, key, algorithm, len(lesions))


def _segmentation(hd: Any, datasets: Sequence[Dataset], masks: NDArray[np.bool_], descriptions: list[Any],
                  key: tuple[str, str, str], algorithm: Algorithm, n_lesions: int) -> Dataset:
    return hd.seg.Segmentation(
        source_images=list(datasets), pixel_array=masks.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=_uid("medmtl-seg-series", *key), series_number=SERIES_NUMBER["seg"],
        sop_instance_uid=_uid("medmtl-seg", *key), instance_number=1, manufacturer="medmtl",
        manufacturer_model_name=algorithm.name[:64], software_versions=algorithm.software_version,
        device_serial_number=algorithm.weights_sha256[:16] or "unknown",
        content_label="LESIONS", content_description=f"medmtl predicted lesions ({n_lesions})",
        series_description="medmtl lesion segmentation",
    )


def _lesion_group(hd: Any, lesion: Detection, n: int, uid: str, frame_of_reference: str, ct: bool,
                  algorithm: Algorithm) -> Any:
    """One TID 1410 measurement group: the centre as a 3D point, diameter and probabilities."""
    from pydicom.sr.codedict import codes

    unit = codes.UCUM.NoUnits
    measurements = []
    if math.isfinite(lesion.diameter_mm):
        measurements.append(hd.sr.Measurement(name=codes.SCT.Diameter, value=float(lesion.diameter_mm),
                                              unit=codes.UCUM.Millimeter))
    measurements.append(hd.sr.Measurement(name=codes.DCM.CertaintyOfFinding, value=float(lesion.probability), unit=unit))
    if math.isfinite(lesion.malignancy_prob):
        measurements.append(hd.sr.Measurement(name=codes.DCM.ProbabilityOfCancer,
                                              value=float(lesion.malignancy_prob), unit=unit))
    point = hd.sr.ImageRegion3D(graphic_type=hd.sr.GraphicTypeValues3D.POINT,
                                graphic_data=np.asarray([lesion.center_lps], dtype=np.float64),
                                frame_of_reference_uid=frame_of_reference)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=uid, identifier=lesion_label(n, ct)),
        referenced_region=point, finding_type=codes.SCT.Nodule if ct else codes.SCT.Lesion,
        algorithm_id=hd.sr.AlgorithmIdentification(name=algorithm.name[:64], version=algorithm.version[:64]),
        finding_sites=[hd.sr.FindingSite(codes.SCT.Lung)] if ct else None, measurements=measurements,
    )


def build_sr(datasets: Sequence[Dataset], lesions: Sequence[Detection], algorithm: Algorithm) -> Dataset:
    """The Comprehensive 3D SR (TID 1500) of ``lesions`` on the source series (see the module docstring).

    Raises:
        ExportError: highdicom is missing, or no lesion (TID 1500 needs at least one measurement group).
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    series_uid = str(datasets[0].SeriesInstanceUID)
    if not lesions:
        raise ExportError(f"series {series_uid} has no predicted lesion; a TID 1500 report needs at least one")
    frame_of_reference = str(datasets[0].FrameOfReferenceUID)
    ct = _is_ct(datasets)
    key = (series_uid, algorithm.weights_sha256, _lesion_key(lesions))
    uids = tracking_uids(series_uid, lesions, algorithm)
    groups = [_lesion_group(hd, d, n + 1, uids[n], frame_of_reference, ct, algorithm) for n, d in enumerate(lesions)]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=_uid("medmtl-device", algorithm.weights_sha256), name=algorithm.name[:64], manufacturer_name="medmtl",
            model_name=algorithm.version[:64], serial_number=algorithm.weights_sha256[:16] or None))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion if ct else codes.LN.MRIUnspecifiedBodyRegion,
        imaging_measurements=groups,
    )
    with _source_names_as_they_are():
        return hd.sr.Comprehensive3DSR(
            evidence=list(datasets), content=report[0], series_instance_uid=_uid("medmtl-sr-series", *key),
            series_number=SERIES_NUMBER["sr"], sop_instance_uid=_uid("medmtl-sr", *key), instance_number=1,
            manufacturer="medmtl", is_complete=True, series_description="medmtl lesion measurements",
        )


def save_dataset(path: Path, ds: Dataset) -> Path:
    """Write a DICOM dataset atomically (temporary file, then rename) with its file meta header."""
    import pydicom

    from medmtl.io.writers import atomic_save

    # pydicom 3 names the "write a conformant DICOM file" switch differently from pydicom 2
    flag = {"enforce_file_format": True} if int(pydicom.__version__.split(".")[0]) >= 3 else {"write_like_original": False}
    return atomic_save(path, lambda tmp: ds.save_as(str(tmp), **flag))


__all__ = ["Algorithm", "SERIES_NUMBER", "build_seg", "build_sr", "lesion_label", "read_source_series",
           "require_highdicom", "save_dataset", "sphere_masks", "tracking_uids"]
