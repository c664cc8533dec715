"""/predict's fast path: `CustomerStore.lookup` (no pandas) and `Runtime.predict` give exactly
what the pandas path (`CustomerStore.get_customers`, `Runtime.predict_frames`) gives, follow a
new batch (whatever its feature column order) and never mix two batches in one answer.
PostgreSQL runs the same lookup statement in the slow tier (skipped, saying why, without
PostgreSQL binaries or psycopg)."""

from __future__ import annotations

import importlib.util
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest

from training.store import CustomerStore, EmptyStoreError


@pytest.fixture(scope="module")
def runtime(service_env):
    from serving.service import Lifecast

    instance = Lifecast()
    yield instance.runtime
    instance._close()


@pytest.fixture(scope="module")
def known(world) -> list[str]:
    store = CustomerStore(world.store_url)
    try:
        ranked, _ = store.ranked(min_churn_probability=None, min_value=None, limit=100_000)
    finally:
        store.close()
    return ranked["customer_id"].astype(str).tolist()


def assert_same_answer(runtime, ids: list[str]) -> None:
    fast, reference = runtime.predict(ids), runtime.predict_frames(ids)
    assert fast.model_dump_json() == reference.model_dump_json()
    assert fast.model_dump() == reference.model_dump()


def test_fast_path_equals_the_pandas_path(runtime, known) -> None:
    # ids with missing feature values among them (NaN -> reason value null)
    assert_same_answer(runtime, [known[0]])
    assert_same_answer(runtime, [known[-1]])
    assert_same_answer(runtime, ["nobody"])
    assert_same_answer(runtime, [known[5], "nobody", known[7], known[5], "nobody-else",
                                 known[len(known) // 2]])
    assert_same_answer(runtime, known[::37])


def test_fast_path_equals_the_pandas_path_for_1000_ids(runtime, known) -> None:
    ids = [*known[:990], *(f"unknown-{i}" for i in range(10))]
    assert len(ids) == 1000
    fast = runtime.predict(ids)
    assert len(fast.predictions) == min(990, len(known)) and len(fast.errors) == 10
    assert fast.model_dump_json() == runtime.predict_frames(ids).model_dump_json()


def test_single_row_path_equals_booster_predict(runtime, known, monkeypatch) -> None:
    """Requests of up to `serving.app.ROW_PATH_MAX` ids go through LightGBM's single-row fast
    path: the same answer as ``Booster.predict`` (the path of larger requests), bit for bit."""
    import serving.app as app

    assert runtime._rows is not None  # the fast path is set up for these models
    ids = [known[0], known[-1], *known[10:40]]
    for asked in ([ids[0]], [ids[1]], ids):
        fast = runtime.predict(asked).model_dump_json()
        monkeypatch.setattr(app, "ROW_PATH_MAX", 0)
        assert runtime.predict(asked).model_dump_json() == fast
        monkeypatch.setattr(app, "ROW_PATH_MAX", 64)


def test_concurrent_requests_get_the_sequential_answers(runtime, known) -> None:
    """/predict answers small requests on the event loop while a large one runs in a worker
    thread: the store, the per-batch cache and the boosters are used from two threads at once."""
    requests = [known[i:i + n] for i, n in ((0, 1), (7, 300), (3, 2), (50, 1), (100, 200),
                                             (9, 16))]
    expected = [runtime.predict(ids).model_dump_json() for ids in requests]
    got: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                got[k] = runtime.predict(requests[k]).model_dump_json()
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors[0]
    assert [got[k] for k in range(len(requests))] == expected


def test_lookup_equals_get_customers(world, known) -> None:
    store = CustomerStore(world.store_url)
    try:
        asked = [known[3], "nope", known[1], known[3], *known[10:20], "nope", "other"]
        rows = store.lookup(asked)  # each id once (get_customers repeats duplicates)
        scores, feats, unknown = store.get_customers(list(dict.fromkeys(asked)))
        # the first read of a batch is a transaction (it caches the batch's constants); then
        # one statement without one answers, with the same rows
        again = store._quick_lookup(list(dict.fromkeys(asked)))
        assert again is not None and again.batch is rows.batch
        assert (again.ids, again.unknown, again.scores) == (rows.ids, rows.unknown, rows.scores)
        np.testing.assert_array_equal(again.features, rows.features, strict=True)
    finally:
        store.close()
    assert rows.ids == scores["customer_id"].tolist() == [known[3], known[1], *known[10:20]]
    assert rows.unknown == unknown == ["nope", "other"]
    assert rows.batch.batch_id == scores["batch_id"].iloc[0]
    assert rows.batch.as_of == scores["as_of"].iloc[0]
    assert rows.batch.model_versions == {"churn": scores["churn_model_version"].iloc[0],
                                         "clv": scores["clv_model_version"].iloc[0]}
    assert list(rows.batch.feature_columns) == list(feats.columns[1:])
    assert rows.features.dtype == np.float64 and rows.features.flags.c_contiguous
    np.testing.assert_array_equal(rows.features, feats.iloc[:, 1:].to_numpy(), strict=True)
    for name, values in rows.scores.items():
        expected = [None if pd.isna(v) else v for v in scores[name].tolist()]
        assert values == expected, name


def test_lookup_of_an_empty_store(tmp_path: Path) -> None:
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    with pytest.raises(EmptyStoreError, match="lifecast score"):
        store.lookup(["a"])
    assert not (tmp_path / "lifecast_store.db").exists()  # reading creates nothing
    store._ensure_schema()  # tables, but no batch yet
    with pytest.raises(EmptyStoreError, match="lifecast score"):
        store.lookup(["a"])
    with pytest.raises(TypeError, match="list"):
        store.lookup("a")
    store.close()


def test_a_new_batch_is_followed_whatever_its_column_order(world, runtime, tmp_path,
                                                           stored_batch) -> None:
    """The per-batch constants (feature positions, as_of, batch id) are cached by batch: a
    new batch with its feature columns in another order and other values is answered from
    its own rows, and equal to the pandas path."""
    from serving.app import Runtime
    from serving.audit import AuditLog

    scores, feats = stored_batch(world.store_url)
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    versions = {"churn": "7", "clv": "8"}
    first = store.write_batch(scores, feats, as_of=world.as_of, model_versions=versions)
    rt = Runtime(runtime.models, CustomerStore(store.url), AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=3600)
    try:
        ids = scores["customer_id"].tolist()[:25]
        before = rt.predict(ids)
        assert before.batch_id == first
        assert before.model_dump_json() == runtime.predict(ids).model_dump_json().replace(
            runtime.predict(ids).batch_id, first)

        columns = list(feats.columns[1:])
        shuffled = feats[["customer_id", *columns[::-1]]].copy()
        shuffled.loc[shuffled.index[:25], "days_since_last"] += 200.0
        later = world.as_of + pd.Timedelta(days=7)
        second = store.write_batch(scores.drop(columns=["as_of"]), shuffled, as_of=later,
                                   model_versions=versions)
        after = rt.predict(ids)  # no refresh needed: the lookup names its batch
        assert after.batch_id == second != first
        assert {p.as_of for p in after.predictions} == {later.to_pydatetime()}
        assert [p.churn_probability for p in after.predictions] != [
            p.churn_probability for p in before.predictions]
        rt.refresh(force=True)  # the pandas path reads the refreshed batch state
        assert after.model_dump_json() == rt.predict_frames(ids).model_dump_json()
        rows = rt.store.lookup(ids)
        assert rows.batch.feature_columns == tuple(columns[::-1])
    finally:
        rt.close()
        store.close()


def test_lookup_never_mixes_two_batches(world, tmp_path, monkeypatch, stored_batch) -> None:
    """A reader looks customers up while a writer replaces the batch (the writer pauses inside
    its transaction, after its first chunk, until the reader has read): every answer is wholly
    from the old batch or wholly from the new one, batch id, scores and features alike."""
    scores, feats = stored_batch(world.store_url)
    url = CustomerStore.default_url(tmp_path)
    writer = CustomerStore(url, chunk_size=200)
    versions = {"churn": "7", "clv": "8"}
    old = scores.assign(churn_probability=0.1, value_at_risk=0.1 * scores["predicted_clv"])
    old_id = writer.write_batch(old, feats.assign(n_orders=1.0), as_of=world.as_of,
                                model_versions=versions)
    reader = CustomerStore(url)
    ids = scores["customer_id"].tolist()
    n_col = list(feats.columns[1:]).index("n_orders")

    paused, resume = threading.Event(), threading.Event()
    real_insert = CustomerStore._insert_rows
    calls = {"n": 0}

    def pausing_insert(self, conn, table, rows):  # noqa: ANN001
        real_insert(self, conn, table, rows)
        calls["n"] += 1
        if calls["n"] == 1:
            paused.set()
            resume.wait(timeout=60)

    monkeypatch.setattr(CustomerStore, "_insert_rows", pausing_insert)
    seen: list[tuple[str, frozenset, frozenset, bool]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read_loop() -> None:
        try:
            while True:
                finished = done.is_set()
                during = paused.is_set() and not resume.is_set()
                rows = reader.lookup(ids[::7] if not during else ids)
                assert rows.unknown == []
                seen.append((rows.batch.batch_id, frozenset(rows.scores["churn_probability"]),
                             frozenset(rows.features[:, n_col].tolist()), during))
                if during and sum(s[3] for s in seen) >= 3:
                    resume.set()
                if finished:
                    return
                time.sleep(0.001)
        except BaseException as e:  # reported by the main thread
            errors.append(e)
            resume.set()

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        new = scores.assign(churn_probability=0.9, value_at_risk=0.9 * scores["predicted_clv"])
        new_id = writer.write_batch(new, feats.assign(n_orders=2.0), as_of=world.as_of,
                                    model_versions=versions)
    finally:
        done.set()
        resume.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    if errors:
        raise errors[0]
    assert {(b, p, f) for b, p, f, _ in seen} <= {
        (old_id, frozenset({0.1}), frozenset({1.0})), (new_id, frozenset({0.9}),
                                                       frozenset({2.0}))}
    during = [s for s in seen if s[3]]
    assert len(during) >= 3 and all(s[0] == old_id for s in during)
    assert seen[-1][0] == new_id
    reader.close()
    writer.close()


def test_the_settings_checked_are_those_of_the_batch_answered_from(world, runtime, tmp_path,
                                                                  stored_batch,
                                                                  monkeypatch) -> None:
    """/predict refuses a batch built with other feature definitions, judged from the batch
    its rows came from. That batch's metadata used to be read apart from the rows (among the
    kept batches, after the lookup): a rescore landing in between (keep_batches=1: the batch
    answered from is deleted) left nothing to check, and the rows were answered from (200)."""
    from serving.app import Runtime, ServiceError
    from serving.audit import AuditLog

    scores, feats = stored_batch(world.store_url)
    writer = CustomerStore(CustomerStore.default_url(tmp_path), keep_batches=1)
    same = {"as_of": world.as_of, "model_versions": runtime.models.versions}
    writer.write_batch(scores, feats, **same)
    rt = Runtime(runtime.models, CustomerStore(writer.url), AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=3600)  # the service's batch: this first one
    try:
        v1 = writer.write_batch(scores, feats, feature_definitions=None, **same)
        lookup, rescored = rt.store.lookup, []

        def lookup_then_rescore(ids):  # noqa: ANN001, ANN202
            rows = lookup(ids)
            rescored.append(writer.write_batch(scores, feats, **same))  # deletes v1
            return rows

        monkeypatch.setattr(rt.store, "lookup", lookup_then_rescore)
        with pytest.raises(ServiceError) as info:
            rt.predict(scores["customer_id"].tolist()[:3])
        assert rescored and writer.batches()["batch_id"].tolist() == rescored
        assert info.value.status == 503 and f"batch {v1}" in info.value.message
        assert "feature definitions v1" in info.value.message
        monkeypatch.undo()
        assert rt.predict(scores["customer_id"].tolist()[:3]).batch_id == rescored[0]
    finally:
        rt.close()
        writer.close()


def test_a_refitted_baseline_is_fitted_on_the_batch_it_is_kept_for(world, runtime, tmp_path,
                                                                  stored_batch,
                                                                  monkeypatch) -> None:
    """A batch saved without its baseline (written by an older lifecast, or by `write_batch`
    without one) gets the baseline refitted on its population, read in two calls (the ids by
    `ranked`, then their features by `get_customers`). A rescore landing between them used to
    give the service the first batch with a baseline fitted on the second one's features;
    now the batch that became current is loaded, with its own baseline."""
    from serving.app import Runtime
    from serving.audit import AuditLog
    from training.baseline import BaselineCLV

    scores, feats = stored_batch(world.store_url)
    writer = CustomerStore(CustomerStore.default_url(tmp_path))
    same = {"as_of": world.as_of, "model_versions": runtime.models.versions}
    writer.write_batch(scores, feats, **same)  # no baseline in its metadata
    doubled = feats.assign(monetary_value=feats["monetary_value"] * 2)
    reader, rescored = CustomerStore(writer.url), []
    get_customers = reader.get_customers

    def rescore_then_get(ids):  # noqa: ANN001, ANN202
        if not rescored:
            rescored.append(writer.write_batch(scores, doubled, **same))
        return get_customers(ids)

    monkeypatch.setattr(reader, "get_customers", rescore_then_get)
    rt = Runtime(runtime.models, reader, AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=3600)
    try:
        assert rescored and rt.refresh()
        assert rt._state is not None and rt._state.batch_id == rescored[0]
        columns = ["frequency", "recency", "T", "monetary_value"]
        population = doubled.sort_values("customer_id")[columns].reset_index(drop=True)
        assert rt._state.baseline is not None
        assert rt._state.baseline.to_dict() == BaselineCLV().fit(population).to_dict()
    finally:
        rt.close()
        writer.close()


# -- PostgreSQL (slow tier) --------------------------------------------------------------------


def _pg_helper() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "training" / "pg.py"
    spec = importlib.util.spec_from_file_location("lifecast_test_pg_serving", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    pg = _pg_helper()
    reason = pg.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no PostgreSQL to test against: {reason}")
    with pg.postgres_server() as url:
        yield pg.create_database(url)


@pytest.mark.slow
def test_lookup_equals_get_customers_postgres(world, pg_url: str, stored_batch) -> None:
    scores, feats = stored_batch(world.store_url)
    store = CustomerStore(pg_url)
    try:
        batch_id = store.write_batch(scores, feats, as_of=world.as_of,
                                     model_versions={"churn": "7", "clv": "8"})
        ids = scores["customer_id"].tolist()
        asked = [ids[4], "nope", ids[2], *ids[100:1100]]
        rows = store.lookup(asked)
        got, got_feats, unknown = store.get_customers(asked)
        assert rows.batch.batch_id == batch_id and rows.unknown == unknown == ["nope"]
        assert rows.ids == got["customer_id"].tolist()
        np.testing.assert_array_equal(rows.features, got_feats.iloc[:, 1:].to_numpy())
        assert rows.scores["segment"] == got["segment"].tolist()
        with pytest.raises(TypeError):
            store.lookup("x")
    finally:
        store.close()


def _runtime_on_a_copy(world, runtime, tmp_path: Path, stored_batch, url: str | None = None):
    """(a `Runtime` of the test service's models over a new customer store holding the
    current batch, the batch's customer ids, the store's folder): the store at ``url``,
    else a SQLite file in ``tmp_path / "store"``."""
    from serving.app import Runtime
    from serving.audit import AuditLog

    scores, feats = stored_batch(world.store_url)
    folder = tmp_path / "store"
    url = url or CustomerStore.default_url(folder)
    writer = CustomerStore(url)
    writer.write_batch(scores, feats, as_of=world.as_of,
                       model_versions={"churn": "7", "clv": "8"})
    writer.close()
    rt = Runtime(runtime.models, CustomerStore(url), AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=0)
    return rt, scores["customer_id"].tolist(), folder


def test_readiness_follows_the_store_going_away_and_coming_back(world, runtime, tmp_path,
                                                                 stored_batch) -> None:
    """/readyz (`Runtime.is_ready`) tells a load balancer the truth: once a batch was loaded,
    a store that can no longer be opened (here the SQLite file's place taken by a folder, as
    when its volume is not mounted) made every /predict answer 503 while /readyz still said
    ready; now it is not ready until the store answers again."""
    import shutil

    from serving.app import ServiceError

    rt, ids, folder = _runtime_on_a_copy(world, runtime, tmp_path, stored_batch)
    ids = ids[:3]
    try:
        assert rt.is_ready()
        assert len(rt.predict(ids).predictions) == 3
        rt.store.close()  # its pooled connections would keep the old file open
        shutil.move(folder, tmp_path / "away")
        (folder / "lifecast_store.db").mkdir(parents=True)
        with pytest.raises(ServiceError) as err:
            rt.predict(ids)
        assert err.value.status == 503
        assert rt.is_ready() is False
        shutil.rmtree(folder)
        shutil.move(tmp_path / "away", folder)
        rt.store.close()
        assert rt.is_ready() is True
        assert len(rt.predict(ids).predictions) == 3
    finally:
        rt.close()


@pytest.mark.slow
def test_predict_is_503_while_postgresql_is_down(world, runtime, tmp_path, stored_batch) -> None:
    """A stopped PostgreSQL server made /predict answer 500 (a traceback in the log) while
    /high_risk answered 503: the pool raises the driver's own error from
    ``raw_connection``, which the fast path did not catch. Both are 503 now."""
    from serving.app import ServiceError

    pg = _pg_helper()
    reason = pg.unavailable_reason()
    if reason is not None:
        pytest.skip(f"no PostgreSQL to test against: {reason}")
    with pg.postgres_server() as server:
        rt, ids, _ = _runtime_on_a_copy(world, runtime, tmp_path, stored_batch,
                                        pg.create_database(server))
        ids = ids[:3]
        assert len(rt.predict(ids).predictions) == 3  # its pool keeps the connection
    try:
        for ask in (lambda: rt.predict(ids), lambda: rt.predict_frames(ids),
                    lambda: rt.predict(ids[:1])):
            with pytest.raises(ServiceError) as err:
                ask()
            assert err.value.status == 503, err.value
            print("CAUSE", repr(err.value), repr(err.value.__context__))
        assert rt.is_ready() is False
    finally:
        rt.close()


def test_a_store_corrupted_under_a_live_connection_is_503_not_500(
        world, runtime, tmp_path, stored_batch) -> None:
    """A store file corrupted under the service (replaced while it ran, a disk error) made
    its open connections fail with sqlite3's DatabaseError ("database disk image is
    malformed"), which only OperationalError and InterfaceError were mapped from, so
    /predict answered 500; it is the store being unavailable (503), as it already was for a
    connection opened after the damage."""
    import sqlite3

    from serving.app import ServiceError

    rt, ids, folder = _runtime_on_a_copy(world, runtime, tmp_path, stored_batch)
    try:
        assert len(rt.predict(ids[:3]).predictions) == 3  # the pool keeps its connection
        db = folder / "lifecast_store.db"
        other = sqlite3.connect(db)  # a change its connection sees: its page cache is dropped
        other.execute("PRAGMA user_version = 7")
        other.commit()
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        other.close()
        with db.open("r+b") as f:  # every page after the first (the schema) overwritten
            f.seek(4096)
            f.write(b"\xff" * (db.stat().st_size - 4096))
        for ask in (lambda: rt.predict(ids[-3:]), lambda: rt.predict_frames(ids[-6:-3])):
            with pytest.raises(ServiceError) as err:
                ask()
            assert err.value.status == 503, err.value
        assert rt.is_ready() is False
    finally:
        rt.close()
