"""Lesion readout benchmark: the heads' size and malignancy against the per-lesion readout, on the same detections.

``python -m bench.lesion_readout --run RUN --train-data DIR --test-data DIR [--out DIR] [--append-results]``

``RUN`` is a finished ``bench.in_domain`` seed folder (``RUN/train/checkpoint``, ``RUN/predictions/
predictions.csv``) trained and predicted with the heads (``--set decode.size=head --set
decode.malignancy=head``). The readout is fitted exactly as ``medmtl train`` fits it
(:func:`medmtl.engine.lesion_readout.readout_for_training` on the run's own training split, from its
card's config and seed — it needs no network), then each detection of ``predictions.csv`` is
re-measured with :func:`~medmtl.engine.lesion_readout.score_detections` — what ``medmtl predict``
does with a card that carries the readout — on the raw test scans. Five conditions, evaluated by
``api.evaluate`` on the same scans and detections (so CPM is identical by construction):

* ``heads`` — the network's size and malignancy (the run as predicted);
* ``malignancy readout`` — the head's size, the readout's malignancy;
* ``size readout`` — the readout's size, the head's malignancy;
* ``both, direct malignancy`` — both readouts, malignancy from the direct logistic model on the
  twelve descriptors (the readout before the attribute stage);
* ``both`` — both readouts with the two-stage attribute malignancy model
  (:mod:`medmtl.engine.attribute_readout`; ``decode.size/malignancy: features``, the CPU config's
  default, when the training annotations record margin / texture / calcification).

Each row: CPM, diameter MAE (mm), malignancy AUC and ECE with their scan-level 95 % intervals,
beside the Bayes-optimal AUC of the same labelled lesions. Outputs in ``--out`` (default
``RUN/readout``): ``predictions_<condition>.csv``, ``metrics_<condition>/``, ``results.json``,
``results.md``; ``--append-results`` appends a dated section to ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bench.in_domain import COLUMNS, _overall
from bench.learning_tables import append_dated_section, bayes_auc, where_measured
from pipelines.runs import REPO, run_guarded
from pipelines.tables import fmt_ci, markdown_table

#: Conditions: name → (use the size readout, malignancy readout: None (head), "direct" or "attributes").
CONDITIONS: dict[str, tuple[bool, str | None]] = {
    "heads": (False, None),
    "malignancy readout": (False, "attributes"),
    "size readout": (True, None),
    "both, direct malignancy": (True, "direct"),
    "both": (True, "attributes"),
}


def condition_readout(readout: Any, size: bool, malignancy: str | None) -> Any:
    """``readout`` reduced to one condition's models (``None`` when it keeps both heads)."""
    import dataclasses

    if not size and malignancy is None:
        return None
    staged = malignancy == "attributes" and readout.attribute_malignancy is not None
    return dataclasses.replace(
        readout, size=readout.size if size else None,
        malignancy=readout.malignancy if malignancy is not None else None,
        n_malignant=readout.n_malignant if malignancy is not None else 0,
        attributes=readout.attributes if staged else (),
        attribute_malignancy=readout.attribute_malignancy if staged else None)


def fit_run_readout(run: Path, train_data: Path) -> Any:
    """The readout ``medmtl train`` would store for ``run`` (its config, split and seed), both models on."""
    from medmtl.data.dataset import load_training_data
    from medmtl.engine.checkpoint import read_card
    from medmtl.engine.lesion_readout import readout_for_training

    card = read_card(run / "train" / "checkpoint")
    if card.train_config is None or card.training is None:
        raise SystemExit(f"{run}: the checkpoint's card has no training config or split; use a medmtl-trained run")
    cfg = card.train_config
    cfg.data.root = str(train_data)
    cfg.data.annotations = str(train_data / "annotations.csv")
    data = load_training_data(cfg)
    if list(data.train_ids) != list(card.training.train_ids):
        raise SystemExit(f"{run}: the training split rebuilt from {train_data} differs from the card's; "
                         "pass the run's own --train-data")
    return readout_for_training(data.train_items, modality=data.spec.modality, size="features",
                                malignancy="features", seed=cfg.seed)


def rescore(predictions: Path, test_data: Path, readout: Any, out: Path) -> tuple[dict[str, Path], int]:
    """One ``predictions_<condition>.csv`` per condition (every scan read once), and the scans read."""
    from medmtl.engine.evaluate import read_predictions_csv
    from medmtl.engine.lesion_readout import score_detections
    from medmtl.engine.predict_io import PREDICTION_COLUMNS
    from medmtl.io.read import load_folder
    from medmtl.io.types import Detection
    from medmtl.io.writers import atomic_write_csv

    by_scan: dict[str, list[Detection]] = {}
    for det in read_predictions_csv(predictions):
        by_scan.setdefault(det.seriesuid, []).append(det)
    scans, _ = load_folder(test_data, progress=False)
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in CONDITIONS}
    for scan in sorted(scans, key=lambda s: s.scan_id):
        mine = by_scan.get(scan.scan_id, [])
        hu = scan.image.detach().cpu().numpy()
        affine = scan.image.affine.numpy()
        for name, (size, malig) in CONDITIONS.items():
            part = condition_readout(readout, size, malig)
            new = mine if part is None else score_detections(part, hu, affine, mine)
            for d in new:
                x, y, z = d.center_lps
                rows[name].append({"seriesuid": d.seriesuid, "coordX": x, "coordY": y, "coordZ": z,
                                   "probability": d.probability, "diameter_mm": d.diameter_mm,
                                   "malignancy_prob": d.malignancy_prob})
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, table in rows.items():
        path = out / f"predictions_{name.replace(' ', '_')}.csv"
        paths[name] = atomic_write_csv(path, table, PREDICTION_COLUMNS)
    return paths, len(scans)


def markdown(res: Mapping[str, Any]) -> str:
    """The conditions and the Bayes line."""
    header = ["condition", *(h for _, h in COLUMNS)]
    rows = [[name, *(fmt_ci(res["conditions"][name][k]) for k, _ in COLUMNS)] for name in CONDITIONS]
    b = res["bayes_auc"]
    r = res["readout"]
    return "\n".join([
        markdown_table(header, rows), "",
        f"Bayes-optimal malignancy AUC of the same {b['n_lesions']} labelled test lesions ({b['n_positive']} "
        f"malignant): {fmt_ci({'value': b['value'], 'ci95': b['ci95']})}. Readout fitted on {r['n_lesions']} "
        f"training lesions ({r['n_malignant']} malignant) in {r['fit_s']:.0f} s; rescoring {res['n_scans']} scans "
        f"took {res['rescore_s']:.0f} s. Intervals: scan-level bootstrap (1000).",
    ])


def run_benchmark(*, run: Path, train_data: Path, test_data: Path, out: Path) -> dict[str, Any]:
    """Fit, rescore, evaluate; writes ``results.json`` / ``results.md`` into ``out``."""
    from medmtl import api

    t0 = time.perf_counter()
    readout = fit_run_readout(run, train_data)
    fit_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    paths, n_scans = rescore(run / "predictions" / "predictions.csv", test_data, readout, out)
    rescore_s = time.perf_counter() - t1
    conditions = {}
    for name, path in paths.items():
        metrics = api.evaluate(predictions=path, annotations=test_data / "annotations.csv",
                               out_dir=out / f"metrics_{name.replace(' ', '_')}", n_bootstrap=1000)
        conditions[name] = _overall(metrics)
    res = {
        "run": str(run), "train_data": str(train_data), "test_data": str(test_data),
        "where": where_measured("cpu"), "conditions": conditions,
        "bayes_auc": bayes_auc(test_data / "annotations.csv", n_boot=2000),
        "readout": {"n_lesions": readout.size.n_lesions if readout.size else 0, "n_malignant": readout.n_malignant,
                    "attributes": [m.name for m in readout.attributes], "fit_s": fit_s, "card": readout.to_dict()},
        "n_scans": n_scans, "rescore_s": rescore_s,
    }
    api.write_json(path=out / "results.json", obj=res)
    api.write_text(path=out / "results.md", text=markdown(res) + "\n")
    return res


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a finished bench.in_domain seed folder (learned_seedN)")
    p.add_argument("--train-data", type=Path, required=True, help="the run's training scans")
    p.add_argument("--test-data", type=Path, required=True, help="the held-out labelled test scans it predicted")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RUN/readout)")
    p.add_argument("--append-results", nargs="?", const=REPO / "bench" / "RESULTS.md", default=None, type=Path,
                   help="append a dated section to bench/RESULTS.md (or the given file)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point."""
    args = _parser().parse_args(argv)

    def body() -> int:
        from medmtl.errors import ConfigError

        run = args.run.resolve()
        for path, what in ((run / "predictions" / "predictions.csv", "--run"),
                           (args.test_data / "annotations.csv", "--test-data"),
                           (args.train_data / "annotations.csv", "--train-data")):
            if not path.is_file():
                raise ConfigError(f"{what}: {path} not found; pass a finished bench.in_domain seed folder and the "
                                  "labelled scan folders it was trained and tested on")
        res = run_benchmark(run=run, train_data=args.train_data.resolve(), test_data=args.test_data.resolve(),
                            out=(args.out or run / "readout").resolve())
        text = markdown(res)
        print(text)
        if args.append_results is not None:
            append_dated_section(args.append_results, "Lesion readout against the heads, same detections", res["where"], "bench.lesion_readout", argv, text)
        return 0

    return run_guarded(body)


if __name__ == "__main__":
    sys.exit(main())
