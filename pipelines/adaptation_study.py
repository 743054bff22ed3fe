"""Adaptation study: train on site A, adapt to site B with each method, compare.

``python -m pipelines.adaptation_study --out runs/adaptation [--fast]``

For each seed: train the multi-task net on site A (:func:`medmtl.api.train`; or reuse a
``--checkpoint``), predict site A's held-out scans (the in-domain reference), then for each
method in ``--methods`` (``none``, ``adabn``, ``tent``, ``histmatch``, ``dann``, ``resim``, ``n4``) adapt the
checkpoint to site B without labels (:func:`medmtl.api.adapt`; ``none`` = the checkpoint as
is), predict site B (:func:`medmtl.api.predict_folder`) and evaluate
(:func:`medmtl.api.evaluate`). The table reports CPM, diameter MAE (mm) and malignancy AUC per
method with 95% intervals (percentile bootstrap over seeds with ≥ 2 seeds, else the
evaluation's scan-level bootstrap) and the share of the A→B gap each method closes:
``(m_method − m_none) / (m_A − m_none)`` (1 = in-domain quality, 0 = no gain).

Layout of ``--out``::

    config.yaml versions.json inputs.json      records of the study (resolved config, versions, input hashes)
    seed_<s>/train/                           trainer run folder (checkpoint/, metrics.csv, ...)
    seed_<s>/reference/{predictions,metrics}/ site A held-out
    seed_<s>/<method>/{checkpoint,predictions,metrics}/
    results.csv results.json results.md        the table

A finished step leaves ``done.json``; a rerun reuses finished steps and redoes unfinished ones
(``--overwrite`` redoes everything). Nothing outside ``--out`` is touched.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmtl import api
from pipelines.evaluation import predict_and_evaluate
from pipelines.options import add_run_options, default_device, parse_list
from pipelines.runs import REPO, is_done, mark_done, run_guarded, setup_logging, write_run_records
from pipelines.splits import filter_annotations, id_list, split_ids
from pipelines.tables import METRICS, bootstrap_mean_ci, fmt, fmt_ci, gap_closed, markdown_table, read_overall

METHODS = ("none", "adabn", "tent", "histmatch", "dann", "resim")
FAST_OVERRIDES = (
    "train.epochs=1",
    "train.steps_per_epoch=2",
    "train.patch_size=[32, 32, 32]",
    "train.conflict_every=0",
    "validation.calibrate=false",
    "data.reference_scans=1",
)


def _fresh(folder: Path) -> Path:
    """Empty ``folder`` (an unfinished step of this study) and return it."""
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    return folder


def run_study(
    *,
    out: Path,
    config: Path = REPO / "configs" / "demo.yaml",
    source: Path = REPO / "sample_data" / "ct_site_a",
    target: Path = REPO / "sample_data" / "ct_site_b",
    methods: Sequence[str] = METHODS,
    seeds: Sequence[int] = (0,),
    checkpoint: Path | None = None,
    n_heldout: int = 3,
    device: str = "auto",
    fast: bool = False,
    n_bootstrap: int | None = None,
    overrides: Sequence[str] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the study into ``out``; returns ``results.json``'s dict.

    Args:
        out: study folder.
        config: training config (ignored with ``checkpoint``).
        source: site A (training) folder with ``annotations.csv``.
        target: site B folder with ``annotations.csv`` (labels used for evaluation only).
        methods: adaptation methods; ``none`` is the unadapted baseline (always added).
        seeds: training/adaptation seeds.
        checkpoint: reuse this checkpoint instead of training (one seed only); its card's
            ``train_config.data.val_ids`` (or the last ``n_heldout`` scans) are the reference.
        n_heldout: site A scans held out of training (the last ones by id).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        fast: tiny smoke-test settings.
        n_bootstrap: evaluation bootstrap replicates (default 500; 20 with ``fast``).
        overrides: extra training-config overrides.
        overwrite: redo every step.
    """
    out = Path(out).resolve()
    card = api.read_card(checkpoint=checkpoint) if checkpoint is not None else None  # a bad checkpoint fails before `out` is touched
    if overwrite:
        for name in ("results.csv", "results.json", "results.md", "config.yaml", "versions.json", "inputs.json"):
            (out / name).unlink(missing_ok=True)
        for sub in out.glob("seed_*"):
            shutil.rmtree(sub)
    methods = ["none", *[m for m in methods if m != "none"]]
    n_boot = n_bootstrap if n_bootstrap is not None else (20 if fast else 500)
    source, target = Path(source).resolve(), Path(target).resolve()
    ids = api.scan_ids(folder=source)
    train_ids, heldout_ids, _ = split_ids(ids, n_test=0, n_val=n_heldout)
    if card is not None:
        seeds = list(seeds)[:1]
        val_ids = card.train_config.data.val_ids if card.train_config is not None else None
        if val_ids:
            heldout_ids = sorted(val_ids)
    base_overrides = [
        f"data.root={source}",
        f"data.annotations={source / 'annotations.csv'}",
        "data.max_scans=null",
        f"data.train_ids={id_list(train_ids)}",
        f"data.val_ids={id_list(heldout_ids)}",
        f"train.device={device}",
        *(FAST_OVERRIDES if fast else ()),
        *overrides,
    ]
    cfg = api.resolve_config(config=Path(config), overrides=base_overrides) if checkpoint is None else None
    inputs: dict[str, Path] = {"source": source, "target": target}
    inputs.update({"checkpoint": Path(checkpoint)} if checkpoint is not None else {"config": Path(config)})
    write_run_records(out, inputs=inputs, config=cfg, device=default_device(device),
                      extra={"methods": methods, "seeds": list(seeds), "heldout_ids": heldout_ids,
                             "overrides": base_overrides, "fast": fast})
    ref_ann = filter_annotations(source / "annotations.csv", out / "site_a_heldout_annotations.csv", heldout_ids)
    per_seed = [
        run_seed(out / f"seed_{seed}", seed=seed, checkpoint=checkpoint, config=Path(config),
                 base_overrides=base_overrides, source=source, target=target, ref_ann=ref_ann,
                 heldout_ids=heldout_ids, methods=methods, device=device, n_bootstrap=n_boot, fast=fast)
        for seed in seeds
    ]
    return summarize(out, per_seed, methods)


def run_seed(
    sdir: Path,
    *,
    seed: int,
    checkpoint: Path | None,
    config: Path,
    base_overrides: Sequence[str],
    source: Path,
    target: Path,
    ref_ann: Path,
    heldout_ids: Sequence[str],
    methods: Sequence[str],
    device: str,
    n_bootstrap: int,
    fast: bool,
) -> dict[str, Any]:
    """One seed of the study into ``sdir``: train (or reuse ``checkpoint``), the reference, every method.

    Finished steps (``done.json``) are reused. Returns ``{"seed", "reference", "methods": {method: overall}}``
    with each ``overall`` read from its ``metrics.json`` (:func:`pipelines.tables.read_overall`).
    """
    if checkpoint is not None:
        ckpt = Path(checkpoint).resolve()
    else:
        tdir = sdir / "train"
        if not is_done(tdir):
            api.train(config=config, out_dir=_fresh(tdir), overrides=[*base_overrides, f"seed={seed}"])
            mark_done(tdir, {"seed": seed})
        ckpt = tdir / "checkpoint"
    record: dict[str, Any] = {"seed": seed, "methods": {}}
    rdir = sdir / "reference"
    if not is_done(rdir):
        predict_and_evaluate(checkpoint=ckpt, input_dir=source, annotations=ref_ann, out_dir=_fresh(rdir),
                             scan_ids=heldout_ids, device=device, n_bootstrap=n_bootstrap, seed=seed)
        mark_done(rdir, {"seed": seed})
    record["reference"] = read_overall(rdir / "metrics" / "metrics.json")
    for method in methods:
        mdir = sdir / method
        if not is_done(mdir):
            _fresh(mdir)
            mckpt = ckpt
            if method != "none":
                mckpt = api.adapt(checkpoint=ckpt, target=target, method=method, out=mdir / "checkpoint",
                                  seed=seed, steps=2 if fast and method in ("dann", "resim") else None)
            predict_and_evaluate(checkpoint=mckpt, input_dir=target, annotations=target / "annotations.csv",
                                 out_dir=mdir, device=device, n_bootstrap=n_bootstrap, seed=seed)
            mark_done(mdir, {"seed": seed, "method": method})
        record["methods"][method] = read_overall(mdir / "metrics" / "metrics.json")
    return record


def summarize(out: Path, per_seed: Sequence[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Aggregate seeds into ``results.{csv,json,md}`` and return the results dict."""
    rows: list[dict[str, Any]] = []
    conditions = [("site A held-out (reference)", None), *((f"site B, {m}", m) for m in methods)]
    for title, method in conditions:
        row: dict[str, Any] = {"condition": title, "method": method or "reference", "n_seeds": len(per_seed)}
        for key, _, _ in METRICS:
            vals = [(r["reference"] if method is None else r["methods"][method])[key] for r in per_seed]
            if len(per_seed) >= 2:
                mean, ci = bootstrap_mean_ci([v["value"] for v in vals])
                row[key], row[f"{key}_ci95"], row["ci_over"] = mean, list(ci) if ci else None, "seeds"
            else:
                row[key], row[f"{key}_ci95"], row["ci_over"] = vals[0]["value"], vals[0]["ci95"], "scans"
            if method not in (None, "none"):
                gaps = [gap_closed(r["methods"][method][key]["value"], r["methods"]["none"][key]["value"],
                                   r["reference"][key]["value"]) for r in per_seed]
                gap_mean, _ = bootstrap_mean_ci([g for g in gaps if g is not None])
                row[f"{key}_gap_closed"] = gap_mean
        rows.append(row)
    header = ["condition", *(h for _, h, _ in METRICS), *(f"{h} gap closed" for _, h, _ in METRICS)]
    body = []
    for row in rows:
        cells = [fmt_ci({"value": row[k], "ci95": row[f"{k}_ci95"]}) for k, _, _ in METRICS]
        gap_cells = [fmt(row.get(f"{k}_gap_closed"), 2) if f"{k}_gap_closed" in row else "—"
                     for k, _, _ in METRICS]
        body.append([row["condition"], *cells, *gap_cells])
    table = markdown_table(header, body)
    cols = ["condition", "method", "n_seeds", "ci_over"]
    for key, _, _ in METRICS:
        cols += [key, f"{key}_ci_lo", f"{key}_ci_hi", f"{key}_gap_closed"]
    flat = []
    for row in rows:
        f = {k: row.get(k) for k in ("condition", "method", "n_seeds", "ci_over")}
        for key, _, _ in METRICS:
            lo_hi = row.get(f"{key}_ci95") or [None, None]
            f.update({key: row[key], f"{key}_ci_lo": lo_hi[0], f"{key}_ci_hi": lo_hi[1],
                      f"{key}_gap_closed": row.get(f"{key}_gap_closed")})
        flat.append(f)
    api.write_table(path=out / "results.csv", rows=flat, fieldnames=cols)
    results = {"rows": rows, "per_seed": list(per_seed), "table": table}
    api.write_json(path=out / "results.json", obj=results)
    api.write_text(path=out / "results.md", text="# Adaptation study: site A → site B\n\n" + table + "\n\n"
                   "Intervals: 95% percentile bootstrap over seeds (≥ 2 seeds) or over scans (one seed). "
                   "Gap closed = (m_method − m_none) / (m_A − m_none).\n")
    return results


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.adaptation_study", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="study folder")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml", help="training config")
    p.add_argument("--checkpoint", type=Path, default=None, help="reuse this checkpoint instead of training")
    p.add_argument("--source", type=Path, default=REPO / "sample_data" / "ct_site_a", help="site A folder")
    p.add_argument("--target", type=Path, default=REPO / "sample_data" / "ct_site_b", help="site B folder")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}, n4")
    p.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    p.add_argument("--n-heldout", type=int, default=3, help="site A scans held out of training")
    add_run_options(p, overwrite_help="redo every step")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (0 ok, 1 medmtl error, 2 usage error)."""
    args = _parser().parse_args(argv)
    setup_logging(args.verbose)

    def body() -> int:
        results = run_study(
            out=args.out, config=args.config, source=args.source, target=args.target,
            methods=parse_list(args.methods) or ["none"], seeds=parse_list(args.seeds, int) or [0],
            checkpoint=args.checkpoint, n_heldout=args.n_heldout, device=args.device, fast=args.fast,
            n_bootstrap=args.n_bootstrap, overrides=args.overrides, overwrite=args.overwrite,
        )
        print(results["table"])
        print(f"wrote {Path(args.out).resolve() / 'results.md'}")
        return 0

    return run_guarded(body)

if __name__ == "__main__":
    sys.exit(main())
