"""Must-show: the tiny config overfits 4 sample scans on CPU.

The total loss falls at least 5× and the heatmap peaks land within one lesion radius of
the true centres. This needs on the order of a hundred optimisation steps of the 3D network,
several minutes on 2 CPU cores, so it runs with ``pytest -m slow``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"

OVERFIT = [
    "data.max_scans=4",
    "data.val_fraction=0",
    "data.reference_scans=1",
    "model.decoder_channels=null",
    "train.epochs=12",
    "train.steps_per_epoch=10",
    "train.batch_size=4",
    "train.samples_per_scan=4",
    "train.pos_fraction=1.0",
    "train.augment=none",
    "train.learning_rate=0.003",
    "train.conflict_every=0",
    "strategy.params={pretrained_lr_mult: 1.0}",
    "train.progress=false",
]


@pytest.mark.slow
def test_tiny_config_overfits_four_scans(tmp_path: Path) -> None:
    from medmtl.config import load_config
    from medmtl.data.dataset import load_training_data, preprocess_volumes
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.engine.decode import decode_lesions
    from medmtl.engine.inference import sliding_window_maps
    from medmtl.engine.trainer import run_training

    cfg = load_config(TINY, OVERFIT)
    ckpt = run_training(cfg, tmp_path / "run")
    with open(tmp_path / "run" / "metrics.csv", encoding="utf-8") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert losses[0] / losses[-1] >= 5.0, losses

    model, card = load_checkpoint(ckpt)
    data = load_training_data(cfg)
    volumes = preprocess_volumes(data.train_items, data.spec)
    assert len(volumes) == 4
    misses = []
    for vol in volumes:
        maps = sliding_window_maps(model, vol.image.as_tensor()[None], roi_size=card["patch_size"], overlap=0.5)
        dets = decode_lesions(maps, vol.image.affine, seriesuid=vol.scan_id, threshold=0.05,
                              nms_radius_mm=4.0, max_lesions=len(vol.lesions) * 3)
        for les in vol.lesions:
            d = min((float(np.linalg.norm(np.subtract(x.center_lps, les.center_lps))) for x in dets), default=np.inf)
            if d > les.diameter_mm / 2:
                misses.append((les.seriesuid, les.diameter_mm, d))
    assert not misses, misses
