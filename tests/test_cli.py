"""The `lifecast` command as a user runs it (typer's CliRunner, real files)."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from serving.cli import app

runner = CliRunner()
MAP = ["--customer-col", "cust", "--timestamp-col", "when", "--amount", "qty * price"]


@pytest.fixture()
def sales_csv(tmp_path):
    df = pd.DataFrame({
        "cust": ["a", "a", "b", None],
        "when": ["2021-01-04 10:00", "2021-02-01 09:00", "2021-01-20 12:00", "2021-01-21"],
        "qty": [2, 1, 3, 1],
        "price": [10.0, 5.0, 2.5, 1.0],
    })
    path = tmp_path / "sales.csv"
    df.to_csv(path, index=False)
    return path


def test_features_build_writes_one_row_per_customer(sales_csv, tmp_path):
    out = tmp_path / "features.parquet"
    res = runner.invoke(app, ["features", "build", "-t", str(sales_csv), *MAP,
                              "--cutoff", "2021-03-01", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "dropped" in res.output and "missing customer_id" in res.output
    feats = pd.read_parquet(out)
    assert list(feats["customer_id"]) == ["a", "b"]
    assert feats.set_index("customer_id").loc["a", "monetary_total"] == 25.0


def test_mapping_file_and_flags_combine(sales_csv, tmp_path):
    mapping = tmp_path / "map.yaml"
    mapping.write_text("customer_id: cust\ntimestamp: when\namount: qty * price\n")
    out = tmp_path / "f.csv"
    res = runner.invoke(app, ["features", "build", "-t", str(sales_csv), "--mapping",
                              str(mapping), "--cutoff", "2021-03-01", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert len(pd.read_csv(out)) == 2


def test_missing_column_is_a_clear_error_with_exit_code_2(sales_csv, tmp_path):
    res = runner.invoke(app, ["features", "build", "-t", str(sales_csv),
                              "--customer-col", "customer", "--timestamp-col", "when",
                              "--amount", "qty * price", "--cutoff", "2021-03-01",
                              "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2
    assert "customer" in res.output and "--customer-col" in res.output
    assert not (tmp_path / "x.parquet").exists()


def test_cutoff_before_the_data_is_a_clear_error(sales_csv, tmp_path):
    res = runner.invoke(app, ["features", "build", "-t", str(sales_csv), *MAP,
                              "--cutoff", "2020-01-01", "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2
    assert "2020-01-01" in res.output
    assert not (tmp_path / "x.parquet").exists()


def test_validate_prints_the_report(sales_csv):
    res = runner.invoke(app, ["features", "validate", "-t", str(sales_csv), *MAP])
    assert res.exit_code == 0, res.output
    assert "rows read" in res.output and "customers" in res.output


def test_features_list_is_the_registry():
    from features.registry import feature_names

    res = runner.invoke(app, ["features", "list"])
    assert res.exit_code == 0
    assert all(f"`{name}`" in res.output for name in feature_names())


def test_unknown_run_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, ["promote", "--run", "0123456789abcdef"])
    assert res.exit_code == 2
    assert "no registered models come from run 0123456789abcdef" in res.output


@pytest.mark.slow
def test_train_score_models_end_to_end(tmp_path, monkeypatch):
    """train -> models -> score -> backtest with a real MLflow store and customer store in
    tmp: the store holds every customer, scored by the champions, as of the default date;
    the backtest writes the per-customer output for everyone active before its cutoff."""
    from features import DEMO_MAPPING, build_features, demo_data_path
    from training import tracking
    from training.store import CustomerStore

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mapping = DEMO_MAPPING.model_copy(update={"product_id": None, "quantity": None})
    demo = ["-t", demo_data_path(), "--customer-col", "CustomerID", "--timestamp-col",
            "InvoiceDate", "--amount", "Quantity * UnitPrice", "--order-col", "InvoiceNo"]
    res = runner.invoke(app, ["train", *demo, "--churn-horizon-days", "90",
                              "--clv-horizon-days", "90"])
    assert res.exit_code == 0, res.output
    assert "roc_auc" in res.output and "promoted" in res.output
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "champion" in res.output
    tracking.configure(tmp_path)
    models = tracking.list_models()
    champions = {m.removeprefix("lifecast-"): str(v) for m, v, a in
                 zip(models["model"], models["version"], models["aliases"], strict=True)
                 if "champion" in str(a)}
    assert champions == {"churn": "1", "clv": "1"}

    res = runner.invoke(app, ["score", *demo])
    assert res.exit_code == 0, res.output
    demo_log = pd.read_parquet(demo_data_path(), columns=["InvoiceDate"])
    as_of = (demo_log["InvoiceDate"].max() + pd.Timedelta(days=1)).normalize()
    everyone = build_features(demo_data_path(), as_of, mapping=mapping)["customer_id"]
    store = CustomerStore(CustomerStore.default_url(tmp_path))
    try:
        batch = store.current_batch()
        assert batch["n_customers"] == len(everyone) > 500
        assert batch["model_versions"] == champions
        assert pd.Timestamp(batch["as_of"]) == as_of
        scores, _, unknown = store.get_customers(list(everyone))
    finally:
        store.close()
    assert unknown == [] and list(scores["customer_id"]) == list(everyone)
    assert scores["churn_probability"].between(0, 1).all()
    assert (scores["predicted_clv"] >= 0).all()

    out = tmp_path / "bt.parquet"
    res = runner.invoke(app, ["backtest", *demo, "--cutoff", "2011-09-01",
                              "--churn-horizon-days", "90", "--clv-horizon-days", "90",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    bt = pd.read_parquet(out)
    active = build_features(demo_data_path(), "2011-09-01", mapping=mapping)["customer_id"]
    # the training issue's per-customer backtest row
    assert {"customer_id", "churn_probability", "predicted_clv", "expected_orders", "p_alive",
            "segment", "lifecycle_stage"} <= set(bt.columns)
    assert sorted(bt["customer_id"]) == sorted(active) and bt["customer_id"].is_unique
    assert bt["churn_probability"].between(0, 1).all() and (bt["predicted_clv"] >= 0).all()
