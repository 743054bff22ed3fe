"""Training throughput (issue #15, item 4): medmtl's trainer against the naive MONAI-tutorial loop.

``python -m bench.training [--device cpu|cuda] [--n-phantoms 8] [--steps 80] [--warmup 5] [--data DIR]
[--out DIR] [--work DIR] [--set KEY=VALUE ...] [--append-results [FILE]] [--fast]``

Measured in one process run, on the same scans, the same network, the same patch size and positive share:

(a) **medmtl**: the trainer ``medmtl train`` runs (:func:`medmtl.engine.trainer.run_training`, the
    function :func:`medmtl.api.train` calls before it adds reference statistics to the card) on
    ``configs/ct_phantom_cpu.yaml`` with one epoch of ``warmup + steps`` optimisation steps and
    validation off (``data.val_fraction = 0``); everything else is the config's (patch 32³, batch 8,
    EfficientNet-Lite0 inflated to 3D, its sampling, augmentation, AMP setting, gradient clipping).
    Per-step times come from the trainer's own debug line (``step N: data … s, step … s``): the data
    wait (patch sampling + augmentation + collation, in the main process with ``num_workers = 0``)
    and the optimisation step (copy to the device, forward, losses, backward, clipping, step).
(b) **naive**: the loop of the MONAI tutorials: ``CacheDataset`` of the same scans through medmtl's
    deterministic transforms (preprocessing, targets, so the inputs are identical) →
    ``RandCropByPosNegLabeld`` (same patch size, ``pos = pos_fraction``, ``num_samples =
    samples_per_scan``) → ``SelectItemsd`` → MONAI ``DataLoader`` (``batch_size / samples_per_scan``
    scans per batch, shuffled, ``list_data_collate``) → the same network built from the same
    ``ModelSpec`` and seed (same initial weights) in fp32 → the plain sum of medmtl's task losses
    (the config's fixed equal weights) → ``backward`` → ``AdamW`` (same LR and weight decay) →
    ``loss.item()``; the same number of steps.

Samples/s are counted over the steps after the warm-up (data wait + step time of each). On CUDA,
the GPU busy share (NVML utilisation, ``torch.cuda.utilization`` or ``nvidia-smi`` polled every
0.25 s, averaged over the timed steps) and peak GPU memory are added; on CPU they are "not measured".
The result is printed as Markdown, written as ``training.json`` / ``training.md`` with ``--out`` and
appended to a results file with ``--append-results``. The phantoms and the run folder live in a temporary
folder unless ``--work`` keeps them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "ct_phantom_cpu.yaml"
#: Seed of the generated phantom set (the config comment's training set starts there).
DATA_SEED = 10000
#: ``--fast``: a smoke test, not a measurement (small phantoms, small batches, few steps).
FAST_N, FAST_STEPS, FAST_WARMUP, FAST_SHAPE = 2, 3, 1, (64, 64, 48)
FAST_OVERRIDES = ("train.batch_size=4", "train.samples_per_scan=2")
#: issue #15 targets on an accelerator.
TARGET_RATIO_GPU = 2.0
TARGET_BUSY_GPU = 0.85
GPU_POLL_S = 0.25


# --------------------------------------------------------------------------- step timings
@dataclass
class StepTime:
    """One optimisation step: data wait and step seconds, samples, wall-clock end (``time.time()``)."""

    data_s: float
    step_s: float
    samples: int
    end: float


def summarise(steps: Sequence[StepTime], warmup: int) -> dict[str, Any]:
    """Throughput over the steps after ``warmup``: samples/s, mean s/step and its data/compute split.

    Returns also ``window`` (wall-clock start and end of the timed steps, for the GPU sampler).

    Raises:
        ValueError: no step is left after the warm-up.
    """
    timed = list(steps[warmup:])
    if not timed:
        raise ValueError(f"{len(steps)} steps recorded, none after a warm-up of {warmup}")
    data = sum(s.data_s for s in timed)
    comp = sum(s.step_s for s in timed)
    wall = data + comp
    start = steps[warmup - 1].end if warmup > 0 else timed[0].end - timed[0].data_s - timed[0].step_s
    return {
        "timed_steps": len(timed), "samples": sum(s.samples for s in timed), "timed_s": wall,
        "samples_per_s": sum(s.samples for s in timed) / wall if wall > 0 else float("nan"),
        "s_per_step": wall / len(timed), "data_s_per_step": data / len(timed), "step_s_per_step": comp / len(timed),
        "data_share": data / wall if wall > 0 else float("nan"),
        "step_s_median": statistics.median(s.data_s + s.step_s for s in timed),
        "window": [start, timed[-1].end],
    }


class _TrainerSteps(logging.Handler):
    """Collects the trainer's per-step debug line ``step %d: data %.2f s, step %.2f s, losses %s``."""

    def __init__(self, batch_size: int) -> None:
        super().__init__(level=logging.DEBUG)
        self.batch_size = batch_size
        self.steps: list[StepTime] = []

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args
        if str(record.msg).startswith("step %d: data") and isinstance(args, tuple) and len(args) >= 3:
            data_s, step_s = args[1], args[2]
            if isinstance(data_s, (int, float)) and isinstance(step_s, (int, float)):
                self.steps.append(StepTime(float(data_s), float(step_s), self.batch_size, record.created))


@contextmanager
def trainer_step_log(batch_size: int) -> Iterator[_TrainerSteps]:
    """Capture the trainer's per-step timings while the block runs (the logger is restored after)."""
    from medmtl.engine import train_loop

    log = train_loop.logger
    handler = _TrainerSteps(batch_size)
    level, propagate = log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False  # the debug lines are read here, not printed
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


# --------------------------------------------------------------------------- GPU busy share
def gpu_util_reader(index: int = 0) -> tuple[str, Callable[[], float] | None]:
    """``(method, read)``: a function returning the GPU's utilisation in % (NVML, else nvidia-smi).

    ``read`` is ``None`` where neither works; ``method`` then says why.
    """
    try:
        torch.cuda.utilization(index)
        return "NVML utilization (torch.cuda.utilization)", lambda: float(torch.cuda.utilization(index))
    except Exception as exc:  # pynvml missing (ImportError) or NVML failing (its own error types)
        why = f"NVML unavailable ({type(exc).__name__})"
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return f"not measured: {why}, no nvidia-smi", None

    def read() -> float:
        out = subprocess.run([exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-i", str(index)],
                             capture_output=True, text=True, timeout=10, check=True)
        return float(out.stdout.strip().splitlines()[0])

    try:
        read()
    except (OSError, ValueError, IndexError, subprocess.SubprocessError) as exc:
        return f"not measured: {why}, nvidia-smi failed ({type(exc).__name__})", None
    return "nvidia-smi utilization.gpu", read


class GpuSampler:
    """Polls ``read`` every ``interval`` s in a thread; ``busy(window)`` averages the samples in it."""

    def __init__(self, read: Callable[[], float], interval: float = GPU_POLL_S) -> None:
        self.read = read
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GpuSampler:
        def loop() -> None:
            while not self._stop.wait(self.interval):
                try:
                    self.samples.append((time.time(), self.read()))
                except (OSError, ValueError, IndexError, subprocess.SubprocessError):
                    continue  # one failed poll: the next one counts
        self._thread = threading.Thread(target=loop, name="gpu-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def busy(self, window: Sequence[float]) -> dict[str, Any]:
        """Mean utilisation (0..1) of the samples inside ``[start, end]`` and their count."""
        vals = [u for t, u in self.samples if window[0] <= t <= window[1]]
        return {"gpu_busy_share": statistics.fmean(vals) / 100.0 if vals else None, "gpu_samples": len(vals)}


# --------------------------------------------------------------------------- config and data
def make_data(folder: Path, *, n: int, seed: int, shape: Sequence[int] | None) -> Path:
    """``n`` site-A CT phantoms (``medmtl sample-data --kind ct --site a``) in ``folder``."""
    from medmtl import api

    return api.generate_sample_data(out=folder, kind="ct", site="a", n=n, seed=seed, shape=shape)


def config_overrides(data: Path, *, steps: int, warmup: int, device: str, fast: bool,
                     extra: Sequence[str] = ()) -> list[str]:
    """The overrides that turn ``configs/ct_phantom_cpu.yaml`` into this benchmark's run."""
    # the lesion readout is fitted before training and never steps: heads only, so 8 phantoms suffice
    base = [f"data.root={data}", "data.val_fraction=0", "train.epochs=1", f"train.steps_per_epoch={warmup + steps}",
            "train.progress=false", f"train.device={device}", "decode.size=head", "decode.malignancy=head"]
    return [*base, *(FAST_OVERRIDES if fast else ()), *extra]


def load_cfg(overrides: Sequence[str]) -> Any:
    from medmtl.config import load_config

    return load_config(CONFIG, overrides=list(overrides))


# --------------------------------------------------------------------------- (a) medmtl
def run_medmtl(cfg: Any, out: Path, *, warmup: int, device: str) -> dict[str, Any]:
    """Train with medmtl's trainer; per-step timings from its log, summarised after ``warmup``."""
    from medmtl.engine.inference import resolve_amp
    from medmtl.engine.trainer import run_training

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    with trainer_step_log(cfg.train.batch_size) as log:
        run_training(cfg, out, overwrite=True)
    res: dict[str, Any] = {"run_wall_s": time.perf_counter() - t0, "steps_logged": len(log.steps)}
    if len(log.steps) != cfg.train.steps_per_epoch:
        raise SystemExit(f"Error: the trainer logged {len(log.steps)} step timings, expected "
                         f"{cfg.train.steps_per_epoch}; has the 'step %d: data' debug line of train_loop changed?")
    res.update(summarise(log.steps, warmup))
    t = cfg.train
    res["settings"] = {"amp": resolve_amp(t.amp, torch.device(device)), "sampling": t.sampling, "augment": t.augment,
                       "grad_clip": t.grad_clip, "scheduler": t.scheduler, "freeze_bn": t.freeze_bn,
                       "deterministic": t.deterministic, "num_workers": cfg.data.num_workers,
                       "weighting": cfg.weighting.name}
    if device == "cuda":
        res["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


# --------------------------------------------------------------------------- (b) naive MONAI loop
def naive_loader(cfg: Any, data: Any) -> Any:
    """CacheDataset (medmtl's deterministic transforms) → RandCropByPosNegLabeld → DataLoader."""
    from monai.data import CacheDataset, DataLoader, list_data_collate
    from monai.transforms import Compose, RandCropByPosNegLabeld, SelectItemsd

    from medmtl.data.dataset import PATCH_KEYS, deterministic_transforms

    t = cfg.train
    if t.batch_size % t.samples_per_scan:
        raise SystemExit(f"Error: train.batch_size {t.batch_size} is not a multiple of train.samples_per_scan "
                         f"{t.samples_per_scan}; the naive loop batches whole scans")
    keys = list(PATCH_KEYS)
    tf = Compose([*deterministic_transforms(data.spec).transforms,
                  RandCropByPosNegLabeld(keys=keys, label_key="pos", spatial_size=list(t.patch_size),
                                         pos=t.pos_fraction, neg=1.0 - t.pos_fraction, num_samples=t.samples_per_scan),
                  SelectItemsd(keys=keys)])
    tf.set_random_state(seed=cfg.seed)
    ds = CacheDataset(data=data.train_items, transform=tf, cache_rate=1.0, num_workers=0, progress=False)
    return DataLoader(ds, batch_size=t.batch_size // t.samples_per_scan, shuffle=True,
                      num_workers=cfg.data.num_workers, collate_fn=list_data_collate,
                      generator=torch.Generator().manual_seed(cfg.seed))


def _forever(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def run_naive(cfg: Any, *, steps: int, warmup: int, device: str) -> dict[str, Any]:
    """The tutorial loop for ``warmup + steps`` steps, fp32; timed like (a)."""
    from medmtl.data.dataset import TARGET_KEYS, load_training_data
    from medmtl.models.mtl_net import build_model
    from medmtl.models.spec import ModelSpec
    from medmtl.mtl.losses import task_losses

    t0 = time.perf_counter()
    data = load_training_data(cfg)
    batches = _forever(naive_loader(cfg, data))
    torch.manual_seed(cfg.seed)  # as the trainer does before building its model: the same initial weights
    model = build_model(ModelSpec.from_config(cfg.model, data.spec.channels), pretrained=cfg.model.pretrained)
    dev = torch.device(device)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.learning_rate, weight_decay=cfg.train.weight_decay)
    setup_s = time.perf_counter() - t0
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    record: list[StepTime] = []
    for _ in range(warmup + steps):
        t_data = time.perf_counter()
        batch = next(batches)
        t_step = time.perf_counter()
        image = batch["image"].to(dev)
        targets = {k: batch[k].to(dev) for k in TARGET_KEYS}
        opt.zero_grad()
        loss = torch.stack(list(task_losses(model(image), targets).values())).sum()
        loss.backward()
        opt.step()
        loss.item()  # the tutorial's `epoch_loss += loss.item()`
        done = time.perf_counter()
        record.append(StepTime(t_step - t_data, done - t_step, int(image.shape[0]), time.time()))
    res: dict[str, Any] = {"setup_s": setup_s, "n_scans": len(data.train_items), **summarise(record, warmup)}
    if device == "cuda":
        res["peak_gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


# --------------------------------------------------------------------------- report
def _fmt(v: Any, spec: str = ".2f", missing: str = "—") -> str:
    return missing if v is None else format(v, spec)


def _row(name: str, r: dict[str, Any], cuda: bool) -> str:
    gpu = (f" {_fmt(r.get('gpu_busy_share'), '.0%')} | {_fmt(r.get('peak_gpu_mem_gib'))} |" if cuda else "")
    return (f"| {name} | {r['samples_per_s']:.2f} | {r['s_per_step']:.3f} | {r['data_s_per_step']:.3f} | "
            f"{r['step_s_per_step']:.3f} | {r['data_share']:.0%} |{gpu}")


def verdict(res: dict[str, Any]) -> str:
    """The issue-#15 targets: on CUDA ratio ≥ 2× and GPU busy ≥ 85 %; on CPU the ratio is reported."""
    ratio = res["ratio_samples_per_s"]
    if res["device"] != "cuda":
        return f"CPU: ratio reported ({ratio:.2f}×); the ≥ {TARGET_RATIO_GPU:.0f}× and busy targets are for a GPU."
    if res.get("fast"):
        return "not measured (--fast smoke run)"
    busy = res["medmtl"].get("gpu_busy_share")
    r_ok = "met" if ratio >= TARGET_RATIO_GPU else "NOT met"
    b_ok = "not measured" if busy is None else ("met" if busy >= TARGET_BUSY_GPU else "NOT met")
    return (f"GPU: ratio ≥ {TARGET_RATIO_GPU:.0f}× **{r_ok}** ({ratio:.2f}×); medmtl GPU busy ≥ "
            f"{TARGET_BUSY_GPU:.0%} **{b_ok}** ({_fmt(busy, '.0%')}).")


def markdown(res: dict[str, Any], *, machine: str, command: str, date: str) -> str:
    """The dated ``bench/RESULTS.md`` section of a run."""
    m, n, cuda = res["medmtl"], res["naive"], res["device"] == "cuda"
    s = m["settings"]
    head = "| loop | samples/s | s/step | data s/step | step s/step | data share |" + (
        " GPU busy | peak GPU GiB |" if cuda else "")
    cols = head.count("|") - 1
    return "\n".join([
        f"## Training throughput (issue #15, item 4){' — FAST SMOKE RUN, not a measurement' if res['fast'] else ''}"
        f" — {date}, {machine}",
        "",
        f"Command: `{command}`. Device {res['device']}, torch {res['torch']}, {res['torch_threads']} torch threads. "
        f"Data: {res['data']['n_scans']} site-A CT phantoms ({res['data']['source']}). Config "
        f"`configs/ct_phantom_cpu.yaml` with validation off: patch {res['patch']}, batch {res['batch_size']} "
        f"({res['samples_per_scan']} patches per scan), pos_fraction {res['pos_fraction']}, model "
        f"{res['model']}; {res['steps']} timed steps after {res['warmup']} warm-up steps on each side, same "
        f"process; seeds: config seed {res['seed']} on both sides (same initial weights), phantom seed "
        f"{res['data']['seed']}.",
        "",
        head,
        "|" + "---|" * cols,
        _row(f"medmtl trainer (amp {s['amp']}, sampling {s['sampling']}, augment {s['augment']})", m, cuda),
        _row("naive MONAI loop (CacheDataset → RandCropByPosNegLabeld → DataLoader, fp32)", n, cuda),
        "",
        f"medmtl / naive samples/s: **{res['ratio_samples_per_s']:.2f}×**. {verdict(res)}",
        "",
        f"Patches: the same size and positive share on both sides; medmtl samples with `train.sampling "
        f"{s['sampling']}` and augments (`{s['augment']}`), the naive loop centres positives on a lesion voxel "
        "(`RandCropByPosNegLabeld`) and does not augment, and runs the network on MONAI `MetaTensor`s. "
        "Data = waiting for the next batch (patch sampling, augmentation, collation; "
        f"{s['num_workers']} loader workers on both sides); step = copy to the device, forward, losses, backward, "
        f"optimizer (medmtl also: gradient clipping {s['grad_clip']}, {s['scheduler']} LR, frozen encoder "
        f"BatchNorm {s['freeze_bn']}, deterministic algorithms {s['deterministic']}, weighting {s['weighting']}). "
        f"GPU busy: {res['gpu_method']}. Machine load average {res['load_avg_1min_start']:.1f} → "
        f"{res['load_avg_1min_end']:.1f}.",
        "",
    ])


# --------------------------------------------------------------------------- driver
def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Data, both loops and the GPU samples; the JSON-ready result."""
    fast = bool(args.fast)
    if args.data is not None:
        data, source, seed = Path(args.data).resolve(), f"--data {args.data}", None
    else:
        shape = FAST_SHAPE if fast else None
        data = make_data(work / "data", n=args.n_phantoms, seed=DATA_SEED, shape=shape)
        source, seed = f"generated, shape {list(shape) if shape else 'site default 176×144×120 voxels'}", DATA_SEED
    cfg = load_cfg(config_overrides(data, steps=args.steps, warmup=args.warmup, device=args.device, fast=fast,
                                    extra=args.set))
    t = cfg.train
    res: dict[str, Any] = {
        "device": args.device, "fast": fast, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "steps": args.steps, "warmup": args.warmup,
        "patch": list(t.patch_size), "batch_size": t.batch_size, "samples_per_scan": t.samples_per_scan,
        "pos_fraction": t.pos_fraction, "seed": cfg.seed, "overrides": config_overrides(
            Path("DATA"), steps=args.steps, warmup=args.warmup, device=args.device, fast=fast, extra=args.set),
        "model": f"{cfg.model.encoder} {cfg.model.adapter} (pretrained {cfg.model.pretrained})",
        "load_avg_1min_start": os.getloadavg()[0],
    }
    method, read = gpu_util_reader() if args.device == "cuda" else ("not measured: no CUDA device", None)
    res["gpu_method"] = method
    sampler = GpuSampler(read).start() if read is not None else None
    try:
        res["medmtl"] = run_medmtl(cfg, work / "medmtl_run", warmup=args.warmup, device=args.device)
        res["naive"] = run_naive(cfg, steps=args.steps, warmup=args.warmup, device=args.device)
    finally:
        if sampler is not None:
            sampler.stop()
    for side in ("medmtl", "naive"):
        if sampler is not None:
            res[side].update(sampler.busy(res[side]["window"]))
    res["data"] = {"source": source, "seed": seed, "n_scans": res["naive"]["n_scans"]}
    res["ratio_samples_per_s"] = res["medmtl"]["samples_per_s"] / res["naive"]["samples_per_s"]
    res["load_avg_1min_end"] = os.getloadavg()[0]
    return res


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    from bench.machine import cpu_model

    p = argparse.ArgumentParser(prog="python -m bench.training", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--n-phantoms", type=int, default=8, help="phantoms to generate (default 8; ignored with --data)")
    p.add_argument("--data", default=None, help="use this scan folder (with annotations.csv) instead of generating")
    p.add_argument("--steps", type=int, default=80, help="timed optimisation steps per side (default 80)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before them (default 5, at least 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra config override (repeatable), e.g. train.deterministic=false; the naive loop takes patch, batch, "
                        "pos_fraction, LR, weight decay and data.num_workers from it and stays fp32")
    p.add_argument("--fast", action="store_true", help="smoke test: 2 small phantoms, batch 4, 3 steps")
    p.add_argument("--out", type=Path, default=None, help="write training.json and training.md into this folder")
    p.add_argument("--work", type=Path, default=None,
                   help="keep the generated data and the medmtl run folder here (default: a temporary folder, removed)")
    p.add_argument("--machine", default=None, help="machine description recorded with the results")
    p.add_argument("--append-results", nargs="?", const=REPO / "bench" / "RESULTS.md", default=None, type=Path,
                   metavar="FILE", help="append a dated section to FILE (default bench/RESULTS.md)")
    args = p.parse_args(argv)
    if args.fast:
        args.n_phantoms, args.steps, args.warmup = FAST_N, FAST_STEPS, FAST_WARMUP
    if args.steps < 1 or args.warmup < 1 or args.n_phantoms < 1:
        p.error("--steps, --warmup and --n-phantoms must be at least 1")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA GPU is available")
    if args.machine is None:
        gpu = f", {torch.cuda.get_device_name(0)}" if args.device == "cuda" else ""
        args.machine = f"{cpu_model()}, {os.cpu_count()} cores{gpu} ({args.device.upper()})"
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """CLI entry point; returns the result (also printed, and written where asked)."""
    args = parse_args(argv)
    work = args.work.resolve() if args.work is not None else Path(tempfile.mkdtemp(prefix="medmtl_bench_train_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        res = measure(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    command = shlex.join(["python", "-m", "bench.training", *(sys.argv[1:] if argv is None else argv)])
    text = markdown(res, machine=args.machine, command=command, date=time.strftime("%Y-%m-%d %H:%M %Z"))
    res.update({"machine": args.machine, "command": command})
    print(text)
    if args.out is not None:
        from medmtl.io.writers import atomic_write_text

        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.out / "training.json", json.dumps(res, indent=2) + "\n")
        atomic_write_text(args.out / "training.md", text)
    if args.append_results is not None:
        with open(args.append_results, "a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return res


if __name__ == "__main__":
    main()
