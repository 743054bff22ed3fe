"""Manifests: lists of scan paths relative to the manifest's folder, resolved safely.

Every path read from a manifest or a datalist goes through :func:`resolve_under`, which
refuses absolute paths outside the root and ``..`` escapes (DESIGN.md, "Reliability and
security rules").
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from medmtl.errors import PathEscapeError, ScanReadError


def resolve_under(root: str | Path, relpath: str | Path) -> Path:
    """Resolve a manifest entry under its root folder, refusing escapes.

    Relative paths are taken from ``root``; absolute paths are accepted only when they lie
    under ``root``. Symbolic links are followed, so a link pointing outside ``root`` is
    refused too.

    Args:
        root: the folder the manifest's paths are relative to (usually the manifest's folder).
        relpath: the path as written in the manifest.

    Returns:
        The resolved absolute path (it need not exist).

    Raises:
        PathEscapeError: the path resolves outside ``root``.
    """
    base = Path(root).resolve()
    given = Path(relpath)
    candidate = (given if given.is_absolute() else base / given).resolve()
    if candidate != base and base not in candidate.parents:
        raise PathEscapeError(
            f"manifest path '{relpath}' resolves to {candidate}, outside the manifest folder {base}; "
            f"allowed: paths under {base} (no '..' escapes); fix: move the file under that folder "
            "or correct the path"
        )
    return candidate


def _entries_from_json(data: Any, path: Path) -> list[tuple[str, str]]:
    """``(where, relpath)`` pairs from a JSON list, ``{"scans": [...]}`` or a MONAI datalist."""
    out: list[tuple[str, str]] = []
    if isinstance(data, list):
        items: list[tuple[str, Any]] = [(f"entry {i + 1}", v) for i, v in enumerate(data)]
    elif isinstance(data, dict):
        items = []
        for key, value in data.items():
            if isinstance(value, list):
                items.extend((f"{key}[{i}]", v) for i, v in enumerate(value))
    else:
        raise ScanReadError(
            f"manifest {path}: top level is {type(data).__name__}; expected a list of paths or a "
            "datalist object with lists of {'image': path} entries"
        )
    for where, value in items:
        if isinstance(value, dict):
            value = value.get("image")
        if not isinstance(value, str) or not value:
            raise ScanReadError(
                f"manifest {path} {where}: {value!r} is not a path; expected a string path "
                "relative to the manifest's folder"
            )
        out.append((where, value))
    return out


def read_manifest(path: str | Path, *, must_exist: bool = True) -> list[Path]:
    """Read a manifest: a list of scan paths relative to the manifest's folder.

    Accepted forms: a JSON list of paths; a JSON object whose list values hold paths or
    ``{"image": path, ...}`` entries (MONAI datalists); a CSV with a ``path`` or ``image``
    column (else its first column).

    Args:
        path: the manifest file (``.json`` or ``.csv``).
        must_exist: raise when a listed file does not exist.

    Returns:
        Resolved absolute paths, in manifest order.

    Raises:
        PathEscapeError: an entry escapes the manifest's folder.
        ScanReadError: the manifest cannot be parsed, or a listed file is missing.
    """
    mpath = Path(path)
    root = mpath.parent
    try:
        text = mpath.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScanReadError(f"manifest {mpath} cannot be read ({exc}); expected a UTF-8 JSON or CSV file") from exc
    if mpath.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScanReadError(f"manifest {mpath} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
        except RecursionError:
            raise ScanReadError(f"manifest {mpath} is nested too deeply to parse; expected a list of scans") from None
        entries = _entries_from_json(data, mpath)
    elif mpath.suffix.lower() == ".csv":
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            raise ScanReadError(f"manifest {mpath} is empty; expected a header row and one path per row")
        header = [h.strip() for h in rows[0]]
        col = next((header.index(c) for c in ("path", "image") if c in header), 0)
        entries = [(f"row {i}", r[col].strip()) for i, r in enumerate(rows[1:], start=1) if r and r[col].strip()]
    else:
        raise ScanReadError(f"manifest {mpath}: suffix '{mpath.suffix}' not supported; allowed: .json, .csv")
    resolved: list[Path] = []
    for where, rel in entries:
        p = resolve_under(root, rel)
        if must_exist and not p.exists():
            raise ScanReadError(
                f"manifest {mpath} {where}: file '{rel}' does not exist (looked at {p}); "
                "fix the path (relative to the manifest's folder)"
            )
        resolved.append(p)
    return resolved
