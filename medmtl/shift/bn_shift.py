"""BatchNorm-statistics shift and prediction-level shift.

**BN shift.** A BatchNorm layer stores the running mean and variance of its input over the
training data. Feeding target volumes and measuring each channel's batch mean/variance
(forward hooks on the layer's *input*) shows where in the network the target departs from the
training distribution — the signal AdaBN corrects (Li et al., "Revisiting batch normalization
for practical domain adaptation", 2016/2018). Per channel the two statistics define 1D
Gaussians; we report the symmetric Kullback-Leibler divergence and the 2-Wasserstein distance
between them, averaged over the channels of each layer.

**Prediction shift.** With a trained checkpoint, the distribution of its outputs on source and
target scans (peak confidence, binary entropy of the top peaks, predicted diameter and
malignancy at the strongest peak) is compared with two-sample Kolmogorov-Smirnov tests
(prediction-based shift detection; Rabanser et al., NeurIPS 2019).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn
    from torch.nn.modules.batchnorm import _BatchNorm

EPS = 1e-5
TOP_K_PEAKS = 5


def bn_layers(model: nn.Module) -> list[tuple[str, _BatchNorm]]:
    """``(name, module)`` of every BatchNorm layer (1D/2D/3D, incl. SyncBatchNorm) that tracks
    running statistics, in module order."""
    from torch.nn.modules.batchnorm import _BatchNorm as BN

    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, BN) and m.track_running_stats and m.running_mean is not None
    ]


class _Accumulator:
    """Per-channel sums of x and x² over every (batch, spatial) position seen by a layer."""

    def __init__(self) -> None:
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.n = 0

    def __call__(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: Any) -> None:
        x = inputs[0].detach().double()
        c = x.shape[1]
        flat = x.transpose(0, 1).reshape(c, -1)
        s1, s2 = flat.sum(dim=1), (flat * flat).sum(dim=1)
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += flat.shape[1]

    def moments(self) -> tuple[np.ndarray, np.ndarray]:
        assert self.s1 is not None and self.s2 is not None  # noqa: S101 (internal invariant)
        mean = (self.s1 / self.n).cpu().numpy()
        var = (self.s2 / self.n).cpu().numpy() - mean**2
        return mean, np.maximum(var, 0.0)


def collect_bn_inputs(
    model: nn.Module, inputs: Iterable[torch.Tensor], *, forward: Callable[[torch.Tensor], Any] | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and (biased) variance of every BN layer's input over a set of inputs.

    The model runs in eval mode (each layer normalises with its running statistics, as at
    inference), under ``torch.no_grad``; the model's mode and buffers are left unchanged.

    Args:
        model: network with BatchNorm layers.
        inputs: tensors ``(B, C, I, J, K)`` (e.g. whole preprocessed volumes).
        forward: callable running the network (default ``model``).

    Returns:
        ``{layer_name: (mean (C,), var (C,))}`` for every layer that saw data.
    """
    import torch

    layers = bn_layers(model)
    accs = {name: _Accumulator() for name, _ in layers}
    handles = [m.register_forward_hook(accs[name]) for name, m in layers]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                (forward or model)(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {name: acc.moments() for name, acc in accs.items() if acc.n > 0}


def gaussian_sym_kl(m1: np.ndarray, v1: np.ndarray, m2: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """Symmetric KL divergence ``KL(p‖q) + KL(q‖p)`` between 1D Gaussians, element-wise.

    ``= ½[(v1 + d²)/v2 + (v2 + d²)/v1] − 1`` with ``d = m1 − m2`` (variances floored at 1e-5).
    """
    v1 = np.maximum(v1, EPS)
    v2 = np.maximum(v2, EPS)
    d2 = (m1 - m2) ** 2
    return 0.5 * ((v1 + d2) / v2 + (v2 + d2) / v1) - 1.0


def gaussian_w2(m1: np.ndarray, v1: np.ndarray, m2: np.ndarray, v2: np.ndarray) -> np.ndarray:
    """2-Wasserstein distance between 1D Gaussians: ``sqrt(d² + (σ1 − σ2)²)``, element-wise."""
    return np.sqrt((m1 - m2) ** 2 + (np.sqrt(np.maximum(v1, 0)) - np.sqrt(np.maximum(v2, 0))) ** 2)


def bn_shift(
    model: nn.Module,
    inputs: Iterable[torch.Tensor],
    *,
    reference: Mapping[str, tuple[np.ndarray, np.ndarray]] | None = None,
    forward: Callable[[torch.Tensor], Any] | None = None,
) -> list[dict[str, Any]]:
    """Per-layer shift of BN input statistics on ``inputs`` against a reference.

    Args:
        model: network with BatchNorm layers.
        inputs: ``(B, C, I, J, K)`` tensors of the cohort to check.
        reference: ``{layer: (mean, var)}`` to compare with (e.g. the source cohort's
            statistics from :func:`collect_bn_inputs`); default: each layer's running
            statistics.
        forward: callable running the network (default ``model``).

    Returns:
        One row per layer in module order: ``layer``, ``channels``, ``sym_kl`` and
        ``wasserstein`` (channel means), ``max_sym_kl``.
    """
    stats_t = collect_bn_inputs(model, inputs, forward=forward)
    running = {
        name: (_buffer(m, "running_mean"), _buffer(m, "running_var")) for name, m in bn_layers(model)
    }
    rows: list[dict[str, Any]] = []
    for name, _ in bn_layers(model):
        if name not in stats_t:
            continue
        ref = reference.get(name) if reference is not None else running.get(name)
        if ref is None:
            continue
        mt, vt = stats_t[name]
        mr, vr = ref
        kl = gaussian_sym_kl(mt, vt, np.asarray(mr), np.asarray(vr))
        w2 = gaussian_w2(mt, vt, np.asarray(mr), np.asarray(vr))
        rows.append({
            "layer": name,
            "channels": int(mt.shape[0]),
            "sym_kl": float(np.mean(kl)),
            "wasserstein": float(np.mean(w2)),
            "max_sym_kl": float(np.max(kl)),
        })
    return rows


def _buffer(module: nn.Module, name: str) -> np.ndarray:
    """A module buffer as a float64 numpy array."""
    import torch

    buf = getattr(module, name)
    assert isinstance(buf, torch.Tensor)  # noqa: S101 (BN layers always hold these buffers)
    return buf.detach().cpu().double().numpy()


def _binary_entropy(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    return -(p * np.log(p) + (1 - p) * np.log(1 - p))


def prediction_summary(outputs: Mapping[str, torch.Tensor], *, k: int = TOP_K_PEAKS) -> dict[str, float]:
    """Summary of one scan's model outputs for prediction-level shift.

    Args:
        outputs: ``MultiTaskNet`` outputs for one volume, each ``(1, 1, I, J, K)``:
            ``heatmap`` (logits), ``log_diameter`` (ln mm), ``malignancy`` (logits).
        k: number of local maxima (5×5×5 neighbourhood) taken as peaks.

    Returns:
        ``peak_confidence`` (max heatmap probability), ``peak_entropy`` (mean binary entropy
        of the top-k peak probabilities, nats), ``diameter_mm`` and ``malignancy_prob`` at the
        strongest peak, ``mean_heatmap`` (mean probability).
    """
    import torch
    import torch.nn.functional as F

    heat = torch.sigmoid(outputs["heatmap"].detach().float())[0, 0]
    pooled = F.max_pool3d(heat[None, None], kernel_size=5, stride=1, padding=2)[0, 0]
    peaks = (heat == pooled).flatten()
    vals = heat.flatten()[peaks]
    idx = torch.nonzero(peaks).flatten()
    order = torch.argsort(vals, descending=True)[:k]
    top_vals = vals[order].cpu().numpy()
    best = int(idx[order[0]]) if order.numel() else int(torch.argmax(heat))
    logd = outputs["log_diameter"].detach().float()[0, 0].flatten()[best]
    malig = torch.sigmoid(outputs["malignancy"].detach().float()[0, 0].flatten()[best])
    return {
        "peak_confidence": float(top_vals[0]) if top_vals.size else float(heat.max()),
        "peak_entropy": float(np.mean(_binary_entropy(top_vals))) if top_vals.size else 0.0,
        "diameter_mm": float(math.exp(min(float(logd), 10.0))),
        "malignancy_prob": float(malig),
        "mean_heatmap": float(heat.mean()),
    }


PREDICTION_FIELDS: tuple[str, ...] = ("peak_confidence", "peak_entropy", "diameter_mm", "malignancy_prob")


def prediction_shift(
    source: Sequence[Mapping[str, float]], target: Sequence[Mapping[str, float]]
) -> list[dict[str, Any]]:
    """Two-sample Kolmogorov-Smirnov test per prediction summary field.

    Args:
        source: per-scan :func:`prediction_summary` dicts of the source cohort.
        target: the same for the target cohort.

    Returns:
        One row per field: ``field``, ``source_median``, ``target_median``, ``ks``, ``p_value``.
    """
    rows: list[dict[str, Any]] = []
    for name in PREDICTION_FIELDS:
        a = [float(s[name]) for s in source if name in s]
        b = [float(t[name]) for t in target if name in t]
        if len(a) < 2 or len(b) < 2:
            continue
        res = stats.ks_2samp(a, b)
        rows.append({
            "field": name,
            "source_median": float(np.median(a)),
            "target_median": float(np.median(b)),
            "ks": float(res.statistic),
            "p_value": float(res.pvalue),
        })
    return rows
