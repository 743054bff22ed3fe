"""Croppers and target building: array forms hold the logic, ``randomize()`` draws, ``__call__`` applies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmtl.io.types import Lesion
from medmtl.transforms.crops import (
    HardNegativeMap,
    HardNegativeMapd,
    LesionAnywhereCrop,
    LesionAnywhereCropd,
    LesionCentredCrop,
    LesionCentredCropd,
)
from medmtl.transforms.presets import default_ct_spec
from medmtl.transforms.targets import TARGET_KEYS, BuildTargets, BuildTargetsd

SHAPE = (32, 32, 32)
PATCH = [8, 8, 8]
PEAKS = ((5, 6, 7), (20, 25, 10), (30, 1, 16))


def _item() -> dict[str, torch.Tensor]:
    heat = torch.zeros((1, *SHAPE))
    for p in PEAKS:
        heat[(0, *p)] = 1.0
    image = torch.arange(float(np.prod(SHAPE))).reshape(1, *SHAPE)
    return {"image": image, "heatmap": heat}


@pytest.mark.parametrize("jitter", [0, 2])
def test_centred_crop_draws_in_randomize_and_replays(jitter: int) -> None:
    item = _item()
    crop = LesionCentredCrop(PATCH, jitter=jitter)
    crop.set_random_state(seed=3)
    crop.randomize(item["heatmap"])
    starts = crop.starts.copy()
    assert starts.shape == (len(PEAKS), 3)
    again = crop(item["image"], randomize=False)  # no draw: the same starts
    assert np.array_equal(crop.starts, starts)
    for patch, s in zip(again, starts):
        assert torch.equal(patch, item["image"][:, s[0] : s[0] + 8, s[1] : s[1] + 8, s[2] : s[2] + 8])
    if jitter == 0:  # every lesion at the patch centre (moved inside the volume at a border)
        assert all(patch[0].shape == (8, 8, 8) for patch in again)
        assert np.array_equal(starts[0], np.asarray(PEAKS[0]) - 4)


def test_centred_dict_form_equals_the_array_form() -> None:
    item = _item()
    d = LesionCentredCropd(["image", "heatmap"], PATCH, jitter=2)
    a = LesionCentredCrop(PATCH, jitter=2)
    d.set_random_state(seed=11)
    a.set_random_state(seed=11)
    patches = d(item)
    images = a(item["image"], heatmap=item["heatmap"])
    assert len(patches) == len(images) == len(PEAKS)
    for p, img in zip(patches, images):
        assert torch.equal(p["image"], img)
        assert int(p["heatmap"].sum()) >= 1  # jitter ≤ 2 keeps every lesion in its 8³ patch


def test_anywhere_dict_form_equals_the_array_form_and_replays() -> None:
    item = _item()
    d = LesionAnywhereCropd(["image", "heatmap"], PATCH, num_samples=7, pos_fraction=0.5)
    a = LesionAnywhereCrop(PATCH, num_samples=7, pos_fraction=0.5)
    d.set_random_state(seed=5)
    a.set_random_state(seed=5)
    patches = d(item)
    images = a(item["image"], heatmap=item["heatmap"])
    assert all(torch.equal(p["image"], img) for p, img in zip(patches, images))
    drawn = a.starts.copy()
    replay = a(item["image"], randomize=False)
    assert np.array_equal(a.starts, drawn) and all(torch.equal(x, y) for x, y in zip(images, replay))


def test_missing_keys_are_skipped_only_when_allowed() -> None:
    item = _item()
    ok = LesionCentredCropd(["image", "heatmap", "pos"], PATCH, allow_missing_keys=True)(item)
    assert len(ok) == len(PEAKS) and "pos" not in ok[0]
    with pytest.raises(KeyError, match="pos"):
        LesionCentredCropd(["image", "heatmap", "pos"], PATCH)(item)


def test_hard_negative_dict_form_wraps_the_array_form() -> None:
    spec = default_ct_spec()
    item = _item()
    item["image"] = torch.randn((3, *SHAPE), generator=torch.Generator().manual_seed(0))
    out = HardNegativeMapd(spec)(item)
    assert torch.equal(out["hard"], HardNegativeMap(spec)(item["image"], item["heatmap"]))
    assert out["hard"].dtype == torch.uint8 and out["hard"].shape == (1, *SHAPE)


def test_build_targets_dict_form_wraps_the_array_form() -> None:
    affine = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
    image = MetaTensor(torch.zeros((1, *SHAPE)), affine=affine)
    lesions = [Lesion("s", (8.0, 9.0, 10.0), 6.0, 1.0), Lesion("s", (20.0, 20.0, 20.0), 8.0, None)]
    arrays = BuildTargets()(image, lesions, [True, False])
    item = BuildTargetsd()({"image": image, "lesions": lesions, "labelled": [True, False]})
    assert set(arrays) == {*TARGET_KEYS, "pos"} and "lesions" not in item and "labelled" not in item
    for key in arrays:
        assert torch.equal(item[key], arrays[key])
    # the unlabelled lesion shapes the heatmap but not the size map
    assert arrays["heatmap"][0, 20, 20, 20] == 1.0 and arrays["size_mask"][0, 20, 20, 20] == 0.0
    assert arrays["size_mask"][0, 8, 9, 10] == 1.0 and int(arrays["pos"].sum()) > 2


@pytest.mark.parametrize("power", [0.0, 2.0])
def test_small_lesion_power_picks_lesions_by_inverse_diameter(power: float) -> None:
    """γ = 0 picks the three lesions uniformly; γ = 2 picks them ∝ d^-2 (diameters 3, 6, 12 mm)."""
    item = _item()
    logd = torch.zeros((1, *SHAPE))
    for p, d in zip(PEAKS, (3.0, 6.0, 12.0)):
        logd[(0, *p)] = float(np.log(d))
    item["log_diameter"] = logd
    crop = LesionAnywhereCropd(["image", "heatmap"], PATCH, num_samples=3000, pos_fraction=1.0, small_lesion_power=power)
    crop.set_random_state(seed=1)
    starts = crop.starts(item)
    counts = np.zeros(len(PEAKS))
    for s in starts:  # which lesion each (positive) patch holds
        inside = [bool(np.all((np.asarray(p) >= s) & (np.asarray(p) < s + 8))) for p in PEAKS]
        counts[int(np.argmax(inside))] += 1
    share = counts / counts.sum()
    w = np.array([3.0, 6.0, 12.0]) ** -power
    assert np.allclose(share, w / w.sum(), atol=0.03), share


def test_small_lesion_power_without_a_size_map_is_uniform() -> None:
    a = LesionAnywhereCrop(PATCH, num_samples=10, pos_fraction=1.0, small_lesion_power=2.0)
    b = LesionAnywhereCrop(PATCH, num_samples=10, pos_fraction=1.0)
    a.set_random_state(seed=4)
    b.set_random_state(seed=4)
    item = _item()
    a.randomize(item["heatmap"])
    b.randomize(item["heatmap"])
    assert np.array_equal(a.starts, b.starts)
