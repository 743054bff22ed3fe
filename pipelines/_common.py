"""Shared helpers of the pipelines: run-folder records, scan splits, metric tables.

Every pipeline run folder holds three records written by :func:`write_run_records`:

- ``config.yaml`` — the resolved training config (absolute data paths, every default filled
  in), loaded and validated by :func:`medmtl.config.load_config` before anything runs;
- ``versions.json`` — Python, torch, MONAI, NumPy and medmtl versions, the platform and the
  device the run used;
- ``inputs.json`` — every input folder with the SHA-256 of each of its files, so a result can
  be traced to the exact bytes it was computed from.

The pipelines compose the public API (:mod:`medmtl.api`) and documented public functions
only; the library never imports this package.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import platform
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: Repository root (``pipelines/..``), used to find ``configs/`` and ``sample_data/``.
REPO = Path(__file__).resolve().parents[1]

#: Metrics shown in every results table: (key in ``metrics.json["overall"]``, header, higher is better).
METRICS: tuple[tuple[str, str, bool], ...] = (
    ("cpm", "CPM", True),
    ("diameter_mae_mm", "diameter MAE (mm)", False),
    ("malignancy_auc", "malignancy AUC", True),
)

SCAN_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr", ".dcm")


# --------------------------------------------------------------------------- records


def library_versions(device: str | None = None) -> dict[str, str]:
    """Versions of Python, torch, MONAI, NumPy and medmtl (plus platform and device).

    Read from the installed distributions' metadata (no heavy import).

    Args:
        device: the device the run used (``"cpu"``, ``"cuda:0"``...), recorded as given.
    """
    from importlib import metadata

    import medmtl

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
        "medmtl": str(medmtl.__version__),
        "platform": platform.platform(),
    }
    if device is not None:
        out["device"] = device
        if device.startswith("cuda"):
            import torch

            if torch.cuda.is_available():
                out["device_name"] = torch.cuda.get_device_name(torch.device(device))
    return out


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def folder_record(folder: Path) -> dict[str, Any]:
    """Every file under ``folder`` (sorted, relative paths) with its size and SHA-256.

    Args:
        folder: an input folder (scans, annotations, a checkpoint...).

    Returns:
        ``{"path": absolute folder, "n_files": int, "sha256": hash of the listing,
        "files": [{"path", "bytes", "sha256"}, ...]}``.
    """
    folder = Path(folder).resolve()
    files = []
    if folder.is_file():
        entries = [folder]
        base = folder.parent
    else:
        entries = sorted(p for p in folder.rglob("*") if p.is_file())
        base = folder
    for p in entries:
        files.append({"path": p.relative_to(base).as_posix(), "bytes": p.stat().st_size, "sha256": sha256_file(p)})
    listing = "\n".join(f"{f['path']} {f['sha256']}" for f in files)
    return {
        "path": str(folder),
        "n_files": len(files),
        "sha256": hashlib.sha256(listing.encode()).hexdigest(),
        "files": files,
    }


def write_json(path: Path, data: Any) -> Path:
    """Write JSON atomically (``medmtl.io.writers.atomic_write_json``)."""
    from medmtl.io.writers import atomic_write_json

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, data)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write text atomically (``medmtl.io.writers.atomic_write_text``)."""
    from medmtl.io.writers import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
    return path


def resolve_config(config: Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Load, override and validate a training config; return it as a plain dict.

    Fails early (before any training) with medmtl's one-line :class:`~medmtl.errors.ConfigError`
    when a key or value is wrong.
    """
    from medmtl.config import load_config

    return load_config(Path(config), overrides=list(overrides)).to_dict()


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
        config: the resolved config dict (see :func:`resolve_config`).
        device: the device the run uses.
        extra: more entries for ``inputs.json`` (command line, settings...).
    """
    import yaml

    run_dir.mkdir(parents=True, exist_ok=True)
    if config is not None:
        write_text(run_dir / "config.yaml", yaml.safe_dump(dict(config), sort_keys=False))
    write_json(run_dir / "versions.json", library_versions(device))
    record: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "inputs": {name: folder_record(Path(p)) for name, p in inputs.items()},
    }
    if extra:
        record.update(dict(extra))
    write_json(run_dir / "inputs.json", record)


# --------------------------------------------------------------------------- data helpers


def scan_ids(folder: Path) -> list[str]:
    """Sorted scan ids of a folder (file names / DICOM series, via ``medmtl.io.discover.discover_scans``).

    Discovery reads headers only, so this is cheap even for big folders.
    """
    from medmtl.io.discover import discover_scans

    refs, _ = discover_scans(Path(folder))
    return sorted({r.scan_id for r in refs})


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
    from medmtl.io.writers import atomic_write_csv

    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(dst, rows, fields)
    return dst


def id_list(ids: Sequence[str]) -> str:
    """A YAML flow list of ids for a ``key=value`` override, e.g. ``[a, b]``."""
    return "[" + ", ".join(json.dumps(i) for i in ids) + "]"


# --------------------------------------------------------------------------- metrics tables


@dataclass(frozen=True)
class Row:
    """One condition of a results table: its name and its ``metrics.json``."""

    condition: str
    metrics_path: Path


def read_overall(metrics_path: Path) -> dict[str, dict[str, Any]]:
    """``metrics.json["overall"]`` entries for :data:`METRICS`: ``{"value": float|None, "ci95": [lo, hi]|None}``."""
    data = json.loads(Path(metrics_path).read_text(encoding="utf-8"))
    overall = data.get("overall", {})
    out = {}
    for key, _, _ in METRICS:
        entry = overall.get(key) or {}
        out[key] = {"value": entry.get("value"), "ci95": entry.get("ci95")}
    return out


def fmt(value: float | None, digits: int = 3) -> str:
    """A metric for a table: ``n/a`` for missing / NaN, else fixed ``digits`` decimals."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{float(value):.{digits}f}"


def fmt_ci(entry: Mapping[str, Any], digits: int = 3) -> str:
    """``value [lo, hi]`` (or just the value when there is no interval)."""
    v = fmt(entry.get("value"), digits)
    ci = entry.get("ci95")
    if v == "n/a" or not ci or ci[0] is None or ci[1] is None:
        return v
    return f"{v} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-markdown table (also what the pipelines print)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h)) for i, h in enumerate(header)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep, *(line(r) for r in rows)])


def results_table(rows: Sequence[Row], *, with_ci: bool = False, digits: int = 3) -> str:
    """The results table of several conditions, every number read from its ``metrics.json``."""
    header = ["condition", *(h for _, h, _ in METRICS)]
    body = []
    for row in rows:
        overall = read_overall(row.metrics_path)
        cells = [fmt_ci(overall[k], digits) if with_ci else fmt(overall[k]["value"], digits) for k, _, _ in METRICS]
        body.append([row.condition, *cells])
    return markdown_table(header, body)


def gap_closed(value: float | None, baseline: float | None, reference: float | None) -> float | None:
    """Share of the gap between ``baseline`` (no adaptation) and ``reference`` (in-domain) closed.

    ``(value - baseline) / (reference - baseline)``: 0 = no better than no adaptation,
    1 = as good as in-domain; negative when adaptation hurts. Works for lower-is-better
    metrics too (both differences flip sign). ``None`` when undefined (missing values or a
    gap below 1e-9).
    """
    if value is None or baseline is None or reference is None:
        return None
    gap = reference - baseline
    if abs(gap) < 1e-9:
        return None
    return (value - baseline) / gap


def bootstrap_mean_ci(
    values: Sequence[float | None], *, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float | None, tuple[float, float] | None]:
    """Mean of ``values`` (NaN/None dropped) and its percentile-bootstrap interval.

    Returns:
        ``(mean, (lo, hi))``; the interval is ``None`` with fewer than two values, the mean
        ``None`` with none.
    """
    import numpy as np

    arr = np.asarray([v for v in values if v is not None and not math.isnan(float(v))], dtype=float)
    if arr.size == 0:
        return None, None
    mean = float(arr.mean())
    if arr.size < 2:
        return mean, None
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    means = arr[idx].mean(axis=1)
    alpha = (1.0 - level) / 2.0
    return mean, (float(np.quantile(means, alpha)), float(np.quantile(means, 1.0 - alpha)))


def default_device(requested: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; anything else unchanged."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def setup_logging(verbose: bool = False) -> None:
    """Plain ``INFO`` logging to stderr for the pipelines (``DEBUG`` with ``verbose``)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )



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
    "METRICS",
    "REPO",
    "Row",
    "add_run_options",
    "bootstrap_mean_ci",
    "default_device",
    "filter_annotations",
    "fmt",
    "fmt_ci",
    "folder_record",
    "gap_closed",
    "id_list",
    "library_versions",
    "markdown_table",
    "read_overall",
    "resolve_config",
    "results_table",
    "run_guarded",
    "scan_ids",
    "setup_logging",
    "sha256_file",
    "split_ids",
    "write_json",
    "write_run_records",
    "write_text",
]


# --------------------------------------------------------------------------- one run


def predict_and_evaluate(
    *,
    checkpoint: Path,
    input_dir: Path,
    annotations: Path,
    out_dir: Path,
    scan_ids: Sequence[str] | None = None,
    device: str = "auto",
    n_bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """``api.predict_folder`` into ``out_dir/predictions`` then ``api.evaluate`` into ``out_dir/metrics``.

    Args:
        checkpoint: checkpoint folder.
        input_dir: scan folder.
        annotations: annotation table restricted to the predicted scans (see
            :func:`filter_annotations`), so unpredicted scans do not count as misses.
        out_dir: condition folder.
        scan_ids: predict only these scans of ``input_dir``.
        device: prediction device.
        n_bootstrap: scan-level bootstrap replicates of the evaluation.
        seed: bootstrap seed.

    Returns:
        The ``metrics.json`` dict; raises when prediction failed for any scan (a study must
        not average over silently missing scans).
    """
    from medmtl import api
    from medmtl.errors import MedmtlError

    pred_dir = out_dir / "predictions"
    summary = api.predict_folder(checkpoint=checkpoint, input_dir=input_dir, out_dir=pred_dir, device=device,
                                 progress=False, scan_ids=list(scan_ids) if scan_ids is not None else None)
    if summary.get("n_failed"):
        raise MedmtlError(f"prediction failed for {summary['n_failed']} scan(s) in {pred_dir}; see failures.json")
    return api.evaluate(predictions=pred_dir / "predictions.csv", annotations=annotations,
                        out_dir=out_dir / "metrics", n_bootstrap=n_bootstrap, seed=seed)


def mark_done(run_dir: Path, info: Mapping[str, Any]) -> None:
    """Write ``run_dir/done.json`` (a run with it is complete and is reused by a rerun)."""
    write_json(run_dir / "done.json", {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **dict(info)})


def is_done(run_dir: Path) -> bool:
    """True when ``run_dir`` holds ``done.json``."""
    return (run_dir / "done.json").is_file()


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
