"""The customer store (`training.store`): round trips, lookups, ranked lists, history and
atomicity, on SQLite in tmp_path; round trip, atomicity and snapshot reads again on a throwaway
PostgreSQL server (slow tier; skipped, saying why, without PostgreSQL binaries or psycopg)."""

from __future__ import annotations

import importlib.util
import math
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from features.errors import TemporaryFailure
from features.registry import DEFINITIONS_VERSION
from training.store import (
    EMPTY_STORE_MESSAGE,
    SCORE_COLUMNS,
    BatchChangedError,
    CustomerRows,
    CustomerStore,
    EmptyStoreError,
    StoreError,
    StoreUnavailableError,
    StoreUnreachableError,
    _scores,
)

AS_OF = pd.Timestamp("2024-03-01")
VERSIONS = {"churn": "7", "clv": "4"}
FEATURES = ["days_since_last", "n_orders", "monetary_total", "gap_mean"]


def make_batch(ids: list[str], churn: float | np.ndarray | None = None, seed: int = 0
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A scores frame (the per-customer output) and a features frame for ``ids``."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    p = rng.random(n) if churn is None else np.broadcast_to(churn, (n,)).astype(float)
    clv = rng.gamma(2.0, 50.0, n)
    segments = np.array(["Champions", "Loyal", "At Risk", "Lost"], dtype=object)
    scores = pd.DataFrame({
        "customer_id": ids,
        "as_of": AS_OF,
        "churn_probability": p,
        "churn_risk": np.where(p >= 0.6, "high", np.where(p >= 0.3, "medium", "low")),
        "predicted_clv": clv,
        "expected_orders": rng.random(n) * 4,
        "p_alive": 1 - p,
        "rfm_score": [f"{a}{b}{c}" for a, b, c in rng.integers(1, 6, (n, 3))],
        "segment": segments[np.arange(n) % 4],
        "lifecycle_stage": "active",
        "value_at_risk": p * clv,
        "reasons": [[{"feature": "days_since_last", "value": float(i), "contribution": 0.25,
                      "direction": "raises"}] for i in range(n)],
        "churn_model_version": "7",
        "clv_model_version": "4",
    })
    features = pd.DataFrame(rng.normal(size=(n, len(FEATURES))), columns=FEATURES)
    features.insert(0, "customer_id", ids)
    return scores, features


def write(store: CustomerStore, scores: pd.DataFrame, features: pd.DataFrame, **kw) -> str:
    return store.write_batch(scores, features, as_of=AS_OF, model_versions=VERSIONS, **kw)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CustomerStore]:
    s = CustomerStore(CustomerStore.default_url(tmp_path))
    yield s
    s.close()


def _tricky_batch() -> tuple[pd.DataFrame, pd.DataFrame]:
    scores = pd.DataFrame({
        "customer_id": ["c2", "c1", "c3"],
        "churn_probability": [0.25, 0.875, np.nan],
        "churn_risk": ["low", "high", None],
        "predicted_clv": [120.5, 1 / 3, 0.0],
        "expected_orders": [2.0, 0.1, np.nan],
        "p_alive": [0.9, 0.05, 0.5],
        "rfm_score": ["545", "111", "333"],
        "segment": ["Champions", "Lost", "New"],
        "lifecycle_stage": ["active", "churned", "new"],
        "value_at_risk": [30.125, 0.875 / 3, np.nan],
        "reasons": [
            [{"feature": "n_orders", "value": 12.0, "contribution": -0.4, "direction": "lowers"},
             {"feature": "gap_mean", "value": None, "contribution": 0.1, "direction": "raises"}],
            [{"feature": "days_since_last", "value": 400.0, "contribution": 1.5,
              "direction": "raises"}],
            [],
        ],
    })
    features = pd.DataFrame({
        "customer_id": ["c1", "c2", "c3"],
        "days_since_last": [400.0, 3.0, np.nan],
        "n_orders": [1, 12, 2],  # ints come back as float
        "monetary_total": [0.1 + 0.2, -0.0, 1e300],
        "is_b2b": [True, False, True],
    })
    return scores, features


def check_round_trip(store: CustomerStore) -> None:
    """The shared round-trip check (SQLite and PostgreSQL)."""
    scores, features = _tricky_batch()
    batch_id = store.write_batch(scores, features, as_of=AS_OF, model_versions=VERSIONS,
                                 segmenter={"r_edges": np.array([1.5, 2.5])},
                                 metadata={"run_id": "abc", "rows": np.int64(3)})

    got, feats, unknown = store.get_customers(["c3", "nobody", "c1", "c2", "c1"])
    assert unknown == ["nobody"]
    assert got["customer_id"].tolist() == ["c3", "c1", "c2", "c1"]
    assert list(got.columns) == [
        "customer_id", "as_of", *SCORE_COLUMNS[1:], "churn_model_version",
        "clv_model_version", "batch_id",
    ]
    expected = scores.set_index("customer_id").loc[["c3", "c1", "c2", "c1"]].reset_index()
    for col in ("churn_probability", "predicted_clv", "expected_orders", "p_alive",
                "value_at_risk"):
        assert got[col].dtype == np.float64
        np.testing.assert_array_equal(got[col].to_numpy(), expected[col].to_numpy())
    assert got["churn_risk"].isna().tolist() == [True, False, False, False]
    assert got["churn_risk"].tolist()[1:] == ["high", "low", "high"]
    for col in ("rfm_score", "segment", "lifecycle_stage"):
        assert got[col].tolist() == expected[col].tolist()
    assert got["reasons"].tolist() == expected["reasons"].tolist()
    assert (got["as_of"] == AS_OF).all()
    assert (got["churn_model_version"] == "7").all() and (got["clv_model_version"] == "4").all()
    assert (got["batch_id"] == batch_id).all()

    assert feats["customer_id"].tolist() == ["c3", "c1", "c2", "c1"]
    assert list(feats.columns) == ["customer_id", "days_since_last", "n_orders",
                                   "monetary_total", "is_b2b"]
    assert (feats.dtypes.iloc[1:] == np.float64).all()
    by_id = features.set_index("customer_id").astype("float64")
    for _, row in feats.iterrows():
        want = by_id.loc[row["customer_id"]]
        for name in want.index:
            a, b = row[name], want[name]
            assert (math.isnan(a) and math.isnan(b)) or a == b, (row["customer_id"], name)
    c2 = feats.index[feats["customer_id"] == "c2"][0]
    assert math.copysign(1.0, feats.loc[c2, "monetary_total"]) == -1.0  # -0.0 kept

    batch = store.current_batch()
    assert batch is not None
    assert batch["batch_id"] == batch_id
    assert batch["as_of"] == AS_OF
    assert batch["model_versions"] == VERSIONS
    assert batch["n_customers"] == 3
    assert batch["feature_columns"] == ["days_since_last", "n_orders", "monetary_total",
                                        "is_b2b"]
    assert batch["segmenter"] == {"r_edges": [1.5, 2.5]}
    # the version of the feature definitions is recorded beside the caller's metadata
    assert batch["metadata"] == {"run_id": "abc", "rows": 3,
                                 "feature_definitions": DEFINITIONS_VERSION}
    assert isinstance(batch["created_at"], pd.Timestamp)

    none, no_feats, all_unknown = store.get_customers(["x", "y"])
    assert len(none) == 0 and len(no_feats) == 0 and all_unknown == ["x", "y"]
    assert list(none.columns) == list(got.columns)


def test_round_trip(store: CustomerStore) -> None:
    check_round_trip(store)


def test_the_feature_definitions_a_batch_records(store: CustomerStore) -> None:
    """A batch records the feature definitions its features were built with: this
    lifecast's by default, another when given, none when told (a batch written before they
    were recorded, which the service counts as version 1)."""
    for given, recorded in ((DEFINITIONS_VERSION, DEFINITIONS_VERSION), (1, 1), (None, None)):
        write(store, *make_batch(["a", "b"]), metadata={"run_id": "r"},
              feature_definitions=given)
        meta = store.current_batch()["metadata"]
        assert meta.get("feature_definitions") == recorded and meta["run_id"] == "r"
    write(store, *make_batch(["a"]), feature_definitions=None)
    assert store.current_batch()["metadata"] is None


def test_init_does_no_io_and_empty_store(tmp_path: Path) -> None:
    url = CustomerStore.default_url(tmp_path / "sub")
    assert url == f"sqlite:///{(tmp_path / 'sub' / 'lifecast_store.db').resolve()}"
    store = CustomerStore(url)
    assert store._engine is None
    assert store.current_batch() is None
    assert store.batches().empty
    for call in (lambda: store.get_customers(["a"]), store.ranked, store.segment_summary):
        with pytest.raises(EmptyStoreError, match="no scores yet: run `lifecast score` first"):
            call()
    assert not (tmp_path / "sub").exists()  # reading an absent store creates nothing
    assert EMPTY_STORE_MESSAGE == "no scores yet: run `lifecast score` first"
    store.close()


def test_ranked_filters_pages_and_orders(store: CustomerStore) -> None:
    ids = [f"c{i:03d}" for i in range(40)]
    scores, features = make_batch(ids, seed=1)
    scores.loc[5, "value_at_risk"] = np.nan  # missing values go last
    scores.loc[6, "value_at_risk"] = scores.loc[7, "value_at_risk"]  # a tie: by customer_id
    scores.loc[8, "churn_probability"] = np.nan  # never passes a threshold
    write(store, scores, features)

    page, total = store.ranked(min_churn_probability=None, min_value=None, limit=100)
    assert total == 40 and len(page) == 40
    valid = scores.dropna(subset=["value_at_risk"])
    expected = valid.sort_values(["value_at_risk", "customer_id"], ascending=[False, True])
    assert page["customer_id"].tolist() == [*expected["customer_id"], "c005"]
    assert page["reasons"].tolist()[0] == expected["reasons"].iloc[0]

    mask = ((scores["churn_probability"] >= 0.4) & (scores["predicted_clv"] >= 50)
            & scores["segment"].isin(["Lost", "At Risk"]))
    want = scores[mask].sort_values(["value_at_risk", "customer_id"], ascending=[False, True])
    first, total = store.ranked(min_churn_probability=0.4, min_value=50,
                                segments=["Lost", "At Risk"], limit=3)
    second, total2 = store.ranked(min_churn_probability=0.4, min_value=50,
                                  segments=["Lost", "At Risk"], limit=3, offset=3)
    assert total == total2 == int(mask.sum()) > 3
    assert [*first["customer_id"], *second["customer_id"]] == want["customer_id"].tolist()[:6]

    empty, total = store.ranked(limit=10, offset=1000)
    assert len(empty) == 0 and total == 39  # the defaults (>= 0) drop the NaN probability
    count_only, total = store.ranked(limit=0)
    assert len(count_only) == 0 and total == 39
    with pytest.raises(ValueError, match="limit and offset"):
        store.ranked(limit=-1)


def test_ranked_by_churn_risk_band(store: CustomerStore) -> None:
    """``churn_risk`` keeps the customers of the named bands (what /high_risk asks for by
    default: ``["high"]``), ranked as before; None or an empty list keeps every band, and a
    name that is no band is an error, not an empty list."""
    p = np.array([0.1, 0.65, 0.3, 0.9, 0.6, 0.59, 0.2, 0.61])
    ids = [f"c{i}" for i in range(len(p))]
    scores, features = make_batch(ids, churn=p, seed=3)
    write(store, scores, features)

    def ranked_ids(frame: pd.DataFrame) -> list[str]:
        return frame.sort_values(["value_at_risk", "customer_id"], ascending=[False, True]
                                 )["customer_id"].tolist()

    high, total = store.ranked(churn_risk=["high"], limit=100)
    assert total == 4 and high["customer_id"].tolist() == ranked_ids(
        scores[scores["churn_risk"] == "high"])
    assert set(high["churn_risk"]) == {"high"}
    both, total = store.ranked(churn_risk=["medium", "high"], limit=2, offset=1)
    want = ranked_ids(scores[scores["churn_risk"] != "low"])
    assert total == 6 and both["customer_id"].tolist() == want[1:3]
    assert store.ranked(churn_risk="low", limit=100)[1] == 2
    for every in (None, []):
        assert store.ranked(churn_risk=every, limit=100)[1] == len(ids)
    with pytest.raises(ValueError, match=r"churn_risk must name risk bands .*\['High'\]"):
        store.ranked(churn_risk=["High"])


def test_ranked_pages_are_pinned_to_the_batch_of_the_first(store: CustomerStore) -> None:
    """Paging through a list while `lifecast score` rescores the store: the next page of
    the new batch would skip some customers and repeat others (its order differs). With the
    first page's ``batch_id`` the next page is refused, saying so, instead."""
    ids = [f"c{i:02d}" for i in range(20)]
    write(store, *make_batch(ids, seed=4))
    first, total = store.ranked(limit=5)
    pinned = first.attrs["batch_id"]
    second, _ = store.ranked(limit=5, offset=5, batch_id=pinned)
    assert second.attrs["batch_id"] == pinned and len(second) == 5
    write(store, *make_batch(ids, seed=5))  # rescored: another order
    moved, _ = store.ranked(limit=5, offset=5)
    assert moved.attrs["batch_id"] != pinned
    with pytest.raises(BatchChangedError, match=rf"batch_id '{pinned}' is no longer .*"
                                                rf"rescored .*now batch '{moved.attrs['batch_id']}'"
                                                rf".*offset 0"):
        store.ranked(limit=5, offset=10, batch_id=pinned)
    assert store.ranked(limit=5, offset=5, batch_id=moved.attrs["batch_id"])[0].equals(moved)
    # an id that never was a batch here is not said to be rescored (it was)
    with pytest.raises(BatchChangedError) as info:
        store.ranked(limit=5, batch_id="bogus")
    assert "rescored since (" not in str(info.value)
    assert str(info.value).startswith(f"batch_id 'bogus' is not the customer store's current "
                                      f"batch (now batch '{moved.attrs['batch_id']}'")
    assert "nor one it keeps: an unknown id" in str(info.value)


def test_segment_summary(store: CustomerStore) -> None:
    scores, features = make_batch([f"c{i}" for i in range(21)], seed=2)
    scores.loc[0, "segment"] = "Custom"
    write(store, scores, features)
    summary = store.segment_summary()
    assert list(summary.columns) == ["segment", "customers", "share", "mean_churn_probability",
                                     "total_value_at_risk", "total_predicted_clv"]
    assert summary["segment"].iloc[0] == "Champions"  # the SEGMENTS order, then others
    assert summary["segment"].iloc[-1] == "Custom"
    assert summary["customers"].sum() == 21
    assert summary.loc[summary["segment"] == "New", "customers"].item() == 0
    assert math.isnan(summary.loc[summary["segment"] == "New", "mean_churn_probability"].item())
    grouped = scores.groupby("segment")
    for seg, rows in grouped:
        got = summary.set_index("segment").loc[seg]
        assert got["customers"] == len(rows)
        assert got["mean_churn_probability"] == pytest.approx(rows["churn_probability"].mean())
        assert got["total_value_at_risk"] == pytest.approx(rows["value_at_risk"].sum())
        assert got["total_predicted_clv"] == pytest.approx(rows["predicted_clv"].sum())
    assert summary["share"].sum() == pytest.approx(1.0)


def _row_counts(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return {t: conn.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar_one()
                    for t in ("lifecast_batches", "lifecast_scores", "lifecast_details")}
    finally:
        engine.dispose()


def test_history_and_pruning(tmp_path: Path) -> None:
    url = CustomerStore.default_url(tmp_path)
    store = CustomerStore(url, keep_batches=2)
    ids = ["a", "b", "c"]
    written = [write(store, *make_batch(ids, churn=0.1 * (i + 1)), metadata={"i": i})
               for i in range(4)]
    assert written == sorted(written)  # batch ids sort by creation
    history = store.batches()
    assert history["batch_id"].tolist() == written[::-1][:2]
    assert history["is_current"].tolist() == [True, False]
    assert history["n_customers"].tolist() == [3, 3]
    assert history["metadata"].tolist() == [{"i": i, "feature_definitions": DEFINITIONS_VERSION}
                                            for i in (3, 2)]
    assert (history["as_of"] == AS_OF).all()
    assert _row_counts(url) == {"lifecast_batches": 2, "lifecast_scores": 6,
                                "lifecast_details": 6}
    got, _, _ = store.get_customers(ids)
    np.testing.assert_allclose(got["churn_probability"], 0.4)
    assert store.prune(keep=1) == [written[2]]
    assert store.batches()["batch_id"].tolist() == [written[3]]
    store.close()


def test_validation_errors(store: CustomerStore) -> None:
    scores, features = make_batch(["a", "b", "c", "d"])
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['p_alive', 'segment'\]"):
        write(store, scores.drop(columns=["segment", "p_alive"]), features)
    dup = scores.copy()
    dup["customer_id"] = ["a", "b", "a", "b"]
    with pytest.raises(ValueError, match="duplicate customer_id.*'a', 'b'"):
        write(store, dup, features)
    with pytest.raises(ValueError, match="no features for customer.*'d'"):
        write(store, scores, features.iloc[:3])
    with pytest.raises(ValueError, match="features: duplicate customer_id.*'c'"):
        write(store, scores, pd.concat([features, features.iloc[[2]]]))
    bad = features.copy()
    bad["n_orders"] = ["1", "x", "3", "4"]
    with pytest.raises(ValueError, match="features column 'n_orders' must be numeric.*'x'"):
        write(store, scores, bad)
    bad = scores.copy()
    bad.loc[1, "churn_probability"] = 1.5
    with pytest.raises(ValueError, match=r"churn_probability.*\[0, 1\].*'b'"):
        write(store, bad, features)
    bad = scores.copy()
    bad.loc[0, "churn_risk"] = "extreme"
    with pytest.raises(ValueError, match="churn_risk.*'extreme'"):
        write(store, bad, features)
    with pytest.raises(ValueError, match="as_of"):
        store.write_batch(scores, features, as_of=pd.Timestamp("2020-01-01"),
                          model_versions=VERSIONS)
    bad = scores.copy()
    bad["reasons"] = [object()] + [[]] * 3
    with pytest.raises(ValueError, match="reasons of customer row 0"):
        write(store, bad, features)
    assert store.current_batch() is None  # nothing was written


def test_check_reachable_fails_before_any_write_and_creates_nothing(
        tmp_path: Path, unreachable_postgres) -> None:
    fine = CustomerStore(f"sqlite:///{tmp_path}/new/sub/store.db")
    fine.check_reachable()  # a folder that can be made: fine, and nothing is made
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreUnavailableError, match=f"{blocker} is not a folder") as info:
        CustomerStore(f"sqlite:///{blocker}/store.db").check_reachable()
    assert not isinstance(info.value, TemporaryFailure)  # a person must fix it: exit 2
    CustomerStore("sqlite://").check_reachable()  # in memory
    store = CustomerStore(unreachable_postgres())
    safe = re.escape(store.safe_url)
    # nobody listens at the port: a server down, temporary by nature (the CLI exits 75)
    with pytest.raises(StoreUnreachableError, match=f"cannot open the customer store at {safe}"):
        store.check_reachable()
    store.close()
    # a host name that does not resolve is most likely misspelt: not temporary
    store = CustomerStore(unreachable_postgres().replace("127.0.0.1", "no-such-host.invalid"))
    with pytest.raises(StoreUnavailableError, match="failed to resolve host") as info:
        store.check_reachable()
    assert not isinstance(info.value, TemporaryFailure)
    store.close()


def test_a_store_locked_by_another_writer_past_the_busy_timeout_is_temporary(
        tmp_path: Path) -> None:
    """SQLite's 'database is locked' after the busy timeout (another writer holding the
    file) was a `StoreUnavailableError` like a read-only folder, so the command line exited
    2 and a scheduler could not tell it from a wrong URL. It is now a
    `StoreUnreachableError` (a `TemporaryFailure`: exit 75), and the write succeeds once the
    other writer is done. The URL's ?timeout= sets the busy timeout (default 60 s)."""
    path = tmp_path / "store.db"
    store = CustomerStore(f"sqlite:///{path}?timeout=0.05")
    first = write(store, *make_batch(["a"], seed=1))
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock
        with pytest.raises(StoreUnreachableError, match=re.escape(
                f"customer store sqlite:///{path}?timeout=0.05: database is locked")) as info:
            write(store, *make_batch(["a", "b"], seed=2))
        assert isinstance(info.value, StoreUnavailableError)  # what callers catch (serving)
        assert isinstance(info.value, TemporaryFailure)
        assert store.current_batch()["batch_id"] == first  # readers are not blocked
    finally:
        other.execute("ROLLBACK")
        other.close()
    second = write(store, *make_batch(["a", "b"], seed=2))
    assert store.batches()["batch_id"].tolist() == [second, first]
    store.close()


def test_url_errors_hide_passwords(tmp_path: Path, unreachable_postgres) -> None:
    with pytest.raises(ValueError, match="invalid customer store URL 'bad url'.*sqlite:///"):
        CustomerStore("bad url")
    with pytest.raises(ValueError) as info:
        CustomerStore("postgresql+psycopg://user:s3cret@host:notaport/db")
    assert "s3cret" not in str(info.value) and "***" in str(info.value)

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    store = CustomerStore(f"sqlite:///{blocker}/sub/store.db")
    with pytest.raises(StoreUnavailableError, match="lifecast_store|store.db"):
        write(store, *make_batch(["a"]))

    store = CustomerStore(unreachable_postgres())
    with pytest.raises(StoreUnavailableError) as info:
        store.get_customers(["a"])
    message = str(info.value)
    assert store.safe_url in message and "lifecast:***@127.0.0.1:" in store.safe_url
    assert "s3cret" not in message
    store.close()


def test_passwords_in_query_parameters_are_hidden_too() -> None:
    store = CustomerStore("postgresql+psycopg://u:one@h:5432/db?application_name=x&password=two"
                          "&sslpassword=three&passfile=/etc/pgpass")
    shown = store.safe_url
    assert "one" not in shown and "two" not in shown and "three" not in shown
    assert shown.startswith("postgresql+psycopg://u:***@h:5432/db?")
    assert "password=***" in shown and "sslpassword=***" in shown and "application_name=x" in shown
    assert "passfile=" in shown and "pgpass" in shown  # a path, not a secret


def test_a_schema_option_in_a_postgres_url_says_how_to_name_a_schema(
        unreachable_postgres) -> None:
    """A platform engineer writes the schema as JDBC or Prisma take it (?currentSchema=crm,
    ?schema=crm): libpq refused it with only 'invalid connection option "schema"'. The error
    now says how PostgreSQL takes a schema in the URL."""
    for option in ("schema", "currentSchema"):
        store = CustomerStore(unreachable_postgres("db") + f"?{option}=crm")
        with pytest.raises(StoreUnavailableError) as info:
            store.check_reachable()
        assert str(info.value) == (
            f"cannot open the customer store at {store.safe_url}: invalid connection option "
            f'"{option}". PostgreSQL takes no {option!r} in the URL: to keep the store\'s '
            f"tables in schema <name>, give ?options=-csearch_path%3D<name> (the schema must "
            f"exist)")


def test_unusable_store_urls_say_what_to_use() -> None:
    with pytest.raises(StoreError) as info:
        CustomerStore("duckdb:///scores.duckdb").check_reachable()
    assert "DuckDB files are read as input only" in str(info.value)
    assert "sqlite:///path/lifecast_store.db" in str(info.value)
    with pytest.raises(StoreError, match="SQLAlchemy knows no database kind 'foo'"):
        CustomerStore("foo://x").check_reachable()
    with pytest.raises(StoreError, match=r"lifecast installs psycopg 3, not psycopg2: write the "
                                         r"URL as postgresql\+psycopg://"):
        CustomerStore("postgresql+psycopg2://u@localhost/db").check_reachable()
    assert CustomerStore("sqlite://").in_memory and CustomerStore("sqlite:///:memory:").in_memory
    assert CustomerStore("sqlite:///file:x?mode=memory&uri=true").in_memory
    assert not CustomerStore("sqlite:///x.db").in_memory


def test_failed_write_leaves_previous_batch_current(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    url = CustomerStore.default_url(tmp_path)
    store = CustomerStore(url, chunk_size=10)
    ids = [f"c{i:02d}" for i in range(50)]
    old_id = write(store, *make_batch(ids, churn=0.1))

    calls = {"n": 0}
    real_insert = CustomerStore._insert_rows

    def failing_insert(self, conn, table, rows):  # noqa: ANN001
        calls["n"] += 1
        if calls["n"] > 2:  # after the first chunk of both tables went in
            raise RuntimeError("disk full (simulated)")
        real_insert(self, conn, table, rows)

    monkeypatch.setattr(CustomerStore, "_insert_rows", failing_insert)
    with pytest.raises(RuntimeError, match="simulated"):
        write(store, *make_batch(ids, churn=0.9))
    monkeypatch.undo()

    assert calls["n"] == 3
    assert store.current_batch()["batch_id"] == old_id
    got, feats, unknown = store.get_customers(ids)
    assert unknown == [] and len(got) == 50 and len(feats) == 50
    assert (got["churn_probability"] == 0.1).all() and (got["batch_id"] == old_id).all()
    assert store.batches()["batch_id"].tolist() == [old_id]
    assert _row_counts(url) == {"lifecast_batches": 1, "lifecast_scores": 50,
                                "lifecast_details": 50}

    new_id = write(store, *make_batch(ids, churn=0.9))  # and the store still works
    assert store.current_batch()["batch_id"] == new_id
    store.close()


def test_readers_never_see_a_mix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    check_readers_never_see_a_mix(CustomerStore.default_url(tmp_path), monkeypatch)


def check_readers_never_see_a_mix(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader thread reads while a writer replaces a batch of 20k customers whose churn
    probability is all 0.1 by one where it is all 0.9: every read sees 0.1 or 0.9, never both.

    The writer pauses inside its transaction twice, after its first chunk and after its last
    (every new row written, pointer not yet switched), until the reader has completed a few
    rounds of reads: so reads certainly overlap the write, however busy the machine is.
    """
    ids = [f"cust{i:05d}" for i in range(20_000)]
    writer = CustomerStore(url, chunk_size=1_000)
    old_id = write(writer, *make_batch(ids, churn=0.1))
    reader = CustomerStore(url)  # another instance, as the service would be
    sample = ids[::97] + ids[-3:]

    n_inserts = 2 * len(ids) // 1_000  # two tables, 1000 rows a chunk
    calls = {"n": 0}
    paused = threading.Event()  # the writer waits inside its transaction
    resume = threading.Event()  # the reader has read enough meanwhile
    real_insert = CustomerStore._insert_rows

    def pausing_insert(self, conn, table, rows):  # noqa: ANN001
        real_insert(self, conn, table, rows)
        calls["n"] += 1
        if calls["n"] in (1, n_inserts) and not errors:
            resume.clear()
            paused.set()
            deadline = time.monotonic() + 120
            while not resume.wait(timeout=0.05) and not errors:  # a failed reader: go on
                assert time.monotonic() < deadline, "the reader never caught up"
            paused.clear()

    monkeypatch.setattr(CustomerStore, "_insert_rows", pausing_insert)
    # (what was read, its batch id, the churn probabilities it saw, whether the writer was
    # paused mid-transaction for the whole read)
    seen: list[tuple[str, str, frozenset, bool]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_loop() -> None:
        rounds_while_paused, full_reads = 0, 0
        try:
            while True:
                finished = done.is_set()
                during = paused.is_set()
                everyone = during and rounds_while_paused == 1 and full_reads == 0
                full_reads += everyone  # once, while paused, all 20k customers in one read
                got, feats, unknown = reader.get_customers(ids if everyone else sample)
                assert unknown == []
                assert feats["customer_id"].tolist() == got["customer_id"].tolist()
                (batch_id,) = set(got["batch_id"])  # one batch per read, never two
                reads = [("get_customers", batch_id, frozenset(got["churn_probability"]))]
                page, total = reader.ranked(limit=50)
                assert total == len(ids)
                (batch_id,) = set(page["batch_id"])
                reads.append(("ranked", batch_id, frozenset(page["churn_probability"])))
                summary = reader.segment_summary()
                assert summary["customers"].sum() == len(ids)
                means = frozenset(summary["mean_churn_probability"].dropna().round(12))
                reads.append(("segment_summary", "", means))
                during = during and paused.is_set()
                seen.extend((*r, during) for r in reads)
                if during:
                    rounds_while_paused += 1
                    if rounds_while_paused >= 3:
                        rounds_while_paused = 0
                        resume.set()
                        while paused.is_set():
                            time.sleep(0.001)
                if finished:
                    return
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        new_id = write(writer, *make_batch(ids, churn=0.9))
    finally:
        done.set()
    thread.join(timeout=120)
    assert not thread.is_alive()
    if errors:
        raise errors[0]

    for what, batch_id, values, _ in seen:  # every single read saw one whole batch
        assert values in ({0.1}, {0.9}), (what, values)
        if batch_id:
            assert (batch_id, values) in ((old_id, {0.1}), (new_id, {0.9})), (what, batch_id)
    during = [r for r in seen if r[3]]
    assert len(during) >= 18  # 2 pauses x 3 rounds x 3 reads
    assert all(values == {0.1} for _, _, values, _ in during)  # uncommitted rows stay unseen
    assert seen[-1][2] == {0.9} and seen[-2][1] == new_id  # and then the new batch is seen
    reader.close()
    writer.close()


def check_read_snapshot_survives_switch_and_prune(url: str) -> None:
    """A read transaction keeps seeing its batch while a writer switches to a new one and
    deletes the old one (keep_batches=1)."""
    ids = [f"c{i}" for i in range(300)]
    writer = CustomerStore(url, keep_batches=1)
    old_id = write(writer, *make_batch(ids, churn=0.1))
    reader = CustomerStore(url)
    query = sa.select(_scores.c.churn_probability)
    with reader._read() as (conn, batch):
        assert batch["batch_id"] == old_id
        new_id = write(writer, *make_batch(ids, churn=0.9))  # switch, then prune old_id
        assert writer.batches()["batch_id"].tolist() == [new_id]
        rows = conn.execute(query.where(_scores.c.batch_no == batch["batch_no"])).all()
        assert len(rows) == 300 and {r[0] for r in rows} == {0.1}
    got, _, _ = reader.get_customers(ids)
    assert set(got["churn_probability"]) == {0.9}
    reader.close()
    writer.close()


def test_read_snapshot_survives_switch_and_prune(tmp_path: Path) -> None:
    check_read_snapshot_survives_switch_and_prune(CustomerStore.default_url(tmp_path))


_READS = {
    "lookup": lambda s, ids: _read_rows(s.lookup(ids)),
    "get_customers": lambda s, ids: _read_frame(s.get_customers(ids)[0]),
    "ranked": lambda s, ids: _read_frame(s.ranked(limit=len(ids))[0]),
    "batches": lambda s, ids: (s.batches().set_index("batch_id")["is_current"].to_dict(),
                               None),
}


def _read_rows(rows: CustomerRows) -> tuple[str, list[float]]:
    return rows.batch.batch_id, rows.scores["churn_probability"]


def _read_frame(frame: pd.DataFrame) -> tuple[str, list[float]]:
    (batch_id,) = set(frame["batch_id"])
    return batch_id, frame["churn_probability"].tolist()


def check_reads_stay_in_their_snapshot(url: str, read: str) -> None:
    """A new batch is made current and the old one deleted (keep_batches=1) right after a
    reader's first statement: the reader's later statements (`lookup`'s read of the batch's
    constants, `ranked`'s page, `batches`' listing, ...) still see the old batch alone, as
    they run in its snapshot; the next call sees the new one. A statement hook forces it."""
    ids = [f"c{i}" for i in range(5)]
    writer, reader = CustomerStore(url, keep_batches=1), CustomerStore(url)
    old_id = write(writer, *make_batch(ids, churn=0.1))
    assert reader.current_batch()["batch_id"] == old_id  # the schema is known: no check
    new_id: list[str] = []

    @sa.event.listens_for(reader._get_engine(), "after_cursor_execute")
    def _switch_and_prune(conn, cursor, statement: str, *args: object) -> None:  # noqa: ANN001
        if not new_id and statement != "BEGIN":  # SQLite's snapshot starts at a SELECT
            new_id.append(write(writer, *make_batch(ids, churn=0.9)))

    first, again = _READS[read](reader, ids), _READS[read](reader, ids)
    assert new_id and writer.batches()["batch_id"].tolist() == new_id  # old_id is gone
    if read == "batches":
        assert first == ({old_id: True}, None) and again == ({new_id[0]: True}, None)
    else:
        assert first[0] == old_id and set(first[1]) == {0.1} and len(first[1]) == 5
        assert again[0] == new_id[0] and set(again[1]) == {0.9}
    reader.close()
    writer.close()


@pytest.mark.parametrize("read", sorted(_READS))
def test_reads_stay_in_their_snapshot(tmp_path: Path, read: str) -> None:
    check_reads_stay_in_their_snapshot(CustomerStore.default_url(tmp_path), read)


def test_first_writes_to_a_new_file_wait_for_the_one_creating_the_tables(tmp_path: Path
                                                                          ) -> None:
    """Two `lifecast score` runs into a new SQLite file at once: the one that creates the
    tables holds the write lock from its check for them to its commit (BEGIN IMMEDIATE), so
    the other waits, then finds them; a reader meanwhile finds an empty store. A statement
    hook holds the first inside its CREATE TABLEs until the second waits for the lock."""
    url = CustomerStore.default_url(tmp_path)
    creator, second, reader = (CustomerStore(url) for _ in range(3))
    creating, waiting, go_on = threading.Event(), threading.Event(), threading.Event()

    @sa.event.listens_for(creator._get_engine(), "after_cursor_execute")
    def _hold(conn, cursor, statement: str, *args: object) -> None:  # noqa: ANN001
        if statement.lstrip().startswith("CREATE TABLE lifecast_batches"):
            creating.set()
            go_on.wait(10)

    @sa.event.listens_for(second._get_engine(), "before_cursor_execute")
    def _wait(conn, cursor, statement: str, *args: object) -> None:  # noqa: ANN001
        if statement == "BEGIN IMMEDIATE":  # about to wait for the creator's write lock
            waiting.set()

    @sa.event.listens_for(second._get_engine(), "after_cursor_execute")
    def _looked(conn, cursor, statement: str, *args: object) -> None:  # noqa: ANN001
        if "table_info" in statement:  # looks for the tables: were it before taking the
            waiting.set()  # lock, it would look now, and then fail to create them

    written: dict[str, str] = {}
    errors: list[BaseException] = []

    def first_write(name: str, store: CustomerStore) -> None:
        try:
            written[name] = write(store, *make_batch([name]))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=first_write, args=("creator", creator))]
    threads[0].start()
    assert creating.wait(10), "the first writer never created a table"
    threads.append(threading.Thread(target=first_write, args=("second", second)))
    threads[1].start()
    assert waiting.wait(10), "the second writer never started"
    assert reader.current_batch() is None and reader.batches().empty
    go_on.set()
    for t in threads:
        t.join(30)
    assert errors == [] and len(written) == 2
    history = reader.batches()  # (either batch may be written first, once the tables are)
    assert sorted(history["batch_id"]) == sorted(written.values())
    assert history["is_current"].tolist() == [True, False]
    for s in (creator, second, reader):
        s.close()


def test_concurrent_readers_share_one_store(store: CustomerStore) -> None:
    ids = [f"c{i}" for i in range(200)]
    scores, features = make_batch(ids, seed=3)
    write(store, scores, features)
    expected = dict(zip(scores["customer_id"], scores["churn_probability"], strict=True))
    errors: list[BaseException] = []

    def work(offset: int) -> None:
        try:
            for k in range(12):
                asked = ids[(offset + k) % 200:][:7]
                got, _, _ = store.get_customers(asked)
                assert got["customer_id"].tolist() == asked
                assert [expected[c] for c in asked] == got["churn_probability"].tolist()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i * 13,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_sqlite_settings_and_close(store: CustomerStore, tmp_path: Path) -> None:
    write(store, *make_batch(["a"]))
    with store._get_engine().connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
    store.close()
    assert store._engine is None
    assert store.get_customers(["a"])[0]["customer_id"].tolist() == ["a"]  # reopens lazily
    with sqlite3.connect(tmp_path / "lifecast_store.db") as raw:  # a plain SQLite file
        assert raw.execute("SELECT COUNT(*) FROM lifecast_scores").fetchone() == (1,)


# -- PostgreSQL (slow tier) --------------------------------------------------------------------


def _pg_helper() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lifecast_test_pg",
                                                  Path(__file__).with_name("pg.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pg_server() -> Iterator[str]:
    pg = _pg_helper()
    reason = pg.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no PostgreSQL to test against: {reason}")
    with pg.postgres_server() as url:
        yield url


@pytest.fixture
def pg_store(pg_server: str) -> Iterator[CustomerStore]:
    store = CustomerStore(_pg_helper().create_database(pg_server))
    yield store
    store.close()


@pytest.mark.slow
def test_round_trip_postgres(pg_store: CustomerStore) -> None:
    check_round_trip(pg_store)


@pytest.mark.slow
def test_ranked_history_and_failed_write_postgres(pg_store: CustomerStore,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pg_store.keep_batches = 2
    pg_store.chunk_size = 7
    ids = [f"c{i:02d}" for i in range(30)]
    scores, features = make_batch(ids, seed=4)
    first = write(pg_store, scores, features)
    page, total = pg_store.ranked(min_churn_probability=None, min_value=None, limit=5)
    want = scores.sort_values(["value_at_risk", "customer_id"], ascending=[False, True])
    assert total == 30 and page["customer_id"].tolist() == want["customer_id"].tolist()[:5]

    def failing_insert(self, conn, table, rows):  # noqa: ANN001
        raise RuntimeError("simulated failure")

    monkeypatch.setattr(CustomerStore, "_insert_rows", failing_insert)
    with pytest.raises(RuntimeError, match="simulated"):
        write(pg_store, *make_batch(ids, churn=0.9))
    monkeypatch.undo()
    assert pg_store.current_batch()["batch_id"] == first

    later = [write(pg_store, *make_batch(ids, churn=0.5)) for _ in range(2)]
    assert pg_store.batches()["batch_id"].tolist() == later[::-1]
    got, _, _ = pg_store.get_customers(ids[:3])
    assert (got["churn_probability"] == 0.5).all()


@pytest.mark.slow
def test_readers_never_see_a_mix_postgres(pg_store: CustomerStore,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    check_readers_never_see_a_mix(pg_store.url, monkeypatch)


@pytest.mark.slow
def test_read_snapshot_survives_switch_and_prune_postgres(pg_store: CustomerStore) -> None:
    check_read_snapshot_survives_switch_and_prune(pg_store.url)


@pytest.mark.slow
@pytest.mark.parametrize("read", sorted(_READS))
def test_reads_stay_in_their_snapshot_postgres(pg_server: str, read: str) -> None:
    check_reads_stay_in_their_snapshot(_pg_helper().create_database(pg_server), read)


@pytest.mark.slow
def test_reads_repeatable_and_writes_read_committed_on_one_connection_postgres(
        pg_store: CustomerStore) -> None:
    """Reads run in REPEATABLE READ (one snapshot), writes and prunes in READ COMMITTED
    (concurrent writers wait for the pointer row instead of failing to serialize), also on
    the one pooled connection they take in turn: the reader's level does not stay behind."""
    levels: dict[str, set[str]] = {}
    doing = ["write"]

    @sa.event.listens_for(pg_store._get_engine(), "after_cursor_execute")
    def _level(conn, cursor, statement: str, *args: object) -> None:  # noqa: ANN001
        probe = cursor.connection.cursor()
        try:
            probe.execute("SHOW transaction_isolation")
            levels.setdefault(doing[0], set()).add(probe.fetchone()[0])
        finally:
            probe.close()

    for seed in range(2):
        doing[0] = "write"  # (and prune and ANALYZE after it)
        write(pg_store, *make_batch(["a", "b"], seed=seed))
        doing[0] = "read"
        pg_store.current_batch(), pg_store.batches(), pg_store.ranked()
        pg_store.get_customers(["a"]), pg_store.segment_summary(), pg_store.lookup(["a"])
    assert pg_store._get_engine().pool.checkedin() == 1  # one connection did everything
    assert levels == {"read": {"repeatable read"}, "write": {"read committed"}}


@pytest.mark.slow
def test_first_writes_racing_to_create_the_tables_postgres(pg_server: str) -> None:
    """Several `lifecast score` runs into a new PostgreSQL store at once: each creates the
    tables if missing, and PostgreSQL's catalog refuses the losers of that race with a unique
    violation (not "already exists"). Every write must still succeed."""
    import threading

    url = _pg_helper().create_database(pg_server)
    n = 6
    start = threading.Barrier(n)
    errors: list[BaseException] = []

    def first_write(i: int) -> None:
        store = CustomerStore(url)
        try:
            start.wait()
            write(store, *make_batch([f"c{i}"], seed=i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=first_write, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = CustomerStore(url)
    batches = store.batches()  # pruning raced too: at least keep_batches are left
    assert store.keep_batches <= len(batches) <= n and batches["is_current"].sum() == 1
    assert len(store.get_customers([f"c{i}" for i in range(n)])[0]) == 1
    store.close()



@pytest.mark.slow
def test_prune_keeps_a_batch_made_current_while_it_runs_postgres(pg_server: str) -> None:
    """Two writers commit out of batch-number order, and the lower-numbered one makes its
    batch current between the two reads of another store's prune. The prune must not delete
    the batch the pointer names (CI once ended a race of six first writes with three batches
    and none current). Statement hooks force that interleaving; their waits time out instead
    of hanging when the store serializes the steps another way (as it must)."""
    import threading

    from sqlalchemy import event

    url = _pg_helper().create_database(pg_server)
    late_writer, other_writer, pruner = (CustomerStore(url, keep_batches=1) for _ in range(3))
    late_writer.prune = lambda keep=None: []  # type: ignore[method-assign]  # not under test
    write(other_writer, *make_batch(["a"], seed=1))
    numbered, may_switch = threading.Event(), threading.Event()
    switched, may_commit = threading.Event(), threading.Event()

    @event.listens_for(late_writer._get_engine(), "before_cursor_execute")
    def _before(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.startswith("UPDATE lifecast_current"):
            may_switch.wait(10)

    @event.listens_for(late_writer._get_engine(), "after_cursor_execute")
    def _after(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.startswith("INSERT INTO lifecast_batches"):
            numbered.set()
        elif statement.startswith("UPDATE lifecast_current"):
            switched.set()
            may_commit.wait(3)

    @event.listens_for(pruner._get_engine(), "before_cursor_execute")
    def _before_listing(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.startswith("SELECT lifecast_batches.batch_no, lifecast_batches.batch_id"):
            may_commit.set()  # the late writer commits between the pointer and the listing
            late.join(10)

    late_ids: list[str] = []
    late = threading.Thread(target=lambda: late_ids.append(
        write(late_writer, *make_batch(["late"], seed=2))))
    late.start()
    assert numbered.wait(30), "the late writer never inserted its batch"
    newer = write(other_writer, *make_batch(["b"], seed=3))  # higher number, committed first
    may_switch.set()
    assert switched.wait(10), "the late writer never switched the pointer"
    pruner.prune()  # holds the pointer as it was, lists the batches after the late commit
    late.join(10)
    assert late_ids and late_ids[0] != newer
    current = pruner.current_batch()
    assert current is not None and current["batch_id"] == late_ids[0]
    assert late_ids[0] in set(pruner.batches()["batch_id"])
    for s in (late_writer, other_writer, pruner):
        s.close()


# -- PostgreSQL schemas and least-privilege roles ----------------------------------------------


def _pg_admin(url: str, *statements: str) -> None:
    """Run statements as the server's superuser (the URL's own user) on the URL's database."""
    engine = sa.create_engine(url.split("?")[0], isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)
    finally:
        engine.dispose()


def _pg_tables(url: str) -> list[str]:
    engine = sa.create_engine(url.split("?")[0])
    try:
        with engine.connect() as conn:
            return [f"{s}.{t}" for s, t in conn.exec_driver_sql(
                "SELECT table_schema, table_name FROM information_schema.tables "
                "WHERE table_name LIKE 'lifecast%%' ORDER BY 1, 2")]
    finally:
        engine.dispose()


def _pg_role(url: str, db_url: str, schema: str) -> str:
    """A new login role that may connect to ``db_url``'s database and use ``schema``, no
    more (the password is ignored: the test server trusts local connections)."""
    role = f"app_{secrets.token_hex(4)}"
    db = db_url.rsplit("/", 1)[1]
    _pg_admin(url, f"CREATE ROLE {role} LOGIN PASSWORD 's3cret'")
    _pg_admin(db_url, f"REVOKE ALL ON DATABASE {db} FROM PUBLIC",
              f"GRANT CONNECT ON DATABASE {db} TO {role}",
              f"GRANT USAGE ON SCHEMA {schema} TO {role}")
    return role


def _as_role(db_url: str, role: str, schema: str) -> str:
    return (db_url.replace("//lifecast@", f"//{role}:s3cret@")
            + f"?options=-csearch_path%3D{schema}")


@pytest.mark.slow
def test_store_tables_in_the_schema_of_the_search_path_postgres(pg_server: str) -> None:
    """A store URL with ``?options=-csearch_path%3Dcrm`` keeps its tables in schema crm, and
    a second store (the service) on the same URL reads what the first wrote. A schema that
    does not exist is refused by `check_reachable`, before any work: it used to pass, and
    the write after the scoring failed with psycopg's 'no schema has been selected to
    create in' (a raw ProgrammingError, not a store error)."""
    db = _pg_helper().create_database(pg_server)
    _pg_admin(db, "CREATE SCHEMA crm")
    url = db + "?options=-csearch_path%3Dcrm"
    writer, reader = CustomerStore(url), CustomerStore(url)
    writer.check_reachable()
    scores, features = make_batch(["a", "b"], seed=3)
    batch = write(writer, scores, features)
    assert _pg_tables(db) == [f"crm.lifecast_{t}" for t in
                              ("batches", "current", "details", "scores")]
    got, feats, unknown = reader.get_customers(["b", "a", "x"])
    assert unknown == ["x"] and got["batch_id"].tolist() == [batch, batch]
    want = scores.set_index("customer_id").loc[["b", "a"]]
    assert got["churn_probability"].tolist() == want["churn_probability"].tolist()
    assert reader.lookup(["a"]).ids == ["a"]
    writer.close(), reader.close()

    missing = CustomerStore(db + "?options=-csearch_path%3Dnope")
    with pytest.raises(StoreUnavailableError) as info:
        missing.check_reachable()
    assert str(info.value) == (
        f"cannot write the customer store {db}?options=-csearch_path%3Dnope: no schema of "
        f"the search_path (nope) exists or is usable by role 'lifecast', so there is no "
        f"schema to keep the store's tables in: create it (CREATE SCHEMA nope), or name an "
        f"existing schema in the URL with ?options=-csearch_path%3D<schema>")
    missing.close()


@pytest.mark.slow
def test_check_reachable_finds_a_role_that_cannot_write_postgres(pg_server: str) -> None:
    """A role with CONNECT and USAGE on its schema, nothing more, passed the early check
    and failed only at the write ('permission denied for schema crm', a raw
    ProgrammingError), after all the scoring work. `check_reachable` now names the store
    (password hidden), the schema, the missing privileges and the GRANTs to run, and
    creates nothing; once granted, the role writes."""
    db = _pg_helper().create_database(pg_server)
    _pg_admin(db, "CREATE SCHEMA crm")
    role = _pg_role(pg_server, db, "crm")
    url = _as_role(db, role, "crm")
    store = CustomerStore(url)
    shown = url.replace("s3cret", "***")
    with pytest.raises(StoreUnavailableError) as info:
        store.check_reachable()
    assert str(info.value) == (
        f"cannot write the customer store {shown}: role '{role}' lacks CREATE on schema crm "
        f"(the first schema of its search_path, where lifecast_batches, lifecast_scores, "
        f"lifecast_details, lifecast_current would be created). Have the schema's owner run: "
        f"GRANT CREATE ON SCHEMA crm TO {role} (or run the first `lifecast score` as a role "
        f"that may create tables there, then GRANT SELECT, INSERT, UPDATE, DELETE ON ALL "
        f"TABLES IN SCHEMA crm TO {role}; GRANT USAGE ON ALL SEQUENCES IN SCHEMA crm TO "
        f"{role})")
    assert "s3cret" not in str(info.value)
    assert _pg_tables(db) == []  # nothing left behind

    owner = CustomerStore(db + "?options=-csearch_path%3Dcrm")  # the tables, made by the owner
    first = write(owner, *make_batch(["a"], seed=1))
    _pg_admin(db, f"GRANT SELECT ON ALL TABLES IN SCHEMA crm TO {role}",
              f"GRANT INSERT ON crm.lifecast_scores TO {role}")
    with pytest.raises(StoreUnavailableError) as info:
        store.check_reachable()
    assert str(info.value) == (
        f"cannot write the customer store {shown}: role '{role}' lacks INSERT, DELETE on "
        f"crm.lifecast_batches; USAGE on sequence crm.lifecast_batches_batch_no_seq; DELETE "
        f"on crm.lifecast_scores; INSERT, DELETE on crm.lifecast_details; INSERT, UPDATE on "
        f"crm.lifecast_current. Have the schema's owner run: GRANT INSERT, DELETE ON "
        f"crm.lifecast_batches TO {role}; GRANT USAGE ON SEQUENCE "
        f"crm.lifecast_batches_batch_no_seq TO {role}; GRANT DELETE ON crm.lifecast_scores "
        f"TO {role}; GRANT INSERT, DELETE ON crm.lifecast_details TO {role}; GRANT INSERT, "
        f"UPDATE ON crm.lifecast_current TO {role}")

    _pg_admin(db, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm TO {role}",
              f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA crm TO {role}")
    store.check_reachable()
    second = write(store, *make_batch(["a", "b"], seed=2))
    assert owner.batches()["batch_id"].tolist() == [second, first]
    store.close(), owner.close()


@pytest.mark.slow
def test_check_reachable_on_a_connection_the_server_drops_is_temporary_postgres(
        pg_server: str) -> None:
    """A connection dropped while `check_reachable` read the role's privileges (a server
    restarting, a session terminated) surfaced as SQLAlchemy's raw OperationalError: a
    traceback and exit 1 from `lifecast score`. It is now a `StoreUnreachableError` (exit
    75), as the same drop in a read or a write is."""
    db = _pg_helper().create_database(pg_server)
    store = CustomerStore(db)
    dropped: list[int] = []

    def drop(conn, cursor, statement, *args) -> None:  # noqa: ANN001 (SQLAlchemy's event)
        if "current_schema()" in statement and not dropped:  # `_postgres_cannot_write`
            dropped.append(conn.connection.dbapi_connection.info.backend_pid)
            # waits (up to 10 s) until the backend is gone
            _pg_admin(db, f"SELECT pg_terminate_backend({dropped[0]}, 10000)")

    sa.event.listen(store._get_engine(), "before_cursor_execute", drop)
    with pytest.raises(StoreUnreachableError) as info:
        store.check_reachable()
    assert dropped and isinstance(info.value, TemporaryFailure)
    assert str(info.value).startswith(f"customer store {db}: terminating connection due "
                                      f"to administrator command"), str(info.value)
    store.check_reachable()  # the next connection is a new one
    assert _pg_tables(db) == []
    store.close()


@pytest.mark.slow
def test_a_write_refused_by_privileges_is_a_store_error_postgres(pg_server: str) -> None:
    """A privilege revoked after the check (here INSERT on the details table, which COPY
    fills through psycopg's own cursor) fails the write with `StoreUnavailableError` naming
    the store and the table, not a driver traceback; the current batch is untouched. A
    reader without SELECT gets the same kind of error."""
    db = _pg_helper().create_database(pg_server)
    _pg_admin(db, "CREATE SCHEMA crm")
    owner = CustomerStore(db + "?options=-csearch_path%3Dcrm")
    first = write(owner, *make_batch(["a"], seed=1))
    role = _pg_role(pg_server, db, "crm")
    _pg_admin(db, f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA crm TO {role}",
              f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA crm TO {role}",
              f"REVOKE INSERT ON crm.lifecast_details FROM {role}")
    store = CustomerStore(_as_role(db, role, "crm"))
    shown = store.safe_url
    with pytest.raises(StoreUnavailableError, match=re.escape(
            f"customer store {shown}: permission denied for table lifecast_details")):
        write(store, *make_batch(["a", "b"], seed=2))
    assert owner.batches()["batch_id"].tolist() == [first]
    _pg_admin(db, f"REVOKE SELECT ON crm.lifecast_scores FROM {role}")
    with pytest.raises(StoreUnavailableError, match=re.escape(
            f"customer store {shown}: permission denied for table lifecast_scores")):
        store.get_customers(["a"])
    store.close(), owner.close()


@pytest.mark.slow
def test_a_reader_without_the_writers_search_path_is_told_where_the_tables_are_postgres(
        pg_server: str) -> None:
    """`lifecast score` wrote into schema crm (``?options=-csearch_path%3Dcrm``) and the
    service was given the URL without it: it answered 'no scores yet: run `lifecast score`
    first', which the user had just done. The empty-store error (and `unreached_hint`, which
    `lifecast serve` and the service add to theirs) now says which schema holds the tables
    and what to add to the URL."""
    db = _pg_helper().create_database(pg_server)
    _pg_admin(db, "CREATE SCHEMA crm")
    writer = CustomerStore(db + "?options=-csearch_path%3Dcrm")
    write(writer, *make_batch(["a"]))
    reader = CustomerStore(db)
    assert reader.current_batch() is None
    hint = ('; its search_path ("$user", public) does not reach the store\'s tables in schema '
            'crm: give the URL `lifecast score` wrote with, e.g. with '
            '?options=-csearch_path%3Dcrm')
    assert reader.unreached_hint() == hint
    for read in (lambda: reader.get_customers(["a"]), lambda: reader.lookup(["a"])):
        with pytest.raises(EmptyStoreError) as info:
            read()
        assert str(info.value) == f"{EMPTY_STORE_MESSAGE} (customer store: {db}){hint}"
    assert writer.unreached_hint() == ""
    writer.close(), reader.close()


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_score_exits_75_for_a_server_that_is_down_and_2_for_a_wrong_password_postgres(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lifecast score --store postgresql+psycopg://...` exited 2 whether the password was
    wrong or the server was down, so a scheduler could not tell "fix the config" from "retry
    later". A wrong password still exits 2 with one line; a server that is stopped exits 75
    (EX_TEMPFAIL) with the same kind of line, saying it is temporary. A connection the
    server drops mid-transaction is a `StoreUnreachableError` too."""
    from typer.testing import CliRunner

    from features.urls import masked_url
    from serving.cli import app
    from training.tracking import configure

    pg = _pg_helper()
    reason = pg.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no PostgreSQL to test against: {reason}")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    configure(tmp_path)  # an MLflow store without models: the store is checked first
    sales = tmp_path / "sales.csv"
    pd.DataFrame({"customer_id": ["a", "b"], "timestamp": ["2024-01-02", "2024-01-05"],
                  "amount": [10.0, 5.0]}).to_csv(sales, index=False)
    runner = CliRunner()
    password = secrets.token_hex(8)
    with pg.postgres_server(password=password) as url:
        wrong = url.replace(f":{password}@", ":wrong@")
        res = runner.invoke(app, ["score", "-t", str(sales), "--store", wrong])
        assert res.exit_code == 2, res.output
        lines = res.output.splitlines()
        assert len(lines) == 1 and lines[0].startswith(
            f"error: cannot open the customer store at {masked_url(wrong)}: "), res.output
        assert 'password authentication failed for user "lifecast"' in lines[0]
        assert "temporary" not in lines[0]

        store = CustomerStore(url)
        dropped = "terminating connection due to administrator command"
        with pytest.raises(StoreUnreachableError, match=dropped), \
                store._transaction(write=False) as conn:
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
            _pg_admin(url, f"SELECT pg_terminate_backend({pid})")
            conn.exec_driver_sql("SELECT 1")
        store.close()
    # the server is stopped now: nothing listens at its port
    res = runner.invoke(app, ["score", "-t", str(sales), "--store", url])
    assert res.exit_code == 75, res.output
    lines = res.output.splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot open the customer store at {masked_url(url)}: connection failed: "
    ), res.output
    assert "Connection refused" in lines[0]
    assert lines[0].endswith("connections? This is temporary: running the command again "
                             "later may succeed"), res.output
    assert password not in res.output
