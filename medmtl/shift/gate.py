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
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from medmtl.io.types import Scan

logger = logging.getLogger(__name__)

GATE_PERMUTATIONS = 500


def maybe_adapt(
    model: nn.Module,
    card: Mapping[str, Any],
    scans: Sequence[Scan],
    *,
    alpha: float = 0.01,
    n_permutations: int = GATE_PERMUTATIONS,
    seed: int = 0,
) -> tuple[nn.Module, dict[str, Any]]:
    """Test the batch for shift against the card's reference statistics; AdaBN if flagged.

    Args:
        model: the loaded ``MultiTaskNet`` (not modified: an adapted copy is returned).
        card: its model card (``reference_stats``, ``input_spec``, ``patch_size``).
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
    from medmtl.shift.features import default_extractor, model_extractor
    from medmtl.shift.reference import as_input_spec, reference_features
    from medmtl.shift.two_sample import MIN_SCANS_MMD, mmd_test

    info: dict[str, Any] = {"method": "mmd", "alpha": alpha, "n_scans": len(scans), "action": "skipped",
                            "p_value": None, "statistic": None}
    ref = card.get("reference_stats")
    if not isinstance(ref, Mapping) or not (ref.get("features") or {}).get("matrix"):
        info["reason"] = "the checkpoint has no reference statistics"
        return model, info
    if len(scans) < MIN_SCANS_MMD or int(ref.get("n_scans", 0)) < MIN_SCANS_MMD:
        info["reason"] = f"the shift test needs at least {MIN_SCANS_MMD} scans per side"
        return model, info
    if any(s.modality != ref.get("modality") for s in scans):
        info["reason"] = f"batch modality differs from the reference ({ref.get('modality')})"
        return model, info
    ident = ref["features"]["extractor"]
    if ident.get("kind") == "pretrained":
        extractor = default_extractor(as_input_spec(ident["input_spec"]), encoder_name=ident["encoder"],
                                      adapter=ident["adapter"], max_shape=ident["max_shape"])
    else:
        extractor = model_extractor(model, as_input_spec(ident.get("input_spec", card["input_spec"])),
                                    max_shape=ident.get("max_shape", (128, 128, 128)),
                                    device=str(next(model.parameters()).device))
    feats = extractor.pooled_many(scans)
    res = mmd_test(reference_features(ref), feats, n_permutations=n_permutations, seed=seed)
    info.update(p_value=res["p_value"], statistic=res["statistic"])
    if res["p_value"] >= alpha:
        info.update(action="none", reason=f"no shift detected (p = {res['p_value']:.3g} >= {alpha})")
        return model, info
    adapted = copy.deepcopy(model).cpu()
    n = adabn(adapted, prepare_volumes(scans, card), [int(v) for v in card["patch_size"]])
    info.update(action="adabn", reason=f"shift detected (p = {res['p_value']:.3g} < {alpha})", n_patches=n)
    logger.info("shift gate: %s", info["reason"])
    return adapted, info
