"""``evaluate_files``: score a predictions table against annotations (``medmtl evaluate``).

Detection follows the LUNA16 rules (:mod:`medmtl.metrics`); size and malignancy use each
lesion's highest-scoring hit; intervals are scan-level bootstrap percentiles
(:mod:`medmtl.metrics_bootstrap`). Scans counted: the union of the annotated scans, the
predicted scans and — when a ``predictions.json`` written by ``medmtl predict`` sits next to
the CSV — every scan it lists (so scans where nothing was detected still count).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from medmtl.errors import AnnotationError, MedmtlError
from medmtl.io.annotations import duplicate_columns
from medmtl.io.types import Detection

REQUIRED_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "probability")
#: What ``evaluate_files`` writes into its output folder (recorded: see :mod:`medmtl.io.outputs`).
EVALUATION_FILES = ("metrics.json", "metrics.md", "froc.png", "bland_altman.png", "reliability.png")
OPTIONAL_COLUMNS = ("diameter_mm", "malignancy_prob")


class PredictionTableError(MedmtlError):
    """A predictions table is malformed (names the row, column and value)."""


def _float(value: str | None, path: Path, row: int, column: str, *, required: bool,
           lo: float | None = None, hi: float | None = None) -> float:
    text = (value or "").strip()
    if not text:
        if required:
            raise PredictionTableError(f"{path} row {row} column '{column}' is empty; a number is required")
        return math.nan
    try:
        v = float(text)
    except ValueError:
        raise PredictionTableError(
            f"{path} row {row} column '{column}' has '{text}', which is not a number"
        ) from None
    if not math.isfinite(v):
        raise PredictionTableError(f"{path} row {row} column '{column}' has '{text}'; a finite number is required")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        allowed = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise PredictionTableError(f"{path} row {row} column '{column}' has {v}; allowed: {allowed}")
    return v


def read_predictions_csv(path: Path) -> list[Detection]:
    """Read ``predictions.csv`` (LPS mm) into detections.

    Required columns: ``seriesuid, coordX, coordY, coordZ, probability`` (in [0, 1]); optional:
    ``diameter_mm`` (> 0) and ``malignancy_prob`` (in [0, 1]); empty optional cells are NaN.
    Row numbers in errors count the header as row 1.

    Raises:
        PredictionTableError: a missing column, an empty id or a value that is not allowed.
    """
    from medmtl.io.outputs import special_file_problem

    path = Path(path)
    problem = special_file_problem(path)  # a FIFO would block the read forever
    if problem is not None:
        raise PredictionTableError(f"predictions table {problem} (predictions.csv)")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            dup = duplicate_columns(header)
            if dup:
                raise PredictionTableError(f"{path} has duplicated column(s) {', '.join(dup)}; each column may "
                                           "appear once — remove or rename the copies")
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise PredictionTableError(
                    f"{path} lacks column(s) {missing}; required: {', '.join(REQUIRED_COLUMNS)}"
                    f" (optional: {', '.join(OPTIONAL_COLUMNS)})"
                )
            out: list[Detection] = []
            for n, raw in enumerate(reader, start=2):
                row = {(k or "").strip(): v for k, v in raw.items()}
                sid = (row.get("seriesuid") or "").strip()
                if not sid:
                    raise PredictionTableError(f"{path} row {n} column 'seriesuid' is empty; every row needs a scan id")
                xyz = tuple(_float(row.get(c), path, n, c, required=True) for c in ("coordX", "coordY", "coordZ"))
                out.append(Detection(
                    seriesuid=sid,
                    center_lps=(xyz[0], xyz[1], xyz[2]),
                    probability=_float(row.get("probability"), path, n, "probability", required=True, lo=0.0,
                                       hi=1.0),
                    diameter_mm=_float(row.get("diameter_mm"), path, n, "diameter_mm", required=False, lo=0.0),
                    malignancy_prob=_float(row.get("malignancy_prob"), path, n, "malignancy_prob",
                                           required=False, lo=0.0, hi=1.0),
                ))
    except UnicodeDecodeError:
        raise PredictionTableError(f"{path} is not UTF-8 text; give the CSV written by `medmtl predict`") from None
    except csv.Error as exc:
        raise PredictionTableError(f"{path} is not a valid CSV ({exc})") from None
    return out


def _sibling_scan_ids(pred_csv: Path) -> list[str]:
    """Scan ids listed in a ``predictions.json`` next to the CSV (scans with no detection too)."""
    pj = pred_csv.with_name("predictions.json")
    if not pj.is_file():
        return []
    try:
        data = json.loads(pj.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        return []
    scans = data.get("scans") if isinstance(data, dict) else None
    return sorted(scans) if isinstance(scans, dict) else []


def _scan_ids(dets: list[Detection], lesions: list[Any], predictions: Path, annotations: Path) -> list[str]:
    """The scans scored: annotated, predicted and listed by a sibling ``predictions.json``.

    Raises:
        AnnotationError: no annotated lesion.
        PredictionTableError: no prediction row and no ``predictions.json`` listing the scans.
        MedmtlError: predictions and annotations share no scan id.
    """
    ann_ids = {les.seriesuid for les in lesions}
    pred_ids = {d.seriesuid for d in dets} | set(_sibling_scan_ids(predictions))
    if not ann_ids:
        raise AnnotationError(f"{annotations} holds no lesion; CPM needs at least one annotated lesion")
    if not pred_ids:
        raise PredictionTableError(
            f"{predictions} has no prediction row and no predictions.json beside it lists the scans it covers; "
            "pass the predictions.csv that `medmtl predict` wrote, with its predictions.json"
        )
    if not pred_ids & ann_ids:
        raise MedmtlError(
            f"{predictions} and {annotations} share no scan id (e.g. '{sorted(pred_ids)[0]}' vs '{sorted(ann_ids)[0]}');"
            " check that both describe the same scans"
        )
    return sorted(ann_ids | pred_ids)


def _units(n: int | None, unit: str) -> str:
    """``"lesions"`` → ``"lesion"`` when ``n`` is 1."""
    return unit.replace("lesions", "lesion") if n == 1 else unit


def metric_text(entry: dict[str, Any], digits: int = 3, unit: str = "") -> str:
    """``"0.812 [0.701, 0.903] (n = 12 lesions)"``: a metric with its interval (or why there is
    none) and the number of lesions it is computed over."""
    v = entry.get("value")
    n = entry.get("n")
    count = f"n = {n} {_units(n, entry.get('n_unit', 'lesions'))}" if n is not None else ""
    if v is None:
        return f"n/a ({count})" if count else "n/a"
    ci = entry.get("ci95")
    text = f"{v:.{digits}f}{unit}"
    if ci:
        text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
    note = entry.get("ci_note")
    inner = "; ".join(x for x in (count, note) if x)
    return f"{text} ({inner})" if inner else text


def summary_text(result: dict[str, Any], report: Path) -> str:
    """The lines ``medmtl evaluate`` prints: each headline metric with n, then the counts."""
    head, c = result["overall"], result["counts"]
    names = (("cpm", "CPM", ""), ("diameter_mae_mm", "diameter MAE", " mm"), ("malignancy_auc", "malignancy AUC", ""),
             ("malignancy_ece", "malignancy ECE", ""))
    lines = [f"{label} {metric_text(head[key], unit=unit)}" for key, label, unit in names if key in head]
    lines.append(f"{c['n_scans']} scans, {c['n_lesions']} lesions, {c['n_predictions']} detections; "
                 f"report in {report}")
    return "\n".join(lines)


def _metrics_markdown(result: dict[str, Any]) -> str:
    def cell(entry: dict[str, Any], digits: int = 3) -> str:
        v = entry.get("value")
        if v is None:
            return "n/a"
        ci = entry.get("ci95")
        note = entry.get("ci_note")
        return f"{v:.{digits}f}" + (f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else f" ({note})" if note else "")

    c = result["counts"]
    lines = [
        "# Evaluation",
        "",
        f"Predictions: `{result['inputs']['predictions']}`  ",
        f"Annotations: `{result['inputs']['annotations']}`  ",
        f"{c['n_scans']} scans, {c['n_lesions']} lesions, {c['n_predictions']} detections "
        f"({c['n_detected']} lesions hit, {c['n_false_positives']} false positives, "
        f"{c['n_ignored']} duplicate hits ignored).",
        "",
        f"Values with 95% bootstrap intervals ({result['settings']['n_bootstrap']} scan-level replicates, "
        f"seed {result['settings']['seed']}).",
        "",
        "| metric | value [95% CI] | n |",
        "|---|---|---|",
    ]
    for key, entry in result["overall"].items():
        lines.append(f"| {key} | {cell(entry)} | {entry.get('n', '')} {_units(entry.get('n'), entry.get('n_unit', ''))} |")
    if (result.get("bland_altman") or {}).get("note"):
        lines += ["", result["bland_altman"]["note"]]
    if result.get("per_site"):
        keys = ["n_scans", "n_lesions", "cpm", "diameter_mae_mm", "malignancy_auc", "malignancy_ece"]
        lines += ["", "## Per site", "", "| site | " + " | ".join(keys) + " |",
                  "|---|" + "---|" * len(keys)]
        for site, row in result["per_site"].items():
            vals = []
            for k in keys:
                v = row.get(k)
                vals.append("n/a" if v is None else (str(v) if isinstance(v, int) else f"{v:.3f}"))
            lines.append(f"| {site} | " + " | ".join(vals) + " |")
    lines += ["", "Hit rule: LUNA16 (centre within the lesion radius; duplicate hits ignored); "
              "CPM = mean sensitivity at 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/scan.", ""]
    return "\n".join(lines)


def evaluate_files(
    *, predictions: Path, annotations: Path, out_dir: Path, n_bootstrap: int = 1000, seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score a predictions CSV against an annotations table and write the report.

    Args:
        predictions: ``predictions.csv`` (LPS mm).
        annotations: ``annotations.csv`` or a MONAI datalist JSON (LPS mm).
        out_dir: receives ``metrics.json``, ``metrics.md``, ``froc.png``, ``bland_altman.png``,
            ``reliability.png``.
        n_bootstrap: scan-level bootstrap replicates (0: no intervals).
        seed: bootstrap seed.
        progress: a progress bar over the bootstrap replicates.

    Returns:
        The metrics dict (as in ``metrics.json``): ``overall`` (value + ``ci95`` per metric),
        ``froc``, ``counts``, ``bland_altman``, ``reliability``, ``per_site``, ``settings``.

    Raises:
        PredictionTableError: malformed predictions.
        AnnotationError: malformed annotations.
        MedmtlError: predictions and annotations share no scan, or ``n_bootstrap`` < 0.
    """
    from medmtl import metrics
    from medmtl.engine import plots
    from medmtl.io.annotations import read_annotations
    from medmtl.io.outputs import check_outputs, record_outputs
    from medmtl.io.writers import atomic_write_json, atomic_write_text
    from medmtl.metrics_bootstrap import bootstrap_metrics, per_site_metrics

    if n_bootstrap < 0:
        raise MedmtlError(f"--n-bootstrap must be >= 0, got {n_bootstrap}")
    check_outputs(Path(out_dir), EVALUATION_FILES)  # before any work: never replace the user's files
    dets = read_predictions_csv(Path(predictions))
    lesions = read_annotations(Path(annotations))
    scan_ids = _scan_ids(dets, lesions, Path(predictions), Path(annotations))
    matches = metrics.match_all(dets, lesions, scan_ids=scan_ids)
    fr = metrics.froc_from_matches(matches)
    arr = metrics.lesion_level_arrays(matches)
    overall = bootstrap_metrics(matches, n_bootstrap=n_bootstrap, seed=seed, progress=progress)
    ba_stats = metrics.bland_altman(arr["pred_diameter_mm"], arr["true_diameter_mm"])
    ba: dict[str, Any] = {**ba_stats, "note": plots.bland_altman_note(int(ba_stats["n"] or 0))}
    rel = metrics.reliability_bins(arr["malignancy_prob"], arr["malignancy_label"])
    scan_site = {les.seriesuid: les.site for les in lesions if les.site}
    result: dict[str, Any] = {
        "overall": overall,
        "froc": {
            "fp_rates": list(fr.fp_rates),
            "sensitivity_at": fr.sensitivity_at,
            "curve": {"fps": fr.fps.tolist(), "sensitivity": fr.sensitivity.tolist(),
                      "thresholds": fr.thresholds.tolist()},
        },
        "counts": {
            "n_scans": fr.n_scans, "n_lesions": fr.n_lesions, "n_predictions": len(dets),
            "n_detected": fr.n_detected, "n_false_positives": fr.n_false_positives,
            "n_ignored": int(sum(m.n_ignored for m in matches)),
            "n_scans_without_lesions": int(sum(1 for m in matches if m.lesion_scores.size == 0)),
        },
        "bland_altman": ba,
        "reliability": rel,
        "per_site": per_site_metrics(matches, scan_site) if scan_site else {},
        "settings": {"n_bootstrap": n_bootstrap, "seed": seed, "hit_rule": "LUNA16: distance <= diameter/2",
                     "fp_rates": list(metrics.LUNA16_FP_RATES)},
        "inputs": {"predictions": str(predictions), "annotations": str(annotations)},
    }
    out_dir = Path(out_dir)
    record_outputs(out_dir, EVALUATION_FILES)
    cpm_entry = overall["cpm"]
    plots.froc_plot(out_dir / "froc.png", fr.fps, fr.sensitivity, fr.fp_rates, fr.sensitivity_at,
                    cpm=cpm_entry["value"], ci=cpm_entry["ci95"])
    plots.bland_altman_plot(out_dir / "bland_altman.png", arr["pred_diameter_mm"], arr["true_diameter_mm"], ba)
    plots.reliability_plot(out_dir / "reliability.png", rel, ece=overall["malignancy_ece"]["value"])
    atomic_write_text(out_dir / "metrics.md", _metrics_markdown(result))
    atomic_write_json(out_dir / "metrics.json", result)
    return result
