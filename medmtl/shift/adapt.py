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
  (:mod:`medmtl.shift.harmonise`); the weights are unchanged, the step is stored in
  ``card["harmonisation"]`` and applied at prediction time.
* ``n4`` — N4 bias-field correction for MRI, stored the same way.

The new card's ``adaptation`` list gains ``{method, parameters_changed, params,
target_scans, n_target_scans, date, source_checkpoint}``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmtl.errors import ShiftError, unknown_name

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from medmtl.io.types import Scan

logger = logging.getLogger(__name__)

METHODS = ("adabn", "tent", "dann", "resim", "histmatch", "n4")
TENT_STEPS = 1
TENT_LR = 1e-3
DANN_STEPS = 20
DANN_LR = 1e-4
RESIM_STEPS = 100
RESIM_LR = 1e-4


def prepare_volumes(scans: Sequence[Scan], card: Mapping[str, Any], *, harmonise: bool = True) -> list[torch.Tensor]:
    """Harmonise (per the card; target scans only) and preprocess scans → ``(1, C, I, J, K)`` float32 tensors."""
    import numpy as np
    import torch

    from medmtl.shift.harmonise import apply_harmonisation
    from medmtl.shift.reference import as_input_spec
    from medmtl.transforms.presets import preprocess_scan

    spec = as_input_spec(card["input_spec"])
    out = []
    for s in scans:
        img = preprocess_scan(apply_harmonisation(s, card) if harmonise else s, spec)
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


def _labelled_source(card: Mapping[str, Any], source: Path | None, method: str) -> tuple[list[Scan], list[Any]]:
    """The labelled source scans of ``dann`` / ``resim``: ``source`` or the card's training data."""
    from medmtl.io.annotations import read_annotations
    from medmtl.io.read import load_folder

    data = ((card.get("train_config") or {}).get("data") or {})
    folder = source if source is not None else (Path(data["root"]) if data.get("root") else None)
    if folder is None or not folder.is_dir():
        raise ShiftError(
            f"--method {method} needs labelled source scans: pass --source DIR (with annotations.csv); the card's "
            f"train_config.data.root is {data.get('root')!r}."
        )
    ann = Path(data["annotations"]) if source is None and data.get("annotations") else folder / "annotations.csv"
    if not ann.is_file():
        raise ShiftError(f"--method {method} needs an annotations.csv for the source scans; '{ann}' does not exist.")
    scans, _ = load_folder(folder, progress=False)
    if not scans:
        raise ShiftError(f"--source folder '{folder}' holds no readable scans.")
    return scans, read_annotations(ann)


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
) -> Path:
    """Adapt a checkpoint to unlabelled target scans and save the result as a new checkpoint.

    Args:
        checkpoint: source checkpoint folder.
        target: folder of unlabelled target scans.
        method: one of :data:`METHODS`.
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

    Returns:
        The new checkpoint folder.

    Raises:
        ShiftError: unknown method, existing non-empty ``out``, modality mismatch, missing
            reference statistics (histmatch) or source data (dann, resim), ``n4`` on CT or on a
            checkpoint whose preprocessing already runs N4.
    """
    import torch

    from medmtl.engine.checkpoint import load_checkpoint, save_checkpoint
    from medmtl.shift.report import load_cohort

    if method not in METHODS:
        raise unknown_name("adaptation method", method, METHODS)
    if steps is not None and steps < 1:
        raise ShiftError(f"--steps must be at least 1, got {steps}.")
    if lr is not None and not lr > 0:
        raise ShiftError(f"--lr must be positive, got {lr}.")
    checkpoint, target, out = Path(checkpoint), Path(target), Path(out)
    _check_out(out)
    torch.manual_seed(seed)
    model, card = load_checkpoint(checkpoint, device=device)
    scans = load_cohort(target, "target")
    modality = card["input_spec"].get("modality", "CT")
    if scans[0].modality != modality:
        raise ShiftError(f"target scans are {scans[0].modality} but the checkpoint was trained on {modality}; "
                         "adapt with scans of the same modality.")
    patch = [int(v) for v in card["patch_size"]]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params: dict[str, Any] = {}
    new_card = dict(card)
    if method == "adabn":
        from medmtl.shift.adabn import adabn

        src_vols = None
        if source is not None:
            src_scans = load_cohort(Path(source), "source")
            if src_scans[0].modality != modality:
                raise ShiftError(f"--source scans are {src_scans[0].modality} but the checkpoint was trained on "
                                 f"{modality}; pass source-site scans of the same modality.")
            # the card's harmonisation maps *target* intensities to the source: not for source scans
            src_vols = prepare_volumes(src_scans, card, harmonise=False)
            params.update(variant="statistics-shift", source_scans=[s.scan_id for s in src_scans],
                          source_folder=str(source))
        else:
            params["variant"] = "replace"
        params["n_patches"] = adabn(model, prepare_volumes(scans, card), patch, source_volumes=src_vols)
        params["momentum"] = None
    elif method == "tent":
        from medmtl.shift.tent import tent

        t_steps, t_lr = steps or TENT_STEPS, lr or TENT_LR
        losses = tent(model, prepare_volumes(scans, card), patch, steps=t_steps, lr=t_lr, seed=seed)
        params.update(steps=t_steps, lr=t_lr, entropy_first=losses[0], entropy_last=losses[-1],
                      note="BN running statistics unchanged; affine parameters adapted under batch statistics")
    elif method == "dann":
        from medmtl.shift.dann import dann
        from medmtl.shift.reference import as_input_spec
        from medmtl.shift.source_patches import group_lesions, labelled_item

        src_scans, lesions = _labelled_source(card, source, method)
        spec = as_input_spec(card["input_spec"])
        by_scan = group_lesions(src_scans, lesions)
        src_items = [labelled_item(s, by_scan[s.scan_id], spec) for s in src_scans]
        d_steps, d_lr = steps or DANN_STEPS, lr or DANN_LR
        history = dann(model, src_items, prepare_volumes(scans, card), patch, steps=d_steps, lr=d_lr, seed=seed)
        params.update(steps=d_steps, lr=d_lr, source_scans=[s.scan_id for s in src_scans],
                      final_domain_loss=history[-1]["domain"], final_task_loss=history[-1]["task"])
    elif method == "resim":
        from medmtl.shift.reference import as_input_spec
        from medmtl.shift.resim import estimate_acquisition, resim_finetune, resim_items

        src_scans, lesions = _labelled_source(card, source, method)
        spec = as_input_spec(card["input_spec"])
        tgt_acq = estimate_acquisition(scans)
        src_acq = estimate_acquisition(src_scans)
        items, sims = resim_items(src_scans, lesions, spec, source=src_acq, target=tgt_acq, seed=seed)
        r_steps, r_lr = steps or RESIM_STEPS, lr or RESIM_LR
        losses = resim_finetune(model, items, patch, steps=r_steps, lr=r_lr, seed=seed)
        params.update(steps=r_steps, lr=r_lr, source_scans=[s.scan_id for s in src_scans],
                      source_acquisition=src_acq.as_dict(), target_acquisition=tgt_acq.as_dict(),
                      simulations=sims, task_loss_first=losses[0], task_loss_last=losses[-1])
    else:
        from medmtl.shift.harmonise import harmonisation_record

        if method == "n4" and modality != "MR":
            raise ShiftError(f"--method n4 is for MRI bias fields; this checkpoint is {modality}. Use histmatch for CT.")
        if method == "n4" and card["input_spec"].get("n4"):
            raise ShiftError("--method n4: the checkpoint's preprocessing already runs N4 (model card input_spec.n4 "
                             "= true), so a second correction would add nothing; use --method histmatch or adabn.")
        new_card["harmonisation"] = harmonisation_record(method, card.get("reference_stats"))
        params.update({k: v for k, v in new_card["harmonisation"]["params"].items() if k != "quantiles"})
    changed = changed_tensors(before, model)
    model = model.cpu()
    record = {
        "method": method,
        "parameters_changed": changed if method not in ("histmatch", "n4") else ["card.harmonisation"],
        "n_tensors_changed": len(changed),
        "params": params,
        "target_scans": [s.scan_id for s in scans],
        "n_target_scans": len(scans),
        "target_folder": str(target),
        "source_checkpoint": str(checkpoint),
        "seed": seed,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    new_card["adaptation"] = list(card.get("adaptation") or []) + [record]
    for key in ("format_version", "medmtl_version", "versions", "weights_sha256", "created"):
        new_card.pop(key, None)
    folder = save_checkpoint(out, model, new_card)
    logger.info("adapt %s: %d tensors changed, saved %s", method, len(changed), folder)
    return folder
