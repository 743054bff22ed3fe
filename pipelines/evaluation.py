"""One evaluated condition of a pipeline: predict a scan folder with a checkpoint, then score it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medmtl import api
from medmtl.errors import MedmtlError


def predict_and_evaluate(
    *,
    checkpoint: Path,
    input_dir: Path,
    annotations: Path,
    out_dir: Path,
    scan_ids: Sequence[str] | None = None,
    device: str = "auto",
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """``api.predict_folder`` into ``out_dir/predictions`` then ``api.evaluate`` into ``out_dir/metrics``.

    Args:
        checkpoint: checkpoint folder.
        input_dir: scan folder.
        annotations: annotation table restricted to the predicted scans (see
            :func:`pipelines.splits.filter_annotations`), so unpredicted scans do not count as misses.
        out_dir: condition folder.
        scan_ids: predict only these scans of ``input_dir``.
        device: prediction device.
        n_bootstrap: scan-level bootstrap replicates of the evaluation.
        seed: bootstrap seed.

    Returns:
        The ``metrics.json`` dict; raises when prediction failed for any scan (a study must
        not average over silently missing scans).
    """
    pred_dir = out_dir / "predictions"
    summary = api.predict_folder(checkpoint=checkpoint, input_dir=input_dir, out_dir=pred_dir, device=device,
                                 progress=False, scan_ids=list(scan_ids) if scan_ids is not None else None)
    if summary.get("n_failed"):
        raise MedmtlError(f"prediction failed for {summary['n_failed']} scan(s) in {pred_dir}; see failures.json")
    return api.evaluate(predictions=pred_dir / "predictions.csv", annotations=annotations,
                        out_dir=out_dir / "metrics", n_bootstrap=n_bootstrap, seed=seed)


def classical_and_evaluate(
    *,
    input_dir: Path,
    annotations: Path,
    out_dir: Path,
    scan_ids: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The training-free classical detector (the floor) on ``input_dir``, then ``api.evaluate``.

    Same layout and arguments as :func:`predict_and_evaluate`, without a checkpoint:
    ``out_dir/predictions`` and ``out_dir/metrics``; a rerun skips the finished scans.

    Returns:
        The ``metrics.json`` dict; raises when detection failed for any scan.
    """
    pred_dir = out_dir / "predictions"
    summary = api.detect_classical(input_dir=input_dir, out_dir=pred_dir,
                                   scan_ids=list(scan_ids) if scan_ids is not None else None)
    if summary.get("n_failed"):
        raise MedmtlError(f"classical detection failed for {summary['n_failed']} scan(s) in {pred_dir}; see failures.json")
    return api.evaluate(predictions=pred_dir / "predictions.csv", annotations=annotations,
                        out_dir=out_dir / "metrics", n_bootstrap=n_bootstrap, seed=seed)


__all__ = ["classical_and_evaluate", "predict_and_evaluate"]
