"""A tiny hand-computed log, checked feature by feature, plus labels and training frames."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from features import ColumnMapping, FeatureConfig, build_features, build_labels
from features.contract import DataValidationError
from features.naming import command_line
from features.pipeline import build_training_frame, snapshot_cutoffs
from features.registry import feature_definitions, feature_names

CUTOFF = pd.Timestamp("2021-03-01")


def tiny_log() -> pd.DataFrame:
    rows = [
        # cust, time, order, product, category, amount, discount
        ("A", "2021-01-04 10:00", "o1", "p1", "X", 100.0, 0.0),   # Monday
        ("A", "2021-01-04 10:00", "o1", "p2", "Y", 50.0, 10.0),   # discounted line
        ("A", "2021-01-18 09:00", "o2", "p1", "X", 30.0, 0.0),    # Monday
        ("A", "2021-01-20 12:00", "r1", "p9", "W", -30.0, 0.0),   # return-only order of a
        # product (and category) A never bought in the log: not among the distinct bought
        ("A", "2021-02-15 15:00", "o3", "p3", "X", 80.0, 0.0),    # Monday
        ("A", "2021-03-01 00:00", "o4", "p1", "X", 999.0, 0.0),   # AT the cutoff: unseen
        ("A", "2021-03-05 11:00", "o5", "p1", "X", 40.0, 0.0),    # after the cutoff
        ("B", "2020-12-01 08:00", "o6", "p4", "Z", 20.0, 0.0),
        ("C", "2021-02-01 10:00", "r2", "p1", "X", -10.0, 0.0),   # only a return
        ("D", "2021-02-28 23:00", "o8", None, None, 7.0, 0.0),
        ("D", "2021-02-28 23:59", "o7", None, None, 5.0, 0.0),
        # H: one order in every window length (365/180/90/30 days), both trend windows,
        # three unequal gaps and two weekdays; p5 bought twice
        ("H", "2020-05-08 12:00", "o10", "p5", "X", 40.0, 0.0),   # Friday
        ("H", "2020-10-30 12:00", "o11", "p6", "Y", 60.0, 0.0),   # Friday
        ("H", "2020-11-06 12:00", "o12", "p5", "X", 20.0, 0.0),   # Friday
        ("H", "2021-02-10 12:00", "o13", "p7", "Z", 30.0, 0.0),   # Wednesday
        # J: no purchase in the last 180 days, only a return
        ("J", "2020-06-01 10:00", "o14", "p8", "X", 25.0, 0.0),
        ("J", "2021-01-10 12:00", "r3", "p8", "X", -5.0, 0.0),    # return-only order
    ]
    df = pd.DataFrame(
        rows, columns=["cust", "when", "order", "sku", "cat", "value", "disc"]
    )
    df["when"] = pd.to_datetime(df["when"])
    return df


MAPPING = ColumnMapping(
    customer_id="cust", timestamp="when", amount="value", order_id="order",
    product_id="sku", category="cat", discount="disc",
)

# Worked by hand. A: purchase days 01-04 (150), 01-18 (30), 02-15 (80); gaps 14 and 28;
# cutoff_day 03-01; gross = 100+50+30+80 = 260; returned 30; net 230.
EXPECTED = {
    "A": dict(
        frequency=2, recency=42, T=56, monetary_value=(30 + 80) / 2,
        days_since_last=14, n_orders=3, monetary_total=230.0, monetary_mean=230 / 3,
        first_order_value=150.0, max_order_value=150.0,
        orders_30d=1, spend_30d=80.0,          # since 2021-01-30: o3 only
        orders_90d=3, spend_90d=230.0,         # since 2020-12-01: all, incl. the return
        orders_180d=3, spend_180d=230.0, orders_365d=3, spend_365d=230.0,
        spend_trend=1.0,                       # (230 - 0) / (230 + 0)
        gap_mean=21.0, gap_std=7.0, gap_last=28, overdue_ratio=14 / 21,
        return_rate=30 / 260, n_returns=1, distinct_products=3, distinct_categories=2,
        active_months=2, dow_regularity=1.0, discount_share=50 / 260,
    ),
    # B: one order on 2020-12-01 08:00, which is after cutoff - 90 days (12-01 00:00).
    "B": dict(
        frequency=0, recency=0, T=90, monetary_value=0.0, days_since_last=90, n_orders=1,
        monetary_total=20.0, monetary_mean=20.0, first_order_value=20.0,
        max_order_value=20.0, orders_30d=0, spend_30d=0.0, orders_90d=1, spend_90d=20.0,
        orders_180d=1, spend_180d=20.0, orders_365d=1, spend_365d=20.0, spend_trend=1.0,
        gap_mean=None, gap_std=None, gap_last=None, overdue_ratio=None, return_rate=0.0,
        n_returns=0, distinct_products=1, distinct_categories=1, active_months=1,
        dow_regularity=1.0, discount_share=0.0,
    ),
    # D: two orders on the day before the cutoff: one purchase day, two orders.
    "D": dict(
        frequency=0, recency=0, T=1, monetary_value=0.0, days_since_last=1, n_orders=2,
        monetary_total=12.0, monetary_mean=6.0, first_order_value=12.0,
        max_order_value=7.0, orders_30d=2, spend_30d=12.0, orders_90d=2, spend_90d=12.0,
        orders_180d=2, spend_180d=12.0, orders_365d=2, spend_365d=12.0, spend_trend=1.0,
        gap_mean=None, gap_std=None, gap_last=None, overdue_ratio=None, return_rate=0.0,
        n_returns=0, distinct_products=0, distinct_categories=0, active_months=1,
        dow_regularity=1.0, discount_share=0.0,
    ),
    # H: purchase days 2020-05-08, 10-30, 11-06, 2021-02-10; gaps 175, 7 and 96 days (sum
    # 278 = recency); T = 2020-05-08 to 2021-03-01 = 297 days. Windows start 2021-01-30
    # (30d), 2020-12-01 (90d), 2020-09-02 (180d), 2020-03-01 (365d). Trend: last 90 days
    # 30, the 90 before (from 2020-09-02) 60 + 20 = 80. Weekdays: three Fridays, one
    # Wednesday.
    "H": dict(
        frequency=3, recency=278, T=297, monetary_value=(60 + 20 + 30) / 3,
        days_since_last=19, n_orders=4, monetary_total=150.0, monetary_mean=150 / 4,
        first_order_value=40.0, max_order_value=60.0,
        orders_30d=1, spend_30d=30.0, orders_90d=1, spend_90d=30.0,
        orders_180d=3, spend_180d=110.0, orders_365d=4, spend_365d=150.0,
        spend_trend=(30 - 80) / (30 + 80),
        gap_mean=278 / 3,
        # population std of (175, 7, 96): sqrt(3 * (175^2 + 7^2 + 96^2) - 278^2) / 3
        gap_std=math.sqrt(3 * (175**2 + 7**2 + 96**2) - 278**2) / 3,
        gap_last=96, overdue_ratio=19 * 3 / 278, return_rate=0.0, n_returns=0,
        distinct_products=3, distinct_categories=3, active_months=4, dow_regularity=3 / 4,
        discount_share=0.0,
    ),
    # J: one purchase 2020-06-01 (273 days before the cutoff), then a return-only order on
    # 2021-01-10: spend in the recent windows is negative, no purchase in the last 180
    # days, so the spend trend is undefined (null).
    "J": dict(
        frequency=0, recency=0, T=273, monetary_value=0.0, days_since_last=273, n_orders=1,
        monetary_total=20.0, monetary_mean=20.0, first_order_value=25.0,
        max_order_value=25.0, orders_30d=0, spend_30d=0.0, orders_90d=0, spend_90d=-5.0,
        orders_180d=0, spend_180d=-5.0, orders_365d=1, spend_365d=20.0, spend_trend=None,
        gap_mean=None, gap_std=None, gap_last=None, overdue_ratio=None, return_rate=5 / 25,
        n_returns=1, distinct_products=1, distinct_categories=1, active_months=1,
        dow_regularity=1.0, discount_share=0.0,
    ),
}


def _same(actual, expected) -> bool:
    if expected is None:
        return actual is pd.NA or (isinstance(actual, float) and math.isnan(actual))
    return actual == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_hand_computed_log_feature_by_feature():
    feats = build_features(tiny_log(), CUTOFF, mapping=MAPPING)
    # C only returned: not a customer
    assert list(feats["customer_id"]) == ["A", "B", "D", "H", "J"]
    assert list(feats.columns) == ["customer_id", "cutoff", *feature_names()]
    assert (feats["cutoff"] == CUTOFF).all()
    for cust, expected in EXPECTED.items():
        row = feats.set_index("customer_id").loc[cust]
        assert set(expected) == set(feature_names()), "the test must cover every feature"
        wrong = {k: (row[k], v) for k, v in expected.items() if not _same(row[k], v)}
        assert not wrong, f"customer {cust}: (got, expected) {wrong}"


def test_feature_dtypes_are_stable():
    feats = build_features(tiny_log(), CUTOFF, mapping=MAPPING)
    assert str(feats["customer_id"].dtype) == "string"
    assert str(feats["frequency"].dtype) == "Int64"
    assert str(feats["distinct_products"].dtype) == "Int64"
    assert str(feats["gap_mean"].dtype) == "float64"


def test_optional_columns_absent_give_null_features():
    log = tiny_log()[["cust", "when", "value"]]
    feats = build_features(
        log, CUTOFF, mapping=ColumnMapping(customer_id="cust", timestamp="when", amount="value")
    )
    assert feats["distinct_products"].isna().all()
    assert feats["discount_share"].isna().all()
    # Without order ids an order is a customer-day: A's 01-04 lines are one order, and
    # D's two orders on 02-28 become one.
    d = feats.set_index("customer_id").loc["D"]
    assert d["n_orders"] == 1 and d["max_order_value"] == 12.0


@pytest.mark.parametrize("ids", ["text", "integer", "all missing"])
def test_rows_without_an_order_id_are_customer_day_orders(ids: str) -> None:
    """A mapped order_id that is missing on some rows: each customer-day of those rows is
    an order (DESIGN.md's rule without order ids, and the service's). Before, the missing
    ids were one group, so A's three id-less purchases on three days were one order dated
    on the first: n_orders 2, recency 35, days_since_last 83."""
    known = {"text": ["X1", "X2"], "integer": [11, 12], "all missing": [None, None]}[ids]
    log = pd.DataFrame({
        "customer_id": ["A"] * 6,
        "timestamp": pd.to_datetime(["2022-01-03 10:00", "2022-02-07 10:00",
                                     "2022-03-07 09:00", "2022-03-07 17:00",
                                     "2022-04-04 10:00", "2022-04-04 11:00"]),
        "amount": [10.0, 20.0, 30.0, 5.0, 40.0, 7.0],
        "order_id": pd.array([known[0], None, None, None, None, known[1]],
                             dtype="Int64" if ids == "integer" else "object"),
    })
    from features import load_transactions

    feats = build_features(log, "2022-05-01").set_index("customer_id").loc["A"]
    if ids == "all missing":  # one order per day: 01-03, 02-07, 03-07, 04-04
        orders, largest = 4, 47.0
    else:  # X1; 02-07; 03-07 (30 + 5); 04-04 (40); X2 on 04-04 too (7)
        orders, largest = 5, 40.0
    assert feats["n_orders"] == orders
    assert feats["frequency"] == 3  # purchase days after the first
    assert feats["recency"] == 91 and feats["days_since_last"] == 27
    assert feats["max_order_value"] == largest
    assert feats["monetary_total"] == 112.0
    assert load_transactions(log).report.orders == orders
    labels = build_labels(log, "2022-03-01", 30, require_observed=False).set_index(
        "customer_id")
    assert labels.loc["A", "future_orders"] == 1  # 03-07: two id-less rows, one day


@pytest.mark.parametrize("source", ["pandas", "pandas aware", "parquet"])
def test_a_nanosecond_before_the_cutoff_is_before_it(source: str, tmp_path) -> None:
    """Nanosecond times are floored to the contract's microseconds: DuckDB's casts rounded,
    so an event 1-500 ns before the cutoff was at the cutoff, out of the features and in the
    label window (pandas' times are nanoseconds by default)."""
    cutoff = pd.Timestamp("2022-03-01")
    times = pd.Series([pd.Timestamp("2022-01-10"), cutoff - pd.Timedelta(1, "ns"),
                       cutoff - pd.Timedelta(499, "ns"), cutoff + pd.Timedelta(1, "ns")],
                      dtype="datetime64[ns]")
    if source == "pandas aware":
        times = times.dt.tz_localize("UTC").dt.tz_convert("Europe/London")
    log = pd.DataFrame({"customer_id": ["A", "A", "B", "B"], "timestamp": times,
                        "amount": [1.0, 2.0, 3.0, 4.0]})
    if source == "parquet":
        log.to_parquet(tmp_path / "ns.parquet", coerce_timestamps=None,
                       allow_truncated_timestamps=False)
        log = str(tmp_path / "ns.parquet")
    feats = build_features(log, cutoff).set_index("customer_id")
    assert feats.loc["A", "n_orders"] == 2 and feats.loc["A", "monetary_total"] == 3.0
    assert feats.loc["B", "n_orders"] == 1 and feats.loc["B", "days_since_last"] == 1  # 02-28
    labels = build_labels(log, cutoff, 30, require_observed=False).set_index("customer_id")
    assert labels.loc["A", "churned"] == 1 and labels.loc["B", "future_value"] == 4.0


def test_labels_hand_computed():
    labels = build_labels(tiny_log(), CUTOFF, 30, mapping=MAPPING, require_observed=False)
    got = labels.set_index("customer_id")
    assert list(got.index) == ["A", "B", "D", "H", "J"]
    # A buys o4 (03-01 00:00, inside [cutoff, cutoff+30d)) and o5 (03-05).
    assert got.loc["A", "churned"] == 0
    assert got.loc["A", "future_value"] == 1039.0
    assert got.loc["A", "future_orders"] == 2
    assert got.loc["B", "churned"] == 1 and got.loc["B", "future_value"] == 0.0
    assert got.loc["D", "churned"] == 1
    assert (got.loc[["H", "J"], "churned"] == 1).all()
    assert (got.loc[["H", "J"], "future_value"] == 0.0).all()


def test_labels_refuse_unobserved_window():
    with pytest.raises(DataValidationError, match="not covered by the data"):
        build_labels(tiny_log(), CUTOFF, 90, mapping=MAPPING)


def test_labels_need_data_on_the_last_day_of_a_window_ending_at_noon():
    """The window [01-10 12:00, 01-20 12:00) ends on the 20th: a log whose last event is on
    the 19th at 13:00 has not seen that morning's orders (it was accepted: the rule was "last
    event within a day of the window's end"). A window ending at midnight still counts a log
    that ends during its last day."""
    def log(last: str) -> pd.DataFrame:
        return pd.DataFrame({"customer_id": ["a", "a"],
                             "timestamp": pd.to_datetime(["2024-01-02 10:00", last]),
                             "amount": [10.0, 5.0]})

    with pytest.raises(DataValidationError, match="not covered by the data"):
        build_labels(log("2024-01-19 13:00"), "2024-01-10 12:00", 10)
    assert len(build_labels(log("2024-01-20 08:00"), "2024-01-10 12:00", 10)) == 1
    assert len(build_labels(log("2024-01-19 13:00"), "2024-01-10", 10)) == 1
    with pytest.raises(DataValidationError, match="not covered by the data"):
        build_labels(log("2024-01-18 23:00"), "2024-01-10", 10)


def test_labels_refuse_a_cutoff_with_no_customers_before_it():
    # an empty frame would look like "nobody bought": say there is no population instead
    with pytest.raises(DataValidationError, match="at or before the first event"):
        build_labels(tiny_log(), "2019-01-01", 30, mapping=MAPPING, require_observed=False)


@pytest.mark.parametrize("horizon", ["30", 30.0, 0, -5, True, None])
def test_labels_refuse_a_horizon_that_is_not_a_positive_whole_number(horizon):
    with pytest.raises(DataValidationError, match="horizon_days must be"):
        build_labels(tiny_log(), CUTOFF, horizon, mapping=MAPPING, require_observed=False)


def test_a_mapping_may_be_a_plain_dict_or_a_yaml_file_everywhere(tmp_path):
    import yaml

    from features.contract import load_transactions

    as_dict = MAPPING.model_dump(exclude_none=True)
    tx = load_transactions(tiny_log(), as_dict)
    assert tx.report.rows_read == len(tiny_log())
    expected = build_features(tiny_log(), CUTOFF, MAPPING)
    pd.testing.assert_frame_equal(build_features(tiny_log(), CUTOFF, as_dict), expected)
    path = tmp_path / "mapping.yaml"
    path.write_text(yaml.safe_dump(as_dict))
    pd.testing.assert_frame_equal(build_features(tiny_log(), CUTOFF, mapping=str(path)),
                                  expected)
    with pytest.raises(FileNotFoundError, match="mapping file .*nope.yaml does not exist"):
        build_features(tiny_log(), CUTOFF, mapping=tmp_path / "nope.yaml")
    with pytest.raises(ValueError, match="unknown key 'customer'"):
        load_transactions(tiny_log(), {"customer": "cust"})
    with pytest.raises(TypeError, match="mapping must be a ColumnMapping, a dict"):
        load_transactions(tiny_log(), ["cust"])


def test_every_builder_reads_a_database_table_and_takes_a_config_dict(tmp_path):
    """build_features, build_snapshots, build_labels and build_training_frame all take a
    database URL with ``table=`` and a config as a dict of its fields, with the same results
    as from the DataFrame and the config object."""
    import sqlalchemy as sa

    from features.pipeline import build_snapshots

    url = f"sqlite:///{tmp_path / 'sales.db'}"
    engine = sa.create_engine(url)
    tiny_log().to_sql("sales", engine, index=False)
    engine.dispose()
    later = "2021-03-01"
    config = FeatureConfig(churn_horizon_days=30, clv_horizon_days=30, n_snapshots=2)
    as_dict = config.model_dump()
    pairs = [
        (build_features(url, CUTOFF, MAPPING, as_dict, table="sales"),
         build_features(tiny_log(), CUTOFF, MAPPING, config)),
        (build_snapshots(url, [CUTOFF, later], MAPPING, as_dict, table="sales"),
         build_snapshots(tiny_log(), [CUTOFF, later], MAPPING, config)),
        (build_labels(url, CUTOFF, 30, MAPPING, table="sales", require_observed=False),
         build_labels(tiny_log(), CUTOFF, 30, MAPPING, require_observed=False)),
        (build_training_frame(url, later, MAPPING, as_dict, table="sales"),
         build_training_frame(tiny_log(), later, MAPPING, config)),
    ]
    for from_db, from_frame in pairs:
        pd.testing.assert_frame_equal(from_db, from_frame)
    with pytest.raises(TypeError, match="config must be a FeatureConfig or a dict"):
        build_features(tiny_log(), CUTOFF, MAPPING, config=[30])


def test_loaded_transactions_refuse_a_second_mapping():
    """A mapping (or table) given with transactions already loaded would be ignored: it is
    an error, not a silent no-op."""
    from features.contract import load_transactions

    tx = load_transactions(tiny_log(), MAPPING)
    pd.testing.assert_frame_equal(build_features(tx, CUTOFF),
                                  build_features(tiny_log(), CUTOFF, MAPPING))
    with pytest.raises(ValueError, match=r"the transactions are already loaded \(from pandas "
                                         r"DataFrame\), .*: leave mapping out"):
        build_features(tx, CUTOFF, {"customer_id": "nope", "timestamp": "ts",
                                    "amount": "amt"})
    with pytest.raises(ValueError, match="leave mapping and table out"):
        build_labels(tx, CUTOFF, 30, MAPPING, table="sales", require_observed=False)


@pytest.mark.parametrize("field", ["churn_horizon_days", "clv_horizon_days",
                                   "trend_window_days", "snapshot_every_days"])
def test_spans_longer_than_a_hundred_years_are_refused(field):
    FeatureConfig(**{field: 36_500})
    with pytest.raises(ValueError, match="less than or equal to 36500"):
        FeatureConfig(**{field: 99_999_999_999})
    with pytest.raises(ValueError, match="windows_days must be day counts from 1 to 36,500"):
        FeatureConfig(windows_days=(30, 40_000))


def test_snapshot_cutoffs_never_cross_the_training_cutoff():
    cfg = FeatureConfig(snapshot_every_days=30, n_snapshots=12)
    first, train = pd.Timestamp("2020-01-01"), pd.Timestamp("2021-01-01")
    cuts = snapshot_cutoffs(first, train, 90, cfg)
    assert cuts == sorted(cuts) and len(cuts) >= 2
    assert max(cuts) + pd.Timedelta(days=90) <= train
    assert min(cuts) > first + pd.Timedelta(days=30)


def _synthetic_log(n_customers: int = 60, seed: int = 3) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n_customers):
        start = pd.Timestamp("2020-01-01") + pd.Timedelta(days=int(rng.integers(0, 200)))
        n = int(rng.integers(1, 12))
        gaps = rng.integers(1, 60, size=n).cumsum()
        for g in gaps:
            rows.append((f"c{c}", start + pd.Timedelta(days=int(g)), float(rng.gamma(2, 20))))
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])


def test_training_frame_reads_nothing_at_or_after_train_cutoff():
    log = _synthetic_log()
    train_cut = pd.Timestamp("2020-12-01")
    cfg = FeatureConfig(churn_horizon_days=60, clv_horizon_days=120, snapshot_every_days=30,
                        n_snapshots=6)
    frame = build_training_frame(log, train_cut, config=cfg)
    # Adding arbitrary events at or after the training cutoff changes nothing.
    extra = pd.DataFrame({
        "customer_id": ["c1", "c2", "new"],
        "timestamp": [train_cut, train_cut + pd.Timedelta(days=3), train_cut],
        "amount": [1e6, 5.0, 7.0],
    })
    frame2 = build_training_frame(pd.concat([log, extra]), train_cut, config=cfg)
    pd.testing.assert_frame_equal(frame, frame2)
    cuts = sorted(frame["cutoff"].unique())
    assert len(cuts) >= 2
    # churn labels wherever a 60-day window fits, value labels only where 120 days fit
    for c in cuts:
        rows = frame[frame["cutoff"] == c]
        c = pd.Timestamp(c)
        assert rows["churned"].notna().all() == (c + pd.Timedelta(days=60) <= train_cut)
        assert rows["future_value"].notna().all() == (c + pd.Timedelta(days=120) <= train_cut)


def test_snapshots_and_training_frames_leave_no_tables_behind(tmp_path):
    """A log loaded once (a view over a Parquet file) and used for several snapshot runs:
    each run's copy of the rows and its shared work are dropped, not left in the caller's
    connection (they held a copy of the whole log per call)."""
    from features.contract import load_transactions
    from features.pipeline import build_snapshots

    path = tmp_path / "log.parquet"
    _synthetic_log().to_parquet(path)
    tx = load_transactions(path, ColumnMapping())
    assert tx.is_view

    def tables() -> list[tuple]:
        return tx.backend.con.execute(
            "SELECT table_name FROM information_schema.tables ORDER BY 1").fetchall()

    before = tables()
    cfg = FeatureConfig(churn_horizon_days=60, clv_horizon_days=60, snapshot_every_days=30,
                        n_snapshots=3)
    first = build_snapshots(tx, ["2020-10-01", "2020-11-01", "2020-12-01"], config=cfg)
    again = build_snapshots(tx, ["2020-10-01", "2020-11-01", "2020-12-01"], config=cfg)
    frame = build_training_frame(tx, "2020-12-01", config=cfg)
    assert tables() == before
    pd.testing.assert_frame_equal(first, again)
    assert len(frame) > 0


def test_training_frame_too_short_history_is_a_clear_error():
    log = _synthetic_log()
    cfg = FeatureConfig(churn_horizon_days=400, clv_horizon_days=400)
    with pytest.raises(DataValidationError, match="no snapshot fits") as err:
        build_training_frame(log, pd.Timestamp("2020-12-01"), config=cfg)
    # the fields the caller set, not the flags of a command line it never used
    assert str(err.value).endswith("shorter horizons (churn_horizon_days / clv_horizon_days)")
    with command_line(), pytest.raises(DataValidationError) as err:
        build_training_frame(log, pd.Timestamp("2020-12-01"), config=cfg)
    assert str(err.value).endswith("horizons (--churn-horizon-days / --clv-horizon-days)")


def test_training_frame_refuses_a_train_cutoff_long_after_the_data():
    """A train_cutoff months after the last event labelled the latest snapshots from
    windows after the data, where nobody buys: every customer churned, silently (`train`
    refuses the same --as-of; build_training_frame is the same frame from Python)."""
    log = _synthetic_log()
    last = log["timestamp"].max()
    cfg = FeatureConfig(churn_horizon_days=60, clv_horizon_days=60)
    with pytest.raises(DataValidationError, match="after the last event") as info:
        build_training_frame(log, last + pd.Timedelta(days=200), config=cfg)
    msg = str(info.value)
    assert "train_cutoff" in msg and "churned" in msg
    assert f"{(last + pd.Timedelta(days=1)).normalize().date()}" in msg  # what to pass
    # up to stale_after_days after the last event it is built, as train allows, but a
    # window the data does not cover has no label (build_labels refuses it): it labelled
    # every customer of the newest snapshots churned where the log simply ended
    from features.pipeline import window_observed

    cut = last + pd.Timedelta(days=cfg.stale_after_days)
    frame = build_training_frame(log, cut, config=cfg)
    assert len(frame) > 0
    for snapshot, rows in frame.groupby("cutoff"):
        covered = window_observed(last, snapshot, 60)
        assert rows["churned"].notna().all() == covered, snapshot
        assert rows["churned"].isna().all() != covered, snapshot
    assert frame["churned"].isna().any() and frame["churned"].notna().any()
    # ... the same snapshots at the day after the last event are all labelled
    on_time = build_training_frame(log, (last + pd.Timedelta(days=1)).normalize(), config=cfg)
    assert on_time["churned"].notna().all()


def test_training_frame_warns_when_a_label_is_null_in_every_snapshot():
    """With the default 365-day clv_horizon_days on a log of a year or so, no snapshot's
    value window ends by train_cutoff: future_value was null in every row, silently."""
    log = _synthetic_log()
    cfg = FeatureConfig(churn_horizon_days=60, clv_horizon_days=365)
    with pytest.warns(UserWarning, match="future_value and future_orders are null") as caught:
        frame = build_training_frame(log, pd.Timestamp("2020-12-01"), config=cfg)
    assert frame["future_value"].isna().all() and frame["churned"].notna().any()
    assert any("clv_horizon_days" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*null in every")
        build_training_frame(log, pd.Timestamp("2020-12-01"),
                             config=FeatureConfig(churn_horizon_days=60, clv_horizon_days=60))


def test_snapshots_refuse_a_single_cutoff_with_a_clear_message():
    """build_snapshots(log, "2020-10-01") iterated the text: "cutoff '2' is not a date"."""
    from features.pipeline import build_snapshots

    for one in ("2020-10-01", pd.Timestamp("2020-10-01")):
        with pytest.raises(ValueError, match="cutoffs must be a list") as info:
            build_snapshots(_synthetic_log(), one)
        assert "build_features" in str(info.value)


def test_features_are_identical_on_every_run():
    """Parallel aggregation must not change a single bit: money is summed exactly
    (DECIMAL) and the gap spread comes from exact integer sums, not a parallel STDDEV."""
    import numpy as np

    rng = np.random.default_rng(7)
    n = 2_000_000  # many DuckDB row groups, so both threads take part
    df = pd.DataFrame({
        "cust": rng.integers(0, 100_000, n),
        "when": pd.Timestamp("2020-01-01")
        + pd.to_timedelta(rng.integers(0, 700 * 86_400, n), unit="s"),
        "value": np.round(rng.lognormal(3.0, 1.0, n) * rng.choice([1, 1, 1, -1], n), 2) / 3,
    })
    df["order"] = (df["cust"].astype(str) + "-" + (df["when"].dt.day_of_year % 5).astype(str))
    mapping = ColumnMapping(
        customer_id="cust", timestamp="when", amount="value", order_id="order"
    )
    runs = [
        build_features(df.sample(frac=1.0, random_state=seed), "2021-10-01", mapping)
        for seed in range(3)
    ]
    assert runs[0]["gap_std"].notna().sum() > 10_000
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0], other, check_exact=True)


def _edge_log(variant: str) -> tuple[pd.DataFrame, ColumnMapping]:
    """The tiny log plus edge cases for the shared snapshot work, in three variants."""
    extra = pd.DataFrame(
        [
            ("E", "2021-02-10 10:00", "s1", "p5", "X", 10.0, 0.0),
            ("E", "2021-02-20 10:00", "s1", "p6", "X", 15.0, 0.0),  # same order, later
            ("E", "2021-03-03 10:00", "s1", "p6", "X", -4.0, 0.0),  # ... and in a window
            ("F", "2021-02-01 09:00", "z1", "p5", "X", 0.0, 0.0),   # zero-amount order
            ("G", "2021-02-01 09:00", "g1", "p8", "X", 5.0, 0.0),
            ("G", "2021-02-15 00:00", "g2", "p9", "Y", 6.0, 0.0),   # AT the first cutoff
        ],
        columns=["cust", "when", "order", "sku", "cat", "value", "disc"],
    )
    extra["when"] = pd.to_datetime(extra["when"])
    log = pd.concat([tiny_log(), extra], ignore_index=True)
    mapping = MAPPING
    if variant == "one line per order":
        log = log[log["order"] != "s1"]
    elif variant == "customer-days":
        mapping = MAPPING.model_copy(update={"order_id": None})
    return log, mapping


@pytest.mark.parametrize("variant", ["orders span timestamps", "one line per order",
                                     "customer-days"])
def test_labels_from_shared_lines_equal_labels_from_rows(variant):
    """The training frame's labels come from the shared order lines: the same labels as
    `build_labels` from the rows, at every cutoff and horizon."""
    from features.contract import load_transactions
    from features.pipeline import _labels, _shared_work

    log, mapping = _edge_log(variant)
    tx = load_transactions(log, mapping)
    cuts = ["2021-02-15", "2021-02-20", "2021-03-01"]
    with _shared_work(tx, len(cuts)) as shared:
        for cut in cuts:
            for horizon in (1, 5, 30):
                expected = build_labels(tx, cut, horizon, require_observed=False)
                got = _labels(tx, cut, horizon, require_observed=False, shared=shared)
                pd.testing.assert_frame_equal(got, expected)


@pytest.mark.parametrize("variant", ["orders span timestamps", "one line per order",
                                     "customer-days"])
def test_snapshots_sharing_work_at_the_edges(variant):
    """`build_snapshots` sums order lines and first-seen products once for all cutoffs
    (`features.engine.SharedWork`); at the edges it must still equal `build_features` at
    each cutoff: an order whose rows straddle a cutoff, an order of zero amounts (a
    purchase: its largest amount is >= 0), a product first bought exactly at a cutoff."""
    from features.pipeline import build_snapshots

    log, mapping = _edge_log(variant)
    cuts = ["2021-02-15", "2021-03-01", "2021-03-06"]
    stacked = build_snapshots(log, cuts, mapping)
    one_by_one = pd.concat([build_features(log, c, mapping) for c in cuts],
                           ignore_index=True)
    pd.testing.assert_frame_equal(stacked, one_by_one)
    at = {c: stacked[stacked["cutoff"] == pd.Timestamp(c)].set_index("customer_id")
          for c in cuts}
    assert at["2021-02-15"].loc["G", "distinct_products"] == 1  # p9 is AT the cutoff
    assert at["2021-03-01"].loc["G", "distinct_products"] == 2
    assert at["2021-02-15"].loc["F", "n_orders"] == 1  # a zero-amount order is a purchase
    if variant == "orders span timestamps":
        assert at["2021-02-15"].loc["E", "monetary_total"] == 10.0  # only the first row
        assert at["2021-03-01"].loc["E", "monetary_total"] == 25.0
        assert at["2021-03-01"].loc["E", "n_orders"] == 1


def test_a_tiny_negative_amount_is_not_a_purchase():
    """A purchase order has a row with amount >= 0 as given (DESIGN.md, and the labels'
    rule), not after rounding to the money type: an order of -1e-9 is a return."""
    log = pd.DataFrame({
        "cust": ["A", "B"], "when": pd.to_datetime(["2021-01-04", "2021-01-05"]),
        "order": ["o1", "o2"], "value": [10.0, -1e-9],
    })
    mapping = ColumnMapping(customer_id="cust", timestamp="when", amount="value",
                            order_id="order")
    feats = build_features(log, CUTOFF, mapping)
    assert feats["customer_id"].tolist() == ["A"]
    labels = build_labels(log, "2021-01-06", 30, mapping, require_observed=False)
    assert labels["customer_id"].tolist() == ["A"]  # the same population


def test_attach_labels_places_or_merges():
    """The training frame's labels are placed directly when both frames list the same
    customers in the same order, merged otherwise: the same frame either way."""
    from features.pipeline import _attach_labels

    feats = pd.DataFrame({"customer_id": pd.array(["a", "b", "c"], dtype="string"),
                          "x": [1.0, 2.0, 3.0]})
    labels = pd.DataFrame({"customer_id": pd.array(["a", "b", "c"], dtype="string"),
                           "churned": pd.array([1, 0, 1], dtype="Int8"),
                           "future_orders": pd.array([0, 2, None], dtype="Int64")})
    expected = feats.merge(labels, on="customer_id", how="left", validate="one_to_one")
    pd.testing.assert_frame_equal(_attach_labels(feats, labels, ["churned", "future_orders"]),
                                  expected)
    shuffled = labels.iloc[[2, 0, 1]].reset_index(drop=True)  # another order: merged
    pd.testing.assert_frame_equal(
        _attach_labels(feats, shuffled, ["churned", "future_orders"]), expected)
    partial = labels.iloc[[0, 2]].reset_index(drop=True)  # a missing customer: merged
    got = _attach_labels(feats, partial, ["churned"])
    assert got["churned"].tolist()[0] == 1 and got["churned"].isna().tolist() == [False, True,
                                                                                    False]


def test_order_money_is_64_bit_on_duckdb():
    """Every money column of an order line is DECIMAL(18, 6) as DuckDB computes it, not only
    as Ibis types it: when an order's value was ``gross - returned``, Ibis dropped its cast,
    DuckDB widened it to DECIMAL(19, 6), a 128-bit integer, and every per-customer sum of it
    ran 128-bit. The value is now one sum, cast like the others; the check stays."""
    from features.contract import load_transactions
    from features.engine import linked_lines, order_lines

    tx = load_transactions(tiny_log(), MAPPING)
    con = tx.backend.con
    for expr in (order_lines(tx.table), linked_lines(order_lines(tx.table))):
        types = dict(zip(expr.columns, con.sql(tx.backend.compile(expr)).types, strict=True))
        for col in ("value", "returned", "disc_gross"):
            assert str(types[col]) == "DECIMAL(18,6)", (col, types[col])


def _guest_log(share: float, customers: int = 400, orders: int = 3000) -> pd.DataFrame:
    """One order per row, spread over ``customers`` ids; the first ``share`` of the orders
    belong to the id 'GUEST'."""
    rng = np.random.default_rng(7)
    df = pd.DataFrame({
        "customer_id": rng.integers(0, customers, orders).astype(str),
        "timestamp": pd.Timestamp("2024-01-01")
        + pd.to_timedelta(rng.integers(0, 270, orders), unit="D"),
        "amount": rng.gamma(2.0, 20.0, orders),
        "order_id": np.arange(orders).astype(str),
    })
    df.loc[: int(share * orders) - 1, "customer_id"] = "GUEST"
    return df


def _shared_id_warnings(df: pd.DataFrame, mapping: dict | None = None) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_features(df, "2024-09-28", mapping=mapping)
    return [str(w.message) for w in caught if "many buyers share" in str(w.message)]


def test_an_id_holding_an_outsized_share_of_the_orders_is_warned_about() -> None:
    """Guest checkouts under one id make one 'customer' with a fifth of the orders: the
    load cannot know, so the feature build says so and how to drop them."""
    df = _guest_log(0.2)
    (message,) = _shared_id_warnings(df)
    guest_orders = int((df["customer_id"] == "GUEST").sum())
    assert message.startswith(
        f"customer 'GUEST' holds 20% of the purchase orders before 2024-09-28 "
        f"({guest_orders:,} of 3,000, among ")
    assert "% of the net spend: an id that many buyers share" in message
    assert ("pass ColumnMapping(missing_ids=['GUEST']) (YAML key missing_ids: ['GUEST'])"
            in message)
    assert _shared_id_warnings(df, {"missing_ids": ["GUEST"]}) == []
    # a large customer is no warning: 4% of the orders of 400 customers
    assert _shared_id_warnings(_guest_log(0.04)) == []
    # in a small population the bar is 20 equal shares: 20% of 60 customers' orders is
    # no warning, 50% is; among 10 customers nothing is (a big client, not a placeholder)
    assert _shared_id_warnings(_guest_log(0.2, customers=59, orders=600)) == []
    assert len(_shared_id_warnings(_guest_log(0.5, customers=59, orders=600))) == 1
    assert _shared_id_warnings(_guest_log(0.8, customers=9, orders=200)) == []


def test_day_counts_in_messages_agree_in_number() -> None:
    """'is 1 days after the last event', 'more than 1 days old', 'of 1 days': a count and
    its noun now agree (`features.naming.counted`)."""
    from features.contract import load_transactions
    from features.naming import counted
    from features.pipeline import check_labels_in_data

    assert [counted(n, "day") for n in (0, 1, 2, 1500)] == [
        "0 days", "1 day", "2 days", "1,500 days"]
    log = pd.DataFrame({"customer_id": ["a", "b"], "amount": [10.0, 5.0],
                        "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"])})
    with pytest.warns(UserWarning) as caught:
        build_features(log, "2024-01-05", config=FeatureConfig(stale_after_days=1))
    assert any("cutoff 2024-01-05 is 3 days after the last event in pandas DataFrame "
               "(2024-01-02 00:00:00); the data may be stale (more than 1 day old)"
               in str(w.message) for w in caught)
    with pytest.raises(DataValidationError, match=r"of 1 day is not covered by the data"):
        build_labels(log, "2024-01-03", horizon_days=1)
    with pytest.raises(DataValidationError, match=r"^train_cutoff 2024-01-03 is 1 day after"):
        check_labels_in_data(load_transactions(log), pd.Timestamp("2024-01-03"),
                             FeatureConfig(stale_after_days=0))


def test_spend_trend_is_null_as_its_description_says():
    """spend_trend is null without a *purchase* order in the last 180 days (a return-only
    order there does not define it) and when both 90-day spends are 0; its description
    said "null when no order in the last 180 days", which neither case fits."""
    df = pd.DataFrame({
        "customer_id": ["a", "a", "b", "b"],
        "timestamp": pd.to_datetime(["2023-01-02", "2023-12-01", "2023-11-01", "2023-11-02"]),
        "amount": [50.0, -20.0, 10.0, -10.0],
        "order_id": ["1", "2", "3", "4"],
    })
    feats = build_features(df, "2024-01-01").set_index("customer_id")
    # a: only a return (-20) in the last 180 days; b: a purchase and a return netting to 0
    assert feats.loc["a", "spend_90d"] == -20.0 and feats.loc["b", "orders_180d"] == 1
    assert feats["spend_trend"].isna().all()
    text = next(f.description for f in feature_definitions() if f.name == "spend_trend")
    assert "null when no purchase order in the last 180 days" in text
    assert "or when both spends are 0" in text
