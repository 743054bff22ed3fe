"""CLI commands ``medmtl predict`` and ``medmtl evaluate`` (thin wrappers over :mod:`medmtl.api`).

Each command validates its arguments with click and calls one ``api`` function with keyword
arguments; torch and MONAI are imported inside the calls so ``medmtl --help`` stays instant.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import click

from medmtl.commands._common import (
    check_in_file,
    check_out_path,
    device_option,
    echo_json,
    handle_errors,
    json_option,
    progress_options,
)


@click.command("predict")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Checkpoint folder (model.safetensors + model_card.json).")
@click.argument("input_dir", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=check_out_path,
              help="Output folder; scans already complete there are skipped.")
@device_option
@click.option("--amp", type=click.Choice(["auto", "bf16", "fp16", "off"]), default="auto", show_default=True,
              help="Mixed precision: auto = bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16/AMX; MEDMTL_CPU_BF16=0 turns it off), off on other CPUs.")
@click.option("--overlap", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.5, show_default=True,
              help="Sliding-window overlap.")
@click.option("--sw-batch-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Windows per forward pass.")
@click.option("--tta", is_flag=True, help="Average over flips (4 forward passes per window).")
@click.option("--save-maps", is_flag=True, help="Write heatmap/diameter/malignancy maps as NIfTI in each input's geometry.")
@click.option("--preview", is_flag=True, help="Write PNG slices through each predicted lesion.")
@click.option("--adapt", type=click.Choice(["off", "auto"]), default="off", show_default=True,
              help="auto: adapt BatchNorm statistics when the shift test flags the batch.")
@click.option("--prefetch", type=click.IntRange(min=1), default=None,
              help="Scans read and preprocessed ahead in parallel threads [default: 1 on CPU; on a GPU half "
                   "the CPU cores, at most 8].")
@click.option("--threshold", type=click.FloatRange(0.0, 1.0, min_open=True, max_open=True), default=None,
              help="Detection threshold replacing the model card's (a lower one lists more candidates).")
@progress_options
@json_option
@handle_errors
def predict_cmd(
    checkpoint: Path, input_dir: Path, out_dir: Path, device: str, amp: str, overlap: float,
    sw_batch_size: int, tta: bool, save_maps: bool, preview: bool, adapt: str, prefetch: int | None,
    threshold: float | None, progress: bool, as_json: bool,
) -> None:
    """Detect lesions in every scan of INPUT_DIR, a folder or one scan file (lesions in LPS mm).

    \b
    Writes OUT/predictions.csv, OUT/predictions.json (provenance, timings), OUT/failures.json,
    per-scan records under OUT/scans/ (a rerun skips complete scans) and, on request, maps and
    previews. Exit code 1 when any scan failed.

    \b
    Under torchrun each process predicts its share of the scans (by RANK, on cuda:LOCAL_RANK
    with --device auto) and rank 0 merges the tables.

    \b
    Examples:
      medmtl predict --checkpoint runs/tiny/checkpoint data/site_b -o preds --save-maps
      torchrun --nproc_per_node 2 -m medmtl.cli predict --checkpoint runs/tiny/checkpoint data/site_b -o preds
    """
    from medmtl import api

    options: dict[str, Any] = dict(
        checkpoint=checkpoint, input_dir=input_dir, out_dir=out_dir, device=device, amp=amp, overlap=overlap,
        sw_batch_size=sw_batch_size, tta=tta, save_maps=save_maps, preview=preview, adapt=adapt, progress=progress,
        prefetch=prefetch, threshold=threshold)
    shard = api.torchrun_shard()
    summary = api.predict_folder(**options) if shard is None else api.predict_distributed(shard=shard, **options)
    if shard is not None and not _rank_reports(summary, shard):
        return
    t = summary["timings"]
    if as_json:
        echo_json(summary)
    else:
        click.echo(
            f"{summary['n_done']} predicted, {summary['n_skipped']} already complete, {summary['n_failed']} failed"
            f" ({t['scans_per_s']:.2f} scans/s on {summary['device']}, amp {summary['amp']}); "
            + (f"tables in {out_dir}" if shard is None or summary.get("merged") else
               f"this rank's records in {Path(out_dir) / 'scans'}")
        )
    if summary["n_failed"]:
        total = summary["n_scans"] + sum(1 for f in summary["failures"] if f.get("stage") == "discovery")
        click.echo(
            f"Error: {summary['n_failed']} of {total} scans failed; "
            f"see {Path(out_dir) / 'failures.json'}",
            err=True,
        )
        sys.exit(1)


def _rank_reports(summary: dict[str, object], shard: tuple[int, int]) -> bool:
    """Whether this torchrun rank prints the summary: rank 0 after the merge; without a rendezvous
    (nothing merged) every rank, after a line saying how to get the tables."""
    if summary.get("merged"):
        return True
    if summary.get("rendezvous"):  # rank 0 reports the merged run
        return False
    logging.getLogger("medmtl.predict").warning(
        "rank %d of %d: predicted this rank's share only (no MASTER_ADDR/MASTER_PORT to meet the other ranks, so "
        "no merged tables); run the same medmtl predict without RANK and WORLD_SIZE afterwards: it skips the "
        "finished scans and writes the tables", shard[0], shard[1])
    return True


@click.command("evaluate")
@click.option("--predictions", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=check_in_file,
              help="predictions.csv (seriesuid,coordX,coordY,coordZ,probability[,diameter_mm,malignancy_prob]).")
@click.option("--annotations", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=check_in_file,
              help="annotations.csv (LUNA16 columns, LPS mm) or a MONAI datalist JSON.")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=check_out_path,
              help="Output folder for metrics.json, metrics.md and the plots.")
@click.option("--n-bootstrap", type=click.IntRange(min=0), default=1000, show_default=True,
              help="Bootstrap replicates for the 95% intervals (scans resampled).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Bootstrap seed.")
@progress_options
@json_option
@handle_errors
def evaluate_cmd(predictions: Path, annotations: Path, out_dir: Path, n_bootstrap: int, seed: int,
                 progress: bool, as_json: bool) -> None:
    """Score predictions: LUNA16 CPM/FROC, diameter MAE, malignancy AUC and calibration.

    \b
    Example:
      medmtl evaluate --predictions preds/predictions.csv \\
          --annotations data/site_b/annotations.csv -o eval
    """
    from medmtl import api

    m = api.evaluate(predictions=predictions, annotations=annotations, out_dir=out_dir,
                     n_bootstrap=n_bootstrap, seed=seed, progress=progress)
    if as_json:
        echo_json(m)
        return
    from medmtl.engine.evaluate import summary_text

    click.echo(summary_text(m, Path(out_dir) / "metrics.md"))


COMMANDS: list[click.Command] = [predict_cmd, evaluate_cmd]
