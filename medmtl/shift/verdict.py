"""The one decision rule of ``medmtl diagnose`` and ``predict --adapt auto``, and its three verdicts.

**The rule.** The feature-level tests — the kernel MMD (Gretton et al. 2012) and, with at least
3 scans per side, the cross-validated domain classifier (Lopez-Paz & Oquab 2017) — are exact
permutation tests run on the *same* relabellings of the pooled scans. The verdict is *shift*
only when **every** test rejects at α: the combined p-value is the largest per-test p-value
(an intersection-union test, Berger 1982). Under "no shift" each test alone has level α, so
the false-alarm rate of the verdict is at most α whatever the dependence between the tests
— and in practice below it, because two tests must err together. This is deliberately more
conservative than the single-step min-P combination (Westfall & Young 1993), which an
earlier version used: min-P is exact at α, so its measured false-alarm rate sat on α
(0.038–0.059 at 6 and 8 scans per side in two calibration runs, ``bench/RESULTS.md``), and a site acting on a
verdict wants the stated α to be a ceiling, not the expected value. The price is power when
only one test sees a shift; on the project's site-B phantoms both tests see it (see the
calibration in ``bench/RESULTS.md``, which reports min-P and Holm beside this rule on the same
splits). When the number of distinct relabellings is at most ``n_permutations`` they are all
enumerated (an exact test); otherwise ``n_permutations`` random ones are drawn. Sizes at which
the smallest attainable p-value exceeds α are refused: the test could never say "shift".
Fingerprint rows (spacing, noise, HU percentiles …) are descriptive effect sizes, not tests.

**Three verdicts.**

* ``no_shift`` — the combined p-value (the largest per-test p-value) is above α.
* ``shift`` — the cohorts differ, but in what adaptation can address: the same modality, and
  the target's field of view and body content inside the source's range (acquisition
  differences: spacing, kernel, noise, HU calibration).
* ``outside_domain`` — another modality, or a shift whose domain classifier separates the
  cohorts completely (held-out AUC ≥ :data:`TOTAL_SEPARATION_AUC`) while at least half of
  the target scans have a field of view or body fraction outside the source's range
  (:func:`outside_range`). No label-free adaptation can bridge that: retrain or fine-tune
  with labels from the target domain.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from medmtl.errors import ShiftError

#: Family-wise error level of the verdict.
ALPHA = 0.05
#: A domain classifier whose held-out AUC reaches this separates the cohorts completely.
TOTAL_SEPARATION_AUC = 0.99
#: Fingerprint fields that describe the imaged domain (not the acquisition), and how far
#: outside the source's [min, max] a target value may lie: a factor for extents (mm), an
#: absolute margin for fractions. The coverage along the body axis (k) varies by protocol
#: within one body region (a 100 mm slab and a 160 mm whole-chest series of the same
#: thorax), so it gets a factor 2; the in-plane extents, which tell a head from a chest,
#: keep 1.5.
DOMAIN_FIELDS: dict[str, tuple[str, float]] = {
    "fov_i_mm": ("factor", 1.5),
    "fov_j_mm": ("factor", 1.5),
    "fov_k_mm": ("factor", 2.0),
    "body_fraction": ("margin", 0.2),
}
#: Share of target scans outside the source's domain range that makes the cohort "outside".
OUTSIDE_SHARE = 0.5
VERDICTS = ("no_shift", "shift", "outside_domain")

#: How the per-test p-values become the verdict's p-value: the rule (first) and, for
#: benchmarks comparing rules on the same relabellings, the alternatives.
COMBINATIONS = ("intersection-union", "min-p", "holm")
RULE = COMBINATIONS[0]

RULE_TEXT = (
    "Shift if both the kernel-MMD and the domain-classifier permutation tests, run on the same "
    "relabellings, give p <= alpha (intersection-union: combined p = the larger p, the MMD alone below 3 scans "
    "per side; false-alarm rate <= alpha); "
    "outside the training domain if the modality differs, or if a shift comes with a domain classifier "
    f"separating the cohorts completely (AUC >= {TOTAL_SEPARATION_AUC}) and at least half of the target "
    "scans outside the source's field of view or body-fraction range. Fingerprint rows are descriptive."
)


def n_relabellings(n_source: int, n_target: int) -> int:
    """Distinct ways to choose the target cohort among the pooled scans."""
    return math.comb(n_source + n_target, n_target)


def smallest_p(n_source: int, n_target: int, n_permutations: int) -> float:
    """Smallest p-value the combined test can give at these sizes.

    Both statistics are symmetric under swapping the two cohorts when they have equal size,
    so an exact test then has at most half as many distinct values.
    """
    total = n_relabellings(n_source, n_target)
    if total <= n_permutations + 1:
        return (2.0 if n_source == n_target else 1.0) / total
    return 1.0 / (n_permutations + 1)


def check_resolvable(n_source: int, n_target: int, n_permutations: int, alpha: float = ALPHA) -> None:
    """Refuse cohort sizes at which the test could never reach p <= alpha.

    Raises:
        ShiftError: the smallest attainable p-value is above ``alpha`` (the message names the
            sizes, that p-value and how many scans are needed).
    """
    p = smallest_p(n_source, n_target, n_permutations)
    if p > alpha:
        need = next(k for k in range(2, 100) if smallest_p(max(k, n_source), max(k, n_target), n_permutations) <= alpha)
        raise ShiftError(
            f"with {n_source} source and {n_target} target scans the shift test's smallest possible p-value is "
            f"{p:.3g}, above alpha = {alpha}, so it could never detect a shift; add scans (at least {need} per side)."
        )


def label_sets(n_source: int, n_target: int, n_permutations: int, seed: int) -> tuple[NDArray[np.bool_], bool]:
    """Relabellings of the pooled scans (``True`` = target), the observed labelling first.

    Returns:
        ``(labels (N, n), exact)``: every distinct labelling when there are at most
        ``n_permutations + 1`` of them (``exact``), else the observed one and
        ``n_permutations`` random permutations.
    """
    n = n_source + n_target
    observed = np.zeros(n, dtype=bool)
    observed[n_source:] = True
    if n_relabellings(n_source, n_target) <= n_permutations + 1:
        sets = [observed]
        for chosen in combinations(range(n), n_target):
            lab = np.zeros(n, dtype=bool)
            lab[list(chosen)] = True
            if not np.array_equal(lab, observed):
                sets.append(lab)
        return np.stack(sets), True
    # Not scipy.stats.permutation_test: the min-P combination needs the *same* relabellings for every test, which it cannot share.
    rng = np.random.default_rng(seed)
    return np.stack([observed] + [rng.permutation(observed) for _ in range(n_permutations)]), False


def _mmd_stats(z: NDArray[np.float64], labels: NDArray[np.bool_]) -> tuple[NDArray[np.float64], float]:
    from medmtl.shift.two_sample import _sq_dists, median_bandwidth, mmd2_unbiased

    bw = median_bandwidth(z)
    k = np.exp(-_sq_dists(z) / (2.0 * bw * bw))
    return np.array([mmd2_unbiased(k, lab) for lab in labels]), bw


def _row_auc(scores: NDArray[np.float64], labels: NDArray[np.int_]) -> NDArray[np.float64]:
    """ROC AUC of each row's scores against that row's 0/1 labels (ties count half), ``(P, n)`` → ``(P,)``."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    n1 = labels.sum(axis=1)
    n0 = labels.shape[1] - n1
    return ((ranks * labels).sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * n0)


def _classifier_stats(z: NDArray[np.float64], labels: NDArray[np.bool_], seed: int) -> tuple[NDArray[np.float64], Any]:
    """Out-of-fold AUC of the domain classifier for every labelling, and the observed fold probabilities.

    The statistic is the AUC of the out-of-fold P(target), not the accuracy of Lopez-Paz & Oquab:
    with 8–16 scans the accuracy takes a handful of values, so many relabellings tie with the
    observed one and the test loses power (a 3-SD synthetic shift at 4 vs 4: the rule, which needs
    both tests, flagged 3 of 10 draws with the accuracy and 6 of 10 with the AUC; the MMD alone
    10 of 10). The AUC ranks the scores and rarely ties.
    """
    from medmtl.shift.two_sample import _cv_folds, _oof_probabilities, pca_reduce, standardise

    zc = standardise(pca_reduce(z, 4))
    lab = labels.astype(int)
    if lab.shape[1] <= 40:
        folds = [np.array([i]) for i in range(lab.shape[1])]
    else:
        n_s, n_t = int((lab[0] == 0).sum()), int(lab[0].sum())
        folds = _cv_folds(lab[0], max(2, min(5, n_s, n_t)), np.random.default_rng(seed))
    probs = _oof_probabilities(zc, lab, folds, 0.3)
    return _row_auc(probs, lab), probs[0]


def _upper_tail_p(stats: NDArray[np.float64]) -> NDArray[np.float64]:
    """For each labelling, the share of labellings whose statistic is at least as large."""
    order = np.sort(stats)
    ge = len(stats) - np.searchsorted(order, stats - 1e-12, side="left")
    return ge / len(stats)


def shift_test(
    source: ArrayLike, target: ArrayLike, *, n_permutations: int = 1000, seed: int = 0, alpha: float = ALPHA
) -> dict[str, Any]:
    """The combined (intersection-union) feature-level shift test of :mod:`medmtl.shift.verdict`.

    Args:
        source: ``(m, F)`` pooled encoder features of the source scans.
        target: ``(n, F)`` features of the target scans.
        n_permutations: random relabellings when exact enumeration would need more.
        seed: random seed (relabellings, folds).
        alpha: family-wise error level.

    Returns:
        ``{"p_value", "shift", "alpha", "exact", "n_label_sets", "smallest_p", "rule",
        "p_by_rule", "mmd": {...}, "classifier": {...} | None}``: ``p_value`` is the
        rule's (:data:`RULE`), ``p_by_rule`` the combined p-value under every
        :data:`COMBINATIONS` entry (for benchmarks comparing rules; only the rule decides);
        each test holds its ``statistic`` and permutation ``p_value``; the classifier also its
        ``accuracy``, ``auc``, ``proxy_a_distance`` and the per-scan "looks like target"
        scores ``target_score_source`` / ``target_score_target``.

    Raises:
        ShiftError: fewer than 2 scans per side, or sizes at which p <= alpha is unreachable.
    """
    from sklearn.metrics import roc_auc_score

    from medmtl.shift.two_sample import MIN_SCANS_CLASSIFIER, MIN_SCANS_MMD, check_cohorts, standardise

    x, y = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    check_cohorts(len(x), len(y), test="shift test", minimum=MIN_SCANS_MMD)
    check_resolvable(len(x), len(y), n_permutations, alpha)
    z = standardise(np.concatenate([x, y]))
    labels, exact = label_sets(len(x), len(y), n_permutations, seed)
    mmd_stats, bw = _mmd_stats(z, labels)
    per_test = {"mmd": _upper_tail_p(mmd_stats)}
    clf = None
    if min(len(x), len(y)) >= MIN_SCANS_CLASSIFIER:
        aucs, prob = _classifier_stats(z, labels, seed)
        per_test["classifier"] = _upper_tail_p(aucs)
        obs_labels = labels[0].astype(int)
        acc = float(((prob >= 0.5).astype(int) == obs_labels).mean())
        clf = {"test": "classifier", "statistic": float(aucs[0]), "accuracy": acc,
               "auc": float(roc_auc_score(obs_labels, prob)),
               "proxy_a_distance": 2.0 * (1.0 - 2.0 * (1.0 - acc)),
               "target_score_source": [float(v) for v in prob[: len(x)]],
               "target_score_target": [float(v) for v in prob[len(x):]]}
    by_rule = {how: combine(per_test, how) for how in COMBINATIONS}
    combined = by_rule[RULE]
    mmd = {"test": "mmd", "statistic": float(mmd_stats[0]), "bandwidth": bw}
    for name, rec in (("mmd", mmd), ("classifier", clf)):
        if rec is not None:
            rec["p_value"] = float(per_test[name][0])
            rec.update(n_source=len(x), n_target=len(y), n_permutations=len(labels) - 1)
    return {"p_value": combined, "shift": combined <= alpha, "alpha": alpha, "exact": exact,
            "n_label_sets": int(len(labels)), "smallest_p": smallest_p(len(x), len(y), n_permutations),
            "rule": RULE_TEXT, "p_by_rule": by_rule, "mmd": mmd, "classifier": clf}


def combine(per_test: Mapping[str, NDArray[np.float64]], how: str = RULE) -> float:
    """The verdict's p-value from the per-test permutation p-values.

    Args:
        per_test: per test, the ``(N,)`` p-value of every relabelling (the observed one first),
            all tests on the same relabellings.
        how: ``intersection-union`` (the rule: the largest observed p-value), ``min-p``
            (Westfall-Young single-step: the share of relabellings whose smallest p-value is at
            most the observed smallest) or ``holm`` (the global Holm/Bonferroni p-value: the
            number of tests times the smallest, capped at 1).
    """
    observed = [float(v[0]) for v in per_test.values()]
    if how == "intersection-union":
        return max(observed)
    if how == "holm":
        return min(1.0, len(observed) * min(observed))
    if how == "min-p":
        min_p = np.min(np.stack(list(per_test.values())), axis=0)
        return float((min_p <= min_p[0] + 1e-12).mean())
    raise ValueError(f"unknown combination {how!r}; allowed: {', '.join(COMBINATIONS)}")


def outside_range(source_fps: Sequence[Mapping[str, Any]], target_fps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Target scans whose domain fields (:data:`DOMAIN_FIELDS`) lie outside the source's range.

    Returns:
        One row per field: ``field``, ``source_min``, ``source_max``, ``allowed`` ``[lo, hi]``,
        ``n_outside`` and ``outside`` (the ids of the target scans outside).
    """
    rows = []
    for name, (kind, tol) in DOMAIN_FIELDS.items():
        src = [float(fp[name]) for fp in source_fps if isinstance(fp.get(name), (int, float))]
        if not src:
            continue
        lo, hi = min(src), max(src)
        allowed = (lo / tol, hi * tol) if kind == "factor" else (lo - tol, hi + tol)
        out = [str(fp.get("scan_id")) for fp in target_fps
               if isinstance(fp.get(name), (int, float)) and not allowed[0] <= float(fp[name]) <= allowed[1]]
        rows.append({"field": name, "source_min": lo, "source_max": hi, "allowed": list(allowed),
                     "n_outside": len(out), "outside": out})
    return rows


@dataclass(frozen=True)
class Verdict:
    """What ``diagnose`` concludes.

    Attributes:
        kind: ``no_shift``, ``shift`` or ``outside_domain``.
        p_value: combined p-value of the shift test (``None`` when no test could run).
        reasons: the evidence, one sentence each.
        advice: what to do.
    """

    kind: str
    p_value: float | None
    reasons: tuple[str, ...] = field(default_factory=tuple)
    advice: str = ""

    @property
    def shift(self) -> bool:
        """Whether the cohorts differ (``shift`` or ``outside_domain``)."""
        return self.kind != "no_shift"

    def text(self) -> str:
        """One paragraph: the verdict, its evidence and the advice."""
        head = {"no_shift": "No shift detected.", "shift": "Shift detected that adaptation can address.",
                "outside_domain": "The target is outside the training domain."}[self.kind]
        return " ".join([head, *self.reasons, self.advice]).strip()

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (with ``shift`` and ``text``)."""
        return {"kind": self.kind, "shift": self.shift, "p_value": self.p_value, "reasons": list(self.reasons),
                "advice": self.advice, "text": self.text(), "rule": RULE_TEXT}


def decide(
    test: Mapping[str, Any] | None,
    *,
    source_fps: Sequence[Mapping[str, Any]],
    target_fps: Sequence[Mapping[str, Any]],
    source_modality: str,
    target_modality: str,
) -> Verdict:
    """Apply the rule: the combined shift test, then the domain checks.

    Args:
        test: :func:`shift_test` output (``None`` when the modalities differ and no feature
            test is meaningful).
        source_fps, target_fps: per-scan fingerprints.
        source_modality, target_modality: ``CT`` / ``MR``.
    """
    if source_modality != target_modality:
        return Verdict("outside_domain", None, (f"The target is {target_modality}, the source {source_modality}.",),
                       "No label-free adaptation bridges a change of modality: train or fine-tune a model with "
                       f"labelled {target_modality} scans.")
    assert test is not None  # noqa: S101 (same modality: the caller ran the test)
    p = float(test["p_value"])
    if not test["shift"]:
        return Verdict("no_shift", p, (f"Combined feature-test p = {p:.3g} > alpha = {test['alpha']}.",),
                       "The model can be used on this site as it is.")
    rows = outside_range(source_fps, target_fps)
    clf = test.get("classifier") or {}
    n_t = max(1, len(target_fps))
    outside_ids = {i for r in rows for i in r["outside"]}
    total = float(clf.get("auc") or 0.0) >= TOTAL_SEPARATION_AUC
    reasons = [f"Combined feature-test p = {p:.3g} <= alpha = {test['alpha']}."]
    if total and len(outside_ids) >= OUTSIDE_SHARE * n_t:
        fields = ", ".join(f"{r['field']} ({r['n_outside']}/{n_t} scans)" for r in rows if r["n_outside"])
        reasons.append(f"The domain classifier separates the cohorts completely (AUC {clf['auc']:.2f}) and the "
                       f"target lies outside the source's range in {fields}.")
        return Verdict("outside_domain", p, tuple(reasons),
                       "Label-free adaptation cannot bridge another body region or field of view: retrain or "
                       "fine-tune with labelled scans of this domain; do not adapt.")
    return Verdict("shift", p, tuple(reasons),
                   "Same modality and field of view: label-free adaptation (`medmtl adapt`, or "
                   "`medmtl predict --adapt auto`) may help; the report's reading names the method that fits "
                   "this shift. Check it on a few labelled target scans before trusting it: on the project's "
                   "phantoms the measured gain depends on the method and the model, and is sometimes a loss.")


__all__ = [
    "ALPHA",
    "COMBINATIONS",
    "DOMAIN_FIELDS",
    "RULE",
    "RULE_TEXT",
    "VERDICTS",
    "Verdict",
    "check_resolvable",
    "combine",
    "decide",
    "label_sets",
    "outside_range",
    "shift_test",
    "smallest_p",
]
