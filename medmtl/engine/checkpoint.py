"""Checkpoints: a folder with ``model.safetensors`` and ``model_card.json`` (no pickle, ever).

The model card holds everything prediction needs (DESIGN.md, "Checkpoint"): the encoder's
config record, the network build config, the input spec, the patch size, decode settings
(with the fitted malignancy temperature), the training config, the training data's
reference statistics for shift checks, adaptations applied later, library versions, the
weights' SHA-256 and the creation time. The weights file is written with a canonical
header (sorted keys), so identical tensors give identical bytes and the same
``weights_sha256`` in every process (see :func:`canonical_safetensors_bytes`).

Folders are written atomically: everything goes into a hidden sibling ``.<name>.tmp-xxxx``
first, which is then renamed into place; an existing folder is swapped out and removed only
after the new one is in place, so a kill never leaves a half-written checkpoint under the
final name.

Example:
    >>> folder = save_checkpoint("runs/x/checkpoint", model, card)  # doctest: +SKIP
    >>> model, card = load_checkpoint(folder)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medmtl.errors import CheckpointError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from medmtl.models.mtl_net import MultiTaskNet

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"

#: Keys every model card must hold.
CARD_KEYS = (
    "format_version",
    "medmtl_version",
    "encoder",
    "model",
    "input_spec",
    "patch_size",
    "decode",
    "train_config",
    "reference_stats",
    "adaptation",
    "versions",
    "weights_sha256",
    "created",
)
#: Keys of ``card["decode"]``.
DECODE_KEYS = ("threshold", "nms_radius_mm", "max_lesions", "temperature")


def library_versions() -> dict[str, str]:
    """Versions of Python, torch, MONAI, NumPy and medmtl (recorded in cards and run folders)."""
    import monai
    import numpy
    import torch

    from medmtl import __version__

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": numpy.__version__,
        "medmtl": __version__,
    }


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def canonical_safetensors_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """Serialise tensors to safetensors bytes that depend only on the tensors and metadata.

    ``safetensors`` writes its ``__metadata__`` map from a Rust ``HashMap``, whose iteration
    order is randomised per process: the same tensors saved by two processes gave two
    different files (and two different SHA-256s). The JSON header is therefore rewritten with
    sorted keys and no whitespace (padded with spaces to 8 bytes, as the format requires);
    the data section is unchanged. The result loads with every safetensors reader.

    Args:
        tensors: name → contiguous CPU tensor.
        metadata: optional string → string metadata.

    Returns:
        The file's bytes.
    """
    import struct

    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n].decode("utf-8"))
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def state_dict_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU clones of a module's parameters and buffers (BN stats too)."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def atomic_folder(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Create ``folder`` atomically: ``fill`` writes into a temporary sibling, then it is renamed.

    An existing ``folder`` is replaced only once the new content is complete.

    Args:
        folder: final folder path (its parent is created).
        fill: writes the folder's files into the path it is given.

    Returns:
        ``folder`` as a :class:`~pathlib.Path`.
    """
    target = Path(folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    old: Path | None = None
    try:
        fill(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.rmdir(old)
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _complete_card(model: MultiTaskNet, card: dict[str, Any]) -> dict[str, Any]:
    from medmtl import __version__
    from medmtl.models.mtl_net import model_config

    out = dict(card)
    out["format_version"] = FORMAT_VERSION
    out["medmtl_version"] = __version__
    if "model" not in out:
        out["model"] = model_config(model)
    if "encoder" not in out:
        out["encoder"] = model.encoder.config.to_dict()  # type: ignore[union-attr,operator]
    out.setdefault("train_config", None)
    out.setdefault("reference_stats", None)
    out.setdefault("adaptation", [])
    out["versions"] = library_versions()
    out["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    missing = [k for k in ("input_spec", "patch_size", "decode") if k not in out]
    if missing:
        raise CheckpointError(f"model card is missing key(s) {missing}; the trainer must supply them")
    dec_missing = [k for k in DECODE_KEYS if k not in out["decode"]]
    if dec_missing:
        raise CheckpointError(f"model card 'decode' is missing key(s) {dec_missing}; allowed keys: {list(DECODE_KEYS)}")
    return out


def save_checkpoint(
    folder: str | Path,
    model: MultiTaskNet,
    card: dict[str, Any],
    *,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model_card.json`` into ``folder`` atomically.

    Args:
        folder: checkpoint folder (replaced atomically if it exists).
        model: the multi-task network; its full state dict (incl. BatchNorm buffers) is saved.
        card: model card; must hold ``input_spec``, ``patch_size`` and ``decode``
            (``threshold``, ``nms_radius_mm``, ``max_lesions``, ``temperature``). ``model``
            and ``encoder`` default to the network's own config records; versions, SHA-256,
            format version and creation time are filled in here.
        extra: optional callback writing more files into the (temporary) folder, e.g. the
            training state for resume; they appear atomically with the model.

    Returns:
        The checkpoint folder.

    Raises:
        CheckpointError: the card lacks a required key.
    """
    from medmtl.io.writers import _jsonable

    full = _complete_card(model, card)
    blob = canonical_safetensors_bytes(
        state_dict_for_saving(model), metadata={"format": "pt", "medmtl_format": str(FORMAT_VERSION)}
    )
    full["weights_sha256"] = sha256_bytes(blob)  # a pure function of the tensors (same file bytes)

    def fill(tmp: Path) -> None:
        (tmp / WEIGHTS_FILE).write_bytes(blob)
        text = json.dumps(_jsonable(full), indent=2, allow_nan=False, sort_keys=False) + "\n"
        (tmp / CARD_FILE).write_text(text, encoding="utf-8")
        if extra is not None:
            extra(tmp)

    return atomic_folder(folder, fill)


def read_card(folder: str | Path) -> dict[str, Any]:
    """Read and check ``model_card.json`` of a checkpoint folder (weights not loaded).

    Raises:
        CheckpointError: the folder, the card file or a required key is missing, or the JSON
            is invalid.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder '{folder}' does not exist; pass a folder written by `medmtl train`")
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        raise CheckpointError(f"checkpoint '{folder}' has no {CARD_FILE}; it is incomplete, re-save or re-train it")
    try:
        card = json.loads(card_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{card_path} is not valid JSON ({exc.__class__.__name__}); the file is corrupt") from exc
    if not isinstance(card, dict):
        raise CheckpointError(f"{card_path} must hold a JSON object; the file is corrupt")
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise CheckpointError(f"{card_path} is missing key '{missing[0]}' (required: {', '.join(CARD_KEYS)})")
    if not isinstance(card["decode"], dict) or any(k not in card["decode"] for k in DECODE_KEYS):
        raise CheckpointError(f"{card_path} key 'decode' must hold {', '.join(DECODE_KEYS)}")
    if card["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{card_path} has format_version {card['format_version']!r}; this medmtl reads {FORMAT_VERSION}"
        )
    return card


def load_checkpoint(
    folder: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[MultiTaskNet, dict[str, Any]]:
    """Rebuild the network from its card and load the weights strictly (no pickle).

    Args:
        folder: checkpoint folder.
        device: where the model goes.

    Returns:
        ``(model, card)``; the model is in ``eval()`` mode.

    Raises:
        CheckpointError: a file or card key is missing, the weights' SHA-256 does not match
            the card, or the tensors do not fit the network.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medmtl.errors import MedmtlError
    from medmtl.models.mtl_net import build_model

    folder = Path(folder)
    card = read_card(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint '{folder}' has no {WEIGHTS_FILE}; it is incomplete, re-save or re-train it")
    digest = sha256_file(weights)
    if digest != card["weights_sha256"]:
        raise CheckpointError(
            f"{weights} SHA-256 {digest[:12]}… does not match the card's {str(card['weights_sha256'])[:12]}…;"
            " the weights are corrupt or were replaced"
        )
    try:
        model = build_model(card["model"], pretrained=False)
    except MedmtlError as exc:
        raise CheckpointError(f"cannot rebuild the network from {folder / CARD_FILE} key 'model': {exc}") from exc
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights} cannot be read as safetensors ({exc}); the file is corrupt") from exc
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise CheckpointError(f"{weights} does not fit the network of the card: {first}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{weights} does not fit the network of the card: missing {result.missing_keys[:3]},"
            f" unexpected {result.unexpected_keys[:3]}"
        )
    model.to(device)
    model.eval()
    return model, card


__all__ = [
    "CARD_FILE",
    "CARD_KEYS",
    "DECODE_KEYS",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "atomic_folder",
    "canonical_safetensors_bytes",
    "library_versions",
    "load_checkpoint",
    "read_card",
    "save_checkpoint",
    "sha256_bytes",
    "sha256_file",
    "state_dict_for_saving",
]
