"""The per-lesion malignancy readout: features that see what drives malignancy, a fit that ranks
unseen lesions, a card record that round-trips and fails clearly, and prediction that uses it."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medmtl.engine.card import ModelCard
from medmtl.engine.malignancy_readout import (
    FEATURES,
    MalignancyReadout,
    fit_readout,
    lesion_features,
    score_detections,
)
from medmtl.errors import CheckpointError, ConfigError
from medmtl.io.types import Detection, Lesion

SPACING = np.array([0.8, 0.8, 1.0])


def _affine() -> np.ndarray:
    aff = np.diag([*SPACING, 1.0])
    aff[:3, 3] = [-40.0, -40.0, -30.0]
    return aff


def _nodule_scan(rng: np.random.Generator, d_mm: float, *, calcified: bool, spiculated: bool,
                 ground_glass: bool) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """A 100×100×60 lung-like volume (−850 HU + noise) with one nodule at the centre (LPS mm returned)."""
    shape = (100, 100, 60)
    vol = rng.normal(-850.0, 25.0, size=shape).astype(np.float32)
    aff = _affine()
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    centre_vox = np.array([50.0, 50.0, 30.0]) + rng.uniform(-0.5, 0.5, 3)
    off = (ijk - centre_vox) * SPACING
    dist = np.sqrt((off**2).sum(-1))
    r = d_mm / 2.0
    vol[dist <= r] = -550.0 if ground_glass else 30.0
    if calcified:
        vol[dist <= 0.4 * r] = 800.0
    if spiculated:
        for v in rng.normal(size=(10, 3)):
            v /= np.linalg.norm(v)
            along = off @ v
            perp = np.sqrt(np.maximum(dist**2 - along**2, 0.0))
            vol[(along > 0) & (along < 1.9 * r) & (perp < 0.8)] = 0.0
    ras = aff @ np.array([*centre_vox, 1.0])
    return vol, aff, (-float(ras[0]), -float(ras[1]), float(ras[2]))


def _cohort(seed: int, n: int) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], list[Lesion]]:
    """Lesions whose label is a deterministic function of what the image shows."""
    rng = np.random.default_rng(seed)
    images, lesions = {}, []
    for i in range(n):
        kind = i % 4  # 0 spiculated solid, 1 smooth solid, 2 calcified, 3 ground-glass
        d = float(rng.uniform(6.0, 14.0))
        vol, aff, centre = _nodule_scan(rng, d, calcified=kind == 2, spiculated=kind == 0, ground_glass=kind == 3)
        sid = f"s{seed}_{i}"
        images[sid] = (vol, aff)
        lesions.append(Lesion(seriesuid=sid, center_lps=centre, diameter_mm=d, malignancy=float(kind == 0)))
    return images, lesions


def test_features_see_calcification_texture_and_spicules() -> None:
    rng = np.random.default_rng(0)
    rows = {}
    for name, kw in {"solid": {}, "calcified": {"calcified": True}, "ground_glass": {"ground_glass": True},
                     "spiculated": {"spiculated": True}}.items():
        args = {"calcified": False, "spiculated": False, "ground_glass": False, **kw}
        vol, aff, centre = _nodule_scan(rng, 10.0, **args)
        rows[name] = dict(zip(FEATURES, lesion_features(vol, aff, centre, 10.0)))
    assert rows["calcified"]["hu_max"] > 600 > rows["solid"]["hu_max"]
    assert rows["calcified"]["calcified_fraction"] > 0.03 and rows["solid"]["calcified_fraction"] == 0.0
    assert rows["ground_glass"]["solid_fraction"] < 0.1 < 0.9 < rows["solid"]["solid_fraction"]
    assert rows["spiculated"]["shell_dense_fraction"] > rows["solid"]["shell_dense_fraction"] + 0.01
    assert rows["spiculated"]["outside_ratio"] > rows["solid"]["outside_ratio"] + 0.05
    assert rows["solid"]["log_diameter"] == pytest.approx(np.log(10.0))


def test_features_do_not_depend_on_the_storage_orientation() -> None:
    vol, aff, centre = _nodule_scan(np.random.default_rng(1), 9.0, calcified=True, spiculated=False,
                                    ground_glass=False)
    flipped = vol[::-1, ::-1, :].copy()  # the same world, stored with i and j reversed
    aff2 = aff.copy()
    aff2[:3, 0], aff2[:3, 1] = -aff[:3, 0], -aff[:3, 1]
    aff2[:3, 3] = aff[:3, :3] @ np.array([vol.shape[0] - 1, vol.shape[1] - 1, 0]) + aff[:3, 3]
    a = lesion_features(vol, aff, centre, 9.0)
    b = lesion_features(flipped, aff2, centre, 9.0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_fit_ranks_unseen_lesions_and_is_calibrated_in_the_mean() -> None:
    tr_images, tr_lesions = _cohort(10, 48)
    te_images, te_lesions = _cohort(11, 24)
    readout = fit_readout(tr_images, tr_lesions)
    assert readout.n_lesions == 48 and readout.n_malignant == 12
    x = np.stack([lesion_features(*te_images[les.seriesuid], les.center_lps, les.diameter_mm) for les in te_lesions])
    y = np.array([les.malignancy for les in te_lesions])
    p = readout.probability(x)
    assert roc_auc_score(y, p) > 0.95
    assert abs(p.mean() - y.mean()) < 0.1


def test_fit_skips_unlabelled_lesions_and_refuses_too_few_labels() -> None:
    images, lesions = _cohort(12, 24)
    unlabelled = [Lesion(seriesuid=les.seriesuid, center_lps=les.center_lps, diameter_mm=les.diameter_mm)
                  for les in lesions[:20]]
    with pytest.raises(ConfigError, match=r"needs >= 10 labelled malignant and benign .* got 1 malignant and 3 benign"):
        fit_readout(images, [*unlabelled, *lesions[20:]])


def test_record_round_trips_and_names_bad_values() -> None:
    images, lesions = _cohort(13, 44)
    readout = fit_readout(images, lesions)
    again = MalignancyReadout.from_dict(readout.to_dict())
    assert again == readout
    bad = readout.to_dict() | {"scale": [1.0] * 8 + [0.0]}
    with pytest.raises(CheckpointError, match=r"malignancy_readout.scale must be > 0"):
        MalignancyReadout.from_dict(bad)
    with pytest.raises(CheckpointError, match=r"malignancy_readout.features .* differ"):
        MalignancyReadout.from_dict(readout.to_dict() | {"features": ["log_diameter"]})
    with pytest.raises(CheckpointError, match=r"malignancy_readout.coef has 3 values; expected 9"):
        MalignancyReadout.from_dict(readout.to_dict() | {"coef": [0.0, 1.0, 2.0]})


def test_score_detections_changes_only_malignancy() -> None:
    images, lesions = _cohort(14, 44)
    readout = fit_readout(images, lesions)
    vol, aff = images[lesions[0].seriesuid]
    det = Detection(seriesuid="x", center_lps=lesions[0].center_lps, probability=0.7, diameter_mm=9.0,
                    malignancy_prob=0.123)
    (out,) = score_detections(readout, vol[None], aff, [det])
    assert (out.center_lps, out.probability, out.diameter_mm) == (det.center_lps, det.probability, det.diameter_mm)
    expected = readout.probability(lesion_features(vol, aff, det.center_lps, 9.0))[0]
    assert out.malignancy_prob == pytest.approx(float(expected))
    assert score_detections(readout, vol, aff, []) == []


def test_card_carries_the_readout_and_prediction_uses_it(tiny_checkpoint, sample_data) -> None:  # type: ignore[no-untyped-def]
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.engine.inference import Predictor
    from medmtl.io.read import load_folder

    model, card = load_checkpoint(tiny_checkpoint, device="cpu")
    assert card.malignancy_readout is None  # 3 tiny scans: too few labels, auto fell back to the head
    images, lesions = _cohort(15, 44)
    readout = fit_readout(images, lesions)
    with_readout = card.replace(malignancy_readout=readout)
    assert ModelCard.from_dict(with_readout.to_dict()).malignancy_readout == readout
    scans, _ = load_folder(sample_data / "ct_site_a")
    scan = sorted(scans, key=lambda s: s.scan_id)[0]
    low = {"threshold": 1e-6, "max_lesions": 5}
    head_dets, _, _ = Predictor(model, card, device="cpu", overlap=0.0, decode_overrides=low).predict_scan(scan)
    dets, _, _ = Predictor(model, with_readout, device="cpu", overlap=0.0, decode_overrides=low).predict_scan(scan)
    assert dets and [d.center_lps for d in dets] == [d.center_lps for d in head_dets]
    hu = scan.image.detach().cpu().numpy()
    for d in dets:
        expected = readout.probability(lesion_features(hu, np.asarray(scan.image.affine), d.center_lps, d.diameter_mm))
        assert d.malignancy_prob == pytest.approx(float(expected[0]))
    mr = with_readout.to_dict()
    mr["input_spec"] = dict(mr["input_spec"], modality="MR")
    mr["reference_stats"] = None
    with pytest.raises(CheckpointError, match=r"malignancy_readout' is set but 'input_spec.modality' is 'MR'"):
        ModelCard.from_dict(mr)
