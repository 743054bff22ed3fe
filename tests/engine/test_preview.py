"""Lesion previews: drawn on the original grid, radiological orientation, the lesion where it is,
orientation letters, window, LPS centre, slice index, scale bar, short titles, a preview without lesion."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medmtl.engine.preview import preview_figure, save_lesion_previews
from medmtl.io import coords
from medmtl.io.display import ras_display, shorten
from medmtl.io.types import Detection

LONG_UID = "1.2.826.0.1.3680043.8.498.313617144264155435589913814448123456789"
#: The blob's voxel in the stored (LPS-ordered) array: i runs to the patient's left, j posterior.
BLOB = (12, 30, 7)


def _scan(tmp_path: Path, name: str = "lps_scan") -> object:
    """A CT volume stored in LPS axis order (a DICOM-like NIfTI: i → left, j → posterior), 0.8 × 0.8
    × 2.5 mm, with a bright 6 mm blob at :data:`BLOB` in the patient's right half."""
    from medmtl.io.read import load_folder

    shape = (64, 48, 16)
    arr = np.full(shape, -1000.0, dtype=np.float32)
    arr[8:56, 6:42, :] = -800.0  # "lung"
    ii, jj, kk = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    blob = ((ii - BLOB[0]) * 0.8) ** 2 + ((jj - BLOB[1]) * 0.8) ** 2 + ((kk - BLOB[2]) * 2.5) ** 2 <= 3.0 ** 2
    arr[blob] = 40.0
    affine = np.array([[-0.8, 0, 0, 25.0], [0, -0.8, 0, 19.0], [0, 0, 2.5, -20.0], [0, 0, 0, 1]])
    folder = tmp_path / "scans"
    folder.mkdir(exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(folder / f"{name}.nii.gz"))
    scans, _ = load_folder(folder, progress=False)
    return next(s for s in scans if s.scan_id == name)


def _blob_lps(scan: object) -> tuple[float, float, float]:
    lps = coords.voxel_to_lps(np.array([BLOB], dtype=float), scan.image.affine)[0]  # type: ignore[attr-defined]
    return float(lps[0]), float(lps[1]), float(lps[2])


def test_display_volume_is_the_original_grid_in_ras_order(tmp_path: Path) -> None:
    scan = _scan(tmp_path)
    vol = ras_display(scan.image, scan.image.affine)  # type: ignore[attr-defined]
    assert vol.array.shape == (64, 48, 16) and vol.spacing == pytest.approx((0.8, 0.8, 2.5))  # no resampling
    assert vol.flipped == (True, True, False) and vol.source_axis == (0, 1, 2)
    d = (63 - BLOB[0], 47 - BLOB[1], BLOB[2])  # the blob's display voxel
    assert vol.array[d] == 40.0
    assert [vol.source_index(a, d[a]) for a in range(3)] == list(BLOB)


def test_preview_puts_the_lesion_where_it_is_in_radiological_convention(tmp_path: Path) -> None:
    scan = _scan(tmp_path)
    det = Detection(scan.scan_id, _blob_lps(scan), 0.87, 6.0, 0.42)  # type: ignore[attr-defined]
    fig = preview_figure(scan, det, title="t")  # type: ignore[arg-type]
    fig.canvas.draw()
    axial = fig.axes[0]
    circle = axial.patches[0]
    cx, cy = circle.center
    img = axial.images[0]
    x_left, x_right = axial.get_xlim()
    assert x_left > x_right  # the horizontal axis is reversed: the patient's right (higher x) on the left
    low, high, bottom, top = img.get_extent()
    data = np.asarray(img.get_array())  # (vertical, horizontal), column h at x = h * spacing
    col = int(np.floor((cx - low) / (high - low) * data.shape[1]))
    row = int(np.floor((cy - bottom) / (top - bottom) * data.shape[0]))
    assert data[row, col] == 40.0  # the circle sits on the blob
    px, _ = axial.transData.transform((cx, cy))
    x0, x1 = axial.get_window_extent().x0, axial.get_window_extent().x1
    assert px < (x0 + x1) / 2  # the blob is in the patient's right half: on the image left
    letters = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"R", "L", "A", "P", "S", "I", "10 mm"} <= letters
    titles = " ".join(t.get_text() for t in fig.texts)
    x, y, z = _blob_lps(scan)
    assert f"LPS ({x:.1f}, {y:.1f}, {z:.1f}) mm" in titles and "W 1500 / L -600 HU" in titles
    assert "patient's right on the image left" in titles
    assert [ax.get_title() for ax in fig.axes] == [
        f"axial · slice k = {BLOB[2]} (0…15)", f"coronal · slice j = {BLOB[1]} (0…47)",
        f"sagittal · slice i = {BLOB[0]} (0…63)"]


def test_long_uid_title_is_shortened_and_fits(tmp_path: Path) -> None:
    scan = _scan(tmp_path, name=LONG_UID)
    assert scan.scan_id == LONG_UID  # type: ignore[attr-defined]
    fig = preview_figure(scan, None, threshold=0.5)  # type: ignore[arg-type]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    first = fig.texts[0].get_text()
    assert "…" in first and first.startswith(LONG_UID[:10]) and LONG_UID[-6:] in first
    for t in fig.texts:
        box = t.get_window_extent(renderer)
        assert box.x0 >= 0 and box.x1 <= fig.bbox.width, t.get_text()
    assert len(shorten(LONG_UID, 36)) == 36 and shorten("short") == "short"


def test_a_scan_without_lesion_gets_a_preview_saying_so(tmp_path: Path) -> None:
    from PIL import Image

    scan = _scan(tmp_path)
    written = save_lesion_previews(tmp_path / "out", scan, [], threshold=0.75)  # type: ignore[arg-type]
    assert written == ["previews/lps_scan_no_lesion.png"]
    png = tmp_path / "out" / written[0]
    with Image.open(png) as im:
        w, h = im.size
    assert w >= 3 * 260 and h >= 260 and png.stat().st_size > 5000
    fig = preview_figure(scan, None, threshold=0.75)  # type: ignore[arg-type]
    assert "no lesion found at threshold 0.75" in fig.texts[0].get_text()
    assert {t.get_text() for t in fig.axes[0].texts} >= {"R", "L", "A", "P", "10 mm"}
