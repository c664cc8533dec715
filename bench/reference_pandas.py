"""Plain-pandas reference for the core point-in-time features (the benchmark's speed baseline).

Written the way a competent analyst would write it: vectorised ``groupby``/``agg`` over the
whole frame, no per-customer ``apply``. Its values are meant to agree with the product's
`features.build_features` on the columns they share.

Definitions (time semantics of DESIGN.md; the cutoff is exclusive, only rows with
``timestamp < cutoff`` are seen):

- an order is one ``order_id`` (one customer-day when the data has no ``order_id`` column);
  an order is a *purchase* if at least one of its rows has ``amount >= 0``;
- the purchase day of an order is the calendar date of its earliest row;
- ``cutoff_day`` is the cutoff rounded up to a whole day (a midnight cutoff is its own date).

Per customer with at least one purchase before the cutoff:

- ``frequency`` = distinct purchase days - 1; ``recency`` = last - first purchase day (days);
  ``T`` = cutoff_day - first purchase day; ``days_since_last`` = cutoff_day - last purchase day;
- ``n_orders`` = purchase orders; ``monetary_total`` = net sum of all amounts (returns
  included); ``monetary_mean`` = monetary_total / n_orders;
- ``orders_{N}d`` = purchase orders whose first row is at or after ``cutoff - N days``;
  ``spend_{N}d`` = net amount of the rows at or after ``cutoff - N days``.

`features_pandas_full` computes the FULL feature set, every feature column of
`features.build_features` for a `features.config.FeatureConfig` (the default one when
``config`` is None), with the product's names, in the registry's order, so that the speed
ratio is like for like. Same definitions as above, plus (per customer; an order's time is
its earliest row, an order's value the net sum of its rows):

- ``monetary_value`` = (net value of the purchase orders - value of the first purchase
  day) / frequency, 0 when frequency is 0; ``first_order_value`` = net value of the
  purchase orders of the first purchase day; ``max_order_value`` = largest purchase order;
- ``orders_{N}d`` / ``spend_{N}d`` over orders whose time is at or after ``cutoff - N days``
  (the spend counts return orders too; an order is in or out as a whole);
- ``spend_trend`` = (recent - before) / (|recent| + |before|) with recent the net value of
  the orders of the last ``trend_window_days`` days and before that of the window just
  before it; null unless a purchase order falls in the two windows and the denominator
  is not 0;
- over the gaps between consecutive purchase days (null for one purchase day):
  ``gap_mean`` = recency / frequency, ``gap_std`` (population), ``gap_last`` (the last gap),
  ``overdue_ratio`` = days_since_last / gap_mean;
- ``return_rate`` = sum of -amount over rows < 0 / sum of amount over rows > 0 (null
  without a positive row); ``n_returns`` = rows < 0;
- ``distinct_products`` / ``distinct_categories`` = distinct non-null ``product_id`` /
  ``category`` over the customer's rows with ``amount >= 0`` (bought, not only returned;
  null when the column is absent);
- ``active_months`` = distinct calendar months of the purchase days; ``dow_regularity`` =
  purchase days on the most common weekday / purchase days;
- ``discount_share`` = amount of the rows > 0 with ``discount > 0`` / amount of the rows
  > 0 (null when there is no ``discount`` column or no positive row).

Integer features are int64 (nullable ``Int64`` for ``gap_last`` and the null id counts),
the others float64 with NaN for null.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "DEFAULT_TREND_WINDOW",
    "DEFAULT_WINDOWS",
    "REFERENCE_COLUMNS",
    "features_pandas",
    "features_pandas_full",
    "full_reference_columns",
    "reference_columns",
]

DEFAULT_WINDOWS: tuple[int, ...] = (30, 90, 180, 365)
DEFAULT_TREND_WINDOW: int = 90


def reference_columns(windows: Sequence[int] = DEFAULT_WINDOWS) -> list[str]:
    """The output columns of `features_pandas`, in order."""
    cols = [
        "customer_id",
        "frequency",
        "recency",
        "T",
        "days_since_last",
        "n_orders",
        "monetary_total",
        "monetary_mean",
    ]
    cols += [f"orders_{w}d" for w in windows]
    cols += [f"spend_{w}d" for w in windows]
    return cols


REFERENCE_COLUMNS: tuple[str, ...] = tuple(reference_columns())


def features_pandas(
    df: pd.DataFrame,
    cutoff: str | pd.Timestamp,
    windows: Sequence[int] = DEFAULT_WINDOWS,
) -> pd.DataFrame:
    """Core RFM and window features at ``cutoff``, one row per customer, sorted by id.

    ``df`` is in the data contract (``customer_id``, ``timestamp``, ``amount`` and optionally
    ``order_id``); other columns are ignored. Day counts are int64, money is float64.
    """
    cutoff = pd.Timestamp(cutoff)
    cutoff_day = cutoff.ceil("D")
    windows = sorted(set(int(w) for w in windows))

    seen = df.loc[df["timestamp"] < cutoff]
    ts = seen["timestamp"]
    amount = seen["amount"]
    order = seen["order_id"] if "order_id" in seen.columns else ts.dt.normalize()
    rows = pd.DataFrame(
        {
            "customer_id": seen["customer_id"],
            "order": order,
            "timestamp": ts,
            "amount": amount,
        }
    )
    # per-row window spend: amount where the row falls inside the window, else 0
    for w in windows:
        rows[f"spend_{w}d"] = amount.where(ts >= cutoff - pd.Timedelta(days=w), 0.0)

    # orders: earliest row and whether any row is a purchase (max amount >= 0)
    orders = rows.groupby(["customer_id", "order"], sort=False).agg(
        first_ts=("timestamp", "min"), max_amount=("amount", "max")
    )
    purchases = orders.loc[orders["max_amount"] >= 0, ["first_ts"]].reset_index("order", drop=True)
    purchases["day"] = purchases["first_ts"].dt.normalize()
    for w in windows:
        purchases[f"orders_{w}d"] = purchases["first_ts"] >= cutoff - pd.Timedelta(days=w)

    per_customer = purchases.groupby(level="customer_id", sort=True).agg(
        first_day=("day", "min"),
        last_day=("day", "max"),
        n_days=("day", "nunique"),
        n_orders=("day", "size"),
        **{f"orders_{w}d": (f"orders_{w}d", "sum") for w in windows},
    )
    money = rows.groupby("customer_id", sort=False).agg(
        monetary_total=("amount", "sum"),
        **{f"spend_{w}d": (f"spend_{w}d", "sum") for w in windows},
    )
    out = per_customer.join(money, how="left")

    one_day = np.timedelta64(1, "D")
    out["frequency"] = out["n_days"] - 1
    out["recency"] = (out["last_day"] - out["first_day"]) // one_day
    out["T"] = (cutoff_day - out["first_day"]) // one_day
    out["days_since_last"] = (cutoff_day - out["last_day"]) // one_day
    out["monetary_mean"] = out["monetary_total"] / out["n_orders"]

    out = out.reset_index()
    cols = reference_columns(windows)
    ints = ["frequency", "recency", "T", "days_since_last", "n_orders"]
    ints += [f"orders_{w}d" for w in windows]
    out[ints] = out[ints].astype("int64")
    return out[cols]


# --------------------------------------------------------------------------------------
# the full feature set
# --------------------------------------------------------------------------------------


def _config_windows(config: Any) -> tuple[list[int], int]:
    """(windows, trend window) of a `features.config.FeatureConfig`-like object, or the
    defaults (the reference does not import the product)."""
    if config is None:
        return list(DEFAULT_WINDOWS), DEFAULT_TREND_WINDOW
    return sorted(set(int(w) for w in config.windows_days)), int(config.trend_window_days)


def full_reference_columns(config: Any = None) -> list[str]:
    """The output columns of `features_pandas_full`: ``customer_id`` then the product's
    feature names in the registry's order."""
    windows, _ = _config_windows(config)
    cols = [
        "customer_id", "frequency", "recency", "T", "monetary_value", "days_since_last",
        "n_orders", "monetary_total", "monetary_mean", "first_order_value", "max_order_value",
    ]
    for w in windows:
        cols += [f"orders_{w}d", f"spend_{w}d"]
    cols += [
        "spend_trend", "gap_mean", "gap_std", "gap_last", "overdue_ratio", "return_rate",
        "n_returns", "distinct_products", "distinct_categories", "active_months",
        "dow_regularity", "discount_share",
    ]
    return cols


def _distinct(seen: pd.DataFrame, col: str, index: pd.Index) -> pd.Series:
    """Distinct non-null ``col`` bought (rows with amount >= 0) per customer of ``index``
    (0 for none; null without it)."""
    if col not in seen.columns:
        return pd.Series(pd.NA, index=index, dtype="Int64")
    bought = seen.loc[seen["amount"] >= 0].dropna(subset=[col])
    counts = bought.groupby("customer_id")[col].nunique()
    return counts.reindex(index, fill_value=0).astype("int64")


def features_pandas_full(
    df: pd.DataFrame, cutoff: str | pd.Timestamp, config: Any = None
) -> pd.DataFrame:
    """Every feature of `features.build_features` at ``cutoff``, one row per customer with a
    purchase before it, sorted by id (see the module docstring for the definitions).

    ``df`` is in the data contract: ``customer_id``, ``timestamp``, ``amount`` and optionally
    ``order_id``, ``product_id``, ``category``, ``discount``; other columns are ignored.
    ``config`` is a `features.config.FeatureConfig` (its ``windows_days`` and
    ``trend_window_days``), the default one when None. No ``cutoff`` column is returned.
    """
    cutoff = pd.Timestamp(cutoff)
    cutoff_day = cutoff.ceil("D")
    windows, tw = _config_windows(config)
    one_day = np.timedelta64(1, "D")

    seen = df.loc[df["timestamp"] < cutoff]
    ts = seen["timestamp"]
    amount = seen["amount"]
    rows = pd.DataFrame(
        {
            "customer_id": seen["customer_id"],
            "order": seen["order_id"] if "order_id" in seen.columns else ts.dt.normalize(),
            "timestamp": ts,
            "amount": amount,
            "gross": amount.where(amount > 0, 0.0),
            "returned": (-amount).where(amount < 0, 0.0),
            "pos_rows": amount > 0,
            "neg_rows": amount < 0,
        }
    )
    disc = {}
    if "discount" in seen.columns:
        rows["disc_gross"] = amount.where((seen["discount"] > 0) & (amount > 0), 0.0)
        disc = {"disc_gross": ("disc_gross", "sum")}

    # 1. orders: time = earliest row, value = net sum; a purchase when some row is >= 0
    orders = (
        rows.groupby(["customer_id", "order"], sort=False, dropna=False)
        .agg(
            ts=("timestamp", "min"),
            value=("amount", "sum"),
            max_amount=("amount", "max"),
            gross=("gross", "sum"),
            returned=("returned", "sum"),
            pos_rows=("pos_rows", "sum"),
            neg_rows=("neg_rows", "sum"),
            **disc,
        )
        .reset_index("order", drop=True)
    )
    orders["is_purchase"] = orders["max_amount"] >= 0
    # window membership of each order (by its time), as values (spend) and flags (orders)
    since = {d: orders["ts"] >= cutoff - pd.Timedelta(days=d) for d in {*windows, tw, 2 * tw}}
    for w in windows:
        orders[f"spend_{w}d"] = orders["value"].where(since[w], 0.0)
        orders[f"orders_{w}d"] = since[w]
    orders["trend_recent"] = orders["value"].where(since[tw], 0.0)
    orders["trend_before"] = orders["value"].where(since[2 * tw] & ~since[tw], 0.0)
    orders["trend_orders"] = since[2 * tw]

    # 2. per customer over every order (returns included)
    money = orders.groupby(level="customer_id", sort=False).agg(
        monetary_total=("value", "sum"),
        gross=("gross", "sum"),
        returned=("returned", "sum"),
        pos_rows=("pos_rows", "sum"),
        n_returns=("neg_rows", "sum"),
        trend_recent=("trend_recent", "sum"),
        trend_before=("trend_before", "sum"),
        **{f"spend_{w}d": (f"spend_{w}d", "sum") for w in windows},
        **disc,
    )

    # 3. per customer over the purchase orders (the population: at least one)
    purchases = orders.loc[orders["is_purchase"]]
    per_customer = purchases.groupby(level="customer_id", sort=True).agg(
        n_orders=("value", "size"),
        max_order_value=("value", "max"),
        day_value_sum=("value", "sum"),
        trend_orders=("trend_orders", "sum"),
        **{f"orders_{w}d": (f"orders_{w}d", "sum") for w in windows},
    )

    # 4. purchase days: one row per (customer, day), sorted, with the gap to the previous one
    days = (
        purchases.assign(day=purchases["ts"].dt.normalize())
        .groupby(["customer_id", "day"], sort=True)["value"]
        .sum()
        .reset_index()
    )
    same = days["customer_id"].eq(days["customer_id"].shift())
    days["gap"] = ((days["day"] - days["day"].shift()) // one_day).where(same)
    days["gap_sq"] = days["gap"] ** 2
    days["month"] = days["day"].dt.to_period("M")
    by_day = days.groupby("customer_id", sort=True).agg(
        first_day=("day", "first"),
        last_day=("day", "last"),
        first_day_value=("value", "first"),
        n_days=("day", "size"),
        gap_sq_sum=("gap_sq", "sum"),
        gap_last=("gap", "last"),
        active_months=("month", "nunique"),
    )
    by_day["dow_max"] = (
        days.groupby(["customer_id", days["day"].dt.day_of_week]).size().groupby(level=0).max()
    )

    out = per_customer.join(by_day).join(money)
    n_days = out["n_days"]
    m = n_days - 1  # the number of gaps
    several = n_days > 1
    recency = (out["last_day"] - out["first_day"]) // one_day
    since_last = (cutoff_day - out["last_day"]) // one_day
    out["frequency"] = m
    out["recency"] = recency
    out["T"] = (cutoff_day - out["first_day"]) // one_day
    out["days_since_last"] = since_last
    out["monetary_value"] = ((out["day_value_sum"] - out["first_day_value"]) / m).where(
        several, 0.0
    )
    out["monetary_mean"] = out["monetary_total"] / out["n_orders"]
    out["first_order_value"] = out["first_day_value"]
    # the product sums money exactly (DECIMAL(18, 6)): a purchase fully returned nets to 0
    # there, to +-1e-15 in floats; rounded to its 6 decimals, the "spread != 0" test agrees
    recent, before = out["trend_recent"].round(6), out["trend_before"].round(6)
    spread = recent.abs() + before.abs()
    out["spend_trend"] = ((recent - before) / spread).where(
        (out["trend_orders"] > 0) & (spread != 0)
    )
    out["gap_mean"] = (recency / m).where(several)
    # population std from the exact integer m * sum(gap^2) - sum(gap)^2, as the product does
    var_num = m * out["gap_sq_sum"].round().astype("int64") - recency * recency
    out["gap_std"] = (np.sqrt(var_num.astype("float64")) / m).where(several)
    out["gap_last"] = out["gap_last"].where(several).astype("Int64")
    out["overdue_ratio"] = ((since_last * m) / recency).where(several)
    out["return_rate"] = (out["returned"] / out["gross"]).where(out["pos_rows"] > 0)
    out["dow_regularity"] = out["dow_max"] / n_days
    if disc:
        out["discount_share"] = (out["disc_gross"] / out["gross"]).where(out["pos_rows"] > 0)
    else:
        out["discount_share"] = np.nan
    out["distinct_products"] = _distinct(seen, "product_id", out.index)
    out["distinct_categories"] = _distinct(seen, "category", out.index)

    ints = ["frequency", "recency", "T", "days_since_last", "n_orders", "n_returns"]
    ints += ["active_months", *(f"orders_{w}d" for w in windows)]
    out[ints] = out[ints].astype("int64")
    return out.reset_index()[full_reference_columns(config)]
