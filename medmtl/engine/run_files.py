"""Files of a run folder: ``metrics.csv``, TensorBoard events, the resume config check."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from medmtl.config import TrainConfig
from medmtl.errors import ConfigError

logger = logging.getLogger(__name__)

#: Everything medmtl writes into a run folder (``--overwrite`` removes exactly these).
RUN_ARTIFACTS = (
    "config.yaml",
    "versions.json",
    "metrics.csv",
    "steps.csv",
    "gradient_conflict.csv",
    "gradient_conflict.json",
    "tb",
    "last",
    "checkpoint",
)

#: Columns of ``metrics.csv``.
METRIC_COLUMNS = (
    "epoch",
    "step",
    "lr",
    "time_s",
    "loss",
    "loss_det",
    "loss_size",
    "loss_malig",
    "weight_det",
    "weight_size",
    "weight_malig",
    "grad_norm",
    "grad_norm_max",
    "val_loss",
    "val_det",
    "val_size",
    "val_malig",
    "cpm",
    "diameter_mae_mm",
    "malignancy_auc",
    "n_detections",
    "best",
)

#: Columns of ``steps.csv`` (one row per optimisation step; the gradient norm is before clipping).
STEP_COLUMNS = ("step", "loss_total", "loss_det", "loss_size", "loss_malig", "grad_norm")

#: Config keys that may differ between a run and its ``--resume``: none alters a training step
#: (``decode.malignancy`` / ``decode.size`` only pick the readout written into the card).
RESUMABLE_CHANGES = ("train.epochs", "train.progress", "data.num_workers", "validation.patience", "decode.malignancy",
                     "decode.size")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and k not in ("params",):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_resume_config(cfg: TrainConfig, out: Path) -> None:
    """Refuse to resume a run with a different config (except :data:`RESUMABLE_CHANGES`).

    Raises:
        ConfigError: naming the first differing key, its stored and new value.
    """
    import yaml

    path = out / "config.yaml"
    if not path.is_file():
        return
    stored = _flatten(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    new = _flatten(cfg.to_dict())
    for key in sorted(set(stored) | set(new)):
        if key in RESUMABLE_CHANGES:
            continue
        if stored.get(key) != new.get(key):
            raise ConfigError(
                f"cannot resume '{out}': {key} was {stored.get(key)!r}, now {new.get(key)!r}; resume with the"
                f" run's own config ({path}) or start a new run (only {', '.join(RESUMABLE_CHANGES)} may change)"
            )


class RunLog:
    """Per-epoch ``metrics.csv`` (rewritten atomically) and TensorBoard scalars.

    Args:
        out: run folder.
        history: rows already logged (when resuming).
        tensorboard: write event files under ``out/tb``.
    """

    def __init__(self, out: Path, history: list[dict[str, Any]] | None = None, *, tensorboard: bool = True) -> None:
        self.out = out
        self.history: list[dict[str, Any]] = list(history or [])
        self._steps: list[dict[str, Any]] = _read_steps(out / "steps.csv") if self.history else []
        self._writer: Any = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                logger.warning("tensorboard is not installed; no event files are written")
            else:
                self._writer = SummaryWriter(log_dir=str(out / "tb"))

    def log_epoch(self, row: dict[str, Any]) -> None:
        """Append a row, rewrite ``metrics.csv`` and add the scalars to TensorBoard."""
        from medmtl.io.writers import atomic_write_csv

        clean = {k: row.get(k) for k in METRIC_COLUMNS}
        self.history.append(clean)
        atomic_write_csv(self.out / "metrics.csv", self.history, METRIC_COLUMNS)
        if self._writer is not None:
            step = int(row.get("step") or 0)
            for k, v in clean.items():
                if k in ("epoch", "step") or v is None or isinstance(v, bool):
                    continue
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self._writer.add_scalar(_tb_name(k), float(v), global_step=step)
            self._writer.flush()

    def log_steps(self, rows: list[dict[str, Any]]) -> None:
        """Append per-step rows (losses, gradient norm before clipping) and rewrite ``steps.csv``.

        The file is rewritten whole (atomically); on resume the rows already on disk are kept.
        """
        from medmtl.io.writers import atomic_write_csv

        self._steps.extend({k: r.get(k) for k in STEP_COLUMNS} for r in rows)
        atomic_write_csv(self.out / "steps.csv", self._steps, STEP_COLUMNS)

    def log_scalars(self, values: dict[str, float], step: int) -> None:
        """Extra TensorBoard scalars (e.g. gradient-conflict statistics)."""
        if self._writer is None:
            return
        for k, v in values.items():
            if v is not None and math.isfinite(float(v)):
                self._writer.add_scalar(k, float(v), global_step=step)

    def close(self) -> None:
        """Flush and close the event file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _read_steps(path: Path) -> list[dict[str, Any]]:
    """Rows of an existing ``steps.csv`` (resume), or none."""
    import csv

    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _tb_name(key: str) -> str:
    if key.startswith("loss"):
        return f"train/{key}"
    if key.startswith("weight_"):
        return f"weights/{key[7:]}"
    if key in ("lr", "time_s", "grad_norm"):
        return f"train/{key}"
    return f"val/{key}"


__all__ = ["METRIC_COLUMNS", "RESUMABLE_CHANGES", "RUN_ARTIFACTS", "RunLog", "check_resume_config"]
