"""Per-task losses of the multi-task network (all masked, all safe with no lesion at all).

* detection — the penalty-reduced pixel-wise focal loss of CornerNet (Law & Deng 2018) as
  used by CenterNet (Zhou, Wang & Krähenbühl 2019), ``α = 2``, ``β = 4``, normalised by the
  number of lesion peaks (``max(1, N)``, so a lesion-free patch is stable);
* size — smooth-L1 (Girshick 2015) on ``log(diameter_mm)``, averaged over ``size_mask``;
* malignancy — binary cross-entropy with logits, averaged over ``malig_mask`` (lesions with
  an empty malignancy label are masked out and contribute exactly zero gradient).

Masked losses divide by ``max(1, mask count)``: an empty mask gives an exact zero that keeps
the autograd graph (so DDP and gradient methods see every parameter) and never NaN.
Losses are computed in float32 even under autocast.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from medmtl.errors import ConfigError

__all__ = ["TASKS", "heatmap_focal_loss", "size_loss", "malignancy_loss", "task_losses"]

#: Task names (keys of :func:`task_losses`), in the order of ``α, β, γ``.
TASKS: tuple[str, ...] = ("det", "size", "malig")


def heatmap_focal_loss(
    logits: torch.Tensor, target: torch.Tensor, *, alpha: float = 2.0, beta: float = 4.0, eps: float = 1e-6
) -> torch.Tensor:
    """CenterNet focal loss on a gaussian heatmap (Law & Deng 2018, eq. 1; Zhou et al. 2019).

    ``L = -1/N Σ { (1-p)^α log p            if y = 1
                 { (1-y)^β p^α log(1-p)     otherwise``

    Args:
        logits: ``(B, 1, I, J, K)`` heatmap logits.
        target: ``(B, 1, I, J, K)`` gaussian heatmap in ``[0, 1]``, exactly 1 at lesion centres.
        alpha: focusing exponent α.
        beta: penalty-reduction exponent β around the peaks.
        eps: tolerance deciding ``y == 1``.

    Returns:
        Scalar loss (float32), normalised by ``max(1, number of peaks)`` over the batch.
    """
    x = _plain(logits).float()
    y = _plain(target).float()
    pos = (y >= 1.0 - eps).float()
    neg = 1.0 - pos
    log_p = F.logsigmoid(x)
    log_1mp = F.logsigmoid(-x)
    p = torch.sigmoid(x)
    pos_loss = -((1.0 - p) ** alpha) * log_p * pos
    neg_loss = -((1.0 - y) ** beta) * (p**alpha) * log_1mp * neg
    n_pos = pos.sum().clamp(min=1.0)
    return (pos_loss.sum() + neg_loss.sum()) / n_pos


def _plain(t: torch.Tensor) -> torch.Tensor:
    """Drop MONAI ``MetaTensor`` wrapping (cheaper maths, plain outputs)."""
    as_tensor = getattr(t, "as_tensor", None)
    return as_tensor() if callable(as_tensor) else t  # type: ignore[no-any-return]


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # sum / max(1, n): an empty mask gives an exact, graph-connected 0 (no NaN, no host sync)
    m = _plain(mask).float()
    return (values * m).sum() / m.sum().clamp(min=1.0)


def size_loss(pred_log_d: torch.Tensor, target_log_d: torch.Tensor, mask: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    """Smooth-L1 (Girshick 2015) on log-diameter, averaged over the masked voxels.

    Args:
        pred_log_d: ``(B, 1, I, J, K)`` predicted ``log(diameter_mm)``.
        target_log_d: ``(B, 1, I, J, K)`` target ``log(diameter_mm)``.
        mask: ``(B, 1, I, J, K)`` 0/1 ``size_mask``.
        beta: transition point of the smooth-L1 (in log-mm; 0.1 ≈ 10 % diameter error).

    Returns:
        Scalar float32 loss; a graph-connected 0 when the mask is empty.
    """
    vals = F.smooth_l1_loss(_plain(pred_log_d).float(), _plain(target_log_d).float(), reduction="none", beta=beta)
    return _masked_mean(vals, mask)


def malignancy_loss(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over ``malig_mask`` voxels.

    Args:
        logits: ``(B, 1, I, J, K)`` malignancy logits.
        target: ``(B, 1, I, J, K)`` labels in ``[0, 1]`` (soft labels allowed).
        mask: ``(B, 1, I, J, K)`` 0/1 ``malig_mask`` (0 where the label is unknown).

    Returns:
        Scalar float32 loss; a graph-connected 0 when the mask is empty. Masked voxels get
        exactly zero gradient.
    """
    vals = F.binary_cross_entropy_with_logits(_plain(logits).float(), _plain(target).float(), reduction="none")
    return _masked_mean(vals, mask)


_NEEDED_OUT = ("heatmap", "log_diameter", "malignancy")
_NEEDED_TGT = ("heatmap", "log_diameter", "size_mask", "malignancy", "malig_mask")


def task_losses(outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The three task losses of one batch.

    Args:
        outputs: the network's dict (``"heatmap"``, ``"log_diameter"``, ``"malignancy"``),
            each ``(B, 1, I, J, K)``.
        targets: batched :func:`medmtl.transforms.targets.build_targets` maps, each ``(B, 1, I, J, K)``.

    Returns:
        ``{"det": focal heatmap loss, "size": smooth-L1, "malig": BCE}`` (float32 scalars).

    Raises:
        ConfigError: a missing key or mismatched shapes.
    """
    for key in _NEEDED_OUT:
        if key not in outputs:
            raise ConfigError(f"model outputs lack {key!r}; have {sorted(outputs)}; expected {list(_NEEDED_OUT)}")
    for key in _NEEDED_TGT:
        if key not in targets:
            raise ConfigError(f"targets lack {key!r}; have {sorted(targets)}; build them with build_targets()")
    if outputs["heatmap"].shape != targets["heatmap"].shape:
        raise ConfigError(
            f"heatmap output shape {tuple(outputs['heatmap'].shape)} differs from target shape "
            f"{tuple(targets['heatmap'].shape)}; crop targets with the image"
        )
    return {
        "det": heatmap_focal_loss(outputs["heatmap"], targets["heatmap"]),
        "size": size_loss(outputs["log_diameter"], targets["log_diameter"], targets["size_mask"]),
        "malig": malignancy_loss(outputs["malignancy"], targets["malignancy"], targets["malig_mask"]),
    }
