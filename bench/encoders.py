"""Encoder benchmark: parameters, FLOPs, CPU forward time and peak memory per encoder × adapter.

Also measures how far the default zero depth padding of the ``inflate`` adapter moves each
feature level away from the 2D features on a depth-constant volume, against volume depth.

Run: ``python -m bench.encoders [--sizes 64 96] [--encoders ...] [--out bench/RESULTS.md]``.
Peak memory is the peak of PyTorch CPU allocations during one forward pass, from the
profiler's memory events (``torch.profiler``, ``profile_memory=True``); the growth of the
process ``ru_maxrss`` is reported too (monotonic: it only shows growth beyond the largest
earlier measurement).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import resource
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.machine import cpu_model
from medmtl.models.registry import create_encoder, list_encoders
from medmtl.models.weights import find_weights

ADAPTERS_3D = ("2.5d", "inflate", "acs")


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_bytes(fn) -> int:
    """Peak CPU bytes allocated by PyTorch during ``fn()`` via the profiler's memory events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    cur = peak = 0
    events = sorted(
        (e for e in prof.events() if getattr(e, "cpu_memory_usage", 0)),
        key=lambda e: e.time_range.start,
    )
    for e in events:
        cur += e.cpu_memory_usage
        peak = max(peak, cur)
    return peak


def bench_one(name: str, adapter: str, size: int, pretrained: bool, repeats: int) -> dict[str, float | str]:
    enc = create_encoder(name, adapter=adapter, pretrained=pretrained).eval()
    x = torch.randn(1, 3, size, size, size)
    params = sum(p.numel() for p in enc.parameters())
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            enc(x)
        flops = fc.get_total_flops()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            enc(x)
            times.append(time.perf_counter() - t0)
        rss0 = _rss_mib()
        peak = _peak_bytes(lambda: enc(x))
        rss1 = _rss_mib()
    return {
        "encoder": name, "adapter": adapter, "size": size, "pretrained": "yes" if pretrained else "no (random)",
        "params_M": params / 1e6, "gflops": flops / 1e9, "time_s": statistics.median(times),
        "peak_mib": peak / 2**20, "rss_growth_mib": max(rss1 - rss0, 0.0),
    }


def zero_padding_deviation(name: str, depths: list[int], size: int = 64) -> list[dict[str, float | int]]:
    """Relative L2 error of each inflate level (zero depth padding) vs the 2d features.

    The input is a random ``size × size`` image repeated ``depth`` times along K; the error of
    level l is ``||F3d[..., k] - F2d|| / ||F2d||`` over all slices k (all slices stacked).
    """
    pretrained = find_weights(next(i for i in list_encoders() if i.name == name).weights) is not None
    torch.manual_seed(0)
    enc2d = create_encoder(name, adapter="2d", pretrained=pretrained).eval()
    enc3d = create_encoder(name, adapter="inflate", pretrained=pretrained).eval()
    if not pretrained:
        from medmtl.models.inflate import inflate_module

        enc3d.backbone, _ = inflate_module(enc2d.backbone, stem=str(enc2d.backbone.first_conv))
    img = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    rows = []
    with torch.no_grad():
        f2 = enc2d(img)
        for depth in depths:
            f3 = enc3d(img.unsqueeze(-1).repeat(1, 1, 1, 1, depth))
            row: dict[str, float | int] = {"depth": depth}
            for level, (a, b) in enumerate(zip(f2, f3)):
                ref = a.unsqueeze(-1).expand_as(b)
                row[f"L{level + 1}"] = float((b - ref).norm() / ref.norm())
                # middle slice only: how deep a volume must be for its centre to be unaffected
                mid = b[..., b.shape[-1] // 2]
                row[f"L{level + 1}_mid"] = float((mid - a).norm() / a.norm())
            rows.append(row)
    return rows


def to_markdown(results: list[dict], deviations: dict[str, list[dict]], sizes: list[int], note: str) -> str:
    now = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    lines = [
        f"## Encoders (bench/encoders.py) — {now}",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} logical cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), Python {platform.python_version()}. {note}",
        "",
        "Batch 1, 3 input channels, input `(1, 3, N, N, N)`, eval mode, `torch.no_grad()`. Time = median "
        "CPU wall time of the forward passes. FLOPs from `torch.utils.flop_counter.FlopCounterMode` "
        "(2 × multiply-adds, convolutions and matmuls only). Peak = peak of PyTorch CPU allocations "
        "during one forward (torch.profiler memory events, which include freed intermediates); "
        "RSS growth = increase of the process `ru_maxrss` during that forward (monotonic, so 0 "
        "when an earlier run already reached it).",
        "",
        "| encoder | adapter | N | pretrained | params (M) | GFLOPs | time (s) | peak (MiB) | RSS growth (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['encoder']} | {r['adapter']} | {r['size']} | {r['pretrained']} | {r['params_M']:.2f} | "
            f"{r['gflops']:.1f} | {r['time_s']:.3f} | {r['peak_mib']:.0f} | {r['rss_growth_mib']:.0f} |"
        )
    for name, rows in deviations.items():
        lines += [
            "",
            f"### Inflate zero-depth-padding deviation — {name}",
            "",
            "Depth-constant input (a 64×64 random image repeated D times along K), default "
            "`depth_padding=\"zeros\"`: relative L2 error of each feature level vs the 2d features, "
            "over all slices, and (in brackets) at the middle slice only. With "
            "`depth_padding=\"replicate\"` every level is exact (< 1e-4, tested).",
            "",
            "| D | " + " | ".join(f"L{i} (stride {2**i})" for i in range(1, 6)) + " |",
            "|---|" + "---|" * 5,
        ]
        for row in rows:
            cells = [f"{row[f'L{i}']:.3f} ({row[f'L{i}_mid']:.3f})" for i in range(1, 6)]
            lines.append(f"| {row['depth']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    ap.add_argument("--encoders", nargs="+", default=None, help="default: every registered encoder")
    ap.add_argument("--adapters", nargs="+", default=list(ADAPTERS_3D))
    ap.add_argument("--depths", type=int, nargs="+", default=[16, 32, 64, 96])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--note", default="")
    ap.add_argument("--out", type=Path, default=None, help="append a markdown section to this file")
    args = ap.parse_args(argv)
    names = args.encoders or [i.name for i in list_encoders()]
    infos = {i.name: i for i in list_encoders()}
    results = []
    for name in names:
        pretrained = find_weights(infos[name].weights) is not None
        for adapter in args.adapters:
            for size in args.sizes:
                r = bench_one(name, adapter, size, pretrained, args.repeats)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}, flush=True)
                results.append(r)
    deviations = {"efficientnet-lite0": zero_padding_deviation("efficientnet-lite0", args.depths)}
    for row in deviations["efficientnet-lite0"]:
        print(row, flush=True)
    md = to_markdown(results, deviations, args.sizes, args.note)
    print(md)
    if args.out is not None:
        existing = args.out.read_text(encoding="utf-8") if args.out.exists() else "# Benchmark results\n"
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(existing.rstrip("\n") + "\n\n" + md, encoding="utf-8")
        tmp.replace(args.out)


if __name__ == "__main__":
    main()
