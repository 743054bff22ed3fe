"""CLI commands (see medmtl.cli)."""

from __future__ import annotations

import click

COMMANDS: list[click.Command] = []
