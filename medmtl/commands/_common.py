"""Shared pieces of the CLI commands: error handling and click context settings."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def handle_errors(func: F) -> F:
    """Turn :class:`medmtl.errors.MedmtlError` and :class:`OSError` (a path the user gave that cannot
    be read or written: too long a name, no permission, a full disk) into one ``Error:`` line and
    exit code 1."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medmtl.errors import MedmtlError

        try:
            return func(*args, **kwargs)
        except MedmtlError as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(1)
        except OSError as exc:
            from medmtl.io.outputs import describe_os_error

            click.echo(f"Error: {describe_os_error(exc)}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("Error: interrupted by the user", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def check_out_path(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """click callback of every output-folder option: refuse, before any work, a path that cannot be
    created (too long a name, a file where a folder is needed, a folder that is not writable)."""
    if value is None:
        return value
    from pathlib import Path

    from medmtl.io.outputs import output_path_problem

    problem = output_path_problem(Path(value))
    if problem is not None:
        raise click.BadParameter(f"'{value}' cannot be used as an output folder: {problem}")
    return value


def check_in_file(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """click callback of every input-file option (configs, tables): refuse a FIFO, socket or device,
    which would block the read forever."""
    if value is None:
        return value
    from pathlib import Path

    from medmtl.io.outputs import special_file_problem

    problem = special_file_problem(Path(value))
    if problem is not None:
        raise click.BadParameter(problem)
    return value


def json_option(func: F) -> F:
    """``--json``: print one summary object to stdout instead of the human-readable lines."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON summary object to stdout (the numbers of the written files).")(func)


def echo_json(obj: Any) -> None:
    """Print ``obj`` as one JSON object (paths and numpy numbers made plain)."""
    import json

    from medmtl.io.writers import _jsonable

    click.echo(json.dumps(_jsonable(obj), default=str, allow_nan=True))
