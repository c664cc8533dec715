"""The benchmark's DuckDB floor (`bench/reference_duckdb.py`) computes what it says: orders,
net spend, first and last order and distinct products per customer, before the cutoff."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

_PATH = Path(__file__).resolve().parents[2] / "bench" / "reference_duckdb.py"
_SPEC = importlib.util.spec_from_file_location("_lifecast_bench_reference_duckdb", _PATH)
reference = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(reference)


def test_floor_on_a_hand_computed_log(tmp_path: Path) -> None:
    rows = [
        # customer, time, order, product, amount
        (1, "2021-01-05 10:00", 10, 100, 40.0),   # one order of two rows
        (1, "2021-01-05 10:00", 10, 101, 20.0),
        (1, "2021-02-01 09:00", 11, 100, -10.0),  # a return, its own order, a seen product
        (1, "2021-02-20 12:00", 12, None, 5.0),   # no product
        (1, "2021-03-01 00:00", 13, 102, 99.0),   # at the cutoff: unseen
        (2, "2021-02-28 23:59", 20, 100, 7.5),
        (3, "2021-03-02 00:00", 30, 100, 1.0),    # only after the cutoff: absent
    ]
    df = pd.DataFrame(rows, columns=["customer_id", "timestamp", "order_id", "product_id",
                                     "amount"])
    df["timestamp"] = pd.to_datetime(df["timestamp"])
    df["product_id"] = df["product_id"].astype("Int64")
    path = tmp_path / "log.parquet"
    df.to_parquet(path)

    out = reference.features_duckdb_floor(str(path), "2021-03-01").sort_values("customer_id")

    assert out["customer_id"].tolist() == [1, 2]
    assert out["n_orders"].tolist() == [3, 1]
    assert out["net_spend"].tolist() == [55.0, 7.5]
    assert out["first_ts"].tolist() == [pd.Timestamp("2021-01-05 10:00"),
                                        pd.Timestamp("2021-02-28 23:59")]
    assert out["last_ts"].tolist() == [pd.Timestamp("2021-02-20 12:00"),
                                       pd.Timestamp("2021-02-28 23:59")]
    assert out["distinct_products"].tolist() == [2, 1]
