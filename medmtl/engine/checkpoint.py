"""Checkpoint files: a folder with ``model.safetensors`` and ``model_card.json`` (no pickle, ever).

This module only handles files — canonical safetensors bytes, SHA-256, atomic folders, reading
and writing the card's JSON. The card itself is the typed record
:class:`medmtl.engine.card.ModelCard` (validated when read). The weights file is written with
a canonical header (sorted keys), so identical tensors give identical bytes and the same
SHA-256 in every process (see :func:`canonical_safetensors_bytes`).

Folders are written atomically: everything goes into a hidden sibling ``.<name>.tmp-xxxx``
first, which is then renamed into place; an existing folder is swapped out and removed only
after the new one is in place, so a kill never leaves a half-written checkpoint under the
final name.

Example:
    >>> folder = save_checkpoint("runs/x/checkpoint", model, card)  # doctest: +SKIP
    >>> model, card = load_checkpoint(folder)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from medmtl.errors import CheckpointError
from medmtl.io.hashing import sha256_bytes, sha256_file
from medmtl.io.writers import honour_umask

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from medmtl.engine.card import ModelCard
    from medmtl.models.mtl_net import MultiTaskNet

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
#: safetensors metadata tag of the weights layout.
WEIGHTS_FORMAT = "1"


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
                honour_umask(f)
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        honour_umask(tmp, folder=True)
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


def save_checkpoint(
    folder: str | Path,
    model: MultiTaskNet,
    card: ModelCard,
    *,
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``model.safetensors`` and ``model_card.json`` into ``folder`` atomically.

    Args:
        folder: checkpoint folder (replaced atomically if it exists).
        model: the multi-task network; its full state dict (incl. BatchNorm buffers) is saved.
        card: the model card; its provenance (versions, the weights' SHA-256, time) is set here.
        extra: optional callback writing more files into the (temporary) folder, e.g. the
            training state for resume; they appear atomically with the model.

    Returns:
        The checkpoint folder.
    """
    from medmtl.engine.card import new_provenance

    blob = canonical_safetensors_bytes(
        state_dict_for_saving(model), metadata={"format": "pt", "medmtl_format": WEIGHTS_FORMAT}
    )
    full = card.replace(provenance=new_provenance(sha256_bytes(blob)))  # hash = f(tensors) (same bytes)

    def fill(tmp: Path) -> None:
        (tmp / WEIGHTS_FILE).write_bytes(blob)
        write_card_file(tmp, full)
        if extra is not None:
            extra(tmp)

    return atomic_folder(folder, fill)


def write_card_file(folder: str | Path, card: ModelCard) -> Path:
    """Write ``card`` as ``folder/model_card.json`` (atomically; the weights are not touched).

    Raises:
        CheckpointError: the card has no provenance (it was never saved with weights).
    """
    from medmtl.io.writers import _jsonable, atomic_write_text

    if card.provenance is None:
        raise CheckpointError("a model card without provenance (weights SHA-256) cannot be written alone; "
                              "use save_checkpoint(folder, model, card)")
    text = json.dumps(_jsonable(card.to_dict()), indent=2, allow_nan=False, sort_keys=False) + "\n"
    return atomic_write_text(Path(folder) / CARD_FILE, text)


def read_card(folder: str | Path) -> ModelCard:
    """Read and validate ``model_card.json`` of a checkpoint folder (weights not loaded).

    Raises:
        CheckpointError: the folder or the card file is missing, the JSON is invalid, or a
            card value is unknown, of the wrong type or out of range (one line naming the key).
    """
    from medmtl.engine.card import ModelCard

    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder '{folder}' does not exist; pass a folder written by `medmtl train`")
    card_path = folder / CARD_FILE
    if not card_path.is_file():
        if (folder / "checkpoint" / CARD_FILE).is_file():  # a run folder: its model is in checkpoint/
            raise CheckpointError(f"'{folder}' is a run folder, not a checkpoint (no {CARD_FILE}); pass "
                                  f"'{folder / 'checkpoint'}'")
        raise CheckpointError(f"checkpoint '{folder}' has no {CARD_FILE}; it is incomplete, re-save or re-train it")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8-sig"))  # a byte-order mark from an editor is fine
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{card_path} is not valid JSON ({exc.__class__.__name__}); the file is corrupt — "
                              "expected the UTF-8 JSON object `medmtl train` wrote: restore it or re-train") from exc
    return ModelCard.from_dict(data, where=str(card_path))


def check_weights(folder: str | Path, card: ModelCard) -> Path:
    """The weights file of ``folder``, after checking its SHA-256 against the card.

    Raises:
        CheckpointError: the file is missing or its hash differs.
    """
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"checkpoint '{folder}' has no {WEIGHTS_FILE}; it is incomplete, re-save or re-train it")
    digest = sha256_file(weights)
    if digest != card.weights_sha256:
        raise CheckpointError(
            f"{weights} SHA-256 {digest[:12]}… does not match the card's {card.weights_sha256[:12]}…;"
            " the weights are corrupt or were replaced"
        )
    return weights


def load_checkpoint(
    folder: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[MultiTaskNet, ModelCard]:
    """Rebuild the network from its card and load the weights strictly (no pickle).

    Args:
        folder: checkpoint folder.
        device: where the model goes.

    Returns:
        ``(model, card)``; the model is in ``eval()`` mode.

    Raises:
        CheckpointError: a file is missing, a card value is invalid, the weights' SHA-256 does
            not match the card, the card's patch size does not fit the network's strides, or
            the tensors do not fit the network.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medmtl.errors import MedmtlError
    from medmtl.models.mtl_net import build_model
    from medmtl.models.spec import check_patch_divisible

    folder = Path(folder)
    card = read_card(folder)
    weights = check_weights(folder, card)
    try:
        model = build_model(card.model, pretrained=False)
        check_patch_divisible(card.patch_size, model.divisor, f"{folder / CARD_FILE} key 'patch_size'")
    except MedmtlError as exc:
        raise CheckpointError(f"cannot rebuild the network from {folder / CARD_FILE}: {exc}") from exc
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
    "WEIGHTS_FILE",
    "atomic_folder",
    "canonical_safetensors_bytes",
    "check_weights",
    "library_versions",
    "load_checkpoint",
    "read_card",
    "save_checkpoint",
    "state_dict_for_saving",
    "write_card_file",
]
