"""bench/position: the response-vs-position measurement sees a centre bias and no bias where there is none."""

from __future__ import annotations

import numpy as np
import torch

from bench.position import offsets_for, relative_spread, response_vs_offset

PATCH = (16, 16, 16)


def _volume() -> tuple[torch.Tensor, tuple[int, int, int]]:
    vol = torch.zeros((1, 48, 48, 48))
    vol[0, 24, 24, 24] = 2.0  # the "lesion"
    return vol, (24, 24, 24)


def test_a_translation_equivariant_net_has_no_position_dependence() -> None:
    vol, lesion = _volume()
    conv = torch.nn.Conv3d(1, 1, 3, padding=1, bias=False)
    torch.nn.init.constant_(conv.weight, 0.1)
    resp = response_vs_offset(conv, vol, lesion, PATCH, offsets_for(PATCH[0], 2, 6))
    assert np.isfinite(resp).all()
    assert relative_spread(resp) < 1e-5


def test_a_centre_biased_net_is_caught() -> None:
    vol, lesion = _volume()
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, dtype=torch.float32) for s in PATCH], indexing="ij"))
    centre = (torch.tensor(PATCH, dtype=torch.float32) - 1) / 2
    bump = -((grid - centre[:, None, None, None]) ** 2).sum(0) / 8.0  # log-space bonus at the centre

    def biased(x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + bump  # the lesion signal plus "lesions are in the middle"

    resp = response_vs_offset(biased, vol, lesion, PATCH, offsets_for(PATCH[0], 2, 6))
    assert relative_spread(resp) > 0.5
    assert np.nanargmax(resp[0]) in (2, 3)  # the middle offsets


def test_crops_leaving_the_volume_are_skipped() -> None:
    vol, _ = _volume()
    resp = response_vs_offset(lambda x: x[:, :1], vol, (1, 24, 24), PATCH, [2, 8, 13])
    assert np.isnan(resp[0, 1:]).all() and np.isnan(resp[1]).all()
