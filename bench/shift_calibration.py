"""Calibration of the shift verdict: false alarms on same-site splits, power against site B.

``python -m bench.shift_calibration --out DIR [--pool 40] [--splits 200] [--power-splits 200]
[--sizes 4,6,8,12] [--n-permutations 500] [--seed 0] [--append-results]``

Fresh phantoms of the current generator are written once per pool (CT site A, CT site B,
MRI; ``--pool`` scans each, seeds fixed per pool) and summarised once: pooled features of the
default ImageNet extractor (the one ``medmtl diagnose`` uses for two scan folders) and
fingerprints. Then, for each size ``k`` scans per side:

* **false alarms** — ``--splits`` random same-site splits per pool (``2k`` distinct scans, the
  first ``k`` as source): the share whose verdict (:func:`medmtl.shift.verdict.decide`) is
  not ``no_shift``;
* **power** — ``--power-splits`` draws of ``k`` site-A and ``k`` site-B scans: the share flagged, and
  the share called ``outside_domain`` (site B is another scanner of the same body region:
  the right verdict is ``shift``).

Each rate comes with its Clopper-Pearson 95 % interval. The splits reuse one pool per site,
so they are not independent draws from the generator (overlapping subsets); the interval is
the binomial one of the splits. Outputs in ``--out``: ``results.json``, ``results.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: (pool name, kind, site, seed) of the generated pools.
POOLS = (("ct_a", "ct", "a", 41000), ("ct_b", "ct", "b", 42000), ("mri", "mri", "a", 43000))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval of ``k`` successes in ``n`` trials."""
    from scipy.stats import beta

    a = (1.0 - level) / 2.0
    lo = 0.0 if k == 0 else float(beta.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1.0 - a, k + 1, n - k))
    return lo, hi


def summarise_pool(folder: Path, modality: str, cache: Path) -> dict[str, Any]:
    """Features ``(N, F)`` and fingerprints of a pool (cached as ``cache``)."""
    if cache.is_file():
        data = json.loads(cache.read_text(encoding="utf-8"))
        return {"features": np.asarray(data["features"], dtype=np.float64), "fingerprints": data["fingerprints"]}
    from medmtl import api
    from medmtl.shift.features import default_extractor
    from medmtl.shift.fingerprint import scan_fingerprint
    from medmtl.shift.report import default_spec

    scans, _ = api.load_scans(folder=folder)
    scans = sorted(scans, key=lambda s: s.scan_id)
    extractor = default_extractor(default_spec(modality))
    feats = extractor.pooled_many(scans)
    fps = [scan_fingerprint(s) for s in scans]
    cache.write_text(json.dumps({"features": feats.tolist(), "fingerprints": fps}, default=str), encoding="utf-8")
    return {"features": feats.astype(np.float64), "fingerprints": fps}


def _verdict(src: dict[str, Any], tgt: dict[str, Any], i_s: np.ndarray, i_t: np.ndarray, modality: str,
             n_permutations: int, seed: int) -> tuple[str, dict[str, float]]:
    """The verdict of the rule, and the combined p-value under every rule of the comparison."""
    from medmtl.shift.verdict import decide, shift_test

    test = shift_test(src["features"][i_s], tgt["features"][i_t], n_permutations=n_permutations, seed=seed)
    v = decide(test, source_fps=[src["fingerprints"][i] for i in i_s], target_fps=[tgt["fingerprints"][i] for i in i_t],
               source_modality=modality, target_modality=modality)
    return v.kind, dict(test["p_by_rule"])


def rate_row(results: Sequence[tuple[str, dict[str, float]]], alpha: float = 0.05, **info: Any) -> dict[str, Any]:
    """Share of splits flagged (verdict not ``no_shift``) and called ``outside_domain``, with intervals;
    ``by_rule``: the share whose combined p-value is at most ``alpha`` under each rule compared."""
    kinds = [k for k, _ in results]
    n = len(kinds)
    flagged = sum(k != "no_shift" for k in kinds)
    outside = sum(k == "outside_domain" for k in kinds)
    by_rule = {}
    for how in results[0][1]:
        hits = sum(p[how] <= alpha for _, p in results)
        by_rule[how] = {"flagged": hits, "rate": hits / n, "ci95": list(clopper_pearson(hits, n))}
    return {**info, "n_splits": n, "flagged": flagged, "rate": flagged / n, "ci95": list(clopper_pearson(flagged, n)),
            "outside_domain": outside, "by_rule": by_rule}


def run_size(pools: dict[str, dict[str, Any]], k: int, splits: int, n_permutations: int, seed: int,
             power_splits: int) -> list[dict[str, Any]]:
    """False-alarm rows (per pool, ``splits`` each) and the power row against site B (``power_splits``)
    at ``k`` scans per side."""
    rng = np.random.default_rng(seed + k)
    rows = []
    for name, modality in (("ct_a", "CT"), ("ct_b", "CT"), ("mri", "MR")):
        pool = pools[name]
        n = len(pool["features"])
        results = []
        for s in range(splits):
            idx = rng.choice(n, size=2 * k, replace=False)
            results.append(_verdict(pool, pool, idx[:k], idx[k:], modality, n_permutations, seed + s))
        rows.append(rate_row(results, kind="false_alarm", pool=name, k=k))
    a, b = pools["ct_a"], pools["ct_b"]
    results = [_verdict(a, b, rng.choice(len(a["features"]), k, replace=False),
                      rng.choice(len(b["features"]), k, replace=False), "CT", n_permutations, seed + s)
             for s in range(power_splits)]
    rows.append(rate_row(results, kind="power", pool="ct_a vs ct_b", k=k))
    return rows


def markdown(res: dict[str, Any]) -> str:
    """The results table of the rule, then the rules compared on the same splits."""
    lines = ["| size per side | kind | pools | verdict rate | 95 % CI | outside_domain | splits |",
             "|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['k']} | {r['kind']} | {r['pool']} | {r['rate']:.3f} | [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}] "
                     f"| {r['outside_domain']} | {r['n_splits']} |")
    rules = list(res["rows"][0].get("by_rule", {}))
    if rules:
        lines += ["", "Combined p ≤ α on the same splits, by combination rule (rate [95 % CI]):", "",
                  "| size per side | kind | pools | " + " | ".join(rules) + " |", "|---|---|---|" + "---|" * len(rules)]
        for r in res["rows"]:
            cells = [f"{r['by_rule'][h]['rate']:.3f} [{r['by_rule'][h]['ci95'][0]:.3f}, {r['by_rule'][h]['ci95'][1]:.3f}]"
                     for h in rules]
            lines.append(f"| {r['k']} | {r['kind']} | {r['pool']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(out: Path, *, pool: int, splits: int, sizes: Sequence[int], n_permutations: int, seed: int,
        power_splits: int) -> dict[str, Any]:
    """Generate and summarise the pools, then run every size."""
    from medmtl import api

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    pools = {}
    for name, kind, site, pseed in POOLS:
        folder = out / "pools" / name
        if not (folder / "annotations.csv").is_file():
            api.generate_sample_data(out=folder, kind=kind, site=site, n=pool, seed=pseed, progress=True)
        pools[name] = summarise_pool(folder, "CT" if kind == "ct" else "MR", out / f"{name}_summary.json")
    t_pools = time.perf_counter() - t0
    rows = [r for k in sizes for r in run_size(pools, k, splits, n_permutations, seed, power_splits)]
    res = {"pool": pool, "splits": splits, "power_splits": power_splits, "sizes": list(sizes), "n_permutations": n_permutations, "seed": seed,
           "alpha": 0.05, "rows": rows, "seconds": {"pools": t_pools, "total": time.perf_counter() - t0}}
    (out / "results.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    (out / "results.md").write_text(markdown(res) + "\n", encoding="utf-8")
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (pools and summaries are reused)")
    p.add_argument("--pool", type=int, default=40, help="phantoms per pool (default 40)")
    p.add_argument("--splits", type=int, default=200, help="random splits per size and pool (default 200)")
    p.add_argument("--sizes", default="4,6,8,12", help="scans per side (default 4,6,8,12)")
    p.add_argument("--power-splits", type=int, default=200, help="site A vs B draws per size (default 200)")
    p.add_argument("--n-permutations", type=int, default=500, help="relabellings per test (default 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--append-results", action="store_true", help="append a dated section to bench/RESULTS.md")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    if any(2 * k > args.pool for k in sizes):
        print(f"Error: --pool {args.pool} is too small for {max(sizes)} scans per side; use >= {2 * max(sizes)}",
              file=sys.stderr)
        return 2
    res = run(args.out, pool=args.pool, splits=args.splits, sizes=sizes, n_permutations=args.n_permutations,
              seed=args.seed, power_splits=args.power_splits)
    text = markdown(res)
    print(text)
    if args.append_results:
        from bench.learning_tables import where_measured

        cmd = "python -m bench.shift_calibration " + " ".join(sys.argv[1:] if argv is None else argv)
        with open(REPO / "bench" / "RESULTS.md", "a", encoding="utf-8") as fh:
            fh.write(f"\n## Shift verdict calibration ({time.strftime('%Y-%m-%d')})\n\nMachine: {where_measured('cpu')}. "
                     f"Command: `{cmd}`. {res['seconds']['total'] / 60:.1f} min.\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
