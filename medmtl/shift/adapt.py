"""``medmtl adapt``: adapt a checkpoint to an unlabelled target site; write a new checkpoint.

Methods (each module cites its paper):

* ``adabn`` — BN running statistics re-estimated on whole target volumes
  (:mod:`medmtl.shift.adabn`, Li et al. 2016); only BN buffers change. With ``source`` (a
  folder of source-site scans, no labels needed) the statistics are *shifted* by the target −
  source difference of the same tiling instead of replaced.
* ``tent`` — entropy minimisation on BN affine parameters (:mod:`medmtl.shift.tent`, Wang
  et al. 2021); only BN weights/biases change.
* ``dann`` — domain-adversarial fine-tuning with gradient reversal (:mod:`medmtl.shift.dann`,
  Ganin et al. 2016). It needs *labelled source* scans: ``source`` (a folder with an
  ``annotations.csv``), else the card's ``train_config.data.root`` /
  ``train_config.data.annotations``.
* ``resim`` — acquisition re-simulation (:mod:`medmtl.shift.resim`): the labelled source
  scans are re-rendered as the target scanner would have acquired them (its slice spacing,
  noise and HU calibration, measured on the unlabelled target scans; a random smooth kernel)
  and the network is fine-tuned on them. Needs labelled source scans like ``dann``.
* ``histmatch`` — histogram matching of target intensities to the source reference quantiles
  (:mod:`medmtl.transforms.harmonise`); the weights are unchanged, the step is stored in
  the card's ``harmonisation`` and applied by every preprocessing of the checkpoint.
* ``n4`` — N4 bias-field correction for MRI, stored the same way.

Methods register by name with :func:`register_adaptation` (as weightings do), so
:func:`run_adapt` is a lookup. The new card's ``adaptation`` history gains an
:class:`~medmtl.engine.card.AdaptationRecord`.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from medmtl.errors import ShiftError, unknown_name

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from medmtl.engine.card import ModelCard
    from medmtl.io.types import Scan

logger = logging.getLogger(__name__)

TENT_STEPS = 1
TENT_LR = 1e-3
DANN_STEPS = 20
DANN_LR = 1e-4
RESIM_STEPS = 100
RESIM_LR = 1e-4


@dataclass
class AdaptContext:
    """What an adaptation method gets.

    Attributes:
        model: the loaded network (adapt it in place).
        card: its model card.
        scans: the unlabelled target scans.
        source: ``--source`` folder or ``None``.
        seed: random seed.
        steps: optimisation steps (``None``: the method's default).
        lr: learning rate (``None``: the method's default).
        progress: show a progress bar over the optimisation steps.
    """

    model: nn.Module
    card: ModelCard
    scans: list[Scan]
    source: Path | None
    seed: int
    steps: int | None
    lr: float | None
    progress: bool = False

    @property
    def modality(self) -> str:
        """The checkpoint's modality."""
        return self.card.input_spec.modality

    @property
    def patch(self) -> list[int]:
        """The card's patch size (voxels)."""
        return list(self.card.patch_size)


@dataclass(frozen=True)
class AdaptResult:
    """What an adaptation method returns: its parameters/results and, for harmonisation, the new card."""

    params: dict[str, Any]
    card: ModelCard | None = None


AdaptFn = Callable[[AdaptContext], AdaptResult]
F = TypeVar("F", bound=AdaptFn)
_REGISTRY: dict[str, AdaptFn] = {}


def register_adaptation(name: str) -> Callable[[F], F]:
    """Decorator registering an adaptation method ``fn(ctx: AdaptContext) -> AdaptResult`` under ``name``."""

    def deco(fn: F) -> F:
        if name in _REGISTRY and _REGISTRY[name] is not fn:
            raise ValueError(f"adaptation method {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_adaptations() -> list[str]:
    """Registered adaptation method names, sorted."""
    return sorted(_REGISTRY)


def prepare_volumes(scans: Sequence[Scan], card: ModelCard, *, harmonise: bool = True) -> list[torch.Tensor]:
    """Harmonise (per the card; target scans only) and preprocess scans → ``(1, C, I, J, K)`` float32 tensors."""
    import numpy as np
    import torch

    from medmtl.transforms.presets import preprocess_scan

    record = card.harmonisation if harmonise else None
    out = []
    for s in scans:
        img = preprocess_scan(s, card.input_spec, record)
        out.append(torch.as_tensor(np.asarray(img.detach().cpu()), dtype=torch.float32)[None])
    return out


def changed_tensors(before: Mapping[str, torch.Tensor], model: nn.Module) -> list[str]:
    """Names of the state-dict tensors that differ from ``before``."""
    import torch

    after = model.state_dict()
    return [k for k, v in before.items() if not torch.equal(v, after[k])]


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ShiftError(f"output '{out}' already exists and is not an empty folder; pass a new folder with -o.")


def _labelled_source(card: ModelCard, source: Path | None, method: str) -> tuple[list[Scan], list[Any]]:
    """The labelled source scans of ``dann`` / ``resim``: ``source`` or the card's training data."""
    from medmtl.io.annotations import read_annotations
    from medmtl.io.read import load_folder

    data = card.train_config.data if card.train_config is not None else None
    root = data.root if data is not None else None
    folder = source if source is not None else (Path(root) if root else None)
    if folder is None or not folder.is_dir():
        raise ShiftError(
            f"--method {method} needs labelled source scans: pass --source DIR (with annotations.csv); the card's "
            f"train_config.data.root is {root!r}."
        )
    ann = Path(data.annotations) if source is None and data is not None and data.annotations else \
        folder / "annotations.csv"
    if not ann.is_file():
        raise ShiftError(f"--method {method} needs an annotations.csv for the source scans; '{ann}' does not exist.")
    scans, _ = load_folder(folder, progress=False)
    if not scans:
        raise ShiftError(f"--source folder '{folder}' holds no readable scans.")
    return scans, read_annotations(ann)


@register_adaptation("adabn")
def _adabn(ctx: AdaptContext) -> AdaptResult:
    """AdaBN (Li et al. 2016): BN statistics re-estimated on the target (or shifted by target − source)."""
    from medmtl.shift.adabn import adabn
    from medmtl.shift.report import load_cohort

    params: dict[str, Any] = {"variant": "replace"}
    src_vols = None
    if ctx.source is not None:
        src_scans = load_cohort(Path(ctx.source), "source")
        if src_scans[0].modality != ctx.modality:
            raise ShiftError(f"--source scans are {src_scans[0].modality} but the checkpoint was trained on "
                             f"{ctx.modality}; pass source-site scans of the same modality.")
        # the card's harmonisation maps *target* intensities to the source: not for source scans
        src_vols = prepare_volumes(src_scans, ctx.card, harmonise=False)
        params = {"variant": "statistics-shift", "source_scans": [s.scan_id for s in src_scans],
                  "source_folder": str(ctx.source)}
    params["n_patches"] = adabn(ctx.model, prepare_volumes(ctx.scans, ctx.card), ctx.patch, source_volumes=src_vols)
    params["momentum"] = None
    return AdaptResult(params)


@register_adaptation("tent")
def _tent(ctx: AdaptContext) -> AdaptResult:
    """TENT (Wang et al. 2021): entropy minimisation on the BN affine parameters."""
    from medmtl.shift.tent import tent

    steps, lr = ctx.steps or TENT_STEPS, ctx.lr or TENT_LR
    losses = tent(ctx.model, prepare_volumes(ctx.scans, ctx.card), ctx.patch, steps=steps, lr=lr, seed=ctx.seed,
                  progress=ctx.progress)
    return AdaptResult({"steps": steps, "lr": lr, "entropy_first": losses[0], "entropy_last": losses[-1],
                        "note": "BN running statistics unchanged; affine parameters adapted under batch statistics"})


@register_adaptation("dann")
def _dann(ctx: AdaptContext) -> AdaptResult:
    """DANN (Ganin et al. 2016): domain-adversarial fine-tuning on labelled source + unlabelled target."""
    from medmtl.shift.dann import dann
    from medmtl.shift.source_patches import group_lesions, labelled_item

    src_scans, lesions = _labelled_source(ctx.card, ctx.source, "dann")
    by_scan = group_lesions(src_scans, lesions)
    src_items = [labelled_item(s, by_scan[s.scan_id], ctx.card.input_spec) for s in src_scans]
    steps, lr = ctx.steps or DANN_STEPS, ctx.lr or DANN_LR
    history = dann(ctx.model, src_items, prepare_volumes(ctx.scans, ctx.card), ctx.patch, steps=steps, lr=lr,
                   seed=ctx.seed, progress=ctx.progress)
    return AdaptResult({"steps": steps, "lr": lr, "source_scans": [s.scan_id for s in src_scans],
                        "final_domain_loss": history[-1]["domain"], "final_task_loss": history[-1]["task"]})


@register_adaptation("resim")
def _resim(ctx: AdaptContext) -> AdaptResult:
    """Acquisition re-simulation: labelled source scans re-rendered as the target scanner, then fine-tuning."""
    from medmtl.shift.resim import estimate_acquisition, resim_finetune, resim_items

    src_scans, lesions = _labelled_source(ctx.card, ctx.source, "resim")
    tgt_acq = estimate_acquisition(ctx.scans)
    src_acq = estimate_acquisition(src_scans)
    items, sims = resim_items(src_scans, lesions, ctx.card.input_spec, source=src_acq, target=tgt_acq, seed=ctx.seed)
    steps, lr = ctx.steps or RESIM_STEPS, ctx.lr or RESIM_LR
    losses = resim_finetune(ctx.model, items, ctx.patch, steps=steps, lr=lr, seed=ctx.seed, progress=ctx.progress)
    return AdaptResult({"steps": steps, "lr": lr, "source_scans": [s.scan_id for s in src_scans],
                        "source_acquisition": src_acq.as_dict(), "target_acquisition": tgt_acq.as_dict(),
                        "simulations": sims, "task_loss_first": losses[0], "task_loss_last": losses[-1]})


def _harmonisation(ctx: AdaptContext, method: str) -> AdaptResult:
    """Store an intensity step in the card (the weights are unchanged)."""
    from medmtl.errors import ConfigError
    from medmtl.transforms.harmonise import Harmonisation

    ref = ctx.card.reference_stats
    try:
        record = Harmonisation.for_method(method, ref.quantiles if ref is not None else None, ctx.modality)
    except ConfigError as exc:
        raise ShiftError(str(exc)) from exc
    params = {k: v for k, v in record.params.items() if k != "quantiles"}
    return AdaptResult(params, card=ctx.card.replace(harmonisation=record))


@register_adaptation("histmatch")
def _histmatch(ctx: AdaptContext) -> AdaptResult:
    """Histogram matching (Nyúl & Udupa 1999) of target intensities to the source quantiles."""
    return _harmonisation(ctx, "histmatch")


@register_adaptation("n4")
def _n4(ctx: AdaptContext) -> AdaptResult:
    """N4 bias-field correction (Tustison et al. 2010), MRI only."""
    if ctx.modality != "MR":
        raise ShiftError(f"--method n4 is for MRI bias fields; this checkpoint is {ctx.modality}. Use histmatch for CT.")
    if ctx.card.input_spec.n4:
        raise ShiftError("--method n4: the checkpoint's preprocessing already runs N4 (model card input_spec.n4 "
                         "= true), so a second correction would add nothing; use --method histmatch or adabn.")
    return _harmonisation(ctx, "n4")


#: Registered methods (in the order of the docs).
METHODS = ("adabn", "tent", "dann", "resim", "histmatch", "n4")


def _check_args(method: str, out: Path, steps: int | None, lr: float | None) -> None:
    if method not in _REGISTRY:
        raise unknown_name("adaptation method", method, list_adaptations())
    if steps is not None and steps < 1:
        raise ShiftError(f"--steps must be at least 1, got {steps}.")
    if lr is not None and not lr > 0:
        raise ShiftError(f"--lr must be positive, got {lr}.")
    _check_out(out)


def run_adapt(
    *,
    checkpoint: Path,
    target: Path,
    method: str,
    out: Path,
    seed: int = 0,
    source: Path | None = None,
    device: str = "cpu",
    steps: int | None = None,
    lr: float | None = None,
    progress: bool = False,
) -> Path:
    """Adapt a checkpoint to unlabelled target scans and save the result as a new checkpoint.

    Args:
        checkpoint: source checkpoint folder.
        target: folder of unlabelled target scans.
        method: a registered method (:func:`list_adaptations`).
        out: new checkpoint folder (must not exist, or be empty).
        seed: random seed.
        source: labelled source scan folder for ``dann`` / ``resim`` (default: the card's training data);
            for ``adabn``, source-site scans (no labels) for the statistics-shift variant.
        device: torch device of the adaptation (``cpu``, ``cuda``, ``cuda:N``); the saved
            weights are on the CPU either way.
        steps: ``tent``: passes over the target patches (default :data:`TENT_STEPS`);
            ``dann`` / ``resim``: optimisation steps (default :data:`DANN_STEPS` /
            :data:`RESIM_STEPS`). Ignored by the others.
        lr: Adam learning rate of ``tent`` / ``dann`` / ``resim`` (defaults :data:`TENT_LR` /
            :data:`DANN_LR` / :data:`RESIM_LR`).
        progress: progress bars: one over the stages (reading, adapting, saving) and, for
            ``tent`` / ``dann`` / ``resim``, one over the optimisation steps.

    Returns:
        The new checkpoint folder.

    Raises:
        ShiftError: unknown method, existing non-empty ``out``, modality mismatch, missing
            reference statistics (histmatch) or source data (dann, resim), ``n4`` on CT or on a
            checkpoint whose preprocessing already runs N4.
    """
    import torch

    from medmtl.engine.card import AdaptationRecord
    from medmtl.engine.checkpoint import load_checkpoint, save_checkpoint
    from medmtl.progress import Stages
    from medmtl.shift.report import load_cohort

    checkpoint, target, out = Path(checkpoint), Path(target), Path(out)
    _check_args(method, out, steps, lr)
    torch.manual_seed(seed)
    with Stages(["reading", method, "saving"], desc="adapt", enabled=progress) as stage:
        stage("reading")
        model, card = load_checkpoint(checkpoint, device=device)
        scans = load_cohort(target, "target")
        if scans[0].modality != card.input_spec.modality:
            raise ShiftError(f"target scans are {scans[0].modality} but the checkpoint was trained on "
                             f"{card.input_spec.modality}; adapt with scans of the same modality.")
        stage(method)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = _REGISTRY[method](AdaptContext(model, card, scans, source, seed, steps, lr, progress))
        changed = changed_tensors(before, model)
        record = AdaptationRecord(
            method=method,
            parameters_changed=tuple(changed) if result.card is None else ("card.harmonisation",),
            n_tensors_changed=len(changed),
            params=result.params,
            target_scans=tuple(s.scan_id for s in scans),
            n_target_scans=len(scans),
            target_folder=str(target),
            source_checkpoint=str(checkpoint),
            seed=seed,
            date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
        stage("saving")
        folder = save_checkpoint(out, model.cpu(), (result.card or card).adapted(record))
    logger.info("adapt %s: %d tensors changed, saved %s", method, len(changed), folder)
    return folder
