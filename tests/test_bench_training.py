"""bench/training.py: its summary arithmetic, the step-log capture, the GPU verdict, and a ``--fast``
run end to end (the JSON and Markdown it writes, not its timings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root (python -m bench.training)
    sys.path.insert(0, str(REPO))

from bench import training as T  # noqa: E402


def test_summarise_skips_the_warmup() -> None:
    steps = [T.StepTime(5.0, 5.0, 8, 10.0),  # warm-up: slow, excluded
             T.StepTime(0.5, 1.5, 8, 12.0), T.StepTime(0.5, 1.5, 8, 14.0), T.StepTime(1.0, 3.0, 4, 18.0)]
    s = T.summarise(steps, warmup=1)
    assert s["timed_steps"] == 3 and s["samples"] == 20
    assert s["timed_s"] == pytest.approx(8.0)
    assert s["samples_per_s"] == pytest.approx(20 / 8.0)
    assert s["data_s_per_step"] == pytest.approx(2.0 / 3) and s["step_s_per_step"] == pytest.approx(6.0 / 3)
    assert s["data_share"] == pytest.approx(0.25)
    assert s["window"] == [10.0, 18.0]  # from the end of the warm-up to the end of the last step
    with pytest.raises(ValueError, match="none after a warm-up of 4"):
        T.summarise(steps, warmup=4)


def test_trainer_step_log_reads_the_trainers_debug_line_and_restores_the_logger() -> None:
    from medmtl.engine import train_loop

    log = train_loop.logger
    before = (log.level, log.propagate, list(log.handlers))
    with T.trainer_step_log(batch_size=8) as cap:
        log.debug("step %d: data %.2f s, step %.2f s, losses %s", 0, 0.25, 1.5, {"total": 1.0})
        log.debug("something else %d", 3)
    assert [(s.data_s, s.step_s, s.samples) for s in cap.steps] == [(0.25, 1.5, 8)]
    assert (log.level, log.propagate, list(log.handlers)) == before


def test_gpu_sampler_averages_only_inside_the_window() -> None:
    sampler = T.GpuSampler(lambda: 0.0)
    sampler.samples = [(1.0, 100.0), (2.0, 50.0), (3.0, 70.0), (9.0, 0.0)]
    assert sampler.busy([1.5, 3.5]) == {"gpu_busy_share": pytest.approx(0.6), "gpu_samples": 2}
    assert sampler.busy([20.0, 30.0]) == {"gpu_busy_share": None, "gpu_samples": 0}


def _fake(device: str, ratio: float, busy: float | None) -> dict[str, Any]:
    return {"device": device, "fast": False, "ratio_samples_per_s": ratio, "medmtl": {"gpu_busy_share": busy}}


def test_verdict_against_the_gpu_targets() -> None:
    assert "ratio ≥ 2× **met** (2.10×)" in T.verdict(_fake("cuda", 2.1, 0.9))
    assert "busy ≥ 85% **met** (90%)" in T.verdict(_fake("cuda", 2.1, 0.9))
    assert "**NOT met** (1.50×)" in T.verdict(_fake("cuda", 1.5, 0.9))
    assert "busy ≥ 85% **NOT met** (40%)" in T.verdict(_fake("cuda", 2.1, 0.4))
    assert "**not measured** (—)" in T.verdict(_fake("cuda", 2.1, None))
    assert T.verdict(_fake("cpu", 1.3, None)).startswith("CPU: ratio reported (1.30×)")


def test_config_overrides_turn_validation_off_and_run_one_epoch() -> None:
    data = REPO / "sample_data" / "ct_site_a"
    ov = T.config_overrides(data, steps=80, warmup=5, device="cpu", fast=False, extra=["train.deterministic=false"])
    assert {f"data.root={data}", "data.val_fraction=0", "train.epochs=1", "train.steps_per_epoch=85"} <= set(ov)
    cfg = T.load_cfg(ov)
    assert cfg.data.val_fraction == 0 and cfg.train.epochs == 1 and cfg.train.steps_per_epoch == 85
    assert list(cfg.train.patch_size) == [32, 32, 32] and cfg.train.batch_size == 8 and not cfg.train.deterministic


def test_fast_run_end_to_end(tmp_path: Path) -> None:
    out, results = tmp_path / "out", tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n", encoding="utf-8")
    res = T.main(["--fast", "--out", str(out), "--work", str(tmp_path / "work"), "--append-results", str(results)])
    doc = json.loads((out / "training.json").read_text(encoding="utf-8"))
    assert doc["ratio_samples_per_s"] == pytest.approx(res["ratio_samples_per_s"])
    assert doc["fast"] is True and doc["device"] == "cpu" and doc["seed"] == 0 and doc["torch_threads"] >= 1
    assert doc["data"]["n_scans"] == T.FAST_N and doc["batch_size"] == 4 and doc["patch"] == [32, 32, 32]
    for side in ("medmtl", "naive"):
        r = doc[side]
        assert r["timed_steps"] == T.FAST_STEPS and r["samples"] == T.FAST_STEPS * 4
        assert r["samples_per_s"] > 0 and r["data_s_per_step"] >= 0 and r["step_s_per_step"] > 0
    assert doc["medmtl"]["steps_logged"] == T.FAST_STEPS + T.FAST_WARMUP
    assert doc["medmtl"]["settings"]["amp"] == "off"
    assert (tmp_path / "work" / "medmtl_run" / "checkpoint").is_dir()  # the real trainer ran to its end
    md = (out / "training.md").read_text(encoding="utf-8")
    assert md.startswith("## Training throughput (issue #15, item 4) — FAST SMOKE RUN")
    assert "| medmtl trainer (amp off" in md and "| naive MONAI loop (CacheDataset" in md
    assert f"**{doc['ratio_samples_per_s']:.2f}×**" in md and "not measured: no CUDA device" in md
    assert "`python -m bench.training --fast --out" in md
    appended = results.read_text(encoding="utf-8")
    assert appended.startswith("# Benchmark results\n") and appended.rstrip().endswith(md.rstrip())
