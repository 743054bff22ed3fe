"""Per-lesion readouts that cannot memorise: small linear models on lesion-pooled CT descriptors.

Why this exists (bench/RESULTS.md, issue #17): on a few hundred training lesions the network's
dense heads reach a floor a lesion-level model does not have. The malignancy head barely learns
from Bernoulli labels (training loss 0.62–0.67 against 0.69 for a constant; test AUC moving by
0.15 between seeds; a probe found no margin, texture or calcification information in the pooled
backbone features), and the size head calls 3–4.5 mm nodules 4.5–6 mm even at their centre voxel.
Clinical nodule-risk models score a handful of lesion descriptors — size, solid / part-solid /
ground-glass type, spiculation, calcification (McWilliams et al., "Probability of cancer in
pulmonary nodules detected on first screening CT", NEJM 2013) — and volumetry measures size from
the HU excess over the lung background. This module does both on measured descriptors:

* :func:`lesion_features` reads sixteen numbers around one lesion of a **HU** image, in world mm,
  from a centre (LPS mm) and a diameter guess (mm): the log of the guess; the maximum and the
  core / whole mean HU; the calcified (> 200 HU) and solid (> -300 HU) fractions inside; the mean
  HU and the > -500 HU fraction of the shell from 1.15 r to 2 r + 1 mm (spicules and lobes reach
  into it); the share of the connected > -500 HU component outside 1.15 r; and three volumetric
  log-diameters ``log (6 V / π)^(1/3)`` of the HU excess over the local lung background within
  1.25 r, 1.5 r and 2 r; and four that do not assume a uniform solid sphere — the log of the
  core's excess fraction (a ground-glass nodule's volumetric diameter under-reads it by that
  fraction's cube root), the excess-weighted radius of gyration within 1.5 r, the 95th-percentile
  distance and the volumetric diameter of the centre's connected component above half the core's
  excess (lobes and spicules reach the nominal diameter with little volume);
* :func:`fit_readout` fits, on the **training** lesions only (annotated centres and diameters):
  the **size** model, a robust (Huber) linear regression of the true log-diameter on the
  descriptors read around a *perturbed* guess ``d · exp(N(0, 0.25))`` — four draws per lesion,
  the guess itself left out, so the model measures the lesion instead of trusting the network's
  size; and the **malignancy** model, an L2 logistic regression on the descriptors read around
  the lesion's *self-measured* size (labelled lesions only). 16 + 17 parameters learned from
  hundreds of lesions;
* when the training annotations record lesion attributes (``margin``, ``texture``,
  ``calcification`` columns, as LIDC-IDRI's radiologists record them), the **two-stage attribute
  model** of :mod:`medmtl.engine.attribute_readout` on top: classifiers of each attribute on the
  descriptors, and malignancy from the measured size and the attribute probabilities. It replaces
  the direct malignancy model at prediction: on 312 held-out phantom lesions, scored at their
  annotated centres, it ranks at AUC 0.72 against 0.62–0.63 for the direct model (Bayes 0.79):
  the attributes are deterministic in the image, the malignancy label is a coin flip;
* :class:`LesionReadout` is the fitted record stored in the model card. At prediction each
  detection's size is re-measured from the descriptors around the network's diameter, then
  around that measurement, :data:`SIZE_ITERATIONS` reads in all (the network calls nodules above
  8 mm 0.6–0.75× their size, and regions read around such a guess cut the lesion off: on 348
  detected held-out lesions of one seed the MAE fell from 1.48 to 1.13 mm with the four extent
  descriptors and three reads), and its
  malignancy scored by the attribute stage at that size (without one: the direct model on the
  descriptors around its self-measured size).

The self-measured size (:func:`self_measured_diameter`): starting from a guess, twice replace
it by the volumetric diameter of the HU excess within 1.5 × its radius. The descriptors then
depend on the image rather than on the guess: measured on 30 held-out site-A phantoms, the
malignancy AUC of descriptors read at the guess fell from 0.78 (true diameter) to 0.56–0.63
with a 20 % size error, while read at the self-measured size it stayed at 0.74–0.76 for guesses
from 0.75× to 1.3× the truth (bench/RESULTS.md, "lesion readout").

scikit-learn fits the models (no hand-written optimiser); the descriptors are written here
because no registry package measures a lesion without a segmentation mask (pyradiomics needs a
mask and does not install here).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from medmtl.engine.attribute_readout import (
    ATTRIBUTE_COLUMNS,
    AttributeMalignancy,
    AttributeModel,
    attribute_inputs,
    fit_attribute_malignancy,
)
from medmtl.errors import CheckpointError, ConfigError
from medmtl.io import coords
from medmtl.records import check_keys, expect_type, number_in, number_list

__all__ = ["FEATURES", "MIN_LESIONS", "LesionReadout", "LinearModel", "fit_readout", "lesion_features",
           "readout_for_training", "score_detections", "self_measured_diameter"]

#: Names of the descriptors of :func:`lesion_features`, in order.
FEATURES: tuple[str, ...] = (
    "log_diameter", "hu_max", "hu_core_mean", "hu_mean", "calcified_fraction", "solid_fraction",
    "shell_hu_mean", "shell_dense_fraction", "outside_ratio",
    "excess_log_diameter_125", "excess_log_diameter_150", "excess_log_diameter_200",
    "core_excess_log", "gyration_log_radius", "extent_log_radius", "half_contrast_log_diameter",
)
#: Fewest labelled lesions of each class the malignancy fit accepts (and lesions the size fit accepts).
MIN_LESIONS = 10
#: L2 strength of the malignancy fit (scikit-learn's ``C``; 1 = the library default, standardised features).
DEFAULT_C = 1.0
#: Standard deviation of the log-normal perturbation of the size guess in the size fit (≈ the
#: network's size error: MAE 1.5–1.8 mm on 8 mm nodules) and draws per lesion.
SIZE_GUESS_NOISE, SIZE_DRAWS = 0.25, 4
#: Volumetric re-measurements of the guess before the malignancy descriptors are read.
SELF_MEASURE_ITERATIONS = 2
#: Applications of the size model at prediction: read around the guess, measure, read again around
#: the measurement... The network's guess is biased (0.6–0.75× the truth above 8 mm on 185 held-out
#: phantoms), so one read around it truncates large lesions; see bench/RESULTS.md ("iterated size readout").
SIZE_ITERATIONS = 3
#: Standard deviation (mm, per axis) of the centre shift of the attribute stage's training reads:
#: detections sit 0.38 mm (median; 90th percentile 0.83 mm) from the annotated centre on 185
#: held-out phantoms; a stage 2 trained at exact centres was mis-calibrated there (seed 1: ECE 0.058, 0.030 with it).
CENTRE_JITTER_MM = 0.3
#: Diameters the readout reports are clipped to this range (mm).
DIAMETER_RANGE_MM = (2.0, 60.0)
#: HU thresholds: calcified core, solid component, "dense" tissue (spicules, lobes, vessels), lung air.
_HU_CALCIFIED, _HU_SOLID, _HU_DENSE, _HU_AIR = 200.0, -300.0, -500.0, -700.0
#: HU of solid soft tissue (the full-volume end of the excess fraction).
_HU_TISSUE = 0.0
_E = CheckpointError
logger = logging.getLogger(__name__)


def lesion_features(hu: NDArray[Any], affine_ras: Any, centre_lps: Sequence[float], diameter_mm: float) -> NDArray[np.float64]:
    """The sixteen descriptors of :data:`FEATURES` around one lesion.

    Args:
        hu: ``(I, J, K)`` CT image in HU (``(1, I, J, K)`` accepted).
        affine_ras: 4×4 voxel → RAS affine of ``hu`` (mm).
        centre_lps: lesion centre, LPS world mm.
        diameter_mm: diameter guess, mm (clipped to [1, 80]); it sets the regions read.

    Returns:
        ``(16,)`` float64 descriptors. A centre outside the image reads the nearest voxels inside
        (never an error: a detection at the edge still gets a score).
    """
    vol = np.asarray(hu)
    while vol.ndim > 3 and vol.shape[0] == 1:
        vol = vol[0]
    aff = np.asarray(affine_ras, dtype=np.float64)
    d = float(np.clip(diameter_mm, 1.0, 80.0))
    r = d / 2.0
    ijk = coords.lps_to_voxel(np.asarray(centre_lps, dtype=np.float64)[None], aff)[0]
    sp = np.asarray(coords.spacing_from_affine(aff), dtype=np.float64)
    reach = 2.5 * r + 5.0
    shape = np.asarray(vol.shape)
    centre = np.clip(ijk, 0, shape - 1)
    lo = np.clip(np.floor(centre - reach / sp).astype(int), 0, shape - 1)
    hi = np.clip(np.ceil(centre + reach / sp).astype(int) + 1, lo + 1, shape)
    sub = vol[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    # distances in mm along the image axes (the affine's direction does not change lengths)
    axes = [(np.arange(a, b) - centre[n]) * sp[n] for n, (a, b) in enumerate(zip(lo, hi))]
    dist = np.sqrt(sum(np.meshgrid(*[ax**2 for ax in axes], indexing="ij")))
    nearest = np.array([sub.reshape(-1)[np.argmin(dist)]])

    def within(mask: NDArray[np.bool_], fallback: NDArray[Any]) -> NDArray[Any]:
        return sub[mask] if np.any(mask) else fallback

    inner = within(dist <= r, nearest)
    core = within(dist <= max(0.5 * r, 0.8), nearest)
    shell = within((dist > 1.15 * r) & (dist <= 2.0 * r + 1.0), inner)
    labels, _ = ndimage.label(sub > _HU_DENSE)
    c_vox = tuple(int(v) for v in np.clip(np.round(centre - lo), 0, np.asarray(sub.shape) - 1))
    comp = labels == labels[c_vox] if labels[c_vox] > 0 else dist <= r
    inside = float((comp & (dist <= 1.15 * r)).sum())
    outside = float((comp & (dist > 1.15 * r) & (dist <= 2.2 * r + 3.0)).sum())
    air = sub[sub < _HU_AIR]
    background = float(np.median(air)) if air.size else -850.0
    excess = np.clip((sub - background) / max(_HU_TISSUE - background, 1.0), 0.0, 1.0)
    voxel_mm3 = float(np.prod(sp))
    volumetric = [math.log(max((6.0 * float(excess[dist <= f * r].sum()) * voxel_mm3 / math.pi) ** (1.0 / 3.0), 1.0))
                  for f in (1.25, 1.5, 2.0)]
    return np.array([
        math.log(d), float(inner.max()), float(core.mean()), float(inner.mean()),
        float((inner > _HU_CALCIFIED).mean()), float((inner > _HU_SOLID).mean()),
        float(shell.mean()), float((shell > _HU_DENSE).mean()), outside / max(inside, 1.0), *volumetric,
        *_extent_descriptors(excess, dist, c_vox, r, voxel_mm3),
    ], dtype=np.float64)


def _extent_descriptors(excess: NDArray[Any], dist: NDArray[Any], centre_vox: tuple[int, ...], r: float,
                        voxel_mm3: float) -> list[float]:
    """The four size descriptors that do not assume a uniform solid sphere (logs of mm, or of a fraction).

    A ground-glass nodule's excess over the lung is a fraction of a solid one's, so its volumetric
    diameter under-reads it by that fraction's cube root (the log of the core's excess corrects it
    in a log-linear model); lobes and spicules hold little volume but reach the nominal diameter,
    which the excess-weighted radius of gyration and the 95th-percentile distance of the centre's
    connected component above half the core's excess (and that component's volumetric diameter)
    see.

    Args:
        excess: HU excess over the lung background as a fraction of soft tissue, in [0, 1].
        dist: same-shape distances (mm) from the centre.
        centre_vox: index of the centre voxel in these arrays.
        r: radius of the guess (mm).
        voxel_mm3: voxel volume (mm³).
    """
    core = dist <= max(0.5 * r, 0.8)
    core_excess = float(excess[core].mean()) if np.any(core) else float(excess[centre_vox])
    near = dist <= 1.5 * r
    mass = float(excess[near].sum())
    gyration = math.sqrt(float((excess[near] * dist[near] ** 2).sum()) / max(mass, 1e-6))
    labels, _ = ndimage.label((excess > 0.5 * max(core_excess, 0.05)) & (dist <= 2.0 * r + 2.0))
    comp = labels == labels[centre_vox] if labels[centre_vox] > 0 else np.zeros_like(near)
    n = int(comp.sum())
    extent = float(np.percentile(dist[comp], 95)) if n > 3 else 0.5
    equivalent = (6.0 * n * voxel_mm3 / math.pi) ** (1.0 / 3.0)
    return [math.log(max(core_excess, 0.02)), math.log(max(gyration, 0.3)), math.log(max(extent, 0.5)),
            math.log(max(equivalent, 0.5))]


def self_measured_diameter(hu: NDArray[Any], affine_ras: Any, centre_lps: Sequence[float], guess_mm: float,
                           iterations: int = SELF_MEASURE_ITERATIONS,
                           first_features: NDArray[Any] | None = None) -> float:
    """The guess replaced ``iterations`` times by the volumetric diameter of the HU excess within 1.5 r (mm).

    Args:
        hu, affine_ras, centre_lps: as in :func:`lesion_features`.
        guess_mm: starting diameter, mm (clipped to :data:`DIAMETER_RANGE_MM`).
        iterations: re-measurements (0 returns the clipped guess).
        first_features: :func:`lesion_features` already read at the clipped guess (saves one read).

    Returns:
        Diameter in mm, within :data:`DIAMETER_RANGE_MM`.
    """
    d = float(np.clip(guess_mm, *DIAMETER_RANGE_MM))
    col = FEATURES.index("excess_log_diameter_150")
    for n in range(iterations):
        f = first_features if n == 0 and first_features is not None else lesion_features(hu, affine_ras, centre_lps, d)
        d = float(np.clip(math.exp(f[col]), *DIAMETER_RANGE_MM))
    return d


def _malignancy_row(hu: NDArray[Any], affine_ras: Any, centre_lps: Sequence[float], guess_mm: float,
                    first_features: NDArray[Any] | None = None) -> NDArray[np.float64]:
    """Descriptors read around the self-measured size (what the malignancy model sees)."""
    d = self_measured_diameter(hu, affine_ras, centre_lps, guess_mm, first_features=first_features)
    return lesion_features(hu, affine_ras, centre_lps, d)


def _floats(values: Any, where: str, n: int) -> tuple[float, ...]:
    return number_list(values, where, n, error=_E, hint=" (one per feature)")


@dataclass(frozen=True)
class LinearModel:
    """``intercept + Σ coef_i · z_i`` on the standardised descriptors ``z`` of :class:`LesionReadout`.

    Attributes:
        coef: one coefficient per feature of :data:`FEATURES` (0 for a feature the model leaves out).
        intercept: the constant.
        n_lesions: lesions of the fit.
    """

    coef: tuple[float, ...]
    intercept: float
    n_lesions: int

    def check(self, where: str) -> LinearModel:
        """This model with its values validated (``where`` names it in errors)."""
        number_in(self.intercept, f"{where}.intercept", low=-1e6, high=1e6, error=_E)
        number_in(self.n_lesions, f"{where}.n_lesions", low=1, integer=True, error=_E)
        return LinearModel(_floats(self.coef, f"{where}.coef", len(FEATURES)), float(self.intercept),
                           int(self.n_lesions))

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"coef": list(self.coef), "intercept": self.intercept, "n_lesions": self.n_lesions}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> LinearModel:
        """Inverse of :meth:`to_dict` (``where`` names the card key in errors)."""
        expect_type(data, Mapping, where, error=_E)
        check_keys(data, ["coef", "intercept", "n_lesions"], where, required=["coef", "intercept", "n_lesions"],
                   error=_E)
        return cls(data["coef"], data["intercept"], data["n_lesions"]).check(where)


@dataclass(frozen=True)
class LesionReadout:
    """The fitted per-lesion size and malignancy models (stored in the model card; CT only).

    Attributes:
        features: descriptor names (must equal :data:`FEATURES`).
        mean, scale: standardisation of each descriptor (scale > 0), from the training rows.
        size: log-diameter regression (log mm), or ``None`` (the network's size is kept).
        malignancy: malignancy logit, or ``None`` (the head's temperature-scaled malignancy is kept).
        n_malignant: malignant lesions of the malignancy fit (0 without one).
        c: the malignancy fit's L2 strength (scikit-learn ``C``).
        attributes: stage-1 classifiers of the lesion attributes (margin, texture, calcification)
            on the standardised descriptors (:mod:`medmtl.engine.attribute_readout`); empty
            when the training annotations recorded none.
        attribute_malignancy: stage 2, malignancy from the measured size and the attribute
            probabilities; when set, prediction scores malignancy with it instead of ``malignancy``.
        size_iterations: applications of ``size`` at prediction, each reading the descriptors
            around the previous measurement (1: around the network's guess only).
    """

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    size: LinearModel | None = None
    malignancy: LinearModel | None = None
    n_malignant: int = 0
    c: float = DEFAULT_C
    attributes: tuple[AttributeModel, ...] = ()
    attribute_malignancy: AttributeMalignancy | None = None
    size_iterations: int = SIZE_ITERATIONS

    def __post_init__(self) -> None:
        w = "lesion_readout"
        if tuple(self.features) != FEATURES:
            raise _E(f"{w}.features {list(self.features)} differ from this medmtl's {list(FEATURES)}; "
                     "refit the readout with this version (medmtl train)")
        object.__setattr__(self, "features", tuple(self.features))
        object.__setattr__(self, "mean", _floats(self.mean, f"{w}.mean", len(FEATURES)))
        object.__setattr__(self, "scale", _floats(self.scale, f"{w}.scale", len(FEATURES)))
        if any(s <= 0 for s in self.scale):
            raise _E(f"{w}.scale must be > 0 for every feature, got {list(self.scale)}")
        if self.size is None and self.malignancy is None and self.attribute_malignancy is None:
            raise _E(f"{w} has neither a size nor a malignancy model; leave lesion_readout null instead")
        expect_type(self.attributes, (list, tuple), f"{w}.attributes", error=_E)
        attrs = tuple(expect_type(m, AttributeModel, f"{w}.attributes[{i}]", error=_E).check(f"{w}.attributes[{i}]", len(FEATURES))
                      for i, m in enumerate(self.attributes))
        if len({m.name for m in attrs}) != len(attrs):
            raise _E(f"{w}.attributes name an attribute twice: {[m.name for m in attrs]}")
        object.__setattr__(self, "attributes", attrs)
        if self.attribute_malignancy is not None:
            if not attrs:
                raise _E(f"{w}.attribute_malignancy is set but {w}.attributes is empty; it reads their probabilities")
            object.__setattr__(self, "attribute_malignancy",
                               self.attribute_malignancy.check(f"{w}.attribute_malignancy", attrs))
        for name in ("size", "malignancy"):
            model = getattr(self, name)
            if model is not None:
                object.__setattr__(self, name, model.check(f"{w}.{name}"))
        n = self.malignancy.n_lesions if self.malignancy is not None else 0
        number_in(self.n_malignant, f"{w}.n_malignant", low=0, high=n, integer=True, error=_E)
        number_in(self.c, f"{w}.c", low=0.0, high=1e6, low_open=True, error=_E)
        object.__setattr__(self, "c", float(self.c))
        number_in(self.size_iterations, f"{w}.size_iterations", low=1, high=10, integer=True, error=_E)
        object.__setattr__(self, "size_iterations", int(self.size_iterations))

    def _linear(self, model: LinearModel, features: NDArray[Any]) -> NDArray[np.float64]:
        return np.asarray(model.intercept + self.standardise(features) @ np.asarray(model.coef), dtype=np.float64)

    def diameter_mm(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """Measured diameters (mm, clipped to :data:`DIAMETER_RANGE_MM`) of ``(N, 16)`` descriptor rows.

        Raises:
            ValueError: the readout has no size model.
        """
        if self.size is None:
            raise ValueError("this readout has no size model")
        return np.clip(np.exp(self._linear(self.size, features)), *DIAMETER_RANGE_MM)

    def malignancy_prob(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """Malignancy probabilities of ``(N, 16)`` descriptor rows (overflow-safe sigmoid).

        Raises:
            ValueError: the readout has no malignancy model.
        """
        from scipy.special import expit

        if self.malignancy is None:
            raise ValueError("this readout has no malignancy model")
        return np.asarray(expit(self._linear(self.malignancy, features)), dtype=np.float64)

    def standardise(self, features: NDArray[Any]) -> NDArray[np.float64]:
        """``(N, 16)`` descriptor rows standardised with the training rows' mean and scale."""
        x = np.atleast_2d(np.asarray(features, dtype=np.float64))
        return np.asarray((x - np.asarray(self.mean)) / np.asarray(self.scale), dtype=np.float64)

    def attribute_probabilities(self, features: NDArray[Any]) -> dict[str, NDArray[np.float64]]:
        """Attribute name → ``(N, K)`` class probabilities of ``(N, 16)`` descriptor rows."""
        z = self.standardise(features)
        return {m.name: m.probabilities(z) for m in self.attributes}

    def attribute_malignancy_prob(self, features: NDArray[Any], diameter_mm: NDArray[Any]) -> NDArray[np.float64]:
        """Stage-2 malignancy probabilities of ``(N, 16)`` descriptor rows read around ``(N,)`` diameters (mm).

        Raises:
            ValueError: the readout has no attribute stage.
        """
        if self.attribute_malignancy is None:
            raise ValueError("this readout has no attribute malignancy model")
        x = attribute_inputs(self.attributes, self.standardise(features), np.log(np.asarray(diameter_mm, dtype=np.float64)))
        return self.attribute_malignancy.probability(x)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"features": list(self.features), "mean": list(self.mean), "scale": list(self.scale),
                "size": self.size.to_dict() if self.size is not None else None,
                "malignancy": self.malignancy.to_dict() if self.malignancy is not None else None,
                "n_malignant": self.n_malignant, "c": self.c,
                "attributes": [m.to_dict() for m in self.attributes],
                "attribute_malignancy": (self.attribute_malignancy.to_dict()
                                         if self.attribute_malignancy is not None else None),
                "size_iterations": self.size_iterations}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LesionReadout:
        """Inverse of :meth:`to_dict`.

        Raises:
            CheckpointError: unknown or missing key, wrong type, out of range.
        """
        w = "lesion_readout"
        expect_type(data, Mapping, w, error=_E)
        names = ["features", "mean", "scale", "size", "malignancy", "n_malignant", "c", "attributes",
                 "attribute_malignancy", "size_iterations"]
        check_keys(data, names, w, required=["features", "mean", "scale"], error=_E)
        d = dict(data)
        for name in ("size", "malignancy"):
            d[name] = None if d.get(name) is None else LinearModel.from_dict(d[name], f"{w}.{name}")
        raw = expect_type(d.get("attributes") or [], (list, tuple), f"{w}.attributes", error=_E)
        d["attributes"] = tuple(AttributeModel.from_dict(m, f"{w}.attributes[{i}]", len(FEATURES))
                                for i, m in enumerate(raw))
        stacked = d.get("attribute_malignancy")
        d["attribute_malignancy"] = (None if stacked is None else
                                     AttributeMalignancy.from_dict(stacked, f"{w}.attribute_malignancy", d["attributes"]))
        return cls(**d)


def _rows(images: Mapping[str, tuple[NDArray[Any], Any]], lesions: Sequence[Any], scales: Sequence[float]) -> NDArray[np.float64]:
    return np.stack([lesion_features(*images[les.seriesuid], les.center_lps, les.diameter_mm * s)
                     for les, s in zip(lesions, scales)])


def _attribute_values(lesions: Sequence[Any], columns: Sequence[str]) -> dict[str, list[Any]]:
    """Column → one recorded value per lesion (``None`` where the lesion lacks it); columns no lesion has dropped."""
    values = {c: [les.extra.get(c) if isinstance(les.extra, Mapping) else None for les in lesions] for c in columns}
    return {c: v for c, v in values.items() if any(x not in (None, "") for x in v)}


def fit_readout(
    images: Mapping[str, tuple[NDArray[Any], Any]], lesions: Sequence[Any], *, size: bool = True,
    malignancy: bool = True, c: float = DEFAULT_C, seed: int = 0, attributes: Sequence[str] = ATTRIBUTE_COLUMNS,
    size_iterations: int = SIZE_ITERATIONS,
) -> LesionReadout:
    """Fit the readout on training lesions (annotated centres and diameters).

    Args:
        images: scan id → ``(hu (I, J, K) or (1, I, J, K), affine_ras 4×4)``.
        lesions: :class:`~medmtl.io.types.Lesion` records; those of scans not in ``images`` are
            skipped; the malignancy fit uses those with a label (thresholded at 0.5).
        size: fit the size model.
        malignancy: fit the malignancy model (direct, and the two-stage attribute model when the
            lesions record any of ``attributes`` in ``Lesion.extra``).
        c: L2 strength of the malignancy fits (scikit-learn ``C``, > 0).
        seed: seed of the size guesses' perturbation and of the cross-fitting folds.
        attributes: ``annotations.csv`` columns read as categorical attributes (``()``: direct model only).
        size_iterations: applications of the size model at prediction (:data:`SIZE_ITERATIONS`).

    Returns:
        The fitted :class:`LesionReadout`.

    Raises:
        ConfigError: neither model asked for; fewer than :data:`MIN_LESIONS` lesions for the size
            fit, or labelled lesions of either class for the malignancy fit.
    """
    from sklearn.linear_model import HuberRegressor, LogisticRegression

    if not (size or malignancy):
        raise ConfigError("fit_readout needs size=True or malignancy=True")
    usable = [les for les in lesions if les.seriesuid in images]
    labelled = [les for les in usable if les.malignancy is not None]
    y = np.asarray([int(float(les.malignancy) >= 0.5) for les in labelled], dtype=np.int64)
    n_pos = int(y.sum())
    if malignancy and min(n_pos, len(y) - n_pos) < MIN_LESIONS:
        raise ConfigError(
            f"the malignancy readout needs >= {MIN_LESIONS} labelled malignant and benign training lesions, got "
            f"{n_pos} malignant and {len(y) - n_pos} benign; label more lesions or set decode.malignancy: head"
        )
    if size and len(usable) < MIN_LESIONS:
        raise ConfigError(f"the size readout needs >= {MIN_LESIONS} training lesions, got {len(usable)}; "
                          "annotate more lesions or set decode.size: head")
    attr_values = _attribute_values(usable, attributes) if malignancy else {}
    rng = np.random.default_rng(seed)
    exact = _rows(images, usable, [1.0] * len(usable))
    factors = [np.exp(rng.normal(0.0, SIZE_GUESS_NOISE, len(usable))) for _ in range(SIZE_DRAWS)]
    guessed = [_rows(images, usable, f.tolist()) for f in factors] if (size or attr_values) else []
    stacked = np.concatenate([exact, *guessed])
    mean = stacked.mean(axis=0)
    scale = stacked.std(axis=0)
    scale[scale < 1e-8] = 1.0
    size_model = malig_model = None
    if size:
        x = (np.concatenate(guessed) - mean) / scale
        x[:, 0] = 0.0  # the guess itself is left out: the model measures, it does not echo the network
        target = np.log(np.tile([les.diameter_mm for les in usable], SIZE_DRAWS))
        reg = HuberRegressor(max_iter=2000).fit(x, target)
        coef = np.asarray(reg.coef_, dtype=np.float64)
        coef[0] = 0.0
        size_model = LinearModel(tuple(coef), float(reg.intercept_), len(usable))
    if malignancy:
        rows = np.stack([_malignancy_row(*images[les.seriesuid], les.center_lps, les.diameter_mm) for les in labelled])
        clf = LogisticRegression(C=c, max_iter=5000).fit((rows - mean) / scale, y)
        malig_model = LinearModel(tuple(clf.coef_[0]), float(clf.intercept_[0]), len(y))
    readout = LesionReadout(features=FEATURES, mean=tuple(mean), scale=tuple(scale), size=size_model,
                            malignancy=malig_model, n_malignant=n_pos if malignancy else 0, c=c,
                            size_iterations=size_iterations)
    if not attr_values:
        return readout
    return _with_attribute_stage(readout, images, usable, factors, attr_values, rng, c=c, seed=seed)


def _with_attribute_stage(readout: LesionReadout, images: Mapping[str, tuple[NDArray[Any], Any]],
                          usable: Sequence[Any], factors: Sequence[NDArray[Any]], attr_values: Mapping[str, list[Any]],
                          rng: np.random.Generator, *, c: float, seed: int) -> LesionReadout:
    """``readout`` with the two-stage attribute malignancy model fitted (unchanged when it cannot be)."""
    # Stage 1 + 2 on the descriptors read where prediction will read them: around the size the
    # readout reports for a perturbed guess (a network-like size error), from a centre moved
    # as far as a detection's is (one row per draw) — so stage 2 is calibrated for detections.
    true_d = np.array([les.diameter_mm for les in usable])
    measured, at_measured = [], []
    for f in factors:
        reads = [(*images[les.seriesuid], tuple(np.asarray(les.center_lps) + rng.normal(0.0, CENTRE_JITTER_MM, 3)))
                 for les in usable]
        measured.append(_readout_diameters(readout, reads, (f * true_d).tolist(), _read_rows(reads, f * true_d)))
        at_measured.append(_read_rows(reads, measured[-1]))
    index = np.tile(np.arange(len(usable)), SIZE_DRAWS)
    labels = {i: int(float(les.malignancy) >= 0.5) for i, les in enumerate(usable) if les.malignancy is not None}
    models, stage2 = fit_attribute_malignancy(readout.standardise(np.concatenate(at_measured)), np.log(np.concatenate(measured)),
                                              index, attr_values, labels, c=c, seed=seed)
    if stage2 is None:
        logger.info("lesion readout: no attribute of %s has enough lesions per class; direct model", list(attr_values))
    return readout if stage2 is None else dataclasses.replace(readout, attributes=models, attribute_malignancy=stage2)


def _readout_diameters(readout: LesionReadout, reads: Sequence[tuple[NDArray[Any], Any, Sequence[float]]],
                       guesses_mm: Sequence[float], first: NDArray[Any]) -> NDArray[np.float64]:
    """Diameters (mm) the readout reports: its size model on ``first``, else the self-measured size.

    Args:
        readout: the readout.
        reads: one ``(hu, affine_ras, centre_lps)`` per lesion.
        guesses_mm: the size guesses (mm), one per lesion.
        first: ``(N, 16)`` descriptors already read at those guesses.
    """
    if readout.size is not None:
        return measured_diameters(readout, reads, first)
    return np.array([self_measured_diameter(hu, aff, c, g, first_features=row)
                     for (hu, aff, c), g, row in zip(reads, guesses_mm, first)])


def measured_diameters(readout: LesionReadout, reads: Sequence[tuple[NDArray[Any], Any, Sequence[float]]],
                       first: NDArray[Any]) -> NDArray[np.float64]:
    """The size model applied ``readout.size_iterations`` times (mm).

    Args:
        readout: a readout with a size model.
        reads: one ``(hu, affine_ras, centre_lps)`` per lesion.
        first: ``(N, 16)`` descriptors read around the lesions' guesses.

    Returns:
        ``(N,)`` diameters (mm), within :data:`DIAMETER_RANGE_MM`.
    """
    sizes = readout.diameter_mm(first)
    for _ in range(readout.size_iterations - 1):
        sizes = readout.diameter_mm(_read_rows(reads, sizes))
    return sizes


def _read_rows(reads: Sequence[tuple[NDArray[Any], Any, Sequence[float]]], diameters_mm: Any) -> NDArray[np.float64]:
    """``(N, 16)`` descriptors, one row per ``(hu, affine_ras, centre_lps)`` read around its diameter (mm)."""
    return np.stack([lesion_features(hu, aff, c, float(d)) for (hu, aff, c), d in zip(reads, diameters_mm)])


def readout_for_training(
    train_items: Sequence[Mapping[str, Any]], *, modality: str, size: str, malignancy: str, seed: int
) -> LesionReadout | None:
    """The readout a training run stores in its card (``decode.size`` / ``decode.malignancy``).

    Fitted on the labelled lesions of the training split only (annotated centres and diameters,
    the raw HU scans), so validation stays unseen. ``features`` with too few labels fails, before
    any training step; ``auto`` then keeps that head and logs why; MR data keeps the heads.

    Args:
        train_items: the training split's items (``image`` (1, I, J, K) HU MetaTensor with its RAS
            affine, ``lesions``, ``labelled`` flags, ``scan_id``), as
            :func:`medmtl.data.dataset.load_training_data` builds them.
        modality: ``CT`` or ``MR``.
        size, malignancy: ``auto``, ``features`` or ``head``.
        seed: the run's seed (perturbation of the size guesses).

    Returns:
        The readout, or ``None`` when both heads are kept.

    Raises:
        ConfigError: ``features`` asked for without enough (labelled) training lesions.
    """
    modes = {"size": size, "malignancy": malignancy}
    if modality != "CT":
        if "auto" in modes.values():
            logger.info("decode size/malignancy auto: %s scans, so the heads (the readout reads HU)", modality)
        return None
    lesions = [les for it in train_items for les, flag in zip(it["lesions"], it["labelled"]) if flag]
    labels = [float(les.malignancy) >= 0.5 for les in lesions if les.malignancy is not None]
    enough = {"size": len(lesions) >= MIN_LESIONS,
              "malignancy": min(sum(labels), len(labels) - sum(labels)) >= MIN_LESIONS}
    want = {}
    for key, mode in modes.items():
        want[key] = mode == "features" or (mode == "auto" and enough[key])
        if mode == "auto" and not enough[key]:
            logger.warning("decode.%s auto: the head's %s (%d labelled training lesions, %d malignant: too few for "
                           "the readout, which needs >= %d%s)", key, key, len(lesions), sum(labels), MIN_LESIONS,
                           " of each class" if key == "malignancy" else "")
    if not any(want.values()):
        return None
    images = {str(it["scan_id"]): (it["image"].detach().cpu().numpy(), np.asarray(it["image"].affine))
              for it in train_items}
    readout = fit_readout(images, lesions, size=want["size"], malignancy=want["malignancy"], seed=seed)
    malig = "head"
    if readout.attribute_malignancy is not None:
        malig = "attributes (" + ", ".join(m.name for m in readout.attributes) + ") then malignancy"
    elif readout.malignancy is not None:
        malig = "features"
    logger.info("lesion readout fitted on %d training lesions: size %s, malignancy %s (%d malignant)", len(lesions),
                "features" if readout.size else "head", malig, readout.n_malignant)
    return readout


def score_detections(readout: LesionReadout, hu: NDArray[Any], affine_ras: Any, detections: Sequence[Any]) -> list[Any]:
    """The detections re-measured by the readout at their centres.

    The size model re-measures each diameter from the descriptors around the network's diameter.
    With an attribute stage, malignancy is stage 2 of the attribute probabilities of the
    descriptors read around the readout's diameter (the size model's, else the self-measured
    size); without one, the direct model scores the descriptors around the self-measured size
    started from the network's diameter (:func:`self_measured_diameter`).

    Args:
        readout: the fitted readout.
        hu: ``(I, J, K)`` / ``(1, I, J, K)`` HU image of the scan (its own grid).
        affine_ras: 4×4 voxel → RAS affine of ``hu``.
        detections: :class:`~medmtl.io.types.Detection` records (LPS mm).

    Returns:
        New detections, same order; only ``diameter_mm`` (with a size model) and
        ``malignancy_prob`` (with a malignancy model) changed.
    """
    out = list(detections)
    if not out:
        return []
    # one read at each detection's (clipped) diameter serves the size model and the first
    # self-measurement of the malignancy descriptors
    guesses = [float(np.clip(d.diameter_mm, *DIAMETER_RANGE_MM)) for d in out]
    first = [lesion_features(hu, affine_ras, d.center_lps, g) for d, g in zip(out, guesses)]
    reads = [(hu, affine_ras, d.center_lps) for d in out]
    sizes = measured_diameters(readout, reads, np.stack(first)) if readout.size is not None else None
    if readout.attribute_malignancy is not None:
        diam = sizes if sizes is not None else _readout_diameters(readout, reads, guesses, np.stack(first))
        x = np.stack([lesion_features(hu, affine_ras, d.center_lps, float(v)) for d, v in zip(out, diam)])
        probs = readout.attribute_malignancy_prob(x, diam)
        out = [dataclasses.replace(d, malignancy_prob=float(p)) for d, p in zip(out, probs)]
    elif readout.malignancy is not None:
        x = np.stack([_malignancy_row(hu, affine_ras, d.center_lps, g, f) for d, g, f in zip(out, guesses, first)])
        out = [dataclasses.replace(d, malignancy_prob=float(p)) for d, p in zip(out, readout.malignancy_prob(x))]
    if sizes is not None:
        out = [dataclasses.replace(d, diameter_mm=float(v)) for d, v in zip(out, sizes)]
    return out
