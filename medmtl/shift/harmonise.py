"""Intensity harmonisation recorded in a checkpoint and applied at prediction time.

* ``histmatch``: histogram matching (Nyúl & Udupa, "On standardizing the MR image intensity
  scale", MRM 1999; here with scikit-image's ``match_histograms``) of each target scan's
  body intensities to the source cohort's reference quantile table
  (``card["reference_stats"]["quantiles"]``, the average body quantile function of the
  training scans). Voxels outside the body follow the same monotone map, extended with
  slope 1 beyond the matched range (air keeps its offset correction, not a squashed value).
* ``n4``: N4 bias-field correction for MRI (Tustison et al., "N4ITK: improved N3 bias
  correction", IEEE TMI 2010; SimpleITK's ``N4BiasFieldCorrectionImageFilter``).

The step is stored as ``card["harmonisation"]`` (``{"method", "params", ...}``) and applied
to each raw scan before the model's own preprocessing by :func:`apply_harmonisation`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import ShiftError

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.io.types import Scan

logger = logging.getLogger(__name__)

REFERENCE_SAMPLES = 20000
N4_SHRINK = 2
N4_ITERATIONS = (30, 20, 10)


def _reference_sample(quantiles: Mapping[str, Any], n: int = REFERENCE_SAMPLES) -> NDArray[np.float64]:
    """A sample whose empirical distribution is the stored quantile function."""
    levels = np.asarray(quantiles["levels"], dtype=np.float64)
    values = np.asarray(quantiles["values"], dtype=np.float64)
    u = (np.arange(n) + 0.5) / n
    return np.interp(u, levels, values)


def match_to_quantiles(arr: NDArray[np.floating[Any]], mask: NDArray[np.bool_], quantiles: Mapping[str, Any]) -> NDArray[np.float32]:
    """Histogram-match the body voxels of ``arr`` to a reference quantile table.

    Args:
        arr: ``(I, J, K)`` intensities (HU for CT).
        mask: body mask (the voxels that are matched).
        quantiles: ``{"levels": [0..1], "values": [...]}`` reference quantile function.

    Returns:
        The harmonised ``(I, J, K)`` float32 array (a new array; ``arr`` is not modified).
    """
    from skimage.exposure import match_histograms

    body = arr[mask].astype(np.float64)
    out = arr.astype(np.float64).copy()
    if body.size == 0:
        return out.astype(np.float32)
    matched = match_histograms(body, _reference_sample(quantiles))
    out[mask] = matched
    # the same monotone map for the voxels outside the body, extended with slope 1
    levels = np.asarray(quantiles["levels"], dtype=np.float64)
    src = np.quantile(body, levels)
    dst = np.asarray(quantiles["values"], dtype=np.float64)
    src, idx = np.unique(src, return_index=True)
    dst = dst[idx]
    outside = ~mask
    v = out[outside]
    mapped = np.interp(v, src, dst)
    mapped = np.where(v < src[0], v + (dst[0] - src[0]), mapped)
    mapped = np.where(v > src[-1], v + (dst[-1] - src[-1]), mapped)
    out[outside] = mapped
    return out.astype(np.float32)


def n4_correct(arr: NDArray[np.floating[Any]], mask: NDArray[np.bool_], spacing: tuple[float, float, float]) -> NDArray[np.float32]:
    """N4 bias-field correction of an MR volume (SimpleITK), on a ×2 shrunk grid.

    Args:
        arr: ``(I, J, K)`` intensities (positive).
        mask: body/head mask where the field is estimated.
        spacing: voxel spacing (mm).

    Returns:
        The corrected ``(I, J, K)`` float32 array.
    """
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.transpose(np.maximum(arr, 0).astype(np.float32), (2, 1, 0)))
    img.SetSpacing([float(s) for s in spacing])
    msk = sitk.GetImageFromArray(np.transpose(mask.astype(np.uint8), (2, 1, 0)))
    msk.CopyInformation(img)
    small = sitk.Shrink(img, [N4_SHRINK] * 3)
    small_mask = sitk.Shrink(msk, [N4_SHRINK] * 3)
    f = sitk.N4BiasFieldCorrectionImageFilter()
    f.SetMaximumNumberOfIterations(list(N4_ITERATIONS))
    f.Execute(small, small_mask)
    log_field = f.GetLogBiasFieldAsImage(img)
    corrected = img / sitk.Exp(log_field)
    return np.transpose(sitk.GetArrayFromImage(corrected), (2, 1, 0)).astype(np.float32)


def harmonisation_record(method: str, reference: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``card["harmonisation"]`` entry of a method (what predict applies)."""
    if method == "histmatch":
        if reference is None or "quantiles" not in reference:
            raise ShiftError("histmatch needs the checkpoint's reference_stats (quantile table); the card has none — "
                             "re-save the checkpoint with compute_reference_stats(), or use --method adabn.")
        return {"method": "histmatch", "params": {"quantiles": dict(reference["quantiles"]),
                                                  "modality": reference.get("modality")},
                "reference": "card.reference_stats.quantiles"}
    if method == "n4":
        return {"method": "n4", "params": {"shrink": N4_SHRINK, "iterations": list(N4_ITERATIONS)}}
    raise ShiftError(f"unknown harmonisation '{method}'; allowed: histmatch, n4")


def harmonise_array(arr: NDArray[np.floating[Any]], modality: str, spacing: tuple[float, float, float],
                    record: Mapping[str, Any]) -> NDArray[np.float32]:
    """Apply a harmonisation record to one ``(I, J, K)`` array (returns a new array)."""
    from medmtl.shift.fingerprint import body_mask

    mask = body_mask(np.asarray(arr, dtype=np.float32), modality)
    if record["method"] == "histmatch":
        return match_to_quantiles(arr, mask, record["params"]["quantiles"])
    if record["method"] == "n4":
        return n4_correct(arr, mask, spacing)
    raise ShiftError(f"model card harmonisation method '{record['method']}' is unknown; allowed: histmatch, n4")


def apply_harmonisation(scan: Scan, card: Mapping[str, Any]) -> Scan:
    """Apply ``card["harmonisation"]`` (if any) to a raw scan before preprocessing.

    Args:
        scan: the loaded scan (not modified).
        card: the model card.

    Returns:
        The scan itself when the card has no harmonisation, else a new :class:`Scan` whose
        image is harmonised (same affine and metadata).
    """
    import torch

    from medmtl.shift.fingerprint import image_array, spacing_of

    record = card.get("harmonisation")
    if not record:
        return scan
    out = harmonise_array(image_array(scan), scan.modality, spacing_of(scan.image.affine), record)
    image = scan.image.clone()
    image[0] = torch.as_tensor(out, dtype=image.dtype)
    return replace(scan, image=image)
