"""Dense training targets built from the annotation table, in the preprocessed voxel grid.

:func:`build_targets` holds the logic; :class:`BuildTargets` is its array transform (partial
labels, the ``pos`` sampling map) and :class:`BuildTargetsd` the thin dict wrapper that
MONAI pipelines use (``CacheDataset``: deterministic, so cached once per scan).

For each lesion (LPS world mm, :class:`~medmtl.io.types.Lesion`) the centre is mapped to a
fractional voxel index through :func:`medmtl.io.coords.lps_to_voxel` and the image affine
(voxel → RAS mm), then:

* ``heatmap`` ``(1, I, J, K)``: the maximum over lesions of an anisotropic gaussian centred at
  the fractional voxel, ``σ = radius_mm / 2`` converted per axis by the voxel spacing (floored
  at 0.75 voxel), rescaled so the voxel nearest to the centre is exactly ``1`` (CenterNet:
  Zhou, Wang & Krähenbühl 2019, "Objects as Points"; peaks are the positives of the focal
  loss).
* ``log_diameter`` ``(1, I, J, K)``: ``log(diameter_mm)`` inside an ellipsoid of radius
  ``max(radius_mm / 2, 1 voxel)`` per axis around each centre; ``size_mask`` marks it. Where
  ellipsoids overlap, the lesion with the closest (normalised) centre wins.
* ``malignancy`` ``(1, I, J, K)``: the label in the same region; ``malig_mask`` is
  ``size_mask`` restricted to lesions whose malignancy is known (partial labels are normal:
  the loss is masked there).

Lesions whose centre lies outside the volume (e.g. outside a patch) are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.transforms import MapTransform, Transform

from medmtl.errors import AnnotationError
from medmtl.io import coords
from medmtl.io.types import Lesion

__all__ = ["POS_LEVEL", "TARGET_KEYS", "BuildTargets", "BuildTargetsd", "build_targets", "lesion_voxels"]

#: Keys of the dict returned by :func:`build_targets`.
TARGET_KEYS: tuple[str, ...] = ("heatmap", "log_diameter", "size_mask", "malignancy", "malig_mask")
#: Heatmap level above which a voxel counts as "positive" for patch sampling (the ``pos`` map).
POS_LEVEL = 0.5

_MIN_SIGMA_VOX = 0.75


def lesion_voxels(lesions: Sequence[Lesion], affine_ras: Any, shape: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Fractional voxel centres of lesions and which of them lie inside the volume.

    Args:
        lesions: lesions with LPS centres (mm).
        affine_ras: 4×4 voxel → RAS affine.
        shape: spatial shape ``(I, J, K)``.

    Returns:
        ``(N, 3)`` fractional voxel indices and an ``(N,)`` boolean inside mask.
    """
    if not lesions:
        return np.zeros((0, 3)), np.zeros((0,), dtype=bool)
    centres = np.array([les.center_lps for les in lesions], dtype=np.float64)
    ijk = coords.lps_to_voxel(centres, affine_ras)
    return ijk, coords.inside_volume(ijk, shape)


def _window(c: float, half: float, n: int) -> tuple[int, int]:
    lo = max(0, int(math.floor(c - half)))
    hi = min(n, int(math.ceil(c + half)) + 1)
    return lo, hi


def build_targets(image: Any, lesions: Sequence[Lesion]) -> dict[str, torch.Tensor]:
    """Build the heatmap, size and malignancy targets of one (preprocessed) image.

    Args:
        image: ``MetaTensor`` ``(C, I, J, K)`` whose ``affine`` maps voxels to RAS mm (any
            object with ``.shape`` and ``.affine`` works).
        lesions: the image's lesions (LPS mm centres, diameters in mm, optional malignancy).

    Returns:
        ``{"heatmap", "log_diameter", "size_mask", "malignancy", "malig_mask"}``, each a float32
        ``MetaTensor`` ``(1, I, J, K)`` with the image's affine (masks are 0/1).

    Raises:
        AnnotationError: a lesion with a non-positive or non-finite diameter.
    """
    from monai.data import MetaTensor

    if not hasattr(image, "affine"):
        raise AnnotationError("build_targets needs a MetaTensor image with an affine (voxel -> RAS mm)")
    affine = np.asarray(image.affine.detach().cpu().numpy() if torch.is_tensor(image.affine) else image.affine, dtype=np.float64)
    shape = tuple(int(s) for s in image.shape[-3:])
    spacing = np.asarray(coords.spacing_from_affine(affine))
    heat = np.zeros(shape, dtype=np.float32)
    logd = np.zeros(shape, dtype=np.float32)
    size_mask = np.zeros(shape, dtype=np.float32)
    malig = np.zeros(shape, dtype=np.float32)
    malig_mask = np.zeros(shape, dtype=np.float32)
    best = np.full(shape, np.inf, dtype=np.float32)  # normalised distance of the owning lesion

    ijk_all, inside = lesion_voxels(lesions, affine, shape)
    for les, ijk, ok in zip(lesions, ijk_all, inside):
        d = float(les.diameter_mm)
        if not math.isfinite(d) or d <= 0:
            raise AnnotationError(
                f"lesion {les.lesion_id or les.center_lps} of scan {les.seriesuid!r} has diameter_mm={d!r}; must be > 0"
            )
        if not ok:
            continue
        radius = d / 2.0
        sigma = np.maximum(radius / 2.0 / spacing, _MIN_SIGMA_VOX)  # voxels per axis
        nearest = np.clip(np.rint(ijk).astype(int), 0, np.asarray(shape) - 1)

        _splat_gaussian(heat, ijk, sigma, nearest)

        # size / malignancy ellipsoid: radius max(r/2 mm, 1 voxel) per axis
        rad = np.maximum(radius / 2.0 / spacing, 1.0)
        sl = tuple(slice(*_window(float(ijk[a]), float(rad[a]), shape[a])) for a in range(3))
        grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in sl], indexing="ij")
        dist = np.sqrt(sum(((grids[a] - ijk[a]) / rad[a]) ** 2 for a in range(3))).astype(np.float32)
        region = dist <= 1.0
        region[tuple(nearest[a] - sl[a].start for a in range(3))] = True  # always the centre voxel
        own = region & (dist < best[sl])
        best[sl][own] = dist[own]
        logd[sl][own] = math.log(d)
        size_mask[sl][own] = 1.0
        if les.malignancy is None or (isinstance(les.malignancy, float) and math.isnan(les.malignancy)):
            malig[sl][own] = 0.0
            malig_mask[sl][own] = 0.0
        else:
            malig[sl][own] = float(les.malignancy)
            malig_mask[sl][own] = 1.0

    aff_t = torch.as_tensor(affine, dtype=torch.float64)
    return {
        name: MetaTensor(torch.from_numpy(arr[None].copy()), affine=aff_t.clone())
        for name, arr in (
            ("heatmap", heat),
            ("log_diameter", logd),
            ("size_mask", size_mask),
            ("malignancy", malig),
            ("malig_mask", malig_mask),
        )
    }


def _splat_gaussian(heat: np.ndarray, ijk: np.ndarray, sigma: np.ndarray, nearest: np.ndarray) -> None:
    """Max a gaussian (σ in voxels per axis) into ``heat`` in a 3σ box, exactly 1 at ``nearest``."""
    shape = heat.shape
    sl = tuple(slice(*_window(float(ijk[a]), 3.0 * float(sigma[a]), shape[a])) for a in range(3))
    grids = np.meshgrid(*[np.arange(s.start, s.stop, dtype=np.float64) for s in sl], indexing="ij")
    g = np.exp(-sum((grids[a] - ijk[a]) ** 2 / (2.0 * sigma[a] ** 2) for a in range(3)))
    peak = math.exp(-sum(float((nearest[a] - ijk[a]) ** 2 / (2.0 * sigma[a] ** 2)) for a in range(3)))
    g = np.minimum(g / peak, 1.0).astype(np.float32)
    heat[sl] = np.maximum(heat[sl], g)
    heat[tuple(nearest)] = 1.0


#: Targets whose labels a lesion without size/malignancy labels does not contribute to.
_LABEL_KEYS = ("log_diameter", "size_mask", "malignancy", "malig_mask")


class BuildTargets(Transform):
    """Array form: one preprocessed image + its lesions → the dense targets and ``pos``.

    Lesions flagged unlabelled still shape the ``heatmap`` (detection labels are complete)
    but not the size and malignancy maps (their losses are masked there).
    """

    def __call__(  # type: ignore[override]
        self, image: Any, lesions: Sequence[Lesion], labelled: Sequence[bool] | None = None
    ) -> dict[str, torch.Tensor]:
        """Build the targets.

        Args:
            image: ``MetaTensor (C, I, J, K)`` with its voxel → RAS affine.
            lesions: the image's lesions (LPS mm).
            labelled: per lesion, whether its size and malignancy labels count (default all).

        Returns:
            :data:`TARGET_KEYS` as float32 tensors ``(1, I, J, K)`` and ``pos``
            (``(1, I, J, K)`` uint8: heatmap ≥ :data:`POS_LEVEL`).
        """
        lesions = list(lesions)
        flags = list(labelled) if labelled is not None else [True] * len(lesions)
        targets = build_targets(image, lesions)
        if not all(flags):
            partial = build_targets(image, [les for les, ok in zip(lesions, flags) if ok])
            for key in _LABEL_KEYS:
                targets[key] = partial[key]
        out = {key: torch.as_tensor(targets[key], dtype=torch.float32) for key in TARGET_KEYS}
        out["pos"] = (out["heatmap"] >= POS_LEVEL).to(torch.uint8)
        return out


class BuildTargetsd(MapTransform):
    """Dict wrapper of :class:`BuildTargets`.

    Reads ``image`` (``MetaTensor (C, I, J, K)``, preprocessed), ``lesions``
    (:class:`~medmtl.io.types.Lesion` list) and ``labelled`` (bools, optional); writes
    :data:`TARGET_KEYS` and ``pos`` and drops ``lesions`` / ``labelled`` so the item collates.

    Args:
        keep_lesions: keep ``lesions`` in the item (validation volumes).
        keys: the image key (one).
        allow_missing_keys: pass an item without the image key through unchanged.
    """

    def __init__(self, keep_lesions: bool = False, keys: Sequence[str] = ("image",), allow_missing_keys: bool = False) -> None:
        super().__init__(keys=list(keys), allow_missing_keys=allow_missing_keys)
        self.keep_lesions = keep_lesions
        self.builder = BuildTargets()

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d.update(self.builder(d[key], d.get("lesions", []), d.get("labelled")))
        if not self.keep_lesions:
            d.pop("lesions", None)
        d.pop("labelled", None)
        return d
