from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from torch.utils.data import default_collate

from medmtl.errors import ConfigError
from medmtl.transforms.augment import (
    AnisotropicResample,
    BiasField,
    RandFlipd,
    RandRotated,
    n_bias_coefficients,
    replay,
    train_augmentations,
)
from medmtl.transforms.presets import default_ct_spec

TARGETS = ("heatmap", "size_mask")


def _sample(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(3, 16, 16, 16, generator=g) * 0.1
    heat = torch.zeros(1, 16, 16, 16)
    heat[0, 4, 5, 11] = 1.0
    img[:, 4, 5, 11] = 5.0  # the lesion is bright in the image at the heatmap peak
    mask = (heat > 0).float()
    aff = torch.eye(4, dtype=torch.float64)
    return {"image": MetaTensor(img, affine=aff), "heatmap": MetaTensor(heat, affine=aff), "size_mask": MetaTensor(mask, affine=aff)}


def test_params_recorded_and_replayable():
    aug = train_augmentations(default_ct_spec(), keys_targets=TARGETS, strength="strong")
    aug.set_random_state(7)
    data = _sample()
    out = aug(dict(data))
    params = out["aug_params"]
    assert set(params) == {"flip", "rotation", "anisotropy", "blur", "noise", "bias", "gamma"}
    again = replay(aug, dict(data), params)
    for key in ("image", *TARGETS):
        assert torch.allclose(torch.as_tensor(again[key]), torch.as_tensor(out[key]), atol=1e-6)
    # the same seed gives the same sample; the input is not mutated
    aug.set_random_state(7)
    assert torch.equal(torch.as_tensor(aug(dict(data))["image"]), torch.as_tensor(out["image"]))
    assert torch.equal(torch.as_tensor(data["image"]), torch.as_tensor(_sample()["image"]))


def test_params_collate_into_batches():
    aug = train_augmentations(default_ct_spec(), keys_targets=TARGETS, strength="medium")
    aug.set_random_state(1)
    batch = default_collate([aug(_sample(i)) for i in range(3)])
    assert batch["aug_params"]["gamma"]["gamma"].shape == (3,)


@pytest.mark.parametrize("cls", [RandFlipd, RandRotated])
def test_spatial_augmentations_move_targets_with_the_image(cls):
    t = cls(["image"], prob=1.0, target_keys=TARGETS)
    t.set_random_state(3)
    out = t(_sample())
    peak_img = np.unravel_index(int(torch.as_tensor(out["image"])[0].argmax()), (16, 16, 16))
    peak_heat = np.unravel_index(int(torch.as_tensor(out["heatmap"])[0].argmax()), (16, 16, 16))
    assert np.abs(np.subtract(peak_img, peak_heat)).max() <= 1
    assert torch.as_tensor(out["heatmap"]).max() == 1.0  # nearest keeps the peak
    assert set(torch.unique(torch.as_tensor(out["size_mask"])).tolist()) <= {0.0, 1.0}


def test_deterministic_pieces():
    x = torch.ones(1, 8, 8, 8)
    assert torch.allclose(BiasField([0.0] * n_bias_coefficients(3), 3)(x), x)
    ramp = torch.arange(8.0)[None, None, None, :].expand(1, 8, 8, 8).clone()
    biased = BiasField([0.0, 0.5] + [0.0] * 18, 3)(ramp)  # exp(0.5 z): a smooth multiplicative field
    assert biased.shape == ramp.shape and not torch.allclose(biased, ramp)
    assert torch.equal(biased[..., 0], ramp[..., 0])  # applied around the minimum
    thick = AnisotropicResample(axis=2, factor=4.0)(ramp)
    assert thick.shape == ramp.shape
    assert torch.allclose(AnisotropicResample(axis=0, factor=4.0)(ramp), ramp, atol=1e-5)  # constant along axis 0
    assert not torch.allclose(thick, ramp)


def test_strength_validation():
    with pytest.raises(ConfigError, match="strength 'strnog' invalid.*Did you mean 'strong'"):
        train_augmentations(default_ct_spec(), strength="strnog")
    with pytest.raises(ConfigError, match="must be in \\[0, 2\\]"):
        train_augmentations(default_ct_spec(), strength=3.0)
    none = train_augmentations(default_ct_spec(), keys_targets=TARGETS, strength="none")
    data = _sample()
    out = none(dict(data))
    assert torch.equal(torch.as_tensor(out["image"]), torch.as_tensor(data["image"]))
