"""``medmtl adapt`` through the CLI: AdaBN changes only BN buffers; histmatch is recorded in the
card, brings target percentiles to the source reference and is applied by the predictor; DANN
fine-tunes the encoder end to end; resim measures the target acquisition and fine-tunes on
re-simulated source scans; N4 is recorded for MRI and applied at prediction; bad inputs
get one error line.

The checkpoints are untrained (ImageNet-initialised) on a coarse 6 mm grid, built once per
session (``tests/shift/helpers.py``), so each adaptation takes seconds.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from medmtl.cli import main

_spec = importlib.util.spec_from_file_location("medmtl_tests_shift_helpers_a", Path(__file__).parent / "shift" / "helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)

HISTMATCH_TOLERANCE_HU = 15.0


@pytest.fixture(scope="module")
def setup(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return helpers.shared_setup(sample_data, tmp_path_factory)


@pytest.fixture(scope="module")
def mri(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two MRI scans and an MRI checkpoint whose own preprocessing does *not* run N4."""
    from medmtl.transforms.presets import default_mri_spec

    root = tmp_path_factory.mktemp("mri")
    scans = helpers.copy_scans(sample_data / "mri", root / "scans", 2)
    spec = default_mri_spec(spacing=helpers.TEST_SPACING_MM, n4=False)
    return {"scans": scans, "ckpt": helpers.make_checkpoint(root / "ckpt", None, spec=spec)}


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, args)
    return res.exit_code, res.output


def test_adabn_changes_only_bn_buffers(setup: dict[str, Path], tmp_path: Path) -> None:
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.shift.bn_shift import bn_layers

    out = tmp_path / "adabn"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b1"]),
                       "--method", "adabn", "-o", str(out)])
    assert code == 0, text
    m0, _ = load_checkpoint(setup["ckpt"])
    m1, card = load_checkpoint(out)
    s0, s1 = m0.state_dict(), m1.state_dict()
    changed = {k for k in s0 if not torch.equal(s0[k], s1[k])}
    bn_buffers = {f"{n}.{b}" for n, _ in bn_layers(m1) for b in ("running_mean", "running_var", "num_batches_tracked")}
    assert changed and changed <= bn_buffers
    rec = card.adaptation[-1]
    assert rec.method == "adabn" and rec.n_target_scans == 1 and set(rec.parameters_changed) == changed
    assert card.reference_stats is not None


def test_adabn_statistics_shift_with_source(setup: dict[str, Path], tmp_path: Path) -> None:
    """--source: BN running statistics move by target − source tile statistics; the same scans on
    both sides leave them where they were; other sites move them, and only BN buffers change."""
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.shift.bn_shift import bn_layers

    m0, _ = load_checkpoint(setup["ckpt"])
    s0 = m0.state_dict()
    same = tmp_path / "same"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "adabn", "--source", str(setup["b"]), "-o", str(same)])
    assert code == 0, text
    m1, card = load_checkpoint(same)
    for k, v in m1.state_dict().items():
        assert torch.allclose(v.float(), s0[k].float(), rtol=1e-4, atol=1e-5), k
    assert card.adaptation[-1].params["variant"] == "statistics-shift"

    moved = tmp_path / "moved"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "adabn", "--source", str(setup["a"]), "-o", str(moved)])
    assert code == 0, text
    m2, card2 = load_checkpoint(moved)
    s2 = m2.state_dict()
    changed = {k for k in s0 if not torch.equal(s0[k], s2[k])}
    bn_buffers = {f"{n}.{b}" for n, _ in bn_layers(m2) for b in ("running_mean", "running_var")}
    assert changed and changed <= bn_buffers
    rec = card2.adaptation[-1].params
    assert rec["variant"] == "statistics-shift" and len(rec["source_scans"]) == 3
    # a shift, not a replacement: the moved statistics differ from a plain AdaBN's
    plain = tmp_path / "plain"
    assert _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                 "--method", "adabn", "-o", str(plain)])[0] == 0
    m3, card3 = load_checkpoint(plain)
    assert card3.adaptation[-1].params["variant"] == "replace"
    name = next(n for n, _ in bn_layers(m3))
    assert not torch.allclose(m3.state_dict()[f"{name}.running_mean"], s2[f"{name}.running_mean"])


def test_histmatch_recorded_within_tolerance_and_applied_by_predictor(setup: dict[str, Path], tmp_path: Path) -> None:
    from medmtl.engine.checkpoint import load_checkpoint, read_card
    from medmtl.engine.inference import Predictor
    from medmtl.io.read import load_folder
    from medmtl.shift.fingerprint import image_array
    from medmtl.transforms.harmonise import Harmonise
    from medmtl.transforms.intensity import body_mask

    out = tmp_path / "hm"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "histmatch", "-o", str(out)])
    assert code == 0, text
    card = read_card(out)
    assert card.harmonisation is not None and card.harmonisation.method == "histmatch"
    assert card.adaptation[-1].parameters_changed == ("card.harmonisation",)
    assert card.reference_stats is not None
    q = card.reference_stats.quantiles
    ref_p = np.interp([0.1, 0.5, 0.9], q["levels"], q["values"])
    scans, _ = load_folder(setup["b"], progress=False)
    for scan in scans:
        before = image_array(scan)
        after = Harmonise(card.harmonisation, "CT")(scan.image)[0].numpy()
        mask = body_mask(before, "CT")
        got = np.percentile(after[mask], [10, 50, 90])
        np.testing.assert_allclose(got, ref_p, atol=HISTMATCH_TOLERANCE_HU)
        assert np.abs(np.percentile(before[mask], [10, 50, 90]) - ref_p).max() > np.abs(got - ref_p).max()

    # the predictor applies the card's harmonisation: its network input moves towards site A's
    src_scans, _ = load_folder(setup["a"], progress=False)
    plain = Predictor(*load_checkpoint(setup["ckpt"]), device="cpu")
    matched = Predictor(*load_checkpoint(out), device="cpu")
    levels = [10, 50, 90]

    def pct(pred: Predictor, scan_list: list) -> np.ndarray:
        # percentiles of the mediastinal-window channel over the soft-tissue voxels (those the window does not
        # clip): histogram matching corrects the HU calibration there; the sites' different fields of view
        # (how much air and lung a scan holds) are a real acquisition difference it does not claim to remove
        out = []
        for s in scan_list:
            ch = pred.preprocess(s).image.numpy()[1]
            tissue = (ch > ch.min() + 1e-6) & (ch < ch.max() - 1e-6)
            out.append(np.percentile(ch[tissue], levels))
        return np.mean(out, axis=0)

    src = pct(plain, src_scans)
    dist_plain = np.abs(pct(plain, scans) - src).mean()
    dist_matched = np.abs(pct(matched, scans) - src).mean()
    assert dist_matched < 0.6 * dist_plain, (dist_plain, dist_matched)


def test_dann_end_to_end(setup: dict[str, Path], tmp_path: Path) -> None:
    from medmtl import api
    from medmtl.engine.checkpoint import load_checkpoint

    out = tmp_path / "dann"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "dann", "--source", str(setup["a"]), "--steps", "2", "--lr", "2e-4",
                       "-o", str(out)])
    assert code == 0, text
    assert (out / "model.safetensors").is_file()
    m0, _ = load_checkpoint(setup["ckpt"])
    m1, card = load_checkpoint(out)
    rec = card.adaptation[-1]
    assert rec.method == "dann" and rec.params["steps"] == 2 and rec.params["lr"] == 2e-4
    assert len(rec.params["source_scans"]) == 3
    assert rec.n_target_scans == 2 and np.isfinite(rec.params["final_domain_loss"])
    s0, s1 = m0.state_dict(), m1.state_dict()
    enc_changed = [k for k in s0 if k.startswith("encoder.") and k.endswith("weight") and not torch.equal(s0[k], s1[k])]
    assert enc_changed, "DANN did not change any encoder weight"
    # the adapted heads still detect and are evaluable
    summary = api.predict_folder(checkpoint=out, input_dir=setup["b"], out_dir=tmp_path / "pred", device="cpu",
                                 progress=False, overlap=0.0)
    assert summary["n_done"] == 2 and summary["n_failed"] == 0
    metrics = api.evaluate(predictions=tmp_path / "pred" / "predictions.csv",
                           annotations=setup["b"] / "annotations.csv", out_dir=tmp_path / "eval", n_bootstrap=20)
    assert "cpm" in metrics["overall"]
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text(encoding="utf-8"))["overall"]["cpm"]["value"] is not None


def test_n4_recorded_and_applied_by_predictor(mri: dict[str, Path], tmp_path: Path) -> None:
    from medmtl.engine.checkpoint import load_checkpoint, read_card
    from medmtl.engine.inference import Predictor
    from medmtl.io.read import load_folder
    from medmtl.shift.fingerprint import image_array, spacing_of
    from medmtl.transforms.intensity import body_mask, n4_bias_correct

    out = tmp_path / "n4"
    code, text = _run(["adapt", "--checkpoint", str(mri["ckpt"]), "--target", str(mri["scans"]),
                       "--method", "n4", "-o", str(out)])
    assert code == 0, text
    card = read_card(out)
    assert card.harmonisation is not None and card.harmonisation.method == "n4"
    rec = card.adaptation[-1]
    assert rec.method == "n4" and rec.parameters_changed == ("card.harmonisation",) and rec.n_target_scans == 2
    scan = load_folder(mri["scans"], progress=False)[0][0]
    plain_predictor = Predictor(*load_checkpoint(mri["ckpt"]), device="cpu")
    plain = plain_predictor.preprocess(scan).image
    corrected = Predictor(*load_checkpoint(out), device="cpu")
    got = corrected.preprocess(scan).image
    assert not torch.allclose(got, plain, atol=1e-3)
    # exactly the N4-corrected scan (inside the body mask) through the unchanged preprocessing
    arr = image_array(scan)
    expect_arr = n4_bias_correct(arr, spacing_of(scan.image.affine), mask=body_mask(arr, "MR"), shrink=2,
                                 iterations=(30, 20, 10))
    image = scan.image.clone()
    image[0] = torch.as_tensor(expect_arr)
    expect = plain_predictor._transforms({"image": image})["image"]
    np.testing.assert_allclose(got.numpy(), np.asarray(expect), atol=1e-4)

    # a checkpoint whose preprocessing already runs N4 is refused with one line
    twice = tmp_path / "ckpt_n4"
    shutil.copytree(mri["ckpt"], twice)
    card0 = json.loads((twice / "model_card.json").read_text(encoding="utf-8"))
    card0["input_spec"]["n4"] = True
    (twice / "model_card.json").write_text(json.dumps(card0), encoding="utf-8")
    code, text = _run(["adapt", "--checkpoint", str(twice), "--target", str(mri["scans"]),
                       "--method", "n4", "-o", str(tmp_path / "n4b")])
    assert code != 0 and "already runs N4" in text and text.count("Error:") == 1


def test_resim_end_to_end(setup: dict[str, Path], tmp_path: Path) -> None:
    from medmtl.engine.checkpoint import load_checkpoint

    out = tmp_path / "resim"
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "resim", "--source", str(setup["a"]), "--steps", "2", "-o", str(out)])
    assert code == 0, text
    m0, _ = load_checkpoint(setup["ckpt"])
    m1, card = load_checkpoint(out)
    rec = card.adaptation[-1]
    p = rec.params
    assert rec.method == "resim" and p["steps"] == 2 and len(p["source_scans"]) == 3
    # the target acquisition is measured on the unlabelled site-B scans: 1.4 x 1.4 x 5.0 mm, noisier, +HU
    assert p["target_acquisition"]["spacing_ras"] == pytest.approx([1.4, 1.4, 5.0], abs=0.01)
    assert p["target_acquisition"]["noise"] > p["source_acquisition"]["noise"]
    assert len(p["simulations"]) == 3 * 2 and all(s["spacing_mm"] == pytest.approx([1.4, 1.4, 5.0], abs=0.01)
                                                  for s in p["simulations"])
    s0, s1 = m0.state_dict(), m1.state_dict()
    assert [k for k in s0 if k.startswith("encoder.") and k.endswith("weight") and not torch.equal(s0[k], s1[k])]
    assert np.isfinite(p["task_loss_last"])


def test_bad_adapt_inputs(setup: dict[str, Path], tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("x", encoding="utf-8")
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "adabn", "-o", str(busy)])
    assert code != 0 and "already exists" in text and text.count("Error:") == 1
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "n4", "-o", str(tmp_path / "n4")])
    assert code != 0 and "MRI" in text and text.count("Error:") == 1
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "dann", "-o", str(tmp_path / "dann")])
    assert code != 0 and "--source" in text and text.count("Error:") == 1
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "resim", "-o", str(tmp_path / "resim")])
    assert code != 0 and "--method resim needs labelled source scans" in text and text.count("Error:") == 1
    assert not (tmp_path / "resim").exists()
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "adabn", "--steps", "3", "-o", str(tmp_path / "adabn_steps")])
    assert code != 0 and "only used by --method tent, dann and resim" in text and not (tmp_path / "adabn_steps").exists()
    code, text = _run(["adapt", "--checkpoint", str(setup["ckpt"]), "--target", str(setup["b"]),
                       "--method", "tent", "--steps", "0", "-o", str(tmp_path / "tent0")])
    assert code != 0 and "--steps must be at least 1, got 0" in text and text.count("Error:") == 1
    assert not (tmp_path / "tent0").exists()


def test_statistics_shift_source_scans_are_not_harmonised(setup: dict[str, Path]) -> None:
    """A histmatch card maps *target* intensities to the source; AdaBN's source scans skip it."""
    from medmtl.engine.checkpoint import load_checkpoint
    from medmtl.shift.adapt import prepare_volumes
    from medmtl.shift.report import load_cohort
    from medmtl.transforms.harmonise import Harmonisation

    _, card = load_checkpoint(setup["ckpt"])
    assert card.reference_stats is not None
    hm = card.replace(harmonisation=Harmonisation.for_method("histmatch", card.reference_stats.quantiles, "CT"))
    scans = load_cohort(setup["b1"], "target")
    plain = prepare_volumes(scans, card)[0]
    assert torch.equal(prepare_volumes(scans, hm, harmonise=False)[0], plain)
    assert not torch.equal(prepare_volumes(scans, hm)[0], plain)
