"""Start-up and no-op cost of the CLI (issue #15, item 3): ``medmtl --help``, a full ``predict``
over a folder of scans and the rerun over the finished folder, timed in one run.

``python -m bench.noop_rerun [--n-scans 8] [--repeats 5] [--append-results [FILE]]``

Every timing is the wall time of a fresh ``medmtl`` process (what a user waits for, interpreter
start and imports included):

(a) ``medmtl --help``;
(b) ``medmtl predict --checkpoint CKPT SCANS -o OUT --device cpu`` over the first ``--n-scans``
    scans of ``sample_data/ct_site_b`` (8 scans) with nothing done yet — model loaded, every scan
    read, preprocessed, run through the sliding window, decoded and written;
(c) the same command again over the finished folder (the no-op rerun, decided from the
    per-scan records without loading the model), and once more with ``--device auto`` (which
    imports torch to ask for CUDA).

The rerun must print ``0 predicted, N already complete`` and leave every output file byte for
byte as it was; the benchmark checks both. The checkpoint is bench.inference's (EfficientNet-Lite0,
inflated 3D, patch 64×64×32, random weights): the cost measured does not depend on the weights.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCANS = REPO / "sample_data" / "ct_site_b"
#: What the rerun must print (issue #15 Must-show: a no-op rerun over 8 scans in <= 5 s).
TARGET_NOOP_S = 5.0


def medmtl_command() -> list[str]:
    """The ``medmtl`` console script next to this interpreter, else ``python -m medmtl``."""
    script = Path(sys.executable).with_name("medmtl")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "medmtl"]


def timed(args: Sequence[str]) -> tuple[float, str]:
    """Wall seconds and stdout of ``medmtl ARGS`` in a fresh process (a non-zero exit raises)."""
    t0 = time.perf_counter()
    res = subprocess.run([*medmtl_command(), *args], cwd=REPO, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise SystemExit(f"Error: medmtl {' '.join(args)} exited {res.returncode}: {res.stderr.strip()[-500:]}")
    return wall, res.stdout


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated timings (s)."""
    return {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values)}


def run(work: Path, *, n_scans: int, repeats: int) -> dict[str, Any]:
    """Build the checkpoint and the scan folder under ``work`` and time (a), (b) and (c)."""
    from bench.inference import Setup, make_checkpoint

    files = sorted(SCANS.glob("*.nii.gz"))[:n_scans]
    if len(files) < n_scans:
        raise SystemExit(f"Error: --n-scans {n_scans} but {SCANS} holds {len(files)} scans")
    ckpt = make_checkpoint(work / "ckpt", Setup.from_config(None))
    scans = work / "scans"
    scans.mkdir()
    for f in files:
        shutil.copy(f, scans)
    out = work / "out"
    predict = ["predict", "--checkpoint", str(ckpt), str(scans), "-o", str(out), "--no-progress"]
    res: dict[str, Any] = {"n_scans": n_scans, "repeats": repeats, "load_avg_1min_start": os.getloadavg()[0]}
    res["help"] = spread([timed(["--help"])[0] for _ in range(repeats)])
    res["full_predict_s"], full_out = timed([*predict, "--device", "cpu"])
    if not full_out.startswith(f"{n_scans} predicted, 0 already complete, 0 failed"):
        raise SystemExit(f"Error: the full predict did not predict every scan: {full_out.strip()}")
    before = snapshot(out)
    noop: list[float] = []
    for _ in range(repeats):
        wall, text = timed([*predict, "--device", "cpu"])
        if not text.startswith(f"0 predicted, {n_scans} already complete, 0 failed"):
            raise SystemExit(f"Error: the rerun was not a no-op: {text.strip()}")
        noop.append(wall)
    res["noop_rerun"] = spread(noop)
    res["noop_rerun_device_auto_s"], _ = timed([*predict])
    res["outputs_unchanged"] = snapshot(out) == before
    res["load_avg_1min_end"] = os.getloadavg()[0]
    return res


def markdown(res: dict[str, Any], *, machine: str, command: str, date: str) -> str:
    """The dated ``bench/RESULTS.md`` section of a run."""
    h, n = res["help"], res["noop_rerun"]
    met = ("met" if n["max_s"] <= TARGET_NOOP_S else "NOT met") if res["n_scans"] >= 8 else "not measured (< 8 scans)"
    return "\n".join([
        f"## Start-up and no-op rerun (issue #15, item 3) — {date}, {machine}",
        "",
        f"Command: `{command}`. Each time is the wall time of a fresh `medmtl` process (interpreter start and "
        f"imports included); {res['repeats']} repeats where a spread is given. Scans: the first "
        f"{res['n_scans']} of `sample_data/ct_site_b`; checkpoint: bench.inference's (EfficientNet-Lite0, inflated "
        "3D, patch 64×64×32, random weights).",
        "",
        "| what | wall s (median) | min | max |",
        "|---|---|---|---|",
        f"| (a) `medmtl --help` | {h['median_s']:.2f} | {h['min_s']:.2f} | {h['max_s']:.2f} |",
        f"| (b) `medmtl predict … --device cpu`, {res['n_scans']} scans, nothing done yet | "
        f"{res['full_predict_s']:.1f} | | |",
        f"| (c) the same again over the finished folder (no-op rerun) | {n['median_s']:.2f} | {n['min_s']:.2f} | "
        f"{n['max_s']:.2f} |",
        f"| (c') no-op rerun with `--device auto` (imports torch to ask for CUDA) | "
        f"{res['noop_rerun_device_auto_s']:.2f} | | |",
        "",
        f"Target of #15 (no-op rerun over 8 scans ≤ {TARGET_NOOP_S:.0f} s): **{met}** (slowest of the repeats "
        f"{n['max_s']:.2f} s). Every rerun printed `0 predicted, {res['n_scans']} already complete, 0 failed`; "
        f"output files unchanged byte for byte: {res['outputs_unchanged']}. Machine load average "
        f"{res['load_avg_1min_start']:.1f} → {res['load_avg_1min_end']:.1f}.",
        "",
    ])


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (0 ok; a failed check exits with one ``Error:`` line)."""
    from bench.machine import cpu_model

    p = argparse.ArgumentParser(prog="python -m bench.noop_rerun", description=__doc__.splitlines()[0])
    p.add_argument("--n-scans", type=int, default=8, help="scans of sample_data/ct_site_b (at most 8; default 8)")
    p.add_argument("--repeats", type=int, default=5, help="repeats of (a) and (c) (default 5)")
    p.add_argument("--machine", default=f"{cpu_model()}, {os.cpu_count()} cores (CPU)",
                   help="machine description recorded with the results")
    p.add_argument("--append-results", nargs="?", const=REPO / "bench" / "RESULTS.md", default=None, type=Path,
                   metavar="FILE", help="append a dated section to FILE (default bench/RESULTS.md)")
    args = p.parse_args(argv)
    if args.n_scans < 1 or args.repeats < 1:
        p.error("--n-scans and --repeats must be at least 1")
    work = Path(tempfile.mkdtemp(prefix="medmtl_bench_noop_"))
    try:
        res = run(work, n_scans=args.n_scans, repeats=args.repeats)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = shlex.join(["python", "-m", "bench.noop_rerun", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(res, machine=args.machine, command=command, date=time.strftime("%Y-%m-%d %H:%M %Z"))
    print(text)
    if args.append_results is not None:
        with open(args.append_results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return 0 if res["outputs_unchanged"] else 1


if __name__ == "__main__":
    sys.exit(main())
