"""Run folders of the pipelines: provenance records, finished-step markers, timers, the CLI guard.

Every pipeline run folder holds three records written by :func:`write_run_records`:

- ``config.yaml`` — the resolved training config (absolute data paths, every default filled
  in), loaded and validated by :func:`medmtl.api.resolve_config` before anything runs;
- ``versions.json`` — Python, torch, MONAI, NumPy and medmtl versions, the platform and the
  device the run used;
- ``inputs.json`` — every input folder with the SHA-256 of each of its files, so a result can
  be traced to the exact bytes it was computed from.

A finished step leaves ``done.json`` (:func:`mark_done`); a rerun reuses it (:func:`is_done`).
"""

from __future__ import annotations

import hashlib
import logging
import platform
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medmtl import api

logger = logging.getLogger(__name__)

#: Repository root (``pipelines/..``), used to find ``configs/`` and ``sample_data/``.
REPO = Path(__file__).resolve().parents[1]


def library_versions(device: str | None = None) -> dict[str, str]:
    """Versions of Python, torch, MONAI, NumPy and medmtl (plus platform and device).

    Read from the installed distributions' metadata (no heavy import).

    Args:
        device: the device the run used (``"cpu"``, ``"cuda:0"``...), recorded as given.
    """
    from importlib import metadata

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    out = {
        "python": platform.python_version(),
        "torch": version("torch"),
        "monai": version("monai"),
        "numpy": version("numpy"),
        "medmtl": api.version(),
        "platform": platform.platform(),
    }
    if device is not None:
        out["device"] = device
        if device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                out["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return out


def folder_record(folder: Path) -> dict[str, Any]:
    """Every file under ``folder`` (sorted, relative paths) with its size and SHA-256.

    Args:
        folder: an input folder (scans, annotations, a checkpoint...) or a single file.

    Returns:
        ``{"path": absolute folder, "n_files": int, "sha256": hash of the listing,
        "files": [{"path", "bytes", "sha256"}, ...]}``.
    """
    folder = Path(folder).resolve()
    if folder.is_file():
        entries, base = [folder], folder.parent
    else:
        entries, base = sorted(p for p in folder.rglob("*") if p.is_file()), folder
    files = [{"path": p.relative_to(base).as_posix(), "bytes": p.stat().st_size, "sha256": api.sha256_file(p)}
             for p in entries]
    listing = "\n".join(f"{f['path']} {f['sha256']}" for f in files)
    return {
        "path": str(folder),
        "n_files": len(files),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "files": files,
    }


def write_run_records(
    run_dir: Path,
    *,
    inputs: Mapping[str, Path],
    config: Mapping[str, Any] | None = None,
    device: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``config.yaml`` (when given), ``versions.json`` and ``inputs.json`` into ``run_dir``.

    Args:
        run_dir: the run folder (created when missing).
        inputs: named input folders or files (hashed file by file).
        config: the resolved config dict (see :func:`medmtl.api.resolve_config`).
        device: the device the run uses.
        extra: more entries for ``inputs.json`` (command line, settings...).
    """
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        api.write_text(path=run_dir / "config.yaml", text=yaml.safe_dump(dict(config), sort_keys=False))
    api.write_json(path=run_dir / "versions.json", obj=library_versions(device))
    record: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "inputs": {name: folder_record(Path(p)) for name, p in inputs.items()},
    }
    if extra:
        record.update(dict(extra))
    api.write_json(path=run_dir / "inputs.json", obj=record)


def mark_done(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Write ``run_dir/done.json`` (a run with it is complete and is reused by a rerun)."""
    api.write_json(path=run_dir / "done.json", obj={"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **dict(info)})


def is_done(run_dir: Path) -> bool:
    """True when ``run_dir`` holds ``done.json``."""
    return (run_dir / "done.json").is_file()


class StepTimer:
    """Wall-clock and CPU seconds (this process, all threads) of each named step.

    Args:
        log: where each step's start and duration are logged (default: this module's logger).
    """

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.steps: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._log = log or logger
        self._t0 = time.perf_counter()

    def run(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call ``fn(*args, **kwargs)`` as step ``name``; record its wall and CPU seconds."""
        self._log.info("── %s", name)
        t, c = time.perf_counter(), time.process_time()
        result = fn(*args, **kwargs)
        self.steps[name] = round(time.perf_counter() - t, 2)
        self.cpu[name] = round(time.process_time() - c, 2)
        self._log.info("   %s done in %.1f s (%.1f CPU s)", name, self.steps[name], self.cpu[name])
        return result

    @property
    def total(self) -> float:
        """Seconds since the timer was made."""
        return round(time.perf_counter() - self._t0, 2)


def setup_logging(verbose: bool = False) -> None:
    """Plain ``INFO`` logging to stderr for the pipelines (``DEBUG`` with ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def run_guarded(body: Callable[[], int]) -> int:
    """Run a study's command-line body; a medmtl error exits 1 and a bad option (``ValueError``)
    exits 2, each as one ``error:`` line on stderr."""
    from medmtl.errors import MedmtlError

    try:
        return body()
    except MedmtlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


__all__ = [
    "REPO",
    "StepTimer",
    "folder_record",
    "is_done",
    "library_versions",
    "mark_done",
    "run_guarded",
    "setup_logging",
    "write_run_records",
]
