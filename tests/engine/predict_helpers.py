"""Helpers for the prediction tests: a small, fast checkpoint and small phantom scans.

The checkpoint is a real :class:`~medmtl.models.mtl_net.MultiTaskNet` (EfficientNet-Lite0,
ACS adapter, random weights, no download) saved with :func:`save_checkpoint`, so the whole
load → preprocess → sliding window → decode path runs. Its input spec resamples to 6 mm so a
phantom fits in one or a few 32³ windows; ``threshold = 1e-6`` (every peak) with ``max_lesions = 3`` makes
every scan yield exactly three detections, which is what the table checks need.
"""

from __future__ import annotations

from pathlib import Path

import torch

PATCH = (32, 32, 32)
DECODE = {"threshold": 1e-6, "nms_radius_mm": 10.0, "max_lesions": 3, "temperature": 1.5}


def build_model(seed: int = 0) -> torch.nn.Module:
    from medmtl.models.mtl_net import build_model as _build
    from medmtl.models.spec import ModelSpec

    torch.manual_seed(seed)
    spec = ModelSpec(encoder="efficientnet-lite0", adapter="acs", decoder_channels=(16, 16, 16, 16, 16))
    return _build(spec, pretrained=False).eval()


def make_checkpoint(folder: Path, seed: int = 0) -> Path:
    from medmtl.engine.card import card_for
    from medmtl.engine.checkpoint import save_checkpoint
    from medmtl.engine.decode import DecodeSettings
    from medmtl.transforms.presets import default_ct_spec

    model = build_model(seed)
    card = card_for(model, input_spec=default_ct_spec((6.0, 6.0, 6.0)), patch_size=PATCH,
                    decode=DecodeSettings(**DECODE))
    return save_checkpoint(folder, model, card)


def make_scans(folder: Path, *, n: int = 2, site: str = "a", seed: int = 0, dicom: bool = False,
               shape: tuple[int, int, int] = (48, 48, 32)) -> Path:
    from medmtl.data.phantom import write_phantom_set

    return write_phantom_set(folder, kind="ct", site=site, n=n, seed=seed, shape=shape, dicom=dicom)


def session_checkpoint(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """One checkpoint per test session, shared by every module that asks (built on first use)."""
    folder = tmp_path_factory.getbasetemp() / "medmtl_predict_checkpoint"
    if not (folder / "model_card.json").is_file():
        make_checkpoint(folder)
    return folder
