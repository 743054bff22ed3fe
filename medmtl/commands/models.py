"""CLI commands about models: ``medmtl encoders`` (see :mod:`medmtl.cli`)."""

from __future__ import annotations

import json

import click

from medmtl.commands._common import handle_errors

COMMANDS: list[click.Command] = []


@click.command("encoders")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@handle_errors
def encoders(as_json: bool) -> None:
    """List the encoders: adapters, weight source, found/missing, path, SHA256, licence.

    \b
    Weights are never downloaded: an encoder is pretrained from a file passed as weights=...,
    from $MEDMTL_WEIGHTS_DIR (e.g. resnet18.pth) or from a package that ships them.
    """
    from medmtl import api

    rows = api.list_encoders()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        status = "found" if row["found"] else "missing"
        click.echo(f"{row['name']}  [{', '.join(row['adapters'])}]  licence: {row['licence']}")
        click.echo(f"    weights {status}: {row['weights_source']}")
        if row["found"]:
            click.echo(f"    path: {row['path']}")
            click.echo(f"    sha256: {row['sha256']}")


COMMANDS.append(encoders)
