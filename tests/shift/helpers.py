"""Small helpers shared by the shift CLI tests: scan subsets and cheap checkpoints.

The expensive things (an ImageNet-initialised checkpoint with reference statistics) are
built once per test session by :func:`shared_setup` and reused by every shift test module:
the checkpoints use a coarse 6 mm input grid, so a sample-data scan is about one 32³ patch
and AdaBN / TENT / DANN / prediction take a second or two per scan on a 2-core CPU.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import pytest

    from medmtl.transforms.presets import InputSpec

#: Input grid of the test checkpoints (mm): coarse, so every network pass is cheap.
TEST_SPACING_MM = (6.0, 6.0, 6.0)


def copy_scans(src: Path, dst: Path, n: int, *, annotations: bool = False) -> Path:
    """Copy the first ``n`` NIfTI scans of ``src`` (and optionally its annotations) to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.nii.gz"))[:n]:
        shutil.copy(f, dst / f.name)
    if annotations and (src / "annotations.csv").is_file():
        shutil.copy(src / "annotations.csv", dst / "annotations.csv")
    return dst


def make_checkpoint(
    folder: Path,
    scans_dir: Path | None,
    *,
    spec: InputSpec | None = None,
    patch_size: Sequence[int] = (32, 32, 32),
    threshold: float = 0.5,
) -> Path:
    """An untrained (ImageNet-initialised) checkpoint; with reference statistics of
    ``scans_dir`` when given, else without them.

    Args:
        folder: checkpoint folder to write.
        scans_dir: scans whose reference statistics go into the card (``None``: none).
        spec: input spec (default: the CT default at 3 mm).
        patch_size: the card's patch size (voxels).
        threshold: the card's detection threshold (low values make an untrained model
            produce detections, so that evaluation has something to score).
    """
    from medmtl.engine.card import card_for
    from medmtl.engine.checkpoint import save_checkpoint
    from medmtl.engine.decode import DecodeSettings
    from medmtl.io.read import load_folder
    from medmtl.models.mtl_net import build_model
    from medmtl.models.spec import ModelSpec
    from medmtl.shift.reference import compute_reference_stats
    from medmtl.transforms.presets import default_ct_spec

    model = build_model(ModelSpec(encoder="efficientnet-lite0", adapter="inflate"), pretrained=True).eval()
    spec = spec if spec is not None else default_ct_spec()
    ref = None
    if scans_dir is not None:
        scans, _ = load_folder(scans_dir, progress=False)
        ref = compute_reference_stats(model=model, scans=scans, input_spec=spec)
    card = card_for(model, input_spec=spec, patch_size=patch_size, reference_stats=ref,
                    decode=DecodeSettings(threshold=threshold, nms_radius_mm=10.0, max_lesions=10, temperature=1.0))
    return save_checkpoint(folder, model, card)


def shared_setup(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Scan subsets and a coarse CT checkpoint, built once per session (cached on disk).

    Returns:
        ``a`` (3 site-A scans + annotations), ``b`` (2 site-B scans + annotations), ``b1``
        (1 site-B scan), ``ckpt`` (6 mm CT checkpoint, reference statistics of ``a``,
        detection threshold 0.05).
    """
    from medmtl.transforms.presets import default_ct_spec

    root = tmp_path_factory.getbasetemp() / "shift_shared"
    paths = {"a": root / "a", "b": root / "b", "b1": root / "b1", "ckpt": root / "ckpt"}
    if (paths["ckpt"] / "model_card.json").is_file():
        return paths
    copy_scans(sample_data / "ct_site_a", paths["a"], 3, annotations=True)
    copy_scans(sample_data / "ct_site_b", paths["b"], 2, annotations=True)
    copy_scans(sample_data / "ct_site_b", paths["b1"], 1)
    make_checkpoint(paths["ckpt"], paths["a"], spec=default_ct_spec(spacing=TEST_SPACING_MM), threshold=0.05)
    return paths
