"""Point-in-time feature computation, written once as Ibis expressions.

The core, `customer_features`, takes a contract transactions table that already carries a
``cutoff`` and ``cutoff_day`` column on every row and holds only rows with
``timestamp < cutoff``; it groups by ``(cutoff, customer_id)``. One cutoff or many share it:

* one cutoff: `attach_cutoff` adds the literal columns and filters (what
  `features.build_features` runs, on DuckDB in-process);
* many cutoffs on one machine: loop over cutoffs (measured faster and leaner on DuckDB
  than a range join; see `features.pipeline.build_snapshots`);
* many cutoffs at scale: `attach_cutoffs` range-joins a cutoff table onto the
  transactions, the shape Spark wants, with the same core.

Transactions in (rows), one row per (cutoff, customer) out.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ibis
import ibis.expr.datatypes as idt
import ibis.expr.types as ir
import pandas as pd

from features.config import FeatureConfig
from features.registry import feature_definitions

#: The type money is aggregated in (exact, hence order-independent, sums).
MONEY = idt.Decimal(18, 6)
#: The smallest amount the money type cannot hold: the loader refuses rows this large, and
#: an order summing to it is refused when features run (`features.pipeline._money_fits`).
MONEY_LIMIT = 10**12


def cutoff_day(cutoff: pd.Timestamp) -> dt.date:
    """The cutoff rounded up to a whole day (a midnight cutoff is its own date)."""
    day = cutoff.normalize()
    return (day if day == cutoff else day + pd.Timedelta(days=1)).date()


def cutoff_frame(cutoffs: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """The (cutoff, cutoff_day) table for a list of cutoffs."""
    cuts = sorted({pd.Timestamp(c) for c in cutoffs})
    return pd.DataFrame(
        {
            "cutoff": pd.Series(cuts, dtype="datetime64[us]"),
            "cutoff_day": pd.Series([pd.Timestamp(cutoff_day(c)) for c in cuts],
                                    dtype="datetime64[s]"),
        }
    )


def attach_cutoff(tx: ir.Table, cutoff: pd.Timestamp) -> ir.Table:
    """Rows before one cutoff, with the literal cutoff columns attached."""
    cut = ibis.literal(pd.Timestamp(cutoff).to_pydatetime(), type="timestamp")
    day = ibis.literal(cutoff_day(pd.Timestamp(cutoff)), type="date")
    return tx.filter(tx.timestamp < cut).mutate(cutoff=cut, cutoff_day=day)


def attach_cutoffs(tx: ir.Table, cutoffs: Sequence[pd.Timestamp]) -> ir.Table:
    """Every row paired with every later cutoff (a range join; the shape for Spark)."""
    cuts = ibis.memtable(cutoff_frame(cutoffs)).mutate(
        cutoff_day=lambda t: t.cutoff_day.cast("date")
    )
    return tx.join(cuts, tx.timestamp < cuts.cutoff)


@dataclass(frozen=True)
class SharedWork:
    """What features at several cutoffs over the same rows can share (`shared_work`).

    * ``lines``: the rows summed per (customer, order, timestamp) (`order_lines`). Rows of
      one line fall on the same side of every cutoff, so the orders before a cutoff are the
      lines before it summed per order, or the lines themselves when ``lines_are_orders``
      (every order has one timestamp, as in most logs): the per-cutoff pass over the raw
      rows becomes a filter over fewer, pre-summed rows. Lines that are the orders also
      carry their purchase-day links (`linked_lines`), so no cutoff runs the window.
    * ``first_seen``: per optional column (``product_id``, ``category``), each distinct
      (customer, value) pair with the time it was first seen (`first_seen`): the distinct
      values before a cutoff are the pairs first seen before it, counted per customer,
      instead of a fresh two-key distinct over the rows at every cutoff.

    Sums stay exact (DECIMAL), so the features equal those computed from the rows (tested).
    """

    lines: ir.Table
    lines_are_orders: bool
    first_seen: Mapping[str, ir.Table]


#: the order key of a row without an order_id, among rows with integer ones, is this plus
#: its day's number since 1970: no real id is near -2^62, and the key only has to differ
#: from the ids of one customer's orders
_NO_ID_DAY_BASE = -(2**62)
#: ... among text ids, this character and the day: a control character no id has
_NO_ID_DAY_MARK = "\x1f"


def _order_key(tx: ir.Table) -> ir.Value:
    """An order is one order_id, else one customer-day (grouped on the date itself).

    Rows whose order_id is missing among rows that have one are customer-day orders too,
    DESIGN.md's rule for rows without an order id (and the service's, `serving.app`'s
    `_contract_frame`). Before, the missing ids were one group: all of a customer's rows
    without an id, on any day, made one order dated on the first of them."""
    day = tx.timestamp.date()
    if "order_id" not in tx.columns:
        return day
    order_id = tx.order_id
    if order_id.type().is_integer():
        fallback = day.delta(ibis.date(1970, 1, 1), unit="day") + _NO_ID_DAY_BASE
    else:
        fallback = ibis.literal(_NO_ID_DAY_MARK) + day.cast("string")
    return ibis.coalesce(order_id, fallback.cast(order_id.type()))


def _row_sums(tx: ir.Table) -> tuple[ir.Table, dict[str, ir.Value]]:
    """The contract rows with ``_order`` and the partial sums an order or a line is made
    of: ``max_amount`` (of the raw amounts: a purchase has a row whose amount is >= 0 as
    given, DESIGN.md and the labels' rule, not after rounding to the money type, which made
    -1e-45 a purchase), the net ``value``, ``returned`` (the negative rows' amounts, as a
    positive sum), ``neg_rows`` and ``disc_gross`` when the data has discounts.

    The gross (positive rows) is not among them: it is ``value + returned`` exactly, and
    only its per-customer total is read (`customer_aggregates`), so it is added there. One
    sum fewer per order and per customer, and two columns fewer carried through the
    purchase-day window: with the positive-row count it replaced (``gross > 0`` exactly
    when a row is positive), the feature query at 10M rows took 2.23-2.30 s instead of
    2.38-2.41 s (alternated in one process), with identical features.

    Money is summed as DECIMAL(18, 6): exact, so the result does not depend on the order in
    which parallel threads add up partial sums (DOUBLE sums differed in the last bits
    between identical runs, which changed models downstream). Each sum is cast back to
    DECIMAL(18, 6) (an order worth 10^12 or more fails loudly): summing the engine's
    DECIMAL(38, 6) (128-bit) sums again per customer cost ~2x as much."""
    m = tx.mutate(_order=_order_key(tx), _amount=tx.amount.cast(MONEY))
    amount = m._amount
    zero = ibis.literal(0, type=MONEY)
    sums: dict[str, ir.Value] = {
        "max_amount": m.amount.max(),
        "value": amount.sum().cast(MONEY),
        "returned": ibis.ifelse(amount < 0, -amount, zero).sum().cast(MONEY),
        "neg_rows": m.count(where=amount < 0),
    }
    if "discount" in tx.columns:
        sums["disc_gross"] = ibis.ifelse((m.discount > 0) & (amount > 0), amount,
                                         zero).sum().cast(MONEY)
    return m, sums


def order_lines(tx: ir.Table) -> ir.Table:
    """Contract rows summed per (customer_id, order, timestamp): rows in, one row per line
    out, with ``ts``, the partial sums of `_row_sums` and ``value``."""
    m, sums = _row_sums(tx)
    return m.group_by(["customer_id", "_order", "timestamp"]).aggregate(**sums).rename(
        ts="timestamp")


def linked_lines(lines: ir.Table) -> ir.Table:
    """`order_lines` that are the orders (one line per order) in, the same rows out with
    ``day``, ``is_purchase`` and their `purchase_day_links` (computed once for every
    cutoff: an order's previous and first purchase days do not depend on the cutoff)."""
    lines = lines.mutate(day=lines.ts.date(), is_purchase=lines.max_amount >= 0)
    return purchase_day_links(lines, ["customer_id"])


def first_seen(tx: ir.Table, col: str) -> ir.Table:
    """Each distinct (customer_id, ``col``) pair bought (rows where ``col`` is not null and
    the amount is not negative: a purchase line, DESIGN.md), with the earliest timestamp it
    was bought at (``first_ts``)."""
    return (
        tx.filter(tx[col].notnull() & (tx.amount >= 0))
        .group_by(["customer_id", col])
        .aggregate(first_ts=tx.timestamp.min())
        .select("customer_id", "first_ts")
    )


def customer_aggregates(
    tx: ir.Table, config: FeatureConfig, cutoff: pd.Timestamp | None = None,
    shared: SharedWork | None = None,
) -> ir.Table:
    """Intermediate per-(cutoff, customer) aggregates that the registry's features read.

    Keyed mode (``cutoff`` None): ``tx`` carries ``cutoff``/``cutoff_day`` on every row and
    holds only rows before their cutoff; every grouping is by (cutoff, cutoff_day, customer).
    Literal mode (one ``cutoff``): ``tx`` is the plain contract table; rows are filtered here
    and groupings are by customer alone, which spares hashing two constant columns in every
    aggregation (the hot path of `features.build_features`). Both return one row per
    (cutoff, customer with at least one purchase order) with the same columns. ``shared``
    (literal mode only: `SharedWork` built from ``tx``) starts from its pre-summed lines
    and first-seen pairs instead of the rows; the result is the same.
    """
    if shared is not None and cutoff is None:
        raise ValueError("shared work is for one cutoff at a time (literal mode)")
    cols = set(tx.columns)
    keyed = cutoff is None
    if keyed:
        keys = ["cutoff", "cutoff_day", "customer_id"]

        def cut(t: ir.Table) -> ir.Value:
            return t.cutoff
    else:
        keys = ["customer_id"]
        cut_lit = ibis.literal(pd.Timestamp(cutoff).to_pydatetime(), type="timestamp")
        tx = tx.filter(tx.timestamp < cut_lit)

        def cut(t: ir.Table) -> ir.Value:
            return cut_lit

    zero = ibis.literal(0, type=MONEY)
    has_discount = "discount" in cols

    # 1. orders: one row per (cutoff, customer, order)
    if shared is None:
        m, sums = _row_sums(tx)
        orders = m.group_by([*keys, "_order"]).aggregate(ts=m.timestamp.min(), **sums)
        orders = orders.mutate(is_purchase=orders.max_amount >= 0)
    else:
        orders = _orders_from_lines(shared, cut_lit, has_discount)
    if shared is None or not shared.lines_are_orders:
        orders = orders.mutate(day=orders.ts.date())

    # 2. purchase days and the other per-order links to earlier orders (one sorted window
    # per customer and kind, `purchase_day_links`). None depends on the cutoff: with shared
    # work whose lines are the orders, they were computed once for every cutoff.
    if shared is None or not shared.lines_are_orders:
        orders = purchase_day_links(orders, [k for k in keys if k != "cutoff_day"])
    is_p = orders.is_purchase

    def since(days: int) -> ir.BooleanValue:
        return orders.ts >= cut(orders) - ibis.interval(days=days)

    def count(where: ir.BooleanValue) -> ir.IntegerValue:
        # COUNT(*) FILTER (WHERE ...): on DuckDB ~40% cheaper than Ibis's boolean
        # .sum(), a SUM(CAST(... AS INT))
        return orders.count(where=where)

    tw = config.trend_window_days
    aggs: dict[str, ir.Value] = {
        "n_orders": count(is_p),
        "monetary_total": orders.value.sum(),
        "max_order_value": ibis.ifelse(is_p, orders.value, ibis.null(MONEY)).max(),
        "returned": orders.returned.sum(),
        "neg_rows": orders.neg_rows.sum(),
        "trend_recent": ibis.ifelse(since(tw), orders.value, zero).sum(),
        "trend_before": ibis.ifelse(since(2 * tw) & ~since(tw), orders.value, zero).sum(),
        "trend_orders": count(since(2 * tw) & is_p),
        # purchase days
        "n_days": count(orders.new_day),
        "first_day": ibis.ifelse(is_p, orders.first_day, ibis.null("date")).min(),
        "last_day": ibis.ifelse(is_p, orders.day, ibis.null("date")).max(),
        "first_day_value": ibis.ifelse(orders.on_first_day, orders.value, zero).sum(),
        "day_value_sum": ibis.ifelse(is_p, orders.value, zero).sum(),
        # the gaps' sum of squares, an exact integer: gap_std is computed from it and
        # the gaps' sum (= recency) in the registry, the same on every run (a parallel
        # STDDEV_POP differs in the last bits with the order threads merge partial states)
        "gap_sq_sum": orders.gap_sq.sum(),
        # the last purchase day's gap: purchase days and their previous purchase days
        # rise together, so it is the latest day minus the latest previous day (two plain
        # maxima instead of a last-value window)
        "gap_last": ibis.ifelse(orders.has_gap, orders.day, ibis.null("date")).max().delta(
            ibis.ifelse(orders.has_gap, orders.prev_day, ibis.null("date")).max(), unit="day"
        ),
        "active_months": count(orders.new_month),
        # the most common weekday's count, as seven counts in the same pass (cheaper than
        # a second grouping by weekday and a join)
        "dow_max": ibis.greatest(*[count(orders.new_day & (orders.dow == d))
                                   for d in range(7)]),
    }
    for w in config.windows_days:
        aggs[f"orders_{w}d"] = count(since(w) & is_p)
        aggs[f"spend_{w}d"] = ibis.ifelse(since(w), orders.value, zero).sum()
    if has_discount:
        aggs["disc_gross"] = orders.disc_gross.sum()
    # the population: customers with at least one purchase order
    agg = orders.group_by(keys).aggregate(**aggs).filter(ibis._.n_orders > 0)
    # the positive rows' total, exactly (see `_row_sums`)
    agg = agg.mutate(gross=agg.monetary_total + agg.returned)
    if not has_discount:
        agg = agg.mutate(disc_gross=ibis.null("float64"))

    # 3. distinct products / categories bought (a line with amount >= 0: a product only
    # returned, e.g. bought before the log starts, is not counted), only when the data has them
    for col, name in (("product_id", "distinct_products"), ("category", "distinct_categories")):
        if col in cols:
            if shared is not None:
                pairs = shared.first_seen[col]
                distinct = (
                    pairs.filter(pairs.first_ts < cut_lit)
                    .group_by(keys)
                    .aggregate(**{name: ibis._.count()})
                )
            else:
                distinct = (
                    tx.filter(tx[col].notnull() & (tx.amount >= 0))
                    .group_by([*keys, col])
                    .aggregate()
                    .group_by(keys)
                    .aggregate(**{name: ibis._.count()})
                )
            agg = agg.left_join(distinct, keys).drop(*(f"{k}_right" for k in keys))
            agg = agg.mutate(**{name: ibis.coalesce(agg[name], 0)})
        else:
            agg = agg.mutate(**{name: ibis.null("int64")})
    if not keyed:
        agg = agg.mutate(
            cutoff=cut_lit, cutoff_day=ibis.literal(cutoff_day(pd.Timestamp(cutoff)), type="date")
        )
    return agg


def purchase_day_links(orders: ir.Table, keys: Sequence[str]) -> ir.Table:
    """Orders (with ``day``, ``ts``, ``is_purchase``) in, the same rows out with their links
    to the customer's earlier orders, none of which depends on the cutoff (an order's
    earlier orders are before every cutoff it is before):

    * ``prev_day``: the day of the previous order of the same kind (purchase or return), in
      time order; null for the first. ``first_day``: the day of the first.
    * ``new_day``: a purchase order on a day after the previous purchase order's, so one
      row per purchase day. ``has_gap``: a new purchase day with a previous one;
      ``gap_sq``: its gap in days, squared (null otherwise).
    * ``new_month``: a purchase day that opens a new calendar month: the previous one is at
      least as many days back as the day's day of the month (no month truncation: ~4x
      cheaper on DuckDB).
    * ``on_first_day``: a purchase order on the first purchase day; ``dow``: the weekday
      (0 = Monday).

    Purchase days come from one sorted window over each customer's orders of the same kind,
    in time order, without a table of days: a separate GROUP BY day, a window over it and
    a join cost about twice as much on DuckDB; Ibis compiles argmin/argmax to ordered
    aggregates and nunique to COUNT(DISTINCT), both slower still. With `SharedWork` whose
    lines are the orders, this runs once for every cutoff (`linked_lines`).
    """
    win = ibis.window(group_by=[*(orders[k] for k in keys), orders.is_purchase],
                      order_by=orders.ts)
    linked = orders.mutate(prev_day=orders.day.lag().over(win),
                           first_day=orders.day.first().over(win))
    is_p, day, prev = linked.is_purchase, linked.day, linked.prev_day
    new_day = is_p & (prev.isnull() | (day != prev))
    gap = day.delta(prev, unit="day")  # days since the previous purchase day
    has_gap = new_day & prev.notnull()
    return linked.mutate(
        new_day=new_day,
        has_gap=has_gap,
        gap_sq=ibis.ifelse(has_gap, gap * gap, ibis.null("int64")),
        new_month=new_day & (prev.isnull() | (gap >= day.day().cast("int64"))),
        on_first_day=is_p & (day == linked.first_day),
        dow=day.day_of_week.index().cast("int8"),
    )


#: The cutoff-independent per-order flags `purchase_day_links` adds besides the two days.
LINK_COLUMNS = ("new_day", "has_gap", "gap_sq", "new_month", "on_first_day", "dow")


def _orders_from_lines(shared: SharedWork, cut: ir.Value, has_discount: bool) -> ir.Table:
    """The orders before ``cut`` from `order_lines` (what step 1 of `customer_aggregates`
    computes from the rows): the lines themselves when each order is one line, else the
    lines summed per order."""
    lines = shared.lines.filter(shared.lines.ts < cut)
    money = ["value", "returned", *(["disc_gross"] if has_discount else [])]
    if shared.lines_are_orders:  # with their purchase-day links (`linked_lines`)
        return lines.select(
            "customer_id", "_order", "ts", "day", "is_purchase", "prev_day", "first_day",
            *LINK_COLUMNS, *money,
            neg_rows=lines.neg_rows.cast("int64"),
        )
    return lines.group_by(["customer_id", "_order"]).aggregate(
        ts=lines.ts.min(),
        is_purchase=lines.max_amount.max() >= 0,
        neg_rows=lines.neg_rows.sum().cast("int64"),
        **{c: lines[c].sum().cast(MONEY) for c in money},
    )


def customer_features(
    tx: ir.Table, config: FeatureConfig | None = None, cutoff: pd.Timestamp | None = None,
    shared: SharedWork | None = None,
) -> ir.Table:
    """Point-in-time features per (cutoff, customer), as an Ibis expression.

    With ``cutoff``: ``tx`` is the contract table and only its rows before the cutoff are
    read. Without: ``tx`` carries ``cutoff``/``cutoff_day`` columns and holds only rows
    before them (see `attach_cutoff`, `attach_cutoffs`), one or many cutoffs at once.
    ``shared`` (with ``cutoff``): `SharedWork` built once from ``tx`` for a loop over
    cutoffs. Returns one row per (cutoff, customer with a purchase before it):
    ``customer_id`` (string), ``cutoff``, then every feature of
    `features.registry.feature_definitions`.
    """
    config = config or FeatureConfig()
    agg = customer_aggregates(tx, config, cutoff, shared)
    exprs = {f.name: f.expr(agg) for f in feature_definitions(config)}
    return agg.select(
        customer_id=agg.customer_id.cast("string"), cutoff=agg.cutoff, **exprs
    ).order_by(["cutoff", "customer_id"])
