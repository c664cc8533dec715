"""The BTYD summary equals lifetimes' summary_data_from_transaction_data on CDNOW.

lifetimes treats its observation end as inclusive; our cutoff is exclusive and T counts
to the cutoff rounded up to a whole day. With a midnight cutoff C, lifetimes run with
``observation_period_end = C - 1 day`` gives the same frequency, recency and
monetary_value, and a T one day shorter (the documented convention), on a log without
returns such as CDNOW.
"""

from __future__ import annotations

import pandas as pd
import pytest

from features import ColumnMapping, build_features

CUTOFF = pd.Timestamp("1997-10-01")


@pytest.fixture(scope="module")
def cdnow(lifetimes_datasets) -> pd.DataFrame:
    df = pd.read_csv(
        lifetimes_datasets / "CDNOW_sample.txt", sep=r"\s+", header=None,
        names=["customer", "customer_index", "date", "quantity", "spend"],
        dtype={"customer": str, "date": str},
    )
    df["date"] = pd.to_datetime(df["date"], format="%Y%m%d")
    return df


def test_summary_matches_lifetimes_customer_by_customer(cdnow):
    lifetimes_utils = pytest.importorskip("lifetimes.utils")
    ref = lifetimes_utils.summary_data_from_transaction_data(
        cdnow, "customer", "date", monetary_value_col="spend",
        observation_period_end=CUTOFF - pd.Timedelta(days=1),
    )
    ours = build_features(
        cdnow, CUTOFF,
        mapping=ColumnMapping(customer_id="customer", timestamp="date", amount="spend"),
    ).set_index("customer_id")
    assert len(ours) == len(ref) == 2357
    ref.index = ref.index.astype(str)
    ref = ref.loc[ours.index]
    assert (ours["frequency"].to_numpy() == ref["frequency"].to_numpy()).all()
    assert (ours["recency"].to_numpy() == ref["recency"].to_numpy()).all()
    assert (ours["T"].to_numpy() == ref["T"].to_numpy() + 1).all()
    pd.testing.assert_series_equal(
        ours["monetary_value"], ref["monetary_value"], check_names=False, check_index=False,
        rtol=1e-9,
    )


def test_the_lifetimes_equality_is_stated_for_logs_without_returns():
    """lifetimes counts every day with a row as a purchase day and nets a day's rows into
    its value; lifecast counts purchase orders only (a return booked as its own order is no
    purchase). The README said the summaries are equal, without that condition: on this
    log, a's return-only day gives lifetimes frequency 2, recency 8, monetary_value 7.5
    where lifecast gives 1, 4 and 20."""
    from pathlib import Path

    lifetimes_utils = pytest.importorskip("lifetimes.utils")
    df = pd.DataFrame({
        "customer_id": ["a", "a", "a", "b", "b"],
        "timestamp": pd.to_datetime(["2024-01-01", "2024-01-05", "2024-01-09",
                                     "2024-01-01", "2024-01-03"]),
        "amount": [10.0, 20.0, -5.0, 10.0, 30.0],
    })
    ours = build_features(df, "2024-01-20").set_index("customer_id")
    ref = lifetimes_utils.summary_data_from_transaction_data(
        df, "customer_id", "timestamp", "amount", observation_period_end="2024-01-19")
    cols = ["frequency", "recency", "monetary_value"]
    assert ours.loc["b", cols].astype(float).tolist() == ref.loc["b", cols].tolist()
    assert ours.loc["a", cols].astype(float).tolist() == [1.0, 4.0, 20.0]
    assert ref.loc["a", cols].tolist() == [2.0, 8.0, 7.5]
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    assert "on a log without returns" in " ".join(readme.split())
