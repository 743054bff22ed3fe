"""Shared pieces of the CLI commands: error handling, click context settings and the options every
command spells the same way (``-o/--out`` checks, ``--device``, ``--json``, ``-q/--quiet``)."""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
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


DEVICE_HELP = "auto (CUDA if available, else CPU), cpu, cuda or cuda:N."


def check_device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """click callback of every ``--device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (lower-cased)."""
    if value is None:
        return None
    v = value.strip().lower()
    if v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit()):
        return v
    raise click.BadParameter(f"'{value}' is not allowed; use auto, cpu, cuda or cuda:N")


def device_option(func: F) -> F:
    """``--device`` with the same default (``auto``) and the same check on every command."""
    return click.option("--device", default="auto", show_default=True, callback=check_device,
                        help=DEVICE_HELP)(func)


@contextlib.contextmanager
def _only_errors() -> Iterator[None]:
    """Within the block: no log record below ERROR and no Python warning reaches stderr."""
    import logging
    import warnings

    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def progress_options(func: F) -> F:
    """``-q/--quiet`` and ``--no-progress`` on a command that can take more than a few seconds.

    The command function receives ``progress: bool`` in their place: progress bars with ETA on
    stderr when stderr is a terminal (:func:`medmtl.progress.show_progress`), unless
    ``--no-progress`` (bars only, the option's old meaning) or ``--quiet``, which also keeps
    warnings and log lines off stderr, so it carries errors only.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, quiet: bool = False, no_progress: bool = False, **kwargs: Any) -> Any:
        from medmtl.progress import show_progress

        if not quiet:
            return func(*args, progress=show_progress(no_progress), **kwargs)
        with _only_errors():
            return func(*args, progress=False, **kwargs)

    opts = [click.option("-q", "--quiet", is_flag=True,
                         help="Errors only on stderr: no progress bars (shown on a terminal only), no warnings."),
            click.option("--no-progress", is_flag=True, help="No progress bars (warnings still shown).")]
    for opt in reversed(opts):
        wrapper = opt(wrapper)
    return wrapper  # type: ignore[return-value]
