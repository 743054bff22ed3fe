"""CLI command ``medmtl classical``: the training-free reference detector (thin wrapper over :mod:`medmtl.api`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from medmtl.commands._common import check_out_path, echo_json, handle_errors, json_option, progress_options


@click.command("classical")
@click.argument("input_dir", type=click.Path(exists=True, path_type=Path))
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=check_out_path, help="Output folder; a rerun skips finished scans, other predictions there are refused.")
@click.option("--max-lesions", type=click.IntRange(min=1), default=50, show_default=True,
              help="At most this many detections per scan.")
@click.option("--overwrite", is_flag=True, help="Replace the predictions already in OUT (default: refuse).")
@progress_options
@json_option
@handle_errors
def classical_cmd(input_dir: Path, out_dir: Path, max_lesions: int, overwrite: bool, progress: bool,
                  as_json: bool) -> None:
    """Detect lung nodules in every CT of INPUT_DIR, a folder or one scan file, without training (the
    floor of every table).

    \b
    Multi-scale Hessian dot filter in the lungs (Li, Sone & Doi, Med. Phys. 2003), diameters from
    the HU excess, a fixed size/calcification malignancy prior. CT only. Writes OUT/predictions.csv,
    OUT/predictions.json (method "classical", settings, timings), OUT/failures.json and per-scan
    records under OUT/scans/, like `medmtl predict`. Exit code 1 when any scan failed.

    \b
    Example:
      medmtl classical sample_data/ct_site_a -o preds/classical
    """
    from medmtl import api

    summary = api.detect_classical(input_dir=input_dir, out_dir=out_dir, max_lesions=max_lesions,
                                   progress=progress, overwrite=overwrite)
    t = summary["timings"]
    if as_json:
        echo_json(summary)
    else:
        click.echo(
            f"{summary['n_done']} detected, {summary['n_skipped']} already complete, {summary['n_failed']} failed"
            f" ({t['scans_per_s']:.2f} scans/s, classical); tables in {out_dir}"
        )
    if summary["n_failed"]:
        total = summary["n_scans"] + sum(1 for f in summary["failures"] if f.get("stage") == "discovery")
        click.echo(f"Error: {summary['n_failed']} of {total} scans failed; see {Path(out_dir) / 'failures.json'}",
                   err=True)
        sys.exit(1)


COMMANDS: list[click.Command] = [classical_cmd]
