"""bench/adaptation.py: the pure parts (gap shares against site A and against the oracle, tables)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the benchmarks are run from the repository root (python -m bench.adaptation)
    sys.path.insert(0, str(REPO))

from bench import adaptation as A  # noqa: E402


def _row(name: str, cpm: float | None, mae: float | None = None) -> dict[str, Any]:
    return {"condition": name, "n_scans": 4, "cpm": {"value": cpm, "ci95": None},
            "diameter_mae_mm": {"value": mae, "ci95": None}, "malignancy_auc": {"value": None, "ci95": None}}


def test_gap_share() -> None:
    assert A.gap_share(0.4, 0.1, 0.25) == pytest.approx(0.5)  # half of the A→B gap
    assert A.gap_share(4.0, 8.0, 6.0) == pytest.approx(0.5)  # MAE: lower is better, same formula
    assert A.gap_share(0.4, 0.1, 0.05) == pytest.approx(-1 / 6)  # worse than no adaptation
    assert A.gap_share(0.2, 0.2, 0.3) is None and A.gap_share(None, 0.1, 0.2) is None


def test_closable_share_against_the_oracle_and_tables() -> None:
    rows = [_row("site A held-out", 0.4, 4.0), _row("site B, none", 0.1, 8.0), _row("site B, adabn", 0.15, 7.0),
            _row("site B, oracle: trained on 8 labelled site-B scans", 0.2, 6.0)]
    for r in rows[2:]:
        r["gap_share"] = {k: A.gap_share(rows[0][k]["value"], rows[1][k]["value"], r[k]["value"]) for k, _ in A.METRICS}
    A.add_closable_shares(rows)
    assert rows[2]["closable_share"]["cpm"] == pytest.approx(0.5)  # half of what labels would give
    assert rows[2]["closable_share"]["diameter_mae_mm"] == pytest.approx(0.5)
    assert rows[2]["gap_share"]["cpm"] == pytest.approx(1 / 6)
    assert "closable_share" not in rows[3]  # the oracle is the reference, not a method
    md = A.markdown({"quality": {"rows": rows}})
    assert "share of the closable gap, oracle = 1" in md and "| +0.50 / +0.50 / n/a |" in md
    plain = rows[:3]
    for r in plain:
        r.pop("closable_share", None)
    assert "closable" not in A.markdown({"quality": {"rows": plain}})
