"""Encoder features pooled per scan and per patch, with a fixed preprocessing and a cache.

Feature-space shift tests compare cohorts in the representation a network actually sees
(Rabanser et al., "Failing loudly: an empirical study of methods for detecting dataset
shift", NeurIPS 2019, found pooled pretrained features + a kernel two-sample test to be the
most reliable detector). Each scan is preprocessed with one fixed :class:`InputSpec`, the
encoder runs on the whole volume (centre-cropped to ``max_shape`` voxels; for a checkpoint's
network edge-padded to a multiple of 32), and every feature level is global-average-pooled; the levels are
concatenated into one vector of ``sum(C_l)`` floats.

The extractor is either the embedded ImageNet EfficientNet-Lite0 with the ``inflate`` adapter
(the default, independent of any training) or a checkpoint's own encoder. Its identity
(encoder, adapter, a hash of its weights and buffers, the input spec, the crop) is recorded
next to every stored feature matrix so features from different extractors are never compared.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from medmtl.io.types import Scan
    from medmtl.transforms.presets import InputSpec

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "efficientnet-lite0"
"""Registry name of the default feature extractor's encoder."""
DEFAULT_ADAPTER = "inflate"
DEFAULT_MAX_SHAPE: tuple[int, int, int] = (128, 128, 128)
PAD_MULTIPLE = 32


def scan_key(scan: Scan) -> str:
    """Content hash of a scan (voxels, affine, modality): the cache key of its features."""
    from medmtl.shift.fingerprint import image_array

    h = hashlib.sha1()
    arr = image_array(scan)
    h.update(np.ascontiguousarray(arr).tobytes())
    aff = scan.image.affine
    aff_np = np.asarray(aff.detach().cpu() if hasattr(aff, "detach") else aff, dtype=np.float64)
    h.update(aff_np.tobytes())
    h.update(scan.modality.encode())
    return h.hexdigest()


def module_hash(module: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) over a module's parameters and buffers, by name."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def center_crop_pad(x: torch.Tensor, max_shape: Sequence[int], multiple: int = PAD_MULTIPLE) -> torch.Tensor:
    """Centre-crop the spatial axes of ``(B, C, I, J, K)`` to ``max_shape`` and edge-pad them
    up to a multiple of ``multiple`` (so every stride-32 network level is well defined)."""
    import torch.nn.functional as F

    slices: list[slice] = [slice(None), slice(None)]
    for size, cap in zip(x.shape[2:], max_shape):
        if size > cap:
            start = (size - cap) // 2
            slices.append(slice(start, start + cap))
        else:
            slices.append(slice(None))
    x = x[tuple(slices)]
    pads: list[int] = []
    for size in reversed(x.shape[2:]):
        total = (-size) % multiple
        pads.extend([total // 2, total - total // 2])
    if any(pads):
        x = F.pad(x, pads, mode="replicate")
    return x


def pool_levels(features: Sequence[torch.Tensor]) -> NDArray[np.float32]:
    """Global-average-pool each ``(B, C_l, ...)`` level and concatenate → ``(B, sum C_l)``."""
    import torch

    pooled = [f.float().flatten(2).mean(dim=2) for f in features]
    return torch.cat(pooled, dim=1).detach().cpu().numpy().astype(np.float32)


@dataclass
class FeatureExtractor:
    """Pooled encoder features for scans, cached by scan content.

    Attributes:
        encoder: a medmtl ``Encoder`` (``forward(x (B, C, I, J, K)) -> list[(B, C_l, ...)]``).
        spec: the fixed preprocessing spec applied to every scan.
        identity: JSON-safe description (encoder, adapter, weights hash, spec, crop); two
            feature matrices are comparable only when their identities are equal.
        max_shape: largest spatial shape fed to the encoder (centre crop), voxels.
        pad_multiple: spatial sizes are edge-padded up to a multiple of this (32 when the
            whole multi-task network runs on the volume: its decoder needs it).
        device: torch device string.
        cache_dir: optional folder where features are also cached on disk (``.npy``).
    """

    encoder: nn.Module
    spec: InputSpec
    identity: dict[str, Any]
    max_shape: tuple[int, int, int] = DEFAULT_MAX_SHAPE
    device: str = "cpu"
    cache_dir: Path | None = None
    pad_multiple: int = 1
    _cache: dict[str, NDArray[np.float32]] = field(default_factory=dict, repr=False)

    def prepare(self, scan: Scan) -> torch.Tensor:
        """Preprocess a scan with :attr:`spec` → ``(1, 3, I', J', K')`` float32 on :attr:`device`."""
        import torch

        from medmtl.transforms.presets import preprocess_scan

        img = preprocess_scan(scan, self.spec)
        x = torch.as_tensor(np.asarray(img.detach().cpu() if hasattr(img, "detach") else img), dtype=torch.float32)
        x = x.unsqueeze(0).to(self.device)
        return center_crop_pad(x, self.max_shape, self.pad_multiple)

    def _disk_path(self, key: str) -> Path | None:
        if self.cache_dir is None:
            return None
        ident = hashlib.sha1(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:12]
        return self.cache_dir / ident / f"{key}.npy"

    def pooled(self, scan: Scan) -> NDArray[np.float32]:
        """Pooled features of one scan, ``(F,)`` float32 (cached)."""
        import torch

        key = scan_key(scan)
        if key in self._cache:
            return self._cache[key]
        disk = self._disk_path(key)
        if disk is not None and disk.is_file():
            vec = np.load(disk).astype(np.float32)
            self._cache[key] = vec
            return vec
        was_training = self.encoder.training
        self.encoder.eval()
        with torch.inference_mode():
            feats = self.encoder(self.prepare(scan))
        self.encoder.train(was_training)
        vec = pool_levels(feats)[0]
        self._cache[key] = vec
        if disk is not None:
            from medmtl.io.writers import atomic_save

            disk.parent.mkdir(parents=True, exist_ok=True)
            atomic_save(disk, lambda tmp: np.save(tmp, vec))
        return vec

    def pooled_many(self, scans: Sequence[Scan]) -> NDArray[np.float32]:
        """Pooled features of several scans, ``(N, F)`` float32."""
        if not scans:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([self.pooled(s) for s in scans])

    def store(self, scan: Scan, vector: NDArray[np.float32]) -> None:
        """Put features computed elsewhere (e.g. during a full-model pass) into the cache."""
        self._cache[scan_key(scan)] = np.asarray(vector, dtype=np.float32)

    def patches(self, scan: Scan, patch_size: Sequence[int] = (48, 48, 48)) -> NDArray[np.float32]:
        """Pooled features of non-overlapping patches tiling the prepared volume, ``(P, F)``.

        Patches that would run past the volume are dropped (at least one patch is kept: the
        first corner patch clipped to the volume).
        """
        import torch

        x = self.prepare(scan)
        shape = x.shape[2:]
        starts = [list(range(0, max(s - p, 0) + 1, p)) for s, p in zip(shape, patch_size)]
        crops = []
        for i in starts[0]:
            for j in starts[1]:
                for k in starts[2]:
                    crops.append(x[:, :, i : i + patch_size[0], j : j + patch_size[1], k : k + patch_size[2]])
        out = []
        self.encoder.eval()
        with torch.inference_mode():
            for c in crops:
                out.append(pool_levels(self.encoder(c))[0])
        return np.stack(out)


def extractor_identity(
    encoder: nn.Module, spec: InputSpec, kind: str, max_shape: Sequence[int], pad_multiple: int = 1
) -> dict[str, Any]:
    """JSON-safe identity of a feature extractor (see :class:`FeatureExtractor`)."""
    cfg = getattr(encoder, "config", None)
    return {
        "kind": kind,
        "encoder": getattr(cfg, "name", type(encoder).__name__),
        "adapter": getattr(cfg, "adapter", None),
        "weights_hash": module_hash(encoder),
        "input_spec": spec.to_dict(),
        "max_shape": [int(s) for s in max_shape],
        "pad_multiple": int(pad_multiple),
        "pooling": "global-average per level, concatenated",
    }


def default_extractor(
    spec: InputSpec,
    *,
    encoder_name: str = DEFAULT_ENCODER,
    adapter: str = DEFAULT_ADAPTER,
    max_shape: Sequence[int] = DEFAULT_MAX_SHAPE,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> FeatureExtractor:
    """The ImageNet-pretrained encoder (EfficientNet-Lite0, ``inflate`` adapter by default) as a
    feature extractor, independent of any training run."""
    from medmtl.models.registry import create_encoder

    enc = create_encoder(encoder_name, adapter=adapter, pretrained=True)
    enc = enc.to(device).eval()
    ms = tuple(int(s) for s in max_shape)
    return FeatureExtractor(
        encoder=enc,
        spec=spec,
        identity=extractor_identity(enc, spec, "pretrained", ms),
        max_shape=ms,  # type: ignore[arg-type]
        device=device,
        cache_dir=cache_dir,
    )


def model_extractor(
    model: nn.Module,
    spec: InputSpec,
    *,
    max_shape: Sequence[int] = DEFAULT_MAX_SHAPE,
    device: str = "cpu",
    cache_dir: Path | None = None,
) -> FeatureExtractor:
    """A trained model's encoder (``model.encoder`` of a ``MultiTaskNet``, or an encoder) as a
    feature extractor."""
    enc = getattr(model, "encoder", model)
    ms = tuple(int(s) for s in max_shape)
    return FeatureExtractor(
        encoder=enc,
        spec=spec,
        identity=extractor_identity(enc, spec, "checkpoint", ms, PAD_MULTIPLE),
        max_shape=ms,  # type: ignore[arg-type]
        device=device,
        cache_dir=cache_dir,
        pad_multiple=PAD_MULTIPLE,
    )
