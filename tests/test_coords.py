"""The coordinate module: LPS ⇄ RAS ⇄ voxel, and SimpleITK geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medmtl.io import coords


def _oblique_affine_ras() -> np.ndarray:
    theta = np.deg2rad(17.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([0.7, 0.8, 2.5])
    a[:3, 3] = [-101.5, 37.25, -220.0]
    return a


def test_lps_ras_flip_is_an_involution() -> None:
    p = np.array([[1.0, -2.0, 3.0], [10.5, 0.0, -7.0]])
    ras = coords.lps_to_ras(p)
    np.testing.assert_allclose(ras, [[-1.0, 2.0, 3.0], [-10.5, 0.0, -7.0]])
    np.testing.assert_allclose(coords.ras_to_lps(ras), p)


def test_voxel_world_round_trip_oblique() -> None:
    a = _oblique_affine_ras()
    ijk = np.array([[0, 0, 0], [3.5, 7.25, 11.0], [63, 63, 47]], dtype=float)
    lps = coords.voxel_to_lps(ijk, a)
    np.testing.assert_allclose(coords.lps_to_voxel(lps, a), ijk, atol=1e-9)
    # voxel (0,0,0) sits at the affine's translation, with x and y negated in LPS
    np.testing.assert_allclose(lps[0], [101.5, -37.25, -220.0])


def test_sitk_geometry_round_trip_matches_simpleitk() -> None:
    sitk = pytest.importorskip("SimpleITK")
    a = _oblique_affine_ras()
    origin, spacing, direction = coords.affine_ras_to_sitk(a)
    img = sitk.Image(8, 9, 10, sitk.sitkFloat32)
    img.SetOrigin(origin)
    img.SetSpacing(spacing)
    img.SetDirection(direction)
    idx = (3, 5, 7)
    world_lps = img.TransformIndexToPhysicalPoint(idx)
    np.testing.assert_allclose(coords.voxel_to_lps(idx, a)[0], world_lps, atol=1e-9)
    back = coords.sitk_to_affine_ras(img.GetOrigin(), img.GetSpacing(), img.GetDirection())
    np.testing.assert_allclose(back, a, atol=1e-9)


def test_spacing_orientation_and_extent() -> None:
    a = np.diag([-0.7, -0.8, 2.5, 1.0])  # LPS-ordered voxel axes expressed in RAS
    assert coords.spacing_from_affine(a) == pytest.approx((0.7, 0.8, 2.5))
    assert coords.orientation_code(a) == "LPS"
    inside = coords.inside_volume([[0, 0, 0], [-0.6, 0, 0], [9.4, 9.4, 9.4], [9.6, 0, 0]], (10, 10, 10))
    assert inside.tolist() == [True, False, True, False]


def test_bad_point_shape_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 3\)"):
        coords.lps_to_ras(np.zeros((2, 2)))
