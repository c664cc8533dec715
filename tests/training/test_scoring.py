"""`training.scoring`: the text summary of a batch, checked exactly on a hand-made batch;
what `score` refuses."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from training.scoring import scores_summary


def test_scores_summary_by_segment_and_top_value_at_risk() -> None:
    scores = pd.DataFrame({
        "customer_id": ["a", "b", "c", "d"],
        "segment": ["At Risk", "Champions", "At Risk", "Lost"],
        "lifecycle_stage": ["cooling", "active", "lapsed", "churned"],
        "churn_probability": [0.5, 0.1, 0.7, 0.9],
        "predicted_clv": [100.0, 1000.0, 20.0, 0.0],
        "value_at_risk": [50.0, 100.0, 14.0, 0.0],
    })
    text = scores_summary(scores, n_top=2)
    lines = text.splitlines()
    assert lines[0] == "Segments:"
    # largest value at risk first: Champions 100, At Risk 64 (2 customers, mean 0.6), Lost 0
    seg = [line.split() for line in lines[3:6]]
    assert seg == [["Champions", "1", "0.10", "100.00"], ["At", "Risk", "2", "0.60", "64.00"],
                   ["Lost", "1", "0.90", "0.00"]]
    assert lines[7] == "2 customers with the most value at risk:"
    assert [line.split()[0] for line in lines[9:]] == ["b", "a"]
    assert "1,000.00" in lines[9]


def test_score_refuses_models_of_other_feature_definitions(demo_train_result,
                                                           demo_transactions, tmp_path) -> None:
    """Models trained by a lifecast whose feature definitions differ are not scored on
    today's features (their inputs would not mean what they learned), and no batch is
    written: the error names the difference and says to retrain."""
    import copy

    from training.scoring import score
    from training.store import CustomerStore

    models = copy.copy(demo_train_result.models)
    models.value = copy.copy(models.value)
    models.value.feature_definitions_ = 1
    url = CustomerStore.default_url(tmp_path)
    with pytest.raises(ValueError) as err:
        score(demo_transactions, store_url=url, models=models)
    message = str(err.value)
    assert message.startswith("the value model was built with feature definitions v1; "
                              "this lifecast computes v2")
    assert "Retrain with `lifecast train`" in message
    assert not list(tmp_path.iterdir())  # nothing written


def test_score_refuses_data_mapped_without_the_columns_the_models_were_trained_on(
        demo_train_result, tmp_path) -> None:
    """The demo models were trained with order_id and product_id mapped. The same log
    mapped without them gives every customer other features (customer-days as orders, no
    distinct products): scoring stops before any work, names the columns and the flags, and
    writes nothing. The models record the columns and keep them through save and load."""
    import copy

    from features import DEMO_MAPPING, demo_data_path
    from training.models import ChurnModel
    from training.scoring import score
    from training.store import CustomerStore

    models = demo_train_result.models
    assert models.churn.source_columns_ == models.value.source_columns_ == [
        "order_id", "product_id"]
    loaded = ChurnModel.load(models.churn.save(tmp_path / "churn"))
    assert loaded.source_columns_ == ["order_id", "product_id"]

    url = CustomerStore.default_url(tmp_path / "store")
    bare = DEMO_MAPPING.model_copy(update={"order_id": None, "product_id": None})
    with pytest.raises(ValueError) as err:
        score(demo_data_path(), bare, store_url=url, models=models)
    message = str(err.value)
    assert message.startswith("the churn model was trained on data with order_id, product_id "
                              "mapped; order_id, product_id are not mapped for ")
    assert ("ColumnMapping(order_id=...) (YAML key order_id:), ColumnMapping(product_id=...) "
            "(YAML key product_id:)") in message
    assert not (tmp_path / "store").exists()

    # and the other way round: a column the models were not trained with
    fewer = copy.copy(models)
    fewer.churn, fewer.value = copy.copy(models.churn), copy.copy(models.value)
    fewer.churn.source_columns_ = fewer.value.source_columns_ = ["order_id"]
    with pytest.raises(ValueError, match="product_id is mapped for .* but was not in "
                                         "training"):
        score(demo_data_path(), DEMO_MAPPING, store_url=url, models=fewer)
    # a model saved before the columns were recorded is not checked
    fewer.churn.source_columns_ = fewer.value.source_columns_ = None
    assert len(score(demo_data_path(), bare, store_url=url, models=fewer).scores) > 0


def test_score_writes_where_the_service_reads(demo_train_result, tmp_path, monkeypatch) -> None:
    """Without --store, `score` writes to $LIFECAST_STORE_URL, as `lifecast serve` and the
    service read it; an in-memory store, whose scores vanish with the process, is refused."""
    from features import DEMO_MAPPING, demo_data_path
    from training.scoring import score
    from training.store import CustomerStore

    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path}/shared/store.db"
    monkeypatch.setenv("LIFECAST_STORE_URL", url)
    assert CustomerStore.configured_url() == url
    result = score(demo_data_path(), DEMO_MAPPING, models=demo_train_result.models)
    assert result.store_url == url and not (tmp_path / "lifecast_store.db").exists()
    store = CustomerStore(url)
    assert store.get_customers(list(result.scores["customer_id"][:3])) is not None
    store.close()
    monkeypatch.delenv("LIFECAST_STORE_URL")
    assert CustomerStore.configured_url() == CustomerStore.default_url(tmp_path)
    for memory in ("sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ValueError, match="is an in-memory database: the scores would be "
                                             "lost when this process ends") as err:
            score(demo_data_path(), DEMO_MAPPING, store_url=memory,
                  models=demo_train_result.models)
        # the parameter the caller passed, not `lifecast score`'s flag
        assert str(err.value).endswith(
            f"Give a file, e.g. store_url={CustomerStore.default_url()}")


def test_the_store_is_named_as_its_path_reads(demo_train_result, tmp_path) -> None:
    """`lifecast score` / `demo` showed a store in ``wörk dir`` as
    ``sqlite:///.../w%C3%B6rk dir/lifecast_store.db`` (non-ASCII escaped, spaces not), while
    the MLflow line showed the plain path. The summary and the store's messages now name it
    as the path reads, the way `CustomerStore.default_url` writes it."""
    from features import DEMO_MAPPING, demo_data_path
    from training.scoring import score
    from training.store import CustomerStore, EmptyStoreError

    url = CustomerStore.default_url(tmp_path / "wörk dir")
    assert "wörk dir/lifecast_store.db" in url
    with pytest.raises(EmptyStoreError, match=re.escape(f"(customer store: {url})")):
        CustomerStore(url).get_customers(["a"])
    result = score(demo_data_path(), DEMO_MAPPING, store_url=url,
                   models=demo_train_result.models)
    assert result.store_url == url
    assert CustomerStore(url).safe_url == url


def test_scoring_before_the_models_as_of_warns(demo_train_result, tmp_path) -> None:
    """Models trained as of D have learned from what happened before D: scores as of an
    earlier day are in-sample, and the warning says so and what to run instead."""
    from features import DEMO_MAPPING, demo_data_path
    from training.scoring import score
    from training.store import CustomerStore

    models = demo_train_result.models
    url = CustomerStore.default_url(tmp_path)
    with pytest.warns(UserWarning, match="scoring as of 2011-09-01 with models trained as of "
                                         f"{pd.Timestamp(models.as_of).date()}: they learned "
                                         "from what happened after 2011-09-01") as caught:
        score(demo_data_path(), DEMO_MAPPING, "2011-09-01", store_url=url, models=models)
    assert any(w.filename == __file__ for w in caught)
    # what a Python caller runs instead, not the command line's `lifecast backtest --cutoff`
    assert any("training.pipeline.backtest(..., cutoff='2011-09-01') shows what the models"
               in str(w.message) for w in caught)
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # as of the models' own day: none
        warnings.simplefilter("always")
        score(demo_data_path(), DEMO_MAPPING, models.as_of, store_url=url, models=models)
    assert not [w for w in caught if "scoring as of" in str(w.message)]


def test_scoring_a_log_that_did_not_grow_or_is_older_warns(demo_train_result, tmp_path
                                                           ) -> None:
    """A nightly `lifecast score` on an export that was not updated scored the same day
    again without a word (the stale-data warning needs 30 days), and one on an older file
    replaced the current scores with older ones silently."""
    import warnings

    from features import DEMO_MAPPING, demo_data_path
    from training.scoring import score

    models = demo_train_result.models
    url = f"sqlite:///{tmp_path}/store.db"

    def warnings_of(as_of=None) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            score(demo_data_path(), DEMO_MAPPING, as_of, store_url=url, models=models)
        return [str(w.message) for w in caught]

    assert not [m for m in warnings_of() if "current batch" in m]  # an empty store
    again = [m for m in warnings_of() if "current batch" in m]
    assert len(again) == 1 and "is already as of 2011-12-10, from the same models: the log " \
        "has no event after those it scored" in again[0] and "Was the export updated?" in again[0]
    # a day chosen on purpose is not a repeat
    assert not [m for m in warnings_of("2011-12-10") if "current batch" in m]
    # nor is another log ending the same day, of other customers (it was told it repeated
    # the first)
    import pandas as pd

    log = pd.read_parquet(demo_data_path())
    ids = log[DEMO_MAPPING.customer_id].dropna().unique()
    fewer = log[log[DEMO_MAPPING.customer_id].isin(ids[: len(ids) // 2])
                | (log[DEMO_MAPPING.timestamp] == log[DEMO_MAPPING.timestamp].max())]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        score(fewer, DEMO_MAPPING, store_url=url, models=models)
    assert not [w for w in caught if "current batch" in str(w.message)]
    older = [m for m in warnings_of("2011-11-01") if "current batch" in m]
    assert len(older) == 1 and older[0].startswith(
        "these scores are as of 2011-11-01, older than the store's current batch ")
    assert "(as of 2011-12-10, written " in older[0]


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc")
def test_a_store_that_cannot_be_written_fails_before_any_work(tmp_path, monkeypatch) -> None:
    """`lifecast score --store sqlite:////proc/x.db`: /proc takes no files, though its
    permission bits let root write (and the check read only those), so the run read the
    log, loaded the champions and scored everyone before failing at the write. Now the
    folder is tried first: the error names the store, and the log (here a file that does not
    exist) is never read."""
    from training.scoring import score
    from training.store import StoreUnavailableError

    monkeypatch.chdir(tmp_path)  # where a champion would be looked for (./mlflow.db)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(StoreUnavailableError,
                       match=r"^cannot write the customer store sqlite:////proc/x\.db: no file "
                             r"can be made in /proc \(.+\)\. Give a store in a folder this "
                             r"user can write to$"):
        score(tmp_path / "missing.parquet", store_url="sqlite:////proc/x.db")
    assert list(tmp_path.iterdir()) == []
