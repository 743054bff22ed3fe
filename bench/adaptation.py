"""Adaptation benchmark: train on site A, test on site B before and after each adaptation.

``python -m bench.adaptation [--fast] [--out DIR]``

Part 1 — **adaptation quality** (public API only: :func:`medmtl.api.train`,
:func:`~medmtl.api.adapt`, :func:`~medmtl.api.predict_folder`, :func:`~medmtl.api.evaluate`):

1. train the multi-task net on site A (``configs/tiny.yaml``; the last ``--n-heldout`` site-A
   scans by id are held out — they are the trainer's validation split, so their numbers are a
   slightly optimistic in-domain reference);
2. predict and evaluate the held-out site-A scans (in-domain) and site B without adaptation;
3. adapt the checkpoint to site B *without labels* with each method (``adabn`` — Li et al.
   2016; ``adabn-shift`` — its statistics-shift variant, with the unlabelled site-A training
   scans as source; ``tent`` — Wang et al. 2021; ``histmatch`` — Nyúl & Udupa 1999; ``dann`` — Ganin et
   al. 2016, and ``resim`` — the labelled site-A training scans re-simulated at the acquisition
   measured on the unlabelled site-B scans, both with the labelled site-A training scans as
   source), predict and evaluate site B;
4. report CPM, diameter MAE and malignancy AUC with the evaluation's scan-level bootstrap 95%
   intervals (``metrics.json``), and the share of the A→B gap each method closes:
   ``gap = m(A held-out) − m(B, none)``, ``share = (m(B, method) − m(B, none)) / gap``
   (1 = in-domain quality, 0 = no gain, < 0 = worse; the same formula holds for MAE,
   where both numbers are negative when the method helps).

Part 2 — **calibration of the shift diagnostics** (:mod:`medmtl.shift.two_sample`): fresh
phantoms are generated (:func:`medmtl.api.generate_sample_data`, seeds disjoint from
``sample_data``), pooled ImageNet EfficientNet-Lite0 *inflate* features are extracted once (the
default extractor of ``medmtl diagnose``, here at a 6 mm grid), then for ``n`` scans per side
the false-alarm rate (site A vs disjoint site A, α = 0.05) and the power (site A vs site B,
α = 0.05 and 0.01) of the kernel-MMD (Gretton et al. 2012) and domain-classifier (Lopez-Paz &
Oquab 2017) permutation tests are estimated over repeated random draws.

Outputs in ``--out``: ``results.json`` and ``results.md`` (the tables, also printed). A second
call into the same ``--out`` reuses the trained and adapted checkpoints an earlier call left
there when their settings match (e.g. to add a method), and refuses them when they do not.
``--combine DIR DIR …`` runs nothing: it combines earlier runs that differ only in the training
seed (``--set seed=N``, e.g. run in parallel on several machines) into mean ± SD tables with the
gap shares of the run-averaged metrics (``combined.json`` / ``combined.md``).
``--fast`` keeps the whole run to about 15 minutes on a shared 2-core CPU (two short training
epochs, no overlap in the sliding window, 200 bootstrap replicates, 20 draws per size).
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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bench.machine import cpu_model
from pipelines.splits import filter_annotations
from pipelines.tables import METRICS as TABLE_METRICS
from pipelines.tables import gap_closed, read_overall

REPO = Path(__file__).resolve().parents[1]
METHODS = ("adabn", "adabn-shift", "tent", "histmatch", "dann", "resim")
METRICS = tuple((key, title) for key, title, _ in TABLE_METRICS)
logger = logging.getLogger("bench.adaptation")


def gap_share(ref: float | None, none: float | None, after: float | None) -> float | None:
    """``(after − none) / (ref − none)``; ``None`` when undefined or the gap is ~0 (:func:`pipelines.tables.gap_closed`)."""
    return gap_closed(after, none, ref)


def train_or_reuse(config: Path, out_dir: Path, overrides: Sequence[str]) -> tuple[Path, bool]:
    """Train into ``out_dir``, or reuse the checkpoint an earlier call left there.

    Returns:
        ``(checkpoint folder, reused)``.

    Raises:
        ValueError: ``out_dir`` holds a checkpoint trained with another configuration.
    """
    from medmtl import api

    card_path = out_dir / "checkpoint" / "model_card.json"
    if card_path.is_file():
        card = api.read_card(checkpoint=card_path.parent)
        trained = card.train_config.to_dict() if card.train_config is not None else None
        if trained != api.resolve_config(config=config, overrides=list(overrides)):
            raise ValueError(f"{out_dir} holds a checkpoint trained with other settings; use a new --out folder")
        logger.info("reusing %s (same training config)", card_path.parent)
        return card_path.parent, True
    return Path(api.train(config=config, out_dir=out_dir, overrides=list(overrides))), False


def adapt_or_reuse(out: Path, *, checkpoint: Path, method: str, steps: int | None, **kw: Any) -> tuple[Path, bool]:
    """``api.adapt`` into ``out``, or reuse an adapted checkpoint of ``checkpoint`` by ``method`` found there.

    Raises:
        ValueError: ``out`` holds another adaptation (other source checkpoint, method or steps).
    """
    from medmtl import api

    card_path = out / "model_card.json"
    if card_path.is_file():
        history = api.read_card(checkpoint=out).adaptation
        rec = history[-1] if history else None
        same = (rec is not None and rec.method == method and rec.source_checkpoint == str(checkpoint)
                and (steps is None or rec.params.get("steps") == steps))
        if not same:
            raise ValueError(f"{out} holds another adaptation ({rec.method if rec else None}, steps "
                             f"{rec.params.get('steps') if rec else None}); use a new --out folder")
        logger.info("reusing %s", out)
        return out, True
    return Path(api.adapt(checkpoint=checkpoint, method=method, out=out, steps=steps, **kw)), False


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")[:60]


def _source_train(folder: Path, source: Path, train_ids: Sequence[str]) -> Path:
    """DANN's / resim's labelled source: links to the site-A training scans only, with their annotations."""
    for sid in train_ids:
        folder.mkdir(parents=True, exist_ok=True)
        link = folder / f"{sid}.nii.gz"
        if not link.exists():
            os.symlink(source / f"{sid}.nii.gz", link)
    filter_annotations(source / "annotations.csv", folder / "annotations.csv", train_ids)
    return folder


def adaptation_quality(out: Path, *, source: Path, target: Path, fast: bool, n_heldout: int, n_bootstrap: int,
                       methods: Sequence[str], config: Path = REPO / "configs" / "tiny.yaml", device: str = "cpu",
                       extra_overrides: Sequence[str] = (),
                       method_steps: dict[str, int] | None = None, oracle: Path | None = None) -> dict[str, Any]:
    """Part 1: train on A, evaluate A held-out and B before / after each method.

    ``device`` (``cpu``, ``cuda``, ``cuda:N``) is used for training, adaptation and prediction;
    ``extra_overrides`` (``key=value``) go to the training config after the split;
    ``method_steps`` sets ``tent`` / ``dann`` steps (default: the methods' own). ``oracle``: a
    folder of *labelled* site-B scans (disjoint from ``target``); the same config is trained on
    them and scored on ``target`` — the supervised upper bound, whose gap share says how much of
    the A→B gap label-free adaptation could close at all.
    """
    from medmtl import api

    ids = api.scan_ids(folder=source)
    train_ids, heldout = ids[:-n_heldout], ids[-n_heldout:]
    settings = ["data.max_scans=null", f"train.device={device}"]  # shared by the site-A and oracle models
    if not fast and config.name == "tiny.yaml":
        settings += ["train.epochs=6", "train.steps_per_epoch=8"]
    settings += list(extra_overrides)
    overrides = [
        f"data.root={source}",
        f"data.annotations={source / 'annotations.csv'}",
        "data.train_ids=[" + ", ".join(train_ids) + "]",
        "data.val_ids=[" + ", ".join(heldout) + "]",
        *settings,
    ]
    timings: dict[str, float] = {}

    def timed(name: str, fn: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        res = fn(**kw)
        timings[name] = round(time.perf_counter() - t0, 1)
        logger.info("%s: %.1f s", name, timings[name])
        return res

    ckpt, reused = timed("train", train_or_reuse, config=config, out_dir=out / "train", overrides=overrides)
    if reused:
        timings["train"] = 0.0
    heldout_ann = filter_annotations(source / "annotations.csv", out / "heldout_annotations.csv", heldout)
    conditions: list[tuple[str, Path, Path, Path, list[str] | None]] = [
        ("site A held-out", ckpt, source, heldout_ann, heldout),
        ("site B, none", ckpt, target, target / "annotations.csv", None),
    ]
    source_train = _source_train(out / "source_train", source, train_ids)
    for m in methods:  # adabn-shift: AdaBN's statistics-shift variant against the site-A training scans
        adapted, _ = timed(f"adapt_{m}", adapt_or_reuse, checkpoint=ckpt, target=target, method=m.split("-")[0],
                           out=out / "adapted" / m, seed=0,
                           source=source_train if m in ("dann", "resim", "adabn-shift") else None,
                           device=device, steps=(method_steps or {}).get(m))
        conditions.append((f"site B, {m}", adapted, target, target / "annotations.csv", None))
    if oracle is not None:
        o_ids = api.scan_ids(folder=oracle)
        n_val = max(2, len(o_ids) // 5)
        o_over = [f"data.root={oracle}", f"data.annotations={oracle / 'annotations.csv'}",
                  "data.train_ids=[" + ", ".join(o_ids[:-n_val]) + "]", "data.val_ids=[" + ", ".join(o_ids[-n_val:]) + "]",
                  *settings]
        o_ckpt, _ = timed("train_oracle", train_or_reuse, config=config, out_dir=out / "train_oracle", overrides=o_over)
        conditions.append((f"site B, oracle: trained on {len(o_ids) - n_val} labelled site-B scans", o_ckpt, target,
                           target / "annotations.csv", None))
    rows: list[dict[str, Any]] = []
    for name, ck, inp, ann, sel in conditions:
        pred = out / "pred" / _slug(name)
        timed(f"predict[{name}]", api.predict_folder, checkpoint=ck, input_dir=inp, out_dir=pred, device=device,
              progress=False, scan_ids=sel, overlap=0.0 if fast else 0.25)
        timed(f"evaluate[{name}]", api.evaluate, predictions=pred / "predictions.csv", annotations=ann,
              out_dir=out / "eval" / _slug(name), n_bootstrap=n_bootstrap, seed=0)
        rows.append({"condition": name, "n_scans": len(sel) if sel else len(api.scan_ids(folder=inp)),
                     **read_overall(out / "eval" / _slug(name) / "metrics.json")})
    ref, none = rows[0], rows[1]
    for r in rows[2:]:
        r["gap_share"] = {k: gap_share(ref[k]["value"], none[k]["value"], r[k]["value"]) for k, _ in METRICS}
    add_closable_shares(rows)
    return {"rows": rows, "train_ids": train_ids, "heldout_ids": heldout, "timings": timings,
            "overrides": overrides}


def calibration(out: Path, *, sizes: Sequence[int], n_draws: int, n_permutations: int, seed: int = 0) -> dict[str, Any]:
    """Part 2: false-alarm rate and power of the MMD and classifier tests against scans per side."""
    import numpy as np

    from medmtl import api
    from medmtl.shift.features import default_extractor
    from medmtl.shift.two_sample import classifier_test, mmd_test
    from medmtl.transforms.presets import default_ct_spec

    n_max = max(sizes)
    t0 = time.perf_counter()
    a_dir = api.generate_sample_data(out=out / "cal_a", kind="ct", site="a", n=2 * n_max, seed=7100, overwrite=True)
    b_dir = api.generate_sample_data(out=out / "cal_b", kind="ct", site="b", n=n_max, seed=7200, overwrite=True)
    a, _ = api.load_scans(folder=a_dir)
    b, _ = api.load_scans(folder=b_dir)
    ex = default_extractor(default_ct_spec(spacing=(6.0, 6.0, 6.0)))
    xa, xb = ex.pooled_many(a), ex.pooled_many(b)
    t_feat = time.perf_counter() - t0
    rng = np.random.default_rng(seed)
    rows = []
    for n in sizes:
        alarms = {"mmd": 0, "classifier": 0}
        power05 = {"mmd": 0, "classifier": 0}
        power01 = {"mmd": 0, "classifier": 0}
        for _ in range(n_draws):
            pa = rng.permutation(len(xa))
            s, t = xa[pa[:n]], xa[pa[n : 2 * n]]
            tb = xb[rng.permutation(len(xb))[:n]]
            sd = int(rng.integers(1 << 30))
            for name, test in (("mmd", mmd_test), ("classifier", classifier_test)):
                if name == "classifier" and n < 3:
                    continue
                alarms[name] += test(s, t, n_permutations=n_permutations, seed=sd)["p_value"] < 0.05
                p = test(s, tb, n_permutations=n_permutations, seed=sd)["p_value"]
                power05[name] += p < 0.05
                power01[name] += p < 0.01
        rows.append({"n_per_side": n, "n_draws": n_draws,
                     **{f"false_alarm_{k}": v / n_draws for k, v in alarms.items()},
                     **{f"power05_{k}": v / n_draws for k, v in power05.items()},
                     **{f"power01_{k}": v / n_draws for k, v in power01.items()}})
        logger.info("calibration n=%d: %s", n, rows[-1])
    return {"rows": rows, "n_permutations": n_permutations, "feature_s": round(t_feat, 1),
            "n_site_a": len(a), "n_site_b": len(b), "features": "ImageNet EfficientNet-Lite0 inflate, 6 mm, pooled"}


def _fmt(entry: dict[str, Any]) -> str:
    v, ci = entry.get("value"), entry.get("ci95")
    if v is None:
        return "n/a"
    return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and ci[0] is not None else "")


def add_closable_shares(rows: list[dict[str, Any]]) -> None:
    """With an oracle row (the last, ``"site B, oracle…"``): each method's share of the *closable* gap.

    ``closable = (m(B, method) − m(B, none)) / (m(B, oracle) − m(B, none))``: 1 = as good as
    training on labelled site-B scans; the A→B gap share can stay far below 1 when site B is
    intrinsically harder (thicker slices, blur, noise), which no label-free method can undo.
    """
    oracle = next((r for r in rows if r["condition"].startswith("site B, oracle")), None)
    if oracle is None or len(rows) < 2:
        return
    none = rows[1]
    for r in rows[2:]:
        if r is not oracle:
            r["closable_share"] = {k: gap_share(oracle[k]["value"], none[k]["value"], r[k]["value"])
                                   for k, _ in METRICS}


def _seedless(overrides: Sequence[str]) -> list[str]:
    """The training overrides without ``seed=…`` and the per-run data paths (what must match to combine runs)."""
    return [o for o in overrides if not o.startswith(("seed=", "data.root=", "data.annotations="))]


def combine(runs: Sequence[dict[str, Any]], names: Sequence[str] | None = None) -> dict[str, Any]:
    """Combine the ``quality`` parts of several runs (e.g. training seeds) into mean ± SD per condition.

    Args:
        runs: the ``results.json`` contents of runs with the same conditions and the same training
            overrides apart from ``seed=`` and the data paths.
        names: a label per run (default ``run 1``, ``run 2`` …).

    Returns:
        ``{"runs": names, "rows": [{"condition", "n_scans", metric: {"mean", "sd", "values"},
        "gap_share": {metric: {"of_means", "values"}}, "closable_share": …}]}``; ``of_means`` is
        the share computed on the run-averaged metrics (stable when one run's gap is near zero),
        ``values`` the per-run shares (``None`` where a run's gap is ~0).

    Raises:
        ValueError: fewer than two runs, a run without an adaptation part, or runs that differ in
            their conditions or training settings.
    """
    names = list(names or [f"run {i + 1}" for i in range(len(runs))])
    if len(runs) < 2:
        raise ValueError(f"combining needs at least 2 runs, got {len(runs)}; give more result folders")
    qs = []
    for name, r in zip(names, runs):
        if not r.get("quality"):
            raise ValueError(f"{name} has no adaptation part (it ran with --skip-quality); combine runs that have one")
        qs.append(r["quality"])
    conds = [row["condition"] for row in qs[0]["rows"]]
    for name, q in zip(names[1:], qs[1:]):
        other = [row["condition"] for row in q["rows"]]
        if other != conds:
            raise ValueError(f"{name} has conditions {other}, {names[0]} has {conds}; combine runs of the same --methods")
        if _seedless(q.get("overrides", [])) != _seedless(qs[0].get("overrides", [])):
            raise ValueError(f"{name} was trained with other settings than {names[0]} "
                             f"({_seedless(q.get('overrides', []))} vs {_seedless(qs[0].get('overrides', []))}); "
                             "combine runs that differ only in --set seed=N")
    rows: list[dict[str, Any]] = []
    for i, cond in enumerate(conds):
        row: dict[str, Any] = {"condition": cond, "n_scans": qs[0]["rows"][i]["n_scans"]}
        for k, _ in METRICS:
            vals = [q["rows"][i][k]["value"] for q in qs]
            have = np.array([v for v in vals if v is not None], dtype=float)
            row[k] = {"values": vals, "mean": float(have.mean()) if have.size else None,
                      "sd": float(have.std(ddof=1)) if have.size > 1 else None}
        rows.append(row)
    oracle_i = next((i for i, c in enumerate(conds) if c.startswith("site B, oracle")), None)
    for i in range(2, len(rows)):
        for key, ref_i in (("gap_share", 0), ("closable_share", oracle_i)):
            if ref_i is None or i == ref_i:
                continue
            rows[i][key] = {k: {"of_means": gap_share(rows[ref_i][k]["mean"], rows[1][k]["mean"], rows[i][k]["mean"]),
                                "values": [(q["rows"][i].get(key) or {}).get(k) for q in qs]} for k, _ in METRICS}
    return {"runs": names, "rows": rows}


def combined_markdown(comb: dict[str, Any]) -> str:
    """The combined runs as a markdown table: mean ± SD per metric, shares of the means [per-run range]."""
    has_closable = any("closable_share" in r for r in comb["rows"])

    def ms(e: dict[str, Any]) -> str:
        if e["mean"] is None:
            return "n/a"
        return f"{e['mean']:.3f}" + (f" ± {e['sd']:.3f}" if e["sd"] is not None else "")

    def shares(s: dict[str, Any] | None) -> str:
        if not s:
            return "—"
        parts = []
        for k, _ in METRICS:
            om, vals = s[k]["of_means"], [v for v in s[k]["values"] if v is not None]
            txt = "n/a" if om is None else f"{om:+.2f}"
            if vals:
                txt += f" [{min(vals):+.2f}, {max(vals):+.2f}]"
            parts.append(txt)
        return " / ".join(parts)

    lines = [f"{len(comb['runs'])} runs ({', '.join(comb['runs'])}); metric: mean ± SD over the runs; shares: of the "
             "run-averaged metrics [lowest, highest single-run share]", "",
             "| condition | scans | " + " | ".join(t for _, t in METRICS) + " | share of A→B gap closed (CPM / MAE / AUC) |"
             + (" share of the closable gap, oracle = 1 (CPM / MAE / AUC) |" if has_closable else ""),
             "|---|---|" + "---|" * len(METRICS) + "---|" + ("---|" if has_closable else "")]
    for r in comb["rows"]:
        lines.append(f"| {r['condition']} | {r['n_scans']} | " + " | ".join(ms(r[k]) for k, _ in METRICS)
                     + f" | {shares(r.get('gap_share'))} |" + (f" {shares(r.get('closable_share'))} |" if has_closable else ""))
    return "\n".join(lines) + "\n"


def markdown(res: dict[str, Any]) -> str:
    """The results as markdown tables."""
    q, c = res.get("quality"), res.get("calibration")
    lines: list[str] = []
    if q:
        closable = any("closable_share" in r for r in q["rows"])

        def shares(share: dict[str, float | None] | None) -> str:
            return " / ".join("n/a" if share[k] is None else f"{share[k]:+.2f}" for k, _ in METRICS) if share else "—"

        lines += ["| condition | scans | " + " | ".join(t for _, t in METRICS) + " | share of A→B gap closed (CPM / MAE / AUC) |"
                  + (" share of the closable gap, oracle = 1 (CPM / MAE / AUC) |" if closable else ""),
                  "|---|---|" + "---|" * len(METRICS) + "---|" + ("---|" if closable else "")]
        for r in q["rows"]:
            lines.append(f"| {r['condition']} | {r['n_scans']} | " + " | ".join(_fmt(r[k]) for k, _ in METRICS)
                         + f" | {shares(r.get('gap_share'))} |"
                         + (f" {shares(r.get('closable_share'))} |" if closable else ""))
        lines.append("")
    if c:
        lines += [f"Diagnostics calibration ({c['features']}; {c['n_permutations']} permutations; "
                  f"{c['n_site_a']} fresh site-A and {c['n_site_b']} site-B phantoms):", "",
                  "| scans per side | draws | false alarm MMD | false alarm classifier | power MMD (α=.05 / .01) "
                  "| power classifier (α=.05 / .01) |", "|---|---|---|---|---|---|"]
        for r in c["rows"]:
            lines.append(f"| {r['n_per_side']} | {r['n_draws']} | {r['false_alarm_mmd']:.2f} | "
                         f"{r['false_alarm_classifier']:.2f} | {r['power05_mmd']:.2f} / {r['power01_mmd']:.2f} | "
                         f"{r['power05_classifier']:.2f} / {r['power01_classifier']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(prog="python -m bench.adaptation", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="output folder (default: a new temporary folder)")
    p.add_argument("--source", type=Path, default=REPO / "sample_data" / "ct_site_a")
    p.add_argument("--target", type=Path, default=REPO / "sample_data" / "ct_site_b")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "tiny.yaml",
                   help="training config of the site-A model (e.g. configs/demo.yaml, which learns more)")
    p.add_argument("--fast", action="store_true", help="about 15 minutes on a shared 2-core CPU")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: training, adaptation and prediction")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="training-config override of the site-A model (repeatable)")
    p.add_argument("--tent-steps", type=int, default=None, help="TENT passes over the target patches")
    p.add_argument("--dann-steps", type=int, default=None, help="DANN optimisation steps")
    p.add_argument("--resim-steps", type=int, default=None, help="resim fine-tuning steps")
    p.add_argument("--oracle", type=Path, default=None,
                   help="labelled site-B scans (not the --target ones) for the supervised upper-bound row")
    p.add_argument("--oracle-generate", type=int, default=None, metavar="N",
                   help="as --oracle, on N fresh labelled site-B phantoms (seed 9500)")
    p.add_argument("--generate-source", type=int, default=None, metavar="N",
                   help="train / hold out on N fresh site-A phantoms (seed 9100, as bench.learning --generate) instead of --source")
    p.add_argument("--generate-target", type=int, default=None, metavar="N",
                   help="test on N fresh site-B phantoms (seed 9400) instead of --target")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    p.add_argument("--n-heldout", type=int, default=3, help="site-A scans held out (the last ones by id)")
    p.add_argument("--sizes", default="4,8,12", help="scans per side for the calibration part")
    p.add_argument("--skip-quality", action="store_true", help="only the calibration part")
    p.add_argument("--skip-calibration", action="store_true", help="only the adaptation part")
    p.add_argument("--combine", type=Path, nargs="+", default=None, metavar="DIR",
                   help="do not run: combine the results.json of earlier runs (e.g. --set seed=0, 1, 2) into mean ± SD "
                        "tables, written to --out (default: the first DIR's parent folder) as combined.json / combined.md")
    args = p.parse_args(argv)
    if args.combine:
        return _combine_main(args.combine, args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = args.out or Path(tempfile.mkdtemp(prefix="medmtl_bench_adaptation_"))
    out.mkdir(parents=True, exist_ok=True)
    import torch

    res: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M"), "fast": args.fast, "cpu": cpu_model(),
                           "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                           "torch": torch.__version__, "python": platform.python_version()}
    t0 = time.perf_counter()
    load0 = os.getloadavg()[0]
    if not args.skip_quality:
        from medmtl import api

        source, target = args.source.resolve(), args.target.resolve()
        if args.generate_source:
            source = Path(api.generate_sample_data(out=out / "gen_a", kind="ct", site="a", n=args.generate_source,
                                                   seed=9100, overwrite=True))
        if args.generate_target:
            target = Path(api.generate_sample_data(out=out / "gen_b", kind="ct", site="b", n=args.generate_target,
                                                   seed=9400, overwrite=True))
        oracle = args.oracle.resolve() if args.oracle else None
        if args.oracle_generate:
            oracle = Path(api.generate_sample_data(out=out / "gen_oracle_b", kind="ct", site="b",
                                                   n=args.oracle_generate, seed=9500, overwrite=True))
        res["source"], res["target"], res["oracle"] = str(source), str(target), str(oracle) if oracle else None
        res["device"] = args.device
        if args.device.startswith("cuda") and torch.cuda.is_available():
            res["gpu"] = torch.cuda.get_device_name(torch.device(args.device))
        res["quality"] = adaptation_quality(out, source=source, target=target, device=args.device,
                                            extra_overrides=args.overrides, oracle=oracle,
                                            method_steps={k: v for k, v in (("tent", args.tent_steps),
                                                                            ("dann", args.dann_steps),
                                                                            ("resim", args.resim_steps)) if v},
                                            fast=args.fast, n_heldout=args.n_heldout, config=args.config,
                                            n_bootstrap=200 if args.fast else 1000,
                                            methods=[m for m in args.methods.split(",") if m])
    if not args.skip_calibration:
        res["calibration"] = calibration(out, sizes=[int(s) for s in args.sizes.split(",")],
                                         n_draws=20 if args.fast else 100, n_permutations=200 if args.fast else 500)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    res["load_average"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
    (out / "results.json").write_text(json.dumps(res, indent=2, default=str), encoding="utf-8")
    md = markdown(res)
    (out / "results.md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    sys.stdout.write(f"\nwall {res['wall_s']} s; outputs in {out}\n")
    return 0


def _combine_main(dirs: Sequence[Path], out: Path | None) -> int:
    """``--combine``: read, check, combine and write; one error line and exit 2 on bad input."""
    runs = []
    for d in dirs:
        f = d / "results.json"
        if not f.is_file():
            sys.stderr.write(f"error: {f} does not exist; give folders written by python -m bench.adaptation --out DIR\n")
            return 2
        runs.append(json.loads(f.read_text(encoding="utf-8")))
    try:
        comb = combine(runs, names=[d.name for d in dirs])
    except ValueError as e:
        sys.stderr.write(f"error: {e}\n")
        return 2
    out = out or dirs[0].resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    comb["dirs"] = [str(d) for d in dirs]
    (out / "combined.json").write_text(json.dumps(comb, indent=2), encoding="utf-8")
    md = combined_markdown(comb)
    (out / "combined.md").write_text(md, encoding="utf-8")
    sys.stdout.write(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
