"""bench/inference.py: the CPU-checkable parts of its GPU section (window count, pure network total)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root (python -m bench.inference)
    sys.path.insert(0, str(REPO))

from bench import inference as I  # noqa: E402


@pytest.mark.parametrize(("shape", "overlap"), [((40, 36, 20), 0.25), ((64, 64, 32), 0.0), ((70, 50, 33), 0.5)])
def test_count_windows_matches_monai_sliding_window(shape: tuple[int, int, int], overlap: float) -> None:
    from monai.inferers import sliding_window_inference

    seen: list[int] = []

    def net(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape[0])
        return x

    patch = (16, 16, 8)
    sliding_window_inference(torch.zeros(1, 1, *shape), patch, 1, net, overlap=overlap)
    assert I.count_windows(shape, patch, overlap) == sum(seen)


def test_sliding_window_total() -> None:
    assert I.sliding_window_s_total(0.25, 8) == pytest.approx(2.0)


def test_setup_from_a_training_config_is_its_network_grid_and_patch() -> None:
    setup = I.Setup.from_config(str(REPO / "configs" / "ct_phantom_cpu.yaml"))
    assert setup.patch == (32, 32, 32)
    assert setup.spacing_mm == (1.25, 1.25, 1.25)
    assert setup.model["input_skip"] is True and "pretrained" not in setup.model
    default = I.Setup.from_config(None)
    assert default.patch == I.PATCH and default.spacing_mm == (3.0, 3.0, 3.0)
