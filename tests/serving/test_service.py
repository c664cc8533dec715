"""The prediction service, fast tier: the service class called directly and its HTTP layer
through BentoML's ASGI app (starlette's TestClient runs its lifespan, so the service instance
is created as in a worker). Models and scores come from the session fixture in conftest."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from serving.schemas import (
    EXAMPLE_HIGH_RISK_REQUEST,
    EXAMPLE_PREDICT_REQUEST,
    EXAMPLE_SCORE_REQUEST,
    MAX_IDS,
    HighRiskRequest,
    PredictRequest,
    ScoreRequest,
)

OPEN = ["/livez", "/healthz", "/readyz", "/metrics", "/schema.json", "/docs.json", "/",
        "/static_content/swagger-ui.css", "/docs", "/openapi.json"]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def svc(service_env):
    from serving.service import Lifecast

    instance = Lifecast()
    yield instance
    instance._close()


@pytest.fixture(scope="module")
def client(service_env):
    from starlette.testclient import TestClient

    from serving.service import Lifecast

    with TestClient(Lifecast.to_asgi(), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture(scope="module")
def stored(world):
    """The current batch: (scores, features) of every customer, by customer id."""
    from training.store import CustomerStore

    store = CustomerStore(world.store_url)
    try:
        ranked, total = store.ranked(min_churn_probability=None, min_value=None, limit=100_000)
        scores, feats, unknown = store.get_customers(ranked["customer_id"].tolist())
    finally:
        store.close()
    assert not unknown and len(scores) == total
    return scores.set_index("customer_id", drop=False), feats


def post(client, path: str, body=None, key: str | None = "admin", *, world=None, **kw):
    headers = dict(kw.pop("headers", {}))
    if key is not None:
        headers["Authorization"] = f"Bearer {key if key.startswith('lc_') else _tok[key]}"
    if body is not None and "content" not in kw:
        kw["content"] = json.dumps(body)
        headers.setdefault("Content-Type", "application/json")
    return client.post(path, headers=headers, **kw)


_tok: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _tokens(world):
    _tok.update(world.tokens)


def assert_clean_error(resp, status: int | tuple[int, ...], *words: str) -> dict:
    """A JSON error body with a message naming ``words``, no traceback, no server error."""
    statuses = status if isinstance(status, tuple) else (status,)
    assert resp.status_code in statuses, (resp.status_code, resp.text)
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str), body
    for word in words:
        assert word in body["error"], (word, body["error"])
    for leak in ("Traceback", 'File "', "site-packages", "Exception on"):
        assert leak not in resp.text
    return body


# -- the service class, called directly ----------------------------------------------------


def test_readiness_and_loaded_models(svc, world) -> None:
    assert svc.__is_ready__() is True
    assert svc.runtime.models.versions == {"churn": "7", "clv": "8"}


def predict(svc, **request):
    """/predict called directly (an async API: the coroutine is run here)."""
    return asyncio.run(svc.predict(**request))


def test_predict_direct_unknown_ids_and_duplicates(svc, stored) -> None:
    scores, _ = stored
    known = scores.index[:3].tolist()
    out = predict(svc, customer_ids=[known[0], "no-such-customer", known[1], known[0],
                                     known[2]])
    assert [p.customer_id for p in out.predictions] == known
    assert [(e.customer_id, "unknown" in e.error) for e in out.errors] == [
        ("no-such-customer", True)]
    only_unknown = predict(svc, customer_ids=["a", "b"])
    assert only_unknown.predictions == [] and len(only_unknown.errors) == 2


def test_predict_matches_the_batch_pipeline(svc, world, stored) -> None:
    """The service's numbers equal `training.pipeline.predict_customers` on the same features
    (and the batch's stored scores): the churn probability bit for bit (it once came from the
    sum of the SHAP contributions, which differs from the raw score in the last bits), the
    rest to 1e-9."""
    from training.pipeline import predict_customers

    scores, feats = stored
    ids = scores.index[:: max(len(scores) // 40, 1)].tolist()
    out = predict(svc, customer_ids=ids)
    rows = feats.set_index("customer_id").loc[ids].reset_index()
    expected = predict_customers(world.models, rows, world.as_of).set_index("customer_id")
    assert len(out.predictions) == len(ids)
    for p in out.predictions:
        e = expected.loc[p.customer_id]
        assert p.churn_probability == e["churn_probability"]
        assert p.predicted_clv == pytest.approx(e["predicted_clv"], rel=1e-9, abs=1e-9)
        assert p.value_at_risk == pytest.approx(e["value_at_risk"], rel=1e-9, abs=1e-9)
        assert p.churn_risk == e["churn_risk"]
        got = [r.model_dump() for r in p.reasons]
        assert [(r["feature"], r["direction"]) for r in got] == [
            (r["feature"], r["direction"]) for r in e["reasons"]]
        assert [r["contribution"] for r in got] == pytest.approx(
            [r["contribution"] for r in e["reasons"]], abs=1e-9)
        s = scores.loc[p.customer_id]
        assert p.churn_probability == s["churn_probability"]
        assert (p.segment, p.lifecycle_stage, p.rfm_score) == (
            e["segment"], e["lifecycle_stage"], e["rfm_score"])
        assert p.expected_orders == pytest.approx(e["expected_orders"], rel=1e-12)
        assert p.as_of == world.as_of.to_pydatetime()
        assert p.model_versions.model_dump() == {"churn": "7", "clv": "8"}


def test_score_reproduces_the_batch_from_raw_transactions(svc, world, stored) -> None:
    """/score with a customer's whole history at the batch cutoff gives the batch's answer:
    same features code, same baseline population, same segment thresholds."""
    scores, _ = stored
    tx = world.transactions
    # the first, middle and last customer by value at risk among those whose history fits
    # one request (at most 1,000 transactions)
    n_tx = tx["customer_id"].astype(str).value_counts()
    fits = scores.index[scores.index.map(n_tx).to_numpy() <= 1000]
    picks = [fits[0], fits[len(fits) // 2], fits[-1]]
    customers = []
    for cid in picks:
        rows = tx[tx["customer_id"].astype(str) == cid]
        customers.append({"customer_id": cid, "transactions": [
            {"timestamp": ts.isoformat(), "amount": float(a), "order_id": str(o),
             "product_id": str(p), "quantity": float(q)}
            for ts, a, o, p, q in zip(rows["timestamp"], rows["amount"], rows["order_id"],
                                      rows["product_id"], rows["quantity"], strict=True)]})
    out = svc.score(customers=customers, as_of=world.as_of.isoformat())
    assert out.errors == []
    for p in out.predictions:
        s = scores.loc[p.customer_id]
        assert p.churn_probability == pytest.approx(s["churn_probability"], abs=1e-6)
        assert p.predicted_clv == pytest.approx(s["predicted_clv"], rel=1e-6, abs=1e-6)
        assert p.p_alive == pytest.approx(s["p_alive"], rel=1e-6, abs=1e-9)
        assert p.expected_orders == pytest.approx(s["expected_orders"], rel=1e-6)
        assert (p.segment, p.lifecycle_stage, p.rfm_score, p.churn_risk) == (
            s["segment"], s["lifecycle_stage"], s["rfm_score"], s["churn_risk"])


def test_service_uses_the_baseline_saved_with_the_batch(svc, world) -> None:
    """`lifecast score` stores the baseline it fitted on the population; the service loads
    those parameters instead of refitting (same numbers as the batch, no refit at start)."""
    from training.store import CustomerStore

    store = CustomerStore(world.store_url)
    try:
        saved = store.current_batch()["metadata"]["baseline"]
    finally:
        store.close()
    assert svc.runtime.is_ready()
    baseline = svc.runtime._state.baseline
    assert baseline is not None and saved is not None
    assert baseline.to_dict() == saved


def test_a_batch_scored_by_other_models_is_logged(svc, world, caplog) -> None:
    """After a promote without `lifecast score`, /predict (the service's models) and
    /high_risk (the batch's scores) disagree: the service says so when it loads the batch."""
    import logging

    from training.store import CustomerStore

    store = CustomerStore(world.store_url)
    try:
        batch = store.current_batch()
    finally:
        store.close()
    runtime = svc.runtime
    with caplog.at_level(logging.WARNING, logger="lifecast.serving"):
        runtime._load_batch(batch)
    assert "was scored by models" not in caplog.text
    older = {**batch, "model_versions": {**batch["model_versions"], "churn": "0"}}
    with caplog.at_level(logging.WARNING, logger="lifecast.serving"):
        runtime._load_batch(older)
    churn, clv = world.models.versions["churn"], world.models.versions["clv"]
    assert churn != "0"
    assert (f"batch {batch['batch_id']} was scored by models churn v0, clv v{clv}, "
            f"the service runs churn v{churn}, clv v{clv}") in caplog.text
    assert "run `lifecast score` to rescore the store" in caplog.text


def test_lists_are_labelled_with_the_batch_they_were_read_from(svc, world, monkeypatch
                                                              ) -> None:
    """Between a rescore and the service's next look at the store (every
    LIFECAST_STORE_CHECK_SECONDS), /segments and /high_risk read the new batch: their
    batch id and as-of come from that same read, not from the batch the service last saw."""
    import dataclasses
    import time

    from serving.schemas import HighRiskRequest, SegmentsRequest

    runtime = svc.runtime
    assert runtime.refresh(force=True)
    current = runtime._state
    stale = dataclasses.replace(current, batch_id="an-earlier-batch",
                                as_of=current.as_of - pd.Timedelta(days=40))
    monkeypatch.setattr(runtime, "_state", stale)
    monkeypatch.setattr(runtime, "store_check_seconds", 3600.0)  # no look at the store
    monkeypatch.setattr(runtime, "_checked_at", time.monotonic())
    empty = runtime.high_risk(HighRiskRequest(min_value=1e12))
    some = runtime.high_risk(HighRiskRequest(limit=5))
    segments = runtime.segments(SegmentsRequest())
    assert runtime._state is stale
    for out in (empty, some, segments):
        assert out.batch_id == current.batch_id
        assert pd.Timestamp(out.as_of) == current.as_of
    assert empty.total == 0 and not empty.customers


def test_score_names_the_batch_whose_baseline_it_used(svc, world, tmp_path) -> None:
    """/score's baseline features (expected orders, p_alive and the models' BG/NBD inputs)
    come from the population of a store batch: its answer names that batch (`batch_id`),
    and after a rescore it is the new batch at once, as for /predict, not up to
    LIFECAST_STORE_CHECK_SECONDS later. While another request is loading the new batch, the
    answer is the previous batch's, and says so."""
    from serving.app import Runtime
    from serving.audit import AuditLog
    from training.scoring import score
    from training.store import CustomerStore

    url = f"sqlite:///{tmp_path / 'store.db'}"
    first = score(world.transactions, as_of=world.as_of, store_url=url, models=world.models)
    store = CustomerStore(url)
    runtime = Runtime(svc.runtime.models, store, AuditLog(tmp_path / "audit.log"),
                      store_check_seconds=3600.0)  # no timed look at the store in this test
    request = ScoreRequest.model_validate(EXAMPLE_SCORE_REQUEST)
    try:
        before = runtime.score(request)
        assert before.batch_id == first.batch_id
        # a rescore at another cutoff: another population, another baseline
        second = score(world.transactions, as_of=world.as_of - pd.Timedelta(days=60),
                       store_url=url, models=world.models)
        assert second.batch_id != first.batch_id
        with runtime._lock:  # another request is loading the new batch: the one loaded
            stale = runtime.score(request)
        assert stale.batch_id == first.batch_id
        assert stale.predictions == before.predictions
        after = runtime.score(request)
        assert after.batch_id == second.batch_id
        assert runtime._state.baseline.to_dict() == store.current_batch()["metadata"][
            "baseline"]
        [old], [new] = before.predictions, after.predictions
        assert new.expected_orders != pytest.approx(old.expected_orders)
        assert after.as_of == before.as_of  # the request's cutoff, not the batch's
    finally:
        runtime.close()


def test_score_new_customer_and_default_cutoff(svc) -> None:
    out = svc.score(**EXAMPLE_SCORE_REQUEST)
    [p] = out.predictions
    assert p.customer_id == "new-0001" and 0 <= p.churn_probability <= 1
    assert p.lifecycle_stage in ("new", "active", "cooling", "lapsed", "churned", "reactivated")
    assert p.model_versions.churn == "7" and len(p.reasons) == 3
    # no as_of: the cutoff is now (the 2011 orders are long past: churned)
    recent = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=3)
    out = svc.score(customers=[{"customer_id": "c1", "transactions": [
        {"timestamp": recent.isoformat(), "amount": 30.0}]}])
    [p] = out.predictions
    assert abs(p.as_of - datetime.now(UTC).replace(tzinfo=None)) < timedelta(minutes=1)
    assert p.lifecycle_stage == "new" and p.segment in ("New", "Promising")


def test_score_order_ids_partly_missing(svc) -> None:
    """A transaction without order_id among others with one is its own customer-day order."""
    base = {"customer_id": "m", "transactions": [
        {"timestamp": "2011-11-01T10:00:00", "amount": 10.0, "order_id": "o1"},
        {"timestamp": "2011-11-01T10:00:00", "amount": 5.0, "order_id": "o1"},
        {"timestamp": "2011-11-20T09:00:00", "amount": 7.0},
    ]}
    [p] = svc.score(customers=[base], as_of="2011-12-10").predictions
    assert p.customer_id == "m" and np.isfinite(p.predicted_clv)


def test_score_customer_without_a_purchase_is_an_error_entry(svc) -> None:
    out = svc.score(customers=[
        {"customer_id": "returns-only", "transactions": [
            {"timestamp": "2011-11-01T10:00:00", "amount": -12.0}]},
        {"customer_id": "buyer", "transactions": [
            {"timestamp": "2011-11-01T10:00:00", "amount": 12.0}]},
    ], as_of="2011-12-10")
    assert [p.customer_id for p in out.predictions] == ["buyer"]
    assert [e.customer_id for e in out.errors] == ["returns-only"]
    assert "no purchase" in out.errors[0].error


def test_high_risk_and_segments_direct(svc, world) -> None:
    out = svc.high_risk(**EXAMPLE_HIGH_RISK_REQUEST)
    assert out.limit == 100 and out.total >= len(out.customers)
    for c in out.customers:
        assert c.churn_probability >= 0.5 and c.predicted_clv >= 100
        assert c.segment in ("At Risk", "Can't Lose Them")
    seg = svc.segments()
    assert sum(s.customers for s in seg.segments) == world.models.segmenter.n_customers_


# -- HTTP: endpoints --------------------------------------------------------------------------


def test_http_predict(client, svc, stored) -> None:
    scores, _ = stored
    ids = [scores.index[0], "nope"]
    resp = post(client, "/predict", {"customer_ids": ids}, "crm")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert [p["customer_id"] for p in body["predictions"]] == [ids[0]]
    assert body["errors"] == [{"customer_id": "nope",
                               "error": "unknown customer: not in the current batch"}]
    p = body["predictions"][0]
    assert set(p) == {"customer_id", "as_of", "churn_probability", "churn_risk",
                      "predicted_clv", "expected_orders", "p_alive", "rfm_score", "segment",
                      "lifecycle_stage", "value_at_risk", "reasons", "model_versions"}
    assert p["model_versions"] == {"churn": "7", "clv": "8"}
    assert {r["direction"] for r in p["reasons"]} <= {"raises", "lowers"}
    example = post(client, "/predict", EXAMPLE_PREDICT_REQUEST, "crm")
    assert example.status_code == 200
    # one plain JSON answer with its length: the bytes of the direct call's response model
    assert resp.headers["content-type"] == "application/json"
    assert int(resp.headers["content-length"]) == len(resp.content)
    assert resp.content == predict(svc, customer_ids=ids).model_dump_json().encode()


def _digit_ids(stored, n: int) -> list[str]:
    """``n`` customers of the batch whose ids are digits (the demo data's are integers)."""
    scores, _ = stored
    ids = [c for c in scores.index if c.isdigit()][:n]
    assert len(ids) == n
    return ids


def test_integer_ids_find_the_customers_of_their_strings(client, svc, stored) -> None:
    """A CRM sends its integer ids as JSON numbers: 13047 is the customer "13047", answered
    with the same bytes as the string request, ``customer_id`` a string; an id sent both
    ways is one customer, answered once."""
    ids = _digit_ids(stored, 3)
    numbers = [int(c) for c in ids]
    by_text = post(client, "/predict", {"customer_ids": [*ids, "404404404"]}, "crm")
    by_number = post(client, "/predict", {"customer_ids": [*numbers, 404404404]}, "crm")
    assert by_text.status_code == by_number.status_code == 200, by_number.text
    assert by_number.content == by_text.content
    body = by_number.json()
    assert [p["customer_id"] for p in body["predictions"]] == ids
    assert body["errors"] == [{"customer_id": "404404404",
                               "error": "unknown customer: not in the current batch"}]
    mixed = post(client, "/predict", {"customer_ids": [numbers[0], ids[0], ids[1]]}, "crm")
    assert [p["customer_id"] for p in mixed.json()["predictions"]] == ids[:2]
    # called directly (a notebook), with Python and NumPy integers
    direct = predict(svc, customer_ids=[numbers[0], np.int64(numbers[1])])
    assert direct == predict(svc, customer_ids=ids[:2])


def test_an_unknown_id_that_is_a_stored_id_written_another_way_names_it(client, svc,
                                                                        stored) -> None:
    """A CRM that turns a float id column into text sends "12755.0", or pads ids with
    spaces or zeros: before, each was only "unknown customer", the same answer as a customer
    who does not exist. The error now names the stored id to send; a truly unknown id, and
    a known one, answer as before."""
    from serving.app import UNKNOWN_CUSTOMER

    ids = _digit_ids(stored, 3)
    sent = [f"{ids[0]}.0", f" {ids[1]} ", f"00{ids[2]}", "404404404.0", "nope", ids[0]]
    body = post(client, "/predict", {"customer_ids": sent}, "crm").json()
    assert [p["customer_id"] for p in body["predictions"]] == [ids[0]]
    errors = {e["customer_id"]: e["error"] for e in body["errors"]}
    assert list(errors) == sent[:5]
    for wrong, right in zip(sent[:3], ids, strict=True):
        assert errors[wrong] == (f"{UNKNOWN_CUSTOMER}; the store holds the customer "
                                 f"{right!r}: send ids exactly as the store holds them")
    assert errors["404404404.0"] == errors["nope"] == UNKNOWN_CUSTOMER
    frames = svc.runtime.predict_frames(sent)
    assert [(e.customer_id, e.error) for e in frames.errors] == list(errors.items())


def test_http_score_takes_an_integer_customer_id(client) -> None:
    as_text = post(client, "/score", {**EXAMPLE_SCORE_REQUEST, "customers": [
        {**EXAMPLE_SCORE_REQUEST["customers"][0], "customer_id": "4242"}]}, "crm")
    as_number = post(client, "/score", {**EXAMPLE_SCORE_REQUEST, "customers": [
        {**EXAMPLE_SCORE_REQUEST["customers"][0], "customer_id": 4242}]}, "crm")
    assert as_number.status_code == 200, as_number.text
    assert as_number.json()["predictions"][0]["customer_id"] == "4242"
    assert as_number.content == as_text.content


def test_openapi_shows_both_customer_id_types(client) -> None:
    """The document says what /predict and /score take (a string or an integer id, not a
    float) and that answers give ``customer_id`` as a string."""
    from serving.schemas import MAX_INTEGER_ID

    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def body(path: str) -> dict:
        ref = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"][
            "schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[1]]

    customer_ids = body("/predict")["properties"]["customer_ids"]
    score_customer = body("/score")["properties"]["customers"]["items"]["$ref"]
    customer_id = schemas[score_customer.rsplit("/", 1)[1]]["properties"]["customer_id"]
    for schema, description in ((customer_ids["items"], customer_ids["description"]),
                                (customer_id, customer_id["description"])):
        types = {branch["type"]: branch for branch in schema["anyOf"]}
        assert set(types) == {"string", "integer"}, schema
        assert types["integer"]["maximum"] == MAX_INTEGER_ID == -types["integer"]["minimum"]
        assert "as a string" in description and "13047.0" in description
    answered = schemas["CustomerPrediction"]["properties"]["customer_id"]
    assert answered["type"] == "string" and "Always a string" in answered["description"]
    # the other bodies show what may be null, which BentoML's inline copy left out
    as_of = body("/score")["properties"]["as_of"]
    assert {b.get("type") for b in as_of["anyOf"]} == {"string", "null"}


def test_the_service_schema_shows_both_customer_id_types(client) -> None:
    """/schema.json (BentoML's service schema, which its client reads) gave the customer ids
    of /predict and /score as strings only, and what may be null as never null: BentoML
    keeps the first branch of every union there. Now each route's input and output are
    its models' schemas, unions kept, with the same fields BentoML's client looks up."""
    from serving.service import Lifecast

    schema = client.get("/schema.json")
    assert schema.status_code == 200 and schema.headers["content-type"] == "application/json"
    routes = {r["route"]: r for r in schema.json()["routes"]}
    bentoml_own = {r["route"]: r for r in Lifecast.schema()["routes"]}
    assert set(routes) == set(bentoml_own) == {"/predict", "/score", "/high_risk", "/segments"}
    for route, own in bentoml_own.items():
        assert routes[route]["name"] == own["name"]
        for side in ("input", "output"):
            assert set(routes[route][side]["properties"]) == set(own[side]["properties"])
            assert routes[route][side].get("required") == own[side].get("required")
    predict = routes["/predict"]["input"]["properties"]["customer_ids"]
    customer = routes["/score"]["input"]["properties"]["customers"]["items"]
    for id_schema in (predict["items"], customer["properties"]["customer_id"]):
        assert {b["type"] for b in id_schema["anyOf"]} == {"string", "integer"}, id_schema
    assert {b.get("type") for b in routes["/score"]["input"]["properties"]["as_of"][
        "anyOf"]} == {"string", "null"}
    prediction = routes["/predict"]["output"]["properties"]["predictions"]["items"]
    assert prediction["properties"]["customer_id"]["type"] == "string"
    assert {b.get("type") for b in prediction["properties"]["expected_orders"]["anyOf"]} == {
        "number", "null"}
    assert "$ref" not in schema.text and "$defs" not in schema.text
    assert client.head("/schema.json").content == b""


def test_http_score(client) -> None:
    resp = post(client, "/score", EXAMPLE_SCORE_REQUEST, "crm")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["as_of"] == "2011-12-10T00:00:00"
    assert body["predictions"][0]["customer_id"] == "new-0001"
    assert body["batch_id"] == svc_batch_id(client)


def svc_batch_id(client) -> str:
    """The store batch the service answers /predict from."""
    return post(client, "/predict", {"customer_ids": ["x"]}, "crm").json()["batch_id"]


def test_http_high_risk_order_pagination_and_filters(client, world) -> None:
    full = post(client, "/high_risk", {"limit": 60, "churn_risk": None}, "marketing").json()
    var = [c["value_at_risk"] for c in full["customers"]]
    assert var == sorted(var, reverse=True) and len(var) == 60
    pages = []
    for offset in (0, 25, 50):
        page = post(client, "/high_risk", {"limit": 25, "offset": offset,
                                            "churn_risk": None}, "marketing").json()
        assert page["offset"] == offset and page["total"] == full["total"]
        pages += page["customers"]
    assert [c["customer_id"] for c in pages[:60]] == [c["customer_id"] for c in
                                                      full["customers"]]
    beyond = post(client, "/high_risk", {"offset": full["total"] + 5,
                                         "churn_risk": None}, "marketing").json()
    assert beyond["customers"] == [] and beyond["total"] == full["total"]
    lost = post(client, "/high_risk", {"segments": ["Lost"], "min_churn_probability": 0.2,
                                       "limit": 10_000, "churn_risk": None}, "marketing").json()
    assert all(c["segment"] == "Lost" and c["churn_probability"] >= 0.2
               for c in lost["customers"])
    assert lost["total"] == len(lost["customers"]) < full["total"]
    every = post(client, "/high_risk", {"segments": [], "limit": 1,
                                        "churn_risk": None}, "marketing").json()
    assert every["total"] == full["total"]  # an empty list filters nothing, like null


def test_http_high_risk_lists_the_high_risk_customers_unless_asked(client, stored) -> None:
    """/high_risk is what its name says: by default only the customers whose ``churn_risk``
    is ``high`` (before, every customer, the low-risk ones with the largest value first: on
    the demo data its first rows were Champions with a churn probability of 0.08), ranked by
    value at risk as the customer store holds them; ``churn_risk`` names other bands, and
    null or an empty list ranks every customer, as before."""
    scores = stored[0].reset_index(drop=True)

    def ranked(frame) -> list[str]:
        return frame.sort_values(["value_at_risk", "customer_id"], ascending=[False, True]
                                 )["customer_id"].tolist()

    high = ranked(scores[scores["churn_risk"] == "high"])
    assert 0 < len(high) < len(scores)
    default = post(client, "/high_risk", {"limit": 10_000}, "marketing").json()
    assert default["total"] == len(high)
    assert [c["customer_id"] for c in default["customers"]] == high
    assert {c["churn_risk"] for c in default["customers"]} == {"high"}
    assert post(client, "/high_risk", {"churn_risk": ["high"], "limit": 10_000},
                "marketing").json() == default
    pages = [post(client, "/high_risk", {"limit": 7, "offset": o}, "marketing").json()
             for o in range(0, len(high), 7)]
    assert [c["customer_id"] for page in pages for c in page["customers"]] == high
    csv_rows = list(csv.DictReader(io.StringIO(post(
        client, "/high_risk", {"limit": 10_000, "format": "csv"}, "marketing").text)))
    assert [r["customer_id"] for r in csv_rows] == high
    wider = post(client, "/high_risk", {"churn_risk": ["medium", "high"], "limit": 10_000},
                 "marketing").json()
    assert [c["customer_id"] for c in wider["customers"]] == ranked(
        scores[scores["churn_risk"].isin(["medium", "high"])])
    for every in (None, []):
        body = post(client, "/high_risk", {"churn_risk": every, "limit": 10_000},
                    "marketing").json()
        assert [c["customer_id"] for c in body["customers"]] == ranked(scores)
    assert_clean_error(post(client, "/high_risk", {"churn_risk": ["High"]}, "marketing"),
                       422, "churn_risk[0]", "'high'")
    assert_clean_error(post(client, "/high_risk", {"churn_risk": "high"}, "marketing"),
                       422, "churn_risk")
    # the OpenAPI document says so
    spec = client.get("/openapi.json").json()
    ref = spec["paths"]["/high_risk"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    field = schema["properties"]["churn_risk"]
    assert field["default"] == ["high"]
    assert "high-risk customers only" in field["description"]
    assert "every customer" in field["description"]
    assert '`"churn_risk": null` to rank every customer' in spec["paths"]["/high_risk"][
        "post"]["description"]


def test_http_high_risk_pages_name_their_batch(client, world) -> None:
    """The pages after the first send its ``batch_id``: a page of that batch, or, once
    `lifecast score` has rescored the store, a 409 that says to start again (nothing is
    exported or audited) instead of a page of another batch, which skips and repeats
    customers."""
    from serving.audit import AuditLog

    first = post(client, "/high_risk", {"limit": 5, "churn_risk": None}, "marketing").json()
    body = {"limit": 5, "offset": 5, "churn_risk": None, "batch_id": first["batch_id"]}
    second = post(client, "/high_risk", body, "marketing")
    assert second.status_code == 200, second.text
    assert second.json()["batch_id"] == first["batch_id"]
    unpinned = post(client, "/high_risk", {**body, "batch_id": None}, "marketing")
    assert unpinned.json() == second.json()
    log = AuditLog(world.audit_log)
    before = len(log.read())
    for fmt in ("json", "csv"):
        gone = post(client, "/high_risk", {**body, "batch_id": "20110101T000000000000Z-abcdef",
                                           "format": fmt}, "marketing")
        # never a batch of this store: not said to be "rescored since"
        body_409 = assert_clean_error(
            gone, 409, "batch_id '20110101T000000000000Z-abcdef' is not the customer store's "
            "current batch", "an unknown id", first["batch_id"], "offset 0")
        assert "no longer" not in body_409["error"]
    assert len(log.read()) == before
    assert_clean_error(post(client, "/high_risk", {**body, "batch_id": ""}, "marketing"), 422,
                       "batch_id")


def test_high_risk_tells_a_rescored_batch_from_an_unknown_id(svc, world, tmp_path) -> None:
    """/high_risk's 409 says "rescored since" only of a batch the store had (and keeps); of
    an id that never was one ("bogus") it says it is unknown (it said "it was rescored
    since" of any id)."""
    from serving.app import Runtime, ServiceError
    from serving.audit import AuditLog
    from training.scoring import score
    from training.store import CustomerStore

    url = f"sqlite:///{tmp_path / 'store.db'}"
    old = score(world.transactions, store_url=url, models=world.models).batch_id
    new = score(world.transactions, store_url=url, models=world.models).batch_id
    rt = Runtime(svc.runtime.models, CustomerStore(url), AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=0)
    try:
        messages = {}
        for batch_id in (old, "bogus"):
            with pytest.raises(ServiceError) as info:
                rt.high_risk(HighRiskRequest(batch_id=batch_id))
            assert info.value.status == 409
            messages[batch_id] = info.value.message
        assert rt.high_risk(HighRiskRequest(batch_id=new, limit=1)).batch_id == new
    finally:
        rt.close()
    assert messages[old].startswith(f"batch_id {old!r} is no longer the customer store's "
                                    f"current batch: it was rescored since (now batch {new!r}")
    assert "offset 0" in messages[old]
    assert messages["bogus"].startswith(f"batch_id 'bogus' is not the customer store's "
                                        f"current batch (now batch {new!r}")
    assert "an unknown id" in messages["bogus"] and "offset 0" in messages["bogus"]
    assert "rescored since (" not in messages["bogus"]


def test_http_high_risk_csv(client) -> None:
    resp = post(client, "/high_risk", {"limit": 7, "format": "csv"}, "marketing")
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/csv")
    assert "attachment" in resp.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert len(rows) == 7
    assert list(rows[0])[:3] == ["customer_id", "as_of", "churn_probability"]
    var = [float(r["value_at_risk"]) for r in rows]
    assert var == sorted(var, reverse=True)
    assert all(r["reasons"] and r["churn_model_version"] for r in rows)
    # what the JSON answer says beside its rows, as headers: a CSV client can page (it had
    # no batch_id to send with the next page) and tell a partial page from the whole list
    listed = post(client, "/high_risk", {"limit": 7}, "marketing").json()
    assert resp.headers["x-lifecast-batch-id"] == listed["batch_id"]
    assert int(resp.headers["x-total-count"]) == listed["total"] > 7
    page2 = post(client, "/high_risk", {"limit": 7, "offset": 7, "format": "csv",
                                        "batch_id": resp.headers["x-lifecast-batch-id"]},
                 "marketing")
    assert page2.status_code == 200
    assert [r["customer_id"] for r in csv.DictReader(io.StringIO(page2.text))] == [
        c["customer_id"] for c in post(client, "/high_risk", {"limit": 7, "offset": 7},
                                       "marketing").json()["customers"]]


def test_http_segments_json_and_csv(client, world) -> None:
    from features.segments import SEGMENTS

    body = post(client, "/segments", {}, "marketing").json()
    names = [s["segment"] for s in body["segments"]]
    assert names[: len(SEGMENTS)] == list(SEGMENTS)
    assert sum(s["customers"] for s in body["segments"]) == world.models.segmenter.n_customers_
    assert body["as_of"].startswith(str(world.as_of.date()))
    no_body = post(client, "/segments", None, "marketing")  # an empty body is {}
    assert no_body.status_code == 200
    resp = post(client, "/segments", {"format": "csv"}, "marketing")
    rows = list(csv.DictReader(io.StringIO(resp.text)))
    assert [r["segment"] for r in rows][: len(SEGMENTS)] == list(SEGMENTS)
    assert {"customers", "share", "mean_churn_probability", "total_value_at_risk"} <= set(rows[0])


def test_audit_log_records_every_export(client, world) -> None:
    from serving.audit import AuditLog

    log = AuditLog(world.audit_log)
    before = len(log.read())
    post(client, "/high_risk", {"limit": 3, "segments": ["Lost"], "format": "csv"}, "marketing")
    post(client, "/segments", {}, "admin")
    post(client, "/predict", {"customer_ids": ["x"]}, "crm")  # not a list export
    post(client, "/high_risk", {"limit": -1}, "marketing")  # refused: nothing exported
    new = log.read()[before:]
    assert [(r["endpoint"], r["key_name"], r["format"]) for r in new] == [
        ("/high_risk", "marketing", "csv"), ("/segments", "admin", "json")]
    hr = new[0]
    assert hr["filters"] == {"churn_risk": ["high"], "min_churn_probability": 0.0,
                             "min_value": 0.0, "segments": ["Lost"], "limit": 3, "offset": 0,
                             "batch_id": None}
    assert hr["row_count"] <= 3 and hr["key_id"] and hr["event"] == "list_export"
    assert new[1]["row_count"] >= 11 and new[1]["client"] == "testclient"


# -- HTTP: auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/predict", "/score", "/high_risk", "/segments", "/unknown"])
def test_missing_or_wrong_key_is_401(client, path: str) -> None:
    body = {"customer_ids": ["1"]}
    missing = post(client, path, body, key=None)
    assert_clean_error(missing, 401, "missing bearer token")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    wrong = post(client, path, body, key="lc_0123abcd_" + "x" * 43)
    assert_clean_error(wrong, 401, "invalid or revoked")
    revoked = post(client, path, body, key="revoked")
    assert_clean_error(revoked, 401, "invalid or revoked")
    basic = post(client, path, body, key=None, headers={"Authorization": "Basic abc"})
    assert_clean_error(basic, 401, "Bearer")


@pytest.mark.parametrize(("path", "key", "scope"), [
    ("/predict", "marketing", "predict"), ("/score", "marketing", "predict"),
    ("/high_risk", "crm", "lists"), ("/segments", "crm", "lists"),
])
def test_wrong_scope_is_403(client, path: str, key: str, scope: str) -> None:
    resp = post(client, path, {}, key)
    assert_clean_error(resp, 403, scope)
    assert "insufficient_scope" in resp.headers["www-authenticate"]


@pytest.mark.parametrize("path", OPEN)
def test_open_paths_need_no_key(client, path: str) -> None:
    resp = client.get(path)
    assert resp.status_code == 200, (path, resp.status_code, resp.text[:200])


def test_openapi_documents_the_endpoints(client) -> None:
    spec = client.get("/docs.json").json()
    for path in ("/predict", "/score", "/high_risk", "/segments"):
        assert "post" in spec["paths"][path]
    schema = client.get("/schema.json").json()
    assert {r["route"] for r in schema["routes"]} == {"/predict", "/score", "/high_risk",
                                                      "/segments"}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")


def test_docs_and_the_openapi_document_need_no_key(client) -> None:
    """A browser opening /docs gets the Swagger UI (not 401); /openapi.json, the name
    OpenAPI tools look for, is the document the Swagger UI loads (/docs.json)."""
    docs = client.get("/docs", follow_redirects=False)
    assert docs.status_code == 307 and docs.headers["location"] == "./"
    page = client.get("/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    assert page.headers["content-type"].startswith("text/html")
    spec = client.get("/openapi.json")
    assert spec.status_code == 200 and spec.headers["content-type"] == "application/json"
    assert spec.json() == client.get("/docs.json").json()
    head = client.head("/openapi.json")
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) == len(spec.content)
    assert client.post("/openapi.json", json={}).status_code in (404, 405)  # read only


def test_openapi_declares_the_api_key_and_the_errors_the_endpoints_give(client) -> None:
    """Swagger UI shows "Authorize" (a security scheme that every API operation requires),
    and each operation lists the answers the service really gives, not BentoML's defaults."""
    from serving.keys import ENDPOINT_SCOPES
    from serving.openapi import ENDPOINT_ERROR_STATUSES, ERROR_STATUSES, SECURITY_SCHEME

    spec = client.get("/openapi.json").json()
    scheme = spec["components"]["securitySchemes"][SECURITY_SCHEME]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")  # Authorization: Bearer
    documented = {str(s) for s in ERROR_STATUSES}
    # what the tests of this module see the endpoints answer, besides 200
    assert {"400", "401", "403", "413", "415", "422", "503"} <= documented
    assert "404" not in documented  # unknown ids are listed in `errors`, never a 404
    for path, scope in ENDPOINT_SCOPES.items():
        op = spec["paths"][path]["post"]
        assert op["security"] == [{SECURITY_SCHEME: []}], path
        assert f"`{scope}`" in op["description"]
        own = {str(s) for s in ENDPOINT_ERROR_STATUSES.get(path, {})}
        assert set(op["responses"]) == {"200", *documented, *own}, path
        for status in documented | own:
            answer = op["responses"][status]
            assert answer["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/ErrorResponse"}
            assert answer["description"] not in ("Bad Request", "Not Found",
                                                 "Internal Server Error"), (path, status)
        assert "headers" in op["responses"]["401"] and "headers" in op["responses"]["403"]
    assert "batch_id" in spec["paths"]["/high_risk"]["post"]["responses"]["409"]["description"]
    for path in ("/high_risk", "/segments"):
        assert "text/csv" in spec["paths"][path]["post"]["responses"]["200"]["content"]
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert error["required"] == ["error"] and "detail" in error["properties"]
    for boilerplate in ("InvalidArgument", "NotFound", "InternalServerError",
                        "TaskStatusResponse"):
        assert boilerplate not in spec["components"]["schemas"]
    for path in ("/livez", "/healthz", "/readyz", "/metrics"):
        assert spec["paths"][path]["get"]["security"] == [], path
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
    assert "BentoML" not in spec["info"]["description"] and "contact" not in spec["info"]
    assert "Authorize" in spec["info"]["description"]
    # every error status the service answers, those of no operation (404, 405) included
    listed = spec["info"]["description"].split("**Error answers**")[-1]
    for status in (400, 401, 403, 404, 405, 409, 413, 415, 422, 500, 503, 504):
        assert f"\n* {status}: " in listed, status


def _rfc3339(value) -> bool:
    """JSON schema's ``date-time``: RFC 3339, whose offset is required."""
    import re

    return not isinstance(value, str) or re.fullmatch(
        r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", value) is not None


def test_answers_match_the_openapi_document(client, stored) -> None:
    """Every endpoint's 200 and error answers validate against the schema the document
    publishes for them, formats included. It said ``as_of`` was a ``date-time`` (RFC 3339,
    with an offset) while the service sends ``2011-12-10T00:00:00``: a client generated from
    the document, or schemathesis' response check, refused every answer."""
    from jsonschema import Draft202012Validator, FormatChecker

    spec = client.get("/openapi.json").json()
    checker = FormatChecker()
    checker.checks("date-time")(_rfc3339)
    ids = stored[0].index[:2].tolist()
    calls = [("/predict", {"customer_ids": [*ids, "nobody"]}, 200),
             ("/score", EXAMPLE_SCORE_REQUEST, 200),
             ("/score", {"customers": [{"customer_id": "a", "transactions": [
                 {"timestamp": "2011-11-01T10:00:00.5+02:00", "amount": 3.0}]}]}, 200),
             ("/high_risk", {"limit": 3}, 200), ("/segments", {}, 200),
             ("/predict", {"customer_ids": []}, 422), ("/segments", {}, 403)]
    for path, body, status in calls:
        resp = post(client, path, body, "crm" if status == 403 else "admin")
        assert resp.status_code == status, (path, resp.text)
        answer = spec["paths"][path]["post"]["responses"][str(status)]
        schema = {**answer["content"]["application/json"]["schema"],
                  "components": spec["components"]}
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in
                  Draft202012Validator(schema, format_checker=checker).iter_errors(resp.json())]
        assert not errors, (path, errors[:5])
    # a body is required where an empty request is refused, optional where it is answered
    for path in ("/predict", "/score", "/high_risk", "/segments"):
        required = spec["paths"][path]["post"]["requestBody"].get("required", False)
        resp = client.post(path, headers={"Authorization": f"Bearer {_tok['admin']}"})
        assert resp.status_code == (422 if required else 200), (path, required, resp.text)
    assert spec["paths"]["/predict"]["post"]["requestBody"]["required"] is True


# -- HTTP: bad input -------------------------------------------------------------------------

_FUTURE = (datetime.now(UTC) + timedelta(days=2)).replace(tzinfo=None).isoformat()
_TX = {"timestamp": "2011-11-01T10:00:00", "amount": 10.0}
BAD_INPUTS = [
    # (path, raw body, status, words the message names)
    ("/predict", b'{"customer_ids": ["1"', 400, ("not valid JSON",)),
    ("/predict", b"", 422, ("customer_ids", "required")),
    ("/predict", b"[1, 2]", 422, ("request body", "object")),
    ("/predict", b'"x"', 422, ("request body",)),
    ("/predict", b'{"customer_ids": "12347"}', 422, ("customer_ids",)),
    # customer ids: a string or a JSON integer; nothing else, each refusal naming the id
    ("/predict", b'{"customer_ids": [12347.0]}', 422,
     ("customer_ids[0]", "float", "12347", '"12347"')),
    ("/predict", b'{"customer_ids": ["1", -0.0]}', 422, ("customer_ids[1]", "float")),
    ("/predict", b'{"customer_ids": [1.5]}', 422, ("customer_ids[0]", "float")),
    ("/predict", b'{"customer_ids": [true]}', 422, ("customer_ids[0]", "boolean")),
    ("/predict", b'{"customer_ids": [null]}', 422, ("customer_ids[0]", "null")),
    ("/predict", b'{"customer_ids": [{"id": 1}]}', 422, ("customer_ids[0]", "object")),
    ("/predict", b'{"customer_ids": [[1]]}', 422, ("customer_ids[0]", "array")),
    ("/predict", b'{"customer_ids": [1, 9007199254740993]}', 422,
     ("customer_ids[1]", "2^53 - 1", "as a string", '"9007199254740993"')),
    ("/predict", b'{"customer_ids": [-9007199254740992]}', 422,
     ("customer_ids[0]", "as a string")),
    ("/predict", b'{"customer_ids": []}', 422, ("customer_ids", "at least 1")),
    ("/predict", b'{"customer_ids": [""]}', 422, ("customer_ids[0]",)),
    ("/predict", json.dumps({"customer_ids": [str(i) for i in range(MAX_IDS + 1)]}).encode(),
     422, ("customer_ids", "at most 1000", "not 1001: split the ids into several requests")),
    ("/predict", json.dumps({"customer_ids": ["x" * 129]}).encode(), 422, ("customer_ids[0]",)),
    ("/predict", b'{"customer_ids": ["a\\u0000b"]}', 422, ("customer_ids[0]",)),
    ("/predict", b'{"customer_ids": ["1"], "extra": 1}', 422, ("extra", "not permitted")),
    ("/high_risk", b'{"limit": -1}', 422, ("limit",)),
    ("/high_risk", b'{"limit": 0}', 422, ("limit",)),
    ("/high_risk", b'{"limit": 10001}', 422, ("limit",)),
    ("/high_risk", b'{"limit": "10"}', 422, ("limit",)),
    ("/high_risk", b'{"limit": 1.5}', 422, ("limit",)),
    ("/high_risk", b'{"offset": -5}', 422, ("offset",)),
    ("/high_risk", b'{"offset": 1e30}', 422, ("offset",)),
    ("/high_risk", b'{"min_churn_probability": 1.5}', 422, ("min_churn_probability",)),
    ("/high_risk", b'{"min_churn_probability": NaN}', 422, ("min_churn_probability",)),
    ("/high_risk", b'{"min_value": -1}', 422, ("min_value",)),
    ("/high_risk", b'{"segments": ["VIP"]}', 422, ("segments[0]", "Champions")),
    ("/high_risk", b'{"segments": "Lost"}', 422, ("segments",)),
    ("/high_risk", b'{"format": "xml"}', 422, ("format",)),
    ("/segments", b'{"format": 1}', 422, ("format",)),
    ("/score", b'{"customers": []}', 422, ("customers", "at least 1")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": []}]}).encode(),
     422, ("customers[0].transactions",)),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": _FUTURE, "amount": 1.0}]}]}).encode(),
     422, ("customers[0].transactions[0].timestamp", "future")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [_TX]}],
                           "as_of": _FUTURE}).encode(), 422, ("as_of", "future")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [_TX]}],
                           "as_of": "2011-10-01"}).encode(), 422,
     ("customers[0].transactions[0].timestamp", "as_of")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": 1320141600, "amount": 1.0}]}]}).encode(),
     422, ("customers[0].transactions[0].timestamp", "ISO 8601")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": "yesterday", "amount": 1.0}]}]}).encode(),
     422, ("customers[0].transactions[0].timestamp",)),
    # text made only of digits is not Unix time (pydantic read "1317550000" as 2011-10-02
    # and "2011" as 1970-01-01 00:33:31)
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": "1317550000", "amount": 1.0}]}]}).encode(),
     422, ("customers[0].transactions[0].timestamp", "ISO 8601", "1317550000")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": "2011", "amount": 1.0}]}]}).encode(),
     422, ("customers[0].transactions[0].timestamp", "ISO 8601")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": "2011-11-01", "amount": "12"}]}]}).encode(),
     422, ("customers[0].transactions[0].amount",)),
    ("/score", b'{"customers": [{"customer_id": "a", "transactions": [{"timestamp": '
               b'"2011-11-01", "amount": 1e400}]}]}', 422,
     ("customers[0].transactions[0].amount", "finite")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": "2011-11-01", "amount": 1.0, "coupon": "x"}]}]}).encode(),
     422, ("customers[0].transactions[0].coupon",)),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [_TX]}] * 2}
                          ).encode(), 422, ("customers[1].customer_id", "more than once")),
    ("/score", json.dumps({"customers": [{"customer_id": c, "transactions": [_TX]}
                                         for c in (13047, "13047")]}).encode(),
     422, ("customers[1].customer_id", "'13047'", "more than once")),
    ("/score", json.dumps({"customers": [{"customer_id": 13047.0, "transactions": [_TX]}]}
                          ).encode(), 422, ("customers[0].customer_id", "float", "13047")),
    ("/score", json.dumps({"customers": [{"customer_id": False, "transactions": [_TX]}]}
                          ).encode(), 422, ("customers[0].customer_id", "boolean")),
    ("/score", json.dumps({"customers": [{"customer_id": str(i), "transactions": [_TX]}
                                         for i in range(101)]}).encode(),
     422, ("customers", "at most 100", "split the customers into several requests")),
    ("/score", json.dumps({"customers": [{"customer_id": "a", "transactions": [_TX] * 1001}]}
                          ).encode(), 422, ("customers[0].transactions", "at most 1000")),
]


@pytest.mark.parametrize(("path", "raw", "status", "words"), BAD_INPUTS,
                         ids=[f"{p}-{i}" for i, (p, *_) in enumerate(BAD_INPUTS)])
def test_bad_input_is_a_4xx_naming_the_field(client, path, raw, status, words) -> None:
    resp = post(client, path, key="admin", content=raw,
                headers={"Content-Type": "application/json"})
    body = assert_clean_error(resp, status, *words)
    if status == 422:
        assert body["detail"] and all("input" not in d for d in body["detail"])


@pytest.mark.parametrize(("body", "loc", "words"), [
    ({"customers": [{"customer_id": "a", "transactions": [_TX]}], "as_of": "2011-10-01"},
     ["customers", 0, "transactions", 0, "timestamp"], ("is not before as_of",)),
    ({"customers": [{"customer_id": "a", "transactions": [_TX]},
                    {"customer_id": "b", "transactions": [_TX, {**_TX, "timestamp":
                                                                "2011-12-01T00:00:00"}]}],
      "as_of": "2011-11-15"},
     ["customers", 1, "transactions", 1, "timestamp"], ("is not before as_of",)),
    ({"customers": [{"customer_id": 13047, "transactions": [_TX]},
                    {"customer_id": "13047", "transactions": [_TX]}]},
     ["customers", 1, "customer_id"], ("more than once",)),
], ids=["as_of", "as_of-second-customer", "duplicate"])
def test_score_consistency_errors_name_their_field_in_detail(client, body, loc, words) -> None:
    """The /score checks across fields (each customer once, transactions before as_of) gave
    `detail` entries with an empty `loc` although `error` named the field: a client reading
    `detail` could not tell which field was wrong."""
    out = assert_clean_error(post(client, "/score", body, "admin"), 422, *words)
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    assert out["error"].startswith(f"{where}: ")
    assert [d["loc"] for d in out["detail"]] == [loc]
    assert not out["detail"][0]["msg"].startswith(where)  # the field is in loc, not msg


@pytest.mark.parametrize("value", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_min_churn_probability_that_is_not_a_number_says_so(client, value) -> None:
    """NaN was refused as "should be less than or equal to 1", a bound it does not break."""
    out = assert_clean_error(post(client, "/high_risk", key="marketing",
                                  content=b'{"min_churn_probability": ' + value + b"}",
                                  headers={"Content-Type": "application/json"}),
                             422, "min_churn_probability", "finite number")
    assert "less than" not in out["error"] and "greater than" not in out["error"]


def test_oversized_body_is_413(client) -> None:
    big = json.dumps({"customer_ids": ["x" * 100] * 25_000})  # ~2.6 MB
    assert_clean_error(post(client, "/predict", content=big.encode(),
                            headers={"Content-Type": "application/json"}), 413, "too large",
                       f"{len(big):,} bytes, more than the server's limit of 2,097,152 bytes",
                       "send fewer ids per request (at most 1,000)")
    # the tester's case: 100 customers, which a request may hold, whose 300 transactions
    # each make the body too large; it said "send at most 100 customers per request"
    tx = {"timestamp": "2011-03-04T12:42:00", "amount": 1.65, "order_id": "545645",
          "product_id": "22652"}
    big_score = json.dumps({"customers": [{"customer_id": str(i), "transactions": [tx] * 300}
                                          for i in range(100)]})
    out = assert_clean_error(post(client, "/score", content=big_score.encode(),
                                  headers={"Content-Type": "application/json"}), 413,
                             f"request body too large: {len(big_score):,} bytes, more than "
                             f"the server's limit of 2,097,152 bytes (LIFECAST_MAX_BODY_BYTES, "
                             f"a limit on the body's size)", "send fewer transactions",
                             "about 20,971 transactions")
    assert "at most 100 customers per request" not in out["error"]

    def chunks():  # no Content-Length: counted while reading
        for _ in range(30):
            yield b" " * 100_000

    resp = post(client, "/predict", content=chunks(),
                headers={"Content-Type": "application/json"})
    assert_clean_error(resp, 413, "too large")


def test_other_media_types_are_415(client) -> None:
    for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
                  "application/vnd.bentoml+pickle", "text/plain"):
        resp = post(client, "/predict", content=b'{"customer_ids": ["1"]}',
                    headers={"Content-Type": ctype})
        assert_clean_error(resp, 415, "application/json")
    # a compressed body was read as JSON: '400 request body is not valid JSON: expected value
    # at line 1 column 1', though the JSON inside was valid
    import gzip

    for coding in ("gzip", "br", "GZIP, deflate"):
        resp = post(client, "/predict", content=gzip.compress(b'{"customer_ids": ["1"]}'),
                    headers={"Content-Type": "application/json", "Content-Encoding": coding})
        assert_clean_error(resp, 415, f"Content-Encoding {coding.lower()!r} is not supported",
                           "uncompressed")
    plain = post(client, "/predict", {"customer_ids": ["1"]},
                 headers={"Content-Encoding": "identity"})
    assert plain.status_code == 200, plain.text
    # no Content-Type at all is read as JSON (README says so)
    bare = client.build_request("POST", "/predict", content=b'{"customer_ids": ["1"]}',
                                headers={"Authorization": f"Bearer {_tok['admin']}"})
    assert "content-type" not in bare.headers
    assert client.send(bare).status_code == 200


def test_a_utf8_byte_order_mark_is_ignored(client, stored) -> None:
    """A JSON body that starts with a UTF-8 byte order mark (.NET's default UTF8 encoding,
    PowerShell with some encodings) gets the answer of the same body without it (RFC 8259
    section 8.1); it was 400 'request body is not valid JSON'."""
    scores, _ = stored
    bodies = {"/predict": {"customer_ids": scores.index[:2].tolist()},
              "/score": EXAMPLE_SCORE_REQUEST, "/high_risk": {"limit": 3}, "/segments": {}}
    for path, body in bodies.items():
        plain = post(client, path, body)
        assert plain.status_code == 200, plain.text
        for ctype in ("application/json", "application/json; charset=utf-8"):
            marked = post(client, path, content=b"\xef\xbb\xbf" + json.dumps(body).encode(),
                          headers={"Content-Type": ctype})
            assert marked.status_code == 200, (path, marked.text)
            assert marked.json() == plain.json()
    # a body that is nothing but the mark is the empty body: /segments takes it
    assert post(client, "/segments", content=b"\xef\xbb\xbf").status_code == 200


def test_a_body_not_in_utf8_is_415_saying_to_send_utf8(client, stored) -> None:
    """UTF-16 and UTF-32 bodies (with or without a byte order mark) and bytes that are not
    UTF-8 were answered 400 'not valid JSON: expected value at line 1 column 1' (or 'invalid
    unicode code point'): 415 now says what they are and to send UTF-8. A charset other than
    UTF-8 on a body that is UTF-8 all the same (ASCII) is answered as before: RFC 8259 gives
    application/json no charset parameter."""
    text = json.dumps({"customer_ids": ["M\u00fcller"]}, ensure_ascii=False)
    for encoding, name in (("utf-16", "UTF-16"), ("utf-16-le", "zero bytes"),
                           ("utf-16-be", "zero bytes"), ("utf-32", "UTF-32"),
                           ("utf-32-le", "zero bytes")):
        resp = post(client, "/predict", content=text.encode(encoding),
                    headers={"Content-Type": f"application/json; charset={encoding}"})
        assert_clean_error(resp, 415, name, "send the JSON body encoded as UTF-8")
    latin = text.encode("latin-1")
    resp = post(client, "/predict", content=latin,
                headers={"Content-Type": "application/json; charset=ISO-8859-1"})
    assert_clean_error(resp, 415, "not UTF-8", "charset=iso-8859-1", "byte 0xfc at offset",
                       "send the JSON body encoded as UTF-8")
    resp = post(client, "/predict", content=latin, headers={"Content-Type": "application/json"})
    body = assert_clean_error(resp, 415, "not UTF-8", "byte 0xfc")
    assert "charset" not in body["error"].split(";")[0]
    known = stored[0].index[0]
    for ctype in ('application/json; charset="iso-8859-1"', "application/json; charset=utf8",
                  "application/json;charset=windows-1252"):
        resp = post(client, "/predict", content=json.dumps({"customer_ids": [known]}).encode(),
                    headers={"Content-Type": ctype})
        assert resp.status_code == 200, (ctype, resp.text)
        assert resp.json()["predictions"][0]["customer_id"] == known
    utf8 = post(client, "/predict", content=text.encode("utf-8"),
                headers={"Content-Type": "application/json; charset=utf-8"})
    assert utf8.status_code == 200 and utf8.json()["errors"][0]["customer_id"] == "M\u00fcller"


def test_wrong_method_and_unknown_path(client) -> None:
    """A wrong method (405, with its Allow header) or an unknown path (404) answers the JSON
    error body like every other error, naming the method, the path and what to send; BentoML
    answered them as plain text ('Method Not Allowed', 'Not Found'), which broke a client that
    parses every non-2xx answer as JSON."""
    key = {"Authorization": f"Bearer {_tok['admin']}"}
    for method, path in (("GET", "/predict"), ("GET", "/high_risk"), ("PUT", "/score"),
                         ("DELETE", "/segments"), ("OPTIONS", "/predict")):
        resp = client.request(method, path, headers=key)
        assert_clean_error(resp, 405, f"{method} is not allowed on {path}", "send POST")
        assert resp.headers["allow"] == "POST"
    head = client.head("/predict", headers=key)
    assert head.status_code == 405 and head.content == b""
    assert head.headers["content-type"] == "application/json"
    for method, path in (("GET", "/nothing"), ("POST", "/Predict"), ("POST", "/predict/x"),
                         ("GET", "/static_content/nothing.css")):
        resp = client.request(method, path, headers=key)
        assert_clean_error(resp, 404, f"no such path: {method} {path}", "POST /predict",
                           "/docs")
    long = client.get("/x" * 500, headers=key)
    assert len(assert_clean_error(long, 404)["error"]) < 300
    # the open paths: a wrong method is JSON too, their own answers stay BentoML's
    for path in ("/livez", "/readyz", "/metrics"):
        resp = client.post(path)
        assert_clean_error(resp, 405, f"POST is not allowed on {path}", "GET")
    live = client.get("/livez")
    assert live.status_code == 200 and live.headers["content-type"].startswith("text/plain")
    # an unknown path still needs a key first: nothing is told about paths without one
    assert_clean_error(client.get("/nothing"), 401, "bearer")


# -- CORS (LIFECAST_CORS_ORIGINS) ------------------------------------------------------------

CRM_ORIGIN = "https://crm.example.com"


@pytest.fixture(scope="module")
def cors_client(service_env):
    """The service with two origins allowed (one written with a trailing slash)."""
    from starlette.testclient import TestClient

    from serving.service import Lifecast

    with contextlib.ExitStack() as stack:
        # set while the app starts (the worker reads it then), not for the other fixtures
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("LIFECAST_CORS_ORIGINS",
                      f"{CRM_ORIGIN}, https://CRM-staging.example.com/")
            # a second app in this process: without metrics (their collectors are
            # process-global)
            mp.setenv("BENTOML_CONFIG_OPTIONS", "services.lifecast.metrics.enabled=false")
            c = stack.enter_context(TestClient(Lifecast.to_asgi(),
                                               raise_server_exceptions=False))
        yield c


def preflight(client, path: str = "/predict", origin: str = CRM_ORIGIN, method: str = "POST",
              headers: str = "authorization,content-type"):
    return client.options(path, headers={"Origin": origin,
                                         "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": headers})


def test_cors_preflight_is_answered_without_a_key(cors_client) -> None:
    """A browser's preflight carries no key: it got 401 from the key check, and the CRM web
    app could not call the service at all."""
    for path in ("/predict", "/score", "/high_risk", "/segments"):
        for origin in (CRM_ORIGIN, "https://crm-staging.example.com"):
            resp = preflight(cors_client, path, origin)
            assert resp.status_code == 200, (path, resp.status_code, resp.text)
            assert resp.headers["access-control-allow-origin"] == origin
            assert "POST" in resp.headers["access-control-allow-methods"]
            allowed = resp.headers["access-control-allow-headers"].lower()
            assert "authorization" in allowed and "content-type" in allowed


def test_cors_requests_still_need_the_key_and_carry_the_headers(cors_client, stored) -> None:
    origin = {"Origin": CRM_ORIGIN}
    body = {"customer_ids": stored[0].index[:2].tolist()}
    no_key = post(cors_client, "/predict", body, key=None, headers=origin)
    assert_clean_error(no_key, 401, "bearer")
    # the app can read why (and the key scheme) from the error
    assert no_key.headers["access-control-allow-origin"] == CRM_ORIGIN
    assert "WWW-Authenticate" in no_key.headers["access-control-expose-headers"]
    assert_clean_error(post(cors_client, "/high_risk", {}, "crm", headers=origin), 403, "lists")
    answered = post(cors_client, "/predict", body, "crm", headers=origin)
    assert answered.status_code == 200, answered.text
    assert answered.headers["access-control-allow-origin"] == CRM_ORIGIN
    assert "origin" in answered.headers["vary"].lower()
    assert answered.json() == post(cors_client, "/predict", body, "crm").json()
    csv_export = post(cors_client, "/high_risk", {"limit": 2, "format": "csv"}, "marketing",
                      headers=origin)
    assert csv_export.headers["access-control-allow-origin"] == CRM_ORIGIN
    exposed = csv_export.headers["access-control-expose-headers"]
    assert all(h in exposed for h in ("Content-Disposition", "X-Lifecast-Batch-Id",
                                      "X-Total-Count"))
    # another origin: answered (the key decides), without the header the browser needs
    other = post(cors_client, "/predict", body, "crm", headers={"Origin": "https://evil.test"})
    assert other.status_code == 200 and "access-control-allow-origin" not in other.headers


def test_cors_preflights_refused_say_why(cors_client) -> None:
    cases = (({"origin": "https://evil.test"}, ("origin 'https://evil.test'",
                                                 "LIFECAST_CORS_ORIGINS")),
             ({"method": "DELETE"}, ("method 'DELETE'", "GET, HEAD, POST")),
             ({"headers": "authorization,x-tenant"}, ("x-tenant", "Authorization, Content-Type")))
    for kwargs, words in cases:
        resp = preflight(cors_client, **kwargs)
        assert_clean_error(resp, 400, "CORS preflight refused", *words)
        assert "access-control-allow-origin" not in resp.headers or kwargs.get(
            "origin") is None


def test_without_cors_origins_there_are_no_cors_headers(client) -> None:
    """LIFECAST_CORS_ORIGINS unset: as before, a preflight needs a key and no answer says
    anything about CORS."""
    assert_clean_error(preflight(client), 401, "bearer")
    resp = post(client, "/predict", {"customer_ids": ["1"]}, "crm",
                headers={"Origin": CRM_ORIGIN})
    assert resp.status_code == 200
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


def test_cors_origins_are_read_as_browsers_send_them(caplog) -> None:
    from serving.app import cors_origins

    with caplog.at_level("WARNING", logger="lifecast.serving"):
        got = cors_origins("https://CRM.example.com/, http://localhost:3000 *,"
                           "crm.example.com, https://x.example.com/app,,")
    assert got == ["https://crm.example.com", "http://localhost:3000", "*"]
    warned = caplog.text
    assert "'crm.example.com' is not an origin" in warned
    assert "'https://x.example.com/app' is not an origin" in warned
    assert "LIFECAST_CORS_ORIGINS" in warned
    assert cors_origins("") == [] and cors_origins(" , ") == []


# -- readiness without a store, schemas, the command line --------------------------------


def test_not_ready_until_the_store_has_scores(world, tmp_path, monkeypatch) -> None:
    """An empty store: /readyz 503 and endpoints 503 with a message; then a batch appears."""
    from starlette.testclient import TestClient

    from serving.service import Lifecast
    from training.scoring import score

    url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("LIFECAST_STORE_URL", url)
    for key in ("LIFECAST_KEYS_FILE", "LIFECAST_AUDIT_LOG", "LIFECAST_CHURN_MODEL",
                "LIFECAST_CLV_MODEL"):
        monkeypatch.setenv(key, world.env[key])
    monkeypatch.setenv("LIFECAST_STORE_CHECK_SECONDS", "0")
    # a second app in this process: without metrics (their collectors are process-global)
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "services.lifecast.metrics.enabled=false")
    with TestClient(Lifecast.to_asgi(), raise_server_exceptions=False) as c:
        assert c.get("/livez").status_code == 200
        assert c.get("/readyz").status_code == 503
        # /score too: the baseline features come from the batch's population
        for path, body in (("/predict", {"customer_ids": ["1"]}), ("/high_risk", {}),
                           ("/segments", {}), ("/score", EXAMPLE_SCORE_REQUEST)):
            assert_clean_error(post(c, path, body, "admin"), 503, "lifecast score")
        score(world.transactions, store_url=url, models=world.models)
        assert c.get("/readyz").status_code == 200
        assert post(c, "/predict", {"customer_ids": ["1"]}, "admin").status_code == 200


def test_examples_validate() -> None:
    PredictRequest.model_validate(EXAMPLE_PREDICT_REQUEST)
    ScoreRequest.model_validate(EXAMPLE_SCORE_REQUEST)
    HighRiskRequest.model_validate(EXAMPLE_HIGH_RISK_REQUEST)


def test_model_folder_layouts(tmp_path) -> None:
    from serving.app import model_folder

    native = tmp_path / "native"
    native.mkdir()
    (native / "model.json").write_text("{}")
    assert model_folder(native) == native
    mlf = tmp_path / "imported" / "mlflow_model"
    (mlf / "artifacts" / "churn").mkdir(parents=True)
    (mlf / "artifacts" / "churn" / "model.json").write_text("{}")
    (mlf / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts:\n      model:\n"
                                 "        path: artifacts/churn\n")
    assert model_folder(tmp_path / "imported") == mlf / "artifacts" / "churn"
    with pytest.raises(FileNotFoundError, match="lifecast serve"):
        model_folder(tmp_path / "nothing")


def test_serve_command_environment(tmp_path) -> None:
    from serving.serve_cli import serve_command

    argv, env = serve_command(port=3123, host="0.0.0.0", workers=2, store="sqlite:///x.db",
                              keys_file=tmp_path / "k.json", audit_log=tmp_path / "a.log",
                              access_log=False, tags={"churn": "lifecast-churn:v1-ab",
                                                      "clv": "lifecast-clv:v1-ab"},
                              base_env={"BENTOML_CONFIG_OPTIONS": "api_server.http.port=1"},
                              champions_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    # `bentoml serve` with a Prometheus folder of its own (`serving.bentoml_serve`)
    assert argv[1:] == ["-m", "serving.bentoml_serve", "serving.service:Lifecast", "--port",
                        "3123", "--host", "0.0.0.0"]
    assert env["LIFECAST_STORE_URL"] == "sqlite:///x.db"
    assert env["LIFECAST_KEYS_FILE"] == str(tmp_path / "k.json")
    assert env["LIFECAST_CHURN_MODEL"] == "lifecast-churn:v1-ab"
    assert env["BENTOML_CONFIG_OPTIONS"].split() == [
        "services.lifecast.workers=2", "services.lifecast.logging.access.enabled=false",
        "api_server.http.port=1"]
    assert env["BENTOML_DO_NOT_TRACK"] == "True"
    # when the champions were read: the service tells a store rescored since by newer ones
    assert env["LIFECAST_CHAMPIONS_AT"] == "2026-01-02T03:04:05+00:00"
    with pytest.raises(ValueError, match="--port"):
        serve_command(port=0)


def test_serve_on_a_port_in_use_is_a_one_line_error(tmp_path) -> None:
    """`lifecast serve --port N` while something listens on N: exit code 2 and one line
    naming the port and --port, before any model is imported (it was bentoml serve's
    traceback, exit code 1)."""
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    lifecast = Path(sys.executable).parent / "lifecast"
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
        result = subprocess.run([str(lifecast), "serve", "--port", str(port)], cwd=tmp_path,
                                env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: port {port} on 127.0.0.1 is already in use")
    assert "--port" in lines[0] and "Traceback" not in result.stderr + result.stdout
    assert list(tmp_path.iterdir()) == []  # nothing imported or created


def test_serve_refuses_a_cors_entry_that_is_not_an_origin(tmp_path) -> None:
    """`lifecast serve` with LIFECAST_CORS_ORIGINS holding something a browser never sends as
    its Origin (a host without its scheme, an address with a path): exit code 2 and one line
    naming the variable, the entries and what an origin looks like, before anything is
    imported (the workers only logged a warning and served without those origins)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    lifecast = Path(sys.executable).parent / "lifecast"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING")}
    env["LIFECAST_CORS_ORIGINS"] = "https://ok.example.com, crm.example.com"
    for extra in ([], ["--dry-run"]):
        result = subprocess.run([str(lifecast), "serve", *extra], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert lines == ["error: LIFECAST_CORS_ORIGINS: 'crm.example.com' is not an origin: "
                         "an origin is scheme://host[:port] without a path, e.g. "
                         "https://crm.example.com (or * for any); correct or remove it"], (
            result.stderr)
        assert list(tmp_path.iterdir()) == []  # nothing imported or created


def test_check_cors_origins_names_every_bad_entry() -> None:
    from serving.app import check_cors_origins, cors_origins

    value = "https://CRM.example.com/ http://localhost:3000,*"
    assert check_cors_origins(value) == cors_origins(value) == [
        "https://crm.example.com", "http://localhost:3000", "*"]
    assert check_cors_origins("") == []
    with pytest.raises(ValueError) as info:
        check_cors_origins("crm.example.com,https://x.example.com/app")
    assert str(info.value).startswith(
        "LIFECAST_CORS_ORIGINS: 'crm.example.com', 'https://x.example.com/app' are not "
        "origins: ")
    assert str(info.value).endswith("correct or remove them")


@pytest.mark.parametrize(("host", "words"), [
    ("localhost", ("--host", "IP address", "'localhost'", "127.0.0.1")),
    ("192.0.2.7", ("--host 192.0.2.7", "not an address of this machine")),  # TEST-NET-1
])
def test_serve_on_a_host_it_cannot_listen_on_is_a_clear_error(host, words) -> None:
    from serving.serve_cli import check_listen_address

    with pytest.raises(ValueError) as info:
        check_listen_address(host, 3000)
    for word in words:
        assert word in str(info.value)
    with pytest.raises(ValueError, match="--port must be between 1 and 65535"):
        check_listen_address("127.0.0.1", 0)


def test_serve_is_a_lifecast_command() -> None:
    from typer.testing import CliRunner

    from serving.cli import app

    result = CliRunner().invoke(app, ["serve", "--help"])
    assert result.exit_code == 0
    for flag in ("--port", "--host", "--workers", "--store", "--no-access-log"):
        assert flag in result.output


def test_timestamps_in_the_iso_basic_form_are_dates_not_unix_time() -> None:
    req = ScoreRequest.model_validate(
        {"customers": [{"customer_id": "a", "transactions": [
            {"timestamp": "20111002", "amount": 1.0},
            {"timestamp": "20111002T125000Z", "amount": 1.0}]}],
         "as_of": "20111210"})
    stamps = [t.timestamp for t in req.customers[0].transactions]
    assert stamps == [datetime(2011, 10, 2), datetime(2011, 10, 2, 12, 50)]
    assert req.as_of == datetime(2011, 12, 10)


def test_timestamps_with_offsets_are_utc() -> None:
    req = ScoreRequest.model_validate({"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": "2011-11-01T10:00:00+02:00", "amount": 1.0}]}]})
    assert req.customers[0].transactions[0].timestamp == datetime(2011, 11, 1, 8, 0)
    assert pd.Timestamp(req.customers[0].transactions[0].timestamp).tzinfo is None


def test_tracing_is_off_unless_asked_for() -> None:
    """BentoML's OpenTelemetry middleware skips every path unless LIFECAST_TRACING is set
    (spans without an exporter cost CPU per request and go nowhere)."""
    import os
    import subprocess
    import sys

    code = ("from serving.service import Lifecast; "
            "print(repr(Lifecast.config.get('tracing')))")
    env = {k: v for k, v in os.environ.items() if k != "LIFECAST_TRACING"}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
    assert default == "{'excluded_urls': ['.*']}"
    traced = subprocess.run([sys.executable, "-c", code], env={**env, "LIFECAST_TRACING": "1"},
                            capture_output=True, text=True, check=True
                            ).stdout.strip().splitlines()[-1]
    assert traced == "None"


def test_the_service_says_where_it_reads_and_warns_for_defaults(tmp_path, monkeypatch,
                                                                caplog) -> None:
    """A built Bento runs in its own folder, where the default store and keys file are
    not the user's: the service names the paths it uses and warns for each setting left
    to its default (without them a Bento's service stayed not ready, or answered 401, with
    nothing in its log to say why)."""
    import logging

    from serving.app import _log_settings
    from training.store import CustomerStore

    monkeypatch.chdir(tmp_path)
    for env in ("LIFECAST_STORE_URL", "LIFECAST_KEYS_FILE", "LIFECAST_AUDIT_LOG"):
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("LIFECAST_AUDIT_LOG", str(tmp_path / "audit.log"))
    store = CustomerStore(CustomerStore.default_url("."))
    with caplog.at_level(logging.INFO, logger="lifecast.serving"):
        _log_settings(store)
    text = caplog.text
    assert f"customer store {store.safe_url}" in text
    assert str(tmp_path / ".lifecast" / "keys.json") in text
    assert str(tmp_path / "audit.log") in text
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning == [f"LIFECAST_STORE_URL, LIFECAST_KEYS_FILE not set: the defaults in the "
                       f"working folder {tmp_path} are used; set them to absolute paths when "
                       f"serving a built Bento, which runs in its own folder"]
    caplog.clear()
    monkeypatch.setenv("LIFECAST_STORE_URL", CustomerStore.default_url("."))
    monkeypatch.setenv("LIFECAST_KEYS_FILE", str(tmp_path / "keys.json"))
    with caplog.at_level(logging.INFO, logger="lifecast.serving"):
        _log_settings(store)
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]
    store.close()


def test_a_405_names_the_allowed_methods_in_one_order():
    """Starlette's Allow header comes from a set, so one process sent "HEAD, GET" and the
    next "GET, HEAD": the message said "use HEAD or GET" or "use GET or HEAD" by chance
    (the integration test expecting "use GET" failed one run in three)."""
    from serving.app import _routing_message

    messages = {_routing_message(405, "POST", "/livez", allow)
                for allow in ("HEAD, GET", "GET, HEAD", "get,head", " HEAD ,GET ")}
    assert messages == {"POST is not allowed on /livez: use GET or HEAD"}
