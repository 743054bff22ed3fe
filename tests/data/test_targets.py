from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmtl.errors import AnnotationError
from medmtl.io import coords
from medmtl.io.types import Lesion
from medmtl.transforms.targets import TARGET_KEYS, build_targets


@pytest.fixture
def image() -> MetaTensor:
    # anisotropic spacing, LPS-like axes flipped in the RAS affine
    aff = np.diag([-1.0, -1.0, 2.5, 1.0])
    aff[:3, 3] = [10.0, -5.0, 3.0]
    return MetaTensor(torch.zeros(3, 32, 28, 20), affine=torch.as_tensor(aff))


def _lesion(image, ijk, d=8.0, malig=None):
    lps = coords.voxel_to_lps([ijk], image.affine.numpy())[0]
    return Lesion("s", (float(lps[0]), float(lps[1]), float(lps[2])), d, malig)


def test_heatmap_peak_is_one_at_nearest_voxel(image):
    t = build_targets(image, [_lesion(image, (10.3, 14.6, 7.2), d=10.0, malig=1.0)])
    assert set(t) == set(TARGET_KEYS)
    h = t["heatmap"][0]
    assert h.shape == (32, 28, 20) and isinstance(t["heatmap"], MetaTensor)
    assert torch.equal(t["heatmap"].affine, image.affine)
    assert h[10, 15, 7] == 1.0
    assert int((h == 1.0).sum()) == 1 and h.max() == 1.0
    # σ = r/2 = 2.5 mm: 1 voxel in-plane, 1 voxel along k (2.5 mm) → value falls with distance
    assert 0.3 < h[12, 15, 7] < h[11, 15, 7] < 1.0
    # the anisotropic axis: one k-step (2.5 mm) falls as much as 2.5 in-plane steps would
    assert h[10, 15, 8] < h[11, 15, 7]


def test_size_and_malignancy_regions(image):
    lesions = [_lesion(image, (8, 8, 5), d=12.0, malig=1.0), _lesion(image, (22, 20, 14), d=6.0, malig=None)]
    t = build_targets(image, lesions)
    sm, mm = t["size_mask"][0], t["malig_mask"][0]
    assert sm[8, 8, 5] == 1 and sm[22, 20, 14] == 1
    assert t["log_diameter"][0, 8, 8, 5] == pytest.approx(math.log(12.0))
    assert t["log_diameter"][0, 22, 20, 14] == pytest.approx(math.log(6.0))
    assert mm[8, 8, 5] == 1 and t["malignancy"][0, 8, 8, 5] == 1.0
    assert mm[22, 20, 14] == 0  # unknown label: masked
    assert torch.all(mm <= sm) and torch.all(t["log_diameter"][0][sm == 0] == 0)
    # radius max(r/2 = 3 mm, 1 voxel): 3 voxels in-plane, 1 voxel along k (2.5 mm)
    assert sm[11, 8, 5] == 1 and sm[12, 8, 5] == 0
    assert sm[8, 8, 6] == 1 and sm[8, 8, 7] == 0


def test_lesions_outside_are_ignored_and_empty_is_zero(image):
    t = build_targets(image, [_lesion(image, (-5, 3, 3)), _lesion(image, (3, 3, 40))])
    assert all(float(v.sum()) == 0.0 for v in t.values())
    t = build_targets(image, [])
    assert all(v.shape == (1, 32, 28, 20) for v in t.values())


def test_lesion_near_border_is_kept(image):
    t = build_targets(image, [_lesion(image, (0.2, 27.4, 19.0), d=20.0)])
    assert t["heatmap"][0, 0, 27, 19] == 1.0


def test_bad_diameter_fails(image):
    with pytest.raises(AnnotationError, match="diameter_mm=0.0"):
        build_targets(image, [_lesion(image, (5, 5, 5), d=0.0)])
