"""Turn the three output maps of the multi-task net into lesions in LPS world millimetres.

Steps (CenterNet-style decoding, Zhou et al., "Objects as Points", 2019, in 3D):

1. ``sigmoid`` of the heatmap logits;
2. 3D local maxima (a voxel equal to the 3×3×3 max-pool of its neighbourhood) above the
   detection threshold;
3. sub-voxel refinement of each peak by a per-axis parabola through the peak and its two
   neighbours (offset clipped to ±0.5 voxel);
4. voxel → LPS mm through :func:`medmtl.io.coords.voxel_to_lps` with the **preprocessed**
   volume's affine (the maps live on the preprocessed grid);
5. greedy non-maximum suppression by world distance (mm);
6. diameter = ``exp(a + b · m)`` with ``m`` the median log-diameter over the 3×3×3
   neighbourhood of the peak and ``(a, b)`` the size calibration fitted on the validation
   lesions at training time (identity by default); malignancy = ``sigmoid(median logit / T)``
   with the temperature ``T`` fitted the same way (Guo et al., "On Calibration of Modern
   Neural Networks", ICML 2017).

The size calibration corrects a linear shrinkage of the size head towards the middle of its
training sizes, fitted on held-out validation lesions only. Measured on the CPU config
(bench/RESULTS.md) it fitted the identity (a = 0.05, b = 0.97): the remaining size error there
is the head's floor at small nodules, which a line cannot undo.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray

from medmtl.errors import ConfigError
from medmtl.io import coords
from medmtl.io.types import Detection
from medmtl.records import check_keys, number_in

#: Peaks examined before NMS, per requested lesion (bounds the work on noisy maps).
_CANDIDATES_PER_LESION = 20

#: Allowed slope of the size calibration (a fit outside it means the head did not learn size).
SIZE_SLOPE_RANGE = (0.25, 4.0)

#: Keys a card may omit (added after format 1.0; the defaults are the identity).
_OPTIONAL_KEYS = ("size_log_offset", "size_log_slope")


@dataclass(frozen=True)
class DecodeSettings:
    """How maps become lesions: the one record shared by validation, the card and the predictor.

    Attributes:
        threshold: minimum detection probability of a peak, in (0, 1).
        nms_radius_mm: peaks closer than this (mm) to a stronger one are suppressed (> 0).
        max_lesions: at most this many lesions per scan (>= 1).
        temperature: malignancy temperature ``T`` (> 0), fitted on the validation lesions.
        size_log_offset: ``a`` of the size calibration ``log d = a + b · log d_net``
            (log mm; 0 = none), fitted on the validation lesions.
        size_log_slope: ``b`` of the size calibration (in [0.25, 4]; 1 = none).
    """

    threshold: float
    nms_radius_mm: float = 8.0
    max_lesions: int = 20
    temperature: float = 1.0
    size_log_offset: float = 0.0
    size_log_slope: float = 1.0

    def __post_init__(self) -> None:
        w = "decode"
        number_in(self.threshold, f"{w}.threshold", low=0.0, high=1.0, low_open=True, high_open=True,
                  error=ConfigError)
        number_in(self.nms_radius_mm, f"{w}.nms_radius_mm", low=0.0, high=1000.0, low_open=True, error=ConfigError)
        number_in(self.max_lesions, f"{w}.max_lesions", low=1, high=100000, integer=True, error=ConfigError)
        number_in(self.temperature, f"{w}.temperature", low=0.0, high=1000.0, low_open=True, error=ConfigError)
        number_in(self.size_log_offset, f"{w}.size_log_offset", low=-10.0, high=10.0, error=ConfigError)
        number_in(self.size_log_slope, f"{w}.size_log_slope", low=SIZE_SLOPE_RANGE[0], high=SIZE_SLOPE_RANGE[1],
                  error=ConfigError)
        for name in ("threshold", "nms_radius_mm", "temperature", "size_log_offset", "size_log_slope"):
            object.__setattr__(self, name, float(getattr(self, name)))

    def diameter_mm(self, log_diameter: float) -> float:
        """Calibrated diameter (mm) from the network's log-diameter (log mm)."""
        return math.exp(self.size_log_offset + self.size_log_slope * float(log_diameter))

    def diameter_map(self, log_diameter: torch.Tensor) -> torch.Tensor:
        """:meth:`diameter_mm` on a whole map (any shape, mm)."""
        return torch.exp(self.size_log_offset + self.size_log_slope * log_diameter)

    def malignancy_map(self, logit: torch.Tensor) -> torch.Tensor:
        """Calibrated malignancy probabilities ``sigmoid(logit / T)`` of a whole map (any shape)."""
        return torch.sigmoid(logit / self.temperature)

    def malignancy_prob(self, logit: float) -> float:
        """Calibrated malignancy probability ``sigmoid(logit / T)`` (overflow-safe)."""
        z = float(logit) / self.temperature
        return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DecodeSettings:
        """Inverse of :meth:`to_dict` (unknown keys fail).

        The size-calibration keys are optional (cards written before it existed decode with
        the identity); every other key is required.

        Raises:
            ConfigError: unknown or missing key, wrong type, out of range.
        """
        names = [f.name for f in dataclasses.fields(cls)]
        required = [n for n in names if n not in _OPTIONAL_KEYS]
        check_keys(data, names, "decode", required=required, error=ConfigError)
        return cls(**dict(data))

    def replace(self, **changes: Any) -> DecodeSettings:
        """A copy with some values changed (validated again)."""
        return dataclasses.replace(self, **changes)


def _volume(t: Any, name: str) -> torch.Tensor:
    """A ``(I, J, K)`` float32 CPU tensor from a ``(1, 1, I, J, K)``/``(1, I, J, K)``/``(I, J, K)`` map."""
    x = torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t)
    x = x.detach().to("cpu", torch.float32)
    while x.ndim > 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"map '{name}' must be (1, 1, I, J, K), got shape {tuple(x.shape)}")
    return x.as_subclass(torch.Tensor)


def find_peaks(prob: torch.Tensor, *, threshold: float, max_peaks: int) -> torch.Tensor:
    """3D local maxima of a probability volume.

    Args:
        prob: ``(I, J, K)`` probabilities.
        threshold: minimum probability of a peak.
        max_peaks: keep the ``max_peaks`` highest peaks.

    Returns:
        ``(N, 3)`` int64 voxel indices, sorted by decreasing probability.
    """
    pooled = F.max_pool3d(prob[None, None], kernel_size=3, stride=1, padding=1)[0, 0]
    mask = (prob >= pooled) & (prob >= threshold)
    idx = torch.nonzero(mask, as_tuple=False)
    if idx.shape[0] == 0:
        return idx
    vals = prob[idx[:, 0], idx[:, 1], idx[:, 2]]
    order = torch.argsort(vals, descending=True, stable=True)[:max_peaks]
    return idx[order]


def refine_subvoxel(prob: torch.Tensor, peaks: torch.Tensor) -> NDArray[np.float64]:
    """Sub-voxel peak positions by a parabola through each peak and its axis neighbours.

    Args:
        prob: ``(I, J, K)`` probabilities.
        peaks: ``(N, 3)`` integer voxel indices.

    Returns:
        ``(N, 3)`` fractional voxel indices (each within ±0.5 of the integer peak).
    """
    p = prob.numpy()
    pk = peaks.numpy().astype(np.int64)
    out = pk.astype(np.float64)
    shape = p.shape
    for n, (i, j, k) in enumerate(pk):
        centre = p[i, j, k]
        for ax in range(3):
            lo = [i, j, k]
            hi = [i, j, k]
            lo[ax] -= 1
            hi[ax] += 1
            if lo[ax] < 0 or hi[ax] >= shape[ax]:
                continue
            a, b = float(p[tuple(lo)]), float(p[tuple(hi)])
            denom = a - 2.0 * float(centre) + b
            if denom < -1e-12:
                out[n, ax] += float(np.clip(0.5 * (a - b) / denom, -0.5, 0.5))
    return out


def neighbourhood_median(vol: torch.Tensor, ijk: NDArray[np.int64], radius: int = 1) -> float:
    """Median of ``vol`` ``(I, J, K)`` over the ``(2r+1)³`` cube around voxel ``ijk`` (clipped at the edges)."""
    i, j, k = (int(v) for v in ijk)
    sl = vol[
        max(i - radius, 0) : i + radius + 1,
        max(j - radius, 0) : j + radius + 1,
        max(k - radius, 0) : k + radius + 1,
    ]
    return float(torch.median(sl.reshape(-1)))


def nms_world(points_mm: NDArray[np.float64], scores: NDArray[np.float64], radius_mm: float) -> list[int]:
    """Greedy non-maximum suppression by Euclidean distance in mm.

    Args:
        points_mm: ``(N, 3)`` world positions (mm), any frame.
        scores: ``(N,)`` scores.
        radius_mm: a point closer than this to a kept, higher-scoring point is dropped.

    Returns:
        Indices of the kept points, by decreasing score.
    """
    order = np.argsort(-scores, kind="stable")
    kept: list[int] = []
    for idx in order:
        if kept:
            d = np.linalg.norm(points_mm[kept] - points_mm[idx], axis=1)
            if np.any(d < radius_mm):
                continue
        kept.append(int(idx))
    return kept


def decode_lesions(
    maps: Mapping[str, Any],
    affine_ras: Any,
    *,
    seriesuid: str,
    settings: DecodeSettings,
    subvoxel: bool = True,
) -> list[Detection]:
    """Decode the multi-task maps of one scan into detections.

    Args:
        maps: ``"heatmap"`` (logits), ``"log_diameter"`` (log mm) and ``"malignancy"``
            (logits), each ``(1, 1, I, J, K)`` (or ``(I, J, K)``) on the preprocessed grid.
        affine_ras: 4×4 voxel→RAS affine of the preprocessed volume.
        seriesuid: scan id written into each detection.
        settings: threshold (of the heatmap's sigmoid), NMS radius (mm), lesion cap,
            malignancy temperature and size calibration (validated by the record).
        subvoxel: refine peak positions below the voxel size.

    Returns:
        Detections (LPS mm, probability, diameter mm, calibrated malignancy probability),
        sorted by decreasing probability.

    Raises:
        ValueError: a map is missing or the maps' shapes differ.
    """
    threshold, max_lesions = settings.threshold, settings.max_lesions
    for key in ("heatmap", "log_diameter", "malignancy"):
        if key not in maps:
            raise ValueError(f"maps lacks '{key}'; has {sorted(maps)}")
    heat = _volume(maps["heatmap"], "heatmap")
    logd = _volume(maps["log_diameter"], "log_diameter")
    malig = _volume(maps["malignancy"], "malignancy")
    if not (heat.shape == logd.shape == malig.shape):
        raise ValueError(f"map shapes differ: {heat.shape}, {logd.shape}, {malig.shape}")
    affine = np.asarray(
        affine_ras.detach().cpu().numpy() if isinstance(affine_ras, torch.Tensor) else affine_ras,
        dtype=np.float64,
    )
    prob = torch.sigmoid(heat)
    peaks = find_peaks(prob, threshold=threshold, max_peaks=max_lesions * _CANDIDATES_PER_LESION)
    if peaks.shape[0] == 0:
        return []
    ijk = refine_subvoxel(prob, peaks) if subvoxel else peaks.numpy().astype(np.float64)
    ras = coords.voxel_to_ras(ijk, affine)
    scores = prob[peaks[:, 0], peaks[:, 1], peaks[:, 2]].numpy().astype(np.float64)
    kept = nms_world(ras, scores, settings.nms_radius_mm)[:max_lesions]
    lps = coords.voxel_to_lps(ijk[kept], affine)
    out: list[Detection] = []
    pk = peaks.numpy()
    for n, idx in enumerate(kept):
        diameter = settings.diameter_mm(neighbourhood_median(logd, pk[idx]))
        malig_prob = settings.malignancy_prob(neighbourhood_median(malig, pk[idx]))
        out.append(
            Detection(
                seriesuid=seriesuid,
                center_lps=(float(lps[n, 0]), float(lps[n, 1]), float(lps[n, 2])),
                probability=float(scores[idx]),
                diameter_mm=float(diameter),
                malignancy_prob=float(malig_prob),
            )
        )
    return out
