"""CLI command ``medmtl fuse``: combine detectors' prediction folders (thin wrapper over :mod:`medmtl.api`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medmtl.commands._common import check_out_path, echo_json, handle_errors, json_option, progress_options


@click.command("fuse")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=check_out_path, help="Output folder (not one of the inputs); other predictions there are refused.")
@click.option("--radius-mm", type=click.FloatRange(min=0.0, max=50.0, min_open=True), default=5.0, show_default=True,
              help="Detections of different systems closer than this (mm) are one candidate.")
@click.option("--overwrite", is_flag=True, help="Replace the predictions already in OUT (default: refuse).")
@progress_options
@json_option
@handle_errors
def fuse_cmd(inputs: tuple[Path, ...], out_dir: Path, radius_mm: float, overwrite: bool, progress: bool,
             as_json: bool) -> None:
    """Combine the prediction folders INPUTS (the learned model first) into one by noisy-OR.

    \b
    Detections of different systems within --radius-mm are one candidate, scored 1 - Π(1 - p_k)
    (no parameter fitted to labels; Niemeijer et al., IEEE TMI 2011); centre, diameter and
    malignancy come from the first input that has the candidate. Each input is a folder written by
    `medmtl predict`, `medmtl classical` or `medmtl fuse` on the same scans. Writes
    OUT/predictions.csv, OUT/predictions.json (method "fusion", the inputs and their hashes),
    OUT/failures.json and OUT/scans/, like `medmtl predict`. Exit code 1 when a scan lacks a
    result in some input.

    \b
    Example:
      medmtl predict --checkpoint runs/ct/checkpoint data/site_a -o preds/model
      medmtl classical data/site_a -o preds/classical
      medmtl fuse preds/model preds/classical -o preds/fused
    """
    from medmtl import api

    del progress  # fusing reads tables only: nothing long enough for a progress bar
    summary = api.fuse_predictions(inputs=list(inputs), out_dir=out_dir, radius_mm=radius_mm, overwrite=overwrite)
    if as_json:
        echo_json(summary)
    else:
        click.echo(f"{summary['n_done']} scans fused from {len(inputs)} systems, {summary['n_failed']} failed"
                   f" (noisy-OR, {radius_mm:g} mm); tables in {out_dir}")
    if summary["n_failed"]:
        click.echo(f"Error: {summary['n_failed']} of {summary['n_scans']} scans failed; see "
                   f"{Path(out_dir) / 'failures.json'}", err=True)
        sys.exit(1)


COMMANDS: list[click.Command] = [fuse_cmd]
