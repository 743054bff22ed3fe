"""The multi-task trainer: ``run_training(cfg, out_dir)`` → a checkpoint folder.

Run folder layout (``out_dir``)::

    config.yaml              resolved config (absolute data paths)
    versions.json            library versions, device, world size
    metrics.csv              one row per epoch: losses per task, weights, LR, time, val metrics
    gradient_conflict.csv/.json  per-epoch task-gradient cosines, conflict shares, norms
    tb/                      TensorBoard event files
    last/                    model + card + train_state.* (resume point, written every epoch)
    checkpoint/              best model + card (calibrated temperature, reference statistics)

Each epoch is a deterministic function of ``(weights, optimizer state, seed, epoch)``: the
Python / NumPy / torch RNGs, the data order and the random transforms are reseeded from
``(seed, epoch)`` when it starts. ``--resume`` therefore reloads ``last/`` and reaches the
same weights as an uninterrupted run (on CPU, where kernels are deterministic).

Under ``torchrun`` every rank trains on its share of the scans, gradients are averaged, and
only rank 0 validates and writes files (see :mod:`medmtl.engine.ddp`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from medmtl.config import TrainConfig
from medmtl.engine import ddp
from medmtl.engine.checkpoint import library_versions
from medmtl.engine.run_files import RUN_ARTIFACTS, RunLog, check_resume_config
from medmtl.errors import CheckpointError, ConfigError, MedmtlError
from medmtl.io.outputs import check_outputs

logger = logging.getLogger(__name__)



def _is_medmtl_run(out_dir: Path) -> bool:
    """Whether ``out_dir`` is a run folder medmtl wrote: its ``versions.json`` (the first file a
    run writes) is medmtl's. It is the run folder's record (see :mod:`medmtl.io.outputs`): without
    it, files named like run files (a ``config.yaml`` kept beside the data) are the user's."""
    import json

    try:
        doc = json.loads((out_dir / "versions.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and isinstance(doc.get("medmtl"), str) and "started" in doc


def _never_started(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds only the header files of a run killed before its first epoch
    ended (no ``last/``, no ``checkpoint/``, nothing but medmtl's run files, its versions.json)."""
    if not out_dir.is_dir() or (out_dir / "last").exists() or (out_dir / "checkpoint").exists():
        return False
    entries = list(out_dir.iterdir())
    return bool(entries) and all(p.name in RUN_ARTIFACTS for p in entries) and _is_medmtl_run(out_dir)


def _clear_run_files(out_dir: Path) -> None:
    for name in RUN_ARTIFACTS:
        p = out_dir / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def prepare_run_dir(out_dir: Path, *, resume: bool, overwrite: bool, is_main: bool) -> bool:
    """Create the run folder, refusing to mix runs (only rank 0 checks and writes).

    With ``overwrite`` the files medmtl writes into a run folder (:data:`RUN_ARTIFACTS`) are
    removed; anything else in the folder is left alone. A run killed before its first epoch
    ended (only its header files, no ``last/``) is started afresh, with or without ``resume``.

    Returns:
        Whether the run resumes (``False`` for a run that never finished an epoch).

    Raises:
        ConfigError: the folder is not empty and neither ``resume`` nor ``overwrite`` is set,
            or both are set.
    """
    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one of them")
    if not is_main:  # rank 0 checks and prepares the folder; the others wait at a barrier
        return resume
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"run folder '{out_dir}' is a file; pass a folder path to --out")
    if _never_started(out_dir):
        logger.warning("run folder '%s' holds a run that never finished an epoch; starting it afresh", out_dir)
        _clear_run_files(out_dir)
        return False
    non_empty = out_dir.is_dir() and any(out_dir.iterdir())
    if resume:
        if not (out_dir / "last").is_dir():
            raise CheckpointError(
                f"cannot resume: '{out_dir / 'last'}' does not exist; start the run without --resume"
            )
        return True
    if non_empty and not overwrite:
        theirs = [] if _is_medmtl_run(out_dir) else [n for n in RUN_ARTIFACTS if (out_dir / n).exists()]
        hint = (f"it holds '{theirs[0]}' but no medmtl run (no versions.json), and medmtl never replaces files it "
                "did not write; choose another --out" if theirs else
                "pass --resume to continue it, --overwrite to replace it, or choose another --out")
        raise ConfigError(f"run folder '{out_dir}' is not empty; {hint}")
    if non_empty:  # --overwrite replaces the run files of a medmtl run, never the user's files
        check_outputs(out_dir, RUN_ARTIFACTS, option="--out", recorded=RUN_ARTIFACTS if _is_medmtl_run(out_dir) else ())
        _clear_run_files(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return False


def run_training(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    stop_after_epochs: int | None = None,
) -> Path:
    """Train the multi-task model; returns ``out_dir/checkpoint``.

    Args:
        cfg: a validated config (see :func:`medmtl.config.load_config`).
        out_dir: run folder (see the module docstring for its layout).
        resume: continue from ``out_dir/last`` (same config; ``train.epochs`` may grow).
        overwrite: replace the medmtl files of an existing run folder.
        stop_after_epochs: stop after this many epochs in this call (the run stays
            resumable), e.g. to split a long run over time-limited jobs.

    Returns:
        The checkpoint folder (best epoch by ``validation.monitor``; the last epoch when
        there is no validation set).

    Raises:
        ConfigError: bad config values found while loading data (patch larger than the
            scans...), a non-empty run folder without ``--resume``/``--overwrite``.
        CheckpointError: ``--resume`` without a usable ``last/``.
    """
    from medmtl.engine.inference import resolve_amp, resolve_device

    out = Path(out_dir).resolve()
    device = resolve_device(cfg.train.device)
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    info = ddp.init_distributed(device.type)
    if info.enabled and device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    amp = resolve_amp(cfg.train.amp, device)
    if amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp = fp16 needs a CUDA device; use bf16 or off on CPU")
    previous_det = torch.are_deterministic_algorithms_enabled()
    previous_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    created = not out.exists()
    try:
        resume = bool(ddp.broadcast_object(prepare_run_dir(out, resume=resume, overwrite=overwrite,
                                                           is_main=info.is_main), info))
        ddp.barrier(info)
        if resume:
            check_resume_config(cfg, out)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        from medmtl.engine.session import TrainingSession

        try:
            session = TrainingSession(cfg, out, device=device, amp=amp, dist=info)
        except MedmtlError:
            if created and info.is_main and out.is_dir() and not any(out.iterdir()):
                out.rmdir()  # a refusal leaves no empty run folder behind
            raise
        return session.run(resume=resume, stop_after_epochs=stop_after_epochs)
    finally:
        torch.use_deterministic_algorithms(previous_det, warn_only=previous_warn)
        ddp.shutdown(info)


def write_run_header(cfg: TrainConfig, out: Path, *, device: torch.device, amp: str, world_size: int) -> None:
    """Write ``config.yaml`` and ``versions.json`` (rank 0)."""
    from medmtl.config import save_resolved_config
    from medmtl.io.writers import atomic_write_json

    versions: dict[str, Any] = dict(library_versions())
    versions.update(
        {
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "amp": amp,
            "world_size": world_size,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
    )
    atomic_write_json(out / "versions.json", versions)  # first: it marks the folder as a medmtl run
    save_resolved_config(cfg, out / "config.yaml")


__all__ = ["RunLog", "prepare_run_dir", "run_training"]
