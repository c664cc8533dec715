"""The one place where every per-customer feature is defined: name, type, meaning, expression.

Each `Feature` carries the Ibis expression that computes it from the per-customer
aggregates built by `features.engine` (see `engine.customer_aggregates` for the
intermediate columns). The engine selects exactly these expressions, the docs table in
the README is rendered from them (`feature_table_markdown`), and the models read their
feature list from here, so a feature is never listed twice.

Conventions (DESIGN.md, "Time semantics"):

* Only events with ``timestamp < cutoff`` are seen.
* Days are whole calendar days. A purchase's *day* is the calendar date of its order's
  first row. ``cutoff_day`` is the cutoff rounded **up** to a whole day, so a midnight
  cutoff is its own date and a purchase on the day before it is 1 day old.
  ``T = cutoff_day - first purchase day``. ``lifetimes`` treats its observation end as
  inclusive, so for a midnight cutoff our ``T`` equals lifetimes' ``T`` with
  ``observation_period_end = cutoff - 1 day`` **plus one**; on a log without returns
  ``frequency``, ``recency`` and ``monetary_value`` are identical (tested against lifetimes
  on CDNOW). With returns they differ: lifetimes counts a day of returns only as a purchase
  day and nets every row into its day's value; here only purchase orders count.
* An *order* is one ``order_id`` (or one customer-day when there is no ``order_id``). An
  order is a *purchase* when at least one of its rows has ``amount >= 0``; an order made
  only of negative rows is a return/cancellation: it counts in net spend and the return
  rate, never as a purchase.
* Ratios are guarded on the count that makes them defined (not on a float denominator)
  and are null (NaN) when undefined; LightGBM treats null as missing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import ibis
import ibis.expr.types as ir

from features.config import FeatureConfig

Expr = Callable[[ir.Table], ir.Value]


#: The version of the feature definitions. It is raised whenever what a feature holds changes
#: for the same transactions, so that models and customer-store batches built with other
#: definitions are recognised and refused (`training.models.check_feature_definitions`)
#: instead of being fed, or mixed with, features they were not built from. Models and
#: batches that record no version were built with version 1.
DEFINITIONS_VERSION = 2
#: The key a saved model, a registered model's metadata and a store batch's metadata record
#: the version under (`recorded_definitions` reads it).
DEFINITIONS_KEY = "feature_definitions"

#: What each version changed.
DEFINITIONS_HISTORY = {
    1: "the first definitions",
    2: "distinct_products and distinct_categories count only products bought (lines with "
       "amount >= 0), no longer products only returned",
}


def recorded_definitions(record: Mapping[str, Any] | None) -> int:
    """The version of the feature definitions a saved record (a model's ``model.json``, a
    registered model's or a store batch's metadata) says it was built with; 1 for a record
    written before the version was recorded."""
    return int((record or {}).get(DEFINITIONS_KEY, 1))


@dataclass(frozen=True)
class Feature:
    """One output column of `features.build_features`."""

    name: str
    dtype: str  # pandas dtype of the output column: "Int64" or "float64"
    group: str  # "btyd", "rfm", "behaviour"
    description: str
    expr: Expr
    requires: str | None = None  # optional contract column it needs (else null)


def _ratio(num: ir.Value, den: ir.Value, defined: ir.BooleanValue) -> ir.FloatingValue:
    """num / den where `defined`, else null (guard on a count or an exact sum, never on a
    float)."""
    return ibis.ifelse(defined, num.cast("float64") / den.cast("float64"), ibis.null("float64"))


def _days(a: ir.Value, b: ir.Value) -> ir.IntegerValue:
    return a.delta(b, unit="day").cast("int64")


def _gap_var_num(a: ir.Table) -> ir.FloatingValue:
    """m * sum(gap^2) - sum(gap)^2 for the m = n_days - 1 gaps between purchase days, an
    exact integer (so population std = sqrt(this) / m, identical on every run); the gaps
    sum to the recency."""
    m = (a.n_days - 1).cast("int64")
    s1 = _days(a.last_day, a.first_day)
    return (m * a.gap_sq_sum.cast("int64") - s1 * s1).cast("float64")


def feature_definitions(config: FeatureConfig | None = None) -> list[Feature]:
    """The feature set for a config (window features depend on ``config.windows_days``)."""
    config = config or FeatureConfig()
    tw = config.trend_window_days
    feats: list[Feature] = [
        # --- BTYD summary (the inputs of BG/NBD and Gamma-Gamma) ---
        Feature(
            "frequency", "Int64", "btyd",
            "Repeat purchase days: distinct purchase days minus one.",
            lambda a: (a.n_days - 1).cast("int64"),
        ),
        Feature(
            "recency", "Int64", "btyd",
            "Days from the first to the last purchase day (0 for one purchase day).",
            lambda a: _days(a.last_day, a.first_day),
        ),
        Feature(
            "T", "Int64", "btyd",
            "Tenure: days from the first purchase day to cutoff_day.",
            lambda a: _days(a.cutoff_day, a.first_day),
        ),
        Feature(
            "monetary_value", "float64", "btyd",
            "Mean net value of the repeat purchase days (first day excluded); 0 when "
            "frequency is 0, as lifetimes does. Gamma-Gamma's input.",
            lambda a: ibis.ifelse(
                a.n_days > 1,
                (a.day_value_sum - a.first_day_value) / (a.n_days - 1).cast("float64"),
                0.0,
            ),
        ),
        # --- RFM ---
        Feature(
            "days_since_last", "Int64", "rfm",
            "Days from the last purchase day to cutoff_day (>= 1).",
            lambda a: _days(a.cutoff_day, a.last_day),
        ),
        Feature(
            "n_orders", "Int64", "rfm",
            "Purchase orders before the cutoff.",
            lambda a: a.n_orders.cast("int64"),
        ),
        Feature(
            "monetary_total", "float64", "rfm",
            "Net spend before the cutoff (returns and cancellations subtract).",
            lambda a: a.monetary_total.cast("float64"),
        ),
        Feature(
            "monetary_mean", "float64", "rfm",
            "Net spend per purchase order.",
            lambda a: _ratio(a.monetary_total, a.n_orders, a.n_orders > 0),
        ),
        Feature(
            "first_order_value", "float64", "rfm",
            "Net value of the purchase orders of the first purchase day (a return booked "
            "as its own order, e.g. a same-day cancellation, is not netted; without "
            "order_id an order is a customer-day, so it is).",
            lambda a: a.first_day_value.cast("float64"),
        ),
        Feature(
            "max_order_value", "float64", "rfm",
            "Largest net value of a single purchase order.",
            lambda a: a.max_order_value.cast("float64"),
        ),
    ]
    # --- behaviour: recent activity ---
    for w in config.windows_days:
        feats.append(Feature(
            f"orders_{w}d", "Int64", "behaviour",
            f"Purchase orders placed in the last {w} days (order time >= cutoff - {w} days).",
            (lambda a, w=w: a[f"orders_{w}d"].cast("int64")),
        ))
        feats.append(Feature(
            f"spend_{w}d", "float64", "behaviour",
            f"Net value of the orders placed in the last {w} days.",
            (lambda a, w=w: a[f"spend_{w}d"].cast("float64")),
        ))
    feats += [
        Feature(
            "spend_trend", "float64", "behaviour",
            f"(spend in the last {tw} days - spend in the {tw} before) / (|last| + |before|), "
            f"in [-1, 1]; null when no purchase order in the last {2 * tw} days (a "
            f"return-only order does not count), or when both spends are 0.",
            lambda a: _ratio(
                a.trend_recent - a.trend_before,
                a.trend_recent.abs() + a.trend_before.abs(),
                (a.trend_orders > 0)
                & ((a.trend_recent.abs() + a.trend_before.abs()) != 0),
            ),
        ),
        Feature(
            "gap_mean", "float64", "behaviour",
            "Mean days between consecutive purchase days (recency / frequency); "
            "null for one purchase day.",
            lambda a: _ratio(_days(a.last_day, a.first_day), a.n_days - 1, a.n_days > 1),
        ),
        Feature(
            "gap_std", "float64", "behaviour",
            "Population standard deviation of the gaps between purchase days; "
            "null for one purchase day.",
            lambda a: _ratio(_gap_var_num(a).sqrt(), a.n_days - 1, a.n_days > 1),
        ),
        Feature(
            "gap_last", "Int64", "behaviour",
            "Days between the last two purchase days; null for one purchase day.",
            lambda a: ibis.ifelse(a.n_days > 1, a.gap_last, ibis.null("int64")).cast("int64"),
        ),
        Feature(
            "overdue_ratio", "float64", "behaviour",
            "days_since_last / gap_mean: above 1 the customer is later than usual; "
            "null for one purchase day.",
            lambda a: _ratio(
                _days(a.cutoff_day, a.last_day) * (a.n_days - 1),
                _days(a.last_day, a.first_day),
                a.n_days > 1,
            ),
        ),
        Feature(
            "return_rate", "float64", "behaviour",
            "Returned value / gross purchased value (rows with amount < 0 over rows > 0); "
            "null when there is no positive row.",
            lambda a: _ratio(a.returned, a.gross, a.gross > 0),
        ),
        Feature(
            "n_returns", "Int64", "behaviour",
            "Rows with a negative amount (returned or cancelled lines).",
            lambda a: a.neg_rows.cast("int64"),
        ),
        Feature(
            "distinct_products", "Int64", "behaviour",
            "Distinct product_id bought (null when the data has no product_id).",
            lambda a: a.distinct_products.cast("int64"),
            requires="product_id",
        ),
        Feature(
            "distinct_categories", "Int64", "behaviour",
            "Distinct category bought (null when the data has no category).",
            lambda a: a.distinct_categories.cast("int64"),
            requires="category",
        ),
        Feature(
            "active_months", "Int64", "behaviour",
            "Distinct calendar months with a purchase.",
            lambda a: a.active_months.cast("int64"),
        ),
        Feature(
            "dow_regularity", "float64", "behaviour",
            "Share of purchase days that fall on the customer's most common weekday "
            "(1 = always the same weekday; 1/7 = spread evenly).",
            lambda a: _ratio(a.dow_max, a.n_days, a.n_days > 0),
        ),
        Feature(
            "discount_share", "float64", "behaviour",
            "Share of gross spend on rows with a discount > 0 (null when the data has no "
            "discount or no positive row).",
            lambda a: _ratio(a.disc_gross, a.gross, a.gross > 0),
            requires="discount",
        ),
    ]
    return feats


def source_columns(columns: Iterable[str]) -> list[str]:
    """Of the contract columns a log was read into, the optional ones the features are
    computed from: ``order_id`` (what an order is) and each column a feature ``requires``.
    Features of the same customers differ with them and without them, so a model records
    the ones it was trained with (`training.models`) and scoring checks them."""
    used = {"order_id", *(f.requires for f in feature_definitions() if f.requires)}
    return sorted(used & set(columns))


def feature_names(config: FeatureConfig | None = None) -> list[str]:
    """Names of the model features, in output order."""
    return [f.name for f in feature_definitions(config)]


def feature_table_markdown(config: FeatureConfig | None = None) -> str:
    """A Markdown table of every feature, for the README and `lifecast features list`."""
    rows = ["| feature | type | group | meaning |", "| --- | --- | --- | --- |"]
    for f in feature_definitions(config):
        rows.append(f"| `{f.name}` | {f.dtype} | {f.group} | {f.description} |")
    return "\n".join(rows)
