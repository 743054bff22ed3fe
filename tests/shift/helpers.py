"""Small helpers shared by the shift CLI tests: scan subsets and a checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_scans(src: Path, dst: Path, n: int, *, annotations: bool = False) -> Path:
    """Copy the first ``n`` NIfTI scans of ``src`` (and optionally its annotations) to ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.glob("*.nii.gz"))[:n]:
        shutil.copy(f, dst / f.name)
    if annotations and (src / "annotations.csv").is_file():
        shutil.copy(src / "annotations.csv", dst / "annotations.csv")
    return dst


def make_checkpoint(folder: Path, scans_dir: Path | None) -> Path:
    """An untrained (ImageNet-initialised) checkpoint; with reference statistics of
    ``scans_dir`` when given, else without them."""
    from medmtl.engine.checkpoint import save_checkpoint
    from medmtl.io.read import load_folder
    from medmtl.models.mtl_net import build_model
    from medmtl.shift.reference import compute_reference_stats
    from medmtl.transforms.presets import default_ct_spec

    model = build_model({"encoder": "efficientnet-lite0", "adapter": "inflate"}, pretrained=True).eval()
    spec = default_ct_spec()
    ref = None
    if scans_dir is not None:
        scans, _ = load_folder(scans_dir, progress=False)
        ref = compute_reference_stats(model=model, scans=scans, input_spec=spec)
    card = {
        "input_spec": spec.to_dict(),
        "patch_size": [32, 32, 32],
        "decode": {"threshold": 0.5, "nms_radius_mm": 10.0, "max_lesions": 10, "temperature": 1.0},
        "reference_stats": ref,
    }
    return save_checkpoint(folder, model, card)
