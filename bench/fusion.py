"""Does fusing the learned model with the classical floor find more than either? (issue #17)

``python -m bench.fusion --model PRED_DIR --classical PRED_DIR --annotations annotations.csv
[--out DIR] [--radius-mm 5] [--n-boot 2000] [--label TEXT]``

Fuses the two prediction folders of the same scans (``api.fuse_predictions``: noisy-OR, nothing
fitted to labels) and scores the model, the classical floor and the fusion on the same scans:
CPM with a scan-level bootstrap interval, and the **paired** differences fused − model and
fused − floor (the same resampled scans for both systems, so the interval of a difference is
not the overlap of two intervals). Prints a markdown table; ``--out`` also keeps the fused
folder and ``fusion.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medmtl import api
from medmtl.engine.evaluate import read_predictions_csv
from medmtl.io.annotations import read_annotations
from medmtl.metrics import ScanMatch, froc_from_matches, match_all


def _matches(pred_dir: Path, lesions: Sequence[Any], ids: Sequence[str]) -> list[ScanMatch]:
    return match_all(read_predictions_csv(pred_dir / "predictions.csv"), lesions, scan_ids=ids)


def paired_cpm(systems: dict[str, list[ScanMatch]], *, n_boot: int, seed: int = 0) -> dict[str, Any]:
    """CPM per system with 95 % scan-bootstrap intervals, and paired differences against the first.

    Args:
        systems: name → per-scan matches, every list over the same scans in the same order.
        n_boot: bootstrap replicates (scans resampled with replacement, the same draw for all).

    Returns:
        ``{"cpm": {name: [value, lo, hi]}, "diff": {"a - b": [value, lo, hi]}}``.
    """
    names = list(systems)
    n = len(systems[names[0]])
    rng = np.random.default_rng(seed)
    draws = [rng.integers(0, n, n) for _ in range(n_boot)]
    boot = {k: np.array([froc_from_matches([m[i] for i in d]).cpm for d in draws]) for k, m in systems.items()}
    point = {k: froc_from_matches(m).cpm for k, m in systems.items()}
    out: dict[str, Any] = {"cpm": {k: [point[k], *np.nanquantile(boot[k], [0.025, 0.975]).tolist()] for k in names}}
    first = names[0]
    out["diff"] = {f"{first} - {k}": [point[first] - point[k], *np.nanquantile(boot[first] - boot[k],
                                                                              [0.025, 0.975]).tolist()]
                   for k in names[1:]}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fusion", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="prediction folder of the learned model")
    ap.add_argument("--classical", type=Path, required=True, help="prediction folder of `medmtl classical`")
    ap.add_argument("--annotations", type=Path, required=True, help="annotations.csv of the same scans")
    ap.add_argument("--out", type=Path, default=None, help="keep the fused folder and fusion.json here")
    ap.add_argument("--radius-mm", type=float, default=5.0)
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--label", default="", help="a name for the row (e.g. the variant)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        fused_dir = (args.out / "fused") if args.out else Path(tmp) / "fused"
        api.fuse_predictions(inputs=[args.model, args.classical], out_dir=fused_dir, radius_mm=args.radius_mm,
                             overwrite=True)
        lesions = read_annotations(args.annotations)
        # as `medmtl evaluate` counts: every annotated or predicted scan (an unpredicted lesion is a miss)
        listed = json.loads((args.model / "predictions.json").read_text(encoding="utf-8"))["scans"]
        ids = sorted(set(listed) | {les.seriesuid for les in lesions})
        systems = {"fused": _matches(fused_dir, lesions, ids), "model": _matches(args.model, lesions, ids),
                   "classical": _matches(args.classical, lesions, ids)}
        res = paired_cpm(systems, n_boot=args.n_boot)
    res.update({"label": args.label, "n_scans": len(ids), "n_lesions": sum(len(m.lesion_scores) for m in systems["model"]),
                "radius_mm": args.radius_mm, "n_boot": args.n_boot})
    f = lambda v: f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"  # noqa: E731
    print(f"| {args.label} | {f(res['cpm']['model'])} | {f(res['cpm']['classical'])} | **{f(res['cpm']['fused'])}** | "
          f"{f(res['diff']['fused - model'])} | {f(res['diff']['fused - classical'])} |")
    if args.out:
        (args.out / "fusion.json").write_text(json.dumps(res, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
