"""Two-sample tests between a source and a target cohort of feature vectors.

* **Kernel MMD** (Gretton et al., "A kernel two-sample test", JMLR 2012): the unbiased
  squared maximum mean discrepancy with a Gaussian kernel whose bandwidth is the median
  pairwise distance (median heuristic), and a permutation-test p-value.
* **Classifier two-sample test** (Lopez-Paz & Oquab, "Revisiting classifier two-sample
  tests", ICLR 2017): a logistic regression on standardised, PCA-reduced features separates
  source from target; its cross-validated held-out accuracy is the statistic and the p-value
  comes from re-running the same cross-validation on permuted cohort labels. The proxy
  A-distance ``2(1 − 2ε)`` (Ben-David et al., "A theory of learning from different domains",
  Machine Learning 2010) is reported with ``ε`` the held-out error, and the out-of-fold
  probability of "target" is each scan's "looks like target" score.

Both p-values are permutation p-values ``(1 + #{T_perm ≥ T_obs}) / (1 + n_perm)``, valid at
any sample size because cohort labels are exchangeable under the null hypothesis (all
preprocessing that sees the data — standardisation, PCA, the bandwidth — is computed on the
pooled sample without labels, so it is permutation-invariant). The smallest reachable p-value
is ``1 / (n_perm + 1)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medmtl.errors import ShiftError

FloatArray = NDArray[np.float64]

MIN_SCANS_MMD = 2
MIN_SCANS_CLASSIFIER = 3


def check_cohorts(n_source: int, n_target: int, *, test: str, minimum: int) -> None:
    """Raise :class:`ShiftError` when a cohort is too small for ``test``."""
    for name, n in (("source", n_source), ("target", n_target)):
        if n < minimum:
            raise ShiftError(
                f"the {name} cohort has {n} scan(s); the {test} needs at least {minimum} scans per "
                f"cohort; add scans to the {name} folder."
            )


def standardise(x: FloatArray) -> FloatArray:
    """Z-score each column of the pooled sample (constant columns → 0)."""
    mu = x.mean(axis=0)
    sd = x.std(axis=0)
    sd[sd < 1e-8] = 1.0
    return (x - mu) / sd


def pca_reduce(x: FloatArray, n_components: int) -> FloatArray:
    """Project the (already centred) pooled sample on its top principal components."""
    k = max(1, min(n_components, x.shape[0] - 1, x.shape[1]))
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    return xc @ vt[:k].T


def _sq_dists(z: FloatArray) -> FloatArray:
    sq = (z * z).sum(axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * z @ z.T
    return np.maximum(d, 0.0)


def median_bandwidth(z: FloatArray) -> float:
    """Median heuristic: the median of the pooled sample's pairwise Euclidean distances."""
    d = np.sqrt(_sq_dists(z))
    iu = np.triu_indices(z.shape[0], k=1)
    med = float(np.median(d[iu])) if iu[0].size else 1.0
    return med if med > 1e-12 else 1.0


def mmd2_unbiased(k: FloatArray, is_target: NDArray[np.bool_]) -> float:
    """Unbiased MMD² from a pooled kernel matrix and a boolean cohort mask."""
    a = ~is_target
    b = is_target
    m, n = int(a.sum()), int(b.sum())
    kxx = k[np.ix_(a, a)]
    kyy = k[np.ix_(b, b)]
    kxy = k[np.ix_(a, b)]
    sxx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    syy = (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
    return float(sxx + syy - 2.0 * kxy.mean())


def mmd_test(
    source: ArrayLike,
    target: ArrayLike,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    n_components: int | None = None,
) -> dict[str, Any]:
    """Kernel MMD two-sample test with a permutation p-value (Gretton et al. 2012).

    Args:
        source: ``(m, F)`` source features (one row per scan).
        target: ``(n, F)`` target features.
        n_permutations: label permutations for the p-value (≥ 200 to reach p < 0.01).
        seed: random seed of the permutations.
        n_components: optional PCA reduction of the standardised pooled features.

    Returns:
        ``{"test": "mmd", "statistic": MMD², "p_value", "bandwidth", "n_permutations",
        "n_source", "n_target"}``.

    Raises:
        ShiftError: a cohort has fewer than 2 scans.
    """
    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    check_cohorts(len(x), len(y), test="MMD test", minimum=MIN_SCANS_MMD)
    z = standardise(np.concatenate([x, y]))
    if n_components is not None:
        z = pca_reduce(z, n_components)
    bw = median_bandwidth(z)
    k = np.exp(-_sq_dists(z) / (2.0 * bw * bw))
    labels = np.zeros(len(z), dtype=bool)
    labels[len(x):] = True
    observed = mmd2_unbiased(k, labels)
    # Not scipy.stats.permutation_test: it permutes the samples, not this label vector over the precomputed pooled kernel; wrapped, it would re-index the kernel per draw and be no shorter.
    rng = np.random.default_rng(seed)
    count = 0
    for _ in range(n_permutations):
        perm = rng.permutation(labels)
        if mmd2_unbiased(k, perm) >= observed - 1e-12:
            count += 1
    return {
        "test": "mmd",
        "statistic": observed,
        "p_value": (1 + count) / (1 + n_permutations),
        "bandwidth": bw,
        "n_permutations": n_permutations,
        "n_source": len(x),
        "n_target": len(y),
    }


def _cv_folds(labels: NDArray[np.int_], n_folds: int, rng: np.random.Generator) -> list[NDArray[np.int_]]:
    """Stratified fold assignment: each class's indices shuffled and dealt round-robin."""
    folds: list[list[int]] = [[] for _ in range(n_folds)]
    offset = 0
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        for i, j in enumerate(idx):
            folds[(i + offset) % n_folds].append(int(j))
        offset += len(idx)
    return [np.asarray(sorted(f), dtype=int) for f in folds if f]


def fit_logistic(z: FloatArray, y: FloatArray, c: float, n_iter: int = 30) -> FloatArray:
    """L2-regularised logistic regressions by Newton's method (IRLS), batched over label sets.

    Minimises ``Σ log(1 + exp(−ŷ·s)) + ‖w‖² / (2C)`` (the intercept is not penalised), the
    objective of scikit-learn's ``LogisticRegression(C=c)``, for every row of ``y`` at once —
    fast enough to refit for every permutation of a permutation test.

    Args:
        z: ``(n, d)`` features.
        y: ``(n,)`` or ``(P, n)`` 0/1 labels.
        c: inverse regularisation strength.
        n_iter: maximum Newton steps.

    Returns:
        ``(d + 1,)`` or ``(P, d + 1)`` weights, the intercept last.
    """
    single = y.ndim == 1
    yy = np.atleast_2d(y).astype(np.float64)
    n, d = z.shape
    x = np.concatenate([z, np.ones((n, 1))], axis=1)
    w = np.zeros((yy.shape[0], d + 1))
    reg = np.full(d + 1, 1.0 / c)
    reg[-1] = 1e-6
    for _ in range(n_iter):
        p = 1.0 / (1.0 + np.exp(-(w @ x.T)))  # (P, n)
        grad = (p - yy) @ x + reg * w  # (P, d+1)
        hess = np.einsum("pn,ni,nj->pij", p * (1 - p), x, x) + np.diag(reg)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        w -= step
        if float(np.abs(step).max()) < 1e-7:
            break
    return w[0] if single else w


def _oof_probabilities(
    z: FloatArray, labels: NDArray[np.int_], folds: list[NDArray[np.int_]], c: float
) -> FloatArray:
    """Out-of-fold P(target) of an L2 logistic regression, for each label set.

    Args:
        z: ``(n, d)`` features.
        labels: ``(P, n)`` label sets (the observed one and permutations).
        folds: held-out index sets covering ``0..n-1``.
        c: inverse regularisation strength.

    Returns:
        ``(P, n)`` out-of-fold probabilities.
    """
    prob = np.zeros(labels.shape, dtype=np.float64)
    all_idx = np.arange(z.shape[0])
    for test_idx in folds:
        train_idx = np.setdiff1d(all_idx, test_idx)
        w = fit_logistic(z[train_idx], labels[:, train_idx].astype(np.float64), c)
        prob[:, test_idx] = 1.0 / (1.0 + np.exp(-(w[:, :-1] @ z[test_idx].T + w[:, -1:])))
    return prob


def classifier_test(
    source: ArrayLike,
    target: ArrayLike,
    *,
    n_permutations: int = 1000,
    seed: int = 0,
    n_components: int = 4,
    n_folds: int | None = None,
    c: float = 0.3,
) -> dict[str, Any]:
    """Cross-validated domain-classifier two-sample test (Lopez-Paz & Oquab 2017).

    Features are standardised and reduced to ``n_components`` principal components on the
    pooled sample; a logistic regression (L2, ``C=c``, :func:`fit_logistic`) is cross-validated (leave-one-out for small cohorts); the statistic is the held-out accuracy (0.5 = indistinguishable). The p-value
    repeats the same folds with permuted labels.

    Args:
        source: ``(m, F)`` source features.
        target: ``(n, F)`` target features.
        n_permutations: label permutations for the p-value.
        seed: random seed (folds and permutations).
        n_components: PCA components kept (capped by the sample size).
        n_folds: stratified folds; ``None`` → leave-one-out up to 40 scans, else 5 folds.
        c: inverse L2 regularisation strength.

    Returns:
        ``{"test": "classifier", "statistic": accuracy, "accuracy", "p_value",
        "proxy_a_distance", "auc", "target_score_source", "target_score_target",
        "n_permutations", "n_source", "n_target"}`` — the two score lists are each scan's
        out-of-fold probability of being a target scan ("looks like target").

    Raises:
        ShiftError: a cohort has fewer than 3 scans.
    """
    from sklearn.metrics import roc_auc_score

    x = np.asarray(source, dtype=np.float64)
    y = np.asarray(target, dtype=np.float64)
    check_cohorts(len(x), len(y), test="domain-classifier test", minimum=MIN_SCANS_CLASSIFIER)
    z = pca_reduce(standardise(np.concatenate([x, y])), n_components)
    z = standardise(z)
    labels = np.concatenate([np.zeros(len(x), dtype=int), np.ones(len(y), dtype=int)])
    rng = np.random.default_rng(seed)
    if n_folds is None and len(labels) <= 40:
        folds = [np.array([i]) for i in range(len(labels))]
    else:
        folds = _cv_folds(labels, max(2, min(n_folds or 5, len(x), len(y))), rng)

    # Not scipy.stats.permutation_test: all relabellings are refitted in one batched IRLS solve over (P, n) label sets (fit_logistic), which its per-sample resampling cannot feed.
    label_sets = np.stack([labels] + [rng.permutation(labels) for _ in range(n_permutations)])
    probs = _oof_probabilities(z, label_sets, folds, c)
    accs = ((probs >= 0.5).astype(int) == label_sets).mean(axis=1)
    acc, prob = float(accs[0]), probs[0]
    count = int((accs[1:] >= acc - 1e-12).sum())
    err = 1.0 - acc
    return {
        "test": "classifier",
        "statistic": acc,
        "accuracy": acc,
        "p_value": (1 + count) / (1 + n_permutations),
        "proxy_a_distance": 2.0 * (1.0 - 2.0 * err),
        "auc": float(roc_auc_score(labels, prob)),
        "target_score_source": [float(v) for v in prob[: len(x)]],
        "target_score_target": [float(v) for v in prob[len(x):]],
        "n_permutations": n_permutations,
        "n_source": len(x),
        "n_target": len(y),
    }


def binomial_p_value(accuracy: float, n: int) -> float:
    """One-sided exact binomial p-value of ``accuracy`` on ``n`` held-out predictions under
    chance (0.5) — the cheap alternative to permutation suggested by Lopez-Paz & Oquab.
    Note: cross-validated predictions are not independent, so this is approximate."""
    from scipy.stats import binom

    k = int(round(accuracy * n))
    return float(binom.sf(k - 1, n, 0.5)) if n > 0 else 1.0


def fdr_verdict(p_values: list[float], alpha: float) -> bool:
    """Whether any of several p-values is significant after a Bonferroni correction."""
    return bool(p_values) and min(p_values) * len(p_values) < alpha


def minimum_p(n_permutations: int) -> float:
    """Smallest p-value a permutation test with ``n_permutations`` can report."""
    return 1.0 / (n_permutations + 1)


def is_finite(v: Any) -> bool:
    """``True`` for a finite real number."""
    return isinstance(v, (int, float)) and math.isfinite(float(v))
