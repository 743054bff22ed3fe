"""Drift-gated adaptation for ``medmtl predict --adapt auto``.

The batch of scans to predict is compared with the checkpoint's stored reference features by
the kernel-MMD permutation test (Gretton et al. 2012, :func:`medmtl.shift.two_sample.mmd_test`);
only when it flags a shift (``p < alpha``) are the BN statistics re-estimated on the batch
with AdaBN (Li et al. 2016, :mod:`medmtl.shift.adabn`). Adapting only on evidence of drift
avoids degrading a model on in-distribution data with a small, unrepresentative batch.
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
    alpha: float = 0.01,
    n_permutations: int = GATE_PERMUTATIONS,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Test the batch for shift against the card's reference statistics; AdaBN if flagged.

    Args:
        model: the loaded ``MultiTaskNet`` (not modified: an adapted copy is returned).
        card: its model card (reference statistics, input spec, patch size).
        scans: the batch (or a sample of it).
        alpha: significance level of the MMD test.
        n_permutations: permutations of the test.
        seed: random seed.

    Returns:
        ``(model, info)``: the original model when nothing was done, else an adapted copy;
        ``info`` holds ``action`` (``"none"``, ``"adabn"`` or ``"skipped"``), ``p_value``,
        ``statistic``, ``alpha``, ``n_scans`` and ``reason``.
    """
    from medmtl.shift.adabn import adabn
    from medmtl.shift.adapt import prepare_volumes
    from medmtl.shift.reference import reference_extractor
    from medmtl.shift.two_sample import MIN_SCANS_MMD, mmd_test

    info: dict[str, Any] = {"method": "mmd", "alpha": alpha, "n_scans": len(scans), "action": "skipped",
                            "p_value": None, "statistic": None}
    ref = card.reference_stats
    if ref is None:
        info["reason"] = "the checkpoint has no reference statistics"
        return model, info
    if len(scans) < MIN_SCANS_MMD or ref.n_scans < MIN_SCANS_MMD:
        info["reason"] = f"the shift test needs at least {MIN_SCANS_MMD} scans per side"
        return model, info
    if any(s.modality != ref.modality for s in scans):
        info["reason"] = f"batch modality differs from the reference ({ref.modality})"
        return model, info
    extractor = reference_extractor(ref, model, card.input_spec)
    feats = extractor.pooled_many(scans)
    res = mmd_test(ref.feature_matrix(), feats, n_permutations=n_permutations, seed=seed)
    info.update(p_value=res["p_value"], statistic=res["statistic"])
    if res["p_value"] >= alpha:
        info.update(action="none", reason=f"no shift detected (p = {res['p_value']:.3g} >= {alpha})")
        return model, info
    adapted = copy.deepcopy(model).cpu()
    n = adabn(adapted, prepare_volumes(scans, card), list(card.patch_size))
    info.update(action="adabn", reason=f"shift detected (p = {res['p_value']:.3g} < {alpha})", n_patches=n)
    logger.info("shift gate: %s", info["reason"])
    return adapted, info
