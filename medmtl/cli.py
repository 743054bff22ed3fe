"""The ``medmtl`` command-line interface: a click group of thin wrappers over :mod:`medmtl.api`.

Commands parse and validate arguments, then call one ``api`` function with keyword arguments.
Heavy imports (torch, monai) happen inside the commands so ``medmtl --help`` is instant.
Exit codes: 0 success, 1 a scan or the job failed (one ``Error:`` line), 2 usage errors.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from medmtl import __version__

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def handle_errors(func: F) -> F:
    """Turn :class:`medmtl.errors.MedmtlError` into one ``Error:`` line and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medmtl.errors import MedmtlError

        try:
            return func(*args, **kwargs)
        except MedmtlError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Error: interrupted by the user", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


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
    from medmtl.commands import data, inference, models, shift, training

    for module in (data, models, training, inference, shift):
        for cmd in module.COMMANDS:
            main.add_command(cmd)


_register_commands()
