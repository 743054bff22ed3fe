"""Combining lesion detectors: the noisy-OR fusion of two or more prediction folders.

Detectors that miss different lesions combine into one that finds more at every false-positive
rate (Niemeijer et al., "On combining computer-aided detection systems", IEEE TMI 30(2), 2011):
the network finds the large nodules at few false positives, the classical Hessian filter
(:mod:`medmtl.engine.classical`) the small ones a short training has not learned.

Per scan (every length in LPS mm):

1. **Match.** The systems are taken in the order given; the first is the *primary*. Each system's
   detections, strongest first, join the nearest fused candidate within ``radius_mm`` that holds no
   detection of that system yet; otherwise they start a new candidate.
2. **Score.** ``p = 1 - Π_k (1 - p_k)`` over the candidate's detections (noisy-OR: each system's
   score read as an independent probability that a nodule is there; a system that did not
   report the candidate contributes ``p_k = 0``). The rule has no parameter fitted to labels.
3. **Attributes.** Centre, diameter and malignancy come from the candidate's detection of the
   earliest system (the primary's where it has one): the network's readout measures size better
   than the filter's HU excess (``bench/RESULTS.md``).

A scan is fused only when every input holds a complete result for it; otherwise it is a failure
naming the input that lacks it. The output folder looks like ``medmtl predict``'s
(``predictions.csv``, ``predictions.json`` with method ``fusion``, ``failures.json``,
``scans/``), so ``medmtl evaluate`` and ``medmtl export`` read it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medmtl.engine import predict_io as pio
from medmtl.engine.classical_run import prepare_out_dir
from medmtl.engine.evaluate import PredictionTableError
from medmtl.errors import ConfigError

METHOD = "fusion"
RULE = "noisy-or"
DEFAULT_RADIUS_MM = 5.0
REFERENCE = "Niemeijer et al., On combining computer-aided detection systems, IEEE TMI 30(2), 2011"


@dataclass(frozen=True)
class FusionInput:
    """One input system: a folder written by ``medmtl predict``, ``medmtl classical`` or ``medmtl fuse``.

    Attributes:
        folder: the prediction folder.
        method: ``predict`` (a checkpoint), ``classical`` or ``fusion``.
        sha256: SHA-256 of its ``predictions.json`` (the fused run's key depends on it).
        scans: scan id → its lesions (``predictions.json`` rows: LPS mm, probability, diameter mm,
            malignancy probability).
        missing: scans the input lists without a result (failed or never predicted).
    """

    folder: Path
    method: str
    sha256: str
    scans: Mapping[str, Sequence[Mapping[str, float]]]
    missing: frozenset[str]


def load_input(folder: Path) -> FusionInput:
    """Read a prediction folder's ``predictions.json``.

    Raises:
        PredictionTableError: the folder has no readable ``predictions.json`` of the expected format.
    """
    folder = Path(folder)
    path = folder / "predictions.json"
    if not path.is_file():
        raise PredictionTableError(f"{folder} holds no predictions.json; give a folder written by `medmtl predict`,"
                                   " `medmtl classical` or `medmtl fuse`")
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictionTableError(f"{path} is not valid JSON ({exc}); rerun the command that wrote it") from None
    if not isinstance(data, dict) or data.get("format") != pio.RECORD_FORMAT or not isinstance(data.get("scans"), dict):
        raise PredictionTableError(f"{path} is not a medmtl predictions.json (format {pio.RECORD_FORMAT} with 'scans');"
                                   " give a folder written by `medmtl predict`, `medmtl classical` or `medmtl fuse`")
    run: dict[str, Any] = data["run"] if isinstance(data.get("run"), dict) else {}
    failed = {str(f.get("seriesuid")) for f in _failures(folder)}
    scans = {str(sid): _lesions(path, str(sid), rec) for sid, rec in data["scans"].items() if str(sid) not in failed}
    return FusionInput(folder=folder, method=str(run.get("method") or "predict"),
                       sha256=hashlib.sha256(raw).hexdigest(), scans=scans,
                       missing=frozenset({str(s) for s in data.get("missing", [])} | failed))


def _lesions(path: Path, sid: str, rec: Any) -> list[dict[str, float]]:
    """One scan's lesions of a ``predictions.json``, checked: LPS mm centre and a probability in [0, 1]."""
    rows = rec.get("lesions", []) if isinstance(rec, dict) else None
    if not isinstance(rows, list):
        raise PredictionTableError(f"{path} scan '{sid}' has no 'lesions' list; rerun the command that wrote it")
    for n, les in enumerate(rows):
        try:
            ok = all(math.isfinite(float(les[k])) for k in ("coordX", "coordY", "coordZ", "probability"))
            ok = ok and 0.0 <= float(les["probability"]) <= 1.0
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise PredictionTableError(f"{path} scan '{sid}' lesion {n + 1} lacks a finite coordX/Y/Z or a probability"
                                       " in [0, 1]; rerun the command that wrote it")
    return [{k: les.get(k, float("nan")) for k in pio.PREDICTION_COLUMNS[1:]} for les in rows]


def _failures(folder: Path) -> list[Mapping[str, Any]]:
    """The rows of the folder's ``failures.json`` (none when it is absent or unreadable)."""
    try:
        rows = json.loads((folder / "failures.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def _xyz(les: Mapping[str, float]) -> tuple[float, float, float]:
    return float(les["coordX"]), float(les["coordY"]), float(les["coordZ"])


def fuse_scan(systems: Sequence[Sequence[Mapping[str, float]]], *, radius_mm: float = DEFAULT_RADIUS_MM
              ) -> list[dict[str, float]]:
    """Noisy-OR fusion of one scan's detections from several systems (see the module docstring).

    Args:
        systems: per system (the primary first), its lesions as ``predictions.json`` rows
            (``coordX/Y/Z`` LPS mm, ``probability`` in [0, 1], ``diameter_mm``, ``malignancy_prob``).
        radius_mm: detections of different systems closer than this (mm) are one candidate.

    Returns:
        The fused lesions, strongest first; each row the earliest system's with the fused probability.
    """
    clusters: list[dict[str, Any]] = []  # {"row", "members": set of system indices, "miss": Π(1 - p)}
    for k, lesions in enumerate(systems):
        for les in sorted(lesions, key=lambda r: -float(r["probability"])):
            c = _xyz(les)
            near = [(math.dist(c, _xyz(cl["row"])), i) for i, cl in enumerate(clusters) if k not in cl["members"]]
            near = [(d, i) for d, i in near if d <= radius_mm]
            if not near:
                clusters.append({"row": dict(les), "members": {k}, "miss": 1.0 - float(les["probability"])})
            else:
                cl = clusters[min(near)[1]]
                cl["members"].add(k)
                cl["miss"] *= 1.0 - float(les["probability"])
    out = [{**cl["row"], "probability": 1.0 - cl["miss"]} for cl in clusters]
    return sorted(out, key=lambda r: -r["probability"])


def _source(systems: Sequence[FusionInput], sid: str) -> dict[str, Any]:
    """The scan's ``input`` (its file) and ``geometry`` from the first input's per-scan record that has
    them, so ``medmtl export`` finds the scan again without ``--scans``; ``geometry`` ``{}`` otherwise."""
    for s in systems:
        rec = pio.load_record(pio.record_path(s.folder, sid)) or {}
        if isinstance(rec.get("input"), dict):
            return {"input": rec["input"], "geometry": rec.get("geometry") or {}}
    return {"geometry": {}}


def run_key(inputs: Sequence[FusionInput], radius_mm: float) -> str:
    """``fusion-<16 hex>``: SHA-256 of the rule, the radius and the inputs' ``predictions.json``."""
    state = json.dumps({"method": METHOD, "rule": RULE, "radius_mm": radius_mm, "inputs": [i.sha256 for i in inputs]})
    return f"{METHOD}-{hashlib.sha256(state.encode()).hexdigest()[:16]}"


def _check_args(inputs: Sequence[Path], out_dir: Path, radius_mm: float) -> None:
    if len(inputs) < 2:
        raise ConfigError(f"fusion needs at least 2 prediction folders, got {len(inputs)}; give e.g. the"
                          " `medmtl predict` folder and the `medmtl classical` folder of the same scans")
    if isinstance(radius_mm, bool) or not isinstance(radius_mm, (int, float)) or not 0 < radius_mm <= 50:
        raise ConfigError(f"--radius-mm must be in (0, 50] mm, got {radius_mm!r}; 5 mm matches detections of"
                          " one nodule")
    resolved = [Path(p).resolve() for p in inputs]
    if len(set(resolved)) < len(resolved):
        raise ConfigError("the same prediction folder is given twice; give each system's folder once")
    if Path(out_dir).resolve() in resolved:
        raise ConfigError(f"-o/--out {out_dir} is one of the input folders; write the fusion to a new folder")


def fuse_folders(*, inputs: Sequence[Path], out_dir: Path, radius_mm: float = DEFAULT_RADIUS_MM,
                 overwrite: bool = False) -> dict[str, Any]:
    """Fuse prediction folders into ``out_dir`` (see :func:`medmtl.api.fuse_predictions`).

    Returns:
        ``{"n_scans", "n_done", "n_failed", "failures", "outputs", "method", "run_key"}``.

    Raises:
        ConfigError: fewer than 2 inputs, a repeated input, a bad radius or an ``out_dir`` that
            holds another run's predictions (refused unless ``overwrite``).
        PredictionTableError: an input without a readable ``predictions.json``.
    """
    from medmtl import __version__

    _check_args(inputs, out_dir, radius_mm)
    systems = [load_input(Path(p)) for p in inputs]
    key = run_key(systems, float(radius_mm))
    all_ids = sorted(set().union(*({*s.scans, *s.missing} for s in systems)))
    out_dir = Path(out_dir)
    provenance = {"method": METHOD, "medmtl_version": __version__, "run_key": key, "rule": RULE,
                  "radius_mm": float(radius_mm), "reference": REFERENCE,
                  "inputs": [{"folder": str(s.folder), "method": s.method, "predictions_json_sha256": s.sha256}
                             for s in systems]}
    with pio.output_lock(out_dir):
        prepare_out_dir(out_dir, key, overwrite=overwrite)
        failures: list[dict[str, Any]] = []
        done: list[str] = []
        for sid in all_ids:
            lacking = [str(s.folder) for s in systems if sid not in s.scans]
            if lacking:
                failures.append({"seriesuid": sid, "path": lacking[0], "stage": "fusion",
                                 "reason": f"scan '{sid}' has no complete result in {', '.join(lacking)}; predict it"
                                           " there first (a rerun of that command completes it)"})
                continue
            lesions = fuse_scan([s.scans[sid] for s in systems], radius_mm=float(radius_mm))
            pio.write_record(out_dir, {"format": pio.RECORD_FORMAT, "status": "complete", "seriesuid": sid,
                                       "weights_sha256": key, "lesions": lesions, "provenance": provenance,
                                       "timings": {}, **_source(systems, sid),
                                       "outputs": {"maps": [], "previews": None}})
            done.append(sid)
        merged = pio.merge_outputs(out_dir, done, extra_failures=failures, run_info=provenance)
    return {"n_scans": len(all_ids), "n_done": len(done), "n_failed": merged["n_failed"],
            "failures": merged["failures"], "outputs": merged["outputs"], "method": METHOD, "run_key": key}
