"""Transferability before training: LogME on frozen encoder features at lesion centres.

LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021) is the log marginal evidence, per sample, of a Bayesian linear model
``y = fᵀw + ε`` with ``w ~ N(0, α⁻¹I)`` and ``ε ~ N(0, β⁻¹)`` fitted by evidence
maximisation (MacKay's fixed-point updates) on frozen features ``f``. Higher is better; it
ranks pretrained models by how well their features predict the labels without training.
For classification each one-hot column is a target and the evidences are averaged.

Here ``f`` is the pooled encoder feature vector of a patch centred on each annotated lesion;
the targets are the log-diameter (size regression) and the malignancy label (classification).
:func:`rank_encoders` ranks every registered encoder × adapter whose weights are available.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from medmtl.errors import ShiftError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from medmtl.io.types import Lesion, Scan
    from medmtl.transforms.presets import InputSpec

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
PATCH_VOXELS = 32


def _evidence(y: FloatArray, f: FloatArray, s: FloatArray, v: FloatArray, n_iter: int = 20) -> float:
    """Per-sample log evidence of one target column (You et al. 2021, Algorithm 1)."""
    n, d = f.shape
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    proj = v.T @ (f.T @ y)
    alpha_de = beta_de = 1.0
    for _ in range(n_iter):
        gamma = float((beta * s / (alpha + beta * s)).sum())
        m = v @ (proj * beta / (alpha + beta * s))
        alpha_de = float((m * m).sum())
        alpha = gamma / max(alpha_de, 1e-12)
        beta_de = float(((y - f @ m) ** 2).sum())
        beta = (n - gamma) / max(beta_de, 1e-12)
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < 1e-3:
            break
        lam = new_lam
    evidence = (
        d / 2.0 * math.log(alpha)
        + n / 2.0 * math.log(beta)
        - 0.5 * float(np.sum(np.log(alpha + beta * s)))
        - beta / 2.0 * beta_de
        - alpha / 2.0 * alpha_de
        - n / 2.0 * math.log(2.0 * math.pi)
    )
    return evidence / n


def logme(features: FloatArray, targets: FloatArray, *, regression: bool) -> float:
    """LogME score of features for targets (higher = more transferable).

    Args:
        features: ``(N, D)`` frozen features (one row per lesion).
        targets: ``(N,)`` or ``(N, T)`` real targets (regression), or ``(N,)`` integer class
            labels (classification).
        regression: treat ``targets`` as real values; else as class labels (one-hot).

    Returns:
        The mean per-sample log evidence over target columns.

    Raises:
        ShiftError: fewer than 2 samples, or a single class for classification.
    """
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ShiftError(f"LogME needs at least 2 labelled lesions, got {f.shape[0] if f.ndim else 0}")
    if regression:
        y = np.asarray(targets, dtype=np.float64).reshape(len(f), -1)
        y = (y - y.mean(axis=0)) / np.maximum(y.std(axis=0), 1e-8)
    else:
        labels = np.asarray(targets).astype(int).ravel()
        classes = np.unique(labels)
        if classes.size < 2:
            raise ShiftError("LogME classification needs both classes among the labelled lesions; add lesions")
        y = (labels[:, None] == classes[None, :]).astype(np.float64)
    s, v = np.linalg.eigh(f.T @ f)
    s = np.maximum(s, 0.0)
    return float(np.mean([_evidence(y[:, t], f, s, v) for t in range(y.shape[1])]))


def lesion_features(
    encoder: nn.Module,
    scans: Sequence[Scan],
    lesions: Mapping[str, Sequence[Lesion]],
    spec: InputSpec,
    *,
    patch_voxels: int = PATCH_VOXELS,
) -> tuple[FloatArray, list[Lesion]]:
    """Pooled encoder features of a patch centred on every annotated lesion.

    Args:
        encoder: encoder returning a list of ``(1, C_l, ...)`` levels.
        scans: the scans.
        lesions: lesions per scan id (LPS mm centres).
        spec: preprocessing spec (the lesion centre is mapped into its grid).
        patch_voxels: cube side of the patch, voxels of the preprocessed grid.

    Returns:
        ``(features (N, F), lesions in the same order)``.
    """
    import torch
    import torch.nn.functional as F

    from medmtl.io.coords import lps_to_voxel
    from medmtl.shift.features import pool_levels
    from medmtl.transforms.presets import preprocess_scan

    rows: list[np.ndarray] = []
    kept: list[Lesion] = []
    half = patch_voxels // 2
    encoder.eval()
    for scan in scans:
        todo = lesions.get(scan.scan_id, [])
        if not todo:
            continue
        img = preprocess_scan(scan, spec)
        x = torch.as_tensor(np.asarray(img.detach().cpu()), dtype=torch.float32)[None]
        x = F.pad(x, [half] * 6, mode="replicate")
        patches: list[torch.Tensor] = []
        for les in todo:
            ijk = np.round(lps_to_voxel(les.center_lps, np.asarray(img.affine))[0]).astype(int) + half
            sl = tuple(slice(int(c) - half, int(c) - half + patch_voxels) for c in ijk)
            patch = x[(slice(None), slice(None)) + sl]
            if tuple(patch.shape[2:]) != (patch_voxels,) * 3:
                continue
            patches.append(patch)
            kept.append(les)
        if patches:  # one batched pass per scan (eval mode: identical to one pass per patch)
            with torch.inference_mode():
                rows.extend(pool_levels(encoder(torch.cat(patches))))
    if not rows:
        return np.zeros((0, 0)), []
    return np.stack(rows).astype(np.float64), kept


def score_features(features: FloatArray, lesions: Sequence[Lesion]) -> dict[str, Any]:
    """LogME of features for size (log-diameter, regression) and malignancy (classification)."""
    out: dict[str, Any] = {"n_lesions": len(lesions)}
    diam = np.log(np.array([les.diameter_mm for les in lesions], dtype=np.float64))
    out["logme_size"] = logme(features, diam, regression=True) if len(lesions) >= 2 else None
    lab = [(i, les.malignancy) for i, les in enumerate(lesions) if les.malignancy is not None]
    ys = np.array([round(float(m)) for _, m in lab], dtype=int)
    if len(lab) >= 2 and np.unique(ys).size == 2:
        out["logme_malignancy"] = logme(features[[i for i, _ in lab]], ys, regression=False)
    else:
        out["logme_malignancy"] = None
    out["n_malignancy_labels"] = len(lab)
    return out


def rank_encoders(
    scans: Sequence[Scan],
    lesions: Sequence[Lesion],
    spec: InputSpec,
    *,
    candidates: Sequence[tuple[str, str]] | None = None,
    max_lesions: int = 200,
) -> list[dict[str, Any]]:
    """Rank encoders × adapters by LogME on a labelled subset (higher first).

    Args:
        scans: labelled scans.
        lesions: their annotations (LPS mm, diameter, optional malignancy).
        spec: preprocessing spec.
        candidates: ``(encoder, adapter)`` pairs; default every registered encoder whose
            ImageNet weights are found locally × its 3D adapters (``inflate``, ``acs``,
            ``2.5d``).
        max_lesions: at most this many lesions (the first ones by scan id).

    Returns:
        Rows ``{encoder, adapter, logme_size, logme_malignancy, logme_mean, n_lesions}``
        sorted by ``logme_mean`` descending; a pair that fails to build is listed with
        ``error``.
    """
    from medmtl.errors import MedmtlError
    from medmtl.io.annotations import group_by_scan
    from medmtl.models.registry import create_encoder, describe_encoders

    if candidates is None:
        candidates = [
            (row["name"], a)
            for row in describe_encoders()
            if row["found"]
            for a in ("inflate", "acs", "2.5d")
            if a in row["adapters"]
        ]
    grouped = group_by_scan(sorted(lesions, key=lambda les: les.seriesuid)[:max_lesions])
    rows: list[dict[str, Any]] = []
    for name, adapter in candidates:
        try:
            enc = create_encoder(name, adapter=adapter, pretrained=True, in_channels=spec.channels)
        except MedmtlError as exc:
            rows.append({"encoder": name, "adapter": adapter, "error": str(exc)})
            continue
        feats, kept = lesion_features(enc, scans, grouped, spec)
        if len(kept) < 2:
            raise ShiftError(
                f"--rank-encoders needs at least 2 annotated lesions inside the scans, found {len(kept)}; "
                "add an annotations.csv with lesions to the source folder."
            )
        row = {"encoder": name, "adapter": adapter, **score_features(feats, kept)}
        vals = [v for v in (row["logme_size"], row["logme_malignancy"]) if v is not None]
        row["logme_mean"] = float(np.mean(vals)) if vals else None
        rows.append(row)
        logger.info("LogME %s/%s: %s", name, adapter, row)
    def order(r: dict[str, Any]) -> float:
        v = r.get("logme_mean")
        return -float(v) if v is not None else math.inf

    rows.sort(key=order)
    return rows
