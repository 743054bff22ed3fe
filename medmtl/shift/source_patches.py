"""Labelled source patches for the adaptation methods that keep the task losses (DANN, resim).

A labelled source scan becomes ``(volume (1, C, I, J, K), target maps, lesion voxel centres)``
after the checkpoint's preprocessing; :class:`LabelledPatches` pads the volumes that are
smaller than a patch and samples patches, half of them around a lesion when the scan has one
(the training sampler's idea, without MONAI's dictionary pipeline: the adaptation loops take
one or a few patches per step from tensors already in memory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from medmtl.io.types import Lesion, Scan

SourceItem = tuple["torch.Tensor", dict[str, "torch.Tensor"], list[list[int]]]


def pad_to_patch(x: torch.Tensor, patch_size: Sequence[int], *, mode: str = "replicate") -> tuple[torch.Tensor, list[int]]:
    """Pad a ``(1, C, I, J, K)`` volume symmetrically so that every axis holds at least one patch.

    Args:
        x: the volume.
        patch_size: patch size in voxels.
        mode: ``"replicate"`` (images) or ``"constant"`` (zeros: target maps and masks).

    Returns:
        The padded volume (``x`` itself when no axis is short) and the voxels added before
        each spatial axis (to shift voxel coordinates).
    """
    import torch.nn.functional as F

    before = [max(int(p) - int(s), 0) // 2 for s, p in zip(x.shape[-3:], patch_size)]
    extra = [max(int(p) - int(s), 0) for s, p in zip(x.shape[-3:], patch_size)]
    if not any(extra):
        return x, before
    pads: list[int] = []
    for e, b in zip(reversed(extra), reversed(before)):
        pads.extend([b, e - b])
    return F.pad(x, pads, mode=mode), before


def random_patch(x: torch.Tensor, patch_size: Sequence[int], gen: torch.Generator,
                 centre: Sequence[int] | None = None) -> tuple[slice, ...]:
    """Spatial slices of a random patch (around ``centre`` ± a quarter patch when given)."""
    import torch

    out = []
    for d, (size, p) in enumerate(zip(x.shape[-3:], patch_size)):
        hi = max(size - int(p), 0)
        if centre is not None:
            jitter = int(torch.randint(-int(p) // 4, int(p) // 4 + 1, (1,), generator=gen))
            start = min(max(int(centre[d]) - int(p) // 2 + jitter, 0), hi)
        else:
            start = int(torch.randint(0, hi + 1, (1,), generator=gen))
        out.append(slice(start, start + int(p)))
    return tuple(out)


def labelled_item(scan: Scan, lesions: Sequence[Lesion], spec: Any) -> SourceItem:
    """Preprocess one labelled scan with the checkpoint's input spec into a :data:`SourceItem`.

    Args:
        scan: the loaded scan (HU for CT).
        lesions: its lesions (LPS world mm).
        spec: the checkpoint's :class:`~medmtl.transforms.presets.InputSpec`.

    Returns:
        ``(volume (1, C, I, J, K) float32, {name: (1, 1, I, J, K)} target maps, lesion voxel centres)``.
    """
    import numpy as np
    import torch

    from medmtl.io.coords import lps_to_voxel
    from medmtl.transforms.presets import preprocess_scan
    from medmtl.transforms.targets import build_targets

    img = preprocess_scan(scan, spec)
    tmaps = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32)[None]
             for k, v in build_targets(img, list(lesions)).items()}
    centres = [[int(round(c)) for c in lps_to_voxel(le.center_lps, np.asarray(img.affine))[0]] for le in lesions]
    return torch.as_tensor(np.asarray(img), dtype=torch.float32)[None], tmaps, centres


class LabelledPatches:
    """Random patches (and their target maps) from labelled source volumes.

    Args:
        items: :data:`SourceItem` per scan (volumes smaller than a patch are padded here).
        patch_size: patch size in voxels.
        lesion_share: probability that a patch is centred (± a quarter patch) on a lesion of a
            scan that has one.
    """

    def __init__(self, items: Sequence[SourceItem], patch_size: Sequence[int], *, lesion_share: float = 0.5) -> None:
        if not items:
            raise ValueError("LabelledPatches needs at least one labelled source volume")
        self.patch_size = [int(p) for p in patch_size]
        self.lesion_share = lesion_share
        self.items: list[SourceItem] = []
        for vol, tmaps, centres in items:
            pv, before = pad_to_patch(vol, self.patch_size)
            pt = {k: pad_to_patch(v, self.patch_size, mode="constant")[0] for k, v in tmaps.items()}
            self.items.append((pv, pt, [[int(c) + b for c, b in zip(ctr, before)] for ctr in centres]))

    def sample(self, gen: torch.Generator, n: int = 1) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``n`` patches: ``(n, C, *patch)`` images and ``{name: (n, 1, *patch)}`` target maps."""
        import torch

        xs: list[torch.Tensor] = []
        ts: dict[str, list[torch.Tensor]] = {}
        for _ in range(n):
            vol, tmaps, centres = self.items[int(torch.randint(0, len(self.items), (1,), generator=gen))]
            centre = centres[int(torch.randint(0, len(centres), (1,), generator=gen))] if (
                len(centres) and float(torch.rand(1, generator=gen)) < self.lesion_share) else None
            sl = (slice(None), slice(None)) + random_patch(vol, self.patch_size, gen, centre)
            xs.append(vol[sl])
            for k, v in tmaps.items():
                ts.setdefault(k, []).append(v[sl])
        return torch.cat(xs), {k: torch.cat(v) for k, v in ts.items()}


def group_lesions(scans: Sequence[Scan], lesions: Sequence[Lesion]) -> Mapping[str, list[Lesion]]:
    """Lesions per scan id (scans without lesions map to an empty list)."""
    from medmtl.io.annotations import group_by_scan

    by_scan = group_by_scan(list(lesions))
    return {s.scan_id: list(by_scan.get(s.scan_id, [])) for s in scans}
