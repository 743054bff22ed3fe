"""``medmtl diagnose``: compare a source cohort (scan folder or checkpoint) with a target folder.

The report combines (see each module for its method and paper):

* data fingerprints and cohort effect sizes (:mod:`medmtl.shift.fingerprint`);
* feature-space two-sample tests on pooled encoder features: kernel MMD (Gretton et al.
  2012) and a domain-classifier test with the proxy A-distance (Lopez-Paz & Oquab 2017;
  Ben-David et al. 2010), combined into one decision with controlled family-wise error and
  three verdicts — no shift, shift adaptation can address, outside the training domain
  (:mod:`medmtl.shift.verdict`);
* BatchNorm-statistics shift per layer and, with a checkpoint, prediction shift
  (:mod:`medmtl.shift.bn_shift`);
* optionally LogME transferability of encoders × adapters (You et al. 2021,
  :mod:`medmtl.shift.logme`).

It writes ``report.json``, a self-contained ``report.html`` (:mod:`medmtl.shift.html`) and
``report.md`` (:mod:`medmtl.shift.report_md`), both opening with a plain-language reading
(:mod:`medmtl.shift.reading`).
When the source is a checkpoint, its stored reference statistics stand in for the training
scans, so a site can be checked without the training data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medmtl.errors import ShiftError
from medmtl.progress import Stages
from medmtl.shift.verdict import ALPHA

if TYPE_CHECKING:  # pragma: no cover

    from medmtl.engine.card import ReferenceStats
    from medmtl.io.types import Scan
    from medmtl.shift.features import FeatureExtractor
    from medmtl.transforms.presets import InputSpec

logger = logging.getLogger(__name__)

TSNE_MIN_SCANS = 30
#: The stages of :func:`run_diagnose`, as its progress bar names them (a fingerprint-only report
#: goes from "fingerprints" to "report"; "encoder ranking" only with ``rank_encoders``).
STAGES = ("reading scans", "network", "fingerprints", "features", "tests", "BatchNorm statistics",
          "encoder ranking", "report")


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint folder (holds ``model_card.json``)."""
    return (path / "model_card.json").is_file()


def load_cohort(folder: Path, role: str) -> list[Scan]:
    """Load every scan of a folder (or the one scan of a file); none readable is a :class:`ShiftError`."""
    from medmtl.io.read import load_folder

    if not folder.is_dir() and not folder.is_file():
        raise ShiftError(f"--{role} '{folder}' does not exist; pass a folder of scans or one scan file.")
    scans, skipped = load_folder(folder, progress=False)
    for s in skipped:  # unreadable files matter; label masks skipped on purpose do not
        (logger.warning if s.failed else logger.debug)("%s: skipped %s (%s)", role, s.path, s.reason)
    if not scans:
        raise ShiftError(f"--{role} folder '{folder}' holds no readable scans; pass a folder of NIfTI/DICOM/MHA/NRRD scans.")
    modalities = sorted({s.modality for s in scans})
    if len(modalities) > 1:
        raise ShiftError(f"--{role} folder '{folder}' mixes modalities {modalities}; split it into one folder per modality.")
    return scans


def check_sizes(n_source: int, n_target: int) -> None:
    """Cohorts need ≥ 2 scans (MMD); the classifier test needs ≥ 3 (it is skipped otherwise)."""
    for role, n in (("source", n_source), ("target", n_target)):
        if n < 2:
            raise ShiftError(
                f"the {role} cohort has {n} scan; shift tests need at least 2 scans per cohort "
                f"(3 for the domain-classifier test); add scans to the {role}."
            )


def untestable(n_source: int, n_target: int, n_permutations: int) -> str | None:
    """Why the shift test cannot run at these sizes (:func:`check_sizes`, then
    :func:`medmtl.shift.verdict.check_resolvable`), or ``None`` when it can."""
    from medmtl.shift.verdict import check_resolvable

    try:
        check_sizes(n_source, n_target)
        check_resolvable(n_source, n_target, n_permutations)
    except ShiftError as exc:
        return str(exc)
    return None


def default_spec(modality: str) -> InputSpec:
    """The default preprocessing spec of a modality."""
    from medmtl.transforms.presets import default_ct_spec, default_mri_spec

    return default_ct_spec() if modality == "CT" else default_mri_spec()


def embedding(features: np.ndarray, seed: int) -> tuple[np.ndarray, str, list[str]]:
    """2D embedding of standardised features: t-SNE with ≥ 30 scans, else PCA; with the axis
    names (PCA: the share of the variance each component explains)."""
    from medmtl.shift.two_sample import pca_reduce, standardise

    z = standardise(features.astype(np.float64))
    if len(z) >= TSNE_MIN_SCANS:
        from sklearn.manifold import TSNE

        pts = TSNE(n_components=2, perplexity=min(15.0, (len(z) - 1) / 3.0), random_state=seed,
                   init="pca").fit_transform(pca_reduce(z, 20))
        return pts, "t-SNE", ["t-SNE 1 (no unit; distances not preserved)", "t-SNE 2"]
    pts = pca_reduce(z, 2)
    zc = z - z.mean(axis=0)
    total = float((zc ** 2).sum())
    share = [float((pts[:, i] ** 2).sum()) / total if total > 0 else 0.0 for i in range(pts.shape[1])]
    if pts.shape[1] < 2:
        pts = np.concatenate([pts, np.zeros((len(pts), 1))], axis=1)
        share.append(0.0)
    return pts, "PCA", [f"PC{i + 1} ({100.0 * v:.1f}% of the variance)" for i, v in enumerate(share[:2])]


def _bn_inputs(extractor: FeatureExtractor, scans: Sequence[Scan]) -> list[Any]:
    return [extractor.prepare(s) for s in scans]


def _g_phrase(text: str) -> str:
    """``"1.85"`` → ``"g = 1.85"``, ``"> 10"`` → ``"g > 10"``; words stay as they are."""
    if text[:1] in "<>":
        return f"g {text}"
    return f"g = {text}" if text[:1].isdigit() or text[:1] in "-−" else text


def _details(kind: str, effects: list[dict[str, Any]], hu_rows: list[dict[str, Any]],
             modality: str = "CT") -> list[str]:
    """Sentences beside the verdict: the largest fingerprint differences, the HU check and, for an
    adaptable shift to a coarser or noisier acquisition, the re-simulation option."""
    from medmtl.shift.descriptive import g_text
    from medmtl.shift.fingerprint import field_label

    parts = []
    big = sorted((e for e in effects if e["large"]), key=lambda e: -abs(e["hedges_g"]))[:4]
    if big:
        parts.append("Largest fingerprint differences (descriptive, not part of the decision): " + ", ".join(
            f"{e.get('label') or field_label(e['field'], modality)} {e['source_mean']:.3g} → {e['target_mean']:.3g} "
            f"({_g_phrase(g_text(e['hedges_g'], e.get('source_sd'), e.get('target_sd')))})" for e in big) + ".")
    parts += hu_sentences(hu_rows)
    coarser = sorted({e["field"] for e in effects if e["large"] and e["target_mean"] > e["source_mean"]
                      and str(e["field"]).startswith(("spacing", "slice_thickness", "noise"))})
    if kind == "shift" and coarser:
        labels = {e["field"]: e.get("label") for e in effects}
        named = ", ".join(labels.get(f) or field_label(f, modality) for f in coarser)
        parts.append(f"The target acquisition is coarser or noisier ({named}): `medmtl adapt --method "
                     "resim --source <labelled source scans>` fine-tunes on source scans re-simulated at it.")
    return parts


def _verdict(test: dict[str, Any] | None, sides: _Sides, src_fps: list[dict[str, Any]], tgt_fps: list[dict[str, Any]],
             effects: list[dict[str, Any]], hu_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The verdict of :func:`medmtl.shift.verdict.decide`, with the descriptive details appended."""
    from medmtl.shift.verdict import decide

    v = decide(test, source_fps=src_fps, target_fps=tgt_fps, source_modality=sides.src_modality,
               target_modality=sides.modality)
    out = v.to_dict()
    details = _details(v.kind, effects, hu_rows, sides.modality)
    out["details"] = details
    out["text"] = " ".join([out["text"], *details])
    out["min_p"] = v.p_value
    return out


def _hu_rows(cohorts: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per cohort: scans checked, miscalibrated (a global offset: air and fat moved too), contrast-
    enhanced (soft tissue brighter, air and fat in place), unverified, and the median offset."""
    rows = []
    for name, fps in cohorts.items():
        hu = [fp["hu_calibration"] for fp in fps if "hu_calibration" in fp]
        if not hu:
            continue
        offs = [h["offset_hu"] for h in hu if h.get("offset_hu") is not None]
        soft = [h["soft_tissue"]["measured"] for h in hu if (h.get("soft_tissue") or {}).get("measured") is not None]
        rows.append({"cohort": name, "n_scans": len(hu), "n_flagged": int(sum(bool(h["flag"]) for h in hu)),
                     "n_contrast_enhanced": int(sum(bool(h.get("contrast_enhanced")) for h in hu)),
                     "n_unverified": int(sum(h.get("status") == "unverified" for h in hu)),
                     "median_offset_hu": float(np.median(offs)) if offs else None,
                     "median_soft_tissue_hu": float(np.median(soft)) if soft else None})
    return rows


def hu_sentences(hu_rows: list[dict[str, Any]]) -> list[str]:
    """The HU check of the target in words: miscalibration, contrast enhancement or neither."""
    from medmtl.shift.fingerprint import HU_TOLERANCE

    tgt = next((h for h in hu_rows if h["cohort"] == "target"), None)
    if not tgt:
        return []
    out = []
    if tgt["n_flagged"]:
        out.append(f"HU miscalibration: {tgt['n_flagged']} of {tgt['n_scans']} target scans have air or fat off their "
                   f"usual values by > {HU_TOLERANCE:g} HU, a shift of the whole Hounsfield scale (median offset "
                   f"{tgt['median_offset_hu']:+.0f} HU).")
    if tgt.get("n_contrast_enhanced"):
        soft = tgt.get("median_soft_tissue_hu")
        at = f" (median soft-tissue mode {soft:.0f} HU)" if soft is not None else ""
        out.append(f"Contrast enhancement, not miscalibration: {tgt['n_contrast_enhanced']} of {tgt['n_scans']} target "
                   f"scans have soft tissue brighter than the unenhanced 0–40 HU{at} while air and fat sit at their "
                   "usual −1000 and −100 HU.")
    if tgt.get("n_unverified"):
        out.append(f"{tgt['n_unverified']} of {tgt['n_scans']} target scans have soft tissue outside 0–40 HU and no "
                   "measurable air or fat, so a scale offset cannot be told from contrast enhancement.")
    return out


@dataclass
class _Sides:
    """The two cohorts of a diagnosis: target scans, and source scans or a checkpoint's statistics."""

    tgt_scans: list[Scan]
    src_scans: list[Scan]
    ref: ReferenceStats | None
    src_kind: str
    modality: str
    src_modality: str

    @property
    def n_src(self) -> int:
        return len(self.src_scans) if self.ref is None else self.ref.n_scans


def _load_sides(source: Path, target: Path) -> _Sides:
    """Read the target folder and the source (a folder, or a checkpoint's reference statistics)."""
    from medmtl.engine.checkpoint import read_card
    from medmtl.shift.reference import require_reference

    tgt_scans = load_cohort(target, "target")
    modality = tgt_scans[0].modality
    ref: ReferenceStats | None = None
    src_scans: list[Scan] = []
    if is_checkpoint(source):
        ref = require_reference(read_card(source), str(source))
        src_modality, kind = ref.modality, "checkpoint"
    else:
        src_scans = load_cohort(source, "source")
        src_modality, kind = src_scans[0].modality, "folder"
    return _Sides(tgt_scans, src_scans, ref, kind, modality, src_modality)


def _extractor(sides: _Sides, ckpt_path: Path | None, notes: list[str],
               device: str = "cpu") -> tuple[FeatureExtractor, Any, InputSpec]:
    """The feature extractor (and the network, for BN and prediction shift) of a diagnosis, on ``device``."""
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.shift.features import default_extractor, model_extractor
    from medmtl.shift.reference import reference_extractor

    model = None
    if ckpt_path is not None:
        model, mcard = load_checkpoint(ckpt_path, device=device)
        spec = mcard.input_spec
        extractor = model_extractor(model, spec, device=device)
        if sides.ref is not None and sides.ref.extractor.get("kind") == "pretrained":
            extractor = reference_extractor(sides.ref, model, spec)
    else:
        spec = default_spec(sides.modality)
        extractor = default_extractor(spec, device=device)
    if sides.ref is not None and sides.ref.extractor.get("weights_hash") != extractor.identity["weights_hash"]:
        notes.append("The checkpoint's encoder differs from the one that computed its reference features "
                     "(e.g. after adaptation); feature tests compare slightly different extractors.")
    return extractor, model, spec


def _feature_tests(xs: np.ndarray, xt: np.ndarray, effects: list[dict[str, Any]], n_permutations: int,
                   seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The combined shift test (:func:`medmtl.shift.verdict.shift_test`) as report rows, then one
    descriptive row (not part of the decision; Holm-adjusted permutation p, see
    :mod:`medmtl.shift.descriptive`) per fingerprint field."""
    from medmtl.shift.verdict import shift_test

    test = shift_test(xs, xt, n_permutations=n_permutations, seed=seed)
    mmd, clf = test["mmd"], test["classifier"]
    tests: list[dict[str, Any]] = [
        {"name": "kernel MMD (Gaussian, median bandwidth)", "family": "feature", "statistic": mmd["statistic"],
         "p_value": mmd["p_value"], "detail": f"bandwidth {mmd['bandwidth']:.3g}"}]
    if clf is not None:
        tests.append({"name": "domain classifier (logistic, out-of-fold AUC)", "family": "feature",
                      "statistic": clf["statistic"], "p_value": clf["p_value"],
                      "detail": f"accuracy {clf['accuracy']:.2f}, proxy A-distance {clf['proxy_a_distance']:.2f}"})
    for e in effects:
        if e.get("holm_p") is None:
            continue
        tests.append({"name": f"fingerprint: {e['label']} (rank-sum permutation test)", "family": "fingerprint",
                      "descriptive": True, "statistic": e["hedges_g"], "p_value": e["holm_p"],
                      "detail": "descriptive; Holm-adjusted p; statistic = Hedges' g"})
    return tests, test


def _bn_report(extractor: FeatureExtractor, model: Any, sides: _Sides) -> dict[str, Any]:
    """Per-layer BN-statistics shift of the extractor's network on the target (and source) scans."""
    from medmtl.shift import bn_shift as bns

    tgt_bn = bns.bn_shift(extractor.encoder, _bn_inputs(extractor, sides.tgt_scans))
    src_bn = bns.bn_shift(extractor.encoder, _bn_inputs(extractor, sides.src_scans)) if sides.src_scans else None
    return {
        "network": "checkpoint encoder" if model is not None
        else f"ImageNet {extractor.identity['encoder']} ({extractor.identity['adapter']})",
        "target": tgt_bn,
        "source": src_bn,
        "target_mean_sym_kl": float(np.mean([r["sym_kl"] for r in tgt_bn])) if tgt_bn else None,
        "source_mean_sym_kl": float(np.mean([r["sym_kl"] for r in src_bn])) if src_bn else None,
    }


def _target_scores(clf: dict[str, Any] | None, src_ids: Sequence[str], tgt_scans: Sequence[Scan]) -> list[dict[str, Any]]:
    """Per-scan "looks like the target" scores of the domain classifier."""
    if clf is None:
        return []
    scores = [{"scan_id": i, "cohort": "source", "score": v} for i, v in zip(src_ids, clf["target_score_source"])]
    return scores + [{"scan_id": s.scan_id, "cohort": "target", "score": v}
                     for s, v in zip(tgt_scans, clf["target_score_target"])]


def _figures(report: dict[str, Any], sides: _Sides) -> dict[str, str]:
    """The report's figures (``<img>`` tags with alt texts), by section key."""
    from medmtl.shift import report_figures as rf
    from medmtl.shift.descriptive import slice_label

    fps = report["fingerprints"]
    emb, bn = report["embedding"], report["bn_shift"]
    figures = {"spacing": rf.spacing_figure({"source": fps["source"], "target": fps["target"]},
                                            slice_label([*fps["source"], *fps["target"]]))}
    examples = [("source", sides.src_scans[0])] if sides.src_scans else []
    figures["examples"] = rf.example_slices_figure([*examples, ("target", sides.tgt_scans[0])])
    if report["histograms"] is not None:
        figures["histogram"] = rf.histogram_figure(report["histograms"], "HU" if report["modality"] == "CT" else "a.u.")
    if emb is not None:
        figures["embedding"] = rf.embedding_figure(emb["points"], emb["cohort"], emb["method"], emb["axes"])
    if bn is not None and bn["target"]:
        figures["bn"] = rf.bn_figure(bn["target"], bn["source"])
    return figures


def _write_report(out_dir: Path, report: dict[str, Any], sides: _Sides) -> None:
    """Figures, ``report.html``, ``report.md`` and ``report.json`` (atomically)."""
    from medmtl.io.writers import atomic_write_json, atomic_write_text
    from medmtl.shift import html as hh
    from medmtl.shift.report_md import render_markdown

    page = hh.render_report({**report, "_figures": _figures(report, sides)})
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.html", page)
    atomic_write_text(out_dir / "report.md", render_markdown(report))


def _fingerprints(sides: _Sides) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
    """Per-scan fingerprints of target and source, and the two intensity histograms."""
    from medmtl.shift.fingerprint import image_array, intensity_histogram, scan_fingerprint

    ref = sides.ref
    tgt_fps = [scan_fingerprint(s) for s in sides.tgt_scans]
    src_fps = [scan_fingerprint(s) for s in sides.src_scans] if ref is None else [dict(f) for f in ref.fingerprints]
    hists = {"source": intensity_histogram([image_array(s) for s in sides.src_scans], sides.modality) if ref is None
             else dict(ref.histogram),
             "target": intensity_histogram([image_array(s) for s in sides.tgt_scans], sides.modality)}
    return tgt_fps, src_fps, hists


def _cohort_features(sides: _Sides, model: Any, extractor: FeatureExtractor) -> tuple[Any, Any, Any, Any, list[str]]:
    """``(xs, xt, pred_s, pred_t, src_ids)``: pooled features and prediction summaries of both sides."""
    from medmtl.shift.reference import cohort_features_and_predictions

    xt, pred_t = cohort_features_and_predictions(model, extractor, sides.tgt_scans)
    ref = sides.ref
    if ref is None:
        xs, pred_s = cohort_features_and_predictions(model, extractor, sides.src_scans)
        src_ids = [s.scan_id for s in sides.src_scans]
    else:
        xs, src_ids = ref.feature_matrix(), list(ref.scan_ids)
        pred_s = [dict(p) for p in ref.predictions] if ref.predictions is not None else None
    if xs.shape[1] != xt.shape[1]:
        raise ShiftError(f"reference features have {xs.shape[1]} dimensions but the extractor gives {xt.shape[1]}; "
                         "re-save the checkpoint's reference statistics.")
    return xs, xt, pred_s, pred_t, src_ids


def run_diagnose(
    *,
    source: Path,
    target: Path,
    out_dir: Path,
    checkpoint: Path | None = None,
    rank_encoders: bool = False,
    n_permutations: int = 1000,
    seed: int = 0,
    progress: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Measure domain shift between a source and a target cohort; write the report.

    Args:
        source: a scan folder, or a checkpoint folder whose reference statistics describe the
            training data.
        target: folder of target scans.
        out_dir: where ``report.json`` and ``report.html`` are written.
        checkpoint: optional checkpoint whose encoder extracts the features and whose heads
            give prediction shift (default: the source checkpoint, else the ImageNet
            EfficientNet-Lite0 ``inflate`` encoder).
        rank_encoders: also rank encoders × adapters by LogME (needs ``annotations.csv`` in
            the source folder, or else in the target folder).
        n_permutations: permutations per test (≥ 200 to reach p < 0.01).
        seed: random seed.
        progress: a progress bar over the stages (:data:`STAGES`) on stderr.
        device: torch device of the feature network (``cpu``, ``cuda``, ``cuda:N``; resolved by
            the caller). The encoder ranking (LogME) runs on the CPU.

    Returns:
        The report dict (``verdict``, ``tests``, fingerprints, effect sizes, BN shift, ...).

    Cohorts too small for the shift test (fewer than 2 scans, or too few for any p-value to
    reach alpha) get a fingerprint-only report: the test is refused and the verdict says so
    (``kind`` ``not_tested``), but the descriptive part is written.

    Raises:
        ShiftError: a checkpoint without reference statistics, unreadable folders.
    """

    if n_permutations < 1:
        raise ShiftError(f"--n-permutations must be >= 1, got {n_permutations}; use 1000 (>= 200 to reach p < 0.01).")
    source, target, out_dir = Path(source), Path(target), Path(out_dir)
    notes: list[str] = []
    with Stages([s for s in STAGES if rank_encoders or s != "encoder ranking"], desc="diagnose",
                enabled=progress) as stage:
        stage("reading scans")
        sides = _load_sides(source, target)
        refusal = untestable(sides.n_src, len(sides.tgt_scans), n_permutations)
        if sides.src_modality != sides.modality or refusal is not None:
            stage("fingerprints")  # no network, no test: straight to the report
        if sides.src_modality != sides.modality:
            report = _other_modality_report(sides, source, target, n_permutations, seed)
        elif refusal is not None:
            from medmtl.shift.report_small import fingerprint_only_report

            report = fingerprint_only_report(sides, source, target, n_permutations, seed, refusal)
        else:
            report = _feature_report(sides, source, target, checkpoint, rank_encoders, n_permutations, seed, notes,
                                     stage, device=device)
        stage("report")
        from medmtl.shift.reading import plain_reading

        report["reading"] = plain_reading(report)
        _write_report(out_dir, report, sides)
    logger.info("diagnose: %s", report["verdict"]["text"])
    return report


def _header(sides: _Sides, source: Path, target: Path, n_permutations: int, seed: int,
            src_ids: Sequence[str]) -> dict[str, Any]:
    from medmtl import __version__

    return {
        "medmtl_version": __version__, "modality": sides.modality, "source_modality": sides.src_modality,
        "alpha": ALPHA, "n_permutations": n_permutations, "seed": seed,
        "source": {"path": str(source), "kind": sides.src_kind, "n_scans": sides.n_src, "scan_ids": list(src_ids)},
        "target": {"path": str(target), "n_scans": len(sides.tgt_scans),
                   "scan_ids": [s.scan_id for s in sides.tgt_scans]},
    }


def _other_modality_report(sides: _Sides, source: Path, target: Path, n_permutations: int,
                           seed: int) -> dict[str, Any]:
    """Cohorts of two modalities: no feature test is meaningful; the verdict is ``outside_domain``."""
    from medmtl.shift.fingerprint import cohort_summary

    tgt_fps, src_fps, _ = _fingerprints(sides)  # the histograms of two modalities share no axis
    src_ids = [s.scan_id for s in sides.src_scans] if sides.ref is None else list(sides.ref.scan_ids)
    return {
        **_header(sides, source, target, n_permutations, seed, src_ids),
        "feature_extractor": None, "tests": [], "mmd": None, "classifier": None, "shift_test": None,
        "fingerprints": {"source": src_fps, "target": tgt_fps,
                         "source_summary": cohort_summary(src_fps), "target_summary": cohort_summary(tgt_fps)},
        "effect_sizes": [], "fingerprint_table": _geometry_rows(src_fps, tgt_fps, sides.modality),
        "fingerprint_p": {"n_rows": 0, "reason": "no p-values across modalities; intensities are not comparable."},
        "hu_calibration": [], "histograms": None, "embedding": None, "bn_shift": None,
        "prediction_shift": [], "target_scores": [], "encoder_ranking": None,
        "notes": [f"The source is {sides.src_modality} and the target {sides.modality}: the feature tests, "
                  "the embedding and the BN statistics are not computed across modalities."],
        "verdict": _verdict(None, sides, src_fps, tgt_fps, [], []),
    }


def _geometry_rows(src_fps: list[dict[str, Any]], tgt_fps: list[dict[str, Any]], modality: str) -> list[dict[str, Any]]:
    """The fingerprint rows comparable across modalities: spacing, field of view, body fraction."""
    from medmtl.shift.descriptive import fingerprint_rows

    rows = fingerprint_rows(src_fps, tgt_fps, [], {}, modality)
    return [r for r in rows if not (r["field"].startswith("p") or r["field"] == "noise")]


def _feature_report(sides: _Sides, source: Path, target: Path, checkpoint: Path | None, rank_encoders: bool,
                    n_permutations: int, seed: int, notes: list[str],
                    stage: Callable[[str], None] = lambda name: None, device: str = "cpu") -> dict[str, Any]:
    """Same modality: fingerprints, the combined feature test and its verdict, BN and prediction shift
    (``stage`` is told each of :data:`STAGES` as it starts)."""
    from medmtl.shift.descriptive import describe_fingerprints, prediction_rows
    from medmtl.shift.fingerprint import cohort_summary

    tgt_scans, src_scans = sides.tgt_scans, sides.src_scans
    stage("network")
    extractor, model, spec = _extractor(sides, checkpoint if checkpoint is not None else
                                        (source if sides.ref is not None else None), notes, device)
    stage("fingerprints")
    tgt_fps, src_fps, hists = _fingerprints(sides)
    effects, fp_table, fp_note = describe_fingerprints(src_fps, tgt_fps, sides.modality, n_permutations, seed)
    stage("features")
    xs, xt, pred_s, pred_t, src_ids = _cohort_features(sides, model, extractor)
    stage("tests")
    tests, test = _feature_tests(xs, xt, effects, n_permutations, seed)
    pred_rows = prediction_rows(pred_s, pred_t, n_permutations, seed)
    for r in pred_rows:
        tests.append({"name": f"prediction: {r['field']} (KS)", "family": "prediction", "descriptive": True,
                      "statistic": r["ks"], "p_value": r["holm_p"] if r["holm_p"] is not None else r["scipy_p"],
                      "detail": f"descriptive; Holm-adjusted p; median {r['source_median']:.3g} → "
                                f"{r['target_median']:.3g}"})
    pts, emb_method, emb_axes = embedding(np.concatenate([xs, xt]), seed)
    hu_rows = _hu_rows({"source": src_fps, "target": tgt_fps})
    stage("BatchNorm statistics")
    bn = _bn_report(extractor, model, sides)
    if rank_encoders:
        stage("encoder ranking")
    return {
        **_header(sides, source, target, n_permutations, seed, src_ids),
        "feature_extractor": extractor.identity,
        "tests": tests,
        "mmd": test["mmd"], "classifier": test["classifier"],
        "shift_test": {k: test[k] for k in ("p_value", "shift", "alpha", "exact", "n_label_sets", "smallest_p", "rule")},
        "fingerprints": {"source": src_fps, "target": tgt_fps,
                         "source_summary": cohort_summary(src_fps), "target_summary": cohort_summary(tgt_fps)},
        "effect_sizes": effects, "fingerprint_table": fp_table, "fingerprint_p": fp_note,
        "hu_calibration": hu_rows, "histograms": hists,
        "embedding": {"method": emb_method, "points": pts.tolist(), "axes": emb_axes,
                      "cohort": ["source"] * len(xs) + ["target"] * len(xt)},
        "bn_shift": bn,
        "prediction_shift": pred_rows,
        "target_scores": _target_scores(test["classifier"], src_ids, tgt_scans),
        "encoder_ranking": _rank(src_scans, source, tgt_scans, target, spec) if rank_encoders else None,
        "notes": notes,
        "verdict": _verdict(test, sides, src_fps, tgt_fps, effects, hu_rows),
    }


def _rank(src_scans: list[Scan], source: Path, tgt_scans: list[Scan], target: Path, spec: InputSpec) -> list[dict[str, Any]]:
    """LogME ranking on the first labelled cohort (source folder, else target folder)."""
    from medmtl.io.annotations import read_annotations
    from medmtl.shift.logme import rank_encoders as _rank_encoders

    for scans, folder in ((src_scans, source), (tgt_scans, target)):
        ann = folder / "annotations.csv"
        if scans and ann.is_file():
            return _rank_encoders(scans, read_annotations(ann), spec)
    raise ShiftError(
        f"--rank-encoders needs labelled scans: neither '{source}' nor '{target}' holds a scan folder with an "
        "annotations.csv; add one (seriesuid,coordX,coordY,coordZ,diameter_mm[,malignancy])."
    )
