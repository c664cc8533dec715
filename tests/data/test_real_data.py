"""Data tests on the real logs in ../shared/data (skipped, saying why, when absent)."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest

from features import DEMO_MAPPING, ColumnMapping, build_features, load_transactions

CJ_MAPPING = ColumnMapping(
    customer_id="household_id", timestamp="transaction_timestamp", amount="sales_value",
    order_id="basket_id", product_id="product_id", quantity="quantity",
)


def test_online_retail_report_matches_the_known_counts(shared_data):
    r = load_transactions(shared_data / "online_retail.parquet", DEMO_MAPPING).report
    assert r.rows_read == 541_909
    assert r.rows_dropped["missing customer_id"] == 135_080
    assert r.rows_kept == 541_909 - 135_080
    assert r.customers == 4_372
    assert r.first_event == pd.Timestamp("2010-12-01 08:26")
    assert r.last_event == pd.Timestamp("2011-12-09 12:50")


def test_complete_journey_report_matches_the_known_counts(shared_data):
    r = load_transactions(
        shared_data / "completejourney_transactions.parquet", CJ_MAPPING
    ).report
    assert r.rows_read == 1_469_307
    assert r.rows_dropped["missing customer_id"] == 0
    assert r.customers == 2_469
    assert r.orders == 155_848
    assert r.first_event == pd.Timestamp("2017-01-01 11:53:26")
    assert r.last_event == pd.Timestamp("2018-01-01 04:01:20")


@pytest.mark.parametrize(
    ("file", "mapping", "cutoff"),
    [("online_retail.parquet", DEMO_MAPPING, "2011-09-01"),
     ("completejourney_transactions.parquet", CJ_MAPPING, "2017-09-01")],
)
def test_feature_pipeline_runs_on_real_logs(shared_data, file, mapping, cutoff):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        feats = build_features(shared_data / file, cutoff, mapping=mapping)
    # no real customer is taken for an id many buyers share (largest: 1.1% and 0.5%)
    assert not [w for w in caught if "many buyers share" in str(w.message)]
    assert feats["customer_id"].is_unique and len(feats) > 2000
    assert (feats["n_orders"] >= 1).all()
    assert (feats["days_since_last"] >= 1).all()
    assert (feats["T"] >= feats["recency"]).all()
    # every customer in the output bought something before the cutoff, nothing after
    assert feats["cutoff"].eq(pd.Timestamp(cutoff)).all()


def test_the_baseline_fits_at_every_monthly_snapshot_of_complete_journey(shared_data):
    """BG/NBD + Gamma-Gamma fit at each monthly cutoff of 2017. At 2017-03-03 the BG/NBD
    optimiser stops on rounding noise (a and b run off together); the fit used to fail
    there, which left the baseline features of that training snapshot empty."""
    from training.baseline import BaselineCLV

    cutoffs = pd.date_range("2017-02-01", "2017-12-01", freq="30D")
    assert pd.Timestamp("2017-03-03") in cutoffs
    tx = load_transactions(shared_data / "completejourney_transactions.parquet", CJ_MAPPING)
    for cutoff in cutoffs:
        feats = build_features(tx, cutoff)
        baseline = BaselineCLV().fit(feats)
        assert 0 < baseline.bgnbd_.params_["a"] / (baseline.bgnbd_.params_["a"]
                                                   + baseline.bgnbd_.params_["b"]) < 1, cutoff
