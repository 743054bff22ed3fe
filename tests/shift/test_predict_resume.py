"""Prediction resume and adaptation state: a rerun reuses a scan's record only when the weights,
the card's adaptation / harmonisation records and the ``--adapt`` mode all match."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("medmtl_tests_shift_helpers_r", Path(__file__).parent / "helpers.py")
assert _spec is not None and _spec.loader is not None
helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(helpers)


@pytest.fixture(scope="module")
def setup(sample_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return helpers.shared_setup(sample_data, tmp_path_factory)


def _key(card, adapt):  # type: ignore[no-untyped-def]
    """The key predict_folder computes at ``overlap=0.0`` without TTA."""
    from medmtl.engine import predict_io as pio

    return pio.resume_key(card, adapt, window={"overlap": 0.0, "tta": False})


def test_resume_key_tracks_adaptation_state(setup: dict[str, Path], tmp_path: Path) -> None:
    from medmtl import api
    from medmtl.engine import predict_io as pio
    from medmtl.engine.checkpoint import read_card

    hm = api.adapt(checkpoint=setup["ckpt"], target=setup["b"], method="histmatch", out=tmp_path / "hm")
    base_card, hm_card = read_card(setup["ckpt"]), read_card(hm)
    assert pio.resume_key(base_card, "off") != pio.resume_key(hm_card, "off")
    assert pio.resume_key(base_card, "off") != pio.resume_key(base_card, "auto")
    assert pio.resume_key(base_card, "off") == pio.resume_key(read_card(setup["ckpt"]), "off")

    out = tmp_path / "pred"
    sha = base_card.weights_sha256
    kw = {"input_dir": setup["b"], "out_dir": out, "device": "cpu", "progress": False, "overlap": 0.0}
    first = api.predict_folder(checkpoint=setup["ckpt"], **kw)
    assert first["n_done"] == 2 and first["n_skipped"] == 0
    again = api.predict_folder(checkpoint=setup["ckpt"], **kw)
    assert again["n_done"] == 0 and again["n_skipped"] == 2
    # same weights, different adaptation state: the record is not reused
    flags = {"need_maps": False, "need_previews": False}
    assert pio.is_complete(out, "ct_b_0000", sha, resume=_key(base_card, "off"), **flags)
    assert not pio.is_complete(out, "ct_b_0000", sha, resume=_key(hm_card.replace(provenance=base_card.provenance), "off"),
                               **flags)
    # the drift gate may adapt BN statistics: results of --adapt auto are not those of --adapt off
    auto = api.predict_folder(checkpoint=setup["ckpt"], adapt="auto", **kw)
    assert auto["n_done"] == 2 and auto["n_skipped"] == 0
    rec = json.loads(pio.record_path(out, "ct_b_0000").read_text(encoding="utf-8"))
    assert rec["provenance"]["shift"] is not None and rec["provenance"]["resume_key"] == _key(base_card, "auto")
    # a harmonised checkpoint's predictions are redone and carry its key
    harmonised = api.predict_folder(checkpoint=hm, **kw)
    assert harmonised["n_done"] == 2 and harmonised["n_skipped"] == 0
    rec = json.loads(pio.record_path(out, "ct_b_0000").read_text(encoding="utf-8"))
    assert rec["provenance"]["resume_key"] == _key(hm_card, "off")
    assert api.predict_folder(checkpoint=hm, **kw)["n_skipped"] == 2
