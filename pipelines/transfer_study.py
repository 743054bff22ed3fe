"""Transfer / multi-task study: adapters × strategies × weightings × label fractions × seeds.

``python -m pipelines.transfer_study --out runs/transfer [--grid grid.yaml] [--fast]``
or with CLI lists: ``--adapters inflate,2.5d --strategies full,linear-probe --weightings
fixed,uncertainty --label-fractions 1.0,0.3 --pretrained true,false --seeds 0,1,2``.

Every grid point is one run folder (``runs/<name>/``) holding ``config.yaml`` (the resolved
config), ``versions.json``, ``inputs.json`` (input folders with file hashes), ``train/``
(:func:`medmtl.api.train`: checkpoint, ``metrics.csv``, ``gradient_conflict.csv``),
``predictions/`` (:func:`medmtl.api.predict_folder` on the test scans) and ``metrics/``
(:func:`medmtl.api.evaluate`). The scans of ``--data`` are split deterministically by id:
the last ``n_test`` are the test set, the ``n_val`` before them validate, the rest train.

The table (``results.md`` / ``.csv`` / ``.json``) has one row per configuration (seeds pooled):
CPM, diameter MAE (mm), malignancy AUC as mean with a 95% interval — percentile bootstrap of
the mean over seeds when there are ≥ 2 seeds, else the evaluation's scan-level bootstrap —
plus the mean task-gradient cosine from the runs' ``gradient_conflict.csv``.

Grid YAML (every key optional; CLI lists override it)::

    config: configs/demo.yaml        # base training config
    data: sample_data/ct_site_a
    n_test: 3
    n_val: 2
    overrides: [train.epochs=4]
    grid:
      adapter: [inflate, 2.5d]
      strategy: [full, linear-probe]
      weighting: [fixed, uncertainty]
      label_fraction: [1.0, 0.3]
      pretrained: [true, false]
      seed: [0, 1, 2]

A finished run leaves ``done.json`` and is reused by a rerun (``--overwrite`` redoes it).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
import shutil
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medmtl import api
from pipelines.evaluation import predict_and_evaluate
from pipelines.options import add_run_options, default_device, parse_bool, parse_list
from pipelines.runs import REPO, is_done, mark_done, run_guarded, setup_logging, write_run_records
from pipelines.splits import filter_annotations, id_list, split_ids
from pipelines.tables import METRICS, bootstrap_mean_ci, fmt, fmt_ci, markdown_table, read_overall

logger = logging.getLogger("pipelines.transfer_study")

#: Grid axes, their config keys and defaults.
AXES: dict[str, tuple[str, list[Any]]] = {
    "adapter": ("model.adapter", ["inflate"]),
    "strategy": ("strategy.name", ["full"]),
    "weighting": ("weighting.name", ["fixed"]),
    "label_fraction": ("data.label_fraction", [1.0]),
    "pretrained": ("model.pretrained", [True]),
    "seed": ("seed", [0]),
}
GRID_KEYS = ("config", "data", "n_test", "n_val", "overrides", "grid")
FAST_OVERRIDES = (
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "train.patch_size=[32, 32, 32]",
    "train.conflict_every=1",
    "validation.calibrate=false",
    "data.reference_scans=1",
)


@dataclass(frozen=True)
class Point:
    """One grid point (one training run)."""

    adapter: str
    strategy: str
    weighting: str
    label_fraction: float
    pretrained: bool
    seed: int

    @property
    def name(self) -> str:
        """Run-folder name, e.g. ``inflate__full__fixed__lf1__pre__s0``."""
        lf = f"{self.label_fraction:g}".replace(".", "p")
        return (f"{self.adapter.replace('.', 'p')}__{self.strategy}__{self.weighting}__lf{lf}__"
                f"{'pre' if self.pretrained else 'scratch'}__s{self.seed}")

    @property
    def group(self) -> tuple[Any, ...]:
        """The configuration without the seed (rows of the table)."""
        return (self.adapter, self.strategy, self.weighting, self.label_fraction, self.pretrained)

    def overrides(self) -> list[str]:
        """Training-config overrides of this point."""
        return [f"{AXES[k][0]}={str(v).lower() if isinstance(v, bool) else v}" for k, v in asdict(self).items()]


def load_grid(path: Path | None) -> dict[str, Any]:
    """Read a grid YAML (unknown keys and axes fail with the allowed ones)."""
    if path is None:
        return {}
    import yaml

    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict):
        raise ValueError(f"grid file '{path}' must hold a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = sorted(set(data) - set(GRID_KEYS))
    if unknown:
        raise ValueError(f"grid file '{path}': unknown key(s) {unknown}; allowed: {', '.join(GRID_KEYS)}")
    grid = data.get("grid") or {}
    bad = sorted(set(grid) - set(AXES))
    if bad:
        raise ValueError(f"grid file '{path}': unknown axis {bad}; allowed: {', '.join(AXES)}")
    return data


def expand(grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """The Cartesian product of the axes (missing axes take their default)."""
    axes = {k: list(grid.get(k) or default) for k, (_, default) in AXES.items()}
    points = []
    for combo in itertools.product(*axes.values()):
        d = dict(zip(axes, combo))
        points.append(Point(adapter=str(d["adapter"]), strategy=str(d["strategy"]), weighting=str(d["weighting"]),
                            label_fraction=float(d["label_fraction"]), pretrained=_as_bool(d["pretrained"]),
                            seed=int(d["seed"])))
    return points


def _as_bool(v: Any) -> bool:
    return v if isinstance(v, bool) else parse_bool(str(v))


def run_point(
    point: Point,
    *,
    run_dir: Path,
    config: Path,
    data: Path,
    split: tuple[list[str], list[str], list[str]],
    base_overrides: Sequence[str],
    device: str,
    n_bootstrap: int,
) -> dict[str, Any]:
    """Train, predict the test scans and evaluate one grid point; returns its summary record."""
    train_ids, val_ids, test_ids = split
    if not is_done(run_dir):
        if run_dir.is_dir():
            shutil.rmtree(run_dir)
        overrides = [
            f"data.root={data}",
            f"data.annotations={data / 'annotations.csv'}",
            "data.max_scans=null",
            f"data.train_ids={id_list(train_ids)}",
            f"data.val_ids={id_list(val_ids)}",
            f"train.device={device}",
            *base_overrides,
            *point.overrides(),
        ]
        cfg = api.resolve_config(config=config, overrides=overrides)
        write_run_records(run_dir, inputs={"data": data, "config": config}, config=cfg,
                          device=default_device(device),
                          extra={"point": asdict(point), "train_ids": train_ids, "val_ids": val_ids,
                                 "test_ids": test_ids, "overrides": overrides})
        ckpt = api.train(config=config, out_dir=run_dir / "train", overrides=overrides)
        test_ann = filter_annotations(data / "annotations.csv", run_dir / "test_annotations.csv", test_ids)
        predict_and_evaluate(checkpoint=Path(ckpt), input_dir=data, annotations=test_ann, out_dir=run_dir,
                             scan_ids=test_ids, device=device, n_bootstrap=n_bootstrap, seed=point.seed)
        mark_done(run_dir, {"point": asdict(point)})
    record: dict[str, Any] = {"run": run_dir.name, **asdict(point)}
    overall = read_overall(run_dir / "metrics" / "metrics.json")
    for key, _, _ in METRICS:
        record[key] = overall[key]["value"]
        record[f"{key}_ci95"] = overall[key]["ci95"]
    record["mean_grad_cosine"] = mean_gradient_cosine(run_dir / "train" / "gradient_conflict.csv")
    return record


def mean_gradient_cosine(path: Path) -> float | None:
    """Mean over epochs and task pairs of the ``cos*`` columns of ``gradient_conflict.csv`` (None if absent)."""
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    vals = []
    for r in rows:
        for k, v in r.items():
            if k and k.startswith("cos") and v not in (None, ""):
                try:
                    f = float(v)
                except ValueError:
                    continue
                if math.isfinite(f):
                    vals.append(f)
    return sum(vals) / len(vals) if vals else None


def aggregate(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pool seeds per configuration: mean and 95% interval of each metric."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in records:
        key = (r["adapter"], r["strategy"], r["weighting"], r["label_fraction"], r["pretrained"])
        groups.setdefault(key, []).append(r)
    rows = []
    for key, recs in groups.items():
        row: dict[str, Any] = dict(zip(("adapter", "strategy", "weighting", "label_fraction", "pretrained"), key))
        row["n_seeds"] = len(recs)
        row["ci_over"] = "seeds" if len(recs) >= 2 else "scans"
        for m, _, _ in METRICS:
            if len(recs) >= 2:
                mean, ci = bootstrap_mean_ci([r[m] for r in recs])
                row[m], row[f"{m}_ci95"] = mean, list(ci) if ci else None
            else:
                row[m], row[f"{m}_ci95"] = recs[0][m], recs[0][f"{m}_ci95"]
        cos = [r["mean_grad_cosine"] for r in recs if r.get("mean_grad_cosine") is not None]
        row["mean_grad_cosine"] = sum(cos) / len(cos) if cos else None
        rows.append(row)
    return rows


def table(rows: Sequence[dict[str, Any]]) -> str:
    """The study's markdown table."""
    header = ["adapter", "strategy", "weighting", "labels", "init", "seeds",
              *(h for _, h, _ in METRICS), "grad cos"]
    body = [[r["adapter"], r["strategy"], r["weighting"], f"{r['label_fraction']:g}",
             "ImageNet" if r["pretrained"] else "scratch", str(r["n_seeds"]),
             *(fmt_ci({"value": r[m], "ci95": r[f"{m}_ci95"]}) for m, _, _ in METRICS),
             fmt(r["mean_grad_cosine"], 2)] for r in rows]
    return markdown_table(header, body)


def run_study(
    *,
    out: Path,
    grid: Mapping[str, Sequence[Any]] | None = None,
    config: Path = REPO / "configs" / "demo.yaml",
    data: Path = REPO / "sample_data" / "ct_site_a",
    n_test: int = 3,
    n_val: int = 2,
    device: str = "auto",
    fast: bool = False,
    n_bootstrap: int | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run every grid point into ``out/runs/`` and write the tables; returns ``results.json``'s dict.

    Args:
        out: study folder.
        grid: axis → values (see :data:`AXES`); missing axes take their default.
        config: base training config.
        data: labelled scan folder (split by id into train / val / test).
        n_test: test scans (the last by id).
        n_val: validation scans (before the test scans).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        fast: tiny smoke-test settings.
        n_bootstrap: evaluation bootstrap replicates (default 500; 20 with ``fast``).
        overrides: training-config overrides applied to every point.
        overwrite: redo finished runs.
    """
    out = Path(out).resolve()
    data, config = Path(data).resolve(), Path(config).resolve()
    points = expand(grid or {})
    split = split_ids(api.scan_ids(folder=data), n_test=n_test, n_val=n_val)
    base = [*(FAST_OVERRIDES if fast else ()), *overrides]
    n_boot = n_bootstrap if n_bootstrap is not None else (20 if fast else 500)
    api.resolve_config(config=config, overrides=[f"data.root={data}", *base])  # fail early on a bad config
    write_run_records(out, inputs={"data": data, "config": config}, device=default_device(device),
                      extra={"grid": {k: [str(v) for v in vs] for k, vs in (grid or {}).items()},
                             "points": [p.name for p in points], "overrides": base, "split":
                             {"train": split[0], "val": split[1], "test": split[2]}})
    records = []
    for i, point in enumerate(points, 1):
        run_dir = out / "runs" / point.name
        if overwrite and run_dir.is_dir():
            shutil.rmtree(run_dir)
        logger.info("transfer study: run %d/%d %s", i, len(points), point.name)
        records.append(run_point(point, run_dir=run_dir, config=config, data=data, split=split,
                                 base_overrides=base, device=device, n_bootstrap=n_boot))
    return write_tables(out, records, test_ids=split[2])


def write_tables(out: Path, records: Sequence[dict[str, Any]], *, test_ids: Sequence[str]) -> dict[str, Any]:
    """Pool the runs' records and write ``results.{csv,json,md}`` and ``runs.csv``; return the results dict."""
    rows = aggregate(records)
    text = table(rows)
    cols = ["adapter", "strategy", "weighting", "label_fraction", "pretrained", "n_seeds", "ci_over"]
    for m, _, _ in METRICS:
        cols += [m, f"{m}_ci_lo", f"{m}_ci_hi"]
    cols.append("mean_grad_cosine")
    flat = []
    for r in rows:
        f = {k: r[k] for k in cols if k in r}
        for m, _, _ in METRICS:
            ci = r.get(f"{m}_ci95") or [None, None]
            f[f"{m}_ci_lo"], f[f"{m}_ci_hi"] = ci[0], ci[1]
        flat.append(f)
    api.write_table(path=out / "results.csv", rows=flat, fieldnames=cols)
    api.write_table(path=out / "runs.csv", rows=[{k: v for k, v in r.items() if not k.endswith("_ci95")} for r in records],
                    fieldnames=["run", *AXES, *(m for m, _, _ in METRICS), "mean_grad_cosine"])
    results = {"rows": rows, "runs": list(records), "table": text}
    api.write_json(path=out / "results.json", obj=results)
    api.write_text(path=out / "results.md", text="# Transfer / multi-task study\n\n" + text + "\n\nTest scans: "
                   + ", ".join(test_ids) + ". Intervals: 95% percentile bootstrap over seeds (≥ 2 seeds) or over "
                   "scans (one seed). grad cos: mean task-gradient cosine on the shared encoder.\n")
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.transfer_study", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="study folder")
    p.add_argument("--grid", type=Path, default=None, help="grid YAML (see the module docstring)")
    p.add_argument("--config", type=Path, default=None, help="base training config (default configs/demo.yaml)")
    p.add_argument("--data", type=Path, default=None, help="labelled scan folder (default sample_data/ct_site_a)")
    p.add_argument("--adapters", default=None, help="e.g. inflate,2.5d,acs")
    p.add_argument("--strategies", default=None, help="e.g. full,linear-probe,lp-ft,partial,gradual")
    p.add_argument("--weightings", default=None, help="e.g. fixed,uncertainty,dwa,gradnorm,pcgrad,upgrad")
    p.add_argument("--label-fractions", default=None, help="e.g. 1.0,0.3,0.1")
    p.add_argument("--pretrained", default=None, help="true,false (ImageNet vs scratch)")
    p.add_argument("--seeds", default=None, help="e.g. 0,1,2")
    p.add_argument("--n-test", type=int, default=None, help="test scans (default 3)")
    p.add_argument("--n-val", type=int, default=None, help="validation scans (default 2)")
    add_run_options(p, set_help="training-config override for every run (repeatable)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (0 ok, 1 medmtl error, 2 usage error)."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        spec = load_grid(args.grid)
        grid: dict[str, list[Any]] = {k: list(v) for k, v in (spec.get("grid") or {}).items()}
        cli = {"adapter": parse_list(args.adapters), "strategy": parse_list(args.strategies),
               "weighting": parse_list(args.weightings), "label_fraction": parse_list(args.label_fractions, float),
               "pretrained": parse_list(args.pretrained, parse_bool), "seed": parse_list(args.seeds, int)}
        grid.update({k: v for k, v in cli.items() if v})
        results = run_study(
            out=args.out, grid=grid,
            config=args.config or Path(spec.get("config") or REPO / "configs" / "demo.yaml"),
            data=args.data or Path(spec.get("data") or REPO / "sample_data" / "ct_site_a"),
            n_test=args.n_test if args.n_test is not None else int(spec.get("n_test", 3)),
            n_val=args.n_val if args.n_val is not None else int(spec.get("n_val", 2)),
            device=args.device, fast=args.fast, n_bootstrap=args.n_bootstrap,
            overrides=[*(spec.get("overrides") or []), *args.overrides], overwrite=args.overwrite,
        )
        print(results["table"])
        print(f"wrote {Path(args.out).resolve() / 'results.md'}")
        return 0

    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
