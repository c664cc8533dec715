"""The customer store: what `lifecast score` writes and the service reads.

One *batch* is the per-customer output of DESIGN.md ("Per-customer output") for every customer at
one cutoff, plus the feature values the models used. The batch job writes a whole batch with
`CustomerStore.write_batch`; the service reads the *current* batch by customer id
(`CustomerStore.lookup`: plain rows and one float64 feature matrix, for /predict;
`CustomerStore.get_customers`: the same as pandas frames) and as ranked lists and segment totals
for marketing (`CustomerStore.ranked`, `CustomerStore.segment_summary`).

Backend: any SQLAlchemy URL. By default an embedded SQLite file
(``sqlite:///<workdir>/lifecast_store.db``, see `CustomerStore.default_url`); PostgreSQL with a
``postgresql+psycopg://user:password@host/db`` URL (``pip install 'lifecast[postgres]'``). Only
SQLAlchemy Core constructs are used, so the SQL is the same on both.

Tables (all prefixed ``lifecast_``, so the store can share a database):

- ``lifecast_batches``: one row per batch: ``batch_no`` (integer key of the row tables),
  ``batch_id`` (public; sortable: creation time then a random suffix), ``as_of``,
  ``created_at`` (ISO-8601 text, exact round trip), ``n_customers``, ``feature_columns``,
  ``model_versions``, ``segmenter``, ``metadata`` and ``segment_summary`` (JSON text; the
  per-segment totals are computed when the batch is written, as a batch never changes).
- ``lifecast_scores``: one row per (batch_no, customer_id): the per-customer output except
  ``reasons``; kept narrow because ranked lists and segment totals scan it.
- ``lifecast_details``: one row per (batch_no, customer_id): ``reasons`` (JSON text, a list of
  dicts) and ``feature_values``, the customer's feature values as little-endian float64 bytes in
  the order of the batch's ``feature_columns``. The bytes are exact (NaN, -0.0 and infinities
  included) and far cheaper than JSON text: encoding 1M x 30 floats as JSON took longer than
  this whole binary write.
- ``lifecast_current``: a one-row pointer to the current batch.

Atomicity: a batch (its ``lifecast_batches`` row, all its rows and the switch of the pointer) is
written in ONE transaction, so a failed or interrupted write leaves nothing behind and the
current batch untouched. Readers resolve the pointer and read the rows inside one transaction
that sees a single snapshot (SQLite: an explicit ``BEGIN`` on a WAL database; PostgreSQL:
``REPEATABLE READ``), so they see the old batch or the new one, never a mix. After the switch,
batches beyond the newest ``keep_batches`` (default 3) are deleted, in a separate transaction
that never deletes the current one. Concurrent writes all succeed, each switching the pointer
to its batch as it commits: the write that commits last is current. On PostgreSQL that need
not be the newest batch (`batches` lists them by when their write began inserting, and the
``batch_id`` sorts by when `write_batch` was called): a write that began first may finish last.
Why one transaction rather than rows first and a pointer switch later: it needs no clean-up of
half-written batches after a crash, and on SQLite one big transaction is also the fastest way to
insert. On SQLite a write holds the write lock for its duration (other writers wait up to 60 s,
or ``?timeout=<seconds>`` in the URL, then fail with a `StoreUnreachableError`; readers are
never blocked in WAL mode).

Costs (SQLite, 1M customers, 30 features, 3 reasons each): a write is mostly CPU in Python,
about 40 % of it JSON-encoding the reasons; a lookup by id is a few ms with `get_customers`
(building the frames; about 4 ms for one id on the 2-core development machine) and about 0.2 ms
with `lookup` (one statement, no pandas); `CustomerStore.ranked` scans the batch's narrow
scores rows (count + top-N), a fraction of a second.

Nothing happens on import or in ``CustomerStore.__init__``: the engine is created on first use.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import secrets
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool

from features.errors import TemporaryFailure
from features.registry import DEFINITIONS_KEY, DEFINITIONS_VERSION
from features.segments import RISK_BANDS
from features.urls import driver_hint, masked_url

__all__ = [
    "DEFAULT_KEEP_BATCHES",
    "EMPTY_STORE_MESSAGE",
    "SCORE_COLUMNS",
    "BatchChangedError",
    "BatchInfo",
    "CustomerRows",
    "CustomerStore",
    "EmptyStoreError",
    "StoreError",
    "StoreUnavailableError",
    "StoreUnreachableError",
]

logger = logging.getLogger(__name__)

#: Columns every ``scores`` frame handed to `CustomerStore.write_batch` must have (the
#: per-customer output of DESIGN.md without ``as_of`` and the model versions, which are held
#: at batch level). Other columns are ignored.
SCORE_COLUMNS: tuple[str, ...] = (
    "customer_id",
    "churn_probability",
    "churn_risk",
    "predicted_clv",
    "expected_orders",
    "p_alive",
    "rfm_score",
    "segment",
    "lifecycle_stage",
    "value_at_risk",
    "reasons",
)
_FLOAT_COLUMNS = (
    "churn_probability", "predicted_clv", "expected_orders", "p_alive", "value_at_risk"
)
_TEXT_COLUMNS = ("churn_risk", "rfm_score", "segment", "lifecycle_stage")
_PROBABILITY_COLUMNS = ("churn_probability", "p_alive")
#: Column order of the frames read back (model version columns and ``batch_id`` follow).
_OUTPUT_COLUMNS = (
    "customer_id",
    "as_of",
    "churn_probability",
    "churn_risk",
    "predicted_clv",
    "expected_orders",
    "p_alive",
    "rfm_score",
    "segment",
    "lifecycle_stage",
    "value_at_risk",
    "reasons",
)

#: How many batches are kept (the current one included); older ones are deleted after a write.
DEFAULT_KEEP_BATCHES = 3
#: Rows per INSERT round trip.
DEFAULT_CHUNK_SIZE = 50_000
#: Ids per ``IN (...)`` list when reading (well below SQLite's and PostgreSQL's limits).
_READ_CHUNK = 500
#: Ids per statement of `CustomerStore.lookup` (a power of two: its ``IN`` lists are padded to
#: one, so that few distinct statements are compiled; 1,024 covers the service's 1,000 ids in
#: one statement and stays far below SQLite's 32,766 and PostgreSQL's 65,535 parameters).
_LOOKUP_CHUNK = 1024
#: Batches whose constants `CustomerStore.lookup` keeps (few are current in a process' life).
_BATCH_CACHE = 4
_STORE_FILE = "lifecast_store.db"
#: Seconds a SQLite writer waits for another's write lock before it fails ("database is
#: locked", a `StoreUnreachableError`); a store URL's ``?timeout=<seconds>`` overrides it.
SQLITE_BUSY_TIMEOUT = 60.0
#: The environment variable that names the store for `lifecast score` and the service alike.
STORE_URL_ENV = "LIFECAST_STORE_URL"
EMPTY_STORE_MESSAGE = "no scores yet: run `lifecast score` first"


class StoreError(RuntimeError):
    """Base class of the customer store's errors."""


class EmptyStoreError(StoreError, LookupError):
    """The store holds no batch yet."""


class StoreUnavailableError(StoreError):
    """The store's database cannot be opened or reached."""


class StoreUnreachableError(StoreUnavailableError, TemporaryFailure):
    """A `StoreUnavailableError` that is temporary by nature: the database server refused
    the connection or did not answer in time, is starting up or shutting down, has no
    connection slot free, dropped the connection, or a SQLite file stayed locked by another
    writer past the busy timeout. Running again later may succeed; the command line exits
    75 for it. `_temporary` decides which errors these are."""


class BatchChangedError(StoreError):
    """A read asked for a batch (`CustomerStore.ranked`'s ``batch_id``) that is not the
    current one: the store was rescored since, or the id is unknown."""


# -- schema ------------------------------------------------------------------------------------

_metadata = sa.MetaData()
_ID = sa.String(64)

_batches = sa.Table(
    "lifecast_batches",
    _metadata,
    # batch_no: a small surrogate key for the row tables (a 4-byte key instead of a 32-character
    # id in 2 x n_customers rows); batch_id: the public id
    sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("batch_id", _ID, nullable=False, unique=True),
    sa.Column("as_of", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(64), nullable=False),
    sa.Column("n_customers", sa.Integer, nullable=False),
    sa.Column("feature_columns", sa.Text, nullable=False),
    sa.Column("model_versions", sa.Text, nullable=False),
    sa.Column("segmenter", sa.Text),
    sa.Column("metadata", sa.Text),
    sa.Column("segment_summary", sa.Text, nullable=False),
)
_current = sa.Table(
    "lifecast_current",
    _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("batch_no", sa.Integer, nullable=False),
    sa.Column("switched_at", sa.String(64), nullable=False),
)
# The scores table stays narrow (no JSON, no blobs) because ranked lists and segment totals
# scan it; on SQLite it is WITHOUT ROWID (ignored elsewhere): its primary key is its b-tree, so
# rows are stored once, clustered by (batch_no, customer_id). The details table has wide rows,
# which SQLite keeps better in an ordinary rowid table beside its primary-key index.
_scores = sa.Table(
    "lifecast_scores",
    _metadata,
    sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.String, primary_key=True),
    *[sa.Column(c, sa.Double) if c in _FLOAT_COLUMNS else sa.Column(c, sa.String)
      for c in SCORE_COLUMNS[1:-1]],
    sqlite_with_rowid=False,
)
_details = sa.Table(
    "lifecast_details",
    _metadata,
    sa.Column("batch_no", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("customer_id", sa.String, primary_key=True),
    sa.Column("reasons", sa.Text),
    sa.Column("feature_values", sa.LargeBinary),
)
_SCORE_SELECT = [c for c in _scores.columns if c.name != "batch_no"]
_SUMMARY_COLUMNS = ("segment", "customers", "mean_churn_probability", "total_value_at_risk",
                    "total_predicted_clv")


# -- small helpers -----------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, pd.Timestamp | datetime):
        return obj.isoformat()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    raise TypeError(f"cannot store a {type(obj).__name__} as JSON: {obj!r}")


_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


def _encode_json(obj: Any) -> str:
    """Compact JSON text (orjson: exact floats like the standard library, ~5x faster on the
    per-customer reasons, most of a batch write's time; NaN becomes null)."""
    return orjson.dumps(obj, default=_json_default, option=_ORJSON_OPTIONS).decode()


def _dumps(obj: Any, what: str) -> str | None:
    if obj is None:
        return None
    try:
        return _encode_json(obj)
    except (TypeError, ValueError, RecursionError) as e:
        raise ValueError(f"{what} cannot be stored as JSON: {e}") from e


def _loads(text: str | None) -> Any:
    return None if text is None else orjson.loads(text)


def _cannot_write(target: Path) -> str | None:
    """Why ``target`` (an existing file, opened for update and left as it was, or a folder, in
    which a file is made and removed at once) cannot be written, or None when it can."""
    folder = target.is_dir()
    try:
        if folder:
            fd, probe = tempfile.mkstemp(prefix=".lifecast-probe-", dir=target)
            os.close(fd)
            os.unlink(probe)
        else:
            with open(target, "r+b"):
                pass
    except OSError as e:
        return (f"no file can be made in {target}" if folder
                else f"{target} cannot be opened for writing") + f" ({e.strerror or e})"
    return None


#: What `CustomerStore.write_batch` and `CustomerStore.prune` do to each table (the pointer
#: row is read FOR UPDATE, which needs UPDATE).
_PG_PRIVILEGES = {
    "lifecast_batches": ("SELECT", "INSERT", "DELETE"),
    "lifecast_scores": ("SELECT", "INSERT", "DELETE"),
    "lifecast_details": ("SELECT", "INSERT", "DELETE"),
    "lifecast_current": ("SELECT", "INSERT", "UPDATE"),
}


#: URL query options users write for a schema (JDBC's currentSchema, Prisma's schema, ...),
#: which libpq refuses as unknown connection options.
_SCHEMA_OPTIONS = ("schema", "currentschema", "search_path", "searchpath", "schemaname")
#: PostgreSQL's SQLSTATEs of insufficient_privilege and invalid_schema_name.
_PG_ACCESS_ERRORS = ("42501", "3F000")


def _search_path_schemas(search_path: str, user: str) -> list[str]:
    """The schema names of a ``search_path`` setting (``"$user"`` resolved), for messages."""
    names = []
    for part in search_path.split(","):
        name = part.strip()
        if name.startswith('"') and name.endswith('"') and len(name) > 1:
            name = name[1:-1].replace('""', '"')
        if name == "$user":
            name = user
        if name:
            names.append(name)
    return names


def _postgres_cannot_write(conn: Connection) -> str | None:
    """Why the role of ``conn`` cannot write a batch into a PostgreSQL store, or None.

    The tables are where the connection's search_path finds them (``lifecast_*``, as every
    statement of the store names them unqualified); missing ones are created in its first
    usable schema (``current_schema()``), which needs CREATE there. Existing ones need the
    privileges of `_PG_PRIVILEGES`, and ``lifecast_batches``' id sequence USAGE. Only reads
    the catalog: nothing is made."""
    quote = conn.dialect.identifier_preparer.quote
    user, schema, search_path = conn.exec_driver_sql(
        "SELECT current_user, current_schema(), current_setting('search_path')").one()
    role = quote(user)
    if schema is None:
        listed = _search_path_schemas(search_path, user)
        usable = dict(conn.execute(
            sa.text("SELECT nspname, has_schema_privilege(oid, 'USAGE') FROM pg_namespace "
                    "WHERE nspname = ANY(:names)"), {"names": listed}).all())
        missing = [n for n in listed if n not in usable]
        denied = [n for n in listed if usable.get(n) is False]
        parts = []
        if missing:
            parts.append(f"create {'it' if len(missing) == 1 else 'one'} "
                         f"({'; '.join(f'CREATE SCHEMA {quote(n)}' for n in missing)})")
        if denied:
            parts.append("; ".join(f"GRANT USAGE ON SCHEMA {quote(n)} TO {role}"
                                   for n in denied))
        return (f"no schema of the search_path ({search_path}) exists or is usable by role "
                f"{user!r}, so there is no schema to keep the store's tables in: "
                + (" or ".join(parts) if parts else "set one") +
                ", or name an existing schema in the URL with "
                "?options=-csearch_path%3D<schema>")
    problems: list[str] = []
    grants: list[str] = []
    absent: list[str] = []
    for table, wanted in _PG_PRIVILEGES.items():
        row = conn.execute(sa.text(
            "SELECT n.nspname, c.relname FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = to_regclass(:t)"),
            {"t": table}).first()
        if row is None:
            absent.append(table)
            continue
        name = f"{quote(row[0])}.{quote(row[1])}"
        lacking = [p for p in wanted if not conn.execute(
            sa.text("SELECT has_table_privilege(to_regclass(:t), :p)"),
            {"t": table, "p": p}).scalar()]
        if lacking:
            problems.append(f"{', '.join(lacking)} on {name}")
            grants.append(f"GRANT {', '.join(lacking)} ON {name} TO {role}")
        if table == "lifecast_batches":
            sequence = conn.execute(sa.text(
                "SELECT pg_get_serial_sequence(:t, 'batch_no')"), {"t": name}).scalar()
            if sequence and not conn.execute(sa.text(
                    "SELECT has_sequence_privilege(:s, 'USAGE')"), {"s": sequence}).scalar():
                problems.append(f"USAGE on sequence {sequence}")
                grants.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {role}")
    if absent and not conn.execute(sa.text("SELECT has_schema_privilege(:s, 'CREATE')"),
                                   {"s": schema}).scalar():
        problems.insert(0, f"CREATE on schema {quote(schema)} (the first schema of its "
                           f"search_path, where {', '.join(absent)} would be created)")
        grants.insert(0, f"GRANT CREATE ON SCHEMA {quote(schema)} TO {role}")
    if not problems:
        return None
    where = quote(schema)
    then = "" if len(absent) < len(_PG_PRIVILEGES) else (
        f" (or run the first `lifecast score` as a role that may create tables there, then "
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {where} TO {role}; "
        f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA {where} TO {role})")
    return (f"role {user!r} lacks {'; '.join(problems)}. Have the schema's owner run: "
            f"{'; '.join(grants)}{then}")


def _few(values: Iterable[Any], n: int = 5) -> str:
    """The first n values, for error messages."""
    values = list(values)
    shown = ", ".join(repr(v) for v in values[:n])
    return shown + (f", ... ({len(values)} in all)" if len(values) > n else "")


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _customer_ids(column: pd.Series, frame: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, order)``: the ids as an object array of str and the permutation sorting them;
    refuses missing and duplicate ids."""
    missing = column.isna()
    if missing.any():
        rows = list(column.index[missing.to_numpy()])
        raise ValueError(f"{frame}: customer_id is missing in {int(missing.sum())} row(s) "
                         f"(index {_few(rows)})")
    text = column.astype(str)
    order = text.argsort(kind="stable").to_numpy()
    ids = text.to_numpy(dtype=object)
    ranked = ids[order]
    dup = ranked[1:] == ranked[:-1]  # sorted: duplicates are neighbours
    if dup.any():
        names = list(dict.fromkeys(ranked[1:][dup].tolist()))
        raise ValueError(f"{frame}: duplicate customer_id(s) {_few(names)}; "
                         f"one row per customer is expected")
    return ids, order


def _float_column(column: pd.Series, what: str) -> np.ndarray:
    """A numeric column as float64; names a few offending values if it is not numeric."""
    if pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_numeric_dtype(column.dtype):
        try:
            return column.to_numpy(dtype="float64", na_value=np.nan)
        except (TypeError, ValueError):
            pass
    numeric = pd.to_numeric(column, errors="coerce")
    bad = numeric.isna() & column.notna()
    if bad.any():
        raise ValueError(f"{what} must be numeric; it holds {_few(column[bad].unique())} "
                         f"(dtype {column.dtype})")
    return numeric.to_numpy(dtype="float64", na_value=np.nan)


def _nullable_list(values: np.ndarray) -> list[float | None]:
    """float64 array -> list of Python floats with None for NaN (stored as SQL NULL)."""
    out: list[float | None] = values.tolist()
    for i in np.flatnonzero(np.isnan(values)).tolist():
        out[i] = None
    return out


def _text_list(column: pd.Series, order: np.ndarray) -> list[str | None]:
    """A column, reordered, as a list of str with None for missing values (through its
    distinct values: these columns hold few)."""
    codes, uniques = pd.factorize(column, use_na_sentinel=True)
    lookup = np.empty(len(uniques) + 1, dtype=object)  # code -1 (missing) -> the last: None
    lookup[:-1] = [u if type(u) is str else str(u) for u in uniques]
    return lookup[codes[order]].tolist()


def _encode_reasons(column: pd.Series, order: np.ndarray) -> list[str | None]:
    """Each customer's reasons (a list of dicts), reordered, as JSON text; None/NaN -> NULL.

    The JSON encoding was most of the time of a write with the standard library (about 9 us
    per customer with three reasons, mostly formatting floats exactly); orjson takes ~1.5."""
    values = column.to_numpy(dtype=object)[order].tolist()
    if set(map(type, values)) <= {list}:  # the usual case: one C-level pass
        try:
            return list(map(_encode_json, values))
        except (TypeError, ValueError, RecursionError):
            pass  # the loop below names the customer row
    out: list[str | None] = []
    for i, value in enumerate(values):
        if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
            out.append(None)
            continue
        if isinstance(value, str):  # already JSON text: check it parses
            try:
                orjson.loads(value)
            except ValueError as e:
                raise ValueError(f"scores: reasons of customer row {i} is a string that is "
                                 f"not JSON: {value[:80]!r}") from e
            out.append(value)
            continue
        try:
            out.append(_encode_json(value))
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"scores: reasons of customer row {i} cannot be stored as JSON "
                             f"({e}); expected a list of dicts") from e
    return out


def _decode_reasons(text: str | None) -> list[dict[str, Any]]:
    return [] if text is None else orjson.loads(text)


def _as_timestamp(value: Any, what: str) -> pd.Timestamp:
    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a timestamp, got {value!r}") from e
    if pd.isna(ts):
        raise ValueError(f"{what} must be a timestamp, got {value!r}")
    return ts


# -- the store ---------------------------------------------------------------------------------


class CustomerStore:
    """Per-customer scores and features of each scoring batch, in a SQL database.

    Thread-safe: one instance may serve many threads (each call takes its own pooled
    connection). ``__init__`` only parses and stores the URL; the engine is created on first
    use; `close` disposes it (the store can be used again afterwards).

    Args:
        url: a SQLAlchemy URL: ``sqlite:///path/to/file.db`` (see `default_url`) or
            ``postgresql+psycopg://user:password@host:5432/db``. ``postgresql://`` and
            ``postgres://`` without a driver mean psycopg (version 3, the ``postgres`` extra).
        keep_batches: how many batches to keep, the current one included (>= 1).
        chunk_size: rows per INSERT round trip when writing.

    Errors: ``ValueError``/``TypeError`` for bad input (naming the columns, ids or URL at
    fault); `EmptyStoreError` when reading before any batch was written; `StoreUnavailableError`
    when the database cannot be opened or fails (the URL is named, its password hidden);
    `StoreError` (their base) when the database driver is missing.
    """

    def __init__(self, url: str | URL, *, keep_batches: int = DEFAULT_KEEP_BATCHES,
                 chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        if int(keep_batches) < 1:
            raise ValueError(f"keep_batches must be >= 1, got {keep_batches}")
        if int(chunk_size) < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.keep_batches = int(keep_batches)
        self.chunk_size = int(chunk_size)
        self._url = self._parse_url(url)
        self.url = self._url.render_as_string(hide_password=False)
        self._engine: Engine | None = None
        self._lock = threading.Lock()
        self._schema_ready = False
        # `lookup`'s caches: compiled SQL per padded id count, and the constants of recent
        # batches by (batch_no, batch_id) (a batch never changes once written)
        self._lookup_sql: dict[int, tuple[str, tuple[str, ...] | None, dict[str, Any]]] = {}
        self._batch_infos: dict[tuple[int, str], BatchInfo] = {}

    def check_reachable(self) -> None:
        """Raise `StoreUnavailableError` (or `StoreError` for a missing driver) now if a
        batch could not be written: a database server that cannot be reached, or a SQLite
        file whose folder cannot be created or written. Callers that compute for minutes
        before `write_batch` check first. Leaves nothing behind (not even a SQLite file).

        For PostgreSQL the role's privileges are checked where the tables are or will be
        (the first schema of the connection's search_path, see `_postgres_cannot_write`):
        a role that may connect but not create or fill the tables is refused here, not
        after the scoring work. For SQLite the folder is tried for real (a file made and
        removed at once in the nearest folder that exists): permission bits do not tell, as
        root may write anywhere by them, ``/proc`` or a read-only mount included."""
        path = self._sqlite_path
        if path is not None:
            folder = next((p for p in (path.parent, *path.parent.parents) if p.exists()),
                          None)
            if folder is None or not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
                raise StoreUnavailableError(
                    f"cannot write the customer store {self.safe_url}: "
                    f"{folder or path.parent} is not a folder this user can write to")
            if path.exists() and not os.access(path, os.R_OK | os.W_OK):
                raise StoreUnavailableError(
                    f"cannot write the customer store {self.safe_url}: {path} is read-only")
            why = _cannot_write(path if path.exists() else folder)
            if why:
                raise StoreUnavailableError(
                    f"cannot write the customer store {self.safe_url}: {why}. Give a store "
                    f"in a folder this user can write to")
            return
        if self._is_sqlite:  # in memory: nothing to reach
            return
        # in a transaction of the store's, so that a connection dropped meanwhile is what
        # `_unavailable` decides (`StoreUnreachableError`), not SQLAlchemy's raw error
        with self._transaction(write=False) as conn:
            why = _postgres_cannot_write(conn) if conn.dialect.name == "postgresql" else None
        if why:
            raise StoreUnavailableError(f"cannot write the customer store {self.safe_url}: {why}")

    def _connect(self) -> Connection:
        """A new connection; `StoreUnavailableError` naming the store when there is none."""
        try:
            return self._get_engine().connect()
        except sa_exc.DBAPIError as e:
            message = _db_message(e)
            hint = ""
            option = re.search(r'invalid connection option "([^"]+)"', message)
            if option and option.group(1).lower() in _SCHEMA_OPTIONS:
                hint = (f". PostgreSQL takes no {option.group(1)!r} in the URL: to keep the "
                        f"store's tables in schema <name>, give ?options=-csearch_path%3D<name>"
                        f" (the schema must exist)")
            raise _unavailable(e)(
                f"cannot open the customer store at {self.safe_url}: {message}{hint}"
            ) from e

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def default_url(cls, workdir: str | Path = ".") -> str:
        """``sqlite:///<absolute workdir>/lifecast_store.db``."""
        return f"sqlite:///{(Path(workdir).expanduser().resolve() / _STORE_FILE).as_posix()}"

    @classmethod
    def configured_url(cls, url: str | None = None, workdir: str | Path = ".") -> str:
        """``url`` when given, else ``$LIFECAST_STORE_URL``, else `default_url`: the one rule
        `lifecast score`, `lifecast serve` and the service follow, so that what is scored
        is what is served."""
        return url or os.environ.get(STORE_URL_ENV) or cls.default_url(workdir)

    @staticmethod
    def _parse_url(url: str | URL) -> URL:
        if isinstance(url, URL):
            parsed = url
        elif isinstance(url, str | os.PathLike):
            text = os.fspath(url)
            try:
                parsed = make_url(text)
            except (sa_exc.ArgumentError, ValueError) as e:
                hint = ""
                if "://" not in text:
                    hint = f"; for a file, use sqlite:///{Path(text).expanduser().resolve()}"
                raise ValueError(
                    f"invalid customer store URL {masked_url(text)!r}: expected a SQLAlchemy URL "
                    f"such as sqlite:///path/to/{_STORE_FILE} or "
                    f"postgresql+psycopg://user:password@host:5432/db{hint}"
                ) from e
        else:
            raise TypeError(f"url must be a str, got {type(url).__name__}")
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        return parsed

    @property
    def safe_url(self) -> str:
        """The URL with its passwords hidden (for messages and logs)."""
        return masked_url(self._url)

    def __repr__(self) -> str:
        return f"CustomerStore({self.safe_url!r})"

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: gone when this process ends."""
        if not self._is_sqlite:
            return False
        database = self._url.database or ""
        if database.startswith("file:"):  # a URI: memory only when it says so
            return (database.startswith("file::memory:") or "mode=memory" in database
                    or self._url.query.get("mode") == "memory")
        return self._sqlite_path is None

    @property
    def _is_sqlite(self) -> bool:
        return self._url.get_backend_name() == "sqlite"

    @property
    def _sqlite_path(self) -> Path | None:
        """The database file of a file-based SQLite URL; None for memory or other backends."""
        if not self._is_sqlite:
            return None
        db = self._url.database
        if not db or db == ":memory:" or db.startswith("file:") or self._url.query.get("uri"):
            return None
        return Path(db)

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                self._engine = self._create_engine()
            return self._engine

    def _create_engine(self) -> Engine:
        try:
            if self._is_sqlite:
                engine = self._create_sqlite_engine()
            else:
                engine = sa.create_engine(self._url, pool_pre_ping=True)
        except (ModuleNotFoundError, sa_exc.NoSuchModuleError) as e:
            if self._url.get_backend_name() == "duckdb":
                raise StoreError(
                    f"cannot use {self.safe_url} as the customer store: it is a SQLAlchemy "
                    f"database (SQLite or PostgreSQL); DuckDB files are read as input only. "
                    f"Use sqlite:///path/{_STORE_FILE}") from e
            raise StoreError(f"cannot use the customer store at {self.safe_url}: {e}. "
                             f"{driver_hint(self._url)}") from e
        except sa_exc.ArgumentError as e:
            raise ValueError(f"invalid customer store URL {self.safe_url}: {e}") from e
        return engine

    def _create_sqlite_engine(self) -> Engine:
        memory = self.in_memory
        connect_args: dict[str, Any] = {"check_same_thread": False}
        if "timeout" not in self._url.query:  # the URL's ?timeout=<seconds> wins
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT
        kwargs: dict[str, Any] = {"connect_args": connect_args}
        if memory:  # one shared connection, or every connection would see its own database
            kwargs["poolclass"] = StaticPool
        engine = sa.create_engine(self._url, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # SQLAlchemy, not the sqlite3 module, emits BEGIN (see _on_begin): reads then run in
            # a real transaction with one snapshot.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            try:
                if not memory:
                    cursor.execute("PRAGMA page_size=8192")  # only takes effect on a new file
                    cursor.execute("PRAGMA journal_mode=WAL")
                    cursor.execute("PRAGMA journal_size_limit=67108864")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.execute("PRAGMA cache_size=-262144")
            finally:
                cursor.close()

        @sa.event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # writers take the write lock up front, so they wait (busy timeout) instead of
            # failing when another writer commits first
            write = conn.get_execution_options().get("lifecast_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine

    def close(self) -> None:
        """Dispose the engine and its connections (the store can still be used later)."""
        with self._lock:
            engine, self._engine = self._engine, None
            self._lookup_sql = {}
            self._batch_infos = {}
        if engine is not None:
            engine.dispose()

    def __enter__(self) -> CustomerStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transactions --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        """A connection inside one transaction: committed on success, rolled back on error.

        Reads see one snapshot of the database (SQLite: BEGIN on WAL; PostgreSQL and others:
        REPEATABLE READ), so the pointer and the rows it points to are read consistently.
        """
        if write and (path := self._sqlite_path) is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StoreUnavailableError(
                    f"cannot create the folder of the customer store {self.safe_url}: {e}"
                ) from e
        conn = self._connect()
        with conn:
            if self._is_sqlite:
                conn.execution_options(lifecast_write=write)
            elif not write:
                conn.execution_options(isolation_level="REPEATABLE READ")
            try:
                with conn.begin():
                    yield conn
            except (sa_exc.OperationalError, sa_exc.InterfaceError) as e:
                # the database failed us (connection lost, locked for too long, disk error...)
                raise _unavailable(e)(
                    f"customer store {self.safe_url}: {_db_message(e)}") from e
            except Exception as e:
                if self._is_sqlite and type(getattr(e, "orig", None)) is sqlite3.DatabaseError:
                    # SQLite's plain DatabaseError is a damaged file ("database disk image is
                    # malformed", "file is not a database"), e.g. replaced under an open
                    # connection: the store is unavailable, as when it cannot be opened
                    raise StoreUnavailableError(
                        f"customer store {self.safe_url}: {_db_message(e)}") from e
                # PostgreSQL refusing this role (a privilege revoked, a schema dropped; also
                # from psycopg directly, as COPY runs on its cursor): the store's setup, not a
                # bug; other errors stay what they are
                orig = getattr(e, "orig", e)
                if getattr(orig, "sqlstate", None) not in _PG_ACCESS_ERRORS:
                    raise
                message = " ".join(str(orig).split())
                raise StoreUnavailableError(
                    f"customer store {self.safe_url}: {message} (see "
                    f"`CustomerStore.check_reachable` for the privileges a writer needs; "
                    f"a reader needs USAGE on the schema and SELECT on the tables)") from e

    def _ensure_schema(self) -> None:
        if self._schema_ready:
            return
        try:
            with self._transaction(write=True) as conn:
                _metadata.create_all(conn, checkfirst=True)
        except (sa_exc.IntegrityError, sa_exc.ProgrammingError):
            # another writer created the tables between our check and our CREATE (PostgreSQL
            # refuses the loser with a unique violation in its catalog, or "already
            # exists"): they are there now, which a second pass checks
            with self._transaction(write=True) as conn:
                _metadata.create_all(conn, checkfirst=True)
        self._schema_ready = True

    def _has_schema(self, conn: Connection) -> bool:
        if not self._schema_ready:
            if not sa.inspect(conn).has_table(_current.name):
                return False
            self._schema_ready = True
        return True

    def _empty(self) -> bool:
        """True when the store certainly holds nothing, without creating a SQLite file."""
        path = self._sqlite_path
        return not self._schema_ready and path is not None and not path.exists()

    @contextlib.contextmanager
    def _read(self) -> Iterator[tuple[Connection, dict[str, Any]]]:
        """A read transaction and the current batch; raises EmptyStoreError without one."""
        if self._empty():
            raise EmptyStoreError(f"{EMPTY_STORE_MESSAGE} (customer store: {self.safe_url})")
        with self._transaction(write=False) as conn:
            batch = self._current_batch(conn)
            if batch is None:
                raise EmptyStoreError(f"{EMPTY_STORE_MESSAGE} (customer store: {self.safe_url})"
                                      f"{self._unreached(conn)}")
            yield conn, batch

    def _unreached(self, conn: Connection) -> str:
        """PostgreSQL: when the store's tables are not on this connection's search_path but
        other schemas hold them (`lifecast score` ran with another search_path than this
        reader), what to add to the URL; else ''."""
        if conn.dialect.name != "postgresql" or self._schema_ready:
            return ""
        schemas = [r[0] for r in conn.exec_driver_sql(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relname = 'lifecast_current' AND c.relkind = 'r' "
            "AND NOT pg_table_is_visible(c.oid) ORDER BY 1")]
        if not schemas:
            return ""
        path = conn.exec_driver_sql("SELECT current_setting('search_path')").scalar()
        return (f"; its search_path ({path}) does not reach the store's tables in schema "
                f"{' and '.join(schemas)}: give the URL `lifecast score` wrote with, e.g. "
                f"with ?options=-csearch_path%3D{schemas[0]}")

    def unreached_hint(self) -> str:
        """`_unreached` on a connection of its own ('' on any database error): for callers
        that found the store empty through `current_batch`."""
        if self._is_sqlite:
            return ""
        try:
            with self._transaction(write=False) as conn:
                return self._unreached(conn)
        except (StoreError, sa_exc.DBAPIError):
            return ""

    def _current_batch(self, conn: Connection) -> dict[str, Any] | None:
        if not self._has_schema(conn):
            return None
        row = conn.execute(
            sa.select(_batches)
            .join(_current, _current.c.batch_no == _batches.c.batch_no)
            .where(_current.c.id == 1)
        ).mappings().first()
        return None if row is None else _batch_dict(row)

    # -- writing -------------------------------------------------------------------------------

    def write_batch(
        self,
        scores: pd.DataFrame,
        features: pd.DataFrame,
        *,
        as_of: pd.Timestamp,
        model_versions: dict[str, str],
        segmenter: dict | None = None,
        metadata: dict | None = None,
        feature_definitions: int | None = DEFINITIONS_VERSION,
    ) -> str:
        """Write a new batch and make it current, atomically; returns its ``batch_id``.

        Args:
            scores: one row per customer with `SCORE_COLUMNS` (other columns are ignored; an
                ``as_of`` column, if present, must equal ``as_of``). ``reasons`` holds a list of
                dicts per customer (or JSON text, or None).
            features: ``customer_id`` plus the numeric feature columns the models used, one row
                per customer of ``scores`` (the same set of customers). Stored as float64.
            as_of: the cutoff of the scores.
            model_versions: e.g. ``{"churn": "3", "clv": "2"}``; read back as
                ``churn_model_version``, ``clv_model_version`` columns.
            segmenter: the segmenter's state (e.g. ``RFMSegmenter.to_dict()``), JSON-serializable.
            metadata: anything else JSON-serializable (run id, data source, ...).
            feature_definitions: the version of the feature definitions ``features`` were
                built with (default: this lifecast's, `features.registry.DEFINITIONS_VERSION`),
                saved in the metadata under ``feature_definitions``; the service refuses a
                batch of other definitions than its models'. None records none (as batches
                written before it was recorded, which count as version 1).

        Either the whole batch becomes current or, on any error, nothing changes. Afterwards
        batches beyond the newest ``keep_batches`` are deleted. Of concurrent writes, the one
        that commits last is current.
        """
        started = time.perf_counter()
        as_of_ts = _as_timestamp(as_of, "as_of")
        versions = _check_versions(model_versions)
        prepared = _prepare(scores, features, as_of_ts)
        created = _utcnow()
        batch_id = f"{created:%Y%m%dT%H%M%S%fZ}-{secrets.token_hex(3)}"
        batch_row = {
            "batch_id": batch_id,
            "as_of": as_of_ts.isoformat(),
            "created_at": created.isoformat(),
            "n_customers": prepared.n,
            "feature_columns": _dumps(prepared.feature_columns, "feature column names"),
            "model_versions": _dumps(versions, "model_versions"),
            "segmenter": _dumps(segmenter, "segmenter"),
            "metadata": _dumps(metadata if feature_definitions is None else
                               {**(metadata or {}), DEFINITIONS_KEY: feature_definitions},
                               "metadata"),
            "segment_summary": _dumps(prepared.segment_summary, "segment summary"),
        }
        self._ensure_schema()
        with self._transaction(write=True) as conn:
            batch_no = conn.execute(_batches.insert().values(batch_row)).inserted_primary_key[0]
            for start in range(0, prepared.n, self.chunk_size):
                stop = min(start + self.chunk_size, prepared.n)
                self._insert_rows(conn, _scores, prepared.score_rows(batch_no, start, stop))
                self._insert_rows(conn, _details, prepared.detail_rows(batch_no, start, stop))
            switched = {"batch_no": batch_no, "switched_at": _utcnow().isoformat()}
            point = _current.update().where(_current.c.id == 1).values(switched)
            if conn.execute(point).rowcount == 0:  # the store's first batch
                try:
                    with conn.begin_nested():  # a savepoint: a failed INSERT keeps the rest
                        conn.execute(_current.insert().values(id=1, **switched))
                except sa_exc.IntegrityError:  # another first batch committed the row first
                    conn.execute(point)
        logger.info("customer store %s: batch %s current (%d customers, %.1f s)",
                    self.safe_url, batch_id, prepared.n, time.perf_counter() - started)
        try:  # the new batch is current and complete: housekeeping must not fail the write
            self.prune()
            self._analyze()
        except Exception:
            logger.warning("customer store %s: housekeeping after batch %s failed",
                           self.safe_url, batch_id, exc_info=True)
        return batch_id

    def _analyze(self) -> None:
        """PostgreSQL: refresh the planner's statistics after a bulk write (without them it
        scans a whole batch per lookup until autovacuum gets round to it)."""
        engine = self._get_engine()
        if engine.dialect.name != "postgresql":
            return
        quote = engine.dialect.identifier_preparer
        with self._transaction(write=True) as conn:
            conn.exec_driver_sql("ANALYZE " + ", ".join(
                quote.format_table(t) for t in (_batches, _scores, _details)))

    def _insert_rows(self, conn: Connection, table: sa.Table, rows: list[tuple]) -> None:
        """INSERT many rows (tuples in the table's column order) in one round trip."""
        if not rows:
            return
        dialect = conn.dialect
        if dialect.positional and dialect.paramstyle == "qmark":
            # the driver's executemany directly (SQLite): several times faster than building a
            # dict per row; the SQL is still the one SQLAlchemy compiles for the table
            compiled = table.insert().compile(dialect=dialect)
            if list(compiled.positiontup or []) != [c.key for c in table.columns]:
                raise RuntimeError(f"unexpected parameter order in {compiled}")
            conn.exec_driver_sql(str(compiled), rows)
        elif dialect.name == "postgresql" and dialect.driver == "psycopg":
            # COPY ... FROM STDIN through psycopg, in the same transaction: about ten times
            # faster than multi-row INSERTs
            quote = dialect.identifier_preparer
            columns = ", ".join(quote.quote(c.name) for c in table.columns)
            cursor = conn.connection.driver_connection.cursor()
            try:
                with cursor.copy(f"COPY {quote.format_table(table)} ({columns}) FROM STDIN"
                                 ) as copy:
                    for row in rows:
                        copy.write_row(row)
            finally:
                cursor.close()
        else:  # any other driver: SQLAlchemy batches the rows ("insertmanyvalues")
            keys = [c.key for c in table.columns]
            conn.execute(table.insert(), [dict(zip(keys, r, strict=True)) for r in rows])

    def prune(self, keep: int | None = None) -> list[str]:
        """Delete all but the newest ``keep`` batches (default ``keep_batches``); never the
        current one. Returns the deleted batch ids."""
        keep = self.keep_batches if keep is None else int(keep)
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        if self._empty():
            return []
        with self._transaction(write=True) as conn:
            if not self._has_schema(conn):
                return []
            # FOR UPDATE: a writer that has switched the pointer but not committed would
            # otherwise commit between this read and the listing below, and its batch, not
            # among the newest numbers and not current as read here, would be deleted while
            # current. Locking the pointer row waits for that writer and holds off the next
            # (SQLite serializes whole write transactions and renders no FOR UPDATE).
            current = conn.execute(
                sa.select(_current.c.batch_no).where(_current.c.id == 1).with_for_update()
            ).scalar()
            rows = conn.execute(
                sa.select(_batches.c.batch_no, _batches.c.batch_id)
                .order_by(_batches.c.batch_no.desc())
            ).all()
            kept = {r.batch_no for r in rows[:keep]} | {current}
            drop = [r for r in rows if r.batch_no not in kept]
            if drop:
                numbers = [r.batch_no for r in drop]
                for table in (_scores, _details, _batches):
                    conn.execute(table.delete().where(table.c.batch_no.in_(numbers)))
        if drop:
            logger.info("customer store %s: deleted %d old batch(es)", self.safe_url, len(drop))
        return [r.batch_id for r in drop]

    # -- reading -------------------------------------------------------------------------------

    def current_batch(self) -> dict | None:
        """The current batch: ``batch_id, as_of, model_versions, created_at, n_customers,
        n_features, feature_columns, segmenter, metadata``; None while the store is empty."""
        if self._empty():
            return None
        with self._transaction(write=False) as conn:
            batch = self._current_batch(conn)
        return None if batch is None else _public(batch)

    def get_customers(
        self, customer_ids: Sequence[str]
    ) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
        """Scores and features of some customers in the current batch.

        Returns ``(scores, features, unknown)``: ``scores`` has one row per known id in the
        order asked (the per-customer output: ``customer_id, as_of, churn_probability, ...,
        reasons``, then ``<name>_model_version`` per model and ``batch_id``); ``features``
        has ``customer_id`` and the batch's feature columns (float64, NaN kept), row for row
        the same customers; ``unknown`` lists the ids not in the batch, once each, in the order
        asked. Both frames and the batch come from one consistent snapshot.
        """
        if isinstance(customer_ids, str):
            raise TypeError("customer_ids must be a list of ids, not a single string")
        asked = [str(c) for c in customer_ids]
        unique = list(dict.fromkeys(asked))
        columns = [*_SCORE_SELECT, _details.c.reasons, _details.c.feature_values]
        join = _scores.outerjoin(_details, sa.and_(
            _details.c.batch_no == _scores.c.batch_no,
            _details.c.customer_id == _scores.c.customer_id,
        ))
        found: dict[str, Any] = {}
        with self._read() as (conn, batch):
            for start in range(0, len(unique), _READ_CHUNK):
                chunk = unique[start:start + _READ_CHUNK]
                stmt = sa.select(*columns).select_from(join).where(
                    _scores.c.batch_no == batch["batch_no"], _scores.c.customer_id.in_(chunk))
                for row in conn.execute(stmt):
                    found[row.customer_id] = row
        rows = [found[c] for c in asked if c in found]
        unknown = [c for c in unique if c not in found]
        return (_scores_frame(rows, batch), _features_frame(rows, batch), unknown)

    def lookup(self, customer_ids: Sequence[str]) -> CustomerRows:
        """The service's fast read of some customers of the current batch: plain lists and
        one float64 matrix instead of `get_customers`' DataFrames (the same values).

        One SQL statement per 1,024 distinct ids (the ``IN`` list padded to a power of two,
        so that its compiled text is reused) resolves the current-batch pointer and reads the
        customers' score and feature rows; the feature bytes are decoded with one
        ``np.frombuffer``. All statements of a call run in one read transaction (the snapshot
        of `get_customers`), so the rows, and the `BatchInfo` they come with, belong to one
        batch, old or new, never a mix. The batch's constants (``as_of``, feature columns,
        model versions, metadata) are read once per batch and cached by
        ``(batch_no, batch_id)``; once they are, up to 1,024 ids are read in one statement on
        a driver connection, without a transaction of SQLAlchemy's (`_quick_lookup`).

        Returns a `CustomerRows`: the known ids once each in the order asked, their score
        columns and feature matrix row for row, and the unknown ids.
        """
        if isinstance(customer_ids, str):
            raise TypeError("customer_ids must be a list of ids, not a single string")
        unique = list(dict.fromkeys(str(c) for c in customer_ids))
        if not self._schema_ready and self._empty():  # (_empty builds a Path: skip it)
            raise EmptyStoreError(f"{EMPTY_STORE_MESSAGE} (customer store: {self.safe_url})")
        if len(unique) <= _LOOKUP_CHUNK:
            quick = self._quick_lookup(unique)
            if quick is not None:
                return quick
        found: dict[str, tuple] = {}
        pointer: tuple[int, str] | None = None
        with self._transaction(write=False) as conn:
            if not self._has_schema(conn):
                raise EmptyStoreError(
                    f"{EMPTY_STORE_MESSAGE} (customer store: {self.safe_url})"
                    f"{self._unreached(conn)}")
            for start in range(0, max(len(unique), 1), _LOOKUP_CHUNK):
                chunk = unique[start:start + _LOOKUP_CHUNK]
                sql, order, params = self._lookup_statement(conn, len(chunk))
                params = dict(params)
                pad = chunk[-1] if chunk else ""
                for j in range(_padded(len(chunk))):
                    params[f"lc_id{j}"] = chunk[j] if j < len(chunk) else pad
                bound: Any = (tuple(params[k] for k in order) if order is not None
                              else params)
                for row in conn.exec_driver_sql(sql, bound):
                    pointer = (row[0], row[1])
                    if row[2] is not None:
                        found[row[2]] = row
            if pointer is None:  # no current-batch pointer: nothing written yet
                raise EmptyStoreError(
                    f"{EMPTY_STORE_MESSAGE} (customer store: {self.safe_url})")
            info = self._batch_infos.get(pointer)
            if info is None:
                info = self._batch_info(conn, *pointer)
        return _customer_rows(info, unique, found)

    def _quick_lookup(self, unique: list[str]) -> CustomerRows | None:
        """`lookup` in ONE statement on a pooled driver connection, without SQLAlchemy's
        transaction machinery (about 30 us instead of 230 us for one id on SQLite). One
        statement sees one snapshot by itself (SQLite: its implicit read transaction;
        PostgreSQL: READ COMMITTED's per-statement snapshot). None when it cannot answer
        alone: a batch whose constants are not cached yet, an empty store or any database
        error; `lookup` then reads in a transaction, which also reports the errors."""
        cached = self._lookup_sql.get(_padded(len(unique)))
        engine = self._engine
        if cached is None or engine is None:
            return None
        sql, order, fixed = cached
        params = dict(fixed)
        pad = unique[-1] if unique else ""
        for j in range(_padded(len(unique))):
            params[f"lc_id{j}"] = unique[j] if j < len(unique) else pad
        bound: Any = tuple(params[k] for k in order) if order is not None else params
        try:
            conn = engine.raw_connection()
        except Exception:  # the pool raises the driver's own errors (server down): the
            return None    # transactional path reports them
        try:
            cursor = conn.cursor()
            try:
                cursor.execute(sql, bound)
                fetched = cursor.fetchall()
            finally:
                cursor.close()
        except Exception:  # the driver's own errors: the transactional path names them
            return None
        finally:
            conn.close()  # back to the pool, which rolls back (and drops a broken connection)
        if not fetched:
            return None
        info = self._batch_infos.get((fetched[0][0], fetched[0][1]))
        if info is None:
            return None
        return _customer_rows(info, unique, {r[2]: r for r in fetched if r[2] is not None})
    def _lookup_statement(self, conn: Connection, n: int
                          ) -> tuple[str, tuple[str, ...] | None, dict[str, Any]]:
        """``(sql, parameter order or None for named parameters, fixed parameters)`` of
        `lookup`'s statement for ``n`` ids (padded to a power of two), compiled once."""
        size = _padded(n)
        cached = self._lookup_sql.get(size)
        if cached is not None:
            return cached
        binds = [sa.bindparam(f"lc_id{j}", type_=sa.String) for j in range(size)]
        stmt = (
            sa.select(_current.c.batch_no, _batches.c.batch_id, *_SCORE_SELECT,
                      _details.c.feature_values)
            .select_from(
                _current.join(_batches, _batches.c.batch_no == _current.c.batch_no)
                .outerjoin(_scores, sa.and_(_scores.c.batch_no == _current.c.batch_no,
                                            _scores.c.customer_id.in_(binds)))
                .outerjoin(_details, sa.and_(_details.c.batch_no == _scores.c.batch_no,
                                             _details.c.customer_id == _scores.c.customer_id))
            )
            .where(_current.c.id == 1)
        )
        compiled = stmt.compile(dialect=conn.dialect)
        fixed = {k: v for k, v in compiled.params.items() if not k.startswith("lc_id")}
        order = tuple(compiled.positiontup) if conn.dialect.positional else None
        cached = (compiled.string, order, fixed)
        self._lookup_sql[size] = cached
        return cached

    def _batch_info(self, conn: Connection, batch_no: int, batch_id: str) -> BatchInfo:
        row = conn.execute(sa.select(_batches).where(_batches.c.batch_no == batch_no)
                           ).mappings().one()
        batch = _batch_dict(row)
        info = BatchInfo(
            batch_no=int(batch_no), batch_id=str(batch["batch_id"]), as_of=batch["as_of"],
            feature_columns=tuple(str(c) for c in batch["feature_columns"]),
            model_versions={str(k): str(v) for k, v in batch["model_versions"].items()},
            metadata=batch["metadata"],
        )
        if info.batch_id != batch_id:  # cannot happen inside one snapshot
            raise StoreError(f"customer store {self.safe_url}: batch {batch_no} changed")
        with self._lock:
            if len(self._batch_infos) >= _BATCH_CACHE:
                self._batch_infos.clear()
            self._batch_infos[(batch_no, batch_id)] = info
        return info

    @staticmethod
    def _not_current(conn: Connection, batch: Mapping[str, Any], batch_id: str) -> str:
        """Why ``batch_id`` is not the current ``batch``, read in the same transaction: a
        batch the store keeps was rescored since; any other id (it said "rescored since" of
        "bogus" too) is unknown, or a batch rescored and deleted since."""
        now = (f"now batch {batch['batch_id']!r}, as of "
               f"{pd.Timestamp(batch['as_of']).isoformat()}")
        restart = ("start the list again at offset 0 with the current batch (no batch_id); "
                   "pages of two batches would skip and repeat customers")
        kept = conn.execute(sa.select(_batches.c.batch_no)
                            .where(_batches.c.batch_id == batch_id)).first()
        if kept is not None:
            return (f"batch_id {batch_id!r} is no longer the customer store's current batch: "
                    f"it was rescored since ({now}); {restart}")
        return (f"batch_id {batch_id!r} is not the customer store's current batch ({now}) "
                f"nor one it keeps: an unknown id, or a batch rescored since and deleted; "
                f"send the batch_id the list's first page answered, or {restart}")

    def ranked(
        self,
        *,
        min_churn_probability: float | None = 0.0,
        min_value: float | None = 0.0,
        segments: list[str] | None = None,
        limit: int = 100,
        offset: int = 0,
        churn_risk: Sequence[str] | str | None = None,
        batch_id: str | None = None,
    ) -> tuple[pd.DataFrame, int]:
        """Who to act on first: the current batch by ``value_at_risk`` (highest first, ties by
        ``customer_id``; missing values last), filtered.

        Keeps customers with ``churn_probability >= min_churn_probability`` and
        ``predicted_clv >= min_value`` (None: no filter; customers whose value is missing never
        pass a filter), when ``segments`` is a non-empty list, in one of them, and when
        ``churn_risk`` is a non-empty list of risk bands (``low``, ``medium``, ``high``), in
        one of them (None, the default here: every band; the service's ``/high_risk`` asks
        for ``["high"]`` unless told otherwise). Returns the page ``[offset, offset + limit)``
        (columns as in `get_customers`) and the number of customers matching the filters.

        ``batch_id`` (the ``attrs["batch_id"]`` of a first page) pins the pages that follow
        to that batch: when another batch has become current since, `BatchChangedError`
        is raised instead of a page of the new batch, whose order differs (pages from two
        batches skip some customers and repeat others).
        """
        limit, offset = int(limit), int(offset)
        if limit < 0 or offset < 0:
            raise ValueError(f"limit and offset must be >= 0, got limit={limit}, "
                             f"offset={offset}")
        conditions = []
        for name, threshold, column in (
            ("min_churn_probability", min_churn_probability, _scores.c.churn_probability),
            ("min_value", min_value, _scores.c.predicted_clv),
        ):
            if threshold is None:
                continue
            threshold = float(threshold)
            if math.isnan(threshold):
                raise ValueError(f"{name} must be a number, got NaN")
            conditions.append(column >= threshold)
        if segments:
            if isinstance(segments, str):
                segments = [segments]
            conditions.append(_scores.c.segment.in_([str(s) for s in segments]))
        if churn_risk:
            bands = [churn_risk] if isinstance(churn_risk, str) else list(churn_risk)
            unknown = [b for b in bands if b not in RISK_BANDS]
            if unknown:
                raise ValueError(f"churn_risk must name risk bands among {list(RISK_BANDS)}, "
                                 f"got {unknown}")
            conditions.append(_scores.c.churn_risk.in_(bands))
        with self._read() as (conn, batch):
            if batch_id is not None and batch["batch_id"] != batch_id:
                raise BatchChangedError(self._not_current(conn, batch, batch_id))
            where = [_scores.c.batch_no == batch["batch_no"], *conditions]
            total = conn.execute(
                sa.select(sa.func.count()).select_from(_scores).where(*where)).scalar_one()
            rows: list[Any] = []
            reasons: dict[str, str | None] = {}
            if limit and offset < total:
                tie = _scores.c.customer_id
                if conn.dialect.name == "postgresql":  # byte order, as SQLite's BINARY
                    tie = tie.collate("C")
                rows = conn.execute(
                    sa.select(*_SCORE_SELECT).where(*where)
                    .order_by(_scores.c.value_at_risk.desc().nulls_last(), tie)
                    .limit(limit).offset(offset)
                ).all()
                # the page's reasons: by key, not joined into the sort over the whole batch
                ids = [r.customer_id for r in rows]
                for start in range(0, len(ids), _READ_CHUNK):
                    reasons.update((r.customer_id, r.reasons) for r in conn.execute(
                        sa.select(_details.c.customer_id, _details.c.reasons).where(
                            _details.c.batch_no == batch["batch_no"],
                            _details.c.customer_id.in_(ids[start:start + _READ_CHUNK]))
                    ))
        return _scores_frame(rows, batch, reasons), int(total)

    def segment_summary(self) -> pd.DataFrame:
        """Per segment of the current batch: ``segment, customers, share,
        mean_churn_probability, total_value_at_risk, total_predicted_clv``.

        Every named segment of `features.segments.SEGMENTS` in that order (empty ones with 0
        customers and a NaN mean), then any other segment name found, alphabetically
        (``"(none)"`` for customers without a segment). The totals are computed once when
        the batch is written (a batch never changes), so this is a single-row read. The
        frame's ``attrs`` hold the batch's ``batch_id`` and ``as_of``.
        """
        with self._read() as (_conn, batch):
            records = batch["segment_summary"]
        frame = pd.DataFrame.from_records(records, columns=_SUMMARY_COLUMNS)
        frame["segment"] = frame["segment"].astype("str")
        frame["customers"] = frame["customers"].astype("int64")
        for col in _SUMMARY_COLUMNS[2:]:
            frame[col] = frame[col].astype("float64")
        total = int(frame["customers"].sum())
        frame.insert(2, "share", frame["customers"] / total if total else 0.0)
        frame.attrs.update(_batch_attrs(batch))
        return frame

    def batches(self) -> pd.DataFrame:
        """The batches kept, newest first: ``batch_id, as_of, created_at, n_customers,
        n_features, model_versions, segmenter, metadata, is_current`` (after concurrent
        writes on PostgreSQL the current one, the last committed, may not be the first)."""
        columns = ["batch_id", "as_of", "created_at", "n_customers", "n_features",
                   "model_versions", "segmenter", "metadata", "is_current"]
        if self._empty():
            return pd.DataFrame(columns=columns)
        with self._transaction(write=False) as conn:
            if not self._has_schema(conn):
                return pd.DataFrame(columns=columns)
            current = conn.execute(sa.select(_current.c.batch_no)).scalar()
            rows = conn.execute(
                sa.select(_batches).order_by(_batches.c.batch_no.desc())).mappings().all()
        records = []
        for row in rows:
            b = _batch_dict(row)
            b["is_current"] = b["batch_no"] == current
            records.append({c: b[c] for c in columns})
        frame = pd.DataFrame(records, columns=columns)
        frame["n_customers"] = frame["n_customers"].astype("int64")
        frame["n_features"] = frame["n_features"].astype("int64")
        frame["is_current"] = frame["is_current"].astype(bool)
        return frame


# -- preparing a batch -------------------------------------------------------------------------


class _Prepared:
    """A validated batch, sorted by customer_id (sequential b-tree inserts), ready to insert."""

    def __init__(self, ids: np.ndarray, columns: dict[str, list], features: np.ndarray,
                 feature_columns: list[str], segment_summary: list[list[Any]]) -> None:
        self.ids = ids.tolist()
        self.columns = columns
        self.segment_summary = segment_summary
        self.features = features  # (n, k) little-endian float64, C order
        self.feature_columns = feature_columns
        self.n = len(self.ids)
        self._width = features.shape[1] * 8

    def score_rows(self, batch_no: int, start: int, stop: int) -> list[tuple]:
        cols = [self.columns[c][start:stop] for c in SCORE_COLUMNS[1:-1]]
        return list(zip([batch_no] * (stop - start), self.ids[start:stop], *cols, strict=True))

    def detail_rows(self, batch_no: int, start: int, stop: int) -> list[tuple]:
        buf, w = self.features[start:stop].tobytes(), self._width
        reasons = self.columns["reasons"]
        return [(batch_no, self.ids[i], reasons[i], buf[(i - start) * w:(i - start + 1) * w])
                for i in range(start, stop)]


def _check_versions(model_versions: Any) -> dict[str, str]:
    if not isinstance(model_versions, Mapping):
        raise TypeError(f"model_versions must be a dict such as {{'churn': '3', 'clv': '2'}}, "
                        f"got {type(model_versions).__name__}")
    out: dict[str, str] = {}
    for key, value in model_versions.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"model_versions keys must be non-empty strings, got {key!r}")
        out[key] = "" if value is None else str(value)
    return out


def _prepare(scores: pd.DataFrame, features: pd.DataFrame, as_of: pd.Timestamp) -> _Prepared:
    if not isinstance(scores, pd.DataFrame) or not isinstance(features, pd.DataFrame):
        raise TypeError("scores and features must be pandas DataFrames")
    missing = [c for c in SCORE_COLUMNS if c not in scores.columns]
    if missing:
        raise ValueError(f"scores is missing required column(s) {missing}; the per-customer "
                         f"output has {list(SCORE_COLUMNS)}")
    if scores.columns.duplicated().any():
        dup = scores.columns[scores.columns.duplicated()].tolist()
        raise ValueError(f"scores has duplicate column name(s) {dup}")
    if len(scores) == 0:
        raise ValueError("scores is empty: a batch needs at least one customer")
    scores = scores.reset_index(drop=True)
    ids, order = _customer_ids(scores["customer_id"], "scores")

    if "as_of" in scores.columns:
        try:
            stamps = pd.to_datetime(scores["as_of"])
            wrong = stamps.isna() | (stamps != as_of)
        except (TypeError, ValueError):
            wrong = pd.Series(True, index=scores.index)
        if wrong.any():
            raise ValueError(f"scores column as_of holds {_few(scores['as_of'][wrong].unique(), 3)}"
                             f", not as_of={as_of}")

    sorted_ids = ids[order]
    columns: dict[str, list] = {}
    floats: dict[str, np.ndarray] = {}
    for c in _FLOAT_COLUMNS:
        floats[c] = values = _float_column(scores[c], f"scores column {c!r}")
        if c in _PROBABILITY_COLUMNS:
            bad = (values < 0) | (values > 1)
            if bad.any():
                raise ValueError(f"scores column {c!r} must be within [0, 1]; customers "
                                 f"{_few(ids[bad])} have {_few(values[bad], 3)}")
        columns[c] = _nullable_list(values[order])
    risk = scores["churn_risk"]
    bad_risk = risk.notna() & ~risk.isin(RISK_BANDS)
    if bad_risk.any():
        raise ValueError(f"scores column 'churn_risk' must be one of {list(RISK_BANDS)}; it "
                         f"holds {_few(risk[bad_risk].unique())}")
    for c in _TEXT_COLUMNS:
        columns[c] = _text_list(scores[c], order)
    columns["reasons"] = _encode_reasons(scores["reasons"], order)

    if "customer_id" not in features.columns:
        raise ValueError("features is missing column 'customer_id'")
    fid_column = features["customer_id"].reset_index(drop=True)
    if len(fid_column) == len(ids) and fid_column.notna().all() and np.array_equal(
            fid_column.astype(str).to_numpy(dtype=object), ids):
        fids = ids  # the usual case: the same customers in the same order
    else:
        fids, _ = _customer_ids(fid_column, "features")
    names = [c for c in features.columns if c != "customer_id"]
    labels = [str(c) for c in names]
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise ValueError(f"features has duplicate column name(s) {dup}")
    position = order if fids is ids else pd.Index(fids).get_indexer(sorted_ids)
    if (position < 0).any() or len(fids) != len(ids):
        lacking = sorted_ids[position < 0]
        extra = pd.Index(fids).difference(pd.Index(ids)).tolist()
        parts = []
        if len(lacking):
            parts.append(f"no features for customer(s) {_few(lacking)}")
        if extra:
            parts.append(f"features for customer(s) not in scores {_few(extra)}")
        raise ValueError("features must have one row per customer of scores: "
                         + "; ".join(parts))
    matrix = np.empty((len(ids), len(names)), dtype="<f8")
    for j, name in enumerate(names):
        values = _float_column(features[name].reset_index(drop=True),
                               f"features column {name!r}")
        matrix[:, j] = values[position]
    return _Prepared(sorted_ids, columns, matrix, labels, _summarize(scores, floats))


def _summarize(scores: pd.DataFrame, floats: Mapping[str, np.ndarray]) -> list[list[Any]]:
    """Rows ``[segment, customers, mean_churn_probability, total_value_at_risk,
    total_predicted_clv]``: every segment of `features.segments.SEGMENTS` in order, then the
    other names found (alphabetically); NaN values are left out of means and sums."""
    from features.segments import SEGMENTS  # here, not at import: importing features is slow

    frame = pd.DataFrame({c: floats[c] for c in _FLOAT_COLUMNS})
    segment = scores["segment"].astype(object)  # also for a categorical column
    frame["segment"] = segment.where(segment.notna(), "(none)").astype(str).to_numpy()
    grouped = frame.groupby("segment", sort=False).agg(
        customers=("segment", "size"),
        mean_churn_probability=("churn_probability", "mean"),
        total_value_at_risk=("value_at_risk", "sum"),
        total_predicted_clv=("predicted_clv", "sum"),
    )
    others = sorted(set(grouped.index) - set(SEGMENTS))
    grouped = grouped.reindex([*SEGMENTS, *others])
    rows = []
    for name, values in zip(grouped.index, grouped.itertuples(index=False), strict=True):
        customers = 0 if pd.isna(values.customers) else int(values.customers)
        mean = values.mean_churn_probability
        rows.append([
            str(name), customers, None if pd.isna(mean) else float(mean),
            0.0 if pd.isna(values.total_value_at_risk) else float(values.total_value_at_risk),
            0.0 if pd.isna(values.total_predicted_clv) else float(values.total_predicted_clv),
        ])
    return rows


# -- reading back ------------------------------------------------------------------------------


def _batch_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    features = _loads(row["feature_columns"]) or []
    return {
        "batch_no": row["batch_no"],
        "batch_id": row["batch_id"],
        "as_of": pd.Timestamp(row["as_of"]),
        "model_versions": _loads(row["model_versions"]) or {},
        "created_at": pd.Timestamp(row["created_at"]),
        "n_customers": int(row["n_customers"]),
        "n_features": len(features),
        "feature_columns": features,
        "segmenter": _loads(row["segmenter"]),
        "metadata": _loads(row["metadata"]),
        "segment_summary": _loads(row["segment_summary"]),
    }


def _public(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k not in ("batch_no", "segment_summary")}


def _scores_frame(rows: Sequence[Any], batch: Mapping[str, Any],
                  reasons: Mapping[str, str | None] | None = None) -> pd.DataFrame:
    """Rows of the scores table (with a ``reasons`` column unless ``reasons`` maps the ids to
    their JSON text) -> the per-customer output, built in one DataFrame call (this dominates
    the latency of a small read)."""
    n = len(rows)
    columns = list(zip(*rows, strict=True)) if n else [()] * len(_SCORE_SELECT)
    data: dict[str, Any] = {}
    for col, values in zip(_SCORE_SELECT, columns, strict=False):
        if col.key in _FLOAT_COLUMNS:
            data[col.key] = np.array(values, dtype="float64")
        else:
            data[col.key] = pd.array(values, dtype="str")
    texts = ([r.reasons for r in rows] if reasons is None
             else [reasons.get(r.customer_id) for r in rows])
    reasons_col = np.empty(n, dtype=object)
    reasons_col[:] = [_decode_reasons(t) for t in texts]
    data["reasons"] = reasons_col
    data["as_of"] = pd.DatetimeIndex([batch["as_of"]] * n) if n else pd.DatetimeIndex(
        [batch["as_of"]])[:0]
    out = {c: data[c] for c in _OUTPUT_COLUMNS}
    for name, version in batch["model_versions"].items():
        out[f"{name}_model_version"] = pd.array([version] * n, dtype="str")
    out["batch_id"] = pd.array([batch["batch_id"]] * n, dtype="str")
    frame = pd.DataFrame(out)
    frame.attrs.update(_batch_attrs(batch))
    return frame


def _batch_attrs(batch: Mapping[str, Any]) -> dict[str, Any]:
    """Which batch a read came from (``DataFrame.attrs``), also when it returned no row:
    a caller that labels the rows must take the label from the same read, not from an
    earlier look at the current batch (a rescore may have landed in between)."""
    return {"batch_id": str(batch["batch_id"]), "as_of": pd.Timestamp(batch["as_of"])}


def _features_frame(rows: Sequence[Any], batch: Mapping[str, Any]) -> pd.DataFrame:
    names = batch["feature_columns"]
    matrix = _feature_matrix([r.feature_values for r in rows], len(names))
    frame = pd.DataFrame(matrix, columns=names)
    frame.insert(0, "customer_id", pd.array([r.customer_id for r in rows], dtype="str"))
    return frame


@dataclass(frozen=True)
class BatchInfo:
    """The constants of one batch, as `CustomerStore.lookup` returns them."""

    batch_no: int
    batch_id: str
    as_of: pd.Timestamp
    feature_columns: tuple[str, ...]
    model_versions: dict[str, str]
    #: the batch's metadata (as `current_batch` returns it), read with its rows: a caller
    #: that checks it must not read it apart, as the batch may be deleted in between
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True)
class CustomerRows:
    """Some customers of one batch (`CustomerStore.lookup`): ``ids`` are the known ones in
    the order asked; ``scores`` maps each column of the per-customer output (``SCORE_COLUMNS``
    without ``customer_id`` and ``reasons``) to its values, row for row (None where missing);
    ``features`` is their float64 feature matrix in the order of
    ``batch.feature_columns`` (NaN where missing); ``unknown`` are the ids not in the batch."""

    batch: BatchInfo
    ids: list[str]
    scores: dict[str, list[Any]]
    features: np.ndarray
    unknown: list[str]


def _customer_rows(info: BatchInfo, unique: list[str], found: Mapping[str, Sequence[Any]]
                   ) -> CustomerRows:
    """`CustomerRows` from `CustomerStore.lookup`'s statement rows by customer id."""
    ids = [c for c in unique if c in found]
    rows = [found[c] for c in ids]
    n_scores = len(_SCORE_SELECT) - 1
    columns = list(zip(*rows, strict=True)) if rows else [()] * (3 + n_scores + 1)
    scores = {col.key: list(values) for col, values in
              zip(_SCORE_SELECT[1:], columns[3:3 + n_scores], strict=True)}
    features = _feature_matrix([r[-1] for r in rows], len(info.feature_columns))
    return CustomerRows(batch=info, ids=ids, scores=scores, features=features,
                        unknown=[c for c in unique if c not in found])


def _padded(n: int) -> int:
    """The smallest power of two >= n (at least 1): `CustomerStore.lookup`'s IN-list size."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _feature_matrix(blobs: Sequence[bytes | None], k: int) -> np.ndarray:
    """Stored feature bytes (little-endian float64, k per row; None: no details row) ->
    an (n, k) float64 matrix, NaN rows for None."""
    width = 8 * k
    nan_row = None
    parts = []
    for blob in blobs:
        if blob is None:
            nan_row = nan_row or np.full(k, np.nan, dtype="<f8").tobytes()
            blob = nan_row
        elif type(blob) is not bytes:  # e.g. a memoryview from some drivers
            blob = bytes(blob)
        if len(blob) != width:
            raise StoreError(f"stored feature values of {len(blob)} bytes, expected {width} "
                             f"({k} float64 values): the store is damaged")
        parts.append(blob)
    data = b"".join(parts)
    matrix = np.frombuffer(data, dtype="<f8").reshape(len(blobs), k)
    return matrix.astype("float64", copy=True)


#: PostgreSQL SQLSTATEs of failures that pass by themselves: connection_exception (class
#: 08), admin_shutdown, crash_shutdown, cannot_connect_now (starting up, shutting down, in
#: recovery), too_many_connections, serialization_failure, deadlock_detected,
#: lock_not_available (a lock_timeout).
_PG_TEMPORARY_STATES = ("57P01", "57P02", "57P03", "53300", "40001", "40P01", "55P03")
#: What libpq says, after "connection to server ... failed: ", when the connection could not
#: be made for a temporary reason. A failed connection carries no SQLSTATE (libpq has no
#: result to hold one; psycopg raises a bare OperationalError), so its message is all there
#: is: the socket's error (English strerror texts, libpq's own "timeout expired"), or the
#: server's FATAL message for the 57P03 and 53300 cases. Anything else (a wrong password, an
#: unknown database or role, a host name that does not resolve, a message in another
#: language) stays a failure for a person to fix.
_PG_TEMPORARY_CONNECT = (
    "Connection refused", "timeout expired", "Connection timed out", "No route to host",
    "Network is unreachable", "Host is unreachable", "Connection reset by peer",
    "server closed the connection unexpectedly", "the database system is starting up",
    "the database system is shutting down", "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "the database system is not accepting connections", "sorry, too many clients already",
    "too many connections for", "remaining connection slots are reserved",
)


def _temporary(e: BaseException) -> bool:
    """Whether a database error is temporary by nature (`StoreUnreachableError`): the one
    place that decides it.

    - SQLAlchemy saw the connection break (``connection_invalidated``: dropped
      mid-transaction, the server restarted or terminated the session);
    - SQLite's SQLITE_BUSY or SQLITE_LOCKED ("database is locked"): another writer held the
      file past the busy timeout;
    - a PostgreSQL SQLSTATE of `_PG_TEMPORARY_STATES` or class 08;
    - psycopg's ConnectionTimeout, or a failed connection whose every attempt failed for a
      reason of `_PG_TEMPORARY_CONNECT`.

    A host name that does not resolve is not temporary: psycopg resolves it itself ("failed
    to resolve host"), and a misspelt name in the URL is far more common than a DNS outage;
    a scheduler retrying it would never succeed."""
    import sqlite3

    if isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated:
        return True
    orig = getattr(e, "orig", None) or e
    if isinstance(orig, sqlite3.Error):
        code = getattr(orig, "sqlite_errorcode", None)
        return code is not None and code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    state = getattr(orig, "sqlstate", None)
    if state:
        return state.startswith("08") or state in _PG_TEMPORARY_STATES
    if type(orig).__name__ == "ConnectionTimeout":  # psycopg.errors, without importing it
        return True
    # one line per attempt (a host name may resolve to several addresses), each ending
    # "... port 5432 failed: <reason>"
    reasons = [re.sub(r"^FATAL:\s+", "", line.rsplit("failed: ", 1)[1])
               for line in str(orig).splitlines() if "failed: " in line]
    return bool(reasons) and all(r.startswith(_PG_TEMPORARY_CONNECT) for r in reasons)


def _unavailable(e: BaseException) -> type[StoreUnavailableError]:
    """The error class for database error ``e``: `StoreUnreachableError` when `_temporary`."""
    return StoreUnreachableError if _temporary(e) else StoreUnavailableError


def _db_message(e: sa_exc.DBAPIError) -> str:
    """The driver's message without SQLAlchemy's SQL echo and links."""
    orig = getattr(e, "orig", None)
    return " ".join(str(orig if orig is not None else e).split())
