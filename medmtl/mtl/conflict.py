"""Gradient-conflict statistics between tasks on the shared parameters.

Per step: for every task pair, the cosine similarity of their gradients on the shared
parameters and whether they conflict (``cos < 0``, the criterion of PCGrad, Yu et al. 2020);
per task, the gradient norm (the imbalance GradNorm corrects, Chen et al. 2018); and the
task weights used. Per epoch: means and the share of conflicting steps, saved as
``gradient_conflict.csv`` and ``gradient_conflict.json`` in the run folder.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medmtl.io.writers import atomic_write_text

__all__ = ["GradientConflictTracker", "flat_grads", "per_task_shared_grads", "trainable"]


def trainable(params: Sequence[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters of ``params`` that require a gradient (frozen ones are skipped)."""
    return [p for p in params if p.requires_grad]


def flat_grads(grads: Sequence[torch.Tensor | None], params: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-parameter gradients into one float32 vector (``None`` → zeros)."""
    parts = [
        (g if g is not None else torch.zeros_like(p)).reshape(-1).float() for g, p in zip(grads, params)
    ]
    if not parts:
        return torch.zeros(0)
    return torch.cat(parts)


def per_task_shared_grads(
    losses: Mapping[str, torch.Tensor], shared_params: Sequence[nn.Parameter], *, retain_graph: bool = True
) -> dict[str, torch.Tensor]:
    """Each task's gradient on the shared parameters, flattened.

    One ``torch.autograd.grad`` per task (keeping the graph so the trainer or a gradient
    method can still backpropagate). Compute it once per step and pass it to both
    :meth:`GradientConflictTracker.update` and a gradient weighting's ``combine``.

    Args:
        losses: task name → scalar loss (possibly AMP-scaled).
        shared_params: the shared parameters (frozen ones are skipped).
        retain_graph: keep the autograd graph after the last task.

    Returns:
        task → ``(n_shared,)`` float32 gradient (zeros for a task that does not reach the
        shared parameters).
    """
    params = trainable(shared_params)
    out: dict[str, torch.Tensor] = {}
    names = list(losses)
    for i, name in enumerate(names):
        loss = losses[name]
        if not params or not loss.requires_grad:
            out[name] = torch.zeros(sum(p.numel() for p in params), device=loss.device)
            continue
        keep = retain_graph or i < len(names) - 1
        grads = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
        out[name] = flat_grads(grads, params)
    return out


class GradientConflictTracker:
    """Accumulate per-step gradient statistics and summarise them per epoch.

    Args:
        tasks: task names, e.g. ``("det", "size", "malig")``.

    Example:
        >>> tracker = GradientConflictTracker(["det", "size"])
        >>> tracker.update({"det": torch.tensor([1.0, 0.0]), "size": torch.tensor([-1.0, 1.0])})
        >>> tracker.epoch_summary()["pairs"]["det|size"]["conflict_share"]
        1.0
    """

    def __init__(self, tasks: Sequence[str]) -> None:
        self.tasks = list(tasks)
        self.pairs = [f"{a}|{b}" for a, b in itertools.combinations(self.tasks, 2)]
        self.rows: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self._cos: dict[str, list[float]] = {p: [] for p in self.pairs}
        self._norm: dict[str, list[float]] = {t: [] for t in self.tasks}
        self._weights: dict[str, list[float]] = {t: [] for t in self.tasks}

    def update(self, grads: Mapping[str, torch.Tensor], weights: Mapping[str, float] | None = None) -> dict[str, float]:
        """Record one step.

        Args:
            grads: task → flat gradient on the shared parameters (same length for all).
            weights: task → weight used this step (optional).

        Returns:
            This step's ``{"cos/<a>|<b>": ..., "norm/<task>": ...}`` (floats, for logging).
        """
        step: dict[str, float] = {}
        with torch.no_grad():
            vec = {t: grads[t].detach().reshape(-1).double() for t in self.tasks if t in grads}
            norms = {t: float(v.norm()) for t, v in vec.items()}
            for t, n in norms.items():
                self._norm[t].append(n)
                step[f"norm/{t}"] = n
            for a, b in itertools.combinations(self.tasks, 2):
                if a not in vec or b not in vec:
                    continue
                denom = norms[a] * norms[b]
                if denom == 0.0 or not math.isfinite(denom):
                    continue  # an undefined angle is not a conflict
                cos = float(torch.dot(vec[a], vec[b])) / denom
                self._cos[f"{a}|{b}"].append(cos)
                step[f"cos/{a}|{b}"] = cos
        for t, w in (weights or {}).items():
            if t in self._weights:
                self._weights[t].append(float(w))
        return step

    def epoch_summary(self) -> dict[str, Any]:
        """Means over the steps recorded since the last summary.

        Returns:
            ``{"steps": n, "pairs": {"a|b": {"mean_cos", "conflict_share", "steps"}},
            "tasks": {t: {"mean_grad_norm", "mean_weight"}}}`` (NaN-free: ``None`` when no
            data).
        """

        def mean(v: list[float]) -> float | None:
            return sum(v) / len(v) if v else None

        pairs = {
            p: {
                "mean_cos": mean(v),
                "conflict_share": (sum(c < 0 for c in v) / len(v)) if v else None,
                "steps": len(v),
            }
            for p, v in self._cos.items()
        }
        tasks = {t: {"mean_grad_norm": mean(self._norm[t]), "mean_weight": mean(self._weights[t])} for t in self.tasks}
        steps = max([len(v) for v in self._norm.values()] + [0])
        return {"steps": steps, "pairs": pairs, "tasks": tasks}

    def end_epoch(self, epoch: int) -> dict[str, Any]:
        """Summarise the epoch, keep it as a row for :meth:`write`, and reset the counters."""
        summary = self.epoch_summary()
        row: dict[str, Any] = {"epoch": int(epoch), "steps": summary["steps"]}
        for p, s in summary["pairs"].items():
            row[f"cos_mean/{p}"] = s["mean_cos"]
            row[f"conflict_share/{p}"] = s["conflict_share"]
        for t, s in summary["tasks"].items():
            row[f"grad_norm/{t}"] = s["mean_grad_norm"]
            row[f"weight/{t}"] = s["mean_weight"]
        self.rows.append(row)
        self._reset()
        return summary

    def write(self, run_dir: str | Path) -> tuple[Path, Path]:
        """Write all epoch rows to ``gradient_conflict.csv`` and ``.json`` (atomically).

        If the current epoch has unsummarised steps they are summarised first.

        Returns:
            The CSV and JSON paths.
        """
        if any(self._norm.values()):
            self.end_epoch(len(self.rows))
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        cols = ["epoch", "steps"]
        cols += [f"cos_mean/{p}" for p in self.pairs] + [f"conflict_share/{p}" for p in self.pairs]
        cols += [f"grad_norm/{t}" for t in self.tasks] + [f"weight/{t}" for t in self.tasks]
        lines = [",".join(cols)]
        for r in self.rows:
            lines.append(",".join("" if r.get(c) is None else f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols))
        csv_path, json_path = run / "gradient_conflict.csv", run / "gradient_conflict.json"
        payload = {"tasks": self.tasks, "pairs": self.pairs, "epochs": self.rows}
        atomic_write_text(csv_path, "\n".join(lines) + "\n")
        atomic_write_text(json_path, json.dumps(payload, indent=2))
        return csv_path, json_path

    def state(self) -> dict[str, Any]:
        """JSON-safe state for resuming (epoch rows written so far)."""
        return {"rows": [dict(r) for r in self.rows]}

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state`."""
        self.rows = [dict(r) for r in state.get("rows", [])]
        self._reset()
