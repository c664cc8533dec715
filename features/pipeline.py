"""Public feature pipelines: features at a cutoff, snapshots, labels and training frames.

All functions take transactions in any accepted form (a path to CSV/Parquet, a pandas
DataFrame, an Ibis table, a database URL with ``table=``, or an already loaded
`features.contract.Transactions`) and return pandas DataFrames, one row per customer
(per cutoff for stacked frames). The cutoff is always an explicit argument.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa

from features.config import ColumnMapping, FeatureConfig, mapping_setting
from features.contract import (
    DataValidationError,
    Transactions,
    check_cutoff,
    load_transactions,
    parse_cutoff,
)
from features.engine import (
    MONEY,
    MONEY_LIMIT,
    SharedWork,
    _order_key,
    customer_features,
    first_seen,
    linked_lines,
    order_lines,
)
from features.naming import counted, named
from features.registry import feature_definitions
from features.warn import warn

TransactionsLike = Any  # path | DataFrame | ibis.Table | Transactions


def default_cutoff(report) -> pd.Timestamp:  # noqa: ANN001 (a ValidationReport)
    """The day after the last event (midnight): a cutoff that sees every event."""
    return (pd.Timestamp(report.last_event) + pd.Timedelta(days=1)).normalize()


def as_transactions(
    transactions: TransactionsLike,
    mapping: ColumnMapping | dict | str | None = None,
    table: str | None = None,
) -> Transactions:
    """Load (and validate) unless already loaded. Loaded transactions were read with their
    mapping (and table) already: another one given with them would be ignored, so it is an
    error."""
    if isinstance(transactions, Transactions):
        given = [name for name, value in (("mapping", mapping), ("table", table))
                 if value is not None]
        if given:
            raise ValueError(
                f"the transactions are already loaded (from {transactions.report.source}), "
                f"with the mapping they were loaded with: leave {' and '.join(given)} out, "
                f"or pass the source itself (a path, DataFrame or URL) with them"
            )
        return transactions
    return load_transactions(transactions, mapping, table=table)


def _typed(df: pd.DataFrame, config: FeatureConfig) -> pd.DataFrame:
    """Give every feature column its registry dtype (engines disagree on integer types).
    Changes ``df`` in place (callers pass a frame they own) and returns it."""
    out = df
    out["customer_id"] = out["customer_id"].astype("string")
    out["cutoff"] = pd.to_datetime(out["cutoff"]).astype("datetime64[us]")
    for f in feature_definitions(config):
        col = out[f.name]
        want = pd.Int64Dtype() if f.dtype == "Int64" else np.dtype("float64")
        if col.dtype == want:  # most already are: a copy of 7.6M rows x 30 cost ~1.3 s
            continue
        out[f.name] = col.astype(want) if f.dtype == "Int64" else pd.to_numeric(
            col, errors="raise").astype("float64")
    return out.reset_index(drop=True)


@contextlib.contextmanager
def _money_fits(tx: Transactions) -> Iterator[None]:
    """Turn the engine's error for an order worth 10^12 or more into a clear one.

    The loader refuses single amounts of 10^12 or more; an order summed from smaller rows
    can still reach it, and the exact money type (`features.engine.MONEY`) cannot hold
    it. DuckDB only says "Casting value ... to type DECIMAL(18,6) failed"; the message
    here names the orders (one more query, on the error path only)."""
    import duckdb

    try:
        yield
    except duckdb.ConversionException as exc:
        if f"DECIMAL({MONEY.precision},{MONEY.scale})" not in str(exc):
            raise
        t = tx.table
        amount = t.amount.cast("float64")
        sums = t.group_by(["customer_id", _order_key(t).name("order")]).aggregate(
            bought=ibis.ifelse(amount > 0, amount, 0).sum(),
            returned=ibis.ifelse(amount < 0, -amount, 0).sum(),
        )
        big = tx.backend.execute(
            sums.filter((sums.bought >= MONEY_LIMIT) | (sums.returned >= MONEY_LIMIT))
            .order_by(["customer_id", "order"]).limit(3)
        )
        examples = ", ".join(
            f"customer {r.customer_id} order {r.order} ({max(r.bought, r.returned):,.0f})"
            for r in big.itertuples()
        )
        raise DataValidationError(
            f"{tx.report.source}: orders whose rows sum to 10^12 or more in amount, e.g. "
            f"{examples or 'none found by a second query'}. lifecast sums money exactly "
            f"and refuses orders that large: check the amount column or expression (a "
            f"quantity read as a price, or amounts in a minor unit, give such totals) and "
            f"the order_id mapping (an order_id shared by many orders sums them into one)"
        ) from None


def _fetch(tx: Transactions, expr: ibis.Table | Sequence[ibis.Table]) -> pa.Table:
    """Run ``expr`` (or several, whose results are stacked as Arrow tables, no copy)."""
    exprs = [expr] if isinstance(expr, ibis.Table) else list(expr)
    with _money_fits(tx):
        return pa.concat_tables([tx.backend.to_pyarrow(e) for e in exprs])


def _arrow_to_pandas(table: pa.Table) -> pd.DataFrame:
    """An Arrow result as pandas, column by column.

    Not ``backend.execute``: Ibis 12 converts every column that has a null through Python
    objects (``to_pylist``), which at 10M rows cost more CPU than several feature stages
    together. Integer columns keep their nulls as pandas ``Int64``. Several results are
    converted once as one stacked table: stacking pandas frames of nullable columns cost
    ~2.7 s for 12 snapshots of 10M rows."""
    ints = {t: pd.Int64Dtype() for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64())}
    # self_destruct frees each Arrow column once converted (one copy of the result at a
    # time); one thread: with split blocks, Arrow's threads made it ~3x slower here
    # (0.37 vs 0.11 s for 863k customers on 2 cores)
    return table.to_pandas(types_mapper=ints.get, split_blocks=True, self_destruct=True,
                           use_threads=False)


def _to_pandas(tx: Transactions, expr: ibis.Table | Sequence[ibis.Table]) -> pd.DataFrame:
    """`_fetch` then `_arrow_to_pandas`."""
    return _arrow_to_pandas(_fetch(tx, expr))


def _execute_features(
    tx: Transactions, cutoff: pd.Timestamp, config: FeatureConfig,
    shared: SharedWork | None = None,
) -> pd.DataFrame:
    expr = customer_features(tx.table, config, cutoff=cutoff, shared=shared)
    return _typed(_to_pandas(tx, expr), config)


@contextlib.contextmanager
def _shared_work(tx: Transactions, n_cutoffs: int) -> Iterator[SharedWork | None]:
    """`features.engine.SharedWork` of ``tx`` for a loop over ``n_cutoffs`` cutoffs
    (`build_snapshots`, `build_training_frame`), its tables copied once into temporary
    tables of ``tx``'s backend and dropped at the end; None for a single cutoff."""
    if n_cutoffs < 2:
        yield None
        return
    from features.contract import _q, _view_name

    backend = tx.backend
    names: list[str] = []

    def temp(expr: ibis.Table, kind: str) -> ibis.Table:
        names.append(_view_name(kind))
        with _money_fits(tx):
            backend.con.execute(f"CREATE TEMP TABLE {_q(names[-1])} AS "
                                f"{backend.compile(expr)}")
        return backend.table(names[-1])

    try:
        lines = temp(order_lines(tx.table), "lines")
        n_lines = backend.execute(lines.count())
        n_orders = backend.execute(lines.select("customer_id", "_order").distinct().count())
        if n_lines == n_orders:  # the lines are the orders: link their purchase days once
            lines = temp(linked_lines(lines), "linked_lines")
            backend.con.execute(f"DROP TABLE {_q(names.pop(-2))}")  # the unlinked copy
        pairs = {col: temp(first_seen(tx.table, col), f"first_{col}")
                 for col in ("product_id", "category") if col in tx.table.columns}
        yield SharedWork(lines=lines, lines_are_orders=n_lines == n_orders, first_seen=pairs)
    finally:
        for name in names:
            backend.con.execute(f"DROP TABLE IF EXISTS {_q(name)}")


#: A customer id that holds at least this share of the purchase orders before a cutoff, and
#: at least `SHARED_ID_FAIR_SHARES` times an equal share, is taken for an id many buyers
#: share (guest checkouts, a walk-in or cash account): in Online Retail (4,372 customers)
#: and Complete Journey (2,469 households) the largest customer holds 1.1% and 0.5%.
SHARED_ID_ORDER_SHARE = 0.05
SHARED_ID_FAIR_SHARES = 20


def warn_if_one_id_dominates(features_df: pd.DataFrame) -> None:
    """Warn when one customer id holds an outsized share of the purchase orders of a
    feature frame (`SHARED_ID_ORDER_SHARE`): such an id is usually a placeholder many
    buyers share. Its history is modelled as one customer's, tops the segments and the
    value lists, and skews the models; `ColumnMapping.missing_ids` drops its rows."""
    orders = features_df["n_orders"].astype("float64").to_numpy()
    total = orders.sum()
    if len(orders) < 2 or not total > 0:
        return
    top = int(np.argmax(orders))
    share = orders[top] / total
    if share < max(SHARED_ID_ORDER_SHARE, SHARED_ID_FAIR_SHARES / len(orders)):
        return
    cid = features_df["customer_id"].iloc[top]
    spend = features_df["monetary_total"].astype("float64").to_numpy()
    positive = spend[spend > 0].sum()
    spend_part = (f" and {spend[top] / positive:.0%} of the net spend" if positive > 0
                  and spend[top] > 0 else "")
    cut = pd.Timestamp(features_df["cutoff"].iloc[top])
    cut_text = cut.strftime("%Y-%m-%d") if cut == cut.normalize() else str(cut)
    warn(
        f"customer {cid!r} holds {share:.0%} of the purchase orders before {cut_text} "
        f"({int(orders[top]):,} of {int(total):,}, among {len(orders):,} customers){spend_part}: "
        f"an id that many buyers share, such as guest checkouts or a walk-in or cash "
        f"account? lifecast models it as one customer, who then tops the segments and the "
        f"value lists. If it is one, pass {mapping_setting('missing_ids', [str(cid)])}: its "
        f"rows are then dropped and counted like rows without a customer id."
    )


def build_features(
    transactions: TransactionsLike,
    cutoff: Any,
    mapping: ColumnMapping | dict | str | None = None,
    config: FeatureConfig | dict | None = None,
    *,
    table: str | None = None,
) -> pd.DataFrame:
    """Point-in-time features at ``cutoff``: transactions in, one row per customer out.

    Only events with ``timestamp < cutoff`` are read. The population is every customer
    with at least one purchase before the cutoff. Columns: ``customer_id``, ``cutoff``,
    then the features of `features.registry` (see `lifecast features list`).

    ``cutoff``: ISO text (``"2011-09-01"``), a date, datetime, ``numpy.datetime64`` or
    ``pd.Timestamp``; an aware one is converted to UTC, a naive one is UTC, like naive
    timestamps in the data. The ``cutoff`` column holds it as naive UTC. ``customer_id``
    is a pandas ``string`` column whatever the input's id type (whole-number ids as their
    digits: 17850 and 17850.0 give ``"17850"``); to join the features back onto a frame
    keyed by integer ids, convert one side first, e.g.
    ``feats.astype({"customer_id": "int64"})`` (a join of string and integer keys matches
    nothing, and pandas' ``merge`` refuses it).

    Raises `features.contract.DataValidationError` for bad input or a cutoff at or before
    the first event; warns (``StaleDataWarning``) for a cutoff long after the last event,
    and when one customer id holds an outsized share of the orders
    (`warn_if_one_id_dominates`).
    """
    config = FeatureConfig.of(config)
    tx = as_transactions(transactions, mapping, table)
    cut = check_cutoff(tx.report, cutoff, config)
    features_df = _execute_features(tx, cut, config)
    warn_if_one_id_dominates(features_df)
    return features_df


def build_snapshots(
    transactions: TransactionsLike,
    cutoffs: Sequence[Any],
    mapping: ColumnMapping | dict | str | None = None,
    config: FeatureConfig | dict | None = None,
    *,
    table: str | None = None,
) -> pd.DataFrame:
    """Features at several cutoffs, stacked: one row per (cutoff, customer).

    ``cutoffs`` is a list (or any iterable, e.g. a ``pd.date_range``) of cutoffs, each as
    `build_features` takes it; the columns are those of `build_features`.

    Loops over cutoffs on the in-process engine (on DuckDB this measured faster and
    leaner than one range join; `features.engine.attach_cutoffs` is the range-join shape
    for Spark). Every cutoff must be after the first event.
    """
    config = FeatureConfig.of(config)
    if isinstance(cutoffs, (str, bytes, dt.date, np.datetime64)) or not isinstance(
            cutoffs, Iterable):
        raise ValueError(
            f"cutoffs must be a list of cutoffs such as ['2011-06-01', '2011-09-01'], got "
            f"the single value {cutoffs!r}: pass [{cutoffs!r}], or use build_features for "
            f"one cutoff"
        )
    loaded = as_transactions(transactions, mapping, table)
    cuts = sorted({parse_cutoff(c) for c in cutoffs})
    if not cuts:
        raise DataValidationError("no cutoffs given: pass at least one cutoff")
    cuts = [check_cutoff(loaded.report, c, config) for c in cuts]
    # one query per cutoff: copy a view over a file once rather than re-read it each time;
    # several cutoffs share the orders' pre-summed lines and the first-seen products. Both
    # copies are dropped before the results are converted.
    with loaded.materialized() as tx, _shared_work(tx, len(cuts)) as shared:
        result = _fetch(tx, [customer_features(tx.table, config, cutoff=cut, shared=shared)
                             for cut in cuts])
    return _typed(_arrow_to_pandas(result), config)


def build_labels(
    transactions: TransactionsLike,
    cutoff: Any,
    horizon_days: int,
    mapping: ColumnMapping | dict | str | None = None,
    *,
    require_observed: bool = True,
    table: str | None = None,
) -> pd.DataFrame:
    """Outcomes in the window ``[cutoff, cutoff + horizon_days)`` for the population at cutoff.

    Transactions in, one row per customer with a purchase before the cutoff out, sorted by
    ``customer_id`` (a pandas ``string`` column, as in `build_features`; merge the two on
    it): ``churned`` (no purchase, i.e. no row with ``amount >= 0``, in the
    window), ``future_value`` (net spend in the window; returns subtract),
    ``future_orders`` (purchase orders in the window).

    With ``require_observed`` (the default) the data must cover the whole window (its
    last event at or after the window's last day); otherwise the labels would call a
    customer churned merely because the log ends.

    Raises `features.contract.DataValidationError` for a cutoff at or before the first
    purchase (no customers), a window the data does not cover, or a ``horizon_days`` that
    is not a positive whole number.
    """
    tx = as_transactions(transactions, mapping, table)
    check_cutoff(tx.report, cutoff)  # no customers before it: an error, not an empty frame
    return _labels(tx, cutoff, horizon_days, require_observed=require_observed)


def check_horizon(horizon_days: Any, name: str = "horizon_days") -> int:
    """``horizon_days`` as a positive whole number of days, else `DataValidationError`
    naming ``name`` (a text "30" or a float 30.5 is refused, not silently converted)."""
    if isinstance(horizon_days, bool) or not isinstance(horizon_days, (int, np.integer)):
        raise DataValidationError(
            f"{name} must be a whole number of days such as 90, got {horizon_days!r} "
            f"({type(horizon_days).__name__})"
        )
    if horizon_days <= 0:
        raise DataValidationError(f"{name} must be positive, got {horizon_days}")
    return int(horizon_days)


def window_observed(last_event: Any, cutoff: Any, horizon_days: int) -> bool:
    """Whether data ending at ``last_event`` covers the outcome window ``[cutoff, cutoff +
    horizon_days)``: it reaches the window's last day, the day of the window's last instant.
    A log's last event is rarely at midnight, so a window ending at midnight after the data's
    last day counts; a window ending at 12:00 on the 20th needs data on the 20th (a log
    ending on the 19th at 13:00 has not seen that morning's orders)."""
    end = pd.Timestamp(cutoff) + pd.Timedelta(days=horizon_days)
    return pd.Timestamp(last_event) >= (end - pd.Timedelta(1, "ns")).normalize()


def _labels(tx: Transactions, cutoff: Any, horizon_days: int, *, require_observed: bool,
            shared: SharedWork | None = None) -> pd.DataFrame:
    """`build_labels` on loaded transactions; with ``shared`` (`_shared_work` of ``tx``)
    from its pre-summed order lines instead of the rows (the same labels: every row of a
    line is on the same side of the cutoff and of the window's end)."""
    cut = parse_cutoff(cutoff)
    horizon_days = check_horizon(horizon_days)
    end = cut + pd.Timedelta(days=horizon_days)
    last = pd.Timestamp(tx.report.last_event)
    if require_observed and not window_observed(last, cut, horizon_days):
        raise DataValidationError(
            f"the outcome window [{cut.date()}, {end.date()}) of "
            f"{counted(horizon_days, 'day')} is not "
            f"covered by the data, whose last event is {last}: choose an earlier cutoff "
            f"or a shorter horizon"
        )
    lo = ibis.literal(cut.to_pydatetime(), type="timestamp")
    hi = ibis.literal(end.to_pydatetime(), type="timestamp")
    # orders before the cutoff (the population) and in the window (the outcome), summed
    # from the order lines of ``shared``, or from the rows, each row a line of its own
    # (summing them into lines first cost ~1 s more at 10M rows for a single cutoff)
    if shared is None:
        t = tx.table
        lines = t.select("customer_id", ts=t.timestamp, _order=_order_key(t),
                         value=t.amount.cast(MONEY), max_amount=t.amount)
        lines_are_orders = False
    else:
        lines, lines_are_orders = shared.lines, shared.lines_are_orders
    before = lines.filter(lines.ts < lo)
    if not lines_are_orders:
        before = before.group_by(["customer_id", "_order"]).aggregate(
            max_amount=before.max_amount.max())
    population = before.filter(before.max_amount >= 0).select("customer_id").distinct()
    window = lines.filter((lines.ts >= lo) & (lines.ts < hi))
    w_orders = window.group_by(["customer_id", "_order"]).aggregate(
        value=window.value.sum(), p=window.max_amount.max())
    outcome = w_orders.group_by("customer_id").aggregate(
        future_value=w_orders.value.sum(),
        future_orders=(w_orders.p >= 0).sum(),
    )
    joined = population.left_join(outcome, "customer_id")
    expr = joined.select(
        customer_id=joined.customer_id.cast("string"),
        future_value=ibis.coalesce(joined.future_value, 0).cast("float64"),
        future_orders=ibis.coalesce(joined.future_orders, 0).cast("int64"),
    ).order_by("customer_id")
    out = tx.backend.execute(expr)
    out["customer_id"] = out["customer_id"].astype("string")
    out["future_orders"] = out["future_orders"].astype("Int64")
    out["future_value"] = out["future_value"].astype("float64")
    out.insert(1, "churned", (out["future_orders"] == 0).astype("int8"))
    return out.reset_index(drop=True)


def _attach_labels(feats: pd.DataFrame, labels: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    """``feats`` with the label columns ``cols`` of its customers (a left join on
    ``customer_id``). Both come sorted by customer id from the same population (customers
    with a purchase order before the cutoff), so the columns are usually placed directly;
    a pandas merge of 800k string keys cost ~1.6 s per snapshot. Any other case merges."""
    if labels["customer_id"].is_unique and feats["customer_id"].equals(labels["customer_id"]):
        out = feats.copy(deep=False)
        for col in cols:
            out[col] = labels[col].array  # (keeps the nullable dtypes)
        return out
    return feats.merge(labels[["customer_id", *cols]], on="customer_id", how="left",
                       validate="one_to_one")


def snapshot_cutoffs(
    first_event: pd.Timestamp, train_cutoff: pd.Timestamp, horizon_days: int, config: FeatureConfig
) -> list[pd.Timestamp]:
    """Snapshot cutoffs for training: newest first at ``train_cutoff - horizon_days``, then
    every ``config.snapshot_every_days`` back, at most ``config.n_snapshots``, each leaving
    at least ``config.snapshot_every_days`` of history after the first event."""
    newest = (train_cutoff - pd.Timedelta(days=horizon_days)).normalize()
    earliest_allowed = first_event + pd.Timedelta(days=config.snapshot_every_days)
    cuts = []
    for k in range(config.n_snapshots):
        c = newest - pd.Timedelta(days=k * config.snapshot_every_days)
        if c <= earliest_allowed:
            break
        cuts.append(c)
    return sorted(cuts)


def build_training_frame(
    transactions: TransactionsLike,
    train_cutoff: Any,
    mapping: ColumnMapping | dict | str | None = None,
    config: FeatureConfig | dict | None = None,
    *,
    table: str | None = None,
) -> pd.DataFrame:
    """Stacked snapshots with labels, none of whose outcome windows cross ``train_cutoff``.

    Transactions in, one row per (snapshot cutoff, customer) out: the features, then
    ``churned`` (horizon ``config.churn_horizon_days``) and ``future_value`` /
    ``future_orders`` (horizon ``config.clv_horizon_days``). A label whose window would
    end after ``train_cutoff`` is null for that snapshot, so each model trains on the
    snapshots its own horizon allows and nothing at or after ``train_cutoff`` is read. So
    is one whose window the data does not cover (`window_observed`, `build_labels`' rule):
    with ``train_cutoff`` after the day after the last event, the latest windows.

    Raises `features.contract.DataValidationError` when no snapshot fits in the history
    before ``train_cutoff``, or when ``train_cutoff`` is more than
    ``config.stale_after_days`` after the last event (the latest outcome windows would lie
    after the data and label everyone churned).
    """
    config = FeatureConfig.of(config)
    train_cut = parse_cutoff(train_cutoff)
    loaded = as_transactions(transactions, mapping, table)
    check_labels_in_data(loaded, train_cut, config)
    with loaded.materialized() as tx:  # a query per snapshot
        frames = _labelled_snapshots(tx, train_cut, config)
    out = pd.concat(frames, ignore_index=True)
    out["churned"] = out["churned"].astype("Int8")
    out["future_value"] = out["future_value"].astype("float64")
    out["future_orders"] = out["future_orders"].astype("Int64")
    for labels, field in (("churned is", "churn_horizon_days"),
                          ("future_value and future_orders are", "clv_horizon_days")):
        if out[labels.split()[0]].isna().all():  # the longer horizon fits no snapshot
            days = getattr(config, field)
            warn(
                f"{labels} null in every snapshot: no {days}-day outcome window "
                f"({field}) of a snapshot ends by {train_cut.date()}, "
                f"{(train_cut - pd.Timestamp(out['cutoff'].min())).days} days after the "
                f"earliest snapshot. Pass a config with a shorter {field} for these labels "
                f"(e.g. FeatureConfig({field}=90)), or a log with more history"
            )
    return out


def check_labels_in_data(tx: Transactions, cutoff: pd.Timestamp, config: FeatureConfig,
                         name: str = "train_cutoff") -> None:
    """Refuse a training cutoff (given as ``name``: ``train_cutoff`` here; from
    `training.pipeline`, ``as_of`` or ``cutoff``, or on the command line ``--as-of`` or
    ``--cutoff``) more than ``config.stale_after_days`` after the
    last event: the latest snapshots' outcome windows would lie (partly) after the data,
    where nobody buys, so all their customers would be labelled churned. Features alone at
    such a cutoff are only stale (a warning, `check_cutoff`); labels from it are wrong."""
    last = pd.Timestamp(tx.report.last_event)
    slack = pd.Timedelta(days=config.stale_after_days)
    if cutoff > last + slack:
        raise DataValidationError(
            f"{name} {cutoff.date()} is {counted((cutoff - last).days, 'day')} after the last "
            f"event in "
            f"{tx.report.source} ({last}): each snapshot is labelled with the purchases in "
            f"the horizon after it, and windows after the data would show every customer as "
            f"churned. Use a {name} no later than {(last + slack).normalize().date()}, e.g. "
            f"the day after the last event, {default_cutoff(tx.report).date()}",
            source=tx.report.source,
        )


def _labelled_snapshots(tx: Transactions, train_cut: pd.Timestamp, config: FeatureConfig
                        ) -> list[pd.DataFrame]:
    """`build_training_frame`'s snapshots, one frame per cutoff."""
    # Everything, labels included, must come from before train_cutoff.
    visible = _restrict(tx, train_cut)
    first = pd.Timestamp(visible.report.first_event)
    hc, hv = config.churn_horizon_days, config.clv_horizon_days
    cuts = snapshot_cutoffs(first, train_cut, min(hc, hv), config)
    if not cuts:
        raise DataValidationError(
            f"no snapshot fits: the history before {train_cut.date()} starts {first.date()}, "
            f"too short for a {min(hc, hv)}-day outcome window plus "
            f"{config.snapshot_every_days} days of history; use a later cutoff or shorter "
            f"horizons ({named('--churn-horizon-days', 'churn_horizon_days')} / "
            f"{named('--clv-horizon-days', 'clv_horizon_days')})"
        )
    # the whole log's last event, not the visible one's: a window ending by train_cut is
    # covered when the log goes on after it (a shop closed on Saturdays has no Saturday
    # events before a Sunday cutoff); one that runs past the log's end (a train_cutoff up to
    # `stale_after_days` after it, `check_labels_in_data`) has no label, as `build_labels`
    # refuses it: the log's end would read as churn
    last = pd.Timestamp(tx.report.last_event)
    frames = []
    with _shared_work(visible, len(cuts)) as shared:
        for c in cuts:
            feats = _execute_features(visible, c, config, shared)
            labels: dict[int, pd.DataFrame] = {}  # per horizon: one query when both are equal
            for horizon, cols in ((hc, ["churned"]), (hv, ["future_value", "future_orders"])):
                if (c + pd.Timedelta(days=horizon) <= train_cut
                        and window_observed(last, c, horizon)):
                    if horizon not in labels:
                        labels[horizon] = _labels(visible, c, horizon, require_observed=False,
                                                  shared=shared)
                    feats = _attach_labels(feats, labels[horizon], cols)
                else:
                    for col in cols:
                        feats[col] = pd.Series(pd.NA, index=feats.index, dtype="Float64")
            frames.append(feats)
    return frames


def _restrict(tx: Transactions, cutoff: pd.Timestamp) -> Transactions:
    """The same transactions with every event at or after ``cutoff`` removed."""
    from dataclasses import replace

    lit = ibis.literal(cutoff.to_pydatetime(), type="timestamp")
    kept = tx.table.filter(tx.table.timestamp < lit)
    last = tx.backend.execute(kept.timestamp.max())
    if last is None or (isinstance(last, float) and np.isnan(last)):
        raise DataValidationError(
            f"no events before {cutoff} in {tx.report.source}: the data starts "
            f"{tx.report.first_event}; choose a later cutoff"
        )
    report = replace(tx.report, last_event=pd.Timestamp(last))
    return replace(tx, table=kept, report=report)
