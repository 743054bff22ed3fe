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


def json_option(func: F) -> F:
    """``--json``: print one summary object to stdout instead of the human-readable lines."""
    return click.option("--json", "as_json", is_flag=True,
                        help="Print one JSON summary object to stdout (the numbers of the written files).")(func)


def echo_json(obj: Any) -> None:
    """Print ``obj`` as one JSON object (paths and numpy numbers made plain)."""
    import json

    from medmtl.io.writers import _jsonable

    click.echo(json.dumps(_jsonable(obj), default=str, allow_nan=True))
