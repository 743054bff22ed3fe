"""A checkpoint as a MONAI bundle (``medmtl export-bundle``), and prediction from such a bundle.

Layout written by :func:`export_bundle` (the MONAI bundle specification's folders)::

    configs/metadata.json     versions, task, intended use, network_data_format, medmtl's weights hash
    configs/inference.json    ``python -m monai.bundle run`` entry: predicts a scan folder
    configs/model_card.json   the checkpoint's model card, byte for byte
    models/model.pt           the weights as a plain state dict (``torch.save`` of tensors only)
    docs/README.md            how to run it, what it writes

``configs/inference.json`` runs ``medmtl.api.predict_bundle`` (medmtl must be installed where the
bundle runs): the model is rebuilt from the card alone, exactly as ``medmtl predict`` builds it,
so the bundle finds the same lesions. :func:`bundle_checkpoint` turns ``models/model.pt`` back
into a medmtl checkpoint folder (canonical safetensors bytes, whose SHA-256 must equal the card's
— a replaced or edited ``model.pt`` is refused) in a temporary folder for the run. ``model.pt``
is read with ``torch.load(weights_only=True)``: no pickle code runs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medmtl.errors import CheckpointError

#: Files of a bundle, relative to its root.
BUNDLE_FILES = ("configs/metadata.json", "configs/inference.json", "configs/model_card.json", "models/model.pt",
                "docs/README.md")

_INFERENCE = {
    "imports": ["$import medmtl.api as medmtl_api"],
    "bundle_root": ".",
    "dataset_dir": "$@bundle_root + '/scans'",
    "output_dir": "$@bundle_root + '/eval'",
    "device": "auto",
    "overlap": 0.5,
    "run": ["$medmtl_api.predict_bundle(bundle_root=@bundle_root, input_dir=@dataset_dir, "
            "out_dir=@output_dir, device=@device, overlap=@overlap)"],
}

_README = """# {name}

A medmtl checkpoint (encoder `{encoder}`, adapter `{adapter}`, weights SHA-256 `{sha}`) as a MONAI bundle.
Research use only; not a medical device.

Run it on a folder of scans (NIfTI, MHA, NRRD or DICOM series) with medmtl installed:

    python -m monai.bundle run --config_file configs/inference.json --bundle_root . \\
        --dataset_dir /path/to/scans --output_dir /path/to/out

It writes what `medmtl predict` writes: `predictions.csv`
(`seriesuid,coordX,coordY,coordZ,probability,diameter_mm,malignancy_prob`, centres in LPS world mm),
`predictions.json` and per-scan records. The model is rebuilt from `configs/model_card.json`; the
weights are `models/model.pt` (a state dict; their canonical safetensors SHA-256 must equal the card's).
`--device cpu|cuda` and `--overlap` override the defaults (auto, 0.5).
"""


def _metadata(card: Any, versions: dict[str, str]) -> dict[str, Any]:
    """``configs/metadata.json``: the fields of MONAI's bundle metadata, from the card."""
    spec = card.input_spec
    modality = spec.modality
    return {
        "version": versions["medmtl"],
        "changelog": {versions["medmtl"]: f"exported by medmtl export-bundle (weights {card.weights_sha256[:16]})"},
        "monai_version": versions["monai"], "pytorch_version": versions["torch"], "numpy_version": versions["numpy"],
        "required_packages_version": {"medmtl": versions["medmtl"]},
        "name": f"medmtl {card.encoder.name} {card.model.adapter} lesion detector",
        "task": f"Lesion detection, diameter regression and malignancy classification in 3D {modality}",
        "description": "An ImageNet-pretrained 2D encoder adapted to 3D with a multi-task head (medmtl); "
                       "sliding-window inference, peaks + NMS, lesions in LPS world mm.",
        "authors": "medmtl", "copyright": "see the medmtl licence (Apache-2.0) and the encoder weights' licence",
        "intended_use": "Research only; not for clinical use.",
        "data_type": "nifti, mha, nrrd or dicom",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if modality == "CT" else "magnitude", "modality": modality,
                "num_channels": 1, "spatial_shape": list(card.patch_size), "dtype": "float32",
                "is_patch_data": True, "channel_def": {"0": "image"},
                "spacing_mm": list(spec.spacing_mm), "orientation": spec.orientation}},
            "outputs": {"pred": {
                "type": "object", "format": "medmtl predictions.csv (LPS world mm)",
                "channel_def": {"0": "detection probability", "1": "diameter (mm)", "2": "malignancy probability"}}},
        },
        "medmtl": {"weights_sha256": card.weights_sha256, "encoder": card.encoder.name, "adapter": card.model.adapter},
    }


def export_bundle(*, checkpoint: Path, out_dir: Path) -> dict[str, Any]:
    """Write ``checkpoint`` as a MONAI bundle into ``out_dir`` (see the module docstring).

    Returns:
        ``{"bundle", "files", "weights_sha256", "n_tensors"}``.

    Raises:
        CheckpointError: the checkpoint is invalid (card or weights hash).
        ConfigError: ``out_dir`` holds one of the bundle's files that medmtl did not write.
    """
    import torch
    from safetensors.torch import load_file

    from medmtl.engine.checkpoint import CARD_FILE, check_weights, library_versions, read_card
    from medmtl.io.outputs import check_output_path, check_outputs, record_outputs
    from medmtl.io.writers import atomic_save, atomic_write_bytes, atomic_write_json, atomic_write_text

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    card = read_card(checkpoint)
    state = load_file(str(check_weights(checkpoint, card)), device="cpu")
    check_output_path(out_dir)
    check_outputs(out_dir, BUNDLE_FILES)
    record_outputs(out_dir, BUNDLE_FILES)
    atomic_save(out_dir / "models" / "model.pt", lambda tmp: torch.save(state, tmp))
    atomic_write_bytes(out_dir / "configs" / "model_card.json", (checkpoint / CARD_FILE).read_bytes())
    atomic_write_json(out_dir / "configs" / "inference.json", _INFERENCE)
    atomic_write_json(out_dir / "configs" / "metadata.json", _metadata(card, library_versions()))
    atomic_write_text(out_dir / "docs" / "README.md", _README.format(
        name=f"medmtl {card.encoder.name} {card.model.adapter} lesion detector", encoder=card.encoder.name,
        adapter=card.model.adapter, sha=card.weights_sha256))
    return {"bundle": str(out_dir), "files": list(BUNDLE_FILES), "weights_sha256": card.weights_sha256,
            "n_tensors": len(state)}


def _state_dict(path: Path) -> dict[str, Any]:
    import pickle

    import torch

    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:  # weights_only: tensors only
        raise CheckpointError(f"bundle weights '{path}' cannot be read as a state dict ({exc.__class__.__name__}); "
                              "re-export the bundle with `medmtl export-bundle`") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"bundle weights '{path}' are not a state dict of tensors; re-export the bundle")
    return {str(k): v.contiguous() for k, v in state.items()}


@contextlib.contextmanager
def bundle_checkpoint(bundle_root: Path) -> Iterator[Path]:
    """A temporary medmtl checkpoint folder made from a bundle's ``models/model.pt`` and card.

    Raises:
        CheckpointError: a file is missing, ``model.pt`` is not a state dict, or its hash differs from the card's.
    """
    from medmtl.engine.checkpoint import (
        CARD_FILE,
        WEIGHTS_FILE,
        WEIGHTS_FORMAT,
        canonical_safetensors_bytes,
        check_weights,
        read_card,
    )

    root = Path(bundle_root)
    weights, card_file = root / "models" / "model.pt", root / "configs" / "model_card.json"
    for f in (weights, card_file):
        if not f.is_file():
            raise CheckpointError(f"bundle '{root}' has no {f.relative_to(root)}; pass --bundle_root the folder "
                                  "`medmtl export-bundle` wrote")
    card = read_card(card_file.parent)  # errors name the bundle's card
    blob = canonical_safetensors_bytes(_state_dict(weights), metadata={"format": "pt", "medmtl_format": WEIGHTS_FORMAT})
    with tempfile.TemporaryDirectory(prefix="medmtl-bundle-") as tmp:
        folder = Path(tmp)
        (folder / WEIGHTS_FILE).write_bytes(blob)
        shutil.copyfile(card_file, folder / CARD_FILE)
        try:
            check_weights(folder, card)
        except CheckpointError:
            raise CheckpointError(f"bundle weights '{weights}' do not match the card's SHA-256 {card.weights_sha256[:12]}… "
                                  "(configs/model_card.json); the file was replaced or edited — re-export the bundle") from None
        yield folder


def bundle_metadata(bundle_root: Path) -> dict[str, Any]:
    """``configs/metadata.json`` of a bundle (for tests and reports)."""
    return dict(json.loads((Path(bundle_root) / "configs" / "metadata.json").read_text(encoding="utf-8")))


__all__ = ["BUNDLE_FILES", "bundle_checkpoint", "bundle_metadata", "export_bundle"]
