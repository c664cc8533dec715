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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

__all__ = ["DEFAULT_WINDOWS", "REFERENCE_COLUMNS", "features_pandas", "reference_columns"]

DEFAULT_WINDOWS: tuple[int, ...] = (30, 90, 180, 365)


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
