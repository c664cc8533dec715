"""Load any transaction log onto the data contract, with validation.

One entry point, `load_transactions`: a CSV / Parquet file (or a folder or glob of Parquet
files), a pandas DataFrame, an Ibis table, a DuckDB file or any SQLAlchemy database table in;
one `Transactions` out, whose ``table`` holds the contract columns of DESIGN.md
(``customer_id, timestamp, amount`` and the optional ``order_id, quantity, product_id,
category, channel, discount`` that the mapping names), one row per kept source row.

The mapping is applied once, here, at the boundary:

- ``customer_id``: BIGINT when the source column is an integer or a float (as pandas makes
  of an integer column with gaps; a float id with a fraction, or of 2^53 or more, which a
  float cannot hold exactly, is an error), or a CSV column whose values are all plain
  integers (or integral floats such as ``17850.0``, or ``17850,0`` with
  ``mapping.decimal_comma``, read digit for digit, not through a float), missing-value
  markers and spaces around them aside; else VARCHAR, trimmed. Ids in scientific notation
  (``4.91235E+11``: a spreadsheet rounded them) are an error. Blank, NaN and text
  missing-value markers (``NaN``, ``N/A``, ``NA``, ``null``, ``None``, ``<NA>``,
  ``#N/A``, ``-``, any case) mean missing, and so do the ids listed in
  ``mapping.missing_ids`` (exactly; for integer ids, the listed whole numbers). Rows
  without one are dropped and counted (``report.rows_dropped["missing customer_id"]``);
  nothing else is dropped.
- ``timestamp``: naive TIMESTAMP. Time-zone aware values are converted to UTC, dates become
  midnight, text is parsed with ``mapping.timestamp_format``, else with the one format that
  reads every value among DuckDB's CSV sniffer's and `_TIMESTAMP_GUESSES` (several that
  read them differently, such as day-first and month-first, are an error: ambiguous), else
  as ISO 8601 (with or without a UTC offset). A format reads a value only if the year it
  gives has four digits (DuckDB's %Y takes '10' for the year 0010; the guesses have %y
  variants for two-digit years), and an event before 1900-01-01, by any path, is an error.
  Numbers are not read as times: a column of epoch seconds or milliseconds or of Excel
  serial dates is an error that says so, with the example converted and how to convert it.
- ``amount``: DOUBLE, a column or an arithmetic expression over columns
  (``Quantity * UnitPrice``); negative amounts (returns, cancellations) are kept; an amount
  of 10^12 or more (in absolute value) is an error: the features' money type cannot hold it.
  Text numbers use '.' as the decimal point (and ',' between thousands when a '.' decimal
  part follows: ``1,234.50``), or with ``mapping.decimal_comma`` ',' (and '.'
  or a space, also U+00A0 or U+202F, between thousands: ``1.234,50``), in every numeric
  column; without it, an amount text column whose dotted values look like thousands groups
  (``2.950``) gives a warning.
  The report's ``net_amount`` is the sum of the kept amounts.
- ``order_id``, ``product_id``: BIGINT when the source column is an integer column, else
  VARCHAR (they are only grouped and counted, and integers group faster);
  ``category``, ``channel``: VARCHAR; ``quantity``, ``discount``: DOUBLE.

Work is done by one in-process DuckDB connection (an Ibis backend): the cleaned rows are a
view over the source, one aggregate query computes the `ValidationReport` and every
bad-value count (customers and distinct orders are counted when first read: `_Counts`; for
text timestamps, a query over the first rows picks the candidate formats before it, and it
counts the rows each does not read), a second small query runs only when something is wrong
(to show examples with row numbers), then the cleaned rows become the contract table: a view
over Parquet files and DuckDB tables (re-reading them costs about what copying them would,
and a copy of 50M rows takes gigabytes of memory), a temporary table copied once for every
other source (CSV parsing, pandas and other databases are costly to re-read). Every problem
raises `DataValidationError` before that table or view is created.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import glob as globlib
import hashlib
import itertools
import re
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import ibis
import ibis.expr.operations as ops
import numpy as np
import pandas as pd
import sqlglot
from ibis.backends.duckdb import Backend as DuckDBBackend
from sqlglot import exp

from features.config import (
    CONTRACT_COLUMNS,
    MAPPING_FLAGS,
    REQUIRED_COLUMNS,
    ColumnMapping,
    FeatureConfig,
    mapping_key,
    mapping_setting,
)
from features.engine import MONEY_LIMIT  # amounts must be below it in absolute value
from features.naming import counted, named
from features.urls import driver_hint, masked_url
from features.warn import warn

__all__ = [
    "DataValidationError",
    "StaleDataWarning",
    "Transactions",
    "ValidationReport",
    "check_cutoff",
    "load_transactions",
    "parse_cutoff",
]

MISSING_CUSTOMER = "missing customer_id"
_EXAMPLES = 5
_CSV_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz")
_PARQUET_SUFFIXES = (".parquet", ".pq")
_DUCKDB_SUFFIXES = (".duckdb", ".ddb")
_DELIMITERS = (",", ";", "\t", "|")
_TIMESTAMP_GUESSES = (
    "%d/%m/%Y %H:%M",
    "%m/%d/%Y %H:%M",
    "%d/%m/%Y %H:%M:%S",
    "%m/%d/%Y %H:%M:%S",
    "%d/%m/%Y",
    "%m/%d/%Y",
    "%d.%m.%Y %H:%M",
    "%d.%m.%Y",
    "%d-%m-%Y %H:%M",
    "%d-%m-%Y",
    "%Y/%m/%d %H:%M:%S",
    "%Y/%m/%d",
    "%Y%m%d",
    # two-digit years ('12/1/10 9:37', Excel's US default): %Y reads '10' as the year 0010,
    # which `_reads` refuses, so these are the ones that read such a column
    "%d/%m/%y %H:%M",
    "%m/%d/%y %H:%M",
    "%d/%m/%y %H:%M:%S",
    "%m/%d/%y %H:%M:%S",
    "%d/%m/%y",
    "%m/%d/%y",
    "%d.%m.%y %H:%M",
    "%d.%m.%y",
    "%d-%m-%y %H:%M",
    "%d-%m-%y",
)
#: the earliest event a load accepts: an earlier one is a misread date (a two-digit year read
#: with %Y or as ISO 8601 is the year 0010), never a transaction
_EARLIEST = "1900-01-01"
#: rows at the start of a source whose timestamp texts pick the candidate formats (as many
#: as DuckDB's CSV sniffer reads); every row is checked later (`_settle_timestamp_format`)
_FORMAT_SNIFF_ROWS = 20_480
#: customer id texts that mean "no customer id" (compared trimmed and lower-cased): what
#: pandas, R, spreadsheets and SQL exports write for a missing value (Excel: '#N/A'; a
#: report's '-')
_MISSING_IDS = ("", "nan", "na", "n/a", "#n/a", "-", "null", "none", "<na>")
_counter = itertools.count(1)


# --------------------------------------------------------------------------- public types


class DataValidationError(ValueError):
    """The input cannot be loaded onto the contract; the message says where and what to do.

    ``source`` names the input and ``problems`` lists each problem found (a load reports all
    the problems it can find at once rather than the first).
    """

    def __init__(
        self, message: str, *, source: str | None = None, problems: Sequence[str] = ()
    ) -> None:
        super().__init__(message)
        self.source = source
        self.problems = tuple(problems) or (message,)


class StaleDataWarning(UserWarning):
    """The cutoff is long after the last event: the data may be out of date."""


class _Counts:
    """Customers and orders (distinct customer, order pairs) of a load, counted by one query
    the first time they are read. Counting distinct orders is a grouping of every row (at
    10M rows ~1.5 CPU-s, more than a third of the load), which `build_features` never
    needs; the printed report and anything that reads ``report.orders`` pay for it once."""

    def __init__(self, query: Any) -> None:
        self._query: Any = query  # () -> (customers, orders), or the counts themselves
        self._lock = threading.Lock()

    def get(self) -> tuple[int, int]:
        with self._lock:
            if callable(self._query):
                self._query = tuple(int(v) for v in self._query())
            return self._query

    def __reduce__(self) -> tuple[Any, ...]:  # pickles as the counts, not the connection
        return (_Counts, (self.get(),))


@dataclass(frozen=True)
class ValidationReport:
    """What a load read, dropped and kept; printed by ``lifecast features validate``.

    ``customers`` and ``orders`` are counted on first read (one query over the loaded
    rows), so a load that only builds features does not pay for counting distinct orders.
    """

    source: str
    rows_read: int
    rows_dropped: dict[str, int]
    rows_kept: int
    return_rows: int
    first_event: pd.Timestamp
    last_event: pd.Timestamp
    columns: dict[str, str]
    #: how text timestamps were parsed (a strptime format), None when not text or ISO 8601
    timestamp_format: str | None = None
    #: "integer" or "string": the type ``customer_id`` has in the contract table
    customer_id_type: str = "string"
    #: the earliest row with ``amount >= 0`` (what makes an order a purchase), None when no
    #: row is one: a cutoff must be after it for any customer to exist
    first_purchase: pd.Timestamp | None = None
    #: the sum of ``amount`` over the kept rows (returns net of purchases), to two decimals:
    #: a figure to compare with the source's own total, which shows an amount read at the
    #: wrong scale (such as '2.950' read as 2.95 where it means 2950)
    net_amount: float = 0.0
    #: the customer ids read as "no customer" (``mapping.missing_ids``): their rows are
    #: among those dropped as ``missing customer_id``
    missing_ids: tuple[str, ...] = ()
    #: (customers, orders), or a `_Counts` that queries them when first read
    counts: Any = field(default=(0, 0), repr=False, compare=False)
    #: (duplicate rows,), or a `_Counts` that queries it when first read
    duplicates: Any = field(default=(0,), repr=False, compare=False)

    @property
    def customers(self) -> int:
        """Distinct customer ids among the kept rows."""
        return self._counts()[0]

    @property
    def orders(self) -> int:
        """Distinct (customer_id, order_id) pairs, or customer-days without an order_id."""
        return self._counts()[1]

    @property
    def duplicate_rows(self) -> int:
        """Kept rows identical to an earlier kept row in every mapped column (counted on
        first read, by one grouping of every row: `lifecast features validate` prints it,
        building features never reads it). They are kept: the same line twice in an order
        can be real, but a log appended to itself doubles every customer's history."""
        d = self.duplicates
        return (d.get() if isinstance(d, _Counts) else tuple(d))[0]

    def _counts(self) -> tuple[int, int]:
        return self.counts.get() if isinstance(self.counts, _Counts) else tuple(self.counts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (timestamps as ISO 8601 strings)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("counts", "duplicates"):  # duplicates: only when asked for
                continue
            out[f.name] = copy.deepcopy(getattr(self, f.name))
            if f.name == "rows_kept":
                out["customers"], out["orders"] = self._counts()
        out["first_event"] = pd.Timestamp(self.first_event).isoformat()
        out["last_event"] = pd.Timestamp(self.last_event).isoformat()
        if self.first_purchase is not None:
            out["first_purchase"] = pd.Timestamp(self.first_purchase).isoformat()
        return out

    def format(self, duplicates: bool = False) -> str:
        """Human-readable multi-line report; with ``duplicates``, also the kept rows that
        repeat an earlier one in every mapped column (`duplicate_rows`: one more query)."""
        order_note = (
            "distinct customer_id, order_id"
            if "order_id" in self.columns
            else "customer-days: no order_id mapped"
        )
        mapped = []
        for contract, source in self.columns.items():
            note = ""
            if contract == "timestamp" and self.timestamp_format:
                note = f" (parsed with {self.timestamp_format})"
            mapped.append(f"    {contract:<12} <- {source}{note}")
        lines = [
            f"Validation report for {self.source}",
            f"  rows read      {self.rows_read:>12,}",
        ]
        for reason, count in self.rows_dropped.items():
            if reason == MISSING_CUSTOMER and self.missing_ids:
                ids = named(f"{MAPPING_FLAGS['missing_ids']} {','.join(self.missing_ids)}",
                            f"ColumnMapping(missing_ids={list(self.missing_ids)!r})")
                reason += f", or one of {ids}"
            lines.append(f"  dropped        {count:>12,}  ({reason})")
        lines += [
            f"  rows kept      {self.rows_kept:>12,}",
            f"  customers      {self.customers:>12,}  (customer_id is {self.customer_id_type})",
            f"  orders         {self.orders:>12,}  ({order_note})",
            f"  return rows    {self.return_rows:>12,}  (amount < 0, kept)",
            f"  net amount     {self.net_amount:>12,.2f}  (sum of amount over the kept rows)",
            *([f"  duplicate rows {self.duplicate_rows:>12,}  (kept: equal to an earlier row "
               f"in every mapped column)"] if duplicates else []),
            f"  first event    {pd.Timestamp(self.first_event)}",
            f"  last event     {pd.Timestamp(self.last_event)}",
            "  columns",
            *mapped,
        ]
        return "\n".join(lines)


@dataclass(frozen=True)
class Transactions:
    """Validated transactions on the contract.

    ``table`` is an Ibis table in ``backend`` holding the contract columns only (in
    `CONTRACT_COLUMNS` order), one row per kept source row: a temporary DuckDB view over
    the source when that can be re-read cheaply (Parquet files, a DuckDB table; then
    ``is_view`` is true and the source must not change while in use), else a temporary
    table holding a copy (CSV, pandas, other databases).
    """

    table: ibis.Table
    report: ValidationReport
    backend: DuckDBBackend = field(repr=False)
    is_view: bool = False

    @contextlib.contextmanager
    def materialized(self) -> Iterator[Transactions]:
        """The same rows copied once into a temporary table (unless they already are one)
        for the ``with`` block, and dropped after it: cheaper than re-reading the source
        for many queries, such as one per cutoff, without leaving a copy of the whole log
        behind in the caller's connection for every call."""
        if not self.is_view:
            yield self
            return
        name = _view_name("transactions")
        self.backend.con.execute(
            f"CREATE TEMP TABLE {_q(name)} AS {self.backend.compile(self.table)}"
        )
        try:
            yield Transactions(
                table=self.backend.table(name), report=self.report, backend=self.backend
            )
        finally:
            self.backend.con.execute(f"DROP TABLE IF EXISTS {_q(name)}")

    def to_pandas(self) -> pd.DataFrame:
        """The contract rows as a pandas DataFrame (same rows and columns as ``table``)."""
        return self.backend.execute(self.table)

    def profile_before(self, cutoff: Any) -> dict[str, Any]:
        """What a model trained as of ``cutoff`` read: the rows before it (rows, customers,
        first and last event) and a digest of their content (one query).

        The digest is the same for the same rows in any order and from any source, and
        differs when a row before the cutoff does; rows at or after it do not change it.
        It is DuckDB's 64-bit ``hash`` of each row, summed (a multiset hash: a duplicated
        row counts twice), then SHA-256 with the column names; it may change with the
        DuckDB version, not between runs of one."""
        cols = list(self.table.columns)
        rows, customers, first, last, total = self.backend.con.execute(
            f"SELECT count(*), count(DISTINCT customer_id), min(timestamp), max(timestamp), "
            f"coalesce(sum({self._row_hash()}), 0) FROM ({self._rows_before(cutoff)})"
        ).fetchall()[0]
        digest = hashlib.sha256(f"{cols}|{rows}|{total}".encode()).hexdigest()[:16]
        return {"rows": int(rows), "customers": int(customers),
                "first_event": None if first is None else pd.Timestamp(first),
                "last_event": None if last is None else pd.Timestamp(last),
                "digest": digest}

    def daily_profile(self, before: Any) -> pd.DataFrame:
        """The rows before ``before`` per calendar day: one row per day with events
        (``day`` as ISO text, ``rows``, ``hash_sum``: the row hash of `profile_before`
        summed over the day, as text). The same rows on a day, in any order and from any
        source, give the same row; rows at or after ``before`` are not read. A row per day
        of history: saved with a model, it tells whether another run read the same log
        (`training.pipeline.data_differs`)."""
        rows = self.backend.con.execute(
            f"SELECT strftime(CAST(timestamp AS DATE), '%Y-%m-%d') AS day, count(*), "
            f"CAST(sum({self._row_hash()}) AS VARCHAR) FROM ({self._rows_before(before)}) "
            f"GROUP BY day ORDER BY day"
        ).fetchall()
        return pd.DataFrame(rows, columns=["day", "rows", "hash_sum"]).astype(
            {"day": "str", "rows": "int64", "hash_sum": "str"})

    def _rows_before(self, cutoff: Any) -> str:
        """SQL of the rows before ``cutoff``."""
        t = self.table
        return self.backend.compile(t.filter(t.timestamp < parse_cutoff(cutoff).to_pydatetime()))

    def _row_hash(self) -> str:
        """SQL: DuckDB's 64-bit hash of a row over every contract column."""
        return f"hash({', '.join(_q(c) for c in self.table.columns)})"


# --------------------------------------------------------------------------- public functions


def load_transactions(
    source: Any,
    mapping: ColumnMapping | dict | str | None = None,
    *,
    table: str | None = None,
    backend: DuckDBBackend | None = None,
) -> Transactions:
    """Read ``source``, apply ``mapping`` and validate: source rows in, contract rows out.

    ``source`` is a path (``.csv``, ``.csv.gz``, ``.parquet``, a folder or glob of Parquet
    files, a ``.duckdb`` file with ``table=``), a pandas DataFrame, an Ibis table, or a
    database URL with ``table=`` (``duckdb:///file.duckdb``, ``sqlite:///file.db``,
    ``postgresql://...``). The result's table lives in ``backend`` (a DuckDB Ibis backend;
    a fresh in-memory one by default). Rows without a customer id are dropped and counted;
    every other row is kept.

    ``mapping`` is a `ColumnMapping`, a dict with the same keys (contract column -> your
    column), the path of a YAML file of them, or None when the data already uses the
    contract's names: then every contract column the source has by its exact name is
    mapped, the optional ones (``order_id``, ``product_id``, ...) included.

    Raises `DataValidationError` naming the source, the column, examples and row numbers,
    and what to do, for: a missing file or unknown file type, missing columns, a bad amount
    expression, an empty source, no rows with a customer id, unparseable or missing
    timestamps, non-numeric or missing amounts and non-numeric quantity/discount.
    """
    by_contract_names = mapping is None
    mapping = ColumnMapping.coerce(mapping)
    if backend is None and isinstance(source, ibis.Table):
        backend = _ibis_owner(source)  # query the table where it lives
    con = backend if backend is not None else _new_backend()
    raw = con.con
    disable_progress_bar(raw)
    raw.execute("SET TimeZone = 'UTC'")  # naive text timestamps are read as UTC (unchanged)
    if mapping.timestamp_format:
        _check_timestamp_format(raw, mapping.timestamp_format)
    src = _open_source(con, source, table, mapping)
    if by_contract_names:  # the optional contract columns it has too, not only the three
        mapping = mapping.with_overrides(**{c: c for c in CONTRACT_COLUMNS
                                            if c not in REQUIRED_COLUMNS and c in src.types})
    clean = _view_name("clean")
    done = False
    try:
        plan = _plan(src, mapping, ts_formats=_timestamp_candidates(con, src, mapping),
                     ts_example=_numeric_timestamp_example(con, src, mapping))
        stats = _profile(con, src, plan, clean)
        ts_format = _settle_timestamp_format(con, src, plan, stats)  # raises when ambiguous
        tabs = bool(stats["cid_tabbed"])
        if (stats["cid_not_integer"] or ts_format != plan.timestamp_format
                or (tabs and not plan.integer_ids)):
            # an "integer" id column holds other text: use strings; or the only candidate
            # format that reads every timestamp is not the one the first profile used; or
            # text ids have tabs around them (rare: trimming them costs)
            plan = _plan(src, mapping, integer_ids=not stats["cid_not_integer"],
                         ts_formats=[ts_format] if ts_format else [], tab_ids=tabs)
            stats = _profile(con, src, plan, clean)
        _validate(con, src, plan, stats)
        _warn_thousands(con, src, plan)
        if mapping.timestamp_format and not plan.timestamp_is_text:
            ts_col = next(c.label for c in plan.columns if c.contract == "timestamp")
            warn(f"{mapping_setting('timestamp_format', mapping.timestamp_format)} is not "
                 f"used: column {ts_col!r} of {src.label} holds timestamps already, not text")
        name = _view_name("transactions")
        cols = ", ".join(_q(c.contract) for c in plan.columns)
        kind = "VIEW" if src.reread else "TABLE"
        raw.execute(
            f"CREATE TEMP {kind} {_q(name)} AS SELECT {cols} FROM {_q(clean)} "
            f"WHERE customer_id IS NOT NULL"
        )
        done = True
    finally:  # a copied table needs the source views and attachments no more
        if not (src.reread and done):
            raw.execute(f"DROP VIEW IF EXISTS {_q(clean)}")
            for stmt in src.cleanup:
                raw.execute(stmt)
    report_cols = {c.contract for c in plan.columns}
    report = ValidationReport(
        source=src.label,
        rows_read=stats["rows_read"],
        rows_dropped={MISSING_CUSTOMER: stats["missing_customer"]},
        rows_kept=stats["rows_read"] - stats["missing_customer"],
        return_rows=stats["return_rows"],
        first_event=pd.Timestamp(stats["first_event"]),
        last_event=pd.Timestamp(stats["last_event"]),
        columns={c.contract: c.label for c in plan.columns},
        timestamp_format=plan.timestamp_format,
        customer_id_type="integer" if plan.integer_ids else "string",
        first_purchase=(None if stats["first_purchase"] is None
                        else pd.Timestamp(stats["first_purchase"])),
        net_amount=round(float(stats["net_amount"] or 0.0), 2),
        missing_ids=mapping.missing_ids,
        counts=_Counts(lambda: _count_customers_orders(raw, name, "order_id" in report_cols)),
        duplicates=_Counts(lambda: _count_duplicates(raw, name, list(report_cols))),
    )
    return Transactions(table=con.table(name), report=report, backend=con, is_view=src.reread)


#: Text that starts with a four-digit year and a month and day (any of ``-/.``): unambiguous.
_YEAR_FIRST = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:$|[ T])")


def parse_cutoff(value: Any, name: str = "cutoff") -> pd.Timestamp:
    """A cutoff instant as a naive `pandas.Timestamp` (aware values are converted to UTC).

    Accepts ISO 8601 text (``"2011-09-01"``, ``"2011-09-01 12:00"``, ``"20110901"``), other
    year-first text (``"2011/9/1"``), `datetime.date`, `datetime.datetime`,
    `numpy.datetime64` and `pandas.Timestamp`. Text with the day or the month first
    (``"01/09/2011"``) is refused: pandas would read it month-first, so a user who meant
    1 September would silently get 9 January. ``name`` is what the errors call the value
    (empty: the value alone, as after "Invalid value for '--as-of':").
    """
    it = f"{name} " if name else ""
    if isinstance(value, (bool, int, float)) or value is None:
        raise ValueError(
            f"{name or 'the value'} must be a date or datetime such as '2011-09-01', got "
            f"{value!r}"
        )
    if isinstance(value, str):
        text = value.strip()
        try:
            ts = pd.Timestamp(dt.datetime.fromisoformat(text))
        except ValueError:
            if _YEAR_FIRST.match(text) is None:
                raise ValueError(
                    f"{it}{value!r} is not a date written year first; write it as "
                    f"YYYY-MM-DD or 'YYYY-MM-DD HH:MM' (ISO 8601), e.g. '2011-09-01' "
                    f"(a day or month first, as in '01/09/2011', is ambiguous)"
                ) from None
            try:
                ts = pd.Timestamp(text)
            except (ValueError, TypeError):
                raise ValueError(
                    f"{it}{value!r} is not a date; write it as YYYY-MM-DD or "
                    f"'YYYY-MM-DD HH:MM' (ISO 8601), e.g. '2011-09-01'"
                ) from None
    elif isinstance(value, (dt.date, np.datetime64, pd.Timestamp)):
        ts = pd.Timestamp(value)
    else:
        raise ValueError(
            f"{name or 'the value'} must be a date or datetime such as '2011-09-01', got "
            f"{type(value).__name__}"
        )
    if ts is pd.NaT or pd.isna(ts):
        raise ValueError(f"{name or 'the value'} is missing (NaT); give a date such as "
                         f"'2011-09-01'")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def check_cutoff(
    report: ValidationReport, cutoff: Any, config: FeatureConfig | None = None, *,
    name: str = "cutoff", example: pd.Timestamp | None = None,
) -> pd.Timestamp:
    """Parse ``cutoff`` and check it against the data's date range; returns the cutoff.

    Raises `DataValidationError` when the cutoff is at or before the first event, or at or
    before the first purchase (the first row with ``amount >= 0``): features see only
    ``timestamp < cutoff`` and a customer is someone with a purchase before it, so no
    customer would exist. Warns `StaleDataWarning` when it is more than
    ``config.stale_after_days`` days after the last event. ``name`` is what the messages
    call the cutoff (``--as-of`` for `score`), ``example`` the date they suggest instead
    (default: the last event minus the churn horizon, a cutoff a backtest can use).
    """
    config = config or FeatureConfig()
    cut = parse_cutoff(cutoff)
    first, last = pd.Timestamp(report.first_event), pd.Timestamp(report.last_event)
    if cut <= first:
        suggestion = example if example is not None else max(
            (last - pd.Timedelta(days=config.churn_horizon_days)).normalize(),
            (first + pd.Timedelta(days=1)).normalize(),
        )
        raise DataValidationError(
            f"{name} {cut} is at or before the first event in {report.source} ({first}): "
            f"features see only events before it, so there would be no customers. "
            f"The data covers {first} to {last}; choose a {name} after {first.date()}, "
            f"e.g. {suggestion.date()}.",
            source=report.source,
        )
    buy = report.first_purchase
    if buy is None or cut <= pd.Timestamp(buy):
        where = ("has no purchase at all: every row has a negative amount (returns or "
                 "cancellations). Check the amount mapping and its sign"
                 if buy is None else
                 f"has no purchase before the cutoff: its first purchase (a row with amount "
                 f">= 0) is at {pd.Timestamp(buy)}; earlier rows are only returns. Choose a "
                 f"{name} after {pd.Timestamp(buy).date()}")
        raise DataValidationError(
            f"{name} {cut} leaves no customers: {report.source} {where}.",
            source=report.source,
        )
    gap = cut - last
    if gap > pd.Timedelta(days=config.stale_after_days):
        warn(
            f"cutoff {cut.date()} is {counted(gap.days, 'day')} after the last event in "
            f"{report.source} ({last}); the data may be stale (more than "
            f"{counted(config.stale_after_days, 'day')} old), "
            f"so every customer will look churned. Load newer data or use an earlier cutoff.",
            StaleDataWarning,
        )
    return cut


def _check_timestamp_format(raw: Any, fmt: str) -> None:
    """Raise DataValidationError, naming the flag and the code, when DuckDB cannot read with
    the strptime format ``fmt`` ('%H:%i'): its own error is a traceback from deep inside the
    profile query."""
    import duckdb

    try:
        raw.execute(f"SELECT try_strptime('', {_lit(fmt)})").fetchall()
        return
    except duckdb.Error as exc:
        text = str(exc).splitlines()[0]
    code = re.search(r"Unrecognized format for strftime/strptime: (%.)", text)
    codes = (" Write it with codes such as %d (day), %m (month), %Y (four-digit year), %y "
             "(two-digit year), %H (hour), %M (minute), %S (second), %b (month name), %p "
             "(AM/PM), e.g. '%d/%m/%Y %H:%M'.")
    if code is None and "Trailing format character" in text:
        why = "it ends in a lone '%' (write '%%' for a percent sign)"
    elif code is None:
        why = text.removeprefix("Invalid Input Error: ")
    elif code.group(1) == "%s":
        why = ("'%s' (seconds since 1970, Unix epoch time) is not a strptime code DuckDB "
               "has, and lifecast reads no numbers as times: convert the column first, e.g. "
               "in pandas df[col] = pd.to_datetime(df[col], unit='s'), and load the DataFrame")
        codes = ""
    else:
        why = f"{code.group(1)!r} is not a strptime code DuckDB knows"
    raise DataValidationError(
        f"{mapping_setting('timestamp_format', fmt)} is not a format lifecast can read: "
        f"{why}.{codes}"
    )


# --------------------------------------------------------------------------- sources


@dataclass
class _Source:
    """A source opened in the DuckDB connection as a relation of raw rows."""

    label: str
    relation: str  # name of a view/table of the raw rows
    types: dict[str, str]  # column -> DuckDB type in `relation`
    #: CSV only: column -> type DuckDB's sniffer guessed (the relation itself is all VARCHAR)
    sniffed: dict[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None  # CSV: format the sniffer detected
    date_format: str | None = None
    #: FROM clause with the raw columns plus ``__row`` (1-based) and maybe ``__file``;
    #: None when rows have no meaningful number (an Ibis expression)
    numbered: str | None = None
    numbered_single_thread: bool = False  # row_number() over a scan: needs threads=1
    row_note: str = ""  # how rows are numbered, for messages
    index_labels: pd.Index | None = None  # pandas: show index labels next to row numbers
    cleanup: list[str] = field(default_factory=list)
    #: the rows can be read again cheaply (Parquet, a DuckDB table): the contract table is a
    #: view over them rather than a copy
    reread: bool = False
    #: "file", or "frame" for rows held in memory (pandas, Ibis, a database table read
    #: through pandas): what a read error tells the user to check (`_read_error`)
    kind: str = "file"

    @property
    def is_text(self) -> bool:
        return bool(self.sniffed)


def _new_backend() -> DuckDBBackend:
    """A DuckDB database of our own, whose allocator returns freed memory to the system in
    the background (``allocator_background_threads``). Without it, memory DuckDB freed
    (dropped temporary tables, finished hash tables) stayed in its allocator while pandas
    allocated the result beside it: 12 snapshots over 10M rows peaked at 6.7 GB instead
    of 4.8 GB. A backend the caller passes in is left as configured. (Only a saving: where
    the platform's DuckDB refuses the setting, it runs without it.)

    It never downloads an extension (``autoinstall_known_extensions``): a ``duckdb:///``
    URL that names a SQLite file made DuckDB fetch its SQLite scanner from the internet.
    Nothing lifecast reads needs an extension that is not built in. On 2 or 3 cores it runs
    `MIN_DUCKDB_THREADS` threads (`raise_thread_floor`)."""
    import duckdb

    con = ibis.duckdb.connect()
    con.con.execute("SET autoinstall_known_extensions = false")
    with contextlib.suppress(duckdb.Error):
        con.con.execute("SET allocator_background_threads = true")
    raise_thread_floor(con.con)
    return con


#: The fewest worker threads lifecast runs DuckDB with on a machine of 2 or 3 cores
#: (`raise_thread_floor`).
MIN_DUCKDB_THREADS = 4


def raise_thread_floor(con: Any) -> None:
    """Give a DuckDB connection (``duckdb.DuckDBPyConnection``) at least
    `MIN_DUCKDB_THREADS` worker threads when DuckDB chose 2 or 3 (one per core).

    Why more threads than cores: DuckDB sizes the partitioning of its parallel hash
    aggregates and windows by its thread count, and the feature query's aggregates of
    ~10M (customer, order) and ~40M (customer, product) groups at 50M rows did less work
    split for 4 threads than for 2. Measured on 2 cores (`bench/features.py`, one process
    per run, alternated), at 50M rows: 14.7-15.2 s and 27-28 CPU-s with 4 threads against
    17.7-18.6 s and 33-34 CPU-s with 2, peak 3.3 against 3.7-3.8 GB (3 threads: 15.1 s,
    8 threads: 15.6 s); at 10M rows 2.8-3.0 s against 3.6-3.7 s; 12 snapshots over 10M
    rows no change (18-20 s either way). On one core the extra threads gained nothing
    (5.4-5.5 against 5.1-5.3 s at 10M rows), so one stays one, and a machine of 4 or more
    cores keeps DuckDB's choice. The features do not depend on it: sums are exact and
    every result is ordered (`tests/features/test_pipeline.py`)."""
    threads = int(con.execute("SELECT current_setting('threads')").fetchone()[0])
    if floored_threads(threads) != threads:
        con.execute(f"SET threads = {floored_threads(threads)}")


def floored_threads(threads: int) -> int:
    """The threads `raise_thread_floor` gives a DuckDB connection that has ``threads``."""
    return MIN_DUCKDB_THREADS if 2 <= threads < MIN_DUCKDB_THREADS else threads


def _view_name(kind: str) -> str:
    return f"lifecast_{kind}_{next(_counter)}"


def _q(name: str) -> str:
    """Quote a SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    """Quote a SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def _open_source(
    con: DuckDBBackend, source: Any, table: str | None, mapping: ColumnMapping
) -> _Source:
    """Make ``source`` a relation in ``con``; raise DataValidationError if it cannot be read."""
    if isinstance(source, pd.DataFrame):
        _no_table(table, "a pandas DataFrame")
        return _open_pandas(con, source, "pandas DataFrame", mapping)
    if isinstance(source, ibis.Table):
        _no_table(table, "an Ibis table")
        return _open_ibis(con, source)
    if isinstance(source, (Path, str)):
        text = str(source)
        if "://" in text:
            if text.startswith("duckdb://"):
                return _open_duckdb_file(con, _url_path(text), table, text)
            return _open_sqlalchemy(con, text, table, mapping)
        return _open_path(con, text, table)
    kind = type(source)
    library = kind.__module__.split(".")[0]
    convert = (" (convert it with .to_pandas())"
               if callable(getattr(source, "to_pandas", None)) else "")
    raise DataValidationError(
        f"cannot read transactions from a "
        f"{kind.__name__ if library == 'builtins' else f'{library} {kind.__name__}'}"
        f"{convert}: pass a file path, a pandas DataFrame, an Ibis table or a database URL "
        f"with table=",
    )


def _no_table(table: str | None, what: str) -> None:
    if table is not None:
        raise DataValidationError(
            f"table={table!r} is only for database sources (a DuckDB file or a database URL), "
            f"not for {what}; leave it out"
        )


def _refuse_sqlite_file(path: Path, text: str, table: str | None) -> None:
    """A SQLite database given as a path (or as a duckdb:/// URL) is read through its URL:
    say which one, instead of "unknown file type" or a DuckDB error."""
    try:
        with open(path, "rb") as f:
            is_sqlite = f.read(16) == b"SQLite format 3\x00"
    except OSError:
        return
    if is_sqlite:
        flag = f" --table {table}" if table else " --table <name>"
        raise DataValidationError(
            f"{text} is a SQLite database: read it as "
            f"--transactions sqlite:///{path.expanduser().resolve()}{flag} (in Python, the "
            f"URL with table=)",
            source=text,
        )


def _open_path(con: DuckDBBackend, text: str, table: str | None) -> _Source:
    path = Path(text).expanduser()
    lower = path.name.lower()
    is_glob = any(ch in text for ch in "*?[")
    if lower.endswith(_DUCKDB_SUFFIXES):
        return _open_duckdb_file(con, str(path), table, text)
    if not is_glob and path.is_file():
        _refuse_sqlite_file(path, text, table)
    _no_table(table, f"the file {text}")
    if is_glob or path.is_dir():
        pattern = str(path / "**" / "*.parquet") if path.is_dir() else text
        files = sorted(globlib.glob(pattern, recursive=True))
        if not files:
            raise DataValidationError(
                f"{text}: no Parquet files found"
                + (f" (looked for {pattern})" if path.is_dir() else " matching the pattern")
                + "; check the path",
                source=text,
            )
        if not all(f.lower().endswith(_PARQUET_SUFFIXES) for f in files):
            odd = next(f for f in files if not f.lower().endswith(_PARQUET_SUFFIXES))
            raise DataValidationError(
                f"{text}: a folder or glob must hold only Parquet files, found {odd}; "
                f"narrow the pattern (e.g. '*.parquet')",
                source=text,
            )
        _check_same_columns(files, text)
        return _open_parquet(con, pattern, text, multi=True)
    known = lower.endswith(_CSV_SUFFIXES + _PARQUET_SUFFIXES)
    if not path.exists() and (known or not path.suffix):
        raise DataValidationError(
            f"{text} does not exist; check the path (current folder: {Path.cwd()})", source=text
        )
    if lower.endswith(_CSV_SUFFIXES):
        return _open_csv(con, path, text)
    if lower.endswith(_PARQUET_SUFFIXES):
        return _open_parquet(con, str(path), text, multi=False)
    raise DataValidationError(
        f"{text}: unknown file type '{''.join(path.suffixes) or path.name}'; lifecast reads "
        f".csv, .csv.gz, .parquet (or a folder / glob of .parquet files), .duckdb with table=, "
        f"or a database URL such as sqlite:///file.db with table=. Convert the file to one "
        f"of these.",
        source=text,
    )


def _describe(raw: Any, relation_sql: str) -> dict[str, str]:
    rows = raw.execute(f"DESCRIBE SELECT * FROM {relation_sql}").fetchall()
    return {r[0]: r[1] for r in rows}


_READ_ADVICE = {
    "file": "Check that it is a valid file of that type.",
    "frame": "Check that each column holds values of one type (numbers, text or dates).",
    "database": "Check that the table can be read through this URL.",
}


def _read_error(label: str, exc: Exception, kind: str = "file") -> DataValidationError:
    """DuckDB's (or a driver's) error reading ``label``, first line only (the rest repeats
    the reader's options), with what to check for a source of this ``kind``."""
    cause = _driver_error(exc) if kind == "database" else None
    text = str(cause if cause is not None else exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "not utf-8 encoded" in text.lower():  # the reason is on the second line
        line = re.search(r"on Line: (\d+)", text)
        where = f" (line {line.group(1)} holds bytes that are not UTF-8)" if line else ""
        return _not_utf8(label, where)
    return DataValidationError(f"could not read {label}: {first}. {_READ_ADVICE[kind]}",
                               source=label)


def _driver_error(exc: BaseException) -> BaseException | None:
    """The database driver's own error behind ``exc`` (pandas and SQLAlchemy wrap it and
    put the SQL first, e.g. "Execution failed on sql 'SELECT ...'" before "permission
    denied for table sales"), or None."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        orig = getattr(e, "orig", None)  # sqlalchemy.exc.DBAPIError
        if isinstance(orig, BaseException):
            return orig
        e = e.__cause__ or e.__context__
    return None


def _not_utf8(label: str, where: str = "", encoding: str = "CP1252") -> DataValidationError:
    """A text file lifecast cannot decode: say so, and how to re-save it as UTF-8."""
    other = "-f LATIN1 or -f UTF-16" if encoding == "CP1252" else "-f CP1252 or -f LATIN1"
    return DataValidationError(
        f"could not read {label}: the file is not UTF-8 text{where}; lifecast reads CSV files "
        f"in UTF-8 (or UTF-16 with a little-endian byte-order mark). Re-save it as UTF-8, "
        f"e.g. iconv -f {encoding} -t UTF-8 in.csv > out.csv ({other} for files in those "
        f"encodings), or in pandas: pd.read_csv('in.csv', encoding='{encoding.lower()}')"
        f".to_csv('out.csv', index=False).",
        source=label,
    )


def _open_csv(con: DuckDBBackend, path: Path, label: str) -> _Source:
    import duckdb

    raw = con.con
    if path.stat().st_size == 0:
        raise DataValidationError(
            f"{label} is empty (0 bytes): no rows left to load; export the transactions again",
            source=label,
        )
    p = _lit(str(path))
    encoding = _csv_encoding(path, label)
    # DuckDB reads UTF-16 (little-endian only) when told; it does not look for the BOM
    enc = f", encoding = {_lit(encoding)}" if encoding != "utf-8" else ""
    # Excel's "sep=;" first line names the delimiter: skip it and use that one
    lines = _first_lines(path, encoding, 2)
    sep = _EXCEL_SEP.fullmatch(lines[0].rstrip("\r\n")) if lines else None
    if sep:
        enc += f", skip = 1, delim = {_lit(sep.group(1))}"
    start = 1 if sep else 0
    header = lines[start] if len(lines) > start else ""
    try:
        sniff = raw.execute(
            f"SELECT Columns, DateFormat, TimestampFormat, SkipRows, Delimiter "
            f"FROM sniff_csv({p}, header = true{enc})"
        ).fetchall()[0]
        one_column = len(sniff[0]) == 1 and any(d in header for d in _DELIMITERS)
        skipped = sniff[3] - start
        if skipped or one_column:  # skipped lines, or fell back to no delimiter: ragged rows
            delimiter = max(_DELIMITERS, key=header.count) if one_column else sniff[4]
            ragged = _ragged_csv(path, label, delimiter, skipped, encoding, start)
            assert ragged is not None
            raise ragged
        view = _view_name("src")
        raw.execute(
            f"CREATE TEMP VIEW {_q(view)} AS SELECT * FROM "
            f"read_csv({p}, header = true, all_varchar = true{enc})"
        )
        types = _describe(raw, _q(view))
    except duckdb.Error as exc:
        # with the delimiter given ('sep='), the sniffer fails on a row with more fields
        ragged = (_ragged_csv(path, label, sep.group(1), 0, encoding, start, only_odd=True)
                  if sep else None)
        raise (ragged or _read_error(label, exc)) from None
    sniffed = {c["name"]: c["type"] for c in sniff[0]}
    if list(sniffed) != list(types):  # should not happen; trust the real read
        sniffed = dict.fromkeys(types, "VARCHAR")
    return _Source(
        label=label,
        relation=_q(view),
        types=types,
        sniffed=sniffed,
        date_format=sniff[1],
        timestamp_format=sniff[2],
        numbered=f"(SELECT row_number() OVER () AS __row, * FROM {_q(view)})",
        numbered_single_thread=True,
        row_note="rows are numbered from 1, not counting the "
                 + ("'sep=' line and the header line" if sep else "header line"),
        cleanup=[f"DROP VIEW IF EXISTS {_q(view)}"],
    )


def _open_text(path: Path, encoding: str = "utf-8", mode: str = "rt") -> Any:
    import gzip

    opener = gzip.open if path.name.lower().endswith(".gz") else open
    if mode == "rb":
        return opener(path, "rb")
    return opener(path, mode, newline="", encoding=encoding, errors="replace")


def _csv_encoding(path: Path, label: str) -> str:
    """"utf-16" for a CSV starting with the UTF-16 little-endian byte-order mark (what Excel
    writes as "Unicode text"), else "utf-8"; a big-endian UTF-16 file, which DuckDB cannot
    decode, is an error. Other encodings (cp1252, latin-1) carry no mark: DuckDB's error on
    the first byte that is not UTF-8 becomes `_not_utf8`."""
    import codecs

    with _open_text(path, mode="rb") as fh:
        start = fh.read(2)
    if start == codecs.BOM_UTF16_LE:
        return "utf-16"
    if start == codecs.BOM_UTF16_BE:
        raise _not_utf8(label, " but UTF-16 big-endian", encoding="UTF-16")
    return "utf-8"


#: the first line Excel writes to name a CSV's delimiter ("sep=;"), maybe after a UTF-8 BOM
_EXCEL_SEP = re.compile(r'\ufeff?"?sep=(.)"?', re.IGNORECASE)


def _first_lines(path: Path, encoding: str = "utf-8", n: int = 1) -> list[str]:
    """The first ``n`` lines (fewer if the file has fewer), with their line ends."""
    with _open_text(path, encoding) as fh:
        return [line for line in itertools.islice(fh, n)]


def _ragged_csv(
    path: Path, label: str, delimiter: str, skipped: int, encoding: str = "utf-8",
    start: int = 0, *, only_odd: bool = False,
) -> DataValidationError | None:
    """Explain a CSV whose rows do not all have the header's number of fields: lines above
    the header (DuckDB's sniffer ``skipped`` that many after the first ``start``, Excel's
    'sep=' line), else rows with more or fewer fields than the header. With ``only_odd``,
    None when no row has another number of fields than the header."""
    import csv

    odd: list[str] = []
    with _open_text(path, encoding) as fh:
        above = [fh.readline() for _ in range(start + skipped)][start:]
        reader = csv.reader(fh, delimiter=delimiter or ",")
        header = next(reader, [])
        header_line = start + skipped + 1
        for i, row in enumerate(reader):
            if row and len(row) != len(header):
                odd.append(f"line {header_line + reader.line_num - 1} has {len(row)}")
                if len(odd) == _EXAMPLES:
                    break
            if skipped and i == _FORMAT_SNIFF_ROWS:  # enough to tell a header from a row
                break
    if skipped and not odd:
        first = next((line.strip() for line in above if line.strip()), "")
        lines = "line 1" if skipped == 1 else f"lines 1 to {skipped}"
        shown = delimiter.join(header)
        return DataValidationError(
            f"cannot load transactions from {label}: the header is not the first line: line "
            f"{header_line} ({shown[:60] + ('...' if len(shown) > 60 else '')!r}) looks like "
            f"it, and {lines} above it are no data (e.g. {first[:60]!r}). Delete the lines "
            f"above the header and load the file again (e.g. tail -n +{header_line} "
            f"{path.name} > fixed.csv).",
            source=label,
        )
    if only_odd and not odd:
        return None
    if odd:
        detail = (
            f"the header (line {header_line}) has {len(header)} fields but {'; '.join(odd)}. "
            f"Quote values that contain the delimiter {delimiter!r} (e.g. a decimal comma) "
            f"or fix those rows"
        )
    else:
        detail = (
            f"DuckDB reads it as one column although the header (line {header_line}) holds "
            f"{delimiter!r}; check that every row uses the same delimiter"
        )
    return DataValidationError(
        f"cannot load transactions from {label}: its rows do not all have the same number "
        f"of fields: {detail}.",
        source=label,
    )


def _check_same_columns(files: Sequence[str], label: str) -> None:
    """A folder or glob is one data set split into Parquet files: every file must have the
    same columns (DuckDB would read the first file's and fail later, in its own words).
    Reads each file's footer only."""
    import pyarrow.parquet as pq

    first = pq.read_schema(files[0]).names
    for f in files[1:]:
        names = pq.read_schema(f).names
        if set(names) != set(first):
            only = sorted(set(names) ^ set(first))
            raise DataValidationError(
                f"{label}: a folder or glob is read as one data set split into Parquet files "
                f"with the same columns, but {f} and {files[0]} differ in "
                f"{', '.join(only[:10])}{' ...' if len(only) > 10 else ''} "
                f"({len(files)} files); give one file, or a pattern matching only the parts "
                f"of one data set",
                source=label,
            )


def _open_parquet(con: DuckDBBackend, pattern: str, label: str, *, multi: bool) -> _Source:
    import duckdb

    raw = con.con
    p = _lit(pattern)
    view = _view_name("src")
    try:
        raw.execute(f"CREATE TEMP VIEW {_q(view)} AS SELECT * FROM read_parquet({p})")
        types = _describe(raw, _q(view))
    except duckdb.Error as exc:
        raise _read_error(label, exc) from None
    extra = ", filename = true" if multi else ""
    file_col = ", filename AS __file" if multi else ""
    return _Source(
        label=label,
        relation=_q(view),
        types=types,
        numbered=(
            f"(SELECT file_row_number + 1 AS __row{file_col}, * "
            f"FROM read_parquet({p}, file_row_number = true{extra}))"
        ),
        row_note="rows are numbered from 1 within each file",
        cleanup=[f"DROP VIEW IF EXISTS {_q(view)}"],
        reread=True,
    )


def _open_pandas(
    con: DuckDBBackend, df: pd.DataFrame, label: str, mapping: ColumnMapping
) -> _Source:
    if not all(isinstance(c, str) for c in df.columns):
        df = df.rename(columns=str)  # cheap: shares the data
    used = _mapped_columns(mapping, list(df.columns)) or []
    _check_frame_columns(df, mapping, used, label)
    df = _decimals_as_floats(df, used)
    import duckdb

    name = _view_name("pandas")
    try:
        con.con.register(name, df)
    except duckdb.Error:
        # DuckDB 2.0 fails with "std::bad_cast" on columns that are views with a negative
        # stride (df.iloc[::-1]); a copy lays them out forwards. Anything else fails again
        # and is reported as the frame's error.
        try:
            con.con.register(name, df.copy(deep=True))
        except duckdb.Error as exc:
            raise _read_error(label, exc, "frame") from None
    labels = None if isinstance(df.index, pd.RangeIndex) and df.index.start == 0 else df.index
    return _Source(
        label=label,
        relation=_q(name),
        types=_describe(con.con, _q(name)),
        numbered=f"(SELECT row_number() OVER () AS __row, * FROM {_q(name)})",
        numbered_single_thread=True,
        row_note="rows are numbered from 1 in frame order",
        index_labels=labels,
        cleanup=[f"DROP VIEW IF EXISTS {_q(name)}"],
        kind="frame",
    )


def _check_frame_columns(df: pd.DataFrame, mapping: ColumnMapping, used: Sequence[str],
                         label: str) -> None:
    """Refuse a frame whose mapped columns cannot be told apart or are in its index, with
    a message that says so: a repeated column name failed deep in pandas ("'DataFrame'
    object has no attribute 'dtype'"), and a mapped column that is an index level was
    reported as missing from the data, with "set --timestamp-col" as the advice."""
    repeated = [c for c in used if (df.columns == c).sum() > 1]
    if repeated:
        raise DataValidationError(
            f"{label}: " + "; ".join(f"{int((df.columns == c).sum())} columns are named {c!r}"
                                     for c in repeated)
            + ", so which one the mapping means is unclear: drop or rename the others "
            "(df.loc[:, ~df.columns.duplicated()] keeps the first of each name)",
            source=label,
        )
    levels = [str(n) for n in df.index.names if n is not None]
    in_index = [user for user in mapping.present().values()
                if _resolve(user, list(df.columns)) is None and _resolve(user, levels)]
    if in_index:
        names = ", ".join(repr(n) for n in in_index)
        raise DataValidationError(
            f"{label}: {names} {'is' if len(in_index) == 1 else 'are'} in the frame's "
            f"index, not among its columns: pass df.reset_index() to make "
            f"{'it a column' if len(in_index) == 1 else 'them columns'}",
            source=label,
        )


def _mapped_columns(mapping: ColumnMapping, names: Sequence[str], *,
                    all_or_none: bool = False) -> list[str] | None:
    """The columns of ``names`` the mapping uses, including those an amount expression
    names, each once. A column not found is left out (`_plan` reports it); with
    ``all_or_none``, the result is then None, meaning "read them all", so that the error
    can list every column the source has."""
    used: list[str] = []
    for contract, user in mapping.present().items():
        col = _resolve(user, names)
        if col is None and contract == "amount":
            try:
                tree = sqlglot.parse_one(user, read="duckdb")
            except sqlglot.errors.SqlglotError:
                tree = None
            cols = [] if tree is None else [_resolve(n.name, names)
                                            for n in tree.find_all(exp.Column)]
            if all_or_none and (not cols or None in cols):
                return None
            used += [c for c in cols if c is not None]
        elif col is not None:
            used.append(col)
        elif all_or_none:
            return None
    return list(dict.fromkeys(used))


def _decimals_as_floats(df: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``df`` with each of ``columns`` that holds `decimal.Decimal` objects (what
    ``pd.read_sql`` returns for NUMERIC) as float64; ``df`` itself when there is none.
    DuckDB types an object column from a sample of its values, DECIMAL(3, 2) for '1.50', and
    fails on a wider value further down."""
    import decimal

    floats = {}
    for col in dict.fromkeys(columns):
        values = df[col]
        if values.dtype != object:
            continue
        first = next((v for v in values.array if not _is_missing(v)), None)
        if isinstance(first, decimal.Decimal):
            with contextlib.suppress(ValueError, TypeError):  # mixed with text: as it is
                floats[col] = values.astype("float64")
    return df.assign(**floats) if floats else df


def _is_missing(value: Any) -> bool:
    """None, pandas' NA or NaN (a float or a Decimal) in an object column."""
    if value is None or value is pd.NA:
        return True
    try:
        return bool(value != value)  # NaN only
    except (TypeError, ValueError, ArithmeticError):  # an array, a signalling NaN
        return False


def _ibis_owner(table: ibis.Table) -> DuckDBBackend | None:
    """The DuckDB backend that alone holds every table ``table`` reads, if there is one."""
    op = table.op()
    if op.find(ops.InMemoryTable):
        return None
    owners = {id(t.source): t.source for t in op.find(ops.DatabaseTable)}
    owner = next(iter(owners.values())) if len(owners) == 1 else None
    return owner if isinstance(owner, DuckDBBackend) else None


def _open_ibis(con: DuckDBBackend, table: ibis.Table) -> _Source:
    name = _view_name("ibis")
    if _ibis_owner(table) is con:  # same connection: a temporary view, no copy
        con.con.execute(f"CREATE TEMP VIEW {_q(name)} AS {con.compile(table)}")
    else:  # in-memory tables, another connection or engine: bring the rows over as Arrow
        con.con.register(name, table.to_pyarrow())
    return _Source(
        label="Ibis table",
        relation=_q(name),
        types=_describe(con.con, _q(name)),
        cleanup=[f"DROP VIEW IF EXISTS {_q(name)}"],
        kind="frame",
    )


def _url_path(url: str) -> str:
    """The file of a ``duckdb:///path`` URL (SQLAlchemy style: four slashes = absolute)."""
    path = url.split("://", 1)[1]
    path = path[1:] if path.startswith("/") else path
    path = path.split("?", 1)[0]
    if not Path(path).exists() and Path("/" + path).exists():
        path = "/" + path
    return path


def _split_table(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return (schema or None), name


def _open_duckdb_file(con: DuckDBBackend, path: str, table: str | None, label: str) -> _Source:
    import duckdb

    if table is None:
        raise DataValidationError(
            f"{label} is a database: say which table holds the transactions with "
            f"table='name' (--table name)",
            source=label,
        )
    full = f"{label} table {table}"
    if not Path(path).exists():
        raise DataValidationError(f"{path} does not exist; check the path", source=full)
    _refuse_sqlite_file(Path(path), label, table)
    alias = _view_name("db")
    raw = con.con
    try:
        raw.execute(f"ATTACH {_lit(path)} AS {_q(alias)} (READ_ONLY)")
    except duckdb.Error as exc:
        raise _read_error(full, exc) from None
    cleanup = [f"DETACH {_q(alias)}"]
    schema, name = _split_table(table)
    found = raw.execute(
        "SELECT schema_name, table_name, true FROM duckdb_tables() WHERE database_name = ? "
        "UNION ALL SELECT schema_name, view_name, false FROM duckdb_views() "
        "WHERE database_name = ? AND NOT internal",
        [alias, alias],
    ).fetchall()
    match = [
        (s, t, is_table)
        for s, t, is_table in found
        if t.lower() == name.lower() and (schema is None or s == schema)
    ]
    if not match:
        for stmt in cleanup:
            raw.execute(stmt)
        have = ", ".join(sorted(t if s == "main" else f"{s}.{t}" for s, t, _ in found))
        raise DataValidationError(
            f"{path} has no table {table!r}; its tables are: {have or '(none)'}. Pass one as "
            f"table= (--table).",
            source=full,
        )
    schema_name, table_name, is_table = match[0]
    relation = f"{_q(alias)}.{_q(schema_name)}.{_q(table_name)}"
    return _Source(
        label=full,
        relation=relation,
        types=_describe(raw, relation),
        numbered=(f"(SELECT rowid + 1 AS __row, * FROM {relation})" if is_table else None),
        row_note="rows are numbered by DuckDB rowid + 1",
        cleanup=cleanup,
        reread=True,
    )


def _missing_sqlite_file(url: Any) -> str | None:
    """The database file of a ``sqlite:///file.db`` URL when that file does not exist (SQLite
    would create it, empty, on connecting); None for other databases, in-memory SQLite and
    ``file:`` URIs (``?uri=true``), whose options may say how to open them."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    uri = str(url.query.get("uri", "")).lower() in ("true", "1")
    if not database or database == ":memory:" or uri or database.startswith("file:"):
        return None
    return None if Path(database).exists() else database


def _open_sqlalchemy(
    con: DuckDBBackend, url: str, table: str | None, mapping: ColumnMapping
) -> _Source:
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(url)
        shown = masked_url(engine.url)
    except Exception as exc:  # bad URL or missing driver
        raise DataValidationError(
            f"cannot open database URL {masked_url(url)!r}: {exc}. {driver_hint(url)}",
        ) from None
    if table is None:
        raise DataValidationError(
            f"{shown} is a database: say which table holds the transactions with "
            f"table='name' (--table name)",
            source=shown,
        )
    label = f"{shown} table {table}"
    missing = _missing_sqlite_file(engine.url)
    if missing is not None:  # as for a DuckDB file; connecting would create an empty one
        engine.dispose()
        raise DataValidationError(f"{missing} does not exist; check the path", source=label)
    schema, name = _split_table(table)
    try:
        inspector = sa.inspect(engine)
        names = inspector.get_table_names(schema=schema) + inspector.get_view_names(schema=schema)
        with contextlib.suppress(NotImplementedError):  # PostgreSQL and Oracle have them
            names += inspector.get_materialized_view_names(schema=schema)
        if name not in names:
            listed = sorted(f"{schema}.{n}" if schema else n for n in names)
            where = f" in schema {schema!r}" if schema else ""
            elsewhere = _tables_elsewhere(inspector, schema, name)
            hint = (f" A table of that name is in another schema: pass "
                    f"{' or '.join(elsewhere)} as table= (--table)." if elsewhere else "")
            raise DataValidationError(
                f"{shown} has no table {table!r}{where}.{hint} Its tables{where} are: "
                f"{', '.join(listed) or '(none)'}. Pass one of them as table= (--table).",
                source=label,
            )
        # only the columns the mapping reads (a wide table costs memory for nothing); all of
        # them when one is not found, so that the error lists what the table has
        have = [c["name"] for c in inspector.get_columns(name, schema=schema)]
        df = pd.read_sql_table(name, engine, schema=schema,
                               columns=_mapped_columns(mapping, have, all_or_none=True))
    except DataValidationError:
        raise
    except Exception as exc:
        raise _read_error(label, exc, "database") from None
    finally:
        engine.dispose()
    src = _open_pandas(con, df, label, mapping)
    src.row_note = "rows are numbered from 1 in the order the database returned them"
    return src


def _tables_elsewhere(inspector: Any, schema: str | None, name: str) -> list[str]:
    """``schema.table`` for each table or view called ``name`` (in any case) in the
    database's other schemas (PostgreSQL's, for one): a name without its schema is looked
    up in the default schema only. [] when the database has no schemas to list."""
    found = []
    try:
        schemas = inspector.get_schema_names()
        default = inspector.default_schema_name
    except Exception:  # noqa: BLE001 - only a hint: no schemas, no hint
        return []
    for other in schemas:
        if other in (schema, default) or other in ("information_schema", "pg_catalog") \
                or other.startswith("pg_"):
            continue
        try:
            names = (inspector.get_table_names(schema=other)
                     + inspector.get_view_names(schema=other))
        except Exception:  # noqa: BLE001 - a schema this role may not read
            continue
        found += [f"{other}.{n}" for n in names if n.casefold() == name.casefold()]
    return sorted(found)


# --------------------------------------------------------------------------- planning


@dataclass
class _Column:
    """How one contract column is computed from raw source columns (all SQL over raw)."""

    contract: str
    label: str  # source column or expression, for the report
    value: str  # SQL of the cleaned value
    raw: tuple[str, ...]  # source columns shown in examples
    #: SQL predicate marking a row (with a customer id) whose value is bad, or None
    bad: str | None = None
    problem: str = ""  # "... have <problem>"
    hint: str = ""
    #: names a further check of the same column (`_Plan.checks`); "" for the column's own
    check: str = ""
    #: ``bad`` over the cleaned row's contract columns, for the profile when that is cheaper
    #: than re-computing them from the raw ones (the examples query reads raw rows: ``bad``)
    profile_bad: str | None = None

    @property
    def key(self) -> str:
        """Names the check in the profile's and the examples' results."""
        return f"{self.contract}_{self.check}" if self.check else self.contract


@dataclass
class _Plan:
    columns: list[_Column]
    integer_ids: bool
    cid_not_integer: str  # predicate: an integer-looking id column holds another value
    timestamp_format: str | None
    timestamp_is_text: bool
    #: further checks of contract columns (each with its own ``bad``), not columns
    checks: list[_Column] = field(default_factory=list)
    #: when other candidate formats read the first rows too: the one used and those,
    #: checked on every row by the profile (`_settle_timestamp_format`); else []
    timestamp_candidates: list[str] = field(default_factory=list)
    #: text columns of the amount whose first values are checked for '.' thousands groups
    #: ('2.950' for 2950: `_warn_thousands`); [] with ``decimal_comma``
    amount_texts: list[str] = field(default_factory=list)
    #: predicate: the raw text of the customer id has a tab in it (`_customer_sql`)
    cid_tabbed: str = "false"

    def get(self, contract: str) -> _Column:
        return next(c for c in self.columns if c.contract == contract)

    @property
    def checked(self) -> list[_Column]:
        """Everything the profile counts bad rows of: columns with a ``bad``, then checks."""
        return [c for c in self.columns if c.bad] + self.checks


_INT_TYPES = {
    "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT",
    "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT",
}  # fmt: skip
_FLOAT_TYPES = {"FLOAT", "DOUBLE", "REAL"}
_TS_TYPES = {"TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATETIME"}
#: nanosecond times, naive or aware (read as UTC): floored to the contract's microseconds
_NS_TYPES = {"TIMESTAMP_NS", "TIMESTAMPTZ_NS", "TIMESTAMP_NS WITH TIME ZONE"}


def _kind(duck_type: str) -> str:
    """Coarse class of a DuckDB type: int, float, text, timestamp, timestamptz, date, other."""
    t = duck_type.upper()
    if t in _INT_TYPES:
        return "int"
    if t in _FLOAT_TYPES or t.startswith("DECIMAL"):
        return "float"
    if t.startswith("VARCHAR") or t.startswith("ENUM") or t in {"NULL", '"NULL"'}:
        return "text"
    if t in _TS_TYPES:
        return "timestamp"
    if t in {"TIMESTAMP WITH TIME ZONE", "TIMESTAMPTZ", "TIMESTAMPTZ_NS",
             "TIMESTAMP_NS WITH TIME ZONE"}:
        return "timestamptz"
    if t == "DATE":
        return "date"
    return "other"


def _resolve(name: str, columns: Sequence[str]) -> str | None:
    """The source column called ``name`` (exactly, else case-insensitively if unique)."""
    if name in columns:
        return name
    folded = [c for c in columns if c.casefold() == name.casefold()]
    return folded[0] if len(folded) == 1 else None


def _column_list(columns: Sequence[str], limit: int = 40) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns)} columns)" if len(columns) > limit else "")


def _plan(
    src: _Source, mapping: ColumnMapping, *, integer_ids: bool = True,
    ts_formats: Sequence[str] = (), ts_example: Any = None, tab_ids: bool = False,
) -> _Plan:
    """Resolve the mapping against the source's columns and write the SQL of each contract
    column. Structural problems (missing columns, a bad amount expression, a column of an
    unusable type) are all collected and raised together. Text timestamps are read with
    ``mapping.timestamp_format``, else the first of ``ts_formats`` (the candidates of
    `_timestamp_candidates`; the others are checked too), else as before. ``ts_example``
    is a value of a timestamp column of numbers (`_numeric_timestamp_example`), for its
    message; ``tab_ids``: text customer ids are trimmed of tabs as well (`_customer_sql`)."""
    problems: list[str] = []
    names = list(src.types)
    wanted = mapping.present()
    resolved: dict[str, str] = {}
    amount_ast: exp.Expression | None = None
    for contract, user in wanted.items():
        col = _resolve(user, names)
        if col is not None:
            resolved[contract] = col
        elif contract == "amount":
            amount_ast = _amount_ast(user, names, problems)
        else:
            problems.append(
                f"column {user!r} (mapped to {contract}) is not in the data; set "
                f"{mapping_key(contract)} to the right column"
            )
    roles: dict[str, list[str]] = {}
    for contract, col in resolved.items():
        roles.setdefault(col, []).append(contract)
    for col, shared in roles.items():
        if len(shared) > 1:  # e.g. --order-col on the customer column: one order each
            settings = " and ".join(named(MAPPING_FLAGS[c], f"{c}=") for c in shared)
            problems.append(
                f"column {col!r} is given as {' and '.join(shared)} ({settings}): each "
                f"contract column needs a column of its own; map the right column, or "
                f"leave an optional one unset"
            )
    if problems:
        _raise(src, problems, f"Columns in {src.label}: {_column_list(names)}")

    columns: list[_Column] = []
    cid_col = resolved["customer_id"]
    cid, cid_int, cid_not_int, cid_bad, cid_checks, cid_tabbed = _customer_sql(
        src, cid_col, integer_ids, tab_ids, mapping.missing_ids, mapping.decimal_comma)
    cid = _without_listed(cid, cid_int, mapping.missing_ids)
    columns.append(
        _Column(
            "customer_id", cid_col, cid, (cid_col,), bad=cid_bad,
            problem="a customer id that is a number but not a whole number",
            hint=(
                "Customer ids must be whole numbers or text, and a fraction names no "
                f"customer: fix or remove these rows, or set {mapping_key('customer_id')} to the "
                f"customer id column."
            ),
        )
    )
    ts_col = resolved["timestamp"]
    candidates = [] if mapping.timestamp_format else list(ts_formats)
    ts_fmt = mapping.timestamp_format or (candidates[0] if candidates else None)
    ts, ts_format, ts_text = _timestamp_sql(src, ts_col, ts_fmt, problems, ts_example)
    ts_hint = (
        _text_timestamp_hint(ts_format)
        if ts_text
        else "Fill in or remove the rows without a timestamp."
    )
    columns.append(
        _Column(
            "timestamp", ts_col, ts, (ts_col,), bad=f"({ts}) IS NULL",
            problem="a timestamp that is missing or cannot be parsed", hint=ts_hint,
        )
    )
    early = f"{{t}} < TIMESTAMP '{_EARLIEST}'"
    early_check = _Column(
        "timestamp", ts_col, ts, (ts_col,), check="early",
        bad=early.format(t=f"({ts})"), profile_bad=early.format(t="timestamp"),
        problem=f"a timestamp before {_EARLIEST}",
        hint=("No transaction is that old: check how the column was written (a year such as "
              "0010 is a two-digit year read as a four-digit one), and fix or remove these "
              "rows."),
    )  # the hint of text timestamps is `_early_advice`, which looks at the examples
    comma = mapping.decimal_comma
    if "amount" in resolved:
        amount_sql = _numeric_sql(src, resolved["amount"], "amount", problems, comma)
        amount_label, amount_raw = resolved["amount"], (resolved["amount"],)
    else:
        refs: list[str] = []
        amount_sql = _amount_sql(amount_ast, src, names, refs, problems, comma)
        amount_label, amount_raw = wanted["amount"], tuple(dict.fromkeys(refs))
    columns.append(
        _Column(
            "amount", amount_label, amount_sql, amount_raw,
            bad=f"({amount_sql}) IS NULL OR NOT isfinite({amount_sql})",
            problem="an amount that is missing or not a number",
            hint=(
                "Fix or remove these rows, or map amount to another column or expression "
                f"with {mapping_key('amount')}; {_decimal_rule(comma)}"
            ),
        )
    )
    # counted by the profile's one aggregate query with the rest, on the amount it computes
    # anyway: no scan of its own, no second parse of the text
    scaled = f"({amount_label}) / 100" if "amount" not in resolved else (
        f"{_ident(amount_label)} / 100"
    )
    too_big = f"isfinite({{a}}) AND abs({{a}}) >= {MONEY_LIMIT}"
    checks = [
        *(_Column("customer_id", cid_col, cid, (cid_col,), check=check, bad=bad,
                  profile_bad=profile_bad, problem=problem, hint=hint)
          for check, bad, profile_bad, problem, hint in cid_checks),
        early_check,
        _Column(
            "amount", amount_label, amount_sql, amount_raw, check="size",
            bad=too_big.format(a=amount_sql), profile_bad=too_big.format(a="amount"),
            problem="an amount of 10^12 or more (in absolute value)",
            hint=(
                "lifecast's money type holds values below 10^12 per order. If the amounts "
                f"are in minor units (e.g. cents), scale them, e.g. "
                f"{mapping_setting('amount', scaled)}; otherwise fix or remove these rows."
            ),
        )
    ]
    for contract in CONTRACT_COLUMNS[3:]:
        if contract not in resolved:
            continue
        col = resolved[contract]
        if contract in ("quantity", "discount"):
            value = _numeric_sql(src, col, contract, problems, comma)
            raw_text = _raw_is_text(src, col)
            bad = f"{_nonblank(col)} AND ({value}) IS NULL" if raw_text else None
            columns.append(
                _Column(
                    contract, col, value, (col,), bad=bad,
                    problem=f"a {contract} that is not a number",
                    hint=f"Fix these values, or leave {contract} unmapped; "
                         f"{_decimal_rule(comma)}",
                )
            )
        elif contract in _INTEGER_KEYS and src.types[col].upper() in _BIGINT_SAFE:
            # kept as integers: only grouped and counted, never shown, and grouping on
            # BIGINT instead of VARCHAR ran the 50M-row feature query 18% faster in 15%
            # less memory (bench/README.md "Feature pipeline")
            columns.append(_Column(contract, col, f"CAST({_q(col)} AS BIGINT)", (col,)))
        else:
            columns.append(_Column(contract, col, _text_sql(src, col), (col,)))
    if problems:
        _raise(src, problems, f"Columns in {src.label}: {_column_list(names)}")
    grouped = [] if comma else [c for c in amount_raw if _raw_is_text(src, c)]
    return _Plan(columns, cid_int, cid_not_int, ts_format, ts_text, checks,
                 candidates if len(candidates) > 1 else [], grouped, cid_tabbed)


def _ident(name: str) -> str:
    """A column name as an amount expression writes it: double-quoted unless it is a plain
    identifier."""
    return name if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else _q(name)


def _text_timestamp_hint(fmt: str | None, example: str = "'%d/%m/%Y %H:%M'") -> str:
    """What to do about text timestamps that did not parse (read with ``fmt``, if any):
    pass the format, e.g. ``example`` (a quoted format)."""
    used = f" (it was read with the format {fmt!r})" if fmt else ""
    return (
        f"The column holds text{used}: pass its format with {mapping_key('timestamp_format')}, "
        f"e.g. {example}, or fix the values."
    )


def _raw_is_text(src: _Source, col: str) -> bool:
    return _kind(src.types[col]) == "text"


def _nonblank(col: str) -> str:
    return f"(trim(CAST({_q(col)} AS VARCHAR)) <> '')"


#: 2^53: a float holds every whole number below it exactly, not every one above it
_FLOAT_EXACT = 2**53
#: the further checks of customer ids (`_customer_sql`): (check, problem, hint)
_SCIENTIFIC_ID = (
    "sci", "a customer id written in scientific notation",
    "A spreadsheet wrote these ids in scientific notation (as Excel does with long numbers), "
    "which keeps only their first digits, so different customers now share an id: "
    "re-export the column as text (in Excel, format it as Text, or as a Number with 0 "
    "decimals, before saving), or set {flag} to the customer id column.",
)
_INEXACT_ID = (
    "inexact", f"a customer id of 2^53 ({_FLOAT_EXACT:,}) or more in a floating-point column",
    "A floating-point number holds whole numbers exactly only below 2^53, so these ids may "
    "have lost their last digits and neighbouring customers may share one: read the ids "
    "from the original data as integers or text, not floats (in pandas, e.g. "
    "dtype={{'{col}': str}} or .astype('Int64')).",
)


def _customer_sql(
    src: _Source, col: str, integer_ids: bool, tabs: bool = False, listed: Sequence[str] = (),
    decimal_comma: bool = False,
) -> tuple[str, bool, str, str | None, list[tuple[str, str, str | None, str, str]], str]:
    """(value SQL, is integer, predicate 'not an integer', predicate 'bad' or None, further
    checks, predicate 'has a tab') for the customer id column; each check is (name, bad,
    profile_bad or None, problem, hint). Blank text and missing-value markers
    (`_MISSING_IDS`) are missing; so are the ``listed`` ids (``mapping.missing_ids``), which
    `_without_listed` takes out of the value, and which here only keep a text such as
    'GUEST' from making a column of integer ids text. White space around an id is no part
    of it: DuckDB's trim() takes spaces and NBSP but not tabs, which text ids are trimmed of
    (`_trim_id`) only with ``tabs`` (the profile counts the ids with a tab: 'has a tab'), as
    that costs on every row; integer ids are read through casts that skip tabs themselves."""
    c = _q(col)
    kind = _kind(src.types[col])
    declared = _kind(src.sniffed.get(col, src.types[col]))
    tabbed = f"contains(CAST({c} AS VARCHAR), chr(9))" if kind == "text" else "false"

    def check(spec: tuple[str, str, str], bad: str, profile_bad: str | None = None) -> tuple:
        name, problem, hint = spec
        return (name, bad, profile_bad, problem,
                hint.format(flag=mapping_key("customer_id"), col=col))

    if integer_ids and kind == "int":
        value = f"TRY_CAST({c} AS BIGINT)"
        return value, True, f"({c} IS NOT NULL AND {value} IS NULL)", None, [], tabbed
    if kind == "float":
        # always integers: a float id column is an integer column with gaps (pandas), and
        # falling back to text would make customer 12365 the string '12365.0' (a lookup of
        # '12365' finds nothing); a fraction is no customer id and stops the load, and so
        # does an id too large for a float to hold exactly
        d = f"CAST({c} AS DOUBLE)"
        value, bad = _whole_id(d)
        inexact = check(
            _INEXACT_ID, f"(isfinite({d}) AND abs({d}) >= {_FLOAT_EXACT})",
            f"(customer_id >= {_FLOAT_EXACT} OR customer_id <= -{_FLOAT_EXACT})")
        return value, True, "false", bad, [inexact], tabbed
    # Text is looked up among the missing-value markers only where it is no number (in a
    # CASE branch, which DuckDB evaluates for those rows only).
    t = f"trim({c})"
    if integer_ids and kind == "text" and declared == "int":  # CSV column sniffed as integers
        value = f"TRY_CAST({t} AS BIGINT)"  # (the cast itself skips tabs around the digits)
        back = f"CAST({value} AS VARCHAR)"
        not_int = (
            f"(CASE WHEN {value} IS NULL THEN NOT {_missing_id(_trim_id(c), listed)} "
            f"WHEN {back} = {t} THEN false ELSE {back} <> {_trim_id(c)} END)"
        )  # the cast must round-trip: '007' and '+7' stay strings
        return f"(CASE WHEN NOT {not_int} THEN {value} END)", True, not_int, None, [], tabbed
    if integer_ids and kind == "text" and declared == "float":
        # a CSV whose ids were written as floats ('17850.0', typical of an export from
        # pandas, where an id column with a gap is float64): the same customers as 17850,
        # else the store and the service hold '17850.0' and a lookup of '17850' finds
        # nothing. Text that is no number makes the ids text; a fraction stops the load.
        # The id is the text's own digits (a BIGINT cast of '9007199254740993.0' is exact;
        # through a DOUBLE, ids above 2^53 merged with their neighbours); the DOUBLE only
        # tells numbers from other text. Scientific notation ('4.91235E+11', '1E2') is a
        # spreadsheet's rounding of the ids: an error of its own.
        t = _trim_id(c)
        number = f"TRY_CAST({t} AS DOUBLE)"  # 'nan' is NaN (missing), other markers NULL
        not_int = (f"(CASE WHEN {number} IS NULL THEN NOT {_missing_id(t, listed)} "
                   f"ELSE false END)")
        sci = f"(contains({t}, 'e') OR contains({t}, 'E'))"
        # nothing but zeros after the point (TRY_CAST rounds '1.5' to 2)
        whole = f"(rtrim(split_part({t}, '.', 2), '0') = '' AND NOT {sci})"
        exact = f"CASE WHEN {whole} THEN TRY_CAST({t} AS BIGINT) END"
        value = f"(CASE WHEN NOT isnan({number}) THEN coalesce({exact}, 0) END)"
        bad = f"(NOT isnan({number}) AND NOT {sci} AND ({exact}) IS NULL)"
        scientific = check(_SCIENTIFIC_ID, f"(NOT isnan({number}) AND {sci})")
        return value, True, not_int, bad, [scientific], tabbed
    if integer_ids and kind == "text" and col in src.sniffed:
        # a CSV column of whole-number ids that the sniffer took for text: it met a
        # missing-value marker ('N/A', or a listed id such as 'GUEST'), ids written with a
        # decimal comma ('12346,0') or spaces around some ids. They are the same customers
        # as in a column of numbers ('12346.0' and '12346' alike), else the store held
        # '12346.0' where a log without the marker gives '12346'. An id is an integer when
        # its trimmed text is one written the plain way (the cast must round-trip: '007'
        # and '+7' stay text) with at most a fraction of zeros; any other text that is no
        # missing-value marker makes the ids text, as before.
        t = _trim_id(c)
        point = _lit("," if decimal_comma else ".")
        head = f"split_part({t}, {point}, 1)"
        number = f"TRY_CAST({head} AS BIGINT)"
        whole = (f"(rtrim(split_part({t}, {point}, 2), '0') = '' "
                 f"AND split_part({t}, {point}, 3) = '')")
        value = (f"(CASE WHEN {whole} AND CAST({number} AS VARCHAR) = {head} "
                 f"THEN {number} END)")
        not_int = (f"(CASE WHEN {value} IS NULL THEN NOT {_missing_id(t, listed)} "
                   f"ELSE false END)")
        return value, True, not_int, None, [], tabbed
    text = f"CAST({c} AS VARCHAR)"

    def cleaned(t: str) -> str:
        longer = f"strlen({t}) > {max(map(len, _MISSING_IDS))}"  # no marker: no lookup
        return f"CASE WHEN {longer} THEN {t} WHEN {_missing_id(t)} THEN NULL ELSE {t} END"

    # with tabs, the text trimmed of them as well only where it holds one, as one branch:
    # the trimmed text is written three times in `cleaned`, and DuckDB computes each
    value = (f"(CASE WHEN contains({text}, chr(9)) "
             f"THEN {cleaned(f'trim({text}, {_lit(_ID_SPACE)})')} "
             f"ELSE {cleaned(f'trim({text})')} END)") if tabs else f"({cleaned(f'trim({text})')})"
    # text ids: only the form a spreadsheet writes ('4.91235E+11': a sign in the exponent,
    # which no hexadecimal or other code has) is taken for scientific notation; the profile
    # looks at the cleaned id, not the raw text again (CASE: the pattern only where a '+' is)
    sci = ("(CASE WHEN contains({t}, '+') THEN regexp_full_match({t}, "
           "'[0-9]+(\\.[0-9]+)?[eE]\\+[0-9]+') ELSE false END)")
    scientific = check(_SCIENTIFIC_ID, sci.format(t=_trim_id(text)),
                       sci.format(t="customer_id"))
    return value, False, "false", None, [scientific], tabbed


#: what `_trim_id` takes off: DuckDB's trim() takes spaces, NBSP and other Unicode spaces
#: but not tabs or line ends
_ID_SPACE = " \t\n\r\v\f\u00a0\u2007\u2009\u202f\u3000"


def _trim_id(text: str) -> str:
    """SQL: the text ``text`` of an id without the white space around it, tabs included
    ('17850\t' is customer 17850). trim() with a list of characters costs four times what
    the plain one does, so it runs only on text with a tab in it (found by one memchr)."""
    return (f"(CASE WHEN contains({text}, chr(9)) THEN trim({text}, {_lit(_ID_SPACE)}) "
            f"ELSE trim({text}) END)")


def _missing_id(t: str, listed: Sequence[str] = ()) -> str:
    """SQL predicate: the trimmed id text ``t`` is blank, a missing-value marker or one of
    the ``listed`` ids (exactly). Written as ORs: DuckDB turns an IN list this long into a
    join, evaluated on every row (not just those of a CASE branch): a 2.2M-row CSV took
    2.9 s to load instead of 1.7 s."""
    return "(" + " OR ".join([*(f"lower({t}) = {_lit(m)}" for m in _MISSING_IDS),
                              *(f"{t} = {_lit(m)}" for m in listed)]) + ")"


def _without_listed(value: str, is_int: bool, listed: Sequence[str]) -> str:
    """The customer id SQL ``value`` with the ``listed`` ids (``mapping.missing_ids``) made
    NULL, so their rows are dropped and counted as rows without a customer id. Integer ids
    match the listed ids that are whole numbers ('0', '-1'); text ids match exactly, after
    the trimming every id gets."""
    if is_int:
        ints = sorted({int(m) for m in listed if re.fullmatch(r"[+-]?[0-9]{1,18}", m)})
        items = [str(i) for i in ints]
    else:
        items = [_lit(m) for m in listed]
    if not items:
        return value
    return f"(CASE WHEN {value} IN ({', '.join(items)}) THEN NULL ELSE {value} END)"


def _whole_id(d: str) -> tuple[str, str]:
    """(value SQL, predicate 'bad') of a numeric customer id, the DOUBLE expression ``d``
    (NULL or NaN: missing). The value is the id as a BIGINT when it is a whole number that
    fits; any other number is bad and stops the load, and its value is 0 only so that the
    row counts as one with a customer id (shown as an example) rather than as one without."""
    whole = _whole_bigint(d)
    return (
        f"(CASE WHEN NOT isnan({d}) THEN coalesce({whole}, 0) END)",
        f"(NOT isnan({d}) AND {whole} IS NULL)",
    )


def _whole_bigint(d: str) -> str:
    """SQL: the DOUBLE expression ``d`` as a BIGINT when it is a whole number that fits,
    else NULL (a fraction, NaN, infinity, out of range)."""
    return f"(CASE WHEN isfinite({d}) AND {d} = trunc({d}) THEN TRY_CAST({d} AS BIGINT) END)"


def _timestamp_sql(
    src: _Source, col: str, fmt: str | None, problems: list[str], example: Any = None
) -> tuple[str, str | None, bool]:
    """(value SQL as naive UTC TIMESTAMP, strptime format used, column is text); a column
    of numbers is a problem, whose message says what its ``example`` value looks like."""
    c = _q(col)
    kind = _kind(src.types[col])
    if src.types[col].upper() in _NS_TYPES:
        # to microseconds by flooring: DuckDB's casts round, which moved an event less than
        # half a microsecond before a cutoff to the cutoff (pandas' default is nanoseconds)
        ns = f"epoch_ns({c})"
        return f"make_timestamp(({ns} - (({ns} % 1000) + 1000) % 1000) // 1000)", None, False
    if kind == "timestamp" or kind == "date":
        return f"CAST({c} AS TIMESTAMP)", None, False
    if kind == "timestamptz":
        return f"timezone('UTC', {c})", None, False
    if kind != "text":
        number = _numeric_time(col, example) if kind in ("int", "float") else None
        problems.append(
            f"column {col!r} (mapped to timestamp) has type {src.types[col]}, not a date, "
            f"datetime or text" + (f": {number}" if number else (
                f"; set {mapping_key('timestamp')} to the column holding the event time"))
        )
        return "NULL::TIMESTAMP", None, False
    text = _timestamp_text(col)
    if fmt is None:  # use what DuckDB's CSV sniffer found, if anything
        fmt = _sniffed_format(src, col)
    if fmt is None:
        # ISO 8601. A UTC offset or zone name can only follow the date part; only such values
        # take the (slower, ICU) TIMESTAMPTZ parse, since a TIMESTAMP cast ignores an offset.
        zoned = f"regexp_matches(substr({text}, 12), '[A-Za-z+-]')"
        return (
            f"(CASE WHEN {zoned} THEN timezone('UTC', TRY_CAST({text} AS TIMESTAMPTZ)) "
            f"ELSE TRY_CAST({text} AS TIMESTAMP) END)"
        ), None, True
    parsed = f"try_strptime({text}, {_lit(fmt)})"
    if "%z" in fmt or "%Z" in fmt:
        parsed = f"timezone('UTC', {parsed})"
    return f"CAST({parsed} AS TIMESTAMP)", fmt, True


def _timestamp_text(col: str) -> str:
    """SQL: the trimmed text of timestamp column ``col``, NULL when blank."""
    return f"NULLIF(trim({_q(col)}), '')"


def _sniffed_format(src: _Source, col: str) -> str | None:
    """The date or timestamp format DuckDB's CSV sniffer found for ``col``, if any."""
    declared = _kind(src.sniffed.get(col, "VARCHAR")) if src.is_text else ""
    if declared == "timestamp" and src.timestamp_format:
        return src.timestamp_format
    if declared == "date" and src.date_format:
        return src.date_format
    return None


def _timestamp_candidates(con: DuckDBBackend, src: _Source, mapping: ColumnMapping) -> list[str]:
    """The formats a text timestamp column may be in: of the CSV sniffer's format (first)
    and `_TIMESTAMP_GUESSES`, those that read every value in the first
    `_FORMAT_SNIFF_ROWS` rows (one small query). [] when the mapping gives the format, the
    column is not text (or not there: `_plan` says so), or no format reads those rows: then
    the column is read as before, with the sniffer's format or as ISO 8601. The sniffer
    alone would read '12/01/2010' day-first without a word, and finds no format for
    '01/12/2010 08:28'; which candidates read every row, the profile counts
    (`_settle_timestamp_format`)."""
    col = _resolve(mapping.timestamp, list(src.types)) if mapping.timestamp else None
    if mapping.timestamp_format or col is None or not _raw_is_text(src, col):
        return []
    sniffed = _sniffed_format(src, col)
    if sniffed and sniffed.startswith("%Y"):
        return []  # the sniffer read year-first dates: unambiguous, no query
    text = _timestamp_text(col)
    sample = (f"SELECT DISTINCT v FROM (SELECT {text} AS v FROM {src.relation} "
              f"LIMIT {_FORMAT_SNIFF_ROWS}) WHERE v IS NOT NULL")
    declared = _kind(src.sniffed.get(col, "VARCHAR")) if src.is_text else ""
    if declared in ("timestamp", "date") and not sniffed:
        # DuckDB's cast reads them: ISO 8601, but also '01/12/10 09:37' as the year 1. Year
        # first (as ISO 8601 is) needs no guesses, whose query costs 0.3 CPU-s
        year_first = con.con.execute(
            f"SELECT bool_and(regexp_matches(v, '^[0-9]{{4}}-')) FROM ({sample})"
        ).fetchall()[0][0]
        if year_first:
            return []
    formats = list(dict.fromkeys([*([sniffed] if sniffed else []), *_TIMESTAMP_GUESSES]))
    return [f[1:-1] for f in _formats_that_read(con, formats, sample)]


def _numeric_timestamp_example(con: DuckDBBackend, src: _Source, mapping: ColumnMapping) -> Any:
    """The first value of the timestamp column when it holds numbers (epoch seconds, Excel
    serial dates...), for `_plan`'s message (which refuses such a column); else None."""
    col = _resolve(mapping.timestamp, list(src.types)) if mapping.timestamp else None
    if col is None or _kind(src.types[col]) not in ("int", "float"):
        return None
    rows = con.con.execute(f"SELECT {_q(col)} FROM {src.relation} WHERE {_q(col)} IS NOT NULL "
                           f"LIMIT 1").fetchall()
    return rows[0][0] if rows else None


#: what numbers in a timestamp column may be: (what, digits before any point, a fraction
#: allowed, pandas arguments, the instant of the number 0, one unit)
_NUMERIC_TIMES = (
    ("Unix epoch seconds", (9, 10), False, "unit='s'", "1970-01-01", "1s"),
    ("Unix epoch milliseconds", (12, 13), False, "unit='ms'", "1970-01-01", "1ms"),
    ("an Excel serial date (days since 1899-12-30)", (5,), True,
     "unit='D', origin='1899-12-30'", "1899-12-30", "1D"),
)


def _numeric_time(col: str, value: Any) -> str | None:
    """What the number (or digit-only text) ``value`` of timestamp column ``col`` looks
    like, with its instant and how to convert the column in pandas; None for no such value.
    lifecast reads no numbers as times (which unit, which origin?): the user converts."""
    if value is None or isinstance(value, bool):
        return None
    text = str(value).strip()
    if isinstance(value, float) and value.is_integer():
        text = str(int(value))
    m = re.fullmatch(r"(\d+)(\.\d*)?", text)
    if m is None:
        return None
    for what, digits, fraction, unit, origin, step in _NUMERIC_TIMES:
        if len(m.group(1)) in digits and (fraction or not m.group(2)):
            when = pd.Timestamp(origin) + float(text) * pd.Timedelta(step)
            utc = " UTC" if origin == "1970-01-01" else ""
            return (
                f"{text} looks like {what}: {when.round('s')}{utc}. lifecast reads no numbers "
                f"as times: convert the column first, e.g. in pandas df[{col!r}] = "
                f"pd.to_datetime(pd.to_numeric(df[{col!r}]), {unit}), and load the "
                f"DataFrame (or write it to Parquet)"
            )
    return None


def _settle_timestamp_format(
    con: DuckDBBackend, src: _Source, plan: _Plan, stats: dict[str, Any]
) -> str | None:
    """The format to read text timestamps with, by one rule over the candidate formats the
    profile checked on every row: exactly one reads every value: that one; several read
    them, and differently: raise (the dates are ambiguous); none: the plan's own (its rows
    that do not parse are reported by `_validate`, as any bad value). Without candidates
    (the mapping's format, one candidate, or none) it is the plan's own."""
    formats = plan.timestamp_candidates
    fits = [f for i, f in enumerate(formats) if stats[f"ts_misfit_{i}"] == 0]
    if not fits:
        return plan.timestamp_format
    if len(fits) > 1:
        _ambiguous_timestamps(con, src, plan, fits)  # raises, unless all read alike
    return fits[0]


def _ambiguous_timestamps(con: DuckDBBackend, src: _Source, plan: _Plan, fits: list[str]) -> None:
    """Raise: every timestamp reads with each of ``fits``, and the first row (with a customer
    id) that they read differently is shown read each way. Return quietly when they read
    every row alike (say '01/01/2011' only): any of them is right."""
    ts = plan.get("timestamp")
    text = _timestamp_text(ts.raw[0])
    reads = [f"try_strptime({text}, {_lit(f)})" for f in fits]
    differ = " OR ".join(f"{reads[0]} <> {r}" for r in reads[1:])
    numbered = src.numbered or f"(SELECT NULL::BIGINT AS __row, * FROM {src.relation})"
    file_col = "__file" if "AS __file" in numbered else "NULL"
    has_cid = f"({plan.get('customer_id').value}) IS NOT NULL"
    with _in_file_order(con.con, src):
        rows = con.con.execute(
            f"SELECT __row, {file_col}, {text}, {', '.join(reads)} FROM {numbered} "
            f"WHERE {has_cid} AND ({differ}) ORDER BY __row LIMIT 1"
        ).fetchall()
    if not rows:
        return
    row_no, file, value, *read = rows[0]
    where = _where(src, row_no, file)
    ways = ", ".join(
        f"{pd.Timestamp(r) if '%H' in f else pd.Timestamp(r).date()} with {f!r}"
        for f, r in zip(fits, read, strict=True)
    )
    firsts = [_day_or_month_first(f) for f in fits]
    which = (
        ", ".join(f"{f!r} if {first}" for f, first in zip(fits, firsts, strict=True))
        if None not in firsts and len(set(firsts)) == len(fits)
        else "one of " + ", ".join(repr(f) for f in fits)
    )
    _raise(src, [
        f"column {ts.label!r} (timestamp): the dates are ambiguous: every value reads with "
        f"each of the formats {', '.join(repr(f) for f in fits)}, and they read some "
        f"differently, e.g. {where + ': ' if where else ''}{value!r} is {ways}. Say which "
        f"format the data is written in with {mapping_key('timestamp_format')}: {which}"
    ], src.row_note and f"({src.row_note}.)")


def _day_or_month_first(fmt: str) -> str | None:
    """'the day comes first', 'the month comes first' or 'the year comes first' (as in
    '%y/%m/%d', which DuckDB's sniffer finds for '01/12/10') for a format with a day, a
    month and a year, else None."""
    places = {what: fmt.find(code) for what, code in
              (("day", "%d"), ("month", "%m"), ("year", "%y" if "%y" in fmt else "%Y"))}
    if min(places.values()) < 0:
        return None
    return f"the {min(places, key=places.__getitem__)} comes first"


#: a number with ',' as the decimal point and thousands grouped by '.' or ' ' (one of them)
_COMMA_NUMBER = r"[+-]?([0-9]{1,3}(\.[0-9]{3})+|[0-9]{1,3}( [0-9]{3})+)(,[0-9]+)?"
#: spaces that group thousands in exports besides ' ' (read as ' ' with decimal_comma)
_NO_BREAK_SPACES = ("\u00a0", "\u202f")
#: a number with '.' as the decimal point and ',' between thousands, as English-language
#: exports write it ('1,234.50'); only with a decimal part, since '1,020' alone may be a
#: decimal comma (1.02)
_DOT_NUMBER_GROUPED = r"[+-]?[0-9]{1,3}(,[0-9]{3})+\.[0-9]+"
#: text that looks like a whole number with '.' between thousands ('2.950', '1.234.567')
_DOT_GROUPED = r"-?[1-9][0-9]{0,2}(\.[0-9]{3})+"


def _decimal_rule(decimal_comma: bool) -> str:
    """How numbers in text must be written, for the hints of bad numbers."""
    if decimal_comma:
        return (f"with {mapping_setting('decimal_comma', True)}, numbers "
                f"must use ',' as the decimal point and '.' or a space only between groups "
                f"of three digits, as in '1.234,50' or '1 234,5'.")
    return (f"numbers must use '.' as the decimal point (',' between thousands is read when "
            f"a '.' decimal part follows, as in '1,234.50'), or, if they use ',' as the "
            f"decimal point (as in '1.234,50'), pass {mapping_setting('decimal_comma', True)}.")


def _numeric_sql(src: _Source, col: str, contract: str, problems: list[str],
                 decimal_comma: bool = False) -> str:
    """DOUBLE SQL of a numeric source column (text is parsed; bad text becomes NULL). With
    ``decimal_comma``, text uses ',' as the decimal point and '.' or ' ' between thousands:
    text without either is read with ',' for '.'; text with one must group its digits in
    threes (`_COMMA_NUMBER`; '1.5' is no number then, rather than 15)."""
    c = _q(col)
    kind = _kind(src.types[col])
    if kind in ("int", "float"):
        return f"CAST({c} AS DOUBLE)"
    if kind == "text" and decimal_comma:
        # French and Swiss exports group thousands with a no-break space (U+00A0) or a
        # narrow one (U+202F), which trim() and ' ' do not match: read them as a space
        spaced = f"replace(replace({c}, {_lit(_NO_BREAK_SPACES[0])}, ' '), " \
                 f"{_lit(_NO_BREAK_SPACES[1])}, ' ')"
        t = f"trim({spaced})"
        ungrouped = f"replace(replace(replace({t}, '.', ''), ' ', ''), ',', '.')"
        return (f"(CASE WHEN NOT contains({t}, '.') AND NOT contains({t}, ' ') "
                f"THEN TRY_CAST(NULLIF(replace({t}, ',', '.'), '') AS DOUBLE) "
                f"WHEN regexp_full_match({t}, {_lit(_COMMA_NUMBER)}) "
                f"THEN CAST({ungrouped} AS DOUBLE) END)")
    if kind == "text":
        # '1,234.50' (',' between thousands, '.' decimals) as English-language exports
        # write amounts: unambiguous, since a decimal comma never has a '.' after it
        t = f"trim({c})"
        return (f"(CASE WHEN contains({t}, ',') AND regexp_full_match({t}, "
                f"{_lit(_DOT_NUMBER_GROUPED)}) THEN CAST(replace({t}, ',', '') AS DOUBLE) "
                f"ELSE TRY_CAST(NULLIF({t}, '') AS DOUBLE) END)")
    problems.append(
        f"column {col!r} (used for {contract}) has type {src.types[col]}, not a number; "
        f"set {mapping_key(contract)} to a numeric column"
    )
    return "NULL::DOUBLE"


#: id columns kept as BIGINT when the source column is an integer column (else VARCHAR)
_INTEGER_KEYS = ("order_id", "product_id")
#: integer types whose every value fits a BIGINT (UBIGINT and HUGEINT may not: VARCHAR)
_BIGINT_SAFE = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT",
                "UINTEGER"}


def _text_sql(src: _Source, col: str) -> str:
    """VARCHAR SQL of an id/label column: integral floats lose their '.0', blank is NULL."""
    c = _q(col)
    kind = _kind(src.types[col])
    if kind == "float":
        d = f"CAST({c} AS DOUBLE)"
        return (
            f"(CASE WHEN isnan({d}) THEN NULL WHEN {d} = trunc({d}) AND abs({d}) < 9e15 "
            f"THEN CAST(CAST({d} AS BIGINT) AS VARCHAR) ELSE CAST({c} AS VARCHAR) END)"
        )
    if kind == "int":
        return f"CAST({c} AS VARCHAR)"
    return f"NULLIF(trim(CAST({c} AS VARCHAR)), '')"


_AMOUNT_RULE = (
    "an amount expression may use only column names, numbers, + - * / and parentheses "
    '(quote a name with spaces in double quotes: "Unit Price" * Quantity)'
)


def _amount_ast(text: str, names: Sequence[str], problems: list[str]) -> exp.Expression | None:
    """Parse and check an amount expression; record problems and return None if bad."""
    where = f"amount {text!r}"
    if ";" in text:
        problems.append(f"{where}: semicolons are not allowed; {_AMOUNT_RULE}")
        return None
    adjacent = _adjacent_tokens(text)
    if adjacent is not None:
        problems.append(f"{where}: {adjacent}; {_AMOUNT_RULE}. Set {mapping_key('amount')}")
        return None
    try:
        tree = sqlglot.parse_one(text, read="duckdb")
    except sqlglot.errors.SqlglotError as exc:
        msg = str(exc).splitlines()[0]
        problems.append(
            f"{where} is neither a column nor a valid expression ({msg}); {_AMOUNT_RULE}. "
            f"Set {mapping_key('amount')}"
        )
        return None
    if isinstance(tree, exp.Column) and len(tree.parts) == 1:
        # a lone name (perhaps quoted) that is not a column
        problems.append(
            f"column {tree.name!r} (mapped to amount) is not in the data; set "
            f"{mapping_key('amount')} to the right column or an expression such as "
            f"'Quantity * UnitPrice'"
        )
        return None
    bad = _disallowed(tree)
    if bad is not None:
        problems.append(f"{where}: {bad}; {_AMOUNT_RULE}. Set {mapping_key('amount')}")
        return None
    unknown = [
        c.name for c in tree.find_all(exp.Column) if _resolve(c.name, names) is None
    ]
    for name in dict.fromkeys(unknown):
        problems.append(
            f"column {name!r} in amount {text!r} is not in the data; fix {mapping_key('amount')}"
        )
    if not any(True for _ in tree.find_all(exp.Column)):
        problems.append(f"{where} uses no column; {_AMOUNT_RULE}")
        return None
    return None if unknown else tree


_OPERATORS = {"PLUS", "DASH", "STAR", "SLASH"}
_OPERAND_END = {"VAR", "NUMBER", "IDENTIFIER", "R_PAREN"}
_OPERAND_START = {"VAR", "NUMBER", "IDENTIFIER", "L_PAREN"}


def _adjacent_tokens(text: str) -> str | None:
    """What is wrong when two operators (``* *``) or two values (``Unit Price``) stand side
    by side, quoting the user's own text; None when there is no such pair. (The parser
    would read ``a * * b`` as ``a * * AS b``, which is no help to show.)"""
    try:
        tokens = sqlglot.tokenize(text, read="duckdb")
    except sqlglot.errors.SqlglotError:
        return None  # the parser reports it
    for a, b in itertools.pairwise(tokens):
        ta, tb = a.token_type.name, b.token_type.name
        span = text[a.start : b.end + 1]
        if ta in _OPERATORS and tb in ("STAR", "SLASH"):
            return (
                f"{span!r} is two operators in a row; write one operator between two values, "
                f"e.g. 'Quantity * UnitPrice'"
            )
        if ta in _OPERAND_END and tb in _OPERAND_START and not (ta == "VAR" and tb == "L_PAREN"):
            left, right = text[a.start : a.end + 1], text[b.start : b.end + 1]
            one_name = (
                f", or if {span!r} is one column name, put it in double quotes: \"{span}\""
                if ta == tb == "VAR"
                else ""
            )
            return (
                f"{left!r} and {right!r} have no operator between them; put + - * or / "
                f"between them{one_name}"
            )
    return None


def _disallowed(node: exp.Expression) -> str | None:
    """Why ``node`` is not a plain arithmetic expression over columns, or None if it is."""
    if isinstance(node, (exp.Add, exp.Sub, exp.Mul, exp.Div)):
        return _disallowed(node.left) or _disallowed(node.right)
    if isinstance(node, (exp.Neg, exp.Paren)):
        return _disallowed(node.this)
    if isinstance(node, exp.Column):
        if len(node.parts) != 1:
            return f"qualified name {node.sql()!r} (quote the whole name if it is one column)"
        return None
    if isinstance(node, exp.Literal):
        return None if node.is_number else (
            f"text literal {node.sql()!r} (column names take double quotes, not single)"
        )
    if isinstance(node, exp.Alias):
        return "two names or values stand side by side without an operator between them"
    if isinstance(node, (exp.Subquery, exp.Select, exp.Query)):
        return "subqueries are not allowed"
    if isinstance(node, exp.Func):
        return f"function calls such as {node.sql()!r} are not allowed"
    return f"{node.sql()!r} ({node.key}) is not allowed"


def _amount_sql(
    node: exp.Expression | None,
    src: _Source,
    names: Sequence[str],
    refs: list[str],
    problems: list[str],
    decimal_comma: bool = False,
) -> str:
    """DuckDB SQL of a checked amount expression, written out node by node (never the user's
    text), each column replaced by its DOUBLE value; ``refs`` collects the columns used."""
    if node is None:
        return "NULL::DOUBLE"
    if isinstance(node, exp.Paren):
        return _amount_sql(node.this, src, names, refs, problems, decimal_comma)
    if isinstance(node, exp.Neg):
        return f"(-{_amount_sql(node.this, src, names, refs, problems, decimal_comma)})"
    if isinstance(node, exp.Literal):
        return repr(float(node.this))
    if isinstance(node, exp.Column):
        col = _resolve(node.name, names)
        assert col is not None  # checked in _amount_ast
        refs.append(col)
        return _numeric_sql(src, col, "amount", problems, decimal_comma)
    op = {exp.Add: "+", exp.Sub: "-", exp.Mul: "*", exp.Div: "/"}[type(node)]
    left = _amount_sql(node.left, src, names, refs, problems, decimal_comma)
    right = _amount_sql(node.right, src, names, refs, problems, decimal_comma)
    return f"({left} {op} {right})"


# --------------------------------------------------------------------------- profile + validate


def _profile(con: DuckDBBackend, src: _Source, plan: _Plan, clean: str) -> dict[str, Any]:
    """Create the lazy view of cleaned rows and compute the report in ONE aggregate query
    (every count, bad-value count and the date range; customers and orders later, when
    read: `_Counts`): source rows in, one row of numbers out."""
    import duckdb

    raw = con.con
    checked = plan.checked
    select = [f"{c.value} AS {_q(c.contract)}" for c in plan.columns]
    select += [f"({c.bad}) AS {_q('__bad_' + c.key)}" for c in checked if not c.profile_bad]
    select.append(f"({plan.cid_not_integer}) AS __cid_not_integer")
    select.append(f"({plan.cid_tabbed}) AS __cid_tabbed")
    if plan.timestamp_candidates:  # rows (not blank) each candidate format does not read
        text = _timestamp_text(plan.get("timestamp").raw[0])
        select += [
            f"({text} IS NOT NULL AND NOT {_reads(text, f)}) "
            f"AS __ts_misfit_{i}"
            for i, f in enumerate(plan.timestamp_candidates)
        ]
    raw.execute(
        f"CREATE OR REPLACE TEMP VIEW {_q(clean)} AS SELECT {', '.join(select)} "
        f"FROM {src.relation}"
    )
    known = "customer_id IS NOT NULL"
    aggs = {
        "rows_read": "count(*)",
        "missing_customer": "count_if(customer_id IS NULL)",
        "cid_not_integer": "count_if(__cid_not_integer)",
        "cid_tabbed": "count_if(__cid_tabbed)",
        "return_rows": f"count_if({known} AND amount < 0)",
        "first_event": f"min(timestamp) FILTER (WHERE {known})",
        "last_event": f"max(timestamp) FILTER (WHERE {known})",
        "first_purchase": f"min(timestamp) FILTER (WHERE {known} AND amount >= 0)",
        "net_amount": f"sum(amount) FILTER (WHERE {known})",
    }
    aggs.update(
        {f"bad_{c.key}": f"count_if({known} AND ({c.profile_bad or _q('__bad_' + c.key)}))"
         for c in checked}
    )
    # rows with an id, or with one that is not an integer (it is NULL until the ids are
    # read as text): a timestamp format must read the rows that will be kept
    has_id = "(customer_id IS NOT NULL OR __cid_not_integer)"
    aggs.update(
        {f"ts_misfit_{i}": f"count_if({has_id} AND __ts_misfit_{i})"
         for i in range(len(plan.timestamp_candidates))}
    )
    flat = ", ".join(f"{v} AS {_q(k)}" for k, v in aggs.items())
    sql = f"SELECT {flat} FROM {_q(clean)}"  # customers and orders: see `_Counts`
    keys = list(aggs)
    try:
        row = raw.execute(sql).fetchall()[0]
    except duckdb.Error as exc:
        raise _read_error(src.label, exc, src.kind) from None
    return dict(zip(keys, row, strict=True))


#: `_warn_thousands`: at least this many amount texts like '2.950', and this share of those
#: with a '.'
_GROUPED_MIN, _GROUPED_SHARE = 20, 0.9


def _warn_thousands(con: DuckDBBackend, src: _Source, plan: _Plan) -> None:
    """Warn when an amount text column reads as numbers with '.' as the decimal point but
    looks written with '.' between thousands ('2.950' for 2950, '1.234.567'): nearly all of
    its values with a '.' in the first `_FORMAT_SNIFF_ROWS` rows have groups of three digits
    after it. One query over those rows: on every row, the string work cost the profile of
    a CSV 10% more CPU."""
    if not plan.amount_texts:
        return
    cols = [f"trim({_q(col)}) AS t{i}" for i, col in enumerate(plan.amount_texts)]
    aggs = []
    for i in range(len(plan.amount_texts)):
        grouped = f"t{i} LIKE '%.___' AND regexp_full_match(t{i}, {_lit(_DOT_GROUPED)})"
        aggs += [f"count_if(contains(t{i}, '.'))", f"count_if({grouped})",
                 f"max(t{i}) FILTER (WHERE {grouped})"]
    row = con.con.execute(
        f"SELECT {', '.join(aggs)} FROM (SELECT {', '.join(cols)} FROM {src.relation} "
        f"LIMIT {_FORMAT_SNIFF_ROWS})"
    ).fetchall()[0]
    for i, col in enumerate(plan.amount_texts):
        dotted, grouped, example = row[3 * i: 3 * i + 3]
        if grouped >= _GROUPED_MIN and grouped >= _GROUPED_SHARE * dotted:
            warn(
                f"{src.label}: column {col!r} (amount) looks written with '.' between "
                f"thousands: {grouped:,} of its {dotted:,} values with a '.' in the first "
                f"{_FORMAT_SNIFF_ROWS:,} rows have groups of three digits after it, e.g. "
                f"{example!r}, read as "
                f"{float(example):g}. If '.' separates thousands there (and ',' is the "
                f"decimal point), pass {mapping_setting('decimal_comma', True)}; if they are "
                f"amounts with three decimals, ignore this."
            )


def _count_customers_orders(raw: Any, table: str, has_order_id: bool) -> tuple[int, int]:
    """(distinct customers, distinct (customer, order) pairs) of the contract table; without
    an order_id an order is a customer-day. One GROUP BY customer_id with a per-customer
    distinct count: at 10M rows ~40% cheaper in CPU than two global DISTINCT aggregates."""
    day = "CAST(timestamp AS DATE)"
    n_orders = f"count(DISTINCT {day})"
    if has_order_id:
        # rows without an order_id among others with one are customer-day orders (the
        # engine's `_order_key`): count(DISTINCT) skips their NULL, so their days are added
        n_orders = (f"count(DISTINCT order_id) + "
                    f"count(DISTINCT CASE WHEN order_id IS NULL THEN {day} END)")
    # fetchall, never fetchone, in this module: DuckDB 2.0 keeps a partly fetched result
    # open and then refuses any other query on the connection (ResourceInUseException)
    return raw.execute(
        f"SELECT count(customer_id), coalesce(sum(n_orders), 0) FROM ("
        f"SELECT customer_id, {n_orders} AS n_orders FROM {_q(table)} GROUP BY customer_id)"
    ).fetchall()[0]


def _count_duplicates(raw: Any, table: str, columns: Sequence[str]) -> tuple[int]:
    """(rows of the contract table identical to an earlier row in every column,)."""
    cols = ", ".join(_q(c) for c in sorted(columns))
    return raw.execute(
        f"SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM {_q(table)} "
        f"GROUP BY {cols})"
    ).fetchall()[0]


def _validate(con: DuckDBBackend, src: _Source, plan: _Plan, stats: dict[str, Any]) -> None:
    """Raise one DataValidationError listing every data problem the profile found (with
    examples from a second, small query); return quietly when the data is fine."""
    if stats["rows_read"] == 0:
        _raise(src, [f"{src.label} has no rows: no rows left to load; check the export"])
    kept = stats["rows_read"] - stats["missing_customer"]
    cid = plan.get("customer_id")
    if kept == 0:
        n_read = stats["rows_read"]
        _raise(src, [
            f"no rows left in {src.label}: {'the' if n_read == 1 else 'all'} "
            f"{counted(n_read, 'row')} {'has' if n_read == 1 else 'have'} no customer id "
            f"in column {cid.label!r}; check {mapping_key('customer_id')} names the customer column"
        ])
    bad = [c for c in plan.checked if stats.get("bad_" + c.key)]
    if not bad:
        return
    examples = _examples(con, src, plan, bad)
    problems = []
    for c in bad:
        n = stats["bad_" + c.key]
        what = f"column {c.label!r}" if len(c.raw) == 1 and c.raw[0] == c.label else (
            f"amount {c.label!r}"
        )
        hint = c.hint
        if c.key == "timestamp" and plan.timestamp_is_text:
            hint = _timestamp_advice(
                con, src, plan, n, kept, examples.get("_values_timestamp", []), c.hint
            )
        elif c.key == "timestamp_early" and plan.timestamp_is_text:
            hint = _early_advice(con, plan, examples.get("_values_timestamp_early", []))
        elif c.contract in _NUMERIC_CONTRACTS and c.key == c.contract:
            hint = _currency_advice(examples.get(f"_values_{c.key}", [])) + hint
        problems.append(
            f"{what} ({c.contract}): {n:,} of {kept:,} rows with a customer id have "
            f"{c.problem}, e.g. {examples[c.key]}. {hint}"
        )
    _raise(src, problems, src.row_note and f"({src.row_note}.)")


#: contract columns read as numbers (`_numeric_sql`)
_NUMERIC_CONTRACTS = ("amount", "quantity", "discount")
#: a currency code before or after a number ('EUR 9.90', '9,90 EUR')
_CURRENCY_CODE = re.compile(r"^[A-Z]{3}\s*[-+(]?[0-9]|[0-9.,)]\s*[A-Z]{3}$")


def _currency_advice(values: list[tuple[str, str]]) -> str:
    """The first sentence of the hint of bad numbers when the examples carry a currency sign
    ('£9.90', '€ 1.234,50') or code ('EUR 9.90'), which no number parser reads; else ''."""
    for col, value in values:
        text = value.strip()
        signs = sorted({ch for ch in text if unicodedata.category(ch) == "Sc"})
        code = _CURRENCY_CODE.search(text)
        if signs or code:
            sign = signs[0] if signs else text[:3] if text[:3].isalpha() else text[-3:]
            return (f"The values carry a currency ({sign!r} in {col!r}): lifecast reads "
                    f"plain numbers in one currency, so remove it before loading, e.g. in "
                    f"pandas df[{col!r}] = df[{col!r}].str.replace({sign!r}, '').str.strip(). ")
    return ""


def _examples(
    con: DuckDBBackend, src: _Source, plan: _Plan, bad: list[_Column]
) -> dict[str, Any]:
    """Up to 5 example rows per bad column, in ONE query over the numbered source.

    Returns contract -> formatted examples ("row 7: '31/02/2011'"), plus
    ``_values_<key>`` of each timestamp check: its raw texts (for format suggestions).
    """
    raw = con.con
    has_cid = f"({plan.get('customer_id').value}) IS NOT NULL"
    numbered = src.numbered or f"(SELECT NULL::BIGINT AS __row, * FROM {src.relation})"
    file_col = "__file" if "AS __file" in numbered else "NULL"
    needed = list(dict.fromkeys(col for c in bad for col in c.raw))
    raw_select = ", ".join(f"CAST({_q(col)} AS VARCHAR)" for col in needed)
    parts = []
    for i, c in enumerate(bad):
        parts.append(
            f"(SELECT {i} AS __problem, __row, {file_col} AS __file, {raw_select} "
            f"FROM {numbered} WHERE {has_cid} AND ({c.bad}) ORDER BY __row LIMIT {_EXAMPLES})"
        )
    sql = " UNION ALL ".join(parts)
    with _in_file_order(raw, src):
        rows = raw.execute(sql).fetchall()
    out: dict[str, Any] = {c.key: [] for c in bad}
    out.update({f"_values_{c.key}": [] for c in bad
                if c.contract == "timestamp" or c.contract in _NUMERIC_CONTRACTS})
    for problem, row_no, file, *values in sorted(rows, key=lambda r: (r[0], r[1] or 0)):
        c = bad[problem]
        shown = dict(zip(needed, values, strict=True))
        if len(c.raw) == 1:
            val = _show(shown[c.raw[0]])
        else:
            val = ", ".join(f"{col}={_show(shown[col])}" for col in c.raw)
        where = _where(src, row_no, file)
        out[c.key].append(f"{where}: {val}" if where else val)
        if c.contract == "timestamp" and shown[c.raw[0]] not in (None, ""):
            out[f"_values_{c.key}"].append(shown[c.raw[0]].strip())
        if c.contract in _NUMERIC_CONTRACTS:
            out[f"_values_{c.key}"] += [(col, v) for col, v in shown.items()
                                        if col in c.raw and isinstance(v, str)]
    for c in bad:
        out[c.key] = "; ".join(out[c.key])
    return out


@contextlib.contextmanager
def _in_file_order(raw: Any, src: _Source) -> Iterator[None]:
    """Run the ``with`` block's queries on one thread when the source's row numbers come
    from row_number() over a scan, which follows the file order only on one thread."""
    old_threads = raw.execute("SELECT current_setting('threads')").fetchall()[0][0]
    if src.numbered_single_thread:
        raw.execute("SET threads = 1")
    try:
        yield
    finally:
        raw.execute(f"SET threads = {int(old_threads)}")


def _show(value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        return "(empty)"
    return repr(value)


def _where(src: _Source, row_no: int | None, file: str | None) -> str:
    if row_no is None:
        return ""
    where = f"row {row_no}"
    if file:
        where = f"{Path(file).name} {where}"
    if src.index_labels is not None:
        label = src.index_labels[row_no - 1]
        if isinstance(label, np.generic):  # np.int64(7) since NumPy 2: show 7
            label = label.item()
        where += f" (index {label!r})"
    return where


def _timestamp_advice(
    con: DuckDBBackend, src: _Source, plan: _Plan, n_bad: int, kept: int, values: list[str],
    hint: str,
) -> str:
    """What to do about ``n_bad`` of ``kept`` text timestamps that did not parse.

    When most values parse and only a few do not, those few are bad data (``2011-13-45``,
    a stray other format, blanks): passing a format for the whole column would break the
    rest, so the advice is to fix or drop those rows. Otherwise the column as a whole is
    likely in another format: ``hint`` (pass --timestamp-format) plus the guessed formats
    that read the examples. "A few" is fewer than half the rows and either at most one in
    ten or values that no guessed format reads.
    """
    fits = _fitting_formats(con, values)
    few = 2 * n_bad < kept and (10 * n_bad <= kept or not fits)
    numbers = [_numeric_time(plan.get("timestamp").raw[0], v) for v in values]
    if not few and values and all(numbers):
        return f"The values are numbers, not dates: {numbers[0]}."
    if not few:
        if not fits:
            return hint
        narrowed = _formats_reading_the_column(con, src, plan, fits) if len(fits) > 1 else fits
        if 0 < len(narrowed) < len(fits):
            fits, found = narrowed, "the column's values"
        else:
            found = "these examples"
        # the example format is one found, never a generic one that contradicts them
        return (f"{_text_timestamp_hint(plan.timestamp_format, fits[0])} Formats that read "
                f"{found}: {', '.join(fits[:3])}.")
    how = f"with the format {plan.timestamp_format!r}" if plan.timestamp_format else (
        "as ISO 8601 dates"
    )
    looks = (
        f" (they look like {fits[0]}: write them like the other rows)" if fits else ""
    )
    return (
        f"The other {kept - n_bad:,} rows parse {how}, so these rows hold missing or invalid "
        f"dates{looks}: fix those rows or remove them from the data."
    )


def _early_advice(con: DuckDBBackend, plan: _Plan, values: list[str]) -> str:
    """What to do about text timestamps that were read as dates before `_EARLIEST`: almost
    always two-digit years ('01/12/10') read with %Y, or as ISO 8601 by DuckDB's cast (which
    reads '01/12/10' as the year 1). Suggests the %y format that reads the examples: the
    format used with %y for %Y if it does, else the guessed ones that do."""
    fmt = plan.timestamp_format
    how = f"with the format {fmt!r}" if fmt else "as ISO 8601 (year first)"
    ts = plan.get("timestamp")
    if values:  # how the first example was read: the contract's SQL on that one text
        read = con.con.execute(f"SELECT {ts.value} FROM (SELECT ?::VARCHAR AS "
                               f"{_q(ts.raw[0])})", [values[0]]).fetchall()[0][0]
        how += f", which reads {values[0]!r} as {pd.Timestamp(read)}"
    fits: list[str] = []
    if fmt and "%Y" in fmt and values:
        fits = _formats_that_read(con, [fmt.replace("%Y", "%y")],
                                  "SELECT unnest(?::VARCHAR[]) AS v", [values])
    fits = fits or [f for f in _fitting_formats(con, values) if "%y" in f]
    example = ", ".join(fits[:2]) if fits else "'%d/%m/%y %H:%M'"
    return (
        f"The text was read {how}: that way, a two-digit year gives a date in the years 0 "
        f"to 99. If the years have two digits, pass a format with %y (it reads them as "
        f"1969 to 2068) with {mapping_key('timestamp_format')}, e.g. {example}; otherwise fix or "
        f"remove these rows."
    )


#: distinct timestamp texts `_formats_reading_the_column` checks the candidate formats on
_FORMAT_SAMPLE = 100_000


def _formats_reading_the_column(
    con: DuckDBBackend, src: _Source, plan: _Plan, fits: list[str]
) -> list[str]:
    """Of ``fits`` (quoted formats that read the examples), those that read up to
    `_FORMAT_SAMPLE` distinct timestamp texts of all the rows that did not parse: the
    first examples of a day-first file ('01/12/2010 08:26') read month-first too, a
    '13/12/2010' further down does not. Runs only when loading has already failed."""
    ts = plan.get("timestamp")
    text = f"trim(CAST({_q(ts.raw[0])} AS VARCHAR))"
    sample = (f"SELECT DISTINCT {text} AS v FROM {src.relation} WHERE ({ts.bad}) AND "
              f"{text} <> '' LIMIT {_FORMAT_SAMPLE}")
    return _formats_that_read(con, [f[1:-1] for f in fits], sample)


def _fitting_formats(con: DuckDBBackend, values: list[str]) -> list[str]:
    """The guessed formats (quoted) that read every one of ``values`` (blanks aside: they
    say nothing of the format); [] for no values."""
    values = [v for v in values if v.strip()]
    if not values:
        return []
    return _formats_that_read(con, _TIMESTAMP_GUESSES, "SELECT unnest(?::VARCHAR[]) AS v",
                              [values])


def _formats_that_read(con: DuckDBBackend, formats: Sequence[str], values_sql: str,
                       params: Sequence[Any] = ()) -> list[str]:
    """The ``formats`` (returned quoted) that read every value ``v`` of the query
    ``values_sql`` (with its ``params``)."""
    if not formats:
        return []
    reads = ", ".join(f"bool_and({_reads('v', f)})" for f in formats)
    row = con.con.execute(f"SELECT {reads} FROM ({values_sql})", list(params)).fetchall()[0]
    return [f"'{fmt}'" for fmt, ok in zip(formats, row, strict=True) if ok]


def _reads(text: str, fmt: str) -> str:
    """SQL predicate: the format ``fmt`` reads the text ``text`` (false, never NULL, when
    not). DuckDB's %Y takes one to four digits, so '01/12/10' reads with '%d/%m/%Y' as the
    year 0010: a format reads a value only if the year it gives has four digits."""
    return f"coalesce(year(try_strptime({text}, {_lit(fmt)})) >= 1000, false)"


def _raise(src: _Source, problems: list[str], footer: str = "") -> None:
    """The one place a load fails: every problem, the source, and what to do."""
    head = f"cannot load transactions from {src.label}:"
    body = "\n".join(f"  - {p}" for p in problems)
    message = f"{head}\n{body}" + (f"\n{footer}" if footer else "")
    raise DataValidationError(message, source=src.label, problems=problems)


def disable_progress_bar(con: Any) -> None:
    """Turn DuckDB's progress bar off on a connection. Inside Jupyter without ipywidgets,
    DuckDB refuses the setting (duckdb/duckdb#7590) although no bar is shown there; that
    refusal is harmless and ignored."""
    import duckdb

    with contextlib.suppress(duckdb.InvalidInputException):
        con.execute("SET enable_progress_bar = false")
