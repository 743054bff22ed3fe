"""The ``medmtl`` command-line interface: a click group of thin wrappers over :mod:`medmtl.api`.

Commands parse and validate arguments, then call one ``api`` function with keyword arguments.
Heavy imports (torch, monai) happen inside the commands so ``medmtl --help`` is instant.
Exit codes: 0 success, 1 a scan or the job failed (one ``Error:`` line), 2 usage errors.
"""

from __future__ import annotations

import logging

import click

from medmtl import __version__
from medmtl.commands._common import CONTEXT_SETTINGS, handle_errors

__all__ = ["main", "handle_errors"]

@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="medmtl")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """medmtl: ImageNet encoders adapted to 3D CT/MRI, multi-task lesion heads, domain shift.

    \b
    Typical session:
      medmtl sample-data data/site_a --kind ct --site a --n 12
      medmtl inspect data/site_a
      medmtl train --config configs/tiny.yaml --out runs/tiny
      medmtl predict --checkpoint runs/tiny/checkpoint data/site_b -o preds
      medmtl evaluate --predictions preds/predictions.csv --annotations data/site_b/annotations.csv -o eval
      medmtl diagnose --source data/site_a --target data/site_b -o shift
    """
    level = logging.WARNING if verbose == 0 else (logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _register_commands() -> None:
    """Attach the command groups (each module keeps its heavy imports inside its commands)."""
    from medmtl.commands import classical, data, export, fusion, inference, models, shift, training

    for module in (data, models, training, inference, classical, fusion, shift, export):
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register_commands()


if __name__ == "__main__":  # python -m medmtl.cli
    main()
