"""Scan splits of the pipelines: deterministic id splits, annotation subsets, id lists for overrides."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from medmtl import api


def split_ids(ids: Sequence[str], *, n_test: int, n_val: int) -> tuple[list[str], list[str], list[str]]:
    """Deterministic split of sorted scan ids: the last ``n_test`` → test, the ``n_val`` before → val.

    Returns:
        ``(train, val, test)``.

    Raises:
        ValueError: fewer than ``n_test + n_val + 1`` scans.
    """
    ids = sorted(ids)
    if len(ids) < n_test + n_val + 1:
        raise ValueError(
            f"need at least {n_test + n_val + 1} scans for {n_test} test and {n_val} validation scans,"
            f" got {len(ids)}; lower --n-test/--n-val or use a bigger folder"
        )
    test = ids[len(ids) - n_test:] if n_test else []
    val = ids[len(ids) - n_test - n_val: len(ids) - n_test] if n_val else []
    train = ids[: len(ids) - n_test - n_val]
    return train, val, test


def filter_annotations(src: Path, dst: Path, keep_ids: Iterable[str]) -> Path:
    """Copy the rows of an annotation CSV whose ``seriesuid`` is in ``keep_ids`` (header kept)."""
    keep = set(keep_ids)
    with open(src, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if (r.get("seriesuid") or "").strip() in keep]
    return api.write_table(path=dst, rows=rows, fieldnames=fields)


def id_list(ids: Sequence[str]) -> str:
    """A YAML flow list of ids for a ``key=value`` override, e.g. ``[a, b]``."""
    return "[" + ", ".join(json.dumps(i) for i in ids) + "]"


__all__ = ["filter_annotations", "id_list", "split_ids"]
