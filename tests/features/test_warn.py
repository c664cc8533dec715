"""Warnings point at the caller's line, however deep inside lifecast they are raised."""

from __future__ import annotations

import warnings

import pandas as pd

from features import build_features, build_snapshots
from features.contract import StaleDataWarning

LOG = pd.DataFrame({
    "customer_id": ["a", "a", "b"],
    "timestamp": pd.to_datetime(["2021-01-01", "2021-01-10", "2021-01-05"]),
    "amount": [10.0, 5.0, 3.0],
})


def test_a_stale_cutoff_warns_at_the_users_call() -> None:
    for build in (lambda: build_features(LOG, "2021-06-01"),
                  lambda: build_snapshots(LOG, ["2021-05-01", "2021-06-01"])):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            build()
        stale = [w for w in caught if issubclass(w.category, StaleDataWarning)]
        assert stale and {w.filename for w in stale} == {__file__}
