"""``medmtl encoders``: the table and the JSON listing."""

from __future__ import annotations

import json

from click.testing import CliRunner

from medmtl.cli import main
from medmtl.models.weights import KNOWN_SHA256


def test_encoders_json(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("MEDMTL_WEIGHTS_DIR", str(tmp_path))
    result = CliRunner().invoke(main, ["encoders", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    lite0 = rows["efficientnet-lite0"]
    assert lite0["found"] and lite0["sha256"] == KNOWN_SHA256["efficientnet-lite0"]
    assert lite0["adapters"] == ["2d", "2.5d", "inflate", "acs"] and lite0["licence"] == "Apache-2.0"
    assert not rows["resnet18"]["found"] and "resnet18.pth" in rows["resnet18"]["weights_source"]


def test_encoders_table() -> None:
    result = CliRunner().invoke(main, ["encoders"])
    assert result.exit_code == 0
    assert "efficientnet-lite0" in result.output and "sha256:" in result.output and "missing" in result.output
