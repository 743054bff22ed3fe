"""Output folders: where medmtl may write, and which files there it may replace (issue #13).

Two rules, checked before any work is done so that a refusal writes nothing:

* an output path must be creatable: no path component longer than the file system allows,
  no existing file where a folder would have to be, a writable nearest existing folder
  (:func:`output_path_problem`);
* medmtl never replaces a file it did not write. Every output folder keeps a *record*, the
  hidden text file :data:`RECORD_FILE` listing (one per line, relative to the folder) the
  files medmtl writes there; a name ending in ``/`` stands for a whole sub-folder. A command
  records its names *before* writing them (so a killed run's files are still its own), and
  before it starts it refuses a folder in which one of the names it would write already
  exists without being recorded (:func:`check_outputs`). Folders that carry their own record
  of what medmtl wrote (a run folder's ``versions.json``, a data set's ``generation.json``)
  pass those names as ``recorded``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from pathlib import Path

from medmtl.errors import ConfigError

#: The record of the files medmtl wrote into an output folder (see the module docstring).
RECORD_FILE = ".medmtl-outputs"
_RECORD_HEADER = "# files medmtl wrote into this folder (a name ending in / is a whole sub-folder)\n"
#: Hidden files medmtl keeps in an output folder besides its outputs (the record, the writer lock).
BOOKKEEPING = frozenset({RECORD_FILE, ".medmtl.lock"})
_NAME_MAX = 255
_PATH_MAX = 4096


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``lexists``: a dangling link counts)."""
    p = path
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return _NAME_MAX


def output_path_problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an output folder, in words (``None``: it can).

    Checks, without creating anything: the length of each name in the path and of the whole
    path, that no existing file stands where a folder is needed, and that the nearest
    existing folder is writable.
    """
    path = Path(os.path.abspath(path))
    anchor = _nearest_existing(path)
    limit = _name_max(anchor if anchor.is_dir() else anchor.parent)
    for part in path.parts[1:]:
        size = len(os.fsencode(part))
        if size > limit:
            return (f"the name '{part[:24]}…' is {size} bytes long; a file name may have at most {limit} bytes "
                    "here — choose a shorter name")
    if len(os.fsencode(str(path))) > _PATH_MAX:
        return f"the path is {len(os.fsencode(str(path)))} bytes long, over the {_PATH_MAX}-byte limit; choose a shorter path"
    if anchor == path:
        if not path.is_dir():
            return "it is a file, not a folder; pass a folder path (new or one medmtl wrote)"
        folder = path
    elif not anchor.is_dir():
        return f"'{anchor}' is a file, so no folder can be created under it; choose a path outside it"
    else:
        folder = anchor
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"'{folder}' is not writable (permission denied); choose a folder you may write to"
    return None


def check_output_path(path: Path, *, option: str = "-o") -> None:
    """Raise :class:`ConfigError` when :func:`output_path_problem` finds one."""
    problem = output_path_problem(path)
    if problem is not None:
        raise ConfigError(f"{option} '{path}' cannot be used as an output folder: {problem}")


def recorded_outputs(folder: Path) -> set[str]:
    """The names listed in ``folder``'s record (empty when there is none or it is unreadable)."""
    try:
        text = (Path(folder) / RECORD_FILE).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return set()
    return {ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")}


def _is_empty_dir(p: Path) -> bool:
    return p.is_dir() and not p.is_symlink() and not any(True for _ in p.iterdir())


def foreign_outputs(folder: Path, names: Iterable[str], *, recorded: Iterable[str] = ()) -> list[str]:
    """The ``names`` that already exist in ``folder`` but are not recorded as medmtl's.

    An existing empty sub-folder (a name ending in ``/``) is not foreign: nothing in it would
    be replaced.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    ours = recorded_outputs(folder) | set(recorded)
    out = []
    for name in names:
        p = folder / name.rstrip("/")
        parts = name.rstrip("/").split("/")
        inside = {"/".join(parts[:k]) + "/" for k in range(1, len(parts))}  # a recorded sub-folder holds it
        if name in ours or name.rstrip("/") in ours or inside & ours or not os.path.lexists(p):
            continue
        if name.endswith("/") and _is_empty_dir(p):
            continue
        out.append(name)
    return out


def check_outputs(folder: Path, names: Iterable[str], *, option: str = "-o", recorded: Iterable[str] = ()) -> None:
    """Refuse ``folder`` when writing ``names`` there would replace a file medmtl did not write.

    Raises:
        ConfigError: one line naming the first such file, how many there are, and the fix.
    """
    foreign = foreign_outputs(folder, names, recorded=recorded)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise ConfigError(
            f"output folder '{folder}' already holds '{foreign[0]}'{more}, which medmtl did not write (the folder "
            f"records no such output); medmtl never replaces files it did not write — move it away or choose "
            f"another {option}"
        )


def record_outputs(folder: Path, names: Iterable[str]) -> None:
    """Add ``names`` to ``folder``'s record (the folder is created), before they are written."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RECORD_FILE
    have = recorded_outputs(folder)
    new = [n for n in dict.fromkeys(names) if n not in have]
    if not new:
        return
    text = ("" if path.exists() else _RECORD_HEADER) + "".join(f"{n}\n" for n in new)
    with open(path, "a", encoding="utf-8") as fh:  # one small append: whole lines even with concurrent ranks
        fh.write(text)


def special_file_problem(path: Path) -> str | None:
    """Why an input *file* the user named cannot be read as one (``None``: it can): a FIFO, socket
    or device would block ``open()`` forever or read as nothing."""
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None  # missing or unreadable: the reader names it
    if stat.S_ISREG(mode):
        return None
    kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else (
        "a socket" if stat.S_ISSOCK(mode) else "a device")
    return f"'{path}' is {kind}, not a regular file; pass the file itself"


def describe_os_error(exc: OSError) -> str:
    """One line for an :class:`OSError` a user can cause: what, which path, how to fix it."""
    where = f" '{exc.filename}'" if exc.filename is not None else ""
    hints = {
        errno.ENAMETOOLONG: "choose a shorter file or folder name",
        errno.EACCES: "check the permissions or choose another path",
        errno.EPERM: "check the permissions or choose another path",
        errno.ENOSPC: "free disk space or choose an output folder on another disk",
        errno.EROFS: "the file system is read-only; choose a writable output folder",
        errno.ENOTDIR: "a part of the path is a file, not a folder; choose another path",
        errno.ENOENT: "check that the path exists",
        errno.EISDIR: "a folder stands where a file is needed; choose another path",
        errno.ELOOP: "the path goes through a symbolic-link loop; fix or remove the link",
    }
    hint = hints.get(exc.errno or 0, "check the path and the disk")
    return f"cannot use{where}: {exc.strerror or exc.__class__.__name__}; {hint}"


__all__ = [
    "BOOKKEEPING", "RECORD_FILE", "check_output_path", "check_outputs", "describe_os_error", "foreign_outputs",
    "output_path_problem", "recorded_outputs", "record_outputs", "special_file_problem",
]
