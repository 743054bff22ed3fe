"""Training state for ``--resume``, stored without pickle.

Two files sit next to the model in ``<run>/last/``:

* ``train_state.safetensors``: every tensor of the state (optimizer moments, the torch / CUDA
  / NumPy random states), under flat names such as
  ``optimizer.state.3.exp_avg``;
* ``train_state.json``: everything else (epoch, step, optimizer param groups and scalar
  state, scheduler and grad-scaler state, Python RNG state, the weighting's ``state()``,
  early-stopping state, best metric, metric history).

``torch.load`` is never used: the JSON is plain data and safetensors holds raw tensors.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medmtl.errors import CheckpointError

STATE_TENSORS = "train_state.safetensors"
STATE_JSON = "train_state.json"


def _split(prefix: str, mapping: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Move the tensors of a (nested) mapping into ``tensors``; return the JSON-safe rest."""
    rest: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}.{key}"
        if isinstance(value, torch.Tensor):
            tensors[name] = value.detach().to("cpu").contiguous().clone()
            rest[str(key)] = {"__tensor__": name}
        elif isinstance(value, dict):
            rest[str(key)] = {"__dict__": _split(name, value, tensors)}
        elif isinstance(value, tuple):
            rest[str(key)] = {"__tuple__": list(value)}
        else:
            rest[str(key)] = value
    return rest


def _join(rest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Inverse of :func:`_split`."""
    out: dict[str, Any] = {}
    for key, value in rest.items():
        if isinstance(value, dict) and "__tensor__" in value:
            name = value["__tensor__"]
            if name not in tensors:
                raise CheckpointError(f"{STATE_TENSORS} lacks tensor '{name}'; the training state is corrupt")
            out[key] = tensors[name]
        elif isinstance(value, dict) and "__dict__" in value:
            out[key] = _join(value["__dict__"], tensors)
        elif isinstance(value, dict) and "__tuple__" in value:
            out[key] = tuple(value["__tuple__"])
        else:
            out[key] = value
    return out


def optimizer_state(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Flatten ``optimizer.state_dict()``: tensors into ``tensors``, the rest returned as JSON."""
    sd = optimizer.state_dict()
    state = {str(pid): _split(f"optimizer.state.{pid}", s, tensors) for pid, s in sd["state"].items()}
    groups = [_split(f"optimizer.group.{i}", g, tensors) for i, g in enumerate(sd["param_groups"])]
    return {"state": state, "param_groups": groups}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, rest: dict[str, Any], tensors: dict[str, torch.Tensor]
) -> None:
    """Restore an optimizer from :func:`optimizer_state`'s output."""
    state = {int(pid): _join(s, tensors) for pid, s in rest["state"].items()}
    groups = [_join(g, tensors) for g in rest["param_groups"]]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def rng_state(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Capture the Python, NumPy, torch and CUDA random states."""
    tensors["rng.torch"] = torch.get_rng_state().clone()
    n_cuda = 0
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.clone()
            n_cuda += 1
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64).copy())
    version, internal, gauss = random.getstate()
    return {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)},
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "n_cuda": n_cuda,
    }


def load_rng_state(rest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Restore the random states saved by :func:`rng_state`."""
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available() and rest.get("n_cuda", 0) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([tensors[f"rng.cuda.{i}"] for i in range(rest["n_cuda"])])
    npd = rest["numpy"]
    keys = tensors["rng.numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state((npd["kind"], keys, npd["pos"], npd["has_gauss"], npd["cached"]))
    py = rest["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))


def save_train_state(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    weighting: Any,
    meta: dict[str, Any],
) -> None:
    """Write ``train_state.safetensors`` + ``train_state.json`` into ``folder``.

    Args:
        folder: destination (normally the temporary folder of an atomic checkpoint).
        optimizer: the optimizer.
        scheduler: an LR scheduler with ``state_dict()`` (or ``None``).
        scaler: a ``torch.amp.GradScaler`` (or ``None``).
        weighting: the task weighting (its JSON-safe ``state()`` is saved) or ``None``.
        meta: JSON-safe extras (epoch, step, early stopping, best metric, history...).
    """
    from safetensors.torch import save_file

    from medmtl.io.writers import _jsonable

    tensors: dict[str, torch.Tensor] = {}
    doc: dict[str, Any] = {
        "meta": meta,
        "optimizer": optimizer_state(optimizer, tensors),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": _split("scaler", scaler.state_dict(), tensors) if scaler is not None else None,
        "weighting": weighting.state() if weighting is not None else None,
        "rng": rng_state(tensors),
    }
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(_jsonable(doc), indent=1) + "\n", encoding="utf-8")


def load_train_state(
    folder: Path,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    weighting: Any,
) -> dict[str, Any]:
    """Restore the state written by :func:`save_train_state`; returns its ``meta``.

    Raises:
        CheckpointError: a file is missing or corrupt.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    tpath, jpath = folder / STATE_TENSORS, folder / STATE_JSON
    for p in (tpath, jpath):
        if not p.is_file():
            raise CheckpointError(f"cannot resume: '{p}' is missing; the run has no complete last/ checkpoint")
    try:
        tensors = load_file(str(tpath), device="cpu")
        doc = json.loads(jpath.read_text(encoding="utf-8"))
    except (SafetensorError, OSError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"cannot resume: the training state in '{folder}' is corrupt ({exc})") from exc
    for key in ("meta", "optimizer", "scheduler", "scaler", "weighting", "rng"):
        if key not in doc:
            raise CheckpointError(f"cannot resume: {jpath} is missing key '{key}'")
    load_optimizer_state(optimizer, doc["optimizer"], tensors)
    if scheduler is not None and doc["scheduler"] is not None:
        scheduler.load_state_dict(doc["scheduler"])
    if scaler is not None and doc["scaler"] is not None:
        scaler.load_state_dict(_join(doc["scaler"], tensors))
    if weighting is not None and doc["weighting"] is not None:
        weighting.load_state(doc["weighting"])
    load_rng_state(doc["rng"], tensors)
    return dict(doc["meta"])


__all__ = [
    "STATE_JSON",
    "STATE_TENSORS",
    "load_optimizer_state",
    "load_rng_state",
    "load_train_state",
    "optimizer_state",
    "rng_state",
    "save_train_state",
]
