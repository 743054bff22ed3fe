"""A per-lesion malignancy readout that cannot memorise: a logistic model on lesion-pooled CT features.

Why this exists (bench/RESULTS.md, issue #17): the network's dense malignancy head barely learns
on a few hundred training lesions whose labels are Bernoulli draws (its training loss stays at
0.62–0.67 against 0.69 for a constant), its test AUC moves by 0.15 between seeds, and a probe
showed the shared backbone's pooled features carry no margin, texture or calcification
information. Clinical nodule-risk models instead score a handful of lesion-level descriptors —
size, solid / part-solid / ground-glass type, spiculation, calcification (McWilliams et al.,
"Probability of cancer in pulmonary nodules detected on first screening CT", NEJM 2013) — with
a logistic model. This module does the same on measured descriptors:

* :func:`lesion_features` reads nine numbers around one lesion of a **HU** image, in world mm,
  from its centre (LPS mm) and diameter (mm): the log-diameter, the maximum and the core/whole
  mean HU, the calcified (> 200 HU) and solid (> -300 HU) fractions inside the lesion, the mean
  HU and the > -500 HU fraction of the shell from 1.15 r to 2 r + 1 mm (spicules and lobes reach
  into it), and the share of the connected > -500 HU component that lies outside 1.15 r;
* :func:`fit_readout` fits an L2-regularised logistic regression (scikit-learn) on standardised
  features of labelled **training** lesions (annotated centres and diameters) — 10 parameters,
  so it generalises from ~200 lesions where a 5.6 M-parameter head memorises them;
* :class:`MalignancyReadout` is the fitted record stored in the model card; at prediction it
  scores each detection at its predicted centre and diameter.

Scikit-learn's ``LogisticRegression`` does the fit (no hand-written optimiser); the features
are written here because no radiomics package on the registry fits a 9-number CT descriptor
without a segmentation mask (pyradiomics needs a mask and is not installable here).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medmtl.errors import CheckpointError, ConfigError
from medmtl.io import coords
from medmtl.records import check_keys, expect_type, number_in

__all__ = ["FEATURES", "MIN_LESIONS", "MalignancyReadout", "fit_readout", "lesion_features", "score_detections"]

#: Names of the features of :func:`lesion_features`, in order.
FEATURES: tuple[str, ...] = (
    "log_diameter", "hu_max", "hu_core_mean", "hu_mean", "calcified_fraction", "solid_fraction",
    "shell_hu_mean", "shell_dense_fraction", "outside_ratio",
)
#: Fewest labelled lesions of each class the fit accepts.
MIN_LESIONS = 10
#: L2 strength of the fit (scikit-learn's ``C``; 1 = the library default, standardised features).
DEFAULT_C = 1.0
#: HU thresholds: calcified core, solid component, "dense" tissue (spicules, lobes, vessels).
_HU_CALCIFIED, _HU_SOLID, _HU_DENSE = 200.0, -300.0, -500.0
_E = CheckpointError


def lesion_features(hu: NDArray[Any], affine_ras: Any, centre_lps: Sequence[float], diameter_mm: float) -> NDArray[np.float64]:
    """The nine descriptors of :data:`FEATURES` around one lesion.

    Args:
        hu: ``(I, J, K)`` CT image in HU (``(1, I, J, K)`` accepted).
        affine_ras: 4×4 voxel → RAS affine of ``hu`` (mm).
        centre_lps: lesion centre, LPS world mm.
        diameter_mm: lesion diameter, mm (clipped to [1, 80]).

    Returns:
        ``(9,)`` float64 features. A centre outside the image gives the features of the
        nearest voxels inside (never an error: a detection at the edge still gets a score).
    """
    vol = np.asarray(hu)
    while vol.ndim > 3 and vol.shape[0] == 1:
        vol = vol[0]
    aff = np.asarray(affine_ras, dtype=np.float64)
    d = float(np.clip(diameter_mm, 1.0, 80.0))
    r = d / 2.0
    ijk = coords.lps_to_voxel(np.asarray(centre_lps, dtype=np.float64)[None], aff)[0]
    sp = np.asarray(coords.spacing_from_affine(aff), dtype=np.float64)
    reach = 2.2 * r + 3.0
    shape = np.asarray(vol.shape)
    centre = np.clip(ijk, 0, shape - 1)
    lo = np.clip(np.floor(centre - reach / sp).astype(int), 0, shape - 1)
    hi = np.clip(np.ceil(centre + reach / sp).astype(int) + 1, lo + 1, shape)
    sub = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    # distances in mm along the image axes (the affine's direction does not change lengths)
    axes = [(np.arange(a, b) - centre[n]) * sp[n] for n, (a, b) in enumerate(zip(lo, hi))]
    dist = np.sqrt(sum(np.meshgrid(*[ax**2 for ax in axes], indexing="ij")))
    nearest = sub.reshape(-1)[np.argmin(dist)]
    inner = sub[dist <= r] if np.any(dist <= r) else np.array([nearest])
    core = sub[dist <= max(0.5 * r, 0.8)] if np.any(dist <= max(0.5 * r, 0.8)) else np.array([nearest])
    shell_mask = (dist > 1.15 * r) & (dist <= 2.0 * r + 1.0)
    shell = sub[shell_mask] if np.any(shell_mask) else inner
    labels, _ = ndimage.label(sub > _HU_DENSE)
    c_vox = tuple(int(v) for v in np.clip(np.round(centre - lo), 0, np.asarray(sub.shape) - 1))
    comp = labels == labels[c_vox] if labels[c_vox] > 0 else dist <= r
    inside = float((comp & (dist <= 1.15 * r)).sum())
    outside = float((comp & (dist > 1.15 * r)).sum())
    return np.array([
        math.log(d), float(inner.max()), float(core.mean()), float(inner.mean()),
        float((inner > _HU_CALCIFIED).mean()), float((inner > _HU_SOLID).mean()),
        float(shell.mean()), float((shell > _HU_DENSE).mean()), outside / max(inside, 1.0),
    ], dtype=np.float64)


@dataclass(frozen=True)
class MalignancyReadout:
    """A fitted logistic malignancy model on :data:`FEATURES` (stored in the model card).

    ``logit = intercept + Σ coef_i · (x_i - mean_i) / scale_i``.

    Attributes:
        features: feature names (must equal :data:`FEATURES`).
        mean, scale: standardisation of each feature (scale > 0).
        coef: logistic coefficients on the standardised features.
        intercept: logistic intercept.
        n_lesions: labelled training lesions of the fit.
        n_malignant: of which malignant.
        c: the L2 strength used (scikit-learn's ``C``).
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    n_lesions: int
    n_malignant: int
    c: float = DEFAULT_C

    def __post_init__(self) -> None:
        w = "malignancy_readout"
        if tuple(self.features) != FEATURES:
            raise _E(f"{w}.features {list(self.features)} differ from this medmtl's {list(FEATURES)}; "
                     "refit the readout with this version (medmtl train)")
        for name in ("mean", "scale", "coef"):
            vals = getattr(self, name)
            expect_type(vals, (list, tuple), f"{w}.{name}", error=_E)
            if len(vals) != len(FEATURES):
                raise _E(f"{w}.{name} has {len(vals)} values; expected {len(FEATURES)} (one per feature)")
            for i, v in enumerate(vals):
                number_in(v, f"{w}.{name}[{i}]", low=-1e9, high=1e9, error=_E)
            object.__setattr__(self, name, tuple(float(v) for v in vals))
        if any(s <= 0 for s in self.scale):
            raise _E(f"{w}.scale must be > 0 for every feature, got {list(self.scale)}")
        number_in(self.intercept, f"{w}.intercept", low=-1e6, high=1e6, error=_E)
        number_in(self.n_lesions, f"{w}.n_lesions", low=1, integer=True, error=_E)
        number_in(self.n_malignant, f"{w}.n_malignant", low=0, high=self.n_lesions, integer=True, error=_E)
        number_in(self.c, f"{w}.c", low=0.0, high=1e6, low_open=True, error=_E)
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "intercept", float(self.intercept))
        object.__setattr__(self, "c", float(self.c))

    def logit(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """Logits of ``(N, 9)`` (or ``(9,)``) feature rows."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        z = (x - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.asarray(self.intercept + z @ np.asarray(self.coef), dtype=np.float64)

    def probability(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """Malignancy probabilities of feature rows (overflow-safe sigmoid)."""
        from scipy.special import expit

        return np.asarray(expit(self.logit(features)), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept, "n_lesions": self.n_lesions,
                "n_malignant": self.n_malignant, "c": self.c}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MalignancyReadout:
        """Inverse of :meth:`to_dict`.

        Raises:
            CheckpointError: unknown or missing key, wrong type, out of range.
        """
        expect_type(data, Mapping, "malignancy_readout", error=_E)
        names = ["features", "mean", "scale", "coef", "intercept", "n_lesions", "n_malignant", "c"]
        check_keys(data, names, "malignancy_readout", required=names[:-1], error=_E)
        return cls(**dict(data))


def fit_readout(
    images: Mapping[str, tuple[NDArray[Any], Any]], lesions: Sequence[Any], *, c: float = DEFAULT_C
) -> MalignancyReadout:
    """Fit the readout on labelled lesions (annotated centres and diameters).

    Args:
        images: scan id → ``(hu (I, J, K) or (1, I, J, K), affine_ras 4×4)``.
        lesions: :class:`~medmtl.io.types.Lesion` records; those with ``malignancy`` ``None``
            or a scan not in ``images`` are skipped; labels are thresholded at 0.5.
        c: L2 strength (scikit-learn ``C``, > 0).

    Returns:
        The fitted :class:`MalignancyReadout`.

    Raises:
        ConfigError: fewer than :data:`MIN_LESIONS` labelled lesions of either class.
    """
    from sklearn.linear_model import LogisticRegression

    rows, labels = [], []
    for les in lesions:
        if les.malignancy is None or les.seriesuid not in images:
            continue
        hu, affine = images[les.seriesuid]
        rows.append(lesion_features(hu, affine, les.center_lps, les.diameter_mm))
        labels.append(int(float(les.malignancy) >= 0.5))
    y = np.asarray(labels, dtype=np.int64)
    n_pos = int(y.sum())
    if min(n_pos, len(y) - n_pos) < MIN_LESIONS:
        raise ConfigError(
            f"the malignancy readout needs >= {MIN_LESIONS} labelled malignant and benign training lesions, got "
            f"{n_pos} malignant and {len(y) - n_pos} benign; label more lesions or set "
            "decode.malignancy: head"
        )
    x = np.stack(rows)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    clf = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y)
    return MalignancyReadout(features=FEATURES, mean=tuple(mean), scale=tuple(scale), coef=tuple(clf.coef_[0]),
                             intercept=float(clf.intercept_[0]), n_lesions=len(y), n_malignant=n_pos, c=c)


def score_detections(readout: MalignancyReadout, hu: NDArray[Any], affine_ras: Any, detections: Sequence[Any]) -> list[Any]:
    """The detections with ``malignancy_prob`` from the readout (at their centres and diameters).

    Args:
        readout: the fitted readout.
        hu: ``(I, J, K)`` / ``(1, I, J, K)`` HU image of the scan (its own grid).
        affine_ras: 4×4 voxel → RAS affine of ``hu``.
        detections: :class:`~medmtl.io.types.Detection` records (LPS mm).

    Returns:
        New detections, same order, only ``malignancy_prob`` changed.
    """
    import dataclasses

    if not detections:
        return []
    x = np.stack([lesion_features(hu, affine_ras, d.center_lps, d.diameter_mm) for d in detections])
    probs = readout.probability(x)
    return [dataclasses.replace(d, malignancy_prob=float(p)) for d, p in zip(detections, probs)]
