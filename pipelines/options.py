"""Command-line options shared by the studies and the parsing of their list and boolean values."""

from __future__ import annotations

import argparse
from typing import Any


def add_run_options(p: argparse.ArgumentParser, *, set_help: str = "training-config override (repeatable)",
                    fast_help: str = "tiny smoke-test settings", overwrite_help: str = "redo finished runs") -> None:
    """Add the options every study shares: ``--device``, ``--n-bootstrap``, ``--set``, ``--fast``,
    ``--overwrite``, ``-v``."""
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--n-bootstrap", type=int, default=None, help="evaluation bootstrap replicates")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help=set_help)
    p.add_argument("--fast", action="store_true", help=fast_help)
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")


def default_device(requested: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def parse_list(text: str | None, cast: Any = str) -> list[Any] | None:
    """``"a,b"`` → ``["a", "b"]`` (each through ``cast``); ``None`` stays ``None``."""
    if text is None:
        return None
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


def parse_bool(text: str) -> bool:
    """``true/false/1/0/yes/no`` → bool.

    Raises:
        ValueError: anything else.
    """
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "y", "on"):
        return True
    if t in ("0", "false", "no", "n", "off"):
        return False
    raise ValueError(f"'{text}' is not a boolean; use true or false")


__all__ = ["add_run_options", "default_device", "parse_bool", "parse_list"]
