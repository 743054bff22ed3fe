"""Learning benchmark: what transfer, multi-task training and task weighting buy, with intervals.

``python -m bench.learning [--fast] [--device auto|cpu|cuda] [--seeds 0,1,2] [--out DIR]
[--data DIR | --generate N] [--blocks init,mtl,weighting,transfer] [--append-results]``

Four blocks of conditions, every one trained on the training scans of ``--data`` and scored on
held-out test scans (the deterministic id split of :func:`pipelines._common.split_ids`: the
last ``--n-test`` scans are the test set, the ``--n-val`` before them validate, the rest
train), each for several seeds:

- ``init`` — ImageNet-adapted vs from scratch, for each 2D→3D adapter (``inflate``, ``2.5d``,
  ``acs``);
- ``mtl`` — multi-task vs single-task, with Δm (Maninis et al. 2019; Vandenhende et al. 2021):
  ``Δ_t = (−1)^{l_t} (M_mt,t − M_st,t) / M_st,t`` (``l_t = 1`` when lower is better, i.e. the
  diameter MAE), ``Δm = mean_t Δ_t``, in percent (> 0: multi-task helps). Each task's metric is
  read from its own single-task run: detection → CPM, size → diameter MAE, malignancy → AUC.
  Single-task runs use the ``fixed`` weighting (``weighting.params.alpha/beta/gamma`` weigh
  det/size/malig) with the other tasks' weights at 0. Size and malignancy are scored at the
  *detected* lesions, so a model without a trained detection head has no MAE or AUC at all;
  by default (``--single-task with-detection``) the size and malignancy single-task baselines
  therefore keep the detection loss (weights ``1,1,0`` and ``1,0,1``); ``--single-task strict``
  trains each task alone (``0,1,0`` / ``0,0,1``) as the textbook definition does. The
  multi-task run is ``fixed`` ``1,1,1`` with everything else equal;
- ``weighting`` — fixed vs uncertainty (Kendall et al. 2018) vs a gradient method
  (``--gradient-method``, default UPGrad via TorchJD);
- ``transfer`` — linear-probe vs full fine-tuning vs LP-FT at 10 %, 30 % and 100 % of the
  size / malignancy labels (``data.label_fraction``).

Identical conditions of different blocks (the ImageNet / inflate / full / fixed / 100 % run is
in all four) are trained once. Training, prediction and evaluation are
:func:`pipelines.transfer_study.run_point` (public API: ``api.train``, ``api.predict_folder``,
``api.evaluate``); each run folder keeps its resolved config, versions, input hashes, metrics
and a ``where.json`` (device, CPU / GPU model). A finished run is reused by a rerun.

Every table row: CPM, diameter MAE (mm) and malignancy AUC with 95 % intervals — percentile
bootstrap of the mean over seeds with ≥ 2 seeds, else the evaluation's scan-level bootstrap —
the number of seeds and where it was measured. The **Bayes-optimal AUC** of the test lesions
(AUC of the generator's ``bayes_malignancy_prob`` against the recorded labels, with a lesion
bootstrap interval) bounds the malignancy AUC any model can reach on them.

Outputs in ``--out``: ``results.json``, ``results.md``, ``runs.csv``. ``--append-results``
appends a dated section (machine, command, tables) to ``bench/RESULTS.md`` (or the given
file), re-reading it first and never rewriting what is there.

Larger sets: ``--generate 40 --n-test 10 --n-val 6`` trains on 24 fresh site-A phantoms
(seed ``--generate-seed``, disjoint from ``sample_data``) and tests on 10.

``--fast`` is a smoke setting: one seed, the transfer study's tiny training overrides (1 epoch
of 2 steps), the inflate adapter only, 100 % labels only, 20 bootstrap replicates. Its numbers
check the plumbing, not the methods.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.machine import cpu_model
from pipelines import _common as C
from pipelines import transfer_study as T

logger = logging.getLogger("bench.learning")

REPO = C.REPO
BLOCKS = ("init", "mtl", "weighting", "transfer")
ADAPTERS = ("inflate", "2.5d", "acs")
STRATEGIES = ("linear-probe", "full", "lp-ft")
LABEL_FRACTIONS = (0.1, 0.3, 1.0)
TASKS = ("det", "size", "malig")
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
        d_mean, d_ci = C.bootstrap_mean_ci([p["per_task"][t] for p in per_seed])
        tasks.append({"task": t, "metric": k, "lower_is_better": lower, "st": C.bootstrap_mean_ci(st_vals)[0],
                      "mt": C.bootstrap_mean_ci(mt_vals)[0], "delta": d_mean, "delta_ci95": list(d_ci) if d_ci else None,
                      "st_condition": st[t].label})
    dm, dm_ci = C.bootstrap_mean_ci([p["delta_m"] for p in per_seed])
    return {"tasks": tasks, "delta_m": dm, "delta_m_ci95": list(dm_ci) if dm_ci else None, "seeds": seeds,
            "per_seed": per_seed}


# --------------------------------------------------------------------------- Bayes AUC, machine


def bayes_auc(annotations: Path, scan_ids: Sequence[str] | None = None, *, n_boot: int = 1000,
              seed: int = 0) -> dict[str, Any]:
    """Bayes-optimal malignancy AUC of the labelled lesions of ``scan_ids`` (all scans when ``None``).

    AUC of the generator's ``bayes_malignancy_prob`` against the recorded (noisy) labels,
    empty labels skipped, with a percentile bootstrap interval over lesions.

    Returns:
        ``{"value", "ci95", "n_lesions", "n_positive"}`` (``value`` ``None`` when a class is missing
        or the column is absent).
    """
    import numpy as np

    from medmtl.metrics import auc

    keep = set(scan_ids) if scan_ids is not None else None
    probs, labels = [], []
    with open(annotations, newline="", encoding="utf-8-sig") as fh:
        for r in csv.DictReader(fh):
            if keep is not None and (r.get("seriesuid") or "").strip() not in keep:
                continue
            p, y = (r.get("bayes_malignancy_prob") or "").strip(), (r.get("malignancy") or "").strip()
            if not p or not y:
                continue
            probs.append(float(p))
            labels.append(float(y))
    out: dict[str, Any] = {"value": auc(probs, labels) if probs else None, "ci95": None, "n_lesions": len(probs),
                           "n_positive": int(sum(y >= 0.5 for y in labels))}
    if out["value"] is not None:
        rng = np.random.default_rng(seed)
        p_arr, y_arr = np.asarray(probs), np.asarray(labels)
        boots = []
        for _ in range(n_boot):
            idx = rng.integers(0, len(p_arr), len(p_arr))
            v = auc(p_arr[idx], y_arr[idx])
            if v is not None:
                boots.append(v)
        if boots:
            out["ci95"] = [float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))]
    return out


def where_measured(device: str) -> str:
    """``"cuda (NVIDIA H100 …)"`` or ``"cpu (AMD EPYC …, 2 cores)"`` for the resolved ``device``."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return (f"{device} ({torch.cuda.get_device_name(torch.device(device))}; host {cpu_model()}, "
                    f"{os.cpu_count()} cores)")
        return f"{device} (unavailable)"
    return f"cpu ({cpu_model()}, {os.cpu_count()} cores)"


# --------------------------------------------------------------------------- tables


@dataclass
class Row:
    """One table row: a condition of a block, seeds pooled."""

    block: str
    condition: str
    metrics: dict[str, dict[str, Any]]  # metric key → {"value", "ci95"}
    n_seeds: int
    ci_over: str
    where: str
    key: str = ""


def pool(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Seeds of one condition pooled by :func:`pipelines.transfer_study.aggregate` (one row)."""
    rows = T.aggregate([dict(r) for r in records])
    if len(rows) != 1:
        raise ValueError(f"records of one condition must share their configuration, got {len(rows)} groups")
    return rows[0]


def make_row(block: str, cond: Condition, records: Sequence[Mapping[str, Any]]) -> Row:
    """A :class:`Row` from a condition's run records."""
    agg = pool(records)
    where = sorted({str(r.get("where", "?")) for r in records})
    return Row(block=block, condition=cond.label, key=cond.key, n_seeds=agg["n_seeds"], ci_over=agg["ci_over"],
               where="; ".join(where),
               metrics={k: {"value": agg[k], "ci95": agg[f"{k}_ci95"]} for k, _, _ in C.METRICS})


def results_table(rows: Sequence[Row]) -> str:
    """The markdown table: condition, CPM, MAE, AUC (each with its 95% interval), seeds, where."""
    header = ["block", "condition", "CPM [95% CI]", "MAE mm [95% CI]", "AUC [95% CI]", "seeds", "CI over",
              "where measured"]
    body = [[r.block, r.condition, C.fmt_ci(r.metrics["cpm"]), C.fmt_ci(r.metrics["diameter_mae_mm"], 2),
             C.fmt_ci(r.metrics["malignancy_auc"]), str(r.n_seeds), r.ci_over, r.where] for r in rows]
    return C.markdown_table(header, body)


def _pct(v: float | None, ci: Sequence[float] | None = None) -> str:
    if v is None:
        return "n/a"
    s = f"{v:+.1f} %"
    return s + (f" [{ci[0]:+.1f}, {ci[1]:+.1f}]" if ci else "")


def delta_table(dm: Mapping[str, Any]) -> str:
    """Markdown table of Δ_t per task and the Δm line."""
    header = ["task", "metric", "single-task run", "single-task", "multi-task", "Δ_t [95% CI]"]
    body = []
    for t in dm["tasks"]:
        digits = 2 if t["metric"] == "diameter_mae_mm" else 3
        body.append([t["task"], t["metric"] + (" (lower better)" if t["lower_is_better"] else ""), t["st_condition"],
                     C.fmt(t["st"], digits), C.fmt(t["mt"], digits), _pct(t["delta"], t["delta_ci95"])])
    seeds = ", ".join(str(s) for s in dm["seeds"]) or "none"
    return (C.markdown_table(header, body) + f"\n\n**Δm = {_pct(dm['delta_m'], dm['delta_m_ci95'])}** "
            f"(seeds {seeds}; > 0: the multi-task net beats the single-task baselines on average).")


def bayes_line(b: Mapping[str, Any], what: str) -> str:
    """One sentence on a Bayes-optimal AUC."""
    return (f"Bayes-optimal malignancy AUC of the {what}: {C.fmt_ci({'value': b['value'], 'ci95': b['ci95']})} "
            f"({b['n_lesions']} labelled lesions, {b['n_positive']} malignant; lesion bootstrap).")


def markdown(res: Mapping[str, Any]) -> str:
    """The results as markdown: one table per block, the Δm table and the Bayes AUC."""
    rows = [Row(**r) for r in res["rows"]]
    lines = [f"Data: `{res['data']}` — {len(res['split']['train'])} training, {len(res['split']['val'])} validation, "
             f"{len(res['split']['test'])} test scans (test: {', '.join(res['split']['test'])}); base config "
             f"`{res['config']}`{' with the --fast overrides' if res['fast'] else ''}; seeds "
             f"{', '.join(str(s) for s in res['seeds'])}.", "",
             bayes_line(res["bayes_auc_test"], "test scans") + " "
             + bayes_line(res["bayes_auc_all"], "whole set"), ""]
    for block in BLOCKS:
        br = [r for r in rows if r.block == block]
        if not br:
            continue
        lines += [f"**{block}** — {BLOCK_TITLES[block]}", "", results_table(br), ""]
        if block == "mtl" and res.get("delta_m"):
            lines += [delta_table(res["delta_m"]), ""]
    if res.get("missing"):
        lines += [f"Not run (time budget of {res.get('time_budget_s')} s reached): " + ", ".join(res["missing"]) + ".", ""]
    lines.append("Intervals: 95 % percentile bootstrap of the mean over seeds (≥ 2 seeds) or over test scans "
                 "(one seed, the evaluation's bootstrap). MAE and AUC are read at detected lesions.")
    return "\n".join(lines) + "\n"


def append_results(path: Path, section: str) -> Path:
    """Append ``section`` to ``path`` (created when missing), re-reading it first; never rewrites it."""
    path = Path(path)
    existing = path.read_text(encoding="utf-8") if path.is_file() else None
    with open(path, "a", encoding="utf-8") as fh:
        if existing is None:
            fh.write("# Benchmark results\n")
        elif existing and not existing.endswith("\n"):
            fh.write("\n")
        fh.write("\n" + section.rstrip("\n") + "\n")
    return path


# --------------------------------------------------------------------------- running


def run_condition(cond: Condition, seed: int, *, out: Path, config: Path, data: Path,
                  split: tuple[list[str], list[str], list[str]], base_overrides: Sequence[str], device: str,
                  n_bootstrap: int, where: str, overwrite: bool = False) -> dict[str, Any]:
    """Train / predict / evaluate one condition and seed (via :func:`pipelines.transfer_study.run_point`)."""
    import shutil

    run_dir = out / "runs" / f"{cond.key}__s{seed}"
    if overwrite and run_dir.is_dir():
        shutil.rmtree(run_dir)
    reused = C.is_done(run_dir)
    t0 = time.perf_counter()
    rec = T.run_point(cond.point(seed), run_dir=run_dir, config=config, data=data, split=split,
                      base_overrides=[*base_overrides, *cond.overrides()], device=device, n_bootstrap=n_bootstrap)
    where_file = run_dir / "where.json"
    if where_file.is_file():
        info = json.loads(where_file.read_text(encoding="utf-8"))
    elif reused:  # finished by an older tool (e.g. pipelines.transfer_study): only its device is on record
        versions = json.loads((run_dir / "versions.json").read_text(encoding="utf-8"))
        info = {"where": f"{versions.get('device', '?')} {versions.get('device_name', '')}".strip()
                + " (reused run; machine not recorded)", "wall_s": None}
    else:
        info = {"where": where, "wall_s": round(time.perf_counter() - t0, 1)}
        C.write_json(where_file, info)
    rec.update(key=cond.key, tasks="+".join(cond.tasks), where=info["where"], wall_s=info.get("wall_s"),
               reused=reused)
    return rec


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s [%(process)d] %(message)s")


def _run_one(cond: Condition, seed: int, kw: Mapping[str, Any]) -> tuple[Condition, dict[str, Any]]:
    return cond, run_condition(cond, seed, **kw)


def run_all(todo: Sequence[tuple[Condition, int]], kw: Mapping[str, Any], *, jobs: int = 1,
            deadline: float | None = None) -> list[tuple[Condition, dict[str, Any]]]:
    """Run ``(condition, seed)`` pairs in order, ``jobs`` at a time; none is started after ``deadline``.

    Args:
        todo: the runs, in the order to start them.
        kw: keyword arguments of :func:`run_condition` shared by every run.
        jobs: runs at once (worker processes started with ``spawn``, so CUDA works in them).
        deadline: ``time.perf_counter()`` value after which no further run starts (finished runs of
            an earlier call in the same folder are still read back).

    Returns:
        ``(condition, record)`` of each run that finished.
    """
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    done: list[tuple[Condition, dict[str, Any]]] = []

    def late(c: Condition, s: int) -> bool:
        return (deadline is not None and time.perf_counter() > deadline
                and not C.is_done(Path(kw["out"]) / "runs" / f"{c.key}__s{s}"))

    if jobs == 1:
        for i, (c, s) in enumerate(todo, 1):
            if late(c, s):
                continue
            logger.info("learning bench: run %d/%d %s seed %d", i, len(todo), c.key, s)
            done.append((c, run_condition(c, s, **kw)))
        return done
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

    threads = max(1, (os.cpu_count() or 1) // jobs)
    pending = list(todo)
    running: set[Future[tuple[Condition, dict[str, Any]]]] = set()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool_:
        while pending or running:
            while pending and len(running) < jobs:
                c, s = pending.pop(0)
                if late(c, s):
                    continue
                logger.info("learning bench: start %s seed %d (%d waiting)", c.key, s, len(pending))
                running.add(pool_.submit(_run_one, c, s, kw))
            if not running:
                break
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for f in finished:
                done.append(f.result())
    return done


def run_benchmark(
    *,
    out: Path,
    data: Path = REPO / "sample_data" / "ct_site_a",
    config: Path = REPO / "configs" / "demo.yaml",
    seeds: Sequence[int] = (0, 1, 2),
    blocks: Sequence[str] = BLOCKS,
    adapters: Sequence[str] = ADAPTERS,
    strategies: Sequence[str] = STRATEGIES,
    label_fractions: Sequence[float] = LABEL_FRACTIONS,
    gradient_method: str = "upgrad",
    single_task: str = "with-detection",
    n_test: int = 3,
    n_val: int = 2,
    device: str = "auto",
    fast: bool = False,
    n_bootstrap: int | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
    jobs: int = 1,
    time_budget_s: float | None = None,
) -> dict[str, Any]:
    """Run every condition × seed into ``out/runs/`` and write the tables; returns ``results.json``'s dict.

    ``jobs`` > 1 trains that many runs at once in worker processes (one GPU is shared; each worker
    gets ``cpu_count // jobs`` torch threads). With ``time_budget_s`` no run is started after that
    many seconds; the tables then hold the finished runs and ``missing`` lists the others.
    """
    t_start = time.perf_counter()
    out, data, config = Path(out).resolve(), Path(data).resolve(), Path(config).resolve()
    pairs = expand_conditions(blocks=blocks, adapters=adapters, strategies=strategies, label_fractions=label_fractions,
                              gradient_method=gradient_method, single_task=single_task)
    conds = unique_conditions(pairs)
    split = C.split_ids(C.scan_ids(data), n_test=n_test, n_val=n_val)
    base = [*(T.FAST_OVERRIDES if fast else ()), *overrides]
    n_boot = n_bootstrap if n_bootstrap is not None else (20 if fast else 1000)
    dev = C.default_device(device)
    where = where_measured(dev)
    for c in conds:  # fail early on a bad config value of any condition
        C.resolve_config(config, [f"data.root={data}", *base, *c.point(0).overrides(), *c.overrides()])
    C.write_run_records(out, inputs={"data": data, "config": config}, device=dev,
                        extra={"conditions": [c.key for c in conds], "seeds": list(seeds), "overrides": base,
                               "split": {"train": split[0], "val": split[1], "test": split[2]}})
    n_runs = len(conds) * len(seeds)
    # seed-major order: under a time budget every condition gets its first seed before any its second
    todo = [(c, s) for s in seeds for c in conds]
    kw = {"out": out, "config": config, "data": data, "split": split, "base_overrides": base, "device": device,
          "n_bootstrap": n_boot, "where": where, "overwrite": overwrite}
    deadline = None if time_budget_s is None else t_start + time_budget_s
    records: dict[Condition, list[dict[str, Any]]] = {}
    for c, rec in run_all(todo, kw, jobs=jobs, deadline=deadline):
        records.setdefault(c, []).append(rec)
    for recs in records.values():
        recs.sort(key=lambda r: int(r["seed"]))
    missing = [f"{c.key} seed {s}" for c, s in todo if not any(int(r["seed"]) == s for r in records.get(c, []))]
    if missing:
        logger.warning("learning bench: %d of %d runs not done (time budget): %s", len(missing), n_runs,
                       ", ".join(missing))
    pairs = [(b, c) for b, c in pairs if c in records]
    rows = [make_row(b, c, records[c]) for b, c in pairs]
    dm = None
    if "mtl" in blocks:
        dm = delta_m_table(records, single_task_conditions(single_task), Condition())
    ann = data / "annotations.csv"
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "fast": fast, "data": str(data), "config": str(config),
        "seeds": list(seeds), "blocks": list(blocks), "single_task": single_task, "gradient_method": gradient_method,
        "device": dev, "where": where, "torch_threads": _torch_threads(), "python": platform.python_version(),
        "split": {"train": split[0], "val": split[1], "test": split[2]},
        "bayes_auc_test": bayes_auc(ann, split[2]), "bayes_auc_all": bayes_auc(ann),
        "rows": [asdict(r) for r in rows], "delta_m": dm,
        "runs": [r for recs in records.values() for r in recs],
        "n_runs": n_runs - len(missing), "n_planned": n_runs, "missing": missing, "jobs": jobs,
        "time_budget_s": time_budget_s, "n_reused": sum(bool(r.get("reused")) for recs in records.values() for r in recs),
        "wall_s": round(time.perf_counter() - t_start, 1), "overrides": base,
    }
    res["markdown"] = markdown(res)
    C.write_json(out / "results.json", res)
    C.write_text(out / "results.md", "# Learning benchmark\n\n" + res["markdown"])
    from medmtl.io.writers import atomic_write_csv

    cols = ["run", "key", "tasks", *T.AXES, *(m for m, _, _ in C.METRICS), "mean_grad_cosine", "where", "wall_s",
            "reused"]
    atomic_write_csv(out / "runs.csv", [{k: r.get(k) for k in cols} for r in res["runs"]], cols)
    return res


def _torch_threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:  # noqa: BLE001 - informational only
        return None


def section(res: Mapping[str, Any], command: str) -> str:
    """The dated ``bench/RESULTS.md`` section of a benchmark run."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    head = (f"## Learning (bench/learning.py){' — fast smoke setting' if res['fast'] else ''} — {res['date']}\n\n"
            f"Measured on: {res['where']}; torch threads {res['torch_threads']}, Python {res['python']}; "
            f"{res['n_runs']} runs ({res['n_reused']} reused from an earlier run of the same folder), wall "
            f"{res['wall_s']:.0f} s; load average at the end {load:.1f}.\n\n`{command}`\n\n")
    note = ("\nThese numbers come from the smoke setting (1 epoch of 2 steps): they check the pipeline, "
            "not the methods.\n" if res["fast"] else "")
    return head + res["markdown"] + note


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.learning", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--data", type=Path, default=None, help="labelled scan folder (default sample_data/ct_site_a)")
    p.add_argument("--generate", type=int, default=None, metavar="N",
                   help="generate N fresh site-A CT phantoms into OUT/data and use them instead of --data")
    p.add_argument("--generate-seed", type=int, default=9100, help="seed of the generated set (default 9100)")
    p.add_argument("--config", type=Path, default=None, help="base training config (default configs/demo.yaml)")
    p.add_argument("--seeds", default=None, help="e.g. 0,1,2 (default 0,1,2; --fast: 0)")
    p.add_argument("--blocks", default=",".join(BLOCKS), help="subset of " + ",".join(BLOCKS))
    p.add_argument("--adapters", default=None, help="init block adapters (default inflate,2.5d,acs; --fast: inflate)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="transfer block strategies")
    p.add_argument("--label-fractions", default=None, help="transfer block label shares (default 0.1,0.3,1.0; "
                                                             "--fast: 1.0)")
    p.add_argument("--gradient-method", default="upgrad", help="gradient weighting of the weighting block "
                                                               "(pcgrad, cagrad, upgrad)")
    p.add_argument("--single-task", choices=SINGLE_TASK_MODES, default="with-detection",
                   help="size/malignancy single-task baselines keep the detection loss, or not (strict)")
    p.add_argument("--n-test", type=int, default=3, help="test scans (the last by id)")
    p.add_argument("--n-val", type=int, default=2, help="validation scans (before the test scans)")
    p.add_argument("--append-results", nargs="?", const=REPO / "bench" / "RESULTS.md", default=None, type=Path,
                   metavar="FILE", help="append a dated section to FILE (default bench/RESULTS.md)")
    p.add_argument("--jobs", type=int, default=1, help="runs trained at once (worker processes; default 1)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="start no run after this many seconds; the tables hold the finished runs")
    C.add_run_options(p, set_help="training-config override for every run (repeatable)",
                      fast_help="smoke setting: one seed, 1 epoch of 2 steps, few conditions")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (0 ok, 1 medmtl error, 2 usage error)."""
    args = _parser().parse_args(argv)
    C.setup_logging(args.verbose)
    out = (args.out or Path(tempfile.mkdtemp(prefix="medmtl_bench_learning_"))).resolve()

    def body() -> int:
        seeds = C.parse_list(args.seeds, int) or ([0] if args.fast else [0, 1, 2])
        data = args.data or REPO / "sample_data" / "ct_site_a"
        if args.generate is not None:
            from medmtl import api

            data = api.generate_sample_data(out=out / "data", kind="ct", site="a", n=args.generate,
                                            seed=args.generate_seed, overwrite=True)
        res = run_benchmark(
            out=out, data=Path(data), config=args.config or REPO / "configs" / "demo.yaml", seeds=seeds,
            blocks=C.parse_list(args.blocks) or list(BLOCKS),
            adapters=C.parse_list(args.adapters) or (["inflate"] if args.fast else list(ADAPTERS)),
            strategies=C.parse_list(args.strategies) or list(STRATEGIES),
            label_fractions=C.parse_list(args.label_fractions, float) or ([1.0] if args.fast else list(LABEL_FRACTIONS)),
            gradient_method=args.gradient_method, single_task=args.single_task, n_test=args.n_test, n_val=args.n_val,
            device=args.device, fast=args.fast, n_bootstrap=args.n_bootstrap, overrides=args.overrides,
            overwrite=args.overwrite, jobs=args.jobs, time_budget_s=args.time_budget,
        )
        sys.stdout.write(res["markdown"])
        sys.stdout.write(f"\nwall {res['wall_s']} s; outputs in {out}\n")
        if args.append_results is not None:
            cmd = "python -m bench.learning " + " ".join(sys.argv[1:] if argv is None else argv)
            path = append_results(args.append_results, section(res, cmd.strip()))
            print(f"appended a section to {path}")
        return 0

    return C.run_guarded(body)

if __name__ == "__main__":
    raise SystemExit(main())
