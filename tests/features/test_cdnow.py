"""The BTYD summary equals lifetimes' summary_data_from_transaction_data on CDNOW.

lifetimes treats its observation end as inclusive; our cutoff is exclusive and T counts
to the cutoff rounded up to a whole day. With a midnight cutoff C, lifetimes run with
``observation_period_end = C - 1 day`` gives the same frequency, recency and
monetary_value, and a T one day shorter (the documented convention).
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
