"""Drift-gated adaptation for ``medmtl predict --adapt auto``.

The batch of scans to predict is compared with the checkpoint's stored reference features by
the same rule as ``medmtl diagnose`` (:mod:`medmtl.shift.verdict`: shift only when both the
kernel-MMD and the domain-classifier permutation tests reject at α — an intersection-union test,
false-alarm rate ≤ α — then the domain checks). Only the verdict ``shift`` re-estimates the BN statistics on the batch with AdaBN
(Li et al. 2016, :mod:`medmtl.shift.adabn`): ``no_shift`` leaves the model as it is, so a small,
unrepresentative in-distribution batch does not degrade it, and ``outside_domain`` leaves it too
— no label-free adaptation bridges another modality, body region or field of view.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from medmtl.engine.card import ModelCard
    from medmtl.engine.inference import Predictor
    from medmtl.io.types import Scan, ScanRef

logger = logging.getLogger(__name__)

GATE_PERMUTATIONS = 500
#: Scans given to the shift test for ``adapt="auto"`` (a sample of the batch).
ADAPT_SAMPLE = 16


def gate_predictor(predictor: Predictor, refs: Sequence[ScanRef]) -> tuple[Predictor, dict[str, Any]]:
    """The drift gate of ``medmtl predict --adapt auto`` (a :data:`medmtl.engine.predict.Gate`).

    Reads a sample of the scans to predict (at most :data:`ADAPT_SAMPLE`), tests it against the
    card's reference statistics and, if it flags a shift, returns a predictor whose network has
    AdaBN-adapted BN statistics.

    Returns:
        ``(predictor, info)`` — see :func:`maybe_adapt` for ``info``.
    """
    from medmtl.io.read import read_scan

    sample = [read_scan(r) for r in refs[:ADAPT_SAMPLE]]
    model, info = maybe_adapt(predictor.model, predictor.card, sample)
    return (predictor if model is predictor.model else predictor.with_model(model)), info


def maybe_adapt(
    model: nn.Module,
    card: ModelCard,
    scans: Sequence[Scan],
    *,
    n_permutations: int = GATE_PERMUTATIONS,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Apply the shift rule to the batch against the card's reference statistics; AdaBN on ``shift``.

    Args:
        model: the loaded ``MultiTaskNet`` (not modified: an adapted copy is returned).
        card: its model card (reference statistics, input spec, patch size).
        scans: the batch (or a sample of it).
        n_permutations: relabellings of the permutation tests.
        seed: random seed.

    Returns:
        ``(model, info)``: the original model when nothing was done, else an adapted copy;
        ``info`` holds ``action`` (``"none"``, ``"adabn"`` or ``"skipped"``), ``verdict``,
        ``p_value``, ``alpha``, ``n_scans`` and ``reason``.
    """
    from medmtl.errors import ShiftError
    from medmtl.shift.fingerprint import scan_fingerprint
    from medmtl.shift.verdict import ALPHA, decide, shift_test

    info: dict[str, Any] = {"method": "intersection-union(MMD, classifier)", "alpha": ALPHA, "n_scans": len(scans),
                            "action": "skipped", "verdict": None, "p_value": None}
    ref = card.reference_stats
    if ref is None:
        info["reason"] = "the checkpoint has no reference statistics"
        return model, info
    tgt_fps = [scan_fingerprint(s) for s in scans]
    test = None
    if all(s.modality == ref.modality for s in scans):
        from medmtl.shift.reference import reference_extractor

        feats = reference_extractor(ref, model, card.input_spec).pooled_many(scans)
        try:
            test = shift_test(ref.feature_matrix(), feats, n_permutations=n_permutations, seed=seed)
        except ShiftError as exc:  # too few scans to reach alpha: nothing can be concluded
            info["reason"] = str(exc)
            return model, info
    modality = next((s.modality for s in scans if s.modality != ref.modality), ref.modality)
    verdict = decide(test, source_fps=[dict(f) for f in ref.fingerprints], target_fps=tgt_fps,
                     source_modality=ref.modality, target_modality=modality)
    info.update(verdict=verdict.kind, p_value=verdict.p_value, reason=verdict.text())
    if verdict.kind != "shift":
        info["action"] = "none"
        return model, info
    return _adabn(model, card, scans, info)


def _adabn(model: nn.Module, card: ModelCard, scans: Sequence[Scan], info: dict[str, Any]) -> tuple[nn.Module, dict[str, Any]]:
    """An AdaBN-adapted copy of ``model`` (BN statistics of the batch's patches)."""
    from medmtl.shift.adabn import adabn
    from medmtl.shift.adapt import prepare_volumes

    adapted = copy.deepcopy(model).cpu()
    info.update(action="adabn", n_patches=adabn(adapted, prepare_volumes(scans, card), list(card.patch_size)))
    logger.info("shift gate: %s", info["reason"])
    return adapted, info
