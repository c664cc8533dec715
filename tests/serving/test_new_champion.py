"""/predict between a new champion and the next `lifecast score`.

`lifecast promote` (or `train` promoting) makes new champions, but the customer store still
holds the batch the previous champions scored until `lifecast score` runs again. /predict then
scores the batch's features with the service's (new) models; it used to return the batch's
RFM score, segment and lifecycle stage beside them, i.e. the previous champion's segmenter
next to the new model's churn probability, in one answer. Now every field comes from the
service's models and the batch's features, and the answer names the batch, its as-of and the
models that scored it (whose scores /high_risk and /segments still return).

The previous champion here is real: the same settings trained 60 days earlier on the demo
data, which learns other RFM edges; its batch is written by `training.scoring.score`.
"""

from __future__ import annotations

import pandas as pd
import pytest

from serving.app import Runtime, ServiceError
from training.store import CustomerStore

PREVIOUS = {"churn": "5", "clv": "6"}


@pytest.fixture(scope="module")
def service_models(service_env):
    """The service's models (the new champions, versions 7 and 8), as a worker loads them."""
    from serving.service import Lifecast

    instance = Lifecast()
    yield instance.runtime.models
    instance._close()


@pytest.fixture(scope="module")
def previous_batch(world, tmp_path_factory):
    """A store whose current batch the previous champions scored (at the same as-of)."""
    from training.pipeline import train
    from training.scoring import score

    earlier = world.as_of - pd.Timedelta(days=60)
    previous = train(world.transactions, as_of=earlier, config=world.models.config).models
    previous.versions = dict(PREVIOUS)
    url = f"sqlite:///{tmp_path_factory.mktemp('promoted') / 'lifecast_store.db'}"
    result = score(world.transactions, store_url=url, models=previous)
    assert result.as_of == world.as_of
    return url, previous


@pytest.fixture()
def runtime(service_models, previous_batch, tmp_path):
    from serving.audit import AuditLog

    rt = Runtime(service_models, CustomerStore(previous_batch[0]), AuditLog(
        tmp_path / "audit.log"), store_check_seconds=0)
    yield rt
    rt.close()


def test_predict_answers_with_the_new_champion_alone(runtime, world, previous_batch,
                                                     stored_batch) -> None:
    from training.pipeline import predict_customers

    url, previous = previous_batch
    scores, feats = stored_batch(url)
    ids = scores["customer_id"].astype(str).tolist()[:1000]
    out = runtime.predict(ids)
    # what the new champion says of these features, every field of it
    rows = feats.set_index("customer_id").loc[ids].reset_index()
    expected = predict_customers(world.models, rows, world.as_of).set_index("customer_id")
    stored = scores.set_index("customer_id")
    assert [p.customer_id for p in out.predictions] == ids
    moved = 0
    for p in out.predictions:
        e = expected.loc[p.customer_id]
        assert p.model_versions.model_dump() == {"churn": "7", "clv": "8"}
        assert p.as_of == world.as_of.to_pydatetime()
        assert p.churn_probability == pytest.approx(e["churn_probability"], abs=1e-9)
        assert p.predicted_clv == pytest.approx(e["predicted_clv"], rel=1e-9, abs=1e-9)
        assert (p.rfm_score, p.segment, p.lifecycle_stage) == (
            e["rfm_score"], e["segment"], e["lifecycle_stage"]), p.customer_id
        assert p.expected_orders == pytest.approx(e["expected_orders"], rel=1e-12)
        assert p.p_alive == pytest.approx(e["p_alive"], rel=1e-12)
        moved += p.segment != stored.loc[p.customer_id, "segment"]
    # the scenario is real: the previous champion's segments were not these
    assert moved > 0
    assert previous.segmenter.to_dict() != world.models.segmenter.to_dict()
    # and the answer says where its features come from and whose scores the lists hold
    assert out.batch_model_versions.model_dump() == PREVIOUS
    assert pd.Timestamp(out.as_of) == world.as_of


def test_the_fast_path_and_the_pandas_path_agree_on_it(runtime, previous_batch,
                                                       stored_batch) -> None:
    scores, _ = stored_batch(previous_batch[0])
    ids = [*scores["customer_id"].astype(str).tolist()[::13], "nobody"]
    assert runtime.refresh(force=True)
    fast, reference = runtime.predict(ids), runtime.predict_frames(ids)
    assert fast.model_dump_json() == reference.model_dump_json()
    unknown = runtime.predict(["nobody"])
    assert unknown.predictions == [] and unknown.batch_model_versions.churn == "5"


def test_a_batch_the_service_models_scored_keeps_its_stored_fields(world, service_models,
                                                                   tmp_path, stored_batch) -> None:
    """The usual case (the store scored by the service's models): the stored fields, which
    are what the service would compute, and the batch's versions are the service's."""
    from serving.audit import AuditLog

    rt = Runtime(service_models, CustomerStore(world.store_url), AuditLog(
        tmp_path / "audit.log"), store_check_seconds=0)
    try:
        scores, _ = stored_batch(world.store_url)
        ids = scores["customer_id"].astype(str).tolist()[:50]
        out = rt.predict(ids)
        assert out.batch_model_versions.model_dump() == {"churn": "7", "clv": "8"}
        stored = scores.set_index("customer_id")
        for p in out.predictions:
            s = stored.loc[p.customer_id]
            assert (p.segment, p.rfm_score, p.lifecycle_stage) == (
                s["segment"], s["rfm_score"], s["lifecycle_stage"])
    finally:
        rt.close()


def _rewrite(scores, feats, store: CustomerStore, as_of, versions, **kw) -> None:
    """Write a stored batch's scores and features again as a new batch of ``store``."""
    store.write_batch(scores.drop(columns=["churn_model_version", "clv_model_version",
                                           "batch_id"]), feats,
                      as_of=as_of, model_versions=versions, **kw)


def _predict_refused(service_models, store: CustomerStore, customer_id: str, folder
                     ) -> str:
    """The message of the 503 both /predict paths answer for ``customer_id``."""
    from serving.audit import AuditLog

    rt = Runtime(service_models, store, AuditLog(folder / "audit.log"), store_check_seconds=0)
    messages = set()
    try:
        for call in (rt.predict, rt.predict_frames):
            with pytest.raises(ServiceError) as info:
                call([customer_id])
            assert info.value.status == 503
            messages.add(info.value.message)
    finally:
        rt.close()
    assert len(messages) == 1
    return messages.pop()


def test_a_batch_built_with_other_feature_settings_is_refused(world, service_models,
                                                              previous_batch,
                                                              tmp_path, stored_batch) -> None:
    """Stored features built with another churn horizon (the baseline features' horizon)
    are not the inputs the service's models take: 503, naming the setting and what to do,
    rather than numbers computed from the wrong inputs."""
    scores, feats = stored_batch(previous_batch[0])
    config = world.models.config.model_dump(mode="json")
    config["features"]["churn_horizon_days"] = 60
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    _rewrite(scores, feats, store, world.as_of, PREVIOUS, metadata={"config": config})
    message = _predict_refused(service_models, store, scores["customer_id"].iloc[0], tmp_path)
    assert "churn_horizon_days 60 (the service's models: 90)" in message
    assert "lifecast score" in message and "churn v5, clv v6" in message


def test_a_batch_of_other_feature_definitions_is_refused(world, service_models,
                                                         previous_batch, tmp_path,
                                                         stored_batch) -> None:
    """A batch written before feature definitions were versioned (v1: distinct products
    counted products only returned) holds other inputs than today's models take, even when
    it names the service's own model versions: 503, naming the difference and the fix."""
    from serving.audit import AuditLog

    scores, feats = stored_batch(previous_batch[0])
    customer = scores["customer_id"].iloc[0]
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    _rewrite(scores, feats, store, world.as_of, service_models.versions,
             metadata={"config": world.models.config.model_dump(mode="json")},
             feature_definitions=None)
    message = _predict_refused(service_models, store, customer, tmp_path)
    assert "the batch was built with feature definitions v1" in message
    assert "this lifecast computes v2" in message and "distinct_products" in message
    assert "lifecast score" in message
    # the same batch written with today's definitions is served
    _rewrite(scores, feats, store, world.as_of, service_models.versions)
    rt = Runtime(service_models, store, AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=0)
    try:
        assert rt.predict([customer]).predictions
    finally:
        rt.close()


def test_models_of_other_feature_definitions_do_not_load(world, tmp_path) -> None:
    """The service (and `lifecast serve`, which loads the imported champions the same way
    before starting it: `serving.serve_cli.check_champions`) refuses models trained on
    other feature definitions: /score would feed them features they were not built from."""
    import copy

    from serving.app import load_models

    models = world.models
    folders = {}
    for kind, model in (("churn", models.churn), ("clv", models.value)):
        old = copy.copy(model)
        old.feature_definitions_ = 1 if kind == "clv" else model.feature_definitions_
        folders[kind] = old.save(tmp_path / kind)
        models.segmenter.save(folders[kind] / "segmenter.json")
    with pytest.raises(ValueError) as err:
        load_models(folders["churn"], folders["clv"])
    message = str(err.value)
    assert message.startswith(f"the value model ({folders['clv']}) was built with feature "
                              f"definitions v1; this lifecast computes v2")
    assert "Retrain with `lifecast train`" in message


def _other_horizon_config(world) -> dict:
    config = world.models.config.model_dump(mode="json")
    config["features"]["churn_horizon_days"] = 60
    return config


def test_a_store_rescored_by_newer_champions_says_to_restart_the_service(
        world, service_models, previous_batch, tmp_path, stored_batch, caplog) -> None:
    """The tester's case: the service runs its champions; a new champion with another churn
    horizon is trained and `lifecast score` rescores the store with it. /predict cannot use
    that batch's features, and `lifecast score` again would only write another batch of
    the new champion: the fix is restarting `lifecast serve`, which loads the champions.
    The 503, the log and /readyz (not ready, with the reason, so that a load balancer stops
    sending traffic) say so; once the store holds features the service's models take, it
    is ready again."""
    import logging

    from serving.audit import AuditLog

    scores, feats = stored_batch(previous_batch[0])
    customer = scores["customer_id"].iloc[0]
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    _rewrite(scores, feats, store, world.as_of, service_models.versions,
             metadata={"config": world.models.config.model_dump(mode="json")})
    rt = Runtime(service_models, store, AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=0)
    try:
        assert rt.is_ready() and rt.not_ready is None
        assert rt.predict([customer]).predictions
        newer = {"churn": "9", "clv": "10"}
        with caplog.at_level(logging.WARNING, logger="lifecast.serving"):
            _rewrite(scores, feats, store, world.as_of, newer,
                     metadata={"config": _other_horizon_config(world)})
            assert rt.is_ready() is False
        messages = set()
        for call in (rt.predict, rt.predict_frames):
            with pytest.raises(ServiceError) as info:
                call([customer])
            assert info.value.status == 503
            messages.add(info.value.message)
        (message,) = messages
        assert "scored by models churn v9, clv v10" in message
        assert "churn_horizon_days 60 (the service's models: 90)" in message
        assert "restart `lifecast serve`" in message
        assert "`bentoml build` again" in message  # a built Bento is rebuilt, not restarted
        assert "run `lifecast score`" not in message
        assert rt.not_ready == message
        log = caplog.text
        assert "restart `lifecast serve`" in log and "/readyz says not ready" in log
        assert "until `lifecast score`" not in log and "run `lifecast score`" not in log
        # rescored with features the service's models take: ready again
        _rewrite(scores, feats, store, world.as_of, newer,
                 metadata={"config": world.models.config.model_dump(mode="json")})
        assert rt.is_ready() and rt.not_ready is None
        assert rt.predict([customer]).predictions
    finally:
        rt.close()


def test_a_batch_older_than_the_service_says_to_rescore(world, service_models, previous_batch,
                                                        tmp_path, stored_batch) -> None:
    """The other way round: the service was (re)started with the champions after the batch
    was written by older ones of other settings: `lifecast score` fixes it, a restart not."""
    from serving.audit import AuditLog

    scores, feats = stored_batch(previous_batch[0])
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    _rewrite(scores, feats, store, world.as_of, PREVIOUS,
             metadata={"config": _other_horizon_config(world)})
    rt = Runtime(service_models, store, AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=0)
    try:
        assert rt.is_ready() is False
        assert "run `lifecast score` again" in rt.not_ready
        assert "restart" not in rt.not_ready
    finally:
        rt.close()


def test_the_time_lifecast_serve_read_the_champions_decides(world, service_models,
                                                            previous_batch, tmp_path,
                                                            stored_batch, monkeypatch) -> None:
    """`lifecast serve` tells the workers when it read the champion aliases
    (LIFECAST_CHAMPIONS_AT): a batch written after that was scored by newer champions, even
    if the worker loaded its models later (a worker restarted by BentoML)."""
    from serving.app import CHAMPIONS_AT_ENV, _champions_at_setting
    from serving.audit import AuditLog

    scores, feats = stored_batch(previous_batch[0])
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    before = pd.Timestamp.now(tz="UTC") - pd.Timedelta(minutes=5)
    _rewrite(scores, feats, store, world.as_of, {"churn": "9", "clv": "10"},
             metadata={"config": _other_horizon_config(world)})
    monkeypatch.setenv(CHAMPIONS_AT_ENV, before.isoformat())
    rt = Runtime(service_models, store, AuditLog(tmp_path / "audit.log"),
                 store_check_seconds=0, champions_at=_champions_at_setting())
    try:
        assert rt.is_ready() is False
        assert "restart `lifecast serve`" in rt.not_ready
    finally:
        rt.close()
    monkeypatch.setenv(CHAMPIONS_AT_ENV, "yesterday")
    assert _champions_at_setting() is None


def test_readyz_says_why_it_is_not_ready(world, previous_batch, tmp_path, stored_batch,
                                         monkeypatch) -> None:
    """Over HTTP: /readyz is 503 with ``{"error": "not ready: <why>"}`` while /predict
    refuses every request, and 200 again once the store is rescored."""
    from starlette.testclient import TestClient

    from serving.service import Lifecast

    scores, feats = stored_batch(previous_batch[0])
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    _rewrite(scores, feats, store, world.as_of, world.models.versions,
             metadata={"config": world.models.config.model_dump(mode="json")})
    for key in ("LIFECAST_KEYS_FILE", "LIFECAST_AUDIT_LOG", "LIFECAST_CHURN_MODEL",
                "LIFECAST_CLV_MODEL"):
        monkeypatch.setenv(key, world.env[key])
    monkeypatch.setenv("LIFECAST_STORE_URL", store.url)
    monkeypatch.setenv("LIFECAST_STORE_CHECK_SECONDS", "0")
    monkeypatch.delenv("LIFECAST_CHAMPIONS_AT", raising=False)
    # another app in this process: without metrics (their collectors are process-global)
    monkeypatch.setenv("BENTOML_CONFIG_OPTIONS", "services.lifecast.metrics.enabled=false")
    auth = {"Authorization": f"Bearer {world.tokens['crm']}"}
    customer = str(scores["customer_id"].iloc[0])
    with TestClient(Lifecast.to_asgi(), raise_server_exceptions=False) as c:
        assert c.get("/readyz").status_code == 200
        _rewrite(scores, feats, store, world.as_of, {"churn": "9", "clv": "10"},
                 metadata={"config": _other_horizon_config(world)})
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert ready.headers["content-type"] == "application/json"
        why = ready.json()["error"]
        assert why.startswith("not ready: the customer store's batch ")
        assert "restart `lifecast serve`" in why
        predicted = c.post("/predict", json={"customer_ids": [customer]}, headers=auth)
        assert predicted.status_code == 503
        assert why == "not ready: " + predicted.json()["error"]
        assert c.head("/readyz").status_code == 503
        _rewrite(scores, feats, store, world.as_of, world.models.versions,
                 metadata={"config": world.models.config.model_dump(mode="json")})
        assert c.get("/readyz").status_code == 200
        assert c.post("/predict", json={"customer_ids": [customer]},
                      headers=auth).status_code == 200
