"""CLI commands ``medmtl diagnose`` and ``medmtl adapt`` (thin wrappers over :mod:`medmtl.api`).

torch and MONAI are imported inside the calls so ``medmtl --help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path

import click

from medmtl import api
from medmtl.commands._common import (
    check_out_path,
    device_option,
    echo_json,
    handle_errors,
    json_option,
    progress_options,
)

_METHODS = tuple(api.list_adaptations())


@click.command("diagnose")
@click.option("--source", required=True, type=click.Path(exists=True, path_type=Path),
              help="Source scan folder (or one scan file), or a checkpoint folder (its stored reference "
                   "statistics are used).")
@click.option("--target", required=True, type=click.Path(exists=True, path_type=Path),
              help="Target scan folder, or one scan file (the new site).")
@click.option("-o", "--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              callback=check_out_path,
              help="Output folder for report.json, report.html and report.md.")
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Checkpoint whose encoder extracts features and whose heads give prediction shift.")
@click.option("--rank-encoders", is_flag=True, help="Also rank encoders x adapters by LogME (needs annotations.csv).")
@click.option("--n-permutations", type=click.IntRange(min=1), default=1000, show_default=True,
              help="Permutations per test (>= 200 to reach p < 0.01).")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@device_option
@progress_options
@json_option
@handle_errors
def diagnose_cmd(source: Path, target: Path, out_dir: Path, checkpoint: Path | None, rank_encoders: bool,
                 n_permutations: int, seed: int, device: str, progress: bool, as_json: bool) -> None:
    """Measure domain shift between a source and a target cohort.

    \b
    Writes OUT/report.json, a self-contained OUT/report.html and OUT/report.md (a plain-language
    reading first, then the verdict, fingerprints, MMD and domain-classifier tests with p-values,
    BatchNorm shift per layer).

    \b
    Example:
      medmtl diagnose --source sample_data/ct_site_a --target sample_data/ct_site_b -o shift
    """
    from medmtl import api

    rep = api.diagnose(source=source, target=target, out_dir=out_dir, checkpoint=checkpoint,
                       rank_encoders=rank_encoders, n_permutations=n_permutations, seed=seed, progress=progress,
                       device=device)
    verdict = rep["verdict"]
    if as_json:
        echo_json({"verdict": verdict, "reading": rep.get("reading"), "shift_test": rep.get("shift_test"),
                   "report": str(Path(out_dir) / "report.html"),
                   "source": rep["source"], "target": rep["target"]})
        return
    label = {"no_shift": "no shift", "shift": "SHIFT", "outside_domain": "OUTSIDE THE TRAINING DOMAIN",
             "not_tested": "NOT TESTED"}
    click.echo(f"{label.get(verdict.get('kind'), 'SHIFT' if verdict['shift'] else 'no shift')}: {verdict['text']}")
    click.echo(f"report: {Path(out_dir) / 'report.html'}")


@click.command("adapt")
@click.option("--checkpoint", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Source checkpoint folder.")
@click.option("--target", required=True, type=click.Path(exists=True, path_type=Path),
              help="Folder of unlabelled target scans (or one scan file).")
@click.option("--method", required=True, type=click.Choice(_METHODS),
              help="adabn | tent | dann | resim (re-simulate the source scans at the target's acquisition) | histmatch | n4 (MRI).")
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path), callback=check_out_path,
              help="New checkpoint folder (must not exist or be empty).")
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="dann, resim: labelled source scans with annotations.csv (default: the card's training data); "
                   "adabn: source-site scans (no labels) to shift the BN statistics by the target - source "
                   "difference instead of replacing them.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@device_option
@click.option("--steps", type=int, default=None,
              help="tent: passes over the target patches (default 1); dann / resim: optimisation steps (default 20 / 100).")
@click.option("--lr", type=float, default=None, help="tent / dann / resim learning rate (default 1e-3 / 1e-4 / 1e-4).")
@progress_options
@json_option
@handle_errors
def adapt_cmd(checkpoint: Path, target: Path, method: str, out: Path, source: Path | None, seed: int,
              device: str, steps: int | None, lr: float | None, progress: bool, as_json: bool) -> None:
    """Adapt a checkpoint to an unlabelled target site; writes a new checkpoint.

    \b
    Example:
      medmtl adapt --checkpoint runs/tiny/checkpoint --target sample_data/ct_site_b --method adabn -o runs/adabn
      medmtl adapt --checkpoint runs/tiny/checkpoint --target sample_data/ct_site_b --method resim \\
          --source sample_data/ct_site_a -o runs/resim
    """
    if source is not None and method not in ("dann", "resim", "adabn"):
        raise click.UsageError("--source is only used by --method dann, resim and adabn")
    from medmtl import api

    if (steps is not None or lr is not None) and method not in ("tent", "dann", "resim"):
        raise click.UsageError("--steps and --lr are only used by --method tent, dann and resim")
    folder = api.adapt(checkpoint=checkpoint, target=target, method=method, out=out, seed=seed, source=source,
                       device=device, steps=steps, lr=lr, progress=progress)
    if as_json:
        record = api.read_card(checkpoint=folder).adaptation[-1]
        echo_json({"checkpoint": str(folder), "adaptation": record.to_dict()})
    else:
        click.echo(f"adapted checkpoint: {folder}")


COMMANDS: list[click.Command] = [diagnose_cmd, adapt_cmd]
