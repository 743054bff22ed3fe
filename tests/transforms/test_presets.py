from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medmtl.errors import ConfigError
from medmtl.io import coords
from medmtl.io.types import Scan, ScanRef
from medmtl.transforms.intensity import CTWindows, MRNormalize
from medmtl.transforms.presets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    InputSpec,
    default_ct_spec,
    default_mri_spec,
    preprocess_scan,
    preprocess_transforms,
)


def _lps_volume(values: torch.Tensor, spacing=(1.5, 1.5, 2.5)) -> MetaTensor:
    # an LPS-oriented volume (like DICOM): i → Left, j → Posterior; RAS affine has -spacing
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    aff[:3, 3] = [40.0, 30.0, -20.0]
    return MetaTensor(values, affine=torch.as_tensor(aff))


def test_ct_preset_keeps_geometry_and_maps_windows():
    hu = torch.full((1, 20, 18, 12), -1000.0)
    hu[0, 4:7, 5:8, 6:9] = 1300.0  # a bright block centred on voxel (5, 6, 7)
    img = _lps_volume(hu)
    world = coords.voxel_to_lps([[5, 6, 7]], img.affine.numpy())[0]
    spec = default_ct_spec(spacing=(3.0, 3.0, 5.0))
    out = preprocess_transforms(spec)({"image": img})["image"]
    assert isinstance(out, MetaTensor) and out.shape[0] == 3 and out.dtype == torch.float32
    assert coords.orientation_code(out.affine.numpy()) == "RAS"
    assert coords.spacing_from_affine(out.affine.numpy()) == pytest.approx((3.0, 3.0, 5.0))
    # the bright voxel is still where the world says it is
    peak = np.unravel_index(int(out[2].argmax()), out.shape[1:])
    peak_world = coords.voxel_to_lps([peak], out.affine.numpy())[0]
    assert np.linalg.norm(peak_world - world) < 3.0 * 1.8  # within one output voxel diagonal
    # air (-1000 HU): lung window (1350 - 1000) / 1500, the others 0; then ImageNet mean/std
    air = out[:, 0, 0, 0]
    expected = (torch.tensor([350.0 / 1500.0, 0.0, 0.0]) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(air, expected, atol=1e-5)


def test_ct_windows_values():
    x = torch.tensor([[[[-1350.0, -600.0, 150.0, 40.0]]]])
    out = CTWindows([(-600, 1500), (40, 400)])(x)
    assert torch.allclose(out[0, 0, 0], torch.tensor([0.0, 0.5, 1.0, 1390.0 / 1500.0]))
    assert torch.allclose(out[1, 0, 0], torch.tensor([0.0, 0.0, 0.775, 0.5]))
    with pytest.raises(ConfigError, match="single-channel"):
        CTWindows([(0, 100)])(torch.zeros(2, 2, 2, 2))


def test_mri_preset_normalises_and_replicates():
    torch.manual_seed(0)
    vol = torch.zeros(1, 16, 16, 16)
    vol[0, 3:13, 3:13, 3:13] = torch.rand(10, 10, 10) * 900 + 100
    img = _lps_volume(vol, spacing=(2.0, 2.0, 2.0))
    spec = default_mri_spec(n4=False)
    out = preprocess_transforms(spec)({"image": img})["image"]
    assert out.shape[0] == 3
    assert torch.allclose(out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0], out[1] * IMAGENET_STD[1] + IMAGENET_MEAN[1], atol=1e-5)
    unnorm = out[0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert unnorm.min() >= -1e-5 and unnorm.max() <= 1 + 1e-5
    assert coords.orientation_code(out.affine.numpy()) == "RAS"
    # percentile normalisation is scale-free: a 7x brighter scanner gives the same input
    out7 = preprocess_transforms(spec)({"image": _lps_volume(vol * 7, spacing=(2.0, 2.0, 2.0))})["image"]
    assert torch.allclose(out, out7, atol=1e-4)
    assert MRNormalize(1, 99)(vol).max() == 1.0


def test_n4_removes_a_smooth_bias_field():
    pytest.importorskip("SimpleITK")
    from medmtl.transforms.intensity import N4BiasCorrection

    g = torch.linspace(-1, 1, 24)
    field = torch.exp(0.4 * g)[:, None, None].expand(24, 24, 24)
    tissue = torch.full((24, 24, 24), 100.0)
    tissue[:, :, :4] = 0.0
    img = _lps_volume((tissue * field)[None].clone(), spacing=(2.0, 2.0, 2.0))
    out = N4BiasCorrection(shrink=2, iterations=(20, 10))(img)
    assert isinstance(out, MetaTensor) and torch.equal(out.affine, img.affine)
    fg = tissue > 0
    cv_before = img[0][fg].std() / img[0][fg].mean()
    cv_after = out[0][fg].std() / out[0][fg].mean()
    assert cv_after < 0.6 * cv_before


def test_spec_round_trip_and_validation():
    spec = default_ct_spec()
    d = json.loads(json.dumps(spec.to_dict()))
    assert InputSpec.from_dict(d) == spec
    assert spec.channels == 3 and InputSpec(modality="MR", mr_channels="single", mean=(0.5,), std=(0.25,)).channels == 1
    with pytest.raises(ConfigError, match="unknown input_spec key 'spacing'.*Did you mean 'spacing_mm'"):
        InputSpec.from_dict({**d, "spacing": [1, 1, 1]})
    with pytest.raises(ConfigError, match="modality 'ct' invalid.*Did you mean 'CT'"):
        InputSpec.from_dict({**d, "modality": "ct"})
    with pytest.raises(ConfigError, match="spacing_mm"):
        InputSpec.from_dict({**d, "spacing_mm": [1, -1, 1]})
    with pytest.raises(ConfigError, match="width > 0"):
        InputSpec.from_dict({**d, "windows": [[0, 0]]})
    with pytest.raises(ConfigError, match="percentiles"):
        InputSpec.from_dict({**d, "percentiles": [99, 1]})
    with pytest.raises(ConfigError, match="one value per channel"):
        InputSpec.from_dict({**d, "mean": [0.5]})


def test_preprocess_scan_checks_modality():
    img = _lps_volume(torch.zeros(1, 8, 8, 8))
    scan = Scan(ref=ScanRef("s1", "nifti", (Path("s1.nii.gz"),), Path(".")), image=img, modality="MR")
    with pytest.raises(ConfigError, match="modality 'MR' but the input spec expects 'CT'"):
        preprocess_scan(scan, default_ct_spec())
    out = preprocess_scan(scan, default_mri_spec(n4=False))
    assert out.shape[0] == 3
