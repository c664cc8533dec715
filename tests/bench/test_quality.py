"""The quality benchmark's breakdown by tenure (`bench/quality.py --by-tenure`) computes what
it says, checked on a hand-computed backtest."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

_PATH = Path(__file__).resolve().parents[2] / "bench" / "quality.py"
_SPEC = importlib.util.spec_from_file_location("_lifecast_bench_quality", _PATH)
quality = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(quality)


def _predictions() -> pd.DataFrame:
    return pd.DataFrame({
        "customer_id": ["a", "b", "c", "d", "e"],
        "churned": [True, False, True, False, False],
        "churn_probability": [0.5, 0.3, 0.9, 0.2, 0.1],
        "baseline_churn_probability": [0.4, 0.4, 0.8, 0.4, 0.2],
        "actual_value": [10.0, 30.0, 0.0, 50.0, 0.0],
        "predicted_clv": [20.0, 30.0, 5.0, 40.0, 1.0],
        "baseline_clv": [10.0, 10.0, 5.0, 60.0, 2.0],
    })


def test_tenure_breakdown_by_hand() -> None:
    # a, b: 0-29 days; c, d: 90-179 (c on the band's first day); e: 365+
    tenure = pd.Series({"a": 0.0, "b": 29.0, "c": 90.0, "d": 179.0, "e": 400.0})
    out = quality.tenure_breakdown(_predictions(), tenure)
    assert out.index.tolist() == ["0-29", "90-179", "365+"]  # empty bands are left out
    assert out["customers"].tolist() == [2, 2, 1]
    assert out["churn_actual"].tolist() == [0.5, 0.5, 0.0]
    assert out["churn_model"].tolist() == pytest.approx([0.4, 0.55, 0.1])
    assert out["churn_baseline"].tolist() == pytest.approx([0.4, 0.6, 0.2])
    assert out["spend_actual"].tolist() == [40.0, 50.0, 0.0]
    # 0-29: 50 / 40 - 1 and 20 / 40 - 1; 90-179: 45 / 50 - 1 and 65 / 50 - 1
    assert out["bias_model"].iloc[:2].tolist() == pytest.approx([0.25, -0.1])
    assert out["bias_baseline"].iloc[:2].tolist() == pytest.approx([-0.5, 0.3])
    # no actual spend: no bias rather than an infinite one
    assert math.isnan(out["bias_model"].iloc[2]) and math.isnan(out["bias_baseline"].iloc[2])


def test_tenure_breakdown_names_customers_without_tenure() -> None:
    tenure = pd.Series({"a": 0.0, "b": 1.0, "c": 2.0})
    with pytest.raises(ValueError, match=r"no tenure for customers \['d', 'e'\]"):
        quality.tenure_breakdown(_predictions(), tenure)


def test_summary_counts_the_bar_and_the_extra_cutoffs_apart() -> None:
    rows = [{"met": True}, {"met": False, "in_bar": True}, {"met": True, "in_bar": True},
            {"met": False, "in_bar": False}, {"met": True, "in_bar": False}]
    assert quality.summary(rows) == (
        "2 of 3 bars met; extra cutoffs (outside the bar): 1 of 2 checks met")
    assert quality.summary(rows[:3]) == "2 of 3 bars met"
