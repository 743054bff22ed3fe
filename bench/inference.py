"""Inference benchmark: medmtl's predict pipeline against the naive MONAI-tutorial loop.

``python -m bench.inference [--device cpu|cuda] [--big-slices N] [--config configs/ct_phantom_cpu.yaml]``

Measured in one run:

(a) end-to-end scans/s of :func:`medmtl.api.predict_folder` (read → preprocess → sliding window
    → decode → write, with the next scan prefetched) on the sample scans and on a generated
    512×512×N CT (N = 300 on CUDA; fewer slices on CPU by default — the result says how many);
(b) the ratio to the loop a MONAI tutorial would write for the same model and scans:
    ``LoadImage`` → the same preprocessing → ``sliding_window_inference`` in fp32 → save the
    heatmap, one scan at a time;
(c) on CUDA only: scans/s, voxels/s, achieved TFLOP/s (FLOPs of one window counted with
    ``torch.utils.flop_counter`` × windows) against the measured bf16 matmul peak, the share of
    wall time the GPU is busy (CUDA-event time of the network / wall time), peak GPU memory,
    and the largest scan processed without running out of memory.

The model is EfficientNet-Lite0 inflated to 3D with random weights — speed does not depend on
the weights — either on the 3 mm grid of ``default_ct_spec`` with 64×64×32 windows (the default,
comparable with the earlier sections) or, with ``--config``, exactly the network, grid and patch
of a training config (``configs/ct_phantom_cpu.yaml``: 1.25 mm, 32³, the input skip), which is
what a working model costs. Results are printed as JSON and
appended to ``bench/RESULTS.md`` with the date and the machine.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
PATCH = (64, 64, 32)
MODEL_CFG = {"encoder": "efficientnet-lite0", "adapter": "inflate", "norm": "instance"}
CLINICAL_SPACING = (0.7, 0.7, 1.25)
DECODE: dict[str, Any] = {"threshold": 0.3, "nms_radius_mm": 8.0, "max_lesions": 20, "temperature": 1.0}


@dataclass(frozen=True)
class Setup:
    """The benchmarked network: model keys (``model:`` of a config), grid (mm) and window (voxels)."""

    model: dict[str, Any]
    spacing_mm: tuple[float, float, float]
    patch: tuple[int, int, int]
    config: str | None = None

    @classmethod
    def from_config(cls, path: str | None) -> Setup:
        """The network of a training config; ``None``: the 3 mm default of the earlier sections."""
        if path is None:
            return cls(dict(MODEL_CFG), (3.0, 3.0, 3.0), PATCH)
        from medmtl import api

        cfg = api.resolve_config(config=path)
        model = {k: v for k, v in cfg["model"].items() if k != "pretrained"}
        spacing = tuple(float(v) for v in cfg["preprocess"]["spacing_mm"])
        patch = tuple(int(v) for v in cfg["train"]["patch_size"])
        return cls(model, spacing, patch, path)  # type: ignore[arg-type]


def make_checkpoint(folder: Path, setup: Setup) -> Path:
    from medmtl.engine.card import card_for
    from medmtl.engine.checkpoint import save_checkpoint
    from medmtl.engine.decode import DecodeSettings
    from medmtl.models.mtl_net import build_model
    from medmtl.models.spec import ModelSpec
    from medmtl.transforms.presets import default_ct_spec

    torch.manual_seed(0)
    model = build_model(ModelSpec.from_dict(setup.model), pretrained=False)
    card = card_for(model, input_spec=default_ct_spec(setup.spacing_mm), patch_size=setup.patch,
                    decode=DecodeSettings(**DECODE))
    return save_checkpoint(folder, model, card)


def make_big_scan(folder: Path, slices: int) -> Path:
    """A 512×512×``slices`` CT at clinical spacing 0.7×0.7×1.25 mm (358×358 mm field of view).

    The phantom generator works at the sites' coarse spacing, so a site-a phantom is made at
    its default size and trilinearly resized to 512×512×``slices``; the affine keeps its axis
    directions and origin with the clinical spacing. Content is stretched; for speed that does
    not matter, the voxel count and geometry do.
    """
    from scipy.ndimage import zoom

    from medmtl.data.phantom import generate_ct
    from medmtl.io import coords
    from medmtl.io.writers import save_nifti

    ph = generate_ct(7, "a", None, scan_id="big_512")
    target = (512, 512, slices)
    vol = zoom(ph.volume.astype(np.float32), [t / s for t, s in zip(target, ph.volume.shape)], order=1)
    affine = np.array(ph.affine_ras, dtype=np.float64)
    affine[:3, :3] = coords.direction_from_affine(affine) * np.array(CLINICAL_SPACING)[None, :]
    return save_nifti(folder / "big_512.nii.gz", vol.astype(np.int16), affine)


def naive_loop(checkpoint: Path, files: list[Path], out: Path, device: str, overlap: float) -> float:
    """The MONAI-tutorial loop (one scan at a time, fp32, no prefetch); returns seconds."""
    from monai.inferers import sliding_window_inference
    from monai.transforms import LoadImage

    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.io.writers import save_nifti
    from medmtl.transforms.presets import preprocess_transforms

    t0 = time.perf_counter()
    model, card = load_checkpoint(checkpoint, device=device)
    tf = preprocess_transforms(card.input_spec, card.harmonisation)
    loader = LoadImage(image_only=True, ensure_channel_first=True)
    out.mkdir(parents=True, exist_ok=True)
    for f in files:
        img = loader(str(f))
        # LoadImage's affine is already RAS (nibabel); the HU array goes through the same preset
        x = tf({"image": img})["image"]
        with torch.no_grad():
            y = sliding_window_inference(x[None].to(device), card.patch_size, 4, model, overlap=overlap)
        assert isinstance(y, dict)
        heat = torch.sigmoid(y["heatmap"])[0].cpu()
        save_nifti(out / f"{f.name.split('.')[0]}_heatmap.nii.gz", heat, np.asarray(x.affine.numpy()))
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def ours(checkpoint: Path, folder: Path, out: Path, device: str, overlap: float, amp: str) -> dict[str, Any]:
    from medmtl import api

    t0 = time.perf_counter()
    s = api.predict_folder(checkpoint=checkpoint, input_dir=folder, out_dir=out, device=device, amp=amp,
                           overlap=overlap, progress=False)
    s["wall_incl_model_load_s"] = time.perf_counter() - t0
    return s


def window_flops(model: torch.nn.Module, device: str, patch: Sequence[int]) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(1, 3, *patch, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        model(x)
    return float(fc.get_total_flops())


def matmul_peak_tflops(device: str, dtype: torch.dtype = torch.bfloat16, n: int = 8192) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def count_windows(shape: Sequence[int], patch: Sequence[int], overlap: float) -> int:
    """Windows MONAI's sliding window visits over a volume of ``shape`` voxels (patch, overlap as given)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    return len(dense_patch_slices(list(shape), list(patch), _get_scan_interval(list(shape), list(patch), len(shape),
                                                                                 (overlap,) * len(shape))))


def sliding_window_s_total(per_scan_s: float, n_scans: int) -> float:
    """Pure network time of ``n_scans`` identical scans (the measured per-scan sliding window)."""
    return per_scan_s * n_scans


def cuda_section(checkpoint: Path, work: Path, overlap: float, setup: Setup) -> dict[str, Any]:
    """(c): GPU throughput, efficiency, busy share, memory and the largest scan without OOM."""
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.engine.inference import sliding_window_maps

    dev = "cuda"
    model, _ = load_checkpoint(checkpoint, device=dev)
    peak = matmul_peak_tflops(dev)
    patch = setup.patch
    flops = window_flops(model, dev, patch)
    res: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "matmul_peak_bf16_tflops": peak,
                           "flops_per_window": flops}
    # the 512×512×300 CT at 0.7×0.7×1.25 mm resampled to the spec's grid
    pre = [int(round(n * sp / g)) for n, sp, g in zip((512, 512, 300), CLINICAL_SPACING, setup.spacing_mm)]
    x = torch.randn(1, 3, *pre)
    n_windows = count_windows(pre, patch, overlap)
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    sliding_window_maps(model, x, roi_size=patch, overlap=overlap, device=dev, amp="bf16", sw_batch_size=8)
    end.record()
    torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    busy = start.elapsed_time(end) / 1000.0
    res.update({
        "preprocessed_shape": list(x.shape[2:]), "windows": n_windows, "sliding_window_s": wall,
        "voxels_per_s": float(np.prod(x.shape[2:])) / wall,
        "achieved_tflops": flops * n_windows / busy / 1e12,
        "peak_gpu_mem_gib": torch.cuda.max_memory_allocated() / 2**30,
    })
    res["efficiency_vs_matmul_peak"] = res["achieved_tflops"] / peak
    e2e = ours(checkpoint, work / "big", work / "out_gpu", dev, overlap, "bf16")
    n_big = e2e["n_done"]
    res["end_to_end_scans"] = n_big
    res["end_to_end_scans_per_s"] = n_big / e2e["timings"]["wall_s"]
    res["gpu_busy_share"] = e2e["timings"]["infer"] / e2e["timings"]["wall_s"]
    # target: end-to-end within 1/0.7 of the pure network compute over the same windows
    res["network_share_of_end_to_end"] = sliding_window_s_total(wall, n_big) / e2e["timings"]["wall_s"]
    largest = None
    for side in (256, 384, 512, 640, 768, 1024):
        try:
            y = torch.randn(1, 3, side, side, side // 2)
            sliding_window_maps(model, y, roi_size=patch, overlap=overlap, device=dev, amp="bf16",
                                sw_batch_size=8, stitch_device="device")
            largest = [side, side, side // 2]
        except torch.cuda.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
    res["largest_preprocessed_volume_without_oom"] = largest
    return res


def _shape(path: Path) -> str:
    """``"176×144×120"``: the voxel grid of a NIfTI file (header only)."""
    img: Any = nib.load(str(path))
    return "×".join(str(d) for d in img.shape)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench.inference")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--big-slices", type=int, default=None, help="slices of the 512×512 scan (default 300 on CUDA, 80 on CPU)")
    p.add_argument("--n-sample", type=int, default=4, help="sample scans of sample_data/ct_site_a to use")
    p.add_argument("--n-big", type=int, default=None,
                   help="copies of the 512×512 scan in the big folder (default 8 on CUDA, 1 on CPU): with one "
                        "scan, reading cannot overlap the network")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--config", default=None,
                   help="benchmark the network, grid and patch of this training config (e.g. "
                        "configs/ct_phantom_cpu.yaml); default: the 3 mm grid, 64×64×32 windows")
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "off"],
                   help="medmtl's precision (auto: bf16 on CUDA and on CPUs with native bf16); the naive loop is fp32")
    p.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("Error: --device cuda but no CUDA GPU is available")
    slices = args.big_slices or (300 if args.device == "cuda" else 80)
    work = Path(tempfile.mkdtemp(prefix="medmtl_bench_inf_"))
    try:
        setup = Setup.from_config(args.config)
        ckpt = make_checkpoint(work / "ckpt", setup)
        sample = work / "sample"
        sample.mkdir()
        files = sorted((REPO / "sample_data" / "ct_site_a").glob("*.nii.gz"))[: args.n_sample]
        for f in files:
            shutil.copy(f, sample)
        big = work / "big"
        big.mkdir()
        first = make_big_scan(big, slices)
        n_big = args.n_big or (8 if args.device == "cuda" else 1)
        for i in range(1, n_big):
            shutil.copy(first, big / f"big_512_{i:02d}.nii.gz")
        from medmtl.engine.inference import resolve_amp

        amp = resolve_amp(args.amp, torch.device(args.device), inference=True)
        res: dict[str, Any] = {"date": _dt.date.today().isoformat(), "machine": f"{platform.node()} "
                               f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
                               "device": args.device, "torch": torch.__version__, "overlap": args.overlap,
                               "model": setup.model, "patch": list(setup.patch),
                               "spacing_mm": list(setup.spacing_mm), "config": setup.config, "amp": amp, "load_avg_1min_start": os.getloadavg()[0]}
        for name, folder, fls in (("sample", sample, sorted(sample.glob("*.nii.gz"))),
                                  (f"512x512x{slices}", big, sorted(big.glob("*.nii.gz")))):
            o = ours(ckpt, folder, work / f"out_{name}", args.device, args.overlap, amp)
            naive_s = naive_loop(ckpt, fls, work / f"naive_{name}", args.device, args.overlap)
            res[name] = {
                "n_scans": len(fls),
                "shape": _shape(fls[0]),
                "medmtl_scans_per_s": o["n_done"] / o["wall_incl_model_load_s"],
                "medmtl_wall_s": o["wall_incl_model_load_s"],
                "medmtl_stage_s": {k: round(v, 3) for k, v in o["timings"].items()},
                "naive_wall_s": naive_s,
                "speedup_vs_naive": naive_s / o["wall_incl_model_load_s"],
            }
        res["load_avg_1min_end"] = os.getloadavg()[0]
        if args.device == "cuda":
            res["cuda"] = cuda_section(ckpt, work, args.overlap, setup)
        else:
            res["cuda"] = "not measured: no CUDA device in this run"
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2))
    if not args.no_record:
        record(res, slices)
    return res


def record(res: dict[str, Any], slices: int) -> None:
    big = res[f"512x512x{slices}"]
    s = res["sample"]
    lines = [
        "",
        f"## Inference ({res['date']}, {res['device']}, {res['machine']})",
        "",
        f"`python -m bench.inference --device {res['device']}"
        + (f" --config {res['config']}" if res.get("config") else "")
        + f"`; model {res['model']['encoder']} {res['model']['adapter']}, grid {res.get('spacing_mm')} mm, "
        f"patch {list(res['patch'])}, overlap {res['overlap']}, random weights; medmtl precision "
        f"{res.get('amp', 'auto')}, the naive loop fp32.",
        "",
        "Wall times include loading the model once per run (both sides); medmtl reads ahead with its "
        "default prefetch (1 thread on CPU, up to 8 on GPU). The naive loop has no "
        "prefetch and runs the network on MONAI `MetaTensor`s; the share of each cause in the ratio was not isolated.",
        "",
        "| set | scans | medmtl scans/s | medmtl wall s | naive MONAI loop wall s | speed-up |",
        "|---|---|---|---|---|---|",
        f"| sample_data/ct_site_a ({s.get('shape', '?')}) | {s['n_scans']} | {s['medmtl_scans_per_s']:.3f} | "
        f"{s['medmtl_wall_s']:.1f} | {s['naive_wall_s']:.1f} | {s['speedup_vs_naive']:.2f}× |",
        f"| generated 512×512×{slices} | {big['n_scans']} | {big['medmtl_scans_per_s']:.3f} | "
        f"{big['medmtl_wall_s']:.1f} | {big['naive_wall_s']:.1f} | {big['speedup_vs_naive']:.2f}× |",
        "",
    ]
    if "load_avg_1min_start" in res:
        busy = max(res["load_avg_1min_start"], res.get("load_avg_1min_end", 0.0)) > (os.cpu_count() or 1) + 0.5
        lines.append(f"Machine load average during the run: {res['load_avg_1min_start']:.1f} → "
                     f"{res.get('load_avg_1min_end', float('nan')):.1f}"
                     + (" (other jobs shared the CPU; timings are noisy)." if busy else "."))
    if slices != 300:
        lines.append(f"The 512×512 scan has {slices} slices instead of 300 on this device (CPU time).")
    cuda = res["cuda"]
    if isinstance(cuda, dict):
        lines.append("GPU: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in cuda.items()))
    else:
        lines.append(f"GPU section (c): {cuda}.")
    lines.append("")
    path = REPO / "bench" / "RESULTS.md"
    existing = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    from medmtl.io.writers import atomic_write_text

    atomic_write_text(path, existing.rstrip("\n") + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
