"""Learning benchmark: what transfer, multi-task training and task weighting buy, with intervals.

``python -m bench.learning [--fast] [--device auto|cpu|cuda] [--seeds 0,1,2] [--out DIR]
[--data DIR | --generate N] [--blocks init,mtl,weighting,transfer] [--append-results]``

Four blocks of conditions, every one trained on the training scans of ``--data`` and scored on
held-out test scans (the deterministic id split of :func:`pipelines.splits.split_ids`: the
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

This module runs the benchmark and is its command line; the conditions and Δm are
:mod:`bench.learning_conditions`, the tables :mod:`bench.learning_tables`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.learning_conditions import (
    ADAPTERS,
    BLOCK_TITLES,
    BLOCKS,
    LABEL_FRACTIONS,
    SINGLE_TASK_MODES,
    STRATEGIES,
    TASK_METRIC,
    TASK_PARAM,
    TASKS,
    Condition,
    delta_m,
    delta_m_table,
    expand_conditions,
    single_task_conditions,
    task_delta,
    unique_conditions,
)
from bench.learning_tables import (
    Row,
    append_results,
    bayes_auc,
    bayes_line,
    delta_table,
    make_row,
    markdown,
    pool,
    results_table,
    section,
    where_measured,
)
from medmtl import api
from pipelines import transfer_study as T
from pipelines.evaluation import classical_and_evaluate
from pipelines.options import add_run_options, default_device, parse_list
from pipelines.runs import REPO, is_done, mark_done, run_guarded, setup_logging, write_run_records
from pipelines.splits import filter_annotations, split_ids
from pipelines.tables import METRICS, read_overall

logger = logging.getLogger("bench.learning")


# --------------------------------------------------------------------------- running


def run_condition(cond: Condition, seed: int, *, out: Path, config: Path, data: Path,
                  split: tuple[list[str], list[str], list[str]], base_overrides: Sequence[str], device: str,
                  n_bootstrap: int, where: str, overwrite: bool = False) -> dict[str, Any]:
    """Train / predict / evaluate one condition and seed (via :func:`pipelines.transfer_study.run_point`)."""
    import shutil

    run_dir = out / "runs" / f"{cond.key}__s{seed}"
    if overwrite and run_dir.is_dir():
        shutil.rmtree(run_dir)
    reused = is_done(run_dir)
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
        api.write_json(path=where_file, obj=info)
    rec.update(key=cond.key, tasks="+".join(cond.tasks), where=info["where"], wall_s=info.get("wall_s"),
               reused=reused)
    return rec


def classical_floor(*, out: Path, data: Path, test_ids: Sequence[str], n_bootstrap: int) -> dict[str, dict[str, Any]]:
    """The training-free classical detector on the test scans: the floor row of every table.

    Runs once per output folder (``out/classical``, reused by a rerun); returns each metric of
    :data:`pipelines.tables.METRICS` as ``{"value", "ci95"}`` (scan-level bootstrap).
    """
    run = out / "classical"
    if is_done(run):
        return dict(json.loads((run / "done.json").read_text(encoding="utf-8"))["metrics"])
    run.mkdir(parents=True, exist_ok=True)
    ann = filter_annotations(data / "annotations.csv", run / "test_annotations.csv", test_ids)
    classical_and_evaluate(input_dir=data, annotations=ann, out_dir=run, scan_ids=test_ids, n_bootstrap=n_bootstrap)
    floor = read_overall(run / "metrics" / "metrics.json")
    mark_done(run, {"metrics": floor})
    return floor


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
                and not is_done(Path(kw["out"]) / "runs" / f"{c.key}__s{s}"))

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
    split = split_ids(api.scan_ids(folder=data), n_test=n_test, n_val=n_val)
    base = [*(T.FAST_OVERRIDES if fast else ()), *overrides]
    n_boot = n_bootstrap if n_bootstrap is not None else (20 if fast else 1000)
    dev = default_device(device)
    where = where_measured(dev)
    for c in conds:  # fail early on a bad config value of any condition
        api.resolve_config(config=config, overrides=[f"data.root={data}", *base, *c.point(0).overrides(),
                                                     *c.overrides()])
    write_run_records(out, inputs={"data": data, "config": config}, device=dev,
                      extra={"conditions": [c.key for c in conds], "seeds": list(seeds), "overrides": base,
                             "split": {"train": split[0], "val": split[1], "test": split[2]}})
    # seed-major order: under a time budget every condition gets its first seed before any its second
    todo = [(c, s) for s in seeds for c in conds]
    kw = {"out": out, "config": config, "data": data, "split": split, "base_overrides": base, "device": device,
          "n_bootstrap": n_boot, "where": where, "overwrite": overwrite}
    deadline = None if time_budget_s is None else t_start + time_budget_s
    floor = classical_floor(out=out, data=data, test_ids=split[2], n_bootstrap=n_boot)
    records, missing = collect_records(todo, run_all(todo, kw, jobs=jobs, deadline=deadline))
    pairs = [(b, c) for b, c in pairs if c in records]
    ann = data / "annotations.csv"
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "fast": fast, "data": str(data), "config": str(config),
        "seeds": list(seeds), "blocks": list(blocks), "single_task": single_task, "gradient_method": gradient_method,
        "device": dev, "where": where, "torch_threads": _torch_threads(), "python": platform.python_version(),
        "split": {"train": split[0], "val": split[1], "test": split[2]},
        "bayes_auc_test": bayes_auc(ann, split[2]), "bayes_auc_all": bayes_auc(ann),
        "rows": [asdict(make_row(b, c, records[c])) for b, c in pairs], "floor": floor,
        "delta_m": delta_m_table(records, single_task_conditions(single_task), Condition()) if "mtl" in blocks else None,
        "runs": [r for recs in records.values() for r in recs],
        "n_runs": len(todo) - len(missing), "n_planned": len(todo), "missing": missing, "jobs": jobs,
        "time_budget_s": time_budget_s, "n_reused": sum(bool(r.get("reused")) for recs in records.values() for r in recs),
        "wall_s": round(time.perf_counter() - t_start, 1), "overrides": base,
    }
    write_results(out, res)
    return res


def collect_records(
    todo: Sequence[tuple[Condition, int]], done: Sequence[tuple[Condition, dict[str, Any]]]
) -> tuple[dict[Condition, list[dict[str, Any]]], list[str]]:
    """Group finished runs by condition (sorted by seed); ``missing``: the planned runs not done."""
    records: dict[Condition, list[dict[str, Any]]] = {}
    for c, rec in done:
        records.setdefault(c, []).append(rec)
    for recs in records.values():
        recs.sort(key=lambda r: int(r["seed"]))
    missing = [f"{c.key} seed {s}" for c, s in todo if not any(int(r["seed"]) == s for r in records.get(c, []))]
    if missing:
        logger.warning("learning bench: %d of %d runs not done (time budget): %s", len(missing), len(todo),
                       ", ".join(missing))
    return records, missing


def write_results(out: Path, res: dict[str, Any]) -> None:
    """Add the markdown to ``res`` and write ``results.json``, ``results.md`` and ``runs.csv`` into ``out``."""
    res["markdown"] = markdown(res)
    api.write_json(path=out / "results.json", obj=res)
    api.write_text(path=out / "results.md", text="# Learning benchmark\n\n" + res["markdown"])
    cols = ["run", "key", "tasks", *T.AXES, *(m for m, _, _ in METRICS), "mean_grad_cosine", "where", "wall_s",
            "reused"]
    api.write_table(path=out / "runs.csv", rows=[{k: r.get(k) for k in cols} for r in res["runs"]], fieldnames=cols)


def _torch_threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:  # noqa: BLE001 - informational only
        return None


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
    add_run_options(p, set_help="training-config override for every run (repeatable)",
                    fast_help="smoke setting: one seed, 1 epoch of 2 steps, few conditions")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (0 ok, 1 medmtl error, 2 usage error)."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)
    out = (args.out or Path(tempfile.mkdtemp(prefix="medmtl_bench_learning_"))).resolve()

    def body() -> int:
        seeds = parse_list(args.seeds, int) or ([0] if args.fast else [0, 1, 2])
        data = args.data or REPO / "sample_data" / "ct_site_a"
        if args.generate is not None:
            data = api.generate_sample_data(out=out / "data", kind="ct", site="a", n=args.generate,
                                            seed=args.generate_seed, overwrite=True)
        res = run_benchmark(
            out=out, data=Path(data), config=args.config or REPO / "configs" / "demo.yaml", seeds=seeds,
            blocks=parse_list(args.blocks) or list(BLOCKS),
            adapters=parse_list(args.adapters) or (["inflate"] if args.fast else list(ADAPTERS)),
            strategies=parse_list(args.strategies) or list(STRATEGIES),
            label_fractions=parse_list(args.label_fractions, float) or ([1.0] if args.fast else list(LABEL_FRACTIONS)),
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

    return run_guarded(body)


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
    "Row",
    "append_results",
    "bayes_auc",
    "bayes_line",
    "collect_records",
    "delta_m",
    "delta_m_table",
    "delta_table",
    "expand_conditions",
    "main",
    "make_row",
    "markdown",
    "pool",
    "results_table",
    "run_all",
    "run_benchmark",
    "run_condition",
    "section",
    "single_task_conditions",
    "task_delta",
    "unique_conditions",
    "where_measured",
    "write_results",
]


if __name__ == "__main__":
    raise SystemExit(main())
