"""Two-stage malignancy readout: the lesion's semantic attributes first, malignancy from them and its size.

Why (bench/RESULTS.md, issue #17): a logistic model of malignancy straight on the HU
descriptors of :mod:`medmtl.engine.lesion_readout` learns from Bernoulli labels of a few hundred
training lesions (p mostly 0.2–0.8), so it sees the attributes that drive malignancy — margin,
texture, calcification — only through a coin flip, and stopped at AUC ≈ 0.66 against a Bayes AUC of
0.79 on 312 held-out phantom lesions. The attributes themselves are recorded for every training
lesion, as radiologists record them in LIDC-IDRI (margin, spiculation, lobulation, texture,
calcification) and as clinical risk models score them (McWilliams et al., NEJM 2013: size, type,
spiculation). They are *deterministic* functions of the image, so a classifier learns them from the
same lesions far better than it learns the noisy label. This module:

* :func:`fit_attribute_models` — one L2 (multinomial) logistic regression per attribute column on
  the standardised descriptors (stage 1);
* :func:`fit_attribute_malignancy` — stage 2, an L2 logistic regression of the malignancy label on
  ``log d`` and the stage-1 class probabilities. Its training inputs are **cross-fitted**
  (each lesion's attribute probabilities come from stage-1 models that did not see it, lesion-grouped
  folds), so stage 2 learns how much to trust stage 1 on unseen lesions, not on memorised ones;
* :class:`AttributeModel` / :class:`AttributeMalignancy` — the fitted records the model card stores
  inside ``lesion_readout``.

scikit-learn does every fit. The inputs stay few (1 + Σ (classes − 1) = 6 for the phantoms), so the
stage-2 model cannot memorise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import CheckpointError
from medmtl.records import check_keys, expect_type, number_in, number_list

__all__ = ["ATTRIBUTE_COLUMNS", "MIN_CLASS_LESIONS", "AttributeMalignancy", "AttributeModel", "attribute_inputs",
           "fit_attribute_malignancy", "fit_attribute_models", "input_names"]

#: ``annotations.csv`` columns read as categorical lesion attributes (those a training set lacks are skipped).
ATTRIBUTE_COLUMNS: tuple[str, ...] = ("margin", "texture", "calcification")
#: Fewest training lesions a class of an attribute needs to be modelled (rarer classes are left out).
MIN_CLASS_LESIONS = 5
#: Lesion-grouped folds of the stage-2 cross-fitting.
CROSS_FIT_FOLDS = 5
_E = CheckpointError


def _floats(values: Any, where: str, n: int) -> tuple[float, ...]:
    return number_list(values, where, n, error=_E)


@dataclass(frozen=True)
class AttributeModel:
    """Softmax classifier of one attribute on the standardised descriptors ``z`` of the readout.

    Attributes:
        name: the ``annotations.csv`` column (e.g. ``margin``).
        classes: its values, sorted; ``classes[0]`` is the reference level of the stage-2 inputs.
        coef: ``(K, F)`` — one row per class over the ``F`` descriptors.
        intercept: ``(K,)``.
        n_lesions: lesions of the fit.
    """

    name: str
    classes: tuple[str, ...]
    coef: tuple[tuple[float, ...], ...]
    intercept: tuple[float, ...]
    n_lesions: int

    def check(self, where: str, n_features: int) -> AttributeModel:
        """This model with its values validated (``where`` names it in errors)."""
        expect_type(self.name, str, f"{where}.name", error=_E)
        expect_type(self.classes, (list, tuple), f"{where}.classes", error=_E)
        classes = tuple(str(expect_type(c, str, f"{where}.classes", error=_E)) for c in self.classes)
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise _E(f"{where}.classes = {list(classes)} must hold >= 2 distinct values")
        expect_type(self.coef, (list, tuple), f"{where}.coef", error=_E)
        if len(self.coef) != len(classes):
            raise _E(f"{where}.coef has {len(self.coef)} rows; expected {len(classes)} (one per class)")
        coef = tuple(_floats(row, f"{where}.coef[{k}]", n_features) for k, row in enumerate(self.coef))
        intercept = _floats(self.intercept, f"{where}.intercept", len(classes))
        number_in(self.n_lesions, f"{where}.n_lesions", low=1, integer=True, error=_E)
        return AttributeModel(self.name, classes, coef, intercept, int(self.n_lesions))

    def probabilities(self, z: NDArray[Any]) -> NDArray[np.float64]:
        """``(N, K)`` class probabilities of ``(N, F)`` standardised descriptor rows."""
        from scipy.special import softmax

        logits = np.atleast_2d(np.asarray(z, dtype=np.float64)) @ np.asarray(self.coef).T + np.asarray(self.intercept)
        return np.asarray(softmax(logits, axis=1), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"name": self.name, "classes": list(self.classes), "coef": [list(r) for r in self.coef],
                "intercept": list(self.intercept), "n_lesions": self.n_lesions}

    @classmethod
    def from_dict(cls, data: Any, where: str, n_features: int) -> AttributeModel:
        """Inverse of :meth:`to_dict`."""
        keys = ["name", "classes", "coef", "intercept", "n_lesions"]
        expect_type(data, Mapping, where, error=_E)
        check_keys(data, keys, where, required=keys, error=_E)
        return cls(data["name"], data["classes"], data["coef"], data["intercept"], data["n_lesions"]).check(
            where, n_features)


def input_names(models: Sequence[AttributeModel]) -> tuple[str, ...]:
    """Names of the stage-2 inputs: ``log_diameter``, then ``<attribute>=<class>`` for every non-reference class."""
    return ("log_diameter", *(f"{m.name}={c}" for m in models for c in m.classes[1:]))


def attribute_inputs(models: Sequence[AttributeModel], z: NDArray[Any], log_diameter: NDArray[Any]) -> NDArray[np.float64]:
    """``(N, 1 + Σ (K − 1))`` stage-2 inputs: ``log d`` (log mm) and the non-reference class probabilities."""
    cols = [np.asarray(log_diameter, dtype=np.float64).reshape(-1, 1)]
    cols += [m.probabilities(z)[:, 1:] for m in models]
    return np.concatenate(cols, axis=1)


@dataclass(frozen=True)
class AttributeMalignancy:
    """Stage 2: ``sigmoid(intercept + Σ coef_i · (x_i − mean_i) / scale_i)`` on :func:`attribute_inputs`.

    Attributes:
        inputs: names of the inputs (must equal :func:`input_names` of the readout's attribute models).
        mean, scale: standardisation of each input (scale > 0).
        coef: one coefficient per input.
        intercept: the constant.
        n_lesions: labelled lesions of the fit.
        n_malignant: malignant lesions among them.
    """

    inputs: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    n_lesions: int
    n_malignant: int

    def check(self, where: str, models: Sequence[AttributeModel]) -> AttributeMalignancy:
        """This model validated against the attribute models it reads."""
        expect_type(self.inputs, (list, tuple), f"{where}.inputs", error=_E)
        names = input_names(models)
        if tuple(self.inputs) != names:
            raise _E(f"{where}.inputs {list(self.inputs)} do not match the attribute models' {list(names)}")
        n = len(names)
        scale = _floats(self.scale, f"{where}.scale", n)
        if any(s <= 0 for s in scale):
            raise _E(f"{where}.scale must be > 0 for every input, got {list(scale)}")
        number_in(self.intercept, f"{where}.intercept", low=-1e6, high=1e6, error=_E)
        number_in(self.n_lesions, f"{where}.n_lesions", low=1, integer=True, error=_E)
        number_in(self.n_malignant, f"{where}.n_malignant", low=0, high=self.n_lesions, integer=True, error=_E)
        return AttributeMalignancy(names, _floats(self.mean, f"{where}.mean", n), scale,
                                   _floats(self.coef, f"{where}.coef", n), float(self.intercept),
                                   int(self.n_lesions), int(self.n_malignant))

    def probability(self, inputs: NDArray[Any]) -> NDArray[np.float64]:
        """Malignancy probabilities of ``(N, len(inputs))`` rows of :func:`attribute_inputs`."""
        from scipy.special import expit

        x = (np.atleast_2d(np.asarray(inputs, dtype=np.float64)) - np.asarray(self.mean)) / np.asarray(self.scale)
        return np.asarray(expit(self.intercept + x @ np.asarray(self.coef)), dtype=np.float64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict."""
        return {"inputs": list(self.inputs), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept, "n_lesions": self.n_lesions,
                "n_malignant": self.n_malignant}

    @classmethod
    def from_dict(cls, data: Any, where: str, models: Sequence[AttributeModel]) -> AttributeMalignancy:
        """Inverse of :meth:`to_dict`."""
        keys = ["inputs", "mean", "scale", "coef", "intercept", "n_lesions", "n_malignant"]
        expect_type(data, Mapping, where, error=_E)
        check_keys(data, keys, where, required=keys, error=_E)
        return cls(**{k: data[k] for k in keys}).check(where, models)


def _classifier(z: NDArray[Any], labels: Sequence[str], c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=5000).fit(z, labels)


def _as_model(name: str, clf: Any, n_lesions: int) -> AttributeModel:
    classes = tuple(str(v) for v in clf.classes_)
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.asarray(clf.intercept_, dtype=np.float64)
    if len(classes) == 2:  # scikit-learn keeps one row for two classes: softmax([0, w·z + b]) = sigmoid(w·z + b)
        coef = np.stack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.array([0.0, intercept[0]])
    return AttributeModel(name, classes, tuple(tuple(r) for r in coef), tuple(intercept), n_lesions)


def usable_labels(values: Sequence[Any]) -> list[str | None]:
    """Attribute values as strings, ``None`` for missing ones and for classes with < :data:`MIN_CLASS_LESIONS` lesions."""
    text = [None if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "" else str(v).strip()
            for v in values]
    counts: dict[str, int] = {}
    for v in text:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    return [v if v is not None and counts[v] >= MIN_CLASS_LESIONS else None for v in text]


def fit_attribute_models(
    z: NDArray[Any], lesion_index: NDArray[Any], attributes: Mapping[str, Sequence[Any]], *, c: float = 1.0,
) -> tuple[AttributeModel, ...]:
    """Stage 1: one classifier per attribute with >= 2 usable classes.

    Args:
        z: ``(R, F)`` standardised descriptor rows (several rows per lesion allowed).
        lesion_index: ``(R,)`` lesion of each row (an index into the attribute value lists).
        attributes: column name → one value per lesion (``None`` or empty when not recorded).
        c: L2 strength (scikit-learn ``C``).

    Returns:
        The fitted models, in the order of ``attributes`` (attributes with < 2 usable classes left out).
    """
    models = []
    idx = np.asarray(lesion_index, dtype=np.int64)
    for name, values in attributes.items():
        labels = usable_labels(values)
        if len({v for v in labels if v is not None}) < 2:
            continue
        keep = np.array([labels[i] is not None for i in idx])
        clf = _classifier(np.asarray(z)[keep], [str(labels[i]) for i in idx[keep]], c)
        models.append(_as_model(name, clf, int(sum(v is not None for v in labels))))
    return tuple(models)


def fit_attribute_malignancy(
    z: NDArray[Any], log_diameter: NDArray[Any], lesion_index: NDArray[Any], attributes: Mapping[str, Sequence[Any]],
    malignant: Mapping[int, int], *, c: float = 1.0, seed: int = 0,
) -> tuple[tuple[AttributeModel, ...], AttributeMalignancy | None]:
    """Both stages; stage 2 on cross-fitted stage-1 probabilities.

    Args:
        z: ``(R, F)`` standardised descriptor rows, read around the size the readout will have
            at prediction (several rows per lesion: perturbed size guesses).
        log_diameter: ``(R,)`` log of that size (log mm).
        lesion_index: ``(R,)`` lesion of each row.
        attributes: column name → one value per lesion.
        malignant: lesion index → 0/1 label, for the labelled lesions.
        c: L2 strength of every fit.
        seed: seed of the fold assignment.

    Returns:
        The stage-1 models fitted on every lesion, and the stage-2 model (``None`` when no
        attribute has two usable classes).
    """
    from sklearn.linear_model import LogisticRegression

    idx = np.asarray(lesion_index, dtype=np.int64)
    models = fit_attribute_models(z, idx, attributes, c=c)
    if not models:
        return models, None
    n_lesions = int(idx.max()) + 1
    folds = np.random.default_rng(seed).permutation(n_lesions) % CROSS_FIT_FOLDS
    oof = np.zeros((len(idx), len(input_names(models))), dtype=np.float64)
    for k in range(CROSS_FIT_FOLDS):
        test = folds[idx] == k
        if not test.any():
            continue
        inner = fit_attribute_models(z[~test], idx[~test], {m.name: attributes[m.name] for m in models}, c=c)
        # a class absent from the inner fit would change the input layout: fall back to the full model
        by_name = {m.name: m for m in inner}
        use = [by_name[m.name] if m.name in by_name and by_name[m.name].classes == m.classes else m for m in models]
        oof[test] = attribute_inputs(use, z[test], log_diameter[test])
    rows = np.array([i in malignant for i in idx])
    y = np.array([malignant[i] for i in idx[rows]], dtype=np.int64)
    x = oof[rows]
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale < 1e-8] = 1.0
    per_lesion = np.bincount(idx[rows], minlength=n_lesions)[idx[rows]]
    clf = LogisticRegression(C=c, max_iter=5000).fit((x - mean) / scale, y, sample_weight=1.0 / per_lesion)
    labelled = sorted(malignant)
    stacked = AttributeMalignancy(input_names(models), tuple(mean), tuple(scale), tuple(clf.coef_[0]),
                                  float(clf.intercept_[0]), len(labelled), int(sum(malignant[i] for i in labelled)))
    return models, stacked
