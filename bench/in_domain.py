"""In-domain headline benchmark: the learned model against the classical floor on the same scans.

``python -m bench.in_domain --train-data DIR --test-data DIR [--config configs/ct_phantom_cpu.yaml]
[--seeds 0,1,2] [--out DIR] [--set key=value ...] [--device auto] [--append-results]``

For each seed: ``api.train`` on ``--train-data`` (its own validation split picks the checkpoint
and fits the temperature; the test scans are never seen), then ``api.predict_folder`` and
``api.evaluate`` on every scan of ``--test-data``. Once per call: the training-free classical
detector (``api.detect_classical``) on the same test scans. A finished run (``done.json``) is
reused by a rerun, so a killed call continues where it stopped.

Every row: CPM, diameter MAE (mm), malignancy AUC and ECE with 95 % intervals — over seeds
(percentile bootstrap of the seed mean) when there are ≥ 2 seeds, else the evaluation's
scan-level bootstrap — beside the **Bayes-optimal AUC of the same labelled test lesions**
(with its lesion-bootstrap interval) and the training minutes (optimisation steps, from the
run's ``metrics.csv``; validation passes excluded). Outputs in ``--out``:
``results.json``, ``results.md``; ``--append-results`` appends a dated section to
``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.learning_tables import append_dated_section, bayes_auc, where_measured
from pipelines.evaluation import classical_and_evaluate, predict_and_evaluate
from pipelines.options import add_run_options, default_device, parse_list
from pipelines.runs import REPO, is_done, mark_done, run_guarded
from pipelines.tables import bootstrap_mean_ci, fmt_ci, markdown_table

#: Metrics of the table: (key in ``metrics.json["overall"]``, header).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("cpm", "CPM"),
    ("diameter_mae_mm", "diameter MAE (mm)"),
    ("malignancy_auc", "malignancy AUC"),
    ("malignancy_ece", "ECE"),
)


def _overall(metrics: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    overall = metrics.get("overall", {})
    return {k: {"value": (overall.get(k) or {}).get("value"), "ci95": (overall.get(k) or {}).get("ci95")}
            for k, _ in COLUMNS}


def run_seed(seed: int, *, out: Path, config: Path, train_data: Path, test_data: Path, overrides: Sequence[str],
             device: str) -> dict[str, Any]:
    """Train one seed and score it on the test scans (reused when ``done.json`` is there)."""
    from medmtl import api

    run = out / f"learned_seed{seed}"
    if is_done(run):
        return dict(json.loads((run / "done.json").read_text(encoding="utf-8")))
    ckpt = api.train(config=config, out_dir=run / "train", resume=(run / "train" / "last").exists(),
                     overrides=[f"data.root={train_data}", f"seed={seed}", f"train.device={device}", *overrides])
    t0 = time.perf_counter()
    metrics = predict_and_evaluate(checkpoint=ckpt, input_dir=test_data, annotations=test_data / "annotations.csv",
                                   out_dir=run, device=device, n_bootstrap=1000, seed=seed)
    training_curves(run / "train" / "steps.csv", run / "training_curves.png")
    info = {"seed": seed, "train_minutes": round(training_minutes(run / "train" / "metrics.csv"), 1),
            "test_minutes": round((time.perf_counter() - t0) / 60.0, 1), "metrics": _overall(metrics)}
    mark_done(run, info)
    return info


def training_minutes(metrics_csv: Path) -> float:
    """Minutes of optimisation steps in a run (sum of ``time_s`` of ``metrics.csv``; validation excluded).

    Read from the run's own log, so a run that was resumed after a kill counts its steps once.
    """
    import csv

    with open(metrics_csv, newline="", encoding="utf-8") as fh:
        return sum(float(r["time_s"] or 0.0) for r in csv.DictReader(fh)) / 60.0


def training_curves(steps_csv: Path, dst: Path) -> Path:
    """Per-step task losses (running mean over 25 steps) and the gradient norm before clipping.

    Args:
        steps_csv: a run's ``steps.csv``.
        dst: PNG to write.
    """
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with open(steps_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    step = np.array([float(r["step"]) for r in rows])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    k = np.ones(25) / 25
    for key in ("loss_det", "loss_size", "loss_malig"):
        v = np.array([float(r[key]) for r in rows])
        ax1.plot(step[len(k) - 1:], np.convolve(v, k, mode="valid"), label=key.removeprefix("loss_"))
    ax1.set_xlabel("step")
    ax1.set_ylabel("training loss (running mean of 25 steps)")
    ax1.legend()
    gn = np.array([float(r["grad_norm"]) for r in rows])
    ax2.semilogy(step, gn, lw=0.6)
    ax2.set_xlabel("step")
    ax2.set_ylabel("gradient norm before clipping")
    ax2.set_title(f"max {gn.max():.0f}, median {np.median(gn):.1f}")
    fig.tight_layout()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(dst, dpi=100)
    plt.close(fig)
    return dst


def run_classical(*, out: Path, test_data: Path) -> dict[str, Any]:
    """The training-free floor on the same test scans."""
    run = out / "classical"
    if is_done(run):
        return dict(json.loads((run / "done.json").read_text(encoding="utf-8")))
    metrics = classical_and_evaluate(input_dir=test_data, annotations=test_data / "annotations.csv", out_dir=run)
    info = {"metrics": _overall(metrics)}
    mark_done(run, info)
    return info


def pooled(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Seed mean and bootstrap interval per metric (one seed: that run's scan-level interval)."""
    if len(records) == 1:
        return dict(records[0]["metrics"])
    out = {}
    for key, _ in COLUMNS:
        mean, ci = bootstrap_mean_ci([r["metrics"][key]["value"] for r in records])
        out[key] = {"value": mean, "ci95": list(ci) if ci else None}
    return out


def markdown(res: Mapping[str, Any]) -> str:
    """The results table (classical floor first) and the Bayes AUC line."""
    header = ["condition", *(h for _, h in COLUMNS), "seeds", "train min"]
    rows = [["classical (no training)", *(fmt_ci(res["classical"][k]) for k, _ in COLUMNS), "-", "0"]]
    learned = res["learned"]
    minutes = [r["train_minutes"] for r in learned["runs"]]
    rows.append([f"learned ({res['config_name']})", *(fmt_ci(learned["pooled"][k]) for k, _ in COLUMNS),
                 str(len(minutes)), f"{sum(minutes) / max(1, len(minutes)):.1f}"])
    b = res["bayes_auc"]
    bayes = fmt_ci({"value": b["value"], "ci95": b["ci95"]})
    return "\n".join([
        markdown_table(header, rows), "",
        f"Bayes-optimal malignancy AUC of the same {b['n_lesions']} labelled test lesions "
        f"({b['n_positive']} malignant): {bayes}. Intervals: "
        + ("over seeds (bootstrap of the seed mean)." if len(minutes) > 1 else "scan-level bootstrap (one seed)."),
    ])


def run_benchmark(*, out: Path, config: Path, train_data: Path, test_data: Path, seeds: Sequence[int],
                  overrides: Sequence[str], device: str) -> dict[str, Any]:
    """Every seed, the classical floor and the tables; writes ``results.json`` / ``results.md``."""
    from medmtl.config import load_config

    cfg = load_config(config, overrides=[f"data.root={train_data}", *overrides])
    runs = [run_seed(s, out=out, config=config, train_data=train_data, test_data=test_data, overrides=overrides,
                     device=device) for s in seeds]
    res = {
        "config_name": cfg.name, "config": str(config), "overrides": list(overrides),
        "train_data": str(train_data), "test_data": str(test_data), "where": where_measured(default_device(device)),
        "classical": run_classical(out=out, test_data=test_data)["metrics"],
        "learned": {"runs": runs, "pooled": pooled(runs)},
        "bayes_auc": bayes_auc(test_data / "annotations.csv", n_boot=2000),
    }
    from medmtl import api

    api.write_json(path=out / "results.json", obj=res)
    api.write_text(path=out / "results.md", text=markdown(res) + "\n")
    return res


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train-data", type=Path, required=True, help="labelled training scans (with annotations.csv)")
    p.add_argument("--test-data", type=Path, required=True, help="held-out labelled test scans")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "ct_phantom_cpu.yaml", help="training config")
    p.add_argument("--seeds", default="0", help="training seeds, e.g. 0,1,2 (default 0)")
    p.add_argument("--out", type=Path, required=True, help="output folder (reruns reuse finished runs)")
    p.add_argument("--append-results", nargs="?", const=REPO / "bench" / "RESULTS.md", default=None, type=Path,
                   help="append a dated section to bench/RESULTS.md (or the given file)")
    add_run_options(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = _parser().parse_args(argv)

    def body() -> int:
        from medmtl.errors import ConfigError

        for name in ("train_data", "test_data"):
            folder = Path(getattr(args, name))
            if not (folder / "annotations.csv").is_file():
                raise ConfigError(f"--{name.replace('_', '-')} {folder} has no annotations.csv; pass a labelled scan "
                                  "folder (e.g. made by `medmtl sample-data`)")
        res = run_benchmark(out=args.out, config=args.config, train_data=args.train_data.resolve(),
                            test_data=args.test_data.resolve(), seeds=parse_list(args.seeds, int) or [0],
                            overrides=list(args.overrides), device=args.device)
        text = markdown(res)
        print(text)
        if args.append_results is not None:
            append_dated_section(args.append_results, "In-domain headline: learned vs classical floor", res["where"], "bench.in_domain", argv, text)
        return 0

    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
