"""Training command: ``medmtl train``.

Heavy imports (torch, monai) happen inside the command so ``medmtl --help`` stays instant.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from medmtl.commands._common import (
    DEVICE_HELP,
    check_device,
    check_in_file,
    check_out_path,
    echo_json,
    handle_errors,
    json_option,
    progress_options,
)


@click.command("train")
@click.option(
    "--config",
    "config",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path), callback=check_in_file,
    help="YAML training config (see configs/ and configs/README.md).",
)
@click.option(
    "-o",
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    callback=check_out_path,
    help="Run folder: resolved config, metrics.csv, TensorBoard events, last/ and checkpoint/.",
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value (YAML syntax), repeatable: --set train.epochs=2 --set train.patch_size=[32,32,32].",
)
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last/ checkpoint.")
@click.option("--overwrite", is_flag=True, help="Replace the medmtl files of an existing, non-empty run folder.")
@click.option("--device", default=None, callback=check_device,
              help=DEVICE_HELP.rstrip(".") + " [default: the config's train.device, auto].")
@progress_options
@json_option
@handle_errors
def train_cmd(config: Path, out_dir: Path, overrides: tuple[str, ...], resume: bool, overwrite: bool,
              device: str | None, progress: bool, as_json: bool) -> None:
    """Train the shared-backbone detection / size / malignancy model from a YAML config.

    Writes the resolved config, metrics.csv (per epoch: task losses and weights, LR, time,
    validation CPM / diameter MAE mm / malignancy AUC), TensorBoard events (tb/),
    gradient_conflict.csv/.json, last/ (resumable) and checkpoint/ (the best model with its
    model card). Under torchrun it trains data-parallel; only rank 0 writes files. On a
    terminal a bar per epoch shows the steps, the task losses and the time left (not with --quiet).

    \b
    Examples:
      medmtl train --config configs/tiny.yaml --out runs/tiny
      medmtl train --config configs/tiny.yaml --out runs/tiny --set train.epochs=5 --overwrite
      medmtl train --config configs/tiny.yaml --out runs/tiny --resume
      torchrun --nproc_per_node 2 -m medmtl.cli train --config configs/tiny.yaml --out runs/ddp
    """
    from medmtl import api
    from medmtl.errors import ConfigError

    if resume and overwrite:
        raise ConfigError("--resume and --overwrite exclude each other; pass one of them")
    ckpt = api.train(config=config, out_dir=out_dir, overrides=list(overrides), resume=resume, overwrite=overwrite,
                     progress=progress, device=device)
    if os.environ.get("RANK", "0") != "0":
        return
    if as_json:
        card = api.read_card(checkpoint=ckpt)
        echo_json({"checkpoint": str(ckpt), "run": str(out_dir),
                   "training": card.training.to_dict() if card.training is not None else None,
                   "decode": card.decode.to_dict()})
    else:
        click.echo(f"checkpoint: {ckpt}")


COMMANDS: list[click.Command] = [train_cmd]
