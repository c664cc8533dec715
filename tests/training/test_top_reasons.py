"""`training.models.top_reasons` and `risk_band`: the few-rows paths (plain Python) and the
vectorised paths give the same answers, in the documented order."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from training import models as tm
from training.models import top_reasons

NAMES = ["a", "b", "c", "d", "e", "f"]


def test_order_ties_and_missing_values_by_hand() -> None:
    contrib = np.array([[0.5, -0.5, np.nan, 0.1, -0.7, 0.0, 9.9]])  # last: the bias
    X = np.array([[1.0, np.nan, 3.0, 4.0, 5.0, 6.0]])
    expected = [[
        {"feature": "e", "value": 5.0, "contribution": -0.7, "direction": "lowers"},
        {"feature": "a", "value": 1.0, "contribution": 0.5, "direction": "raises"},
        {"feature": "b", "value": None, "contribution": -0.5, "direction": "lowers"},
        {"feature": "d", "value": 4.0, "contribution": 0.1, "direction": "raises"},
    ]]
    assert top_reasons(contrib, X, NAMES, 4) == expected  # few rows: plain Python
    many = top_reasons(np.repeat(contrib, tm._FEW_ROWS + 1, axis=0),
                       np.repeat(X, tm._FEW_ROWS + 1, axis=0), NAMES, 4)
    assert many == expected * (tm._FEW_ROWS + 1)  # vectorised: the same
    # the NaN contribution comes after every number; f, which moved nothing, is no reason
    for rows in (1, tm._FEW_ROWS + 1):
        last = top_reasons(np.repeat(contrib, rows, axis=0), np.repeat(X, rows, axis=0),
                           NAMES, 6)
        assert [[r["feature"] for r in row] for row in last] == [["e", "a", "b", "d", "c"]] * rows
    # a row no feature moved (a model that learned nothing) has no reasons
    nothing = np.zeros((tm._FEW_ROWS + 1, len(NAMES) + 1))
    assert top_reasons(nothing, np.ones((len(nothing), len(NAMES))), NAMES, 3) == [[]] * len(
        nothing)
    assert top_reasons(nothing[:1], np.ones((1, len(NAMES))), NAMES, 3) == [[]]


values = st.one_of(st.sampled_from([0.0, -0.0, 0.25, -0.25, 1.0, np.nan]),
                   st.floats(-5, 5, allow_nan=False))


@settings(max_examples=150, deadline=None)
@given(contrib=arrays(np.float64, (5, len(NAMES) + 1), elements=values),
       X=arrays(np.float64, (5, len(NAMES)), elements=values),
       k=st.integers(1, len(NAMES) + 2))
def test_few_rows_path_equals_vectorised_path(contrib, X, k) -> None:
    few = top_reasons(contrib, X, NAMES, k)
    # the same rows among enough others to take the vectorised path
    pad = tm._FEW_ROWS + 1
    big_c = np.vstack([contrib, np.zeros((pad, contrib.shape[1]))])
    big_x = np.vstack([X, np.zeros((pad, X.shape[1]))])
    vectorised = top_reasons(big_c, big_x, NAMES, k)[: len(contrib)]
    assert repr(few) == repr(vectorised)  # repr: NaN == NaN, -0.0 kept apart from 0.0


def test_risk_band_few_and_many_rows_agree() -> None:
    from training.models import risk_band

    p = np.array([0.0, 0.2999, 0.3, 0.5, 0.6, 0.61, 1.0, np.nan])
    expected = ["low", "low", "medium", "medium", "high", "high", "high", "low"]
    assert risk_band(p, (0.3, 0.6)).tolist() == expected  # few rows: plain Python
    many = np.tile(p, 3)  # 24 rows: numpy
    assert risk_band(many, (0.3, 0.6)).tolist() == expected * 3
    assert risk_band(np.array([]), (0.3, 0.6)).tolist() == []
