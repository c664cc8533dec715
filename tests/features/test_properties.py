"""Property tests (Hypothesis) guarding the time semantics of the feature pipeline."""

from __future__ import annotations

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import ColumnMapping, build_features

CUTOFF = pd.Timestamp("2022-07-01")
START = pd.Timestamp("2022-01-01")
MAPPING = ColumnMapping(order_id="order_id", product_id="product_id")

SETTINGS = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def logs(draw, min_rows: int = 1, before_cutoff: bool = True) -> pd.DataFrame:
    """A random log; with before_cutoff every event is before CUTOFF and at least one
    is a purchase, so the population is never empty."""
    n = draw(st.integers(min_rows, 40))
    span = int((CUTOFF - START).total_seconds()) - 1
    secs = draw(st.lists(st.integers(0, span), min_size=n, max_size=n))
    custs = draw(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), min_size=n, max_size=n))
    amounts = draw(st.lists(
        st.one_of(st.floats(-50, 500, allow_nan=False, width=32), st.just(0.0)),
        min_size=n, max_size=n,
    ))
    orders = draw(st.lists(st.integers(0, 15), min_size=n, max_size=n))
    products = draw(st.lists(st.sampled_from(["p1", "p2", "p3"]), min_size=n, max_size=n))
    df = pd.DataFrame({
        "customer_id": custs,
        "timestamp": [START + pd.Timedelta(seconds=s) for s in secs],
        "amount": [float(a) for a in amounts],
        "order_id": [f"o{o}" for o in orders],
        "product_id": products,
    })
    df.loc[0, "amount"] = abs(df.loc[0, "amount"]) + 1.0  # at least one purchase
    return df


@st.composite
def later_events(draw) -> pd.DataFrame:
    """Events at or after the cutoff, by known and new customers, returns included."""
    n = draw(st.integers(1, 15))
    offs = draw(st.lists(st.integers(0, 400 * 86400), min_size=n, max_size=n))
    return pd.DataFrame({
        "customer_id": draw(st.lists(st.sampled_from(["a", "b", "z", "new"]),
                                     min_size=n, max_size=n)),
        "timestamp": [CUTOFF + pd.Timedelta(seconds=o) for o in offs],
        "amount": draw(st.lists(st.floats(-1e4, 1e6, allow_nan=False, width=32),
                                min_size=n, max_size=n)),
        "order_id": draw(st.lists(st.sampled_from(["o1", "o2", "late"]),
                                  min_size=n, max_size=n)),
        "product_id": ["p9"] * n,
    })


@SETTINGS
@given(log=logs(), late=later_events())
def test_events_at_or_after_cutoff_change_nothing(log, late):
    before = build_features(log, CUTOFF, mapping=MAPPING)
    after = build_features(pd.concat([log, late], ignore_index=True), CUTOFF, mapping=MAPPING)
    pd.testing.assert_frame_equal(before, after)


@SETTINGS
@given(log=logs(), seed=st.integers(0, 2**32 - 1))
def test_shuffling_rows_changes_nothing_and_ids_are_unique(log, seed):
    a = build_features(log, CUTOFF, mapping=MAPPING)
    b = build_features(log.sample(frac=1.0, random_state=seed), CUTOFF, mapping=MAPPING)
    pd.testing.assert_frame_equal(a, b)
    assert a["customer_id"].is_unique
    # the population is exactly the customers with a purchase order before the cutoff
    orders = log.groupby(["customer_id", "order_id"])["amount"].max()
    buyers = sorted(orders[orders >= 0].index.get_level_values(0).unique())
    assert list(a["customer_id"]) == buyers


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(log=logs())
def test_same_features_from_pandas_csv_and_parquet(log, tmp_path_factory):
    folder = tmp_path_factory.mktemp("io")
    log = log.assign(timestamp=log["timestamp"].dt.floor("s"))
    csv, parquet = folder / "log.csv", folder / "log.parquet"
    log.to_csv(csv, index=False)
    log.to_parquet(parquet, index=False)
    from_pandas = build_features(log, CUTOFF, mapping=MAPPING)
    pd.testing.assert_frame_equal(from_pandas, build_features(csv, CUTOFF, mapping=MAPPING))
    pd.testing.assert_frame_equal(from_pandas, build_features(parquet, CUTOFF, mapping=MAPPING))


@SETTINGS
@given(log=logs())
def test_no_feature_counts_more_than_the_rows_before_the_cutoff(log):
    feats = build_features(log, CUTOFF, mapping=MAPPING)
    assert (feats["n_orders"] >= 1).all()
    assert (feats["frequency"] <= feats["n_orders"] - 1).all()
    assert (feats["recency"] <= feats["T"]).all()
    assert (feats["days_since_last"] >= 1).all()
    assert (feats["T"] - feats["recency"] == feats["days_since_last"]).all()


SNAPSHOT_CUTS = [START + pd.Timedelta(days=45), START + pd.Timedelta(days=120), CUTOFF]


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(log=logs(), one_line_orders=st.booleans(), with_order_id=st.booleans(),
       extras=st.booleans())
def test_snapshots_sharing_work_equal_one_cutoff_at_a_time(log, one_line_orders,
                                                           with_order_id, extras):
    """`build_snapshots` (and the training frame) compute several cutoffs from pre-summed
    order lines and first-seen pairs (`features.engine.SharedWork`): the same features as
    `build_features` at each cutoff from the rows, whether orders span several timestamps
    or not, with or without order ids, discounts and categories."""
    from features.pipeline import build_snapshots

    log = log.copy()
    log.loc[0, "timestamp"] = START  # a purchase before every cutoff
    if one_line_orders:  # every order one timestamp: the lines are the orders
        log["order_id"] = [f"{c}-{t.value}" for c, t in zip(log.customer_id, log.timestamp,
                                                              strict=True)]
    mapping = {"product_id": "product_id"}
    if with_order_id:
        mapping["order_id"] = "order_id"
    if extras:
        log["discount"] = [float(i % 3) for i in range(len(log))]
        log["category"] = [None if i % 4 == 0 else f"k{i % 2}" for i in range(len(log))]
        mapping.update(discount="discount", category="category")
    stacked = build_snapshots(log, SNAPSHOT_CUTS, mapping)
    one_by_one = pd.concat([build_features(log, c, mapping) for c in SNAPSHOT_CUTS],
                           ignore_index=True)
    pd.testing.assert_frame_equal(stacked, one_by_one)


@SETTINGS
@given(log=logs(), late=later_events(), horizon=st.sampled_from([30, 90]))
def test_events_at_or_after_cutoff_change_no_segment_or_stage(log, late, horizon):
    """Segments and lifecycle stages (and the quintile edges learned on the population at
    the cutoff) see only what the features see."""
    from features.config import FeatureConfig
    from features.demo import segment_customers
    from features.segments import RFMSegmenter

    config = FeatureConfig(churn_horizon_days=horizon)
    cols = ["customer_id", "rfm_score", "segment", "lifecycle_stage"]
    results = []
    for rows in (log, pd.concat([log, late], ignore_index=True)):
        feats = build_features(rows, CUTOFF, mapping=MAPPING, config=config)
        segmenter = RFMSegmenter().fit(feats)
        results.append((segmenter.to_dict(), segment_customers(feats, segmenter, config)[cols]))
    (edges_before, before), (edges_after, after) = results
    assert edges_before == edges_after
    pd.testing.assert_frame_equal(before, after)
