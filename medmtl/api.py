"""High-level, keyword-only entry points used by the CLI, the pipelines and notebooks.

Each function imports its implementation lazily, so ``import medmtl.api`` is cheap.

Example:
    >>> from medmtl import api
    >>> scans, skipped = api.load_scans(folder="sample_data/ct_site_a")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from medmtl.io.types import Scan, Skipped


def load_scans(
    *, folder: str | Path, resample_nonuniform: bool = False, progress: bool = False
) -> tuple[list[Scan], list[Skipped]]:
    """Discover and read every scan under a folder.

    Args:
        folder: a folder of NIfTI / MHA / MHD / NRRD files and/or DICOM series.
        resample_nonuniform: resample series with non-uniform slice spacing or gantry tilt
            onto a regular grid instead of refusing them.
        progress: show a progress bar.

    Returns:
        ``(scans, skipped)``: loaded :class:`~medmtl.io.types.Scan` s (image ``(1, I, J, K)``,
        RAS affine, HU for CT) and what was skipped, with reasons.

    Example:
        >>> scans, skipped = load_scans(folder="sample_data/ct_site_a")  # doctest: +SKIP
        >>> scans[0].image.shape, scans[0].modality  # doctest: +SKIP
    """
    from medmtl.io.read import load_folder

    return load_folder(Path(folder), resample_nonuniform=resample_nonuniform, progress=progress)


def generate_sample_data(
    *,
    out: str | Path,
    kind: str = "ct",
    site: str = "a",
    n: int = 4,
    seed: int = 0,
    shape: Sequence[int] | None = None,
    dicom: bool = False,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Write a set of synthetic phantoms with known ground truth (see :mod:`medmtl.data.phantom`).

    Args:
        out: output folder; one that already holds ``annotations.csv`` is refused unless
            ``overwrite``.
        kind: ``"ct"`` (chest, lung nodules) or ``"mri"`` (brain, tumours).
        site: ``"a"`` or ``"b"`` (simulated scanner).
        n: number of scans (≥ 1).
        seed: random seed of the set (same seed → identical files).
        shape: ``(I, J, K)`` voxels (each 16..512); ``None`` for the site default.
        dicom: write DICOM series (scan id = SeriesInstanceUID) and a NIfTI twin in
            ``<out>_nifti/``.
        overwrite: replace an existing generated set.
        progress: show a progress bar over scans.

    Returns:
        ``out``, holding ``<scan_id>.nii.gz`` (or DICOM series folders), ``masks/`` and
        ``annotations.csv`` (LPS mm).

    Example:
        >>> generate_sample_data(out="data/site_a", kind="ct", site="a", n=4)  # doctest: +SKIP
    """
    from medmtl.data.phantom import write_phantom_set

    return write_phantom_set(
        Path(out), kind=kind, site=site, n=n, seed=seed, shape=shape, dicom=dicom,
        overwrite=overwrite, progress=progress,
    )


def generated_shape(*, folder: str | Path) -> tuple[int, int, int] | None:
    """The ``(I, J, K)`` voxels a phantom set was generated at (its ``generation.json``).

    Returns:
        The shape, or ``None`` for a folder not made by :func:`generate_sample_data` or made
        at the site's default shape.
    """
    from medmtl.data.phantom import generated_shape as _shape

    return _shape(Path(folder))


def inspect(
    *,
    folder: str | Path,
    annotations: str | Path | None = None,
    resample_nonuniform: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Describe every scan of a folder (geometry in LPS mm, modality, intensity percentiles).

    Args:
        folder: scan folder, or one scan file.
        annotations: optional annotation table whose lesions must lie inside their scans.
        resample_nonuniform: resample DICOM series with non-uniform spacing or gantry tilt.
        progress: show a progress bar.

    Returns:
        ``{"scans": [...], "skipped": [...]}``; each scan row holds ``id``, ``format``,
        ``shape``, ``spacing_mm``, ``orientation``, ``origin_lps``, ``direction``, ``modality``,
        ``percentiles``.

    Example:
        >>> info = inspect(folder="sample_data/ct_site_a")  # doctest: +SKIP
        >>> info["scans"][0]["origin_lps"]  # doctest: +SKIP
    """
    from medmtl.io.inspect import inspect_folder

    return inspect_folder(
        Path(folder),
        resample_nonuniform=resample_nonuniform,
        annotations=Path(annotations) if annotations is not None else None,
        progress=progress,
    )


def list_encoders() -> list[dict[str, Any]]:
    """One row per registered encoder: adapters, weight source, found/missing, path, SHA256, licence.

    Example:
        >>> [row["name"] for row in list_encoders()]  # doctest: +SKIP
        ['efficientnet-lite0', ...]
    """
    from medmtl.models.registry import describe_encoders

    return describe_encoders()


def train(
    *,
    config: str | Path,
    out_dir: str | Path,
    overrides: Sequence[str] = (),
    resume: bool = False,
    overwrite: bool = False,
    progress: bool | None = None,
    device: str | None = None,
) -> Path:
    """Train the multi-task model from a YAML config; returns the checkpoint folder.

    Args:
        config: YAML file (see ``configs/``).
        out_dir: run folder (resolved config, metrics CSV, TensorBoard events, checkpoints).
        overrides: ``key=value`` strings, e.g. ``("train.epochs=2", "data.root=...")``.
        resume: continue from ``out_dir``'s last checkpoint.
        overwrite: replace medmtl's files in an existing, non-empty run folder (default: refuse).
        progress: progress bars per epoch (steps, task losses, time left) in place of the
            config's ``train.progress`` (``None``: the config's).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` in place of the config's ``train.device``.

    Example:
        >>> ckpt = train(config="configs/tiny.yaml", out_dir="runs/tiny")  # doctest: +SKIP
    """
    from medmtl.config import load_config
    from medmtl.engine.trainer import run_training

    extra = ([f"train.progress={str(progress).lower()}"] if progress is not None else []) + (
        [f"train.device={device}"] if device is not None else [])
    cfg = load_config(Path(config), overrides=[*overrides, *extra])
    checkpoint = run_training(cfg, Path(out_dir), resume=resume, overwrite=overwrite)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 owns the checkpoint
        add_reference_stats(checkpoint=checkpoint, scan_dir=cfg.data.root, max_scans=cfg.data.reference_scans,
                            resample_nonuniform=cfg.data.resample_nonuniform)
    return checkpoint


def add_reference_stats(
    *, checkpoint: str | Path, scan_dir: str | Path, max_scans: int = 32, resample_nonuniform: bool = False
) -> Path:
    """Summarise a checkpoint's training scans into its card (for shift checks without them).

    The training scans are the card's ``training.train_ids`` found in ``scan_dir``; the
    checkpoint's own encoder extracts the features (see
    :func:`medmtl.shift.reference.compute_reference_stats`). Only ``model_card.json`` is
    rewritten (atomically); the weights and their hash stay as they are. A card that already
    holds reference statistics, or has no training record, is left alone.

    Args:
        checkpoint: checkpoint folder.
        scan_dir: the training scan folder (``data.root`` of the training config).
        max_scans: at most this many scans are summarised (evenly spread over the ids).
        resample_nonuniform: as ``data.resample_nonuniform`` of the training config.

    Returns:
        The checkpoint folder.
    """
    from medmtl.engine.checkpoint import load_checkpoint, write_card_file
    from medmtl.io.read import load_folder
    from medmtl.shift.reference import compute_reference_stats

    model, card = load_checkpoint(Path(checkpoint), device="cpu")
    if card.reference_stats is not None or card.training is None or not card.training.train_ids:
        return Path(checkpoint)
    ids = set(card.training.train_ids)
    scans, _ = load_folder(Path(scan_dir), resample_nonuniform=resample_nonuniform, progress=False)
    train = sorted((s for s in scans if s.scan_id in ids), key=lambda s: s.scan_id)
    if train:
        ref = compute_reference_stats(model=model, scans=train, input_spec=card.input_spec, max_scans=max_scans)
        write_card_file(Path(checkpoint), card.replace(reference_stats=ref))
    return Path(checkpoint)


def predict_folder(
    *,
    checkpoint: str | Path,
    input_dir: str | Path,
    out_dir: str | Path,
    device: str = "auto",
    amp: str = "auto",
    overlap: float = 0.5,
    sw_batch_size: int = 4,
    tta: bool = False,
    save_maps: bool = False,
    preview: bool = False,
    adapt: str = "off",
    progress: bool = True,
    scan_ids: Sequence[str] | None = None,
    shard: tuple[int, int] | None = None,
    prefetch: int | None = None,
    threshold: float | None = None,
) -> dict[str, Any]:
    """Detect lesions in every scan of a folder; writes ``predictions.csv`` / ``.json``.

    Args:
        checkpoint: checkpoint folder (``model.safetensors`` + ``model_card.json``).
        input_dir: scan folder.
        out_dir: output folder; scans already complete there are skipped.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        amp: ``auto`` (bf16 on CUDA, off on CPU), ``bf16``, ``fp16`` or ``off``.
        overlap: sliding-window overlap in [0, 1).
        sw_batch_size: windows per forward pass.
        tta: average over flips.
        save_maps: write heatmap/size/malignancy maps as NIfTI in the input's geometry.
        preview: write PNG slices through each lesion.
        adapt: ``off`` or ``auto`` (adapt BN statistics when the shift test flags the batch).
        progress: show a progress bar.
        scan_ids: predict only these scan ids of the folder.
        shard: ``(rank, world_size)``: predict only this rank's round-robin share of the
            sorted scans and skip the merged tables (see :func:`merge_predictions`).
        prefetch: scans read and preprocessed ahead in parallel threads while the network
            runs (default: 1 on the CPU, half the CPU cores up to 8 on a GPU).
        threshold: detection threshold in (0, 1) replacing the model card's (``None``: the card's).

    Returns:
        Summary dict: ``n_scans``, ``n_done``, ``n_skipped``, ``n_failed``, ``failures``,
        ``outputs`` (paths), ``timings``.

    Example:
        >>> predict_folder(checkpoint="runs/tiny/checkpoint", input_dir="sample_data/ct_site_b",
        ...                out_dir="preds")  # doctest: +SKIP
    """
    from medmtl.engine.predict import predict_folder as _predict
    from medmtl.shift.gate import gate_predictor

    return _predict(
        gate=gate_predictor,
        checkpoint=Path(checkpoint),
        input_dir=Path(input_dir),
        out_dir=Path(out_dir),
        device=device,
        amp=amp,
        overlap=overlap,
        sw_batch_size=sw_batch_size,
        tta=tta,
        save_maps=save_maps,
        preview=preview,
        adapt=adapt,
        progress=progress,
        scan_ids=scan_ids,
        shard=shard,
        prefetch=prefetch,
        threshold=threshold,
    )


def torchrun_shard() -> tuple[int, int] | None:
    """``(rank, world_size)`` when this process is one of several started by ``torchrun``
    (``RANK`` / ``WORLD_SIZE`` in the environment, ``WORLD_SIZE > 1``), else ``None``.

    Raises:
        MedmtlError: ``RANK`` / ``WORLD_SIZE`` are not valid integers.
    """
    from medmtl.engine.predict_dist import torchrun_shard as _shard

    return _shard()


def predict_distributed(*, input_dir: str | Path, out_dir: str | Path, shard: tuple[int, int] | None = None,
                        device: str = "auto", progress: bool = True, **options: Any) -> dict[str, Any]:
    """:func:`predict_folder` as one of the ``torchrun`` processes: this rank's share of the scans, then
    rank 0 merges every rank's records into the tables (see :mod:`medmtl.engine.predict_dist`).

    Args:
        input_dir: scan folder (or file).
        out_dir: the output folder every rank shares.
        shard: ``(rank, world_size)``; default :func:`torchrun_shard`.
        device: ``auto`` / ``cuda`` become ``cuda:LOCAL_RANK`` where there is a GPU.
        progress: show the bar (on rank 0 only).
        **options: the other keywords of :func:`predict_folder` (``checkpoint`` required).

    Returns:
        This rank's summary with ``shard`` and ``merged``; on rank 0 after a merge, the totals of
        all ranks (``n_done``, ``n_failed``, ``outputs`` with the tables...).

    Example:
        >>> # torchrun --nproc_per_node 2 -m medmtl.cli predict --checkpoint ckpt scans -o preds
        >>> predict_distributed(checkpoint="runs/tiny/checkpoint", input_dir="scans", out_dir="preds")  # doctest: +SKIP
    """
    from medmtl.engine.predict_dist import predict_sharded
    from medmtl.errors import ConfigError

    where = shard if shard is not None else torchrun_shard()
    if where is None:
        raise ConfigError("predict_distributed needs a shard: run it under torchrun (RANK and WORLD_SIZE set, "
                          "WORLD_SIZE > 1) or pass shard=(rank, world_size)")
    return predict_sharded(predict=predict_folder, merge=merge_predictions, shard=where, input_dir=input_dir,
                           out_dir=out_dir, device=device, progress=progress, **options)


def detect_classical(
    *,
    input_dir: str | Path,
    out_dir: str | Path,
    max_lesions: int = 50,
    progress: bool = False,
    overwrite: bool = False,
    scan_ids: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Detect lung nodules with the classical, training-free reference detector (the floor).

    Multi-scale Hessian dot enhancement in the lungs (Li, Sone & Doi, Med. Phys. 2003), diameters
    from the HU excess and a fixed size/calcification malignancy prior; see
    :mod:`medmtl.engine.classical`. CT only. Writes the same ``predictions.csv`` / ``.json`` /
    ``failures.json`` as :func:`predict_folder` (provenance ``method: classical``), so
    :func:`evaluate` scores it unchanged.

    Args:
        input_dir: folder of CT scans (HU).
        out_dir: output folder; a rerun with the same settings skips finished scans, a folder
            holding other predictions is refused unless ``overwrite``.
        max_lesions: at most this many detections per scan (≥ 1).
        progress: show a progress bar.
        overwrite: remove earlier predictions in ``out_dir`` first.
        scan_ids: run only these scan ids of the folder.

    Returns:
        Summary dict: ``n_scans``, ``n_done``, ``n_skipped``, ``n_failed``, ``failures``,
        ``outputs`` (paths), ``timings``, ``method``, ``run_key``.

    Example:
        >>> detect_classical(input_dir="sample_data/ct_site_a", out_dir="preds/classical")  # doctest: +SKIP
    """
    from medmtl.engine.classical_run import detect_folder

    return detect_folder(input_dir=Path(input_dir), out_dir=Path(out_dir), max_lesions=max_lesions,
                         progress=progress, overwrite=overwrite,
                         scan_ids=list(scan_ids) if scan_ids is not None else None)


def fuse_predictions(
    *,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    radius_mm: float = 5.0,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Combine two or more detectors' prediction folders by noisy-OR (see :mod:`medmtl.engine.fusion`).

    Detections of different systems within ``radius_mm`` are one candidate scored
    ``1 - Π (1 - p_k)``; its centre, diameter and malignancy are the first input's where it has
    one (give the learned model first). No parameter is fitted to labels. Writes the same
    ``predictions.csv`` / ``.json`` / ``failures.json`` as :func:`predict_folder` (provenance
    ``method: fusion`` with each input's folder and hash), so :func:`evaluate` scores it unchanged.

    Args:
        inputs: prediction folders (``medmtl predict`` / ``classical`` / ``fuse`` outputs) of the
            same scans, the primary first.
        out_dir: output folder (not one of the inputs); a folder holding other predictions is
            refused unless ``overwrite``.
        radius_mm: matching distance, mm, in (0, 50].
        overwrite: replace earlier predictions in ``out_dir``.

    Returns:
        Summary dict: ``n_scans``, ``n_done``, ``n_failed``, ``failures`` (scans some input lacks),
        ``outputs`` (paths), ``method``, ``run_key``.

    Example:
        >>> fuse_predictions(inputs=["preds/model", "preds/classical"], out_dir="preds/fused")  # doctest: +SKIP
    """
    from medmtl.engine.fusion import fuse_folders

    return fuse_folders(inputs=[Path(p) for p in inputs], out_dir=Path(out_dir), radius_mm=radius_mm,
                        overwrite=overwrite)


def load_predictor(*, checkpoint: str | Path, device: str = "cpu", overlap: float = 0.5) -> Any:
    """Build the predictor of a checkpoint folder (its model card alone decides preprocessing).

    Args:
        checkpoint: checkpoint folder (``model.safetensors`` + ``model_card.json``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        overlap: sliding-window overlap in [0, 1).

    Returns:
        A :class:`medmtl.engine.inference.Predictor`: ``preprocess(scan)`` → a prepared scan
        (``image (C, I, J, K)``, ``affine_ras``), ``model`` (eval mode), ``roi_size`` (the
        sliding-window size, voxels), ``infer(prepared)`` → detections and maps.

    Example:
        >>> predictor = load_predictor(checkpoint="runs/tiny/checkpoint")  # doctest: +SKIP
    """
    from medmtl.engine.inference import Predictor

    return Predictor.from_checkpoint(Path(checkpoint), device=device, overlap=overlap)


def merge_predictions(*, input_dir: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Merge the per-scan results of a sharded :func:`predict_folder` run into the final tables.

    Writes ``predictions.csv``, ``predictions.json`` and ``failures.json`` in ``out_dir``;
    scans of ``input_dir`` without a result are listed as missing.

    Example:
        >>> merge_predictions(input_dir="sample_data/ct_site_b", out_dir="preds")  # doctest: +SKIP
    """
    from medmtl.engine.predict import merge_folder

    return merge_folder(input_dir=Path(input_dir), out_dir=Path(out_dir))


def export_predictions(
    *, pred_dir: str | Path, out_dir: str | Path, formats: Sequence[str], scans_dir: str | Path | None = None
) -> dict[str, Any]:
    """Convert a prediction folder's lesions into DICOM SEG / SR or MONAI detection JSON, without the model.

    ``formats``: any of ``"dicom-seg"``, ``"dicom-sr"`` (DICOM inputs only; needs
    ``medmtl[dicom]``) and ``"monai-json"``. Sources are found from the per-scan records, or
    under ``scans_dir`` when given. See :mod:`medmtl.engine.export`.

    Example:
        >>> export_predictions(pred_dir="preds", out_dir="dicom_out", formats=["dicom-seg", "dicom-sr"])  # doctest: +SKIP
    """
    from medmtl.engine.export import export_predictions as _export

    return _export(pred_dir=Path(pred_dir), out_dir=Path(out_dir), formats=list(formats),
                   scans_dir=Path(scans_dir) if scans_dir is not None else None)


def export_bundle(*, checkpoint: str | Path, out_dir: str | Path) -> dict[str, Any]:
    """Write a checkpoint as a MONAI bundle (``configs/``, ``models/model.pt``, ``docs/``) that
    ``python -m monai.bundle run`` executes on a scan folder. See :mod:`medmtl.engine.bundle`.

    Example:
        >>> export_bundle(checkpoint="runs/tiny/checkpoint", out_dir="bundle")  # doctest: +SKIP
    """
    from medmtl.engine.bundle import export_bundle as _export

    return _export(checkpoint=Path(checkpoint), out_dir=Path(out_dir))


def predict_bundle(
    *, bundle_root: str | Path, input_dir: str | Path, out_dir: str | Path, device: str = "auto", overlap: float = 0.5
) -> dict[str, Any]:
    """:func:`predict_folder` with the model of a bundle written by :func:`export_bundle` (the
    entry point of its ``configs/inference.json``); the same lesions as the checkpoint gives.

    Example:
        >>> predict_bundle(bundle_root="bundle", input_dir="sample_data/ct_site_b", out_dir="preds")  # doctest: +SKIP
    """
    from medmtl.engine.bundle import bundle_checkpoint

    with bundle_checkpoint(Path(bundle_root)) as checkpoint:
        return predict_folder(checkpoint=checkpoint, input_dir=input_dir, out_dir=out_dir, device=device,
                              overlap=overlap, progress=False)


def evaluate(
    *,
    predictions: str | Path,
    annotations: str | Path,
    out_dir: str | Path,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Score predictions against annotations (LUNA16 CPM/FROC, diameter MAE, malignancy AUC/ECE).

    Writes ``metrics.json``, ``metrics.md`` and plots (FROC, Bland-Altman, reliability) to
    ``out_dir``; returns the metrics dict. ``progress``: a bar over the bootstrap replicates.

    Example:
        >>> m = evaluate(predictions="preds/predictions.csv",
        ...              annotations="sample_data/ct_site_b/annotations.csv", out_dir="eval")  # doctest: +SKIP
        >>> m["cpm"]  # doctest: +SKIP
    """
    from medmtl.engine.evaluate import evaluate_files

    return evaluate_files(
        predictions=Path(predictions),
        annotations=Path(annotations),
        out_dir=Path(out_dir),
        n_bootstrap=n_bootstrap,
        seed=seed,
        progress=progress,
    )


def diagnose(
    *,
    source: str | Path,
    target: str | Path,
    out_dir: str | Path,
    checkpoint: str | Path | None = None,
    rank_encoders: bool = False,
    n_permutations: int = 1000,
    seed: int = 0,
    progress: bool = False,
    device: str = "auto",
) -> dict[str, Any]:
    """Measure domain shift between a source (scan folder or file, or a checkpoint) and a target
    folder (or file).

    Writes ``report.json``, a self-contained ``report.html`` and ``report.md`` (both open with a
    plain-language reading, ``report["reading"]``); returns the report dict (fingerprints, tests
    with p-values, BN shift, verdict). ``progress``: a bar over the stages. ``device``: where the
    feature network runs (``auto``: the first GPU if there is one, else the CPU; ``cpu``,
    ``cuda``, ``cuda:N``).

    Example:
        >>> rep = diagnose(source="sample_data/ct_site_a", target="sample_data/ct_site_b",
        ...                out_dir="shift")  # doctest: +SKIP
        >>> rep["verdict"]  # doctest: +SKIP
    """
    from medmtl.engine.inference import resolve_device
    from medmtl.io.outputs import check_outputs, record_outputs
    from medmtl.shift.report import run_diagnose

    report_files = ("report.json", "report.html", "report.md")
    check_outputs(Path(out_dir), report_files)  # before any work: never replace the user's files
    dev = str(resolve_device(device))
    report = run_diagnose(
        source=Path(source),
        target=Path(target),
        out_dir=Path(out_dir),
        checkpoint=Path(checkpoint) if checkpoint is not None else None,
        rank_encoders=rank_encoders,
        n_permutations=n_permutations,
        seed=seed,
        progress=progress,
        device=dev,
    )
    record_outputs(Path(out_dir), report_files)  # (written at the very end of run_diagnose)
    return report


def list_adaptations() -> list[str]:
    """Registered label-free adaptation methods (``medmtl adapt --method``), sorted."""
    from medmtl.shift.adapt import list_adaptations as _list

    return _list()


def read_card(*, checkpoint: str | Path) -> Any:
    """The validated :class:`~medmtl.engine.card.ModelCard` of a checkpoint folder (weights not loaded).

    Raises:
        CheckpointError: missing folder or file, invalid JSON, or an invalid card value.
    """
    from medmtl.engine.checkpoint import read_card as _read

    return _read(Path(checkpoint))


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file (as recorded for weights, checkpoints and input manifests)."""
    from medmtl.io.hashing import sha256_file as _sha

    return _sha(path)


def adapt(
    *,
    checkpoint: str | Path,
    target: str | Path,
    method: str,
    out: str | Path,
    seed: int = 0,
    source: str | Path | None = None,
    device: str = "auto",
    steps: int | None = None,
    lr: float | None = None,
    progress: bool = False,
) -> Path:
    """Adapt a checkpoint to an unlabelled target site; returns the new checkpoint folder.

    Args:
        checkpoint: the source checkpoint folder.
        target: folder of unlabelled target scans.
        method: ``adabn``, ``tent``, ``dann``, ``resim``, ``histmatch`` or ``n4``.
        out: new checkpoint folder (must not exist or be empty).
        seed: random seed.
        source: ``dann`` / ``resim``: labelled source scans (with ``annotations.csv``); default:
            the training data named in the checkpoint's card. ``adabn``: source-site scans (no
            labels) for the statistics-shift variant.
        device: torch device of the adaptation (``auto`` = CUDA if available, ``cpu``, ``cuda``, ``cuda:N``).
        steps: ``tent`` passes over the target patches / ``dann`` and ``resim`` optimisation
            steps (default: the method's own, see :mod:`medmtl.shift.adapt`).
        lr: ``tent`` / ``dann`` / ``resim`` Adam learning rate (default: the method's own).
        progress: progress bars over the stages and the optimisation steps (on stderr).

    Example:
        >>> adapt(checkpoint="runs/tiny/checkpoint", target="sample_data/ct_site_b",
        ...       method="adabn", out="runs/tiny/adabn")  # doctest: +SKIP
    """
    from medmtl.engine.inference import resolve_device
    from medmtl.shift.adapt import run_adapt

    return run_adapt(
        checkpoint=Path(checkpoint),
        target=Path(target),
        method=method,
        out=Path(out),
        seed=seed,
        source=Path(source) if source is not None else None,
        device=str(resolve_device(device)),
        steps=steps,
        lr=lr,
        progress=progress,
    )


# --------------------------------------------------------------------------- helpers for pipelines and notebooks


def version() -> str:
    """The installed medmtl version (``medmtl.__version__``), as recorded in run folders."""
    from medmtl import __version__

    return str(__version__)


def write_table(*, path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: Sequence[str]) -> Path:
    """Write rows as a CSV table with a header, atomically (temporary file, then rename).

    Args:
        path: output file; its parent folders are created.
        rows: one mapping per row; missing keys and ``None`` / NaN become empty cells, floats
            keep full precision.
        fieldnames: the column order.

    Returns:
        ``path``.

    Raises:
        ValueError: a row has a key not in ``fieldnames``.

    Example:
        >>> write_table(path="out/results.csv", rows=[{"a": 1}], fieldnames=["a"])  # doctest: +SKIP
    """
    from medmtl.io.writers import atomic_write_csv

    return atomic_write_csv(Path(path), rows, fieldnames)


def write_json(*, path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON, atomically; its parent folders are created.

    numpy scalars and arrays, tensors, paths and tuples become plain JSON values; NaN and
    infinite floats become ``null``, so the file is always valid JSON.

    Returns:
        ``path``.

    Example:
        >>> write_json(path="out/results.json", obj={"cpm": 0.5})  # doctest: +SKIP
    """
    from medmtl.io.writers import atomic_write_json

    return atomic_write_json(Path(path), obj)


def write_text(*, path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (no newline translation); its parent folders are created.

    Returns:
        ``path``.

    Example:
        >>> write_text(path="out/README.md", text="# results\\n")  # doctest: +SKIP
    """
    from medmtl.io.writers import atomic_write_text

    return atomic_write_text(Path(path), text)


def resolve_config(*, config: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Load, override and validate a training config; return it as a plain dict.

    The same checks as :func:`train` runs first, so a study fails before anything is trained.

    Args:
        config: YAML file (see ``configs/``).
        overrides: ``key=value`` strings, e.g. ``("train.epochs=2", "data.root=...")``.

    Returns:
        The validated config with every default filled in and absolute data paths (what
        ``TrainConfig.to_dict()`` gives).

    Raises:
        ConfigError: unreadable file, unknown key (with did-you-mean), wrong type or value.
        RegistryError: unknown weighting, strategy or encoder.

    Example:
        >>> resolve_config(config="configs/tiny.yaml", overrides=["train.epochs=1"])["train"]["epochs"]  # doctest: +SKIP
        1
    """
    from medmtl.config import load_config

    return load_config(Path(config), overrides=list(overrides)).to_dict()


def scan_ids(*, folder: str | Path) -> list[str]:
    """Sorted, distinct scan ids of a folder (file names; DICOM series UIDs).

    Discovery reads headers only, so this is cheap even for big folders.

    Raises:
        ScanReadError: a missing folder, or one without any scan.

    Example:
        >>> scan_ids(folder="sample_data/ct_site_a")[:2]  # doctest: +SKIP
        ['ct_a_0000', 'ct_a_0001']
    """
    from medmtl.io.discover import discover_scans

    refs, _ = discover_scans(Path(folder))
    return sorted({r.scan_id for r in refs})


def bayes_auc(*, rows: Sequence[Mapping[str, object]]) -> float:
    """Bayes-optimal malignancy AUC of annotation rows (the best AUC any model can reach on them).

    See :func:`medmtl.data.malignancy.bayes_auc`.

    Args:
        rows: ``annotations.csv`` rows (e.g. from :class:`csv.DictReader`) with the columns
            ``malignancy`` (``0`` / ``1``; empty = unlabelled, skipped) and
            ``bayes_malignancy_prob`` (written by the phantom generator).

    Returns:
        AUC of ``bayes_malignancy_prob`` against the labels; ``nan`` with only one class.
    """
    from medmtl.data.malignancy import bayes_auc as _bayes_auc

    return _bayes_auc(rows)


def bayes_auc_interval(
    *, rows: Sequence[Mapping[str, object]], n_boot: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % percentile-bootstrap interval of :func:`bayes_auc` over the labelled lesions.

    See :func:`medmtl.data.malignancy.bayes_auc_interval`.

    Args:
        rows: annotation rows, as for :func:`bayes_auc`.
        n_boot: bootstrap replicates.
        seed: random seed of the resampling.

    Returns:
        ``(low, high)``; ``(nan, nan)`` with only one class.
    """
    from medmtl.data.malignancy import bayes_auc_interval as _interval

    return _interval(rows, n_boot=n_boot, seed=seed)
