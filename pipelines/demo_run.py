"""The demo's run: plan the split and config, diagnose, train, adapt, predict and evaluate each condition.

See :mod:`pipelines.demo` for what the demo does and its output folder policy.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medmtl import api
from pipelines.demo_figures import make_figures
from pipelines.demo_report import summarize
from pipelines.options import default_device
from pipelines.runs import REPO, StepTimer, write_run_records
from pipelines.splits import filter_annotations, id_list, split_ids

logger = logging.getLogger("pipelines.demo")

#: What the demo writes into ``--out`` (and therefore replaces on a re-run); nothing else is touched.
DEMO_ARTIFACTS = (
    "shift",
    "train",
    "adapted",
    "predictions",
    "metrics",
    "figures",
    "data",
    "README.md",
    "results.csv",
    "results.json",
    "config.yaml",
    "versions.json",
    "inputs.json",
)

#: Adaptation methods the demo runs by default (all need no target labels). Re-simulation
#: (``resim``, ~100 s with its prediction on 2 cores) is left out of the default so the demo's
#: CPU time goes to training at the 1.25 mm grid; ``--methods adabn,histmatch,resim`` adds it.
DEFAULT_METHODS = ("adabn", "histmatch")

METHOD_TITLES = {
    "adabn": "AdaBN",
    "histmatch": "histogram matching",
    "tent": "TENT",
    "dann": "DANN",
    "resim": "re-simulation",
    "n4": "N4",
}

#: Sliding-window overlap of the demo's predictions: the validation's (configs/demo.yaml), half
#: the windows of ``medmtl predict``'s default 0.5 — the demo's CPU time goes to training instead.
PREDICT_OVERLAP = 0.25

#: Fresh site-A phantoms the demo trains on (seed disjoint from every committed set).
DEFAULT_TRAIN_PHANTOMS = 24
FAST_TRAIN_PHANTOMS = 3
TRAIN_PHANTOM_SEED = 7000

#: Overrides of ``--fast``: a smoke test, numbers meaningless.
FAST_OVERRIDES = (
    "train.epochs=1",
    "train.steps_per_epoch=3",
    "train.patch_size=[32, 32, 32]",
    "train.conflict_every=1",
    "validation.every=1",
    "validation.calibrate=false",
    "data.reference_scans=2",
)


@dataclass
class Condition:
    """One evaluated condition: a checkpoint applied to a scan set."""

    key: str
    title: str
    checkpoint: Path | None  # None: the classical, training-free detector (or a fusion, below)
    input_dir: Path
    annotations: Path
    scan_ids: list[str] | None = None
    fuse_of: tuple[str, ...] = ()  # keys of conditions whose predictions are fused (noisy-OR), the model first
    timings: dict[str, float] = field(default_factory=dict)


@dataclass
class DemoPlan:
    """What a demo run trains on and holds out, decided before anything in ``--out`` is touched.

    Attributes:
        train_ids: site A scans the model trains on (empty when it trains on fresh phantoms).
        heldout_ids: site A scans of the in-domain reference.
        overrides: the training-config overrides of ``api.train``.
        config: the resolved training config (the checkpoint's own with ``--checkpoint``).
        n_phantoms: fresh site A phantoms to generate and train on (0: none).
        train_root: where those phantoms are written.
        phantom_shape: their ``(I, J, K)`` voxels: the held-out folder's own acquisition where its
            ``generation.json`` records one (the committed site A set is a 164×144×80 slab), else
            ``None`` (the generator's site default).
    """

    train_ids: list[str]
    heldout_ids: list[str]
    overrides: list[str]
    config: dict[str, Any] | None
    n_phantoms: int
    train_root: Path
    phantom_shape: tuple[int, int, int] | None = None

    @property
    def train_phantoms(self) -> dict[str, Any] | None:
        """``{"n", "seed", "shape"}`` of the generated training phantoms, ``None`` without them."""
        if not self.n_phantoms:
            return None
        return {"n": self.n_phantoms, "seed": TRAIN_PHANTOM_SEED,
                "shape": None if self.phantom_shape is None else list(self.phantom_shape)}


def clear_outputs(out: Path) -> None:
    """Remove the demo's own artifacts from ``out`` (:data:`DEMO_ARTIFACTS`); keep everything else."""
    if out.exists() and not out.is_dir():
        raise SystemExit(f"error: --out '{out}' is a file; pass a folder")
    for name in DEMO_ARTIFACTS:
        p = out / name
        if p.is_symlink() or p.is_file():
            p.unlink()
        elif p.is_dir():
            shutil.rmtree(p)
    out.mkdir(parents=True, exist_ok=True)


def _source_overrides(source: Path, train_ids: Sequence[str], heldout_ids: Sequence[str],
                      extra: Sequence[str]) -> list[str]:
    """Overrides that train on ``train_ids`` of the site A folder and validate on ``heldout_ids``."""
    return [
        f"data.root={source}",
        f"data.annotations={source / 'annotations.csv'}",
        "data.max_scans=null",
        f"data.train_ids={id_list(train_ids)}",
        f"data.val_ids={id_list(heldout_ids)}",
        *extra,
    ]


def plan_demo(*, out: Path, source: Path, target: Path, config: Path, checkpoint: Path | None, fast: bool,
              device: str, n_heldout: int, train_phantoms: int | None, overrides: Sequence[str]) -> DemoPlan:
    """Split site A, build and validate the training config; bad inputs fail here, before ``out`` is touched.

    Args: as :func:`run_demo` (``checkpoint`` resolved).
    """
    ids = api.scan_ids(folder=source)
    api.scan_ids(folder=target)  # an empty or missing target folder is refused by discovery
    n_gen = (FAST_TRAIN_PHANTOMS if fast else DEFAULT_TRAIN_PHANTOMS) if train_phantoms is None else int(train_phantoms)
    if n_gen < 0:
        raise ValueError(f"--train-phantoms must be >= 0, got {n_gen}")
    train_root = out / "data" / "train_phantoms"
    train_ids, heldout_ids, _ = split_ids(ids, n_test=0, n_val=n_heldout)
    extra = [f"train.device={device}", *(FAST_OVERRIDES if fast else ()), *overrides]
    if checkpoint is not None:
        trained = api.read_card(checkpoint=checkpoint).train_config
        if trained is not None and trained.data.val_ids and trained.data.train_ids:
            train_ids, heldout_ids = sorted(trained.data.train_ids), sorted(trained.data.val_ids)
        else:
            train_ids = sorted(set(ids) - set(heldout_ids))
        return DemoPlan(train_ids, heldout_ids, _source_overrides(source, train_ids, heldout_ids, extra),
                        trained.to_dict() if trained is not None else None, 0, train_root)
    if not n_gen:
        all_overrides = _source_overrides(source, train_ids, heldout_ids, extra)
        cfg = api.resolve_config(config=config, overrides=all_overrides)
        return DemoPlan(train_ids, heldout_ids, all_overrides, cfg, 0, train_root)
    all_overrides = [f"data.root={train_root}", "data.max_scans=null", *extra]
    # the phantoms are generated after this check: validate the config against the source folder
    cfg = api.resolve_config(config=config, overrides=[o for o in all_overrides if not o.startswith("data.root=")]
                             + [f"data.root={source}"])
    cfg["data"]["root"] = str(train_root)
    cfg["data"]["annotations"] = str(train_root / "annotations.csv")
    return DemoPlan([], list(ids), all_overrides, cfg, n_gen, train_root, api.generated_shape(folder=source))


def build_conditions(timer: StepTimer, *, ckpt: Path, out: Path, source: Path, target: Path, heldout_ann: Path,
                     heldout_ids: Sequence[str], methods: Sequence[str], fast: bool) -> list[Condition]:
    """The evaluated conditions; each adaptation method runs here (``api.adapt`` into ``out/adapted``)."""
    conditions = [
        Condition("site_a_heldout", "site A held-out (in-domain)", ckpt, source, heldout_ann, list(heldout_ids)),
        Condition("site_b_none", "site B, no adaptation", ckpt, target, target / "annotations.csv"),
        Condition("site_a_classical", "classical floor, site A held-out", None, source, heldout_ann,
                  list(heldout_ids)),
        Condition("site_b_classical", "classical floor, site B", None, target, target / "annotations.csv"),
        Condition("site_a_fused", "model + classical (noisy-OR), site A held-out", None, source, heldout_ann,
                  list(heldout_ids), fuse_of=("site_a_heldout", "site_a_classical")),
        Condition("site_b_fused", "model + classical (noisy-OR), site B", None, target, target / "annotations.csv",
                  fuse_of=("site_b_none", "site_b_classical")),
    ]
    for method in methods:
        adapted = Path(timer.run(f"adapt_{method}", api.adapt, checkpoint=ckpt, target=target, method=method,
                                 out=out / "adapted" / method, seed=0,
                                 steps=2 if fast and method in ("dann", "resim") else None))
        conditions.append(Condition(f"site_b_{method}", f"site B + {METHOD_TITLES.get(method, method)}",
                                    adapted, target, target / "annotations.csv"))
    return conditions


def predict_and_evaluate_all(timer: StepTimer, conditions: Sequence[Condition], *, out: Path, device: str,
                             n_bootstrap: int) -> None:
    """Predict (learned model or classical floor) and evaluate every condition into ``out``."""
    for cond in conditions:
        pred_dir = out / "predictions" / cond.key
        if cond.fuse_of:  # after the conditions it fuses (listed before it)
            timer.run(f"predict_{cond.key}", api.fuse_predictions,
                      inputs=[out / "predictions" / k for k in cond.fuse_of], out_dir=pred_dir)
        elif cond.checkpoint is None:
            timer.run(f"predict_{cond.key}", api.detect_classical, input_dir=cond.input_dir, out_dir=pred_dir,
                      scan_ids=cond.scan_ids)
        else:
            timer.run(f"predict_{cond.key}", api.predict_folder, checkpoint=cond.checkpoint,
                      input_dir=cond.input_dir, out_dir=pred_dir, device=device, progress=False,
                      scan_ids=cond.scan_ids, overlap=PREDICT_OVERLAP)
        timer.run(f"evaluate_{cond.key}", api.evaluate, predictions=pred_dir / "predictions.csv",
                  annotations=cond.annotations, out_dir=out / "metrics" / cond.key, n_bootstrap=n_bootstrap, seed=0)


def run_demo(
    *,
    out: Path,
    device: str = "auto",
    fast: bool = False,
    config: Path = REPO / "configs" / "demo.yaml",
    source: Path = REPO / "sample_data" / "ct_site_a",
    target: Path = REPO / "sample_data" / "ct_site_b",
    methods: Sequence[str] = DEFAULT_METHODS,
    n_heldout: int = 3,
    n_bootstrap: int | None = None,
    overrides: Sequence[str] = (),
    diagnose: bool = True,
    checkpoint: Path | None = None,
    train_phantoms: int | None = None,
) -> dict[str, Any]:
    """Run the whole demo into ``out`` (see :mod:`pipelines.demo`); returns ``results.json``'s dict.

    Args:
        out: output folder; only :data:`DEMO_ARTIFACTS` inside it are replaced.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (training and prediction).
        fast: smoke-test settings.
        config: training config (``configs/demo.yaml``).
        source: site A folder (scans + ``annotations.csv``).
        target: site B folder (scans + ``annotations.csv``; labels used for evaluation only).
        methods: adaptation methods to compare with no adaptation.
        n_heldout: site A scans held out of training (in-domain reference).
        n_bootstrap: bootstrap replicates of the evaluation (default 1000; 50 with ``fast``).
        overrides: extra ``key=value`` training-config overrides.
        diagnose: write the shift report.
        checkpoint: an already trained checkpoint to use instead of training.
        train_phantoms: train on this many fresh site-A phantoms written to ``out/data``
            (``None``: :data:`DEFAULT_TRAIN_PHANTOMS`, with ``fast`` :data:`FAST_TRAIN_PHANTOMS`;
            0: train on the ``source`` scans but the last ``n_heldout``).
    """
    out = Path(out).resolve()
    source, target, config = Path(source).resolve(), Path(target).resolve(), Path(config).resolve()
    checkpoint = Path(checkpoint).resolve() if checkpoint is not None else None
    timer = StepTimer(logger)
    n_boot = n_bootstrap if n_bootstrap is not None else (50 if fast else 1000)
    resolved_device = default_device(device)
    plan = plan_demo(out=out, source=source, target=target, config=config, checkpoint=checkpoint, fast=fast,
                     device=device, n_heldout=n_heldout, train_phantoms=train_phantoms, overrides=overrides)
    clear_outputs(out)
    write_run_records(
        out,
        inputs={"source": source, "target": target, **({"checkpoint": checkpoint} if checkpoint else {"config": config})},
        config=plan.config,
        device=resolved_device,
        extra={"train_ids": plan.train_ids, "heldout_ids": plan.heldout_ids, "methods": list(methods), "fast": fast,
               "overrides": plan.overrides, "n_bootstrap": n_boot, "train_phantoms": plan.train_phantoms},
    )
    heldout_ann = filter_annotations(source / "annotations.csv", out / "data" / "site_a_heldout_annotations.csv",
                                     plan.heldout_ids)
    shift: dict[str, Any] = {}
    if diagnose:
        shift = timer.run("diagnose", api.diagnose, source=source, target=target, out_dir=out / "shift",
                          n_permutations=100 if fast else 1000, seed=0)
    ckpt = checkpoint
    if ckpt is None:
        if plan.n_phantoms:
            timer.run("generate_train_phantoms", api.generate_sample_data, out=plan.train_root, kind="ct", site="a",
                      n=plan.n_phantoms, seed=TRAIN_PHANTOM_SEED, shape=plan.phantom_shape)
        ckpt = Path(timer.run("train", api.train, config=config, out_dir=out / "train", overrides=plan.overrides))
    conditions = build_conditions(timer, ckpt=ckpt, out=out, source=source, target=target, heldout_ann=heldout_ann,
                                  heldout_ids=plan.heldout_ids, methods=methods, fast=fast)
    predict_and_evaluate_all(timer, conditions, out=out, device=device, n_bootstrap=n_boot)
    figures = timer.run("figures", make_figures, out, conditions)
    return summarize(out, conditions, shift=shift, timings=timer.steps, cpu_s=timer.cpu, total_s=timer.total,
                     device=resolved_device, fast=fast, train_ids=plan.train_ids, heldout_ids=plan.heldout_ids,
                     figures=figures, n_bootstrap=n_boot, checkpoint=ckpt, trained=checkpoint is None,
                     train_phantoms=plan.train_phantoms)


__all__ = [
    "DEFAULT_METHODS",
    "DEMO_ARTIFACTS",
    "FAST_OVERRIDES",
    "METHOD_TITLES",
    "Condition",
    "DemoPlan",
    "build_conditions",
    "clear_outputs",
    "plan_demo",
    "predict_and_evaluate_all",
    "run_demo",
]
