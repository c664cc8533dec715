"""The benchmark's full pandas reference (`bench/reference_pandas.py::features_pandas_full`)
computes exactly what the product's `features.build_features` computes, column by column."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features import FeatureConfig, build_features

_PATH = Path(__file__).resolve().parents[2] / "bench" / "reference_pandas.py"
_SPEC = importlib.util.spec_from_file_location("_lifecast_bench_reference_pandas", _PATH)
reference = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reference)

CUTOFF = pd.Timestamp("2021-03-01")
MAPPING = {"order_id": "order_id", "product_id": "product_id", "quantity": "quantity"}


def tiny_log() -> pd.DataFrame:
    """Amounts are exact in binary floating point, so every sum is exact in both engines."""
    rows = [
        # customer, time, order, product, amount, quantity, category, discount
        ("A", "2020-08-03 10:00", "o1", "p1", 40.0, 2, "X", 0.0),    # a two-row order
        ("A", "2020-08-03 10:00", "o1", "p2", 20.0, 1, "Y", 5.0),
        ("A", "2020-10-05 09:00", "o2", "p1", 12.5, 1, "X", 0.0),    # a purchase with a
        ("A", "2020-10-05 09:00", "o2", "p3", -2.5, -1, "Z", 0.0),   # returned line
        ("A", "2020-10-20 12:00", "r1", "p1", -10.0, -1, "X", 0.0),  # a return-only order
        ("A", "2021-01-29 23:59", "o3", "p2", 8.0, 1, "Y", 0.0),     # straddles cutoff - 30d:
        ("A", "2021-01-30 00:01", "o3", "p4", 4.0, 1, "Y", 0.0),     # out as a whole
        ("A", "2021-02-10 08:00", "o4", "p1", 16.0, 1, "X", 1.0),    # two orders on one day,
        ("A", "2021-02-10 19:00", "o5", None, 4.25, 1, None, 0.0),   # one without product
        ("A", "2021-03-01 00:00", "o6", "p9", 999.0, 1, "X", 0.0),   # AT the cutoff: unseen
        ("A", "2021-04-01 10:00", "o7", "p9", 50.0, 1, "X", 0.0),    # after the cutoff
        ("B", "2020-12-01 00:00", "o8", "p1", 30.0, 1, "X", 0.0),    # at cutoff - 90d: in
        ("C", "2021-02-01 10:00", "r2", "p1", -5.0, -1, "X", 0.0),   # only a return
        ("D", "2021-01-30 00:00", "o9", "p2", 7.5, 1, "Y", 0.0),     # at cutoff - 30d: in
        ("D", "2021-02-27 23:00", "o10", "p2", 7.5, 1, "Y", 0.0),
        ("D", "2021-02-28 23:59", "o11", "p5", 3.0, 1, None, 0.0),
        ("E", "2021-03-01 00:00", "o12", "p1", 20.0, 1, "X", 0.0),   # only at/after cutoff
        ("E", "2021-03-02 00:00", "o13", "p1", 20.0, 1, "X", 0.0),
        ("F", "2020-10-10 14:00", "o1", "p6", 25.0, 1, "X", 0.0),    # A's order id, F's order;
        ("F", "2019-06-01 14:00", "o2", "p6", 25.0, 1, "X", 0.0),    # only "before" the trend
        ("G", "2021-02-14 09:00", "g1", "p7", 0.0, 1, "X", 0.0),     # a free order: no
    ]                                                                  # positive row
    df = pd.DataFrame(
        rows,
        columns=[
            "customer_id", "timestamp", "order_id", "product_id", "amount", "quantity",
            "category", "discount",
        ],
    )
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    return df


def _aligned(product: pd.DataFrame, ref: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both frames sorted by customer id (as text), the product without its cutoff column."""
    product = product.drop(columns="cutoff")
    frames = []
    for f in (product, ref):
        f = f.assign(customer_id=f["customer_id"].astype(str))
        frames.append(f.sort_values("customer_id").reset_index(drop=True))
    return frames[0], frames[1]


CASES = {
    # the benchmark's synthetic-log columns (no category, no discount: those are null)
    "contract": (["category", "discount"], MAPPING, None, CUTOFF),
    "category+discount": (
        [], {**MAPPING, "category": "category", "discount": "discount"}, None, CUTOFF
    ),
    # no order_id: an order is a customer-day
    "no order_id": (["order_id", "product_id", "category", "discount"], {}, None, CUTOFF),
    "midday cutoff, other windows": (
        ["category", "discount"], MAPPING,
        FeatureConfig(windows_days=(7, 60), trend_window_days=30),
        pd.Timestamp("2021-02-10 12:00"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_full_reference_equals_the_product_exactly(case: str) -> None:
    drop, mapping, config, cutoff = CASES[case]
    log = tiny_log().drop(columns=drop)
    product = build_features(log, cutoff, mapping=mapping, config=config)
    ref = reference.features_pandas_full(log, cutoff, config)
    assert list(product.columns) == ["customer_id", "cutoff", *ref.columns[1:]]
    product, ref = _aligned(product, ref)
    if cutoff == CUTOFF:
        # C only returned, E bought only at or after the cutoff: not customers
        assert list(ref["customer_id"]) == ["A", "B", "D", "F", "G"]
    pd.testing.assert_frame_equal(ref, product, check_dtype=False, check_exact=True)


def test_full_reference_null_rules() -> None:
    ref = reference.features_pandas_full(tiny_log(), CUTOFF).set_index("customer_id")
    # one purchase day: no gaps
    assert ref.loc["B", ["gap_mean", "gap_std", "overdue_ratio"]].isna().all()
    assert ref.loc["B", "gap_last"] is pd.NA
    assert ref.loc["B", "monetary_value"] == 0.0
    # no positive row: no return rate, no discount share
    assert ref.loc["G", ["return_rate", "discount_share"]].isna().all()
    assert ref.drop(index="G")["discount_share"].notna().all()  # the column is present
    assert ref.loc["F", "spend_trend"] == -1.0  # spent only in the window before
    # p1, p2, p4: p3 was only returned, and the null product is not counted
    assert ref.loc["A", "distinct_products"] == 3


def test_a_fully_returned_purchase_nets_to_zero_as_in_the_product() -> None:
    """0.1 + 0.2 - 0.3 is 5.6e-17 in floats and 0 in the product's exact decimals: the
    trend's denominator is 0, so spend_trend is null in both."""
    log = pd.DataFrame({
        "customer_id": ["H", "H", "H", "H", "I"],  # I: recent data, so not stale
        "timestamp": pd.to_datetime([
            "2020-01-10 10:00", "2021-01-10 10:00", "2021-01-10 10:00", "2021-01-20 10:00",
            "2021-02-27 10:00",
        ]),
        "amount": [5.0, 0.1, 0.2, -0.3, 1.0],
        "order_id": ["o1", "o2", "o2", "r1", "i1"],
        "product_id": ["p1", "p1", "p2", "p1", "p1"],
        "quantity": [1, 1, 1, -1, 1],
    })
    product, ref = _aligned(
        build_features(log, CUTOFF, mapping=MAPPING), reference.features_pandas_full(log, CUTOFF)
    )
    assert np.isnan(ref.loc[0, "spend_trend"]) and np.isnan(product.loc[0, "spend_trend"])
    pd.testing.assert_frame_equal(ref, product, check_dtype=False, rtol=0, atol=1e-12)
