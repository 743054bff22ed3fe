"""One training run, epoch by epoch (used by :func:`medmtl.engine.trainer.run_training`).

Set-up (data, model, weighting, strategy, optimizer), the epoch loop (train, validate, early
stopping, ``last/`` and best ``checkpoint/``), and the finish (temperature and size calibration on the
validation lesions, final model card with the lesion readout fitted at set-up; :func:`medmtl.api.train` then adds the reference statistics).
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmtl.config import TrainConfig
from medmtl.engine import ddp
from medmtl.engine.card import ModelCard
from medmtl.engine.checkpoint import WEIGHTS_FILE, save_checkpoint
from medmtl.engine.decode import DecodeSettings
from medmtl.engine.inference import autocast_dtype
from medmtl.engine.lesion_readout import LesionReadout
from medmtl.engine.run_files import RunLog
from medmtl.engine.train_loop import EpochStats, StepContext, patch_batches, train_epoch
from medmtl.errors import CheckpointError, ConfigError
from medmtl.mtl.losses import TASKS

logger = logging.getLogger(__name__)


def _reseed(seed: int, epoch: int) -> int:
    s = (int(seed) * 1_000_003 + int(epoch) * 7_919 + 17) % (2**31)
    random.seed(s)
    np.random.seed(s)
    torch.manual_seed(s)
    return s


class TrainingSession:
    """State of one run.

    Args:
        cfg: validated config.
        out: run folder (exists).
        device: training device.
        amp: resolved AMP mode (``bf16``, ``fp16`` or ``off``).
        dist: DDP info.
    """

    def __init__(self, cfg: TrainConfig, out: Path, *, device: torch.device, amp: str, dist: ddp.DistInfo) -> None:
        self.cfg = cfg
        self.out = out
        self.device = device
        self.amp = amp
        self.dist = dist
        self.progress = bool(cfg.train.progress) and dist.is_main
        #: (epoch, result) of the latest validation in this process, reused when it is the best
        self._last_val: tuple[int, Any] | None = None
        self._trained_epoch: int | None = None
        torch.manual_seed(cfg.seed)
        self._build_data()
        torch.manual_seed(cfg.seed)
        self._build_model()
        self._setup_strategy()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == "fp16" and self.device.type == "cuda")
        self.steps_per_epoch = self._steps_per_epoch()
        self.total_steps = self.steps_per_epoch * cfg.train.epochs
        self._t_started = time.perf_counter()  # for the time left after each epoch

    # ------------------------------------------------------------------ set-up
    def _build_data(self) -> None:
        """Scans, split, the cached training dataset and the preprocessed validation volumes."""
        from medmtl.data.dataset import build_train_dataset, load_training_data, preprocess_volumes

        self.data = load_training_data(self.cfg, progress=self.progress)
        self.readout = self._lesion_readout()
        self.train_ds = build_train_dataset(self.cfg, self.data, progress=self.progress)
        self.val_volumes = preprocess_volumes(self.data.val_items, self.data.spec) if self.dist.is_main else []

    def _lesion_readout(self) -> LesionReadout | None:
        """The per-lesion readout of ``decode.size`` / ``decode.malignancy``, fitted now (it needs no network)."""
        from medmtl.engine.lesion_readout import readout_for_training

        d = self.cfg.decode
        return readout_for_training(self.data.train_items, modality=self.data.spec.modality, size=d.size,
                                    malignancy=d.malignancy, seed=self.cfg.seed)

    def _build_model(self) -> None:
        """The network (checked against the patch size), decode settings, weighting and conflict tracker."""
        from medmtl.models.mtl_net import build_model, required_divisor
        from medmtl.models.spec import ModelSpec, check_patch_divisible
        from medmtl.mtl.conflict import GradientConflictTracker
        from medmtl.mtl.weighting import create_weighting

        cfg = self.cfg
        self.model = build_model(ModelSpec.from_config(cfg.model, self.data.spec.channels),
                                 pretrained=cfg.model.pretrained)
        div = required_divisor(self.model)
        check_patch_divisible(cfg.train.patch_size, div, "train.patch_size")
        self.decode = DecodeSettings(threshold=cfg.decode.threshold, nms_radius_mm=cfg.decode.nms_radius_mm,
                                     max_lesions=cfg.decode.max_lesions)
        deepest = math.prod(p // d for p, d in zip(cfg.train.patch_size, div))
        if cfg.train.batch_size * deepest < 2:
            raise ConfigError(
                f"train.batch_size {cfg.train.batch_size} with train.patch_size {cfg.train.patch_size} leaves one value"
                " per channel at the encoder's deepest level, which BatchNorm cannot train on; use"
                " train.batch_size >= 2 or a larger patch"
            )
        self.model.to(self.device)
        self.weighting = create_weighting(cfg.weighting.name, tasks=TASKS, **cfg.weighting.params).to(self.device)
        self.tracker = GradientConflictTracker(TASKS) if cfg.train.conflict_every > 0 else None

    def _steps_per_epoch(self) -> int:
        """``train.steps_per_epoch``, or one pass over the patches (per rank) when it is null."""
        t = self.cfg.train
        if t.sampling == "lesions":  # one patch per lesion (a lesion-free scan: one)
            patches = sum(max(1, len(it["lesions"])) for it in self.data.train_items)
        else:
            patches = len(self.train_ds) * t.samples_per_scan
        auto_steps = math.ceil(math.ceil(patches / self.dist.world_size) / t.batch_size)
        return t.steps_per_epoch or max(1, auto_steps)

    def _setup_strategy(self) -> None:
        """Freeze/unfreeze per the transfer strategy; param groups, schedule and L2-SP."""
        from medmtl.mtl.strategies import setup_transfer

        params = dict(self.cfg.strategy.params)
        params.setdefault("pretrained_lr_mult", 0.1 if self.cfg.model.pretrained else 1.0)
        self.plan = setup_transfer(
            self.model, strategy=self.cfg.strategy.name, base_lr=self.cfg.train.learning_rate, **params
        )
        self.regularizer = self.plan.l2sp

    def _build_optimizer(self) -> None:
        """Optimizer over every parameter that may ever train + the per-step LR schedule.

        Parameters frozen in an epoch (linear probe phase of ``lp-ft``, ``gradual``) stay in
        the optimizer without gradients, which AdamW/SGD skip, so no rebuild is needed.
        """
        from medmtl.engine.optim import LRSchedule, make_optimizer

        t = self.cfg.train
        groups = [dict(g) for g in self.plan.param_groups]
        groups.extend(self.weighting.optimizer_groups(t.learning_rate))  # learnable weightings, stepped here too
        self.optimizer = make_optimizer(groups, name=t.optimizer, lr=t.learning_rate, weight_decay=t.weight_decay)
        self.lr_schedule = LRSchedule(
            self.optimizer, total_steps=self.total_steps, warmup_steps=t.warmup_steps, kind=t.scheduler, step=0
        )

    def _context(self) -> StepContext:
        return StepContext(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.lr_schedule,
            scaler=self.scaler,
            weighting=self.weighting,
            shared_params=[p for p in self.model.shared_parameters() if p.requires_grad],
            params=[p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad],
            device=self.device,
            amp_dtype=autocast_dtype(self.amp),
            grad_clip=self.cfg.train.grad_clip,
            dist=self.dist,
            regularizer=self.regularizer,
            conflict=self.tracker,
            conflict_every=self.cfg.train.conflict_every,
            train_mode=self.plan.schedule.train,
            freeze_bn=self._freeze_bn(),
        )

    def _freeze_bn(self) -> bool:
        """``train.freeze_bn`` for a pretrained encoder only: a randomly initialised encoder's
        BatchNorm holds no statistics to keep (mean 0, variance 1), so freezing it would switch
        normalisation off (measured: gradient norms of 10^5–10^6 from scratch, ≤ 250 pretrained)."""
        if self.cfg.train.freeze_bn and not self.cfg.model.pretrained:
            if not getattr(self, "_freeze_bn_noted", False):  # once per session, not every epoch
                logger.info("train.freeze_bn ignored: the encoder is not pretrained, its BatchNorm trains")
                self._freeze_bn_noted = True
            return False
        return bool(self.cfg.train.freeze_bn)

    # ------------------------------------------------------------------ data
    def _passes(self, epoch: int) -> Any:
        from torch.utils.data import DataLoader, DistributedSampler

        from medmtl.data.dataset import first_item

        nw = self.cfg.data.num_workers

        def make(n_pass: int) -> Iterator[list[dict[str, torch.Tensor]]]:
            sub = epoch * 1000 + n_pass
            self.train_ds.set_epoch(sub)
            sampler: DistributedSampler[Any] = DistributedSampler(
                self.train_ds,
                num_replicas=self.dist.world_size,
                rank=self.dist.rank,
                shuffle=True,
                seed=self.cfg.seed,
                drop_last=False,
            )
            sampler.set_epoch(sub)
            gen = torch.Generator().manual_seed(self.cfg.seed * 7 + sub)
            kwargs: dict[str, Any] = {}
            if nw > 0:
                from monai.data.utils import worker_init_fn

                kwargs = {"worker_init_fn": worker_init_fn, "persistent_workers": False}
            loader = DataLoader(
                self.train_ds, batch_size=1, sampler=sampler, num_workers=nw, collate_fn=first_item,
                generator=gen, **kwargs,
            )
            return iter(loader)

        return make

    # ------------------------------------------------------------------ checkpoints
    def _card(self, *, epoch: int, metrics: dict[str, Any], calibration: dict[str, float] | None = None) -> ModelCard:
        """The card of the weights in memory (reference statistics are added by ``medmtl.api.train``).

        ``calibration`` holds the fitted decode values (``temperature``, ``size_log_offset``,
        ``size_log_slope``); without it the decode settings are uncalibrated (identity).
        """
        from medmtl.engine.card import TrainingInfo, card_for

        c = self.cfg
        training = TrainingInfo(epoch=epoch + 1, epochs=c.train.epochs, metrics=metrics,
                                train_ids=tuple(self.data.train_ids), val_ids=tuple(self.data.val_ids),
                                monitor=c.validation.monitor)
        return card_for(self.model, input_spec=self.data.spec, patch_size=c.train.patch_size,
                        decode=self.decode.replace(**(calibration or {})), train_config=c,
                        training=training, lesion_readout=self.readout)

    def _save_last(self, epoch: int, step: int, meta: dict[str, Any]) -> None:
        from medmtl.engine.state import save_train_state

        def extra(folder: Path) -> None:
            save_train_state(
                folder, optimizer=self.optimizer, scheduler=self.lr_schedule, scaler=self.scaler,
                weighting=self.weighting, meta=meta,
            )

        card = self._card(epoch=epoch, metrics=meta.get("last_metrics", {}))
        save_checkpoint(self.out / "last", self.model, card, extra=extra)

    def _resume(self) -> dict[str, Any]:
        from safetensors.torch import load_file

        from medmtl.engine.checkpoint import check_weights, read_card
        from medmtl.engine.state import load_train_state

        last = self.out / "last"
        try:
            weights = check_weights(last, read_card(last))
        except CheckpointError as exc:
            raise CheckpointError(f"cannot resume from '{last}': {exc}") from exc
        self.model.load_state_dict(load_file(str(weights), device=str(self.device)), strict=True)
        self._build_optimizer()
        meta = load_train_state(
            last, optimizer=self.optimizer, scheduler=self.lr_schedule, scaler=self.scaler, weighting=self.weighting
        )
        if self.tracker is not None and meta.get("conflict") is not None:
            self.tracker.load_state(meta["conflict"])
        logger.info("resuming after epoch %d (step %d)", meta["epoch"] + 1, meta["step"])
        return meta

    # ------------------------------------------------------------------ loop
    def _monitor_value(self, row: dict[str, Any]) -> float | None:
        key = "cpm" if self.cfg.validation.monitor == "cpm" else "val_loss"
        v = row.get(key)
        if v is None and key == "cpm":
            v = row.get("val_loss")
            return None if v is None else -float(v)
        if v is None:
            return None
        return float(v) if key == "cpm" else -float(v)

    def run(self, *, resume: bool, stop_after_epochs: int | None) -> Path:
        """Train (or continue) and finish; returns the checkpoint folder."""
        from medmtl.engine.trainer import write_run_header

        cfg = self.cfg
        if resume:
            meta = self._resume()
        else:
            self._build_optimizer()
            meta = {"epoch": -1, "step": 0, "best": None, "best_epoch": None, "bad_epochs": 0, "history": [],
                    "finished": False}
            if self.dist.is_main:
                write_run_header(cfg, self.out, device=self.device, amp=self.amp, world_size=self.dist.world_size)
        ddp.broadcast_module(self.model, self.dist)
        log = RunLog(self.out, meta.get("history"), tensorboard=True) if self.dist.is_main else None
        step = int(meta["step"])
        done_here = 0
        try:
            epoch = int(meta["epoch"]) + 1
            while epoch < cfg.train.epochs and not meta.get("finished"):
                if stop_after_epochs is not None and done_here >= stop_after_epochs:
                    return self.out / "checkpoint"
                stages = self.plan.schedule.on_epoch_start(epoch, self.model, self.optimizer)
                logger.debug("epoch %d: trainable encoder stages %s", epoch + 1, stages)
                _reseed(cfg.seed, epoch)
                batches = patch_batches(self._passes(epoch), cfg.train.batch_size, self.steps_per_epoch)
                stats, step = train_epoch(self._context(), batches, steps=self.steps_per_epoch, epoch=epoch,
                                          global_step=step, progress=self.progress, epochs=cfg.train.epochs)
                ddp.broadcast_module(self.model, self.dist)
                stats.losses = ddp.all_mean(stats.losses, self.dist)
                self.weighting.on_epoch_end({t: stats.losses[t] for t in TASKS})
                row = self._row(epoch, step, stats)
                is_last = epoch + 1 == cfg.train.epochs
                if self.dist.is_main and self.val_volumes and ((epoch + 1) % cfg.validation.every == 0 or is_last):
                    res = self._validate(progress=self.progress)
                    row.update(res.metrics)
                    self._last_val = (epoch, res)
                stop = self._early_stopping(meta, row, epoch) if self.dist.is_main else False
                stop = bool(ddp.broadcast_object(stop, self.dist))
                conflict = self.tracker.end_epoch(epoch) if self.tracker is not None else None
                meta.update({"epoch": epoch, "step": step, "finished": is_last or stop, "last_metrics": row})
                if self.dist.is_main:
                    assert log is not None
                    log.log_epoch(row)
                    log.log_steps(stats.per_step)
                    meta["history"] = log.history
                    if conflict is not None:
                        self._log_conflict(log, conflict, step)
                    if self.tracker is not None:
                        meta["conflict"] = self.tracker.state()
                        self.tracker.write(self.out)
                    if row["best"]:
                        card = self._card(epoch=epoch, metrics=row)
                        save_checkpoint(self.out / "checkpoint", self.model, card)
                    self._save_last(epoch, step, meta)
                ddp.barrier(self.dist)
                done_here += 1
                self._report_epoch(epoch, row, done_here)
                self._trained_epoch = epoch
                epoch += 1
                if stop:
                    logger.info("early stopping after epoch %d (no improvement for %d epochs)", epoch,
                                cfg.validation.patience)
                    break
        finally:
            if log is not None:
                log.close()
        if self.dist.is_main:
            self._finish(meta.get("best_epoch"))
        ddp.barrier(self.dist)
        return self.out / "checkpoint"

    def _report_epoch(self, epoch: int, row: dict[str, Any], done_here: int) -> None:
        """The epoch's line: logged, and above the progress bars (task losses, validation CPM, time left)."""
        from medmtl.progress import format_duration, note

        epochs = self.cfg.train.epochs
        cpm = f", validation CPM {row['cpm']:.3f}" if row.get("cpm") is not None else ""
        logger.info("epoch %d/%d: loss %.4f%s", epoch + 1, epochs, row["loss"], cpm)
        tasks = ", ".join(f"{t} {row[f'loss_{t}']:.4f}" for t in TASKS if row.get(f"loss_{t}") is not None)
        left = (time.perf_counter() - self._t_started) / done_here * (epochs - epoch - 1)
        note(f"epoch {epoch + 1}/{epochs}: loss {row['loss']:.4f} ({tasks}){cpm}; "
             f"{format_duration(left)} left", enabled=self.progress)

    def _row(self, epoch: int, step: int, stats: EpochStats) -> dict[str, Any]:
        row: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": step,
            "lr": stats.lr,
            "time_s": round(stats.seconds, 3),
            "loss": stats.losses.get("total"),
            "grad_norm": stats.grad_norm,
            "grad_norm_max": stats.grad_norm_max,
        }
        for t in TASKS:
            row[f"loss_{t}"] = stats.losses.get(t)
            row[f"weight_{t}"] = stats.weights.get(t)
        return row

    def _early_stopping(self, meta: dict[str, Any], row: dict[str, Any], epoch: int) -> bool:
        v = self._monitor_value(row) if self.val_volumes else None
        if v is None:  # no validation this epoch: the latest model is the best we know
            row["best"] = not self.val_volumes
            if row["best"]:
                meta["best_epoch"] = epoch
            return False
        best = meta.get("best")
        improved = best is None or v > float(best) + self.cfg.validation.min_delta
        row["best"] = bool(improved)
        if improved:
            meta["best"], meta["best_epoch"], meta["bad_epochs"] = v, epoch, 0
        else:
            meta["bad_epochs"] = int(meta.get("bad_epochs", 0)) + 1
        p = self.cfg.validation.patience
        return p > 0 and meta["bad_epochs"] >= p

    def _log_conflict(self, log: RunLog, summary: dict[str, Any], step: int) -> None:
        values: dict[str, float] = {}
        for pair, s in summary.get("pairs", {}).items():
            if s.get("mean_cos") is not None:
                values[f"conflict/cos_{pair}"] = s["mean_cos"]
            if s.get("conflict_share") is not None:
                values[f"conflict/share_{pair}"] = s["conflict_share"]
        log.log_scalars(values, step)

    def _validate(self, *, progress: bool) -> Any:
        from medmtl.engine.validation import validate

        v = self.cfg.validation
        return validate(self.model, self.val_volumes, patch_size=self.cfg.train.patch_size, overlap=v.overlap,
                        sw_batch_size=v.sw_batch_size, device=self.device, amp=self.amp, decode=self.decode,
                        progress=progress)

    # ------------------------------------------------------------------ finish
    def _finish(self, best_epoch: int | None) -> None:
        """Reload the best weights (0-based ``best_epoch``), fit the calibrations, save the final card."""
        from safetensors.torch import load_file

        from medmtl.engine.validation import fit_malignancy_temperature, fit_size_calibration

        cfg = self.cfg
        best = self.out / "checkpoint"
        reuse = (
            self._last_val is not None
            and self._last_val[0] == best_epoch
            and self._trained_epoch == best_epoch  # the model in memory is the best one
        )
        if not reuse and (best / WEIGHTS_FILE).is_file():
            self.model.load_state_dict(load_file(str(best / WEIGHTS_FILE), device=str(self.device)), strict=True)
        calibration: dict[str, float] = {}
        metrics: dict[str, Any] = {}
        if self.val_volumes:
            start = time.perf_counter()
            if reuse:
                assert self._last_val is not None
                res = self._last_val[1]
            else:
                res = self._validate(progress=False)
            metrics = dict(res.metrics)
            if cfg.validation.calibrate:
                offset, slope = fit_size_calibration(res)
                calibration = {"temperature": fit_malignancy_temperature(res), "size_log_offset": offset,
                               "size_log_slope": slope}
            logger.info("final validation in %.1f s: %s", time.perf_counter() - start, metrics)
        card = self._card(epoch=best_epoch if best_epoch is not None else 0, metrics=metrics, calibration=calibration)
        save_checkpoint(best, self.model, card)


__all__ = ["TrainingSession"]
