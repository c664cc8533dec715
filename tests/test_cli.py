"""The `lifecast` command as a user runs it (typer's CliRunner, real files)."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from features.registry import DEFINITIONS_VERSION
from serving.cli import app
from training.cli import RESCORE_HINT

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


def test_mapping_hints_name_the_flag_and_yaml_key_here_and_the_field_in_python(sales_csv,
                                                                             tmp_path):
    """The hints of the column mapping name what each reader set: the command line its
    flag and the YAML key, a Python caller of the same function `ColumnMapping(field=...)`
    (it was told '--customer-col' too)."""
    from features import ColumnMapping, load_transactions
    from features.contract import DataValidationError

    validate = ["features", "validate", "-t", str(sales_csv)]
    res = runner.invoke(app, [*validate, "--customer-col", "customer", "--timestamp-col",
                              "when", "--amount", "qty * price"])
    assert res.exit_code == 2
    assert ("column 'customer' (mapped to customer_id) is not in the data; set "
            "--customer-col (YAML key customer_id:) to the right column") in res.output
    with pytest.raises(DataValidationError) as err:
        load_transactions(sales_csv, ColumnMapping(customer_id="customer", timestamp="when",
                                                   amount="qty * price"))
    assert ("column 'customer' (mapped to customer_id) is not in the data; set "
            "ColumnMapping(customer_id=...) (YAML key customer_id:) to the right "
            "column") in str(err.value)
    assert "--" not in str(err.value)

    res = runner.invoke(app, [*validate, *MAP, "--timestamp-format", "%H:%i"])
    assert res.exit_code == 2
    assert ("--timestamp-format '%H:%i' (YAML key timestamp_format:) is not a format "
            "lifecast can read") in res.output

    big = tmp_path / "big.csv"
    pd.read_csv(sales_csv).assign(price=[10.0, 5.0, 2e12, 1.0]).to_csv(big, index=False)
    res = runner.invoke(app, ["features", "validate", "-t", str(big), *MAP])
    assert res.exit_code == 2
    assert "scale them, e.g. --amount '(qty * price) / 100' (YAML key amount:);" in res.output

    comma = tmp_path / "comma.csv"
    pd.read_csv(sales_csv).assign(price=["10", "5,5", "2.5", "1"]).to_csv(comma, index=False)
    res = runner.invoke(app, ["features", "validate", "-t", str(comma), *MAP])
    assert res.exit_code == 2
    assert "with --amount (YAML key amount:);" in res.output
    assert "pass --decimal-comma (YAML key decimal_comma: true)." in res.output


def test_cutoff_before_the_data_is_a_clear_error(sales_csv, tmp_path):
    res = runner.invoke(app, ["features", "build", "-t", str(sales_csv), *MAP,
                              "--cutoff", "2020-01-01", "--out", str(tmp_path / "x.parquet")])
    assert res.exit_code == 2
    assert "2020-01-01" in res.output
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize(("command", "flag"), [
    (["features", "build", "--out", "x.parquet"], "--cutoff"),
    (["backtest", "--out", "x.parquet"], "--cutoff"),
    (["train"], "--as-of"), (["score"], "--as-of")])
def test_a_date_that_cannot_be_read_fails_before_the_log_is_loaded(sales_csv, command, flag):
    """It was said only after the whole log was loaded and its report printed."""
    res = runner.invoke(app, [*command, "-t", str(sales_csv), *MAP, flag, "01/09/2021"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 2, res.output
    assert f"Invalid value for '{flag}': '01/09/2021' is not a date written year first" in (
        res.output)
    assert "Validation report" not in res.output


def test_validate_prints_the_report(sales_csv):
    res = runner.invoke(app, ["features", "validate", "-t", str(sales_csv), *MAP])
    assert res.exit_code == 0, res.output
    assert "rows read" in res.output and "customers" in res.output
    assert "duplicate rows" in res.output


def test_features_list_is_the_registry():
    from features.registry import feature_names

    res = runner.invoke(app, ["features", "list"])
    assert res.exit_code == 0
    assert all(f"`{name}`" in res.output for name in feature_names())


def test_unknown_run_id_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    res = runner.invoke(app, ["promote", "--run", "0123456789abcdef"])
    assert res.exit_code == 2  # no store yet: said, and none is made
    assert "no MLflow tracking store at MLFLOW_TRACKING_URI" in res.output
    assert not (tmp_path / "mlflow.db").exists()
    from training.tracking import configure

    configure(tmp_path)  # an empty store
    res = runner.invoke(app, ["promote", "--run", "0123456789abcdef"])
    assert res.exit_code == 2
    assert "no registered models come from run 0123456789abcdef" in res.output


@pytest.mark.slow
def test_train_score_models_end_to_end(tmp_path, monkeypatch):
    """train -> models -> score -> backtest with a real MLflow store and customer store in
    tmp: the store holds every customer, scored by the champions, as of the default date;
    the backtest writes the per-customer output for everyone active before its cutoff."""
    import mlflow

    from features import DEMO_MAPPING, build_features, demo_data_path
    from training import tracking
    from training.store import CustomerStore

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    mapping = DEMO_MAPPING.model_copy(update={"product_id": None, "quantity": None})
    demo = ["-t", demo_data_path(), "--customer-col", "CustomerID", "--timestamp-col",
            "InvoiceDate", "--amount", "Quantity * UnitPrice", "--order-col", "InvoiceNo"]
    res = runner.invoke(app, ["train", *demo, "--churn-horizon-days", "90",
                              "--clv-horizon-days", "90", "--threads", "1",
                              "--experiment", "demo study", "--run-name", "first try"])
    assert res.exit_code == 0, res.output
    assert "roc_auc" in res.output and "promoted" in res.output
    assert re.search(r"^MLflow run [0-9a-f]{32} in experiment 'demo study'$", res.output,
                     re.M), res.output
    assert res.output.splitlines()[-1] == RESCORE_HINT  # a new champion: rescore
    assert re.search(r"^churn model vs BG/NBD \+ Gamma-Gamma, backtested at 2011-\d\d-\d\d: "
                     r"both fit only on data before it", res.output, re.M), res.output
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and "champion" in res.output
    tracking.configure(tmp_path)
    models = tracking.list_models()
    champions = {m.removeprefix("lifecast-"): str(v) for m, v, a in
                 zip(models["model"], models["version"], models["aliases"], strict=True)
                 if "champion" in str(a)}
    assert champions == {"churn": "1", "clv": "1"}
    run = mlflow.get_run(models["run_id"].iloc[0])
    assert run.data.params["num_threads"] == "1"  # --threads reached LightGBM's config
    assert run.info.run_name == "first try"
    assert mlflow.get_experiment(run.info.experiment_id).name == "demo study"

    res = runner.invoke(app, ["score", *demo])
    assert res.exit_code == 0, res.output
    assert re.search(r"^scored [\d,]+ customers as of .*: every customer with a purchase "
                     r"before \d{4}-\d\d-\d\d \(customers who only returned goods are not "
                     r"scored\)$", res.output, re.M), res.output
    assert "\nSegments:\n" in res.output
    assert "\nTen customers with the most value at risk:\n" in res.output
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


# ------------------------------------------------------------------ flags, messages, output


@pytest.mark.parametrize(("command", "flags", "expected"), [
    ("train", ["--churn-horizon-days", "0"],
     "--churn-horizon-days must be a whole number of days > 0, got 0"),
    ("backtest", ["--cutoff", "2021-02-01", "--clv-horizon-days", "-5"],
     "--clv-horizon-days must be a whole number of days > 0, got -5"),
    ("train", ["--churn-horizon-days", "0", "--clv-horizon-days", "0"],
     "--churn-horizon-days must be a whole number of days > 0, got 0; "
     "--clv-horizon-days must be a whole number of days > 0, got 0"),
])
def test_a_bad_horizon_is_one_line_naming_the_flag(sales_csv, tmp_path, monkeypatch, command,
                                                   flags, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "bt.parquet"
    extra = ["--out", str(out)] if command == "backtest" else []
    res = runner.invoke(app, [command, "-t", str(sales_csv), *MAP, *flags, *extra])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == [f"error: {expected}"]
    assert not out.exists() and not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize(("flags", "expected"), [
    (["--experiment", " "], "--experiment is blank: give an experiment name, or leave it out "
                            "for 'lifecast'"),
    (["--run-name", ""], "--run-name is blank: give a name, or leave it out for the default "
                         "'train <as-of> churn <N>d clv <N>d'"),
])
def test_a_blank_experiment_or_run_name_fails_before_any_work(sales_csv, tmp_path,
                                                             monkeypatch, flags, expected):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, ["train", "-t", str(sales_csv), *MAP, *flags])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == [f"error: {expected}"]
    assert not (tmp_path / "mlflow.db").exists()


def test_demo_checks_its_horizons_before_making_the_work_folder(tmp_path):
    workdir = tmp_path / "work"
    res = runner.invoke(app, ["demo", "--workdir", str(workdir), "--clv-horizon-days", "0"])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == [
        "error: --clv-horizon-days must be a whole number of days > 0, got 0"]
    assert not workdir.exists()


@pytest.mark.parametrize("command", ["train", "backtest"])
def test_threads_cannot_be_negative(sales_csv, command):
    res = runner.invoke(app, [command, "-t", str(sales_csv), *MAP, "--threads", "-1"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 2
    assert "Invalid value for '--threads'" in res.output


def test_tune_cannot_be_negative(sales_csv):
    res = runner.invoke(app, ["train", "-t", str(sales_csv), *MAP, "--tune", "-1"],
                        env={"COLUMNS": "200"})
    assert res.exit_code == 2
    assert "Invalid value for '--tune': Input should be greater than or equal to 0" in (
        res.output)


def test_config_errors_name_the_flag_or_the_field():
    from pydantic import ValidationError

    from features.config import FeatureConfig
    from training.cli import config_error_message
    from training.models import TrainConfig

    with pytest.raises(ValidationError) as caught:
        TrainConfig(features=FeatureConfig(clv_horizon_days=-1))
    assert config_error_message(caught.value) == (
        "--clv-horizon-days must be a whole number of days > 0, got -1")
    with pytest.raises(ValidationError) as caught:
        TrainConfig(num_leaves=1, learning_rate=2.5)
    assert config_error_message(caught.value) == (
        "learning_rate must be <= 1.0, got 2.5; num_leaves must be >= 2, got 1")
    with pytest.raises(ValidationError) as caught:
        FeatureConfig(trend_window_days="soon")
    assert config_error_message(caught.value).startswith(
        "trend_window_days: Input should be a valid integer")


@pytest.fixture()
def registry(tmp_path, monkeypatch):
    """An MLflow store in tmp (the working folder) whose runs register placeholder versions of
    both models, quickly: `register()` returns the run id. The global tracking URI is put
    back afterwards."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from training import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    previous = tracking_utils._tracking_uri
    tracking.configure(tmp_path)
    client = mlflow.MlflowClient()

    def register() -> str:
        with mlflow.start_run(experiment_id=tracking._experiment_id("lifecast")) as run:
            pass
        for name in tracking.MODEL_NAMES.values():
            if not client.search_registered_models(f"name='{name}'"):
                client.create_registered_model(name)
            client.create_model_version(name, source=f"runs:/{run.info.run_id}/model",
                                        run_id=run.info.run_id)
        return run.info.run_id

    try:
        yield register
    finally:
        mlflow.set_tracking_uri(previous)
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_a_train_that_fails_leaves_no_mlflow_store_behind(sales_csv, tmp_path, monkeypatch):
    """Bad data or a horizon the history cannot hold stops `train` before the MLflow
    store is made: no empty mlflow.db that `models` would later report as "no models
    registered yet" instead of "no store here"."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for args in (["-t", "nofile.csv", *MAP], ["-t", str(sales_csv), *MAP]):
        res = runner.invoke(app, ["train", *args])
        assert res.exit_code == 2, res.output
    assert "is too long for the history" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sales.csv"]


def test_a_too_long_horizon_names_the_flags_on_the_command_line(sales_csv, tmp_path,
                                                               monkeypatch):
    """The same error names the flags the user typed here and the parameters a Python
    caller passed there (`features.naming`): a Python caller was told
    "--churn-horizon-days 90 is too long ... before --as-of"."""
    from features import ColumnMapping
    from features.contract import DataValidationError
    from training.pipeline import backtest, train

    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", "-t", str(sales_csv), *MAP])
    assert res.exit_code == 2
    assert res.output.startswith("error: --churn-horizon-days 90 is too long for the history")
    assert ("(the latest 30-day snapshot whose 90-day outcome window ends by --as-of "
            "2021-02-02)") in res.output
    assert "days of history before --as-of in all" in res.output
    res = runner.invoke(app, ["backtest", "-t", str(sales_csv), *MAP, "--cutoff", "2021-03-01",
                              "--churn-horizon-days", "20", "--clv-horizon-days", "20",
                              "--out", "bt.parquet"])
    assert res.exit_code == 2
    assert res.output.startswith("error: --churn-horizon-days 20 is too long for the history: "
                                 "the data before 2021-03-01 (--cutoff) covers")
    assert "The longest --churn-horizon-days" not in res.output  # none fits: "Use ..."
    mapping = ColumnMapping(customer_id="cust", timestamp="when", amount="qty * price")
    with pytest.raises(DataValidationError) as err:
        train(sales_csv, mapping)
    msg = str(err.value)
    assert msg.startswith("config.features.churn_horizon_days=90 is too long for the history")
    assert ("(the latest 30-day snapshot whose 90-day outcome window ends by "
            "as_of=2021-02-02)") in msg and "--" not in msg
    with pytest.raises(DataValidationError) as err:
        backtest(sales_csv, "2021-03-01", mapping,
                 {"features": {"churn_horizon_days": 20, "clv_horizon_days": 20}})
    msg = str(err.value)
    assert msg.startswith("config.features.churn_horizon_days=20 is too long for the history: "
                          "the data before 2021-03-01 (cutoff) covers")
    assert "--" not in msg


def test_models_and_promote_leave_no_temporary_folders(registry):
    """Reading a version's feature definitions from its MLmodel (versions without the tag)
    went through mlflow.models.get_model_info, which downloads into a temporary folder it
    never removes when the artifacts are not local files (here runs:/ sources; a tracking
    server's too): each `lifecast models` and `promote` left one per version (26 per CI
    run, from these tests)."""
    import tempfile

    temp = Path(tempfile.gettempdir())
    before = set(temp.glob("tmp*"))
    first = registry()
    assert runner.invoke(app, ["models"]).exit_code == 0
    assert runner.invoke(app, ["promote", "--run", first]).exit_code == 0
    assert sorted(set(temp.glob("tmp*")) - before) == []


def test_promote_says_when_the_run_already_is_champion(registry):
    first, second = registry(), registry()
    res = runner.invoke(app, ["promote", "--run", first])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["lifecast-churn v1 is now champion",
                                       "lifecast-clv v1 is now champion", RESCORE_HINT]
    res = runner.invoke(app, ["promote", "--run", first])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["lifecast-churn v1 is already champion: nothing changed",
                                       "lifecast-clv v1 is already champion: nothing changed"]
    res = runner.invoke(app, ["promote", "--run", second])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines() == ["lifecast-churn v2 is now champion (was v1)",
                                       "lifecast-clv v2 is now champion (was v1)", RESCORE_HINT]


def test_models_prints_each_decision_under_the_table(registry):
    from mlflow import MlflowClient

    from training.cli import format_models
    from training.tracking import list_models

    run = registry()
    decision = ("promoted: roc_auc 0.7413 > 0.7349 (champion: its settings fit at the "
                "evaluation cutoff on this run's data)")
    MlflowClient().set_model_version_tag("lifecast-churn", "1", "decision", decision)
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    table, _, decisions = res.output.partition("\n\ndecisions:\n")
    assert decision not in table and run[:8] in table  # as `promote --run` takes it
    assert max(len(line) for line in decisions.splitlines()) <= 100
    assert " ".join(decisions.split()) == f"lifecast-churn v1: {decision}"
    # no decision recorded anywhere: no empty heading
    assert "decisions:" not in format_models(list_models().assign(decision=""))


def test_models_says_when_scores_of_other_snapshots_do_not_rank_versions():
    from training.cli import format_models

    def version(v: str, cutoff: str, horizon: int, score: float) -> dict:
        return {"model": "lifecast-churn", "version": int(v), "aliases": "",
                "run_id": "r" + v * 31, "run_name": f"train 2011-12-10 churn {horizon}d",
                "tune_trials": 0, "as_of": pd.Timestamp("2011-12-10"),
                "eval_cutoff": pd.Timestamp(cutoff), "horizon_days": horizon,
                "feature_definitions": DEFINITIONS_VERSION,
                "created": pd.Timestamp("2026-11-24 10:00", tz="UTC"),
                "primary_metric": "roc_auc", "score": score, "tie_break_metric": "brier",
                "tie_break_score": 0.2, "decision": ""}

    same = pd.DataFrame([version("2", "2011-09-11", 90, 0.7366),
                         version("1", "2011-09-11", 90, 0.7350)])
    assert "note:" not in format_models(same)
    assert format_models(same).splitlines()[-1].split() == [
        "1", "r1111111", "2011-12-10", "2026-11-24", "10:00", "no", "0.7350", "0.2000",
        "train", "2011-12-10", "churn", "90d"]
    other = pd.DataFrame([version("2", "2011-08-12", 60, 0.7478),
                          version("1", "2011-09-11", 90, 0.7366)])
    note = format_models(other).split("\n\n", 1)[1]
    assert " ".join(note.split()) == (
        "note: the scores are each version's roc_auc on its own run's evaluation snapshot; "
        "the versions of lifecast-churn were evaluated at other cutoffs or horizons "
        "(`lifecast models --wide` shows them), so their scores do not rank them. The "
        "champion rule compares settings on one snapshot (decisions below).")
    assert "horizon" in format_models(other).splitlines()[1]  # they differ: shown


def test_models_shows_run_names_tuning_both_metrics_and_the_champion(registry):
    """`lifecast models` showed run ids only: retrains of one day (`#2`, `#3`) and tuned
    runs could not be told apart, nor was brier (the churn tie-break) shown."""
    import json

    import mlflow

    from training import tracking

    first, second = registry(), registry()
    client = mlflow.MlflowClient()
    tune = client.create_run(client.get_run(second).info.experiment_id, run_name="tune")
    client.log_param(tune.info.run_id, "n_trials", "20")
    names = {first: "train 2011-12-10 churn 90d clv 90d",
             second: "train 2011-12-10 churn 90d clv 90d tuned #2"}
    for run, run_name in names.items():
        client.set_tag(run, "mlflow.runName", run_name)
    client.set_tag(second, tracking.TUNE_RUN_TAG, tune.info.run_id)
    for kind, metrics in (("churn", {"roc_auc": "0.741300", "brier": "0.201000"}),
                          ("clv", {"normalized_gini": "0.612000"})):
        for version in ("1", "2"):
            for key, value in metrics.items():
                client.set_model_version_tag(tracking.MODEL_NAMES[kind], version, key, value)
            client.set_model_version_tag(tracking.MODEL_NAMES[kind], version, "as_of",
                                         "2011-12-10 00:00:00")
    tracking.promote_run(second)
    res = runner.invoke(app, ["models"], env={"COLUMNS": "100"})
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(map(len, lines)) <= 100
    assert lines[0] == ("lifecast-churn (champion rule: higher roc_auc wins, then lower "
                        "brier; * = champion)")
    assert lines[1].split() == ["version", "run", "id", "as", "of", "trained", "tuned",
                                "roc_auc", "brier", "run", "name"]
    v2, v1 = lines[2].split(), lines[3].split()
    assert v2[:3] == ["*", "2", second[:8]] and v2[3] == "2011-12-10"
    assert v2[6:10] == ["20", "trials", "0.7413", "0.2010"]
    assert lines[2].endswith("tuned #2")  # a long name keeps its end: what tells it apart
    assert v1[:2] == ["1", first[:8]] and "no" in v1
    assert lines[6].split()[-4:-2] == ["tuned", "normalized_gini"]  # clv: no tie-break
    wide = runner.invoke(app, ["models", "--wide"], env={"COLUMNS": "100"}).output
    assert names[second] in wide and second in wide and "champion" in wide
    listed = json.loads(runner.invoke(app, ["models", "--json"]).output)
    assert [(v["model"], v["version"], v["run_name"], v["tune_trials"]) for v in listed] == [
        ("lifecast-churn", 2, names[second], 20), ("lifecast-churn", 1, names[first], 0),
        ("lifecast-clv", 2, names[second], 20), ("lifecast-clv", 1, names[first], 0)]
    both = runner.invoke(app, ["models", "--wide", "--json"])
    assert both.exit_code == 2 and "give one" in both.output


def test_promote_takes_the_start_of_a_run_id_that_fits_one_run(registry, monkeypatch):
    from collections import Counter

    from training import tracking

    first, second = registry(), registry()
    res = runner.invoke(app, ["promote", "--run", second[:8]])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[:2] == ["lifecast-churn v2 is now champion",
                                           "lifecast-clv v2 is now champion"]
    res = runner.invoke(app, ["promote", "--run", first[:5]])  # shorter than 6: not looked up
    assert res.exit_code == 2
    assert f"no registered models come from run {first[:5]}" in res.output
    # 17 runs: two ids share their first hex digit, a start that fits both is refused
    monkeypatch.setattr(tracking, "MIN_RUN_PREFIX", 1)
    runs = [first, second, *(registry() for _ in range(15))]
    digit, n = Counter(r[0] for r in runs).most_common(1)[0]
    assert n >= 2
    with pytest.raises(ValueError, match=f"run id '{digit}' is the start of {n} runs' ids"):
        tracking.promote_run(digit)
    assert tracking.champion_versions() == {"churn": "2", "clv": "2"}


# SQLAlchemy 2.1 deprecates a loader MLflow's store uses; pytest shows every warning, the
# command line only once per process, so it would come first here depending on test order
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_no_mlflow_info_lines_on_a_new_store(tmp_path, monkeypatch):
    """MLflow logs `INFO mlflow.store.db.utils: Creating initial MLflow database tables...`
    when `lifecast models` makes the store (at MLFLOW_TRACKING_URI): the command shows
    only its own message, naming the store it looked in."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 2
    assert not (tmp_path / "elsewhere.db").exists()  # a command that reads makes no store
    assert res.output.splitlines() == [
        f"error: no MLflow tracking store at MLFLOW_TRACKING_URI: {tmp_path / 'elsewhere.db'} "
        f"does not exist. Run `lifecast train` in this folder first, or set "
        f"MLFLOW_TRACKING_URI to the store that holds the models (`lifecast demo` keeps its "
        f"own: MLFLOW_TRACKING_URI=sqlite:///lifecast_work/mlflow.db)"]
    from training.tracking import configure

    configure(tmp_path)  # an empty store, made at MLFLOW_TRACKING_URI
    assert (tmp_path / "elsewhere.db").is_file()
    res = runner.invoke(app, ["models"])
    assert res.output.splitlines() == [
        f"error: no models registered yet in {uri}: run `lifecast train` first"]


@pytest.mark.parametrize("args", [["models"], ["promote", "--run", "abc"],
                                  ["score", "-t", "x.parquet", "--customer-col", "c",
                                   "--timestamp-col", "t", "--amount", "a"],
                                  ["serve", "--dry-run", "--port", "3199"]])
def test_commands_that_read_models_leave_no_empty_store_behind(tmp_path, monkeypatch, args):
    """`models`, `promote`, `score` and `serve` in a folder without a store say where they
    looked and what to do, and do not create an empty mlflow.db there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == [
        f"error: no MLflow tracking store here: {tmp_path.resolve() / 'mlflow.db'} does not "
        f"exist. Run `lifecast train` in this folder first, or set MLFLOW_TRACKING_URI to the "
        f"store that holds the models (`lifecast demo` keeps its own: "
        f"MLFLOW_TRACKING_URI=sqlite:///lifecast_work/mlflow.db)"]
    assert list(tmp_path.iterdir()) == []


def test_quiet_mlflow_hides_progress_keeps_warnings_and_restores(capsys, monkeypatch):
    import logging

    from mlflow.utils import logging_utils
    from mlflow.utils.logging_utils import eprint

    from training.tracking import quiet_mlflow

    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    root = logging.getLogger("mlflow")
    log = logging.getLogger("mlflow.store.db.utils")
    before = (root.level, list(root.handlers))
    with quiet_mlflow():
        log.info("Creating initial MLflow database tables...")
        eprint("Successfully registered model 'lifecast-churn'.")
        logging_utils.disable_logging()  # what MLflow does around some imports: it ends
        logging_utils.enable_logging()  # with the stream on, whatever it was before
        eprint("Created version '1' of model 'lifecast-churn'.")
        log.warning("the store needs an upgrade")
        log.error("the store is locked")
    err = capsys.readouterr().err
    assert "Creating initial" not in err and "Successfully registered" not in err
    assert "Created version" not in err
    assert "WARNING mlflow.store.db.utils: the store needs an upgrade" in err
    assert "ERROR mlflow.store.db.utils: the store is locked" in err
    assert (root.level, list(root.handlers)) == before
    eprint("printed again")  # the stream is on again after the block
    assert "printed again" in capsys.readouterr().err

    monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "INFO")  # asked for: everything shows
    with quiet_mlflow():
        eprint("Created version '1' of model 'lifecast-churn'.")
    assert "Created version" in capsys.readouterr().err


def test_quiet_mlflow_in_two_threads_at_once_restores_the_output(capsys, monkeypatch):
    """Two `log_training` calls in two threads (a notebook training two settings at once):
    each quiet block saved the stream it found and put it back, so the second, which found
    the first's silenced stream, left MLflow's output off for the rest of the process."""
    import threading

    from mlflow.utils import logging_utils
    from mlflow.utils.logging_utils import eprint

    from training.tracking import quiet_mlflow

    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    both_in, first_out = threading.Barrier(2, timeout=30), threading.Event()

    def first() -> None:
        with quiet_mlflow():
            both_in.wait()
        first_out.set()

    def second() -> None:
        with quiet_mlflow():
            both_in.wait()
            first_out.wait(30)
            eprint("Created version '2' of model 'lifecast-churn'.")  # still quiet

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    threads[1].start()
    for t in threads:
        t.join()
    assert logging_utils.MLFLOW_LOGGING_STREAM is stream
    assert "Created version" not in capsys.readouterr().err
    eprint("printed again")
    assert "printed again" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_output_has_no_mlflow_progress_lines(tmp_path):
    """`lifecast demo` as a user runs it (the console entry point, a fresh process): no
    `INFO mlflow...` lines, no `Successfully registered model` / `Created version` lines;
    the output opens with the validation report and the decisions name the metric."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_LOGGING_LEVEL")}
    code = "import sys; from serving.launch import main; sys.argv[0] = 'lifecast'; main()"
    proc = subprocess.run([sys.executable, "-c", code, "demo", "--workdir", "work"],
                          cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = (proc.stdout + proc.stderr).splitlines()
    noise = [line for line in lines if " INFO " in f" {line}"
             or line.startswith(("Successfully registered", "Created version"))]
    assert noise == []
    assert proc.stdout.startswith("Validation report for ")
    assert "  lifecast-churn v1: promoted: no champion yet (roc_auc 0." in proc.stdout
    # each stage on stderr as it finishes (a run on a large log is otherwise silent)
    stages = [line.split(":")[0].strip() for line in proc.stderr.splitlines()
              if line.startswith("  ") and line.endswith(" s")]
    for stage in ("training frame", "churn fit", "value fit", "mlflow plots", "features"):
        assert stage in stages, proc.stderr
    # a second demo in the same folder rescores the day it trained on, on purpose: not the
    # unchanged export `lifecast score` warns about ("already as of ... Was the export
    # updated?"), which it printed when the champion stayed v1
    again = subprocess.run([sys.executable, "-c", code, "demo", "--workdir", "work"],
                           cwd=tmp_path, env=env, text=True, capture_output=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "current batch" not in again.stderr


OUR_COMMANDS = ("train", "backtest", "score", "promote", "models", "demo")


def _paragraphs(name: str) -> list[str]:
    import inspect

    import typer

    help_text = typer.main.get_command(app).commands[name].help
    return [" ".join(p.split()) for p in inspect.cleandoc(help_text).split("\n\n")]


def test_help_reflows_at_80_columns():
    """At 80 columns each command's summary is one line of `lifecast --help`; in its own
    help every paragraph is whole and each line is as full as the next word allows (no
    sentence split where a docstring line ended)."""
    res = runner.invoke(app, ["--help"], env={"COLUMNS": "80"})
    assert res.exit_code == 0
    listing = res.output.splitlines()
    for name in OUR_COMMANDS:
        summary = _paragraphs(name)[0]
        assert any(line.startswith(f"│ {name} ") and summary in line for line in listing), (
            name, summary, res.output)

    for name in OUR_COMMANDS:
        res = runner.invoke(app, [name, "--help"], env={"COLUMNS": "80"})
        assert res.exit_code == 0
        lines = res.output.splitlines()
        start = next(i for i, line in enumerate(lines) if "Usage:" in line) + 1
        end = next(i for i, line in enumerate(lines) if line.startswith("╭"))
        shown: list[list[str]] = [[]]
        for line in (line.strip() for line in lines[start:end]):
            if line:
                shown[-1].append(line)
            elif shown[-1]:
                shown.append([])
        shown = [p for p in shown if p]
        assert [" ".join(p) for p in shown] == _paragraphs(name), name
        for paragraph in shown:
            assert all(len(line) <= 78 for line in paragraph), paragraph
            for line, following in zip(paragraph, paragraph[1:], strict=False):
                assert len(line) + 1 + len(following.split()[0]) > 78, (name, line)


def test_backtest_past_the_data_says_until_when_each_horizon_needs_data(
        sales_csv, tmp_path, monkeypatch):
    """The data ends 2021-02-01 09:00: a 20-day churn window from 2021-01-15 needs it until
    2021-02-04, the 10-day value window is covered (its metrics are printed; the log is
    too small to train on, so `backtest` is replaced by its result)."""
    from training import pipeline

    value = pd.DataFrame({"target": ["value"], "metric": ["normalized_gini"], "model": [0.5],
                          "baseline": [0.25], "better": ["model"]})

    def fake_backtest(tx, cutoff, mapping=None, config=None, *, table=None):
        assert config.features.churn_horizon_days == 20
        return pipeline.BacktestResult(pd.DataFrame({"customer_id": ["a", "b"]}), value,
                                       pd.Timestamp(cutoff), False, None, ("value",))

    monkeypatch.setattr(pipeline, "backtest", fake_backtest)
    out = tmp_path / "bt.csv"
    res = runner.invoke(app, ["backtest", "-t", str(sales_csv), *MAP, "--cutoff", "2021-01-15",
                              "--churn-horizon-days", "20", "--clv-horizon-days", "10",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines() == [
        f"wrote 2 customers to {out}",
        *value.to_string(index=False, float_format=lambda v: f"{v:.4f}").splitlines(),
        "no churn metrics: the data does not cover the outcome windows after the cutoff "
        "2021-01-15:",
        "  --churn-horizon-days 20: needs data until 2021-02-04 (cutoff + 20 days); "
        "the data ends 2021-02-01 09:00",
        # the history is too short for any cutoff: no cutoff is suggested
        "no cutoff gives metrics with these horizons: the data spans 27 days, and a backtest "
        "needs 101 days of history before the cutoff plus 20 after it; use shorter "
        "horizons or a longer history",
    ]


@pytest.mark.slow
def test_backtest_past_the_end_of_the_demo_data(tmp_path):
    from features import demo_data_path

    demo = ["-t", demo_data_path(), "--customer-col", "CustomerID", "--timestamp-col",
            "InvoiceDate", "--amount", "Quantity * UnitPrice", "--order-col", "InvoiceNo"]
    out = tmp_path / "bt.parquet"
    res = runner.invoke(app, ["backtest", *demo, "--cutoff", "2011-11-01",
                              "--churn-horizon-days", "90", "--clv-horizon-days", "90",
                              "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert res.stdout.splitlines()[1:] == [
        "no metrics: the data does not cover the outcome windows after the cutoff 2011-11-01:",
        "  --churn-horizon-days 90: needs data until 2012-01-30 (cutoff + 90 days); "
        "the data ends 2011-12-09 12:50",
        "  --clv-horizon-days 90: needs data until 2012-01-30 (cutoff + 90 days); "
        "the data ends 2011-12-09 12:50",
        "for metrics, use --cutoff 2011-09-11 or earlier, or shorter horizons",
    ]
    assert out.is_file()


@pytest.mark.parametrize(("command", "flags", "expected"), [
    ("train", ["--promote", "sometimes"],
     "--promote must be one of auto, always, never, got 'sometimes'"),
    ("backtest", ["--cutoff", "2021-02-01", "--out", "bt.txt"],
     "cannot write bt.txt: use a .parquet, .csv or .csv.gz file name"),
])
def test_bad_options_fail_before_any_work(sales_csv, tmp_path, monkeypatch, command, flags,
                                          expected):
    """An option that cannot work is refused at once, not after training: one line, exit 2,
    nothing made (no MLflow store, no output)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = runner.invoke(app, [command, "-t", str(sales_csv), *MAP, *flags])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == [f"error: {expected}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sales.csv"]


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy:DeprecationWarning")
def test_score_checks_the_customer_store_before_scoring(sales_csv, tmp_path, monkeypatch,
                                                        unreachable_postgres):
    """A customer store that cannot be written is one line and exit 2, before the champions
    are loaded or anything is scored (the MLflow store here has no models at all); one
    whose server does not answer is the same line, saying it is temporary, and exit 75
    (EX_TEMPFAIL: a scheduler retries it later)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from training.tracking import configure

    configure(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    res = runner.invoke(app, ["score", "-t", str(sales_csv), *MAP,
                              "--store", f"sqlite:///{blocker}/store.db"])
    assert res.exit_code == 2, res.output
    assert res.output.splitlines() == [
        f"error: cannot write the customer store sqlite:///{blocker}/store.db: {blocker} is "
        f"not a folder this user can write to"]
    url = unreachable_postgres()
    res = runner.invoke(app, ["score", "-t", str(sales_csv), *MAP, "--store", url])
    assert res.exit_code == 75, res.output
    lines = res.output.splitlines()
    at = url.replace("postgresql://", "postgresql+psycopg://").replace("s3cret", "***")
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot open the customer store at {at}: ")
    assert lines[0].endswith(" This is temporary: running the command again later may "
                             "succeed")
    assert "s3cret" not in res.output


def test_version():
    from importlib.metadata import version

    from features.registry import DEFINITIONS_VERSION

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0, res.output
    assert res.output == (f"lifecast {version('lifecast')} (feature definitions "
                          f"v{DEFINITIONS_VERSION})\n")


def test_the_command_line_drops_a_librarys_deprecation_but_not_its_own_warnings(capsys):
    """DuckDB 2.0.1 deprecates `fetch_arrow_table`, which Ibis 12 calls on every query;
    under a test runner (or `-W default`) that reached the user as "warning:
    fetch_arrow_table() is deprecated" before each error. A library's deprecation is
    dropped; the package's own warnings, deprecations included, still show."""
    import warnings
    from pathlib import Path

    import features
    from features.cli import run_cli

    ours = str(Path(features.__file__).with_name("contract.py"))

    @run_cli
    def command() -> None:
        warnings.warn_explicit("fetch_arrow_table() is deprecated", DeprecationWarning,
                               "/venv/site-packages/ibis/backends/duckdb/__init__.py", 332)
        warnings.warn_explicit("the old flag is deprecated", DeprecationWarning, ours, 1)
        warnings.warn_explicit("the data may be stale", UserWarning,
                               "/venv/site-packages/somewhere.py", 1)

    command()
    err = capsys.readouterr().err
    assert "fetch_arrow_table" not in err
    assert "warning: the old flag is deprecated" in err
    assert "warning: the data may be stale" in err


def _all_options():
    import typer

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
        else:
            for param in cmd.params:
                if param.param_type_name == "option" and param.name != "help":
                    yield " ".join(path), param

    return list(walk(typer.main.get_command(app), ["lifecast"]))


def test_every_option_says_what_it_does_and_a_days_option_says_days():
    """`lifecast train --help` showed '--churn-horizon-days  Churn outcome window.
    [default: 90]': no unit, nor what the window decides. Every option has help, and one
    counted in days says so (and what the window is for) in it."""
    options = _all_options()
    assert len(options) > 50
    no_help = [f"{where} {p.opts[0]}" for where, p in options if not (p.help or "").strip()]
    assert not no_help, no_help
    days = [(where, p) for where, p in options if p.opts[0].endswith("-days")]
    assert {p.opts[0] for _, p in days} == {"--churn-horizon-days", "--clv-horizon-days"}
    unitless = [f"{where} {p.opts[0]}: {p.help}" for where, p in days
                if "days" not in p.help or "cutoff" not in p.help]
    assert not unitless, unitless


_SIGNALLED_WRITE = """
import os, signal, sys
import pandas as pd

written = pd.DataFrame.to_parquet

def interrupted(self, path, *args, **kwargs):
    written(self, path, *args, **kwargs)  # the temporary file is complete when the
    os.kill(os.getpid(), signal.{sig})  # signal arrives, before it is renamed
pd.DataFrame.to_parquet = interrupted
sys.argv[0] = "lifecast"
from serving.launch import main
main()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signalled_features_build_keeps_the_old_file_and_says_so(sales_csv, tmp_path, sig):
    """`lifecast features build ... --out features.parquet` stopped as it writes: before,
    SIGTERM (a scheduler's timeout, `kill`) ended the process on the spot, exit -15 and
    no message, with `.features.parquet.<hex>.tmp` left beside the output (and a `lifecast
    train` left its MLflow run RUNNING for ever: no clean-up ran); Ctrl-C exited 130
    without a word. Now both run the clean-up and say what happened: exit 128 + the
    signal's number, the old file untouched, nothing beside it, no traceback."""
    import os
    import signal
    import subprocess
    import sys

    out = tmp_path / "out" / "features.parquet"
    out.parent.mkdir()
    out.write_bytes(b"the features of the last run")
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNALLED_WRITE.format(sig=sig), "features", "build",
         "-t", str(sales_csv), *MAP, "--cutoff", "2021-03-01", "--out", str(out)],
        cwd=tmp_path, env=env, text=True, capture_output=True, timeout=120)
    assert proc.returncode == 128 + getattr(signal, sig), proc.stderr
    how = "Ctrl-C (SIGINT)" if sig == "SIGINT" else sig
    assert f"interrupted by {how}: stopped before it finished" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert out.read_bytes() == b"the features of the last run"
    assert os.listdir(out.parent) == ["features.parquet"]
    assert os.listdir(tmp_path / "tmp") == []


@pytest.mark.parametrize("full", ["a file", "an SQLite store"])
def test_a_full_disk_is_one_line_and_exit_2(full, tmp_path, capsys, monkeypatch):
    """`lifecast train` with its MLflow store on a full disk (a 1.6 MB tmpfs, online_retail):
    the run was taken back, rightly, but the user got MLflow's traceback ending in
    `MlflowException: (sqlite3.OperationalError) database or disk is full` and exit 1;
    an artifact write gets `OSError: [Errno 28] No space left on device`. Now any error a
    full disk caused down its chain is one line saying so and what to do, exit 2. Real
    errors: /dev/full, and SQLite at its page limit."""
    import sqlite3
    import tempfile

    import typer
    from mlflow.exceptions import MlflowException

    from features.cli import run_cli
    from training.cli import _quietly

    def command() -> None:
        try:
            if full == "a file":
                with open("/dev/full", "w") as f:
                    f.write("x" * 100_000)
            else:
                db = sqlite3.connect(tmp_path / "mlflow.db")
                db.execute("PRAGMA max_page_count = 2")
                db.execute("CREATE TABLE runs (x)")
                db.executemany("INSERT INTO runs VALUES (?)", [("x" * 1000,)] * 100)
        except Exception as exc:  # wrapped, as MLflow does (and SQLAlchemy inside it)
            raise MlflowException(f"({type(exc).__name__}) {exc}") from exc

    monkeypatch.chdir(tmp_path)  # the temporary folder on the working folder's disk
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # as `lifecast train` runs it: the MLflow commands' wrapper turns MLflow's other errors
    # into "the MLflow tracking store ... failed: ... Check MLFLOW_TRACKING_URI", which
    # would send the user to the wrong fix
    with pytest.raises(typer.Exit) as exit_:
        run_cli(_quietly(command))()
    assert exit_.value.exit_code == 2
    err = capsys.readouterr().err
    said = "No space left on device" if full == "a file" else "database or disk is full"
    assert err.startswith(f"error: {said}: the command stopped and kept nothing half-written")
    assert err.endswith("Free space on the disk (`df -h .`) and run it again\n")


_KILLED_TRAIN = """
import sys
from training import tracking

decided = tracking._record_decision

def hold(client, kind, version, decision):
    if kind == "clv":  # lifecast-churn's alias moved, lifecast-clv's not yet: kill us now
        import mlflow
        print(mlflow.active_run().info.run_id, flush=True)
        sys.stdin.read()
    return decided(client, kind, version, decision)
tracking._record_decision = hold
sys.argv[0] = "lifecast"
from serving.cli import main
main()
"""


@pytest.mark.slow
def test_a_train_killed_with_sigkill_is_marked_killed_by_the_next_train(tmp_path, monkeypatch):
    """A real `lifecast train` killed with SIGKILL (the OOM killer, `kill -9`) after it
    moved lifecast-churn's champion alias and before lifecast-clv's: no clean-up ran, so its
    MLflow run stayed RUNNING for ever and the champions were a mixed pair (churn of the
    killed run, value of the one before) that `lifecast score` used together. Now the next
    `lifecast train` marks the run KILLED with one warning line naming it, puts the
    champion it replaced back, and `lifecast promote` refuses the killed run's versions."""
    import json
    import os
    import subprocess
    import sys

    import mlflow

    from features import demo_data_path
    from training import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    demo = ["-t", demo_data_path(), "--customer-col", "CustomerID", "--timestamp-col",
            "InvoiceDate", "--amount", "Quantity * UnitPrice", "--order-col", "InvoiceNo",
            "--churn-horizon-days", "90", "--clv-horizon-days", "90", "--threads", "1"]
    res = runner.invoke(app, ["train", *demo])
    assert res.exit_code == 0, res.output

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.Popen(
        [sys.executable, "-c", _KILLED_TRAIN, "train", *demo, "--promote", "always"],
        cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True)
    killed = proc.stdout.readline().strip()
    proc.kill()
    proc.wait()
    assert re.fullmatch(r"[0-9a-f]{32}", killed), killed

    tracking.configure(tmp_path)
    client = mlflow.MlflowClient()
    run = client.get_run(killed)
    assert run.info.status == "RUNNING"  # what kill -9 leaves
    champions = tracking.champion_versions
    assert champions() == {"churn": "2", "clv": "1"}  # a mixed pair
    res = runner.invoke(app, ["models", "--json"])  # `lifecast models` says so meanwhile
    assert res.exit_code == 0, res.output
    stale = {(v["model"], v["version"]): v["decision"] for v in json.loads(res.output)
             if v["decision"].startswith("stale: ")}
    assert stale == {(m, 2): f"stale: its training run is RUNNING but its process is gone "
                             f"(pid {proc.pid} on {os.uname().nodename} is not running); "
                             f"the next `lifecast train` marks it KILLED"
                     for m in ("lifecast-churn", "lifecast-clv")}

    res = runner.invoke(app, ["train", *demo, "--promote", "never"])
    assert res.exit_code == 0, res.output
    started = pd.Timestamp(run.info.start_time, unit="ms", tz="UTC")
    assert (f"warning: MLflow run {killed} ({run.info.run_name}), started "
            f"{started:%Y-%m-%d %H:%M:%S} UTC, was still RUNNING but its process is gone "
            f"(pid {proc.pid} on {os.uname().nodename} is not running): marked KILLED; "
            f"lifecast-churn v1 is champion again in place of its v2\n") in res.output
    assert client.get_run(killed).info.status == "KILLED"
    tracking.configure(tmp_path)
    assert champions() == {"churn": "1", "clv": "1"}

    res = runner.invoke(app, ["promote", "--run", killed])
    assert res.exit_code == 2
    assert f"run {killed} cannot be champion: it was killed before it ended" in res.output
    assert champions() == {"churn": "1", "clv": "1"}


def test_a_full_disk_names_a_temporary_folder_on_another_disk(tmp_path, monkeypatch, capsys):
    """`lifecast demo` with TMPDIR on a 1 MB tmpfs (a scheduler's small temporary folder)
    and the working folder on a disk with room: a write to the temporary folder raises
    ENOSPC without a file name, and the message sent the user to `df -h .`, which shows
    room. Now it names the temporary folder too, and TMPDIR."""
    import tempfile

    import typer

    from features.cli import run_cli

    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on another file system than the working folder")
    tmp = Path(tempfile.mkdtemp(prefix="lifecast-test-", dir=shm))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))

    def command() -> None:
        with open("/dev/full", "w") as f:
            f.write("x" * 100_000)

    try:
        with pytest.raises(typer.Exit) as exit_:
            run_cli(command)()
    finally:
        tmp.rmdir()
    assert exit_.value.exit_code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: No space left on device: the command stopped")
    assert err.endswith(f"Free space on the disks of the working folder and of the temporary "
                        f"folder {tmp} (`df -h . {tmp}`), or set TMPDIR to a folder with "
                        f"room, and run it again\n")


@pytest.mark.parametrize("args", [
    ["features", "validate", "-t", "no_such_file.csv", *MAP],
    ["keys", "create", "--name", "crm", "--scope", "no_such_scope"],
])
def test_errors_are_coloured_on_a_terminal_unless_no_color_is_set(args, tmp_path,
                                                                  monkeypatch):
    """NO_COLOR (no-color.org) turns the colour of lifecast's own error and warning lines
    off on a terminal, as the help's does; piped, they never have colour."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("NO_COLOR", raising=False)
    on_tty = runner.invoke(app, args, color=True)
    assert on_tty.exit_code == 2 and "\x1b[31merror: " in on_tty.output
    piped = runner.invoke(app, args, color=False)
    assert piped.output.startswith("error: ") and "\x1b[" not in piped.output
    for value in ("1", "true"):
        res = runner.invoke(app, args, color=True, env={"NO_COLOR": value})
        assert res.exit_code == 2
        assert res.output.startswith("error: ") and "\x1b[" not in res.output, value
    res = runner.invoke(app, args, color=True, env={"NO_COLOR": ""})  # empty: not set
    assert "\x1b[31merror: " in res.output
