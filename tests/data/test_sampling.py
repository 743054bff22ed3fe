"""Training-patch sampling: no position bias, hard negatives on vessels, replayable draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import RandCropByPosNegLabeld

from medmtl.data.dataset import PATCH_KEYS
from medmtl.transforms.crops import HardNegativeMapd, LesionAnywhereCropd
from medmtl.transforms.presets import default_ct_spec

SHAPE = (48, 48, 48)
PATCH = (16, 16, 16)
MARGIN = 4


def _item(peak: tuple[int, int, int] = (24, 24, 24)) -> dict[str, torch.Tensor]:
    heat = torch.zeros((1, *SHAPE))
    heat[(0, *peak)] = 1.0
    item = {k: torch.zeros((1, *SHAPE)) for k in PATCH_KEYS}
    item["image"] = torch.randn((3, *SHAPE))
    item["heatmap"] = heat
    item["pos"] = (heat >= 0.5).to(torch.uint8)
    return item


def _lesion_offsets(patches: list[dict[str, torch.Tensor]]) -> np.ndarray:
    """Where the lesion peak lies inside each patch, ``(N, 3)`` voxels."""
    out = []
    for p in patches:
        idx = torch.nonzero(p["heatmap"][0] >= 1.0 - 1e-6)
        assert len(idx) == 1, "every positive patch holds its lesion"
        out.append(idx[0].numpy())
    return np.asarray(out)


def _draw(crop: object, item: dict[str, torch.Tensor], n_calls: int) -> list[dict[str, torch.Tensor]]:
    patches: list[dict[str, torch.Tensor]] = []
    for _ in range(n_calls):
        patches.extend(crop(item))  # type: ignore[operator]
    return patches


def test_lesion_position_in_patch_is_uniform() -> None:
    """Positives place the lesion anywhere in [margin, patch - margin), uniformly per axis."""
    from scipy.stats import chisquare

    crop = LesionAnywhereCropd(list(PATCH_KEYS), PATCH, num_samples=8, pos_fraction=1.0, margin=MARGIN)
    crop.set_random_state(seed=0)
    offsets = _lesion_offsets(_draw(crop, _item(), 200))  # 1600 patches
    allowed = np.arange(MARGIN, PATCH[0] - MARGIN)
    for axis in range(3):
        counts = np.array([(offsets[:, axis] == v).sum() for v in allowed])
        assert counts.sum() == len(offsets), "no lesion closer than the margin to a face"
        # Uniform over the 8 allowed positions: chi-square p above 0.001 (expected 200 each).
        assert chisquare(counts).pvalue > 1e-3, counts
    # Only an eighth of them sit within ±1 voxel of the patch centre (uniform: 3/8 per axis).
    central = np.all(np.abs(offsets - np.asarray(PATCH) // 2) <= 1, axis=1).mean()
    assert central < 0.1


def test_monai_centred_sampling_is_position_biased() -> None:
    """The bias the sampler removes: RandCropByPosNegLabeld centres positives on the lesion."""
    keys = [*PATCH_KEYS, "pos"]
    crop = RandCropByPosNegLabeld(keys=keys, label_key="pos", spatial_size=list(PATCH), pos=1.0, neg=0.0,
                                  num_samples=8)
    crop.set_random_state(seed=0)
    offsets = _lesion_offsets(_draw(crop, _item(), 20))
    central = np.all(np.abs(offsets - np.asarray(PATCH) // 2) <= 1, axis=1).mean()
    assert central == 1.0


def test_lesion_near_the_border_stays_inside_the_patch() -> None:
    crop = LesionAnywhereCropd(list(PATCH_KEYS), PATCH, num_samples=8, pos_fraction=1.0, margin=MARGIN)
    crop.set_random_state(seed=1)
    offsets = _lesion_offsets(_draw(crop, _item(peak=(1, 46, 24)), 20))
    assert offsets[:, 0].max() <= 1 and offsets[:, 1].min() >= PATCH[1] - 2


def _ct_item_with_vessel() -> dict[str, torch.Tensor]:
    """Preprocessed-looking CT: aerated lung (-860 HU) with one dense vessel along k (40 HU)."""
    spec = default_ct_spec()
    hu = torch.full(SHAPE, -860.0)
    hu[10:13, 30:33, :] = 40.0
    channels = []
    for c, (centre, width) in enumerate(spec.windows):
        v = ((hu - (centre - width / 2)) / width).clamp(0, 1)
        channels.append((v - spec.mean[c]) / spec.std[c])
    item = _item()
    item["image"] = torch.stack(channels)
    return item


def test_hard_negatives_are_dense_structures_next_to_lung() -> None:
    item = HardNegativeMapd(default_ct_spec())(_ct_item_with_vessel())
    hard = item["hard"][0].bool()
    assert hard.sum() == 3 * 3 * SHAPE[2]  # exactly the vessel
    assert hard[10:13, 30:33, :].all()


def test_hard_negative_patches_centre_on_the_vessel() -> None:
    item = HardNegativeMapd(default_ct_spec())(_ct_item_with_vessel())
    item["heatmap"] = torch.zeros_like(item["heatmap"])  # a lesion-free scan: negatives only
    crop = LesionAnywhereCropd(list(PATCH_KEYS), PATCH, num_samples=50, pos_fraction=0.5, hard_fraction=1.0)
    crop.set_random_state(seed=2)
    for start in crop.starts(item):
        assert start[0] <= 12 and start[0] + PATCH[0] > 10 and start[1] <= 32 and start[1] + PATCH[1] > 30


def test_hard_negative_map_is_empty_for_mr() -> None:
    from medmtl.transforms.presets import default_mri_spec

    item = HardNegativeMapd(default_mri_spec())(_ct_item_with_vessel())
    assert int(item["hard"].sum()) == 0


@pytest.mark.parametrize("seed", [0, 5])
def test_same_seed_same_patches(seed: int) -> None:
    a = LesionAnywhereCropd(list(PATCH_KEYS), PATCH, num_samples=6, pos_fraction=0.5)
    b = LesionAnywhereCropd(list(PATCH_KEYS), PATCH, num_samples=6, pos_fraction=0.5)
    a.set_random_state(seed=seed)
    b.set_random_state(seed=seed)
    assert np.array_equal(a.starts(_item()), b.starts(_item()))
