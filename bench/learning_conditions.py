"""Conditions of the learning benchmark (:mod:`bench.learning`) and the multi-task gain Δm.

A :class:`Condition` is one configuration (adapter, strategy, weighting, label share,
initialisation, trained tasks); :func:`expand_conditions` lists the conditions of each block in
table order. :func:`delta_m_table` computes Δm (Maninis et al. 2019; Vandenhende et al. 2021)
from the runs, paired by seed. The task names are the library's (:data:`medmtl.mtl.losses.TASKS`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medmtl.mtl.losses import TASKS
from pipelines import transfer_study as T
from pipelines.tables import bootstrap_mean_ci

BLOCKS = ("init", "mtl", "weighting", "transfer")
ADAPTERS = ("inflate", "2.5d", "acs")
STRATEGIES = ("linear-probe", "full", "lp-ft")
LABEL_FRACTIONS = (0.1, 0.3, 1.0)
#: Greek parameter of the ``fixed`` weighting for each task (``medmtl.mtl.weighting.FixedWeighting``).
TASK_PARAM = {"det": "alpha", "size": "beta", "malig": "gamma"}
#: The metric that scores each task: (task, metric key, lower is better).
TASK_METRIC: tuple[tuple[str, str, bool], ...] = (
    ("det", "cpm", False),
    ("size", "diameter_mae_mm", True),
    ("malig", "malignancy_auc", False),
)
SINGLE_TASK_MODES = ("with-detection", "strict")
BLOCK_TITLES = {
    "init": "ImageNet-adapted vs from scratch (full fine-tuning, fixed weights, all labels)",
    "mtl": "multi-task vs single-task (inflate, ImageNet, full, fixed weights, all labels)",
    "weighting": "task weighting (inflate, ImageNet, full, all labels)",
    "transfer": "transfer strategy × share of size/malignancy labels (inflate, ImageNet, fixed weights)",
}


# --------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class Condition:
    """One benchmark condition (a configuration; its seeds are separate runs).

    ``tasks`` are the tasks whose loss is trained; fewer than three means the ``fixed``
    weighting with the other tasks' weights at 0 (a single-task baseline).
    """

    adapter: str = "inflate"
    strategy: str = "full"
    weighting: str = "fixed"
    label_fraction: float = 1.0
    pretrained: bool = True
    tasks: tuple[str, ...] = TASKS

    def __post_init__(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")
        if self.is_single_task and self.weighting != "fixed":
            raise ValueError("single-task conditions use the 'fixed' weighting (the other tasks' weights are 0)")

    @property
    def is_single_task(self) -> bool:
        """True when some task is switched off."""
        return tuple(self.tasks) != TASKS

    def point(self, seed: int) -> T.Point:
        """The transfer study's grid point of this condition and ``seed``."""
        return T.Point(adapter=self.adapter, strategy=self.strategy, weighting=self.weighting,
                       label_fraction=float(self.label_fraction), pretrained=bool(self.pretrained), seed=int(seed))

    @property
    def key(self) -> str:
        """Run-folder stem (without the seed), unique per condition."""
        stem = self.point(0).name.rsplit("__s", 1)[0]
        return stem + ("__only-" + "+".join(self.tasks) if self.is_single_task else "")

    def overrides(self) -> list[str]:
        """Extra training-config overrides (the ``fixed`` task weights of a single-task run)."""
        if not self.is_single_task:
            return []
        return [f"weighting.params.{TASK_PARAM[t]}={1.0 if t in self.tasks else 0.0}" for t in TASKS]

    @property
    def label(self) -> str:
        """Human-readable name for the tables."""
        parts = [self.adapter, "ImageNet" if self.pretrained else "scratch", self.strategy, self.weighting,
                 f"{self.label_fraction:.0%} labels"]
        if self.is_single_task:
            parts.append("tasks " + "+".join(self.tasks))
        return ", ".join(parts)


def single_task_conditions(mode: str = "with-detection", base: Condition | None = None) -> dict[str, Condition]:
    """The single-task baseline of each task (see the module docstring for ``mode``)."""
    if mode not in SINGLE_TASK_MODES:
        raise ValueError(f"single-task mode must be one of {SINGLE_TASK_MODES}, got {mode!r}")
    base = base or Condition()
    out = {}
    for t in TASKS:
        tasks = (t,) if mode == "strict" or t == "det" else ("det", t)
        out[t] = Condition(adapter=base.adapter, strategy=base.strategy, weighting="fixed",
                           label_fraction=base.label_fraction, pretrained=base.pretrained, tasks=tasks)
    return out


def expand_conditions(
    *,
    blocks: Sequence[str] = BLOCKS,
    adapters: Sequence[str] = ADAPTERS,
    strategies: Sequence[str] = STRATEGIES,
    label_fractions: Sequence[float] = LABEL_FRACTIONS,
    gradient_method: str = "upgrad",
    single_task: str = "with-detection",
) -> list[tuple[str, Condition]]:
    """``(block, condition)`` pairs in table order; a condition may appear in several blocks.

    Raises:
        ValueError: an unknown block or single-task mode.
    """
    bad = [b for b in blocks if b not in BLOCKS]
    if bad:
        raise ValueError(f"unknown block(s) {bad}; allowed: {', '.join(BLOCKS)}")
    base = Condition()
    pairs: list[tuple[str, Condition]] = []
    for block in blocks:
        if block == "init":
            for a in adapters:
                for pre in (True, False):
                    pairs.append((block, Condition(adapter=a, pretrained=pre)))
        elif block == "mtl":
            pairs.append((block, base))
            pairs += [(block, c) for c in single_task_conditions(single_task, base).values()]
        elif block == "weighting":
            for w in dict.fromkeys(("fixed", "uncertainty", gradient_method)):
                pairs.append((block, Condition(weighting=w)))
        elif block == "transfer":
            for lf in label_fractions:
                for s in strategies:
                    pairs.append((block, Condition(strategy=s, label_fraction=float(lf))))
    return pairs


def unique_conditions(pairs: Sequence[tuple[str, Condition]]) -> list[Condition]:
    """The distinct conditions of :func:`expand_conditions`' pairs, first appearance first."""
    return list(dict.fromkeys(c for _, c in pairs))


# --------------------------------------------------------------------------- Δm


def task_delta(mt: float | None, st: float | None, lower_is_better: bool) -> float | None:
    """``(−1)^{l} (mt − st) / st`` in percent; ``None`` when undefined (missing value, ``st`` ≈ 0)."""
    if mt is None or st is None or not (math.isfinite(mt) and math.isfinite(st)) or abs(st) < 1e-12:
        return None
    sign = -1.0 if lower_is_better else 1.0
    return 100.0 * sign * (mt - st) / st


def delta_m(mt: Mapping[str, float | None], st: Mapping[str, float | None]) -> dict[str, Any]:
    """Multi-task gain Δm (Maninis et al. 2019; Vandenhende et al. 2021), in percent.

    Args:
        mt: the multi-task run's metric per task (``det``, ``size``, ``malig``).
        st: each task's single-task metric.

    Returns:
        ``{"per_task": {task: Δ_t or None}, "delta_m": mean of Δ_t or None}`` (``None`` when any
        task's Δ_t is undefined: a partial mean is not Δm).
    """
    per = {t: task_delta(mt.get(t), st.get(t), lower) for t, _, lower in TASK_METRIC}
    vals = [v for v in per.values() if v is not None]
    return {"per_task": per, "delta_m": sum(vals) / len(vals) if len(vals) == len(per) else None}


def delta_m_table(
    records: Mapping[Condition, Sequence[Mapping[str, Any]]], st: Mapping[str, Condition], mt: Condition
) -> dict[str, Any]:
    """Δm from the runs: per seed (runs paired by seed), then the mean over seeds with a 95% interval.

    Args:
        records: condition → its run records (``seed`` and metric keys).
        st: task → single-task condition.
        mt: the multi-task condition.

    Returns:
        ``{"tasks": [{task, metric, st, mt, delta, delta_ci95}], "delta_m", "delta_m_ci95",
        "seeds", "per_seed": [...]}``.
    """
    by_seed = {c: {int(r["seed"]): r for r in recs} for c, recs in records.items()}
    seeds = sorted(set(by_seed.get(mt, {})).intersection(*(set(by_seed.get(c, {})) for c in st.values())))
    per_seed = []
    for s in seeds:
        m = {t: by_seed[mt][s].get(k) for t, k, _ in TASK_METRIC}
        b = {t: by_seed[st[t]][s].get(k) for t, k, _ in TASK_METRIC}
        per_seed.append({"seed": s, **delta_m(m, b)})
    tasks = []
    for t, k, lower in TASK_METRIC:
        st_vals = [by_seed[st[t]][s].get(k) for s in seeds]
        mt_vals = [by_seed[mt][s].get(k) for s in seeds]
        d_mean, d_ci = bootstrap_mean_ci([p["per_task"][t] for p in per_seed])
        tasks.append({"task": t, "metric": k, "lower_is_better": lower, "st": bootstrap_mean_ci(st_vals)[0],
                      "mt": bootstrap_mean_ci(mt_vals)[0], "delta": d_mean, "delta_ci95": list(d_ci) if d_ci else None,
                      "st_condition": st[t].label})
    dm, dm_ci = bootstrap_mean_ci([p["delta_m"] for p in per_seed])
    return {"tasks": tasks, "delta_m": dm, "delta_m_ci95": list(dm_ci) if dm_ci else None, "seeds": seeds,
            "per_seed": per_seed}


__all__ = [
    "ADAPTERS",
    "BLOCKS",
    "BLOCK_TITLES",
    "LABEL_FRACTIONS",
    "SINGLE_TASK_MODES",
    "STRATEGIES",
    "TASKS",
    "TASK_METRIC",
    "TASK_PARAM",
    "Condition",
    "delta_m",
    "delta_m_table",
    "expand_conditions",
    "single_task_conditions",
    "task_delta",
    "unique_conditions",
]
