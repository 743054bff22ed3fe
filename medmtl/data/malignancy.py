"""The known malignancy model of the phantoms, its label noise and the Bayes-optimal AUC.

Every generated lesion gets attributes (diameter, margin, texture, calcification). Its
malignancy label is drawn from a *documented* logistic model of those attributes, then
flipped with a small label-noise probability, exactly like a noisy clinical reference
standard. Because the model is known, the Bayes-optimal probability of the *recorded*
label is known for every lesion (``bayes_malignancy_prob`` in ``annotations.csv``), and so
is the best AUC any classifier can reach on a set (:func:`bayes_auc`).

Model (per lesion)::

    logit = b0 + b_size * ln(d / d_ref) + b_margin[margin] + b_texture[texture] + b_calc[calc]
    p_clean = sigmoid(logit)
    y_clean ~ Bernoulli(p_clean)
    y = 1 - y_clean with probability label_noise, else y_clean
    bayes_malignancy_prob = P(y = 1 | attributes) = label_noise + (1 - 2 * label_noise) * p_clean

The recorded probability is a strictly increasing function of ``p_clean``, so ranking by
either gives the same AUC; the recorded one is also *calibrated* for the noisy labels.
The coefficients follow the direction of clinical nodule-risk models (larger, spiculated,
part-solid lesions are more often malignant; calcified ones rarely are; McWilliams et al.,
"Probability of cancer in pulmonary nodules detected on first screening CT", NEJM 2013).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

MARGINS: tuple[str, ...] = ("smooth", "lobulated", "spiculated")
"""Allowed lesion margins."""

CT_TEXTURES: tuple[str, ...] = ("solid", "part-solid", "ground-glass")
"""Allowed CT nodule textures."""

MRI_TEXTURES: tuple[str, ...] = ("solid", "necrotic", "cystic")
"""Allowed MRI tumour textures."""

CALCIFICATIONS: tuple[str, ...] = ("none", "calcified")
"""Allowed calcification states."""


@dataclass(frozen=True)
class MalignancyModel:
    """Coefficients of the logistic malignancy model (see the module docstring).

    Attributes:
        b0: intercept (logit of a smooth, solid, non-calcified lesion of diameter ``d_ref``).
        b_size: logit change per unit of ``ln(d / d_ref)`` (``d`` in mm).
        d_ref_mm: reference diameter, mm.
        b_margin: logit offset per margin.
        b_texture: logit offset per texture.
        b_calc: logit offset per calcification state.
        label_noise: probability that a drawn label is flipped, in [0, 0.5).
    """

    b0: float
    b_size: float
    d_ref_mm: float
    b_margin: Mapping[str, float] = field(default_factory=dict)
    b_texture: Mapping[str, float] = field(default_factory=dict)
    b_calc: Mapping[str, float] = field(default_factory=dict)
    label_noise: float = 0.05

    def logit(self, diameter_mm: float, margin: str, texture: str, calcification: str) -> float:
        """Clean-label logit of one lesion (diameter in mm; categories as in the mappings)."""
        return (
            self.b0
            + self.b_size * math.log(diameter_mm / self.d_ref_mm)
            + self.b_margin[margin]
            + self.b_texture[texture]
            + self.b_calc[calcification]
        )

    def clean_probability(self, diameter_mm: float, margin: str, texture: str, calcification: str) -> float:
        """``sigmoid(logit)``: probability of malignancy before label noise."""
        return 1.0 / (1.0 + math.exp(-self.logit(diameter_mm, margin, texture, calcification)))

    def bayes_probability(self, diameter_mm: float, margin: str, texture: str, calcification: str) -> float:
        """Bayes-optimal (calibrated) probability that the *recorded* (noisy) label is 1."""
        p = self.clean_probability(diameter_mm, margin, texture, calcification)
        return self.label_noise + (1.0 - 2.0 * self.label_noise) * p

    def draw_label(
        self, rng: np.random.Generator, diameter_mm: float, margin: str, texture: str, calcification: str
    ) -> int:
        """Draw a clean label from the model, then flip it with probability ``label_noise``."""
        p = self.clean_probability(diameter_mm, margin, texture, calcification)
        y = int(rng.random() < p)
        if rng.random() < self.label_noise:
            y = 1 - y
        return y


CT_MALIGNANCY_MODEL = MalignancyModel(
    b0=-0.8,
    b_size=1.8,
    d_ref_mm=10.0,
    b_margin={"smooth": 0.0, "lobulated": 1.0, "spiculated": 2.0},
    b_texture={"solid": 0.0, "part-solid": 0.8, "ground-glass": -0.6},
    b_calc={"none": 0.0, "calcified": -3.0},
    label_noise=0.05,
)
"""Malignancy model of CT lung nodules.

``logit = -0.8 + 1.8 ln(d / 10 mm) + {smooth 0, lobulated +1.0, spiculated +2.0}
+ {solid 0, part-solid +0.8, ground-glass -0.6} + {none 0, calcified -3.0}``; 5 % label noise.
A smooth solid 10 mm nodule is malignant with p = 0.31; a spiculated part-solid 20 mm one
with p = 0.98; a calcified 6 mm one with p = 0.01.
"""

MRI_MALIGNANCY_MODEL = MalignancyModel(
    b0=-0.4,
    b_size=1.5,
    d_ref_mm=15.0,
    b_margin={"smooth": 0.0, "lobulated": 0.9, "spiculated": 1.8},
    b_texture={"solid": 0.0, "necrotic": 1.5, "cystic": -1.2},
    b_calc={"none": 0.0, "calcified": -1.5},
    label_noise=0.05,
)
"""Malignancy (high grade) model of MRI brain tumours.

``logit = -0.4 + 1.5 ln(d / 15 mm) + {smooth 0, lobulated +0.9, spiculated (infiltrative) +1.8}
+ {solid 0, necrotic +1.5, cystic -1.2} + {none 0, calcified -1.5}``; 5 % label noise.
"""


def auc(scores: Sequence[float], labels: Sequence[float]) -> float:
    """Area under the ROC curve (:func:`medmtl.metrics.auc`), ``nan`` when only one class is present.

    Args:
        scores: ``(N,)`` predicted scores.
        labels: ``(N,)`` 0/1 labels.
    """
    from medmtl.metrics import auc as _auc

    value = _auc(scores, labels)
    return float("nan") if value is None else value


def _labelled_pairs(rows: Sequence[Mapping[str, object]]) -> tuple[list[float], list[float]]:
    scores: list[float] = []
    labels: list[float] = []
    for row in rows:
        label = str(row.get("malignancy", "") or "").strip()
        if label == "":
            continue
        scores.append(float(str(row["bayes_malignancy_prob"])))
        labels.append(float(label))
    return scores, labels


def bayes_auc_interval(
    rows: Sequence[Mapping[str, object]], *, n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of :func:`bayes_auc` over the labelled lesions.

    On a small set the Bayes-optimal AUC itself varies widely (23 lesions: 0.60–0.94), so a
    model's malignancy AUC is only comparable with the Bayes AUC of the same lesions and
    this interval.

    Returns:
        ``(low, high)``; ``(nan, nan)`` when the set has only one class.
    """
    scores, labels = _labelled_pairs(rows)
    s, y = np.asarray(scores), np.asarray(labels)
    if len(set(labels)) < 2:
        return float("nan"), float("nan")
    # Not scipy.stats.bootstrap: its interval is NaN when any replicate draws one class (AUC undefined); those drop out here.
    rng = np.random.default_rng(seed)
    vals = [auc(s[i].tolist(), y[i].tolist()) for i in (rng.integers(0, len(s), len(s)) for _ in range(n_boot))]
    finite = np.asarray([v for v in vals if v == v])
    return float(np.quantile(finite, 0.025)), float(np.quantile(finite, 0.975))


def bayes_auc(rows: Sequence[Mapping[str, object]]) -> float:
    """Bayes-optimal AUC of an annotation table (the best AUC any model can reach on it).

    Args:
        rows: ``annotations.csv`` rows (e.g. from :class:`csv.DictReader`), with columns
            ``malignancy`` (``0``/``1`` or empty = unlabelled, skipped) and
            ``bayes_malignancy_prob``.

    Returns:
        AUC of ``bayes_malignancy_prob`` against the recorded labels, ``nan`` if one class.
    """
    return auc(*_labelled_pairs(rows))
