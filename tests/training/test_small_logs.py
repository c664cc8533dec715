"""Small logs: a shop with a few dozen customers trains, evaluates and registers models.

Before session 20, `lifecast train` on any log under ~100 customers (random Online Retail
extracts of 5, 10, 30 and 60 customers) stopped with "spearman is undefined when predicted
is constant": at 100 rows per leaf no tree could split the 50-300 training rows, both models
predicted one value for everyone, and an undefined metric was an error.
"""

from __future__ import annotations

import json
import math
import warnings

import pandas as pd
import pytest

from features import DEMO_MAPPING, demo_data_path
from training.models import ChurnModel, ValueModel, leaf_min_rows
from training.pipeline import train
from training.tracking import _compare

CONFIG = {"features": {"churn_horizon_days": 90, "clv_horizon_days": 90}, "num_threads": 1}


def _first_customers(n: int) -> pd.DataFrame:
    """The demo log's rows of its ``n`` smallest customer ids (a deterministic extract)."""
    df = pd.read_parquet(demo_data_path())
    ids = sorted(df["CustomerID"].dropna().unique())[:n]
    return df[df["CustomerID"].isin(ids)].reset_index(drop=True)


def _train(n: int) -> tuple[object, list[str]]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(_first_customers(n), DEMO_MAPPING, config=CONFIG)
    return result, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def tiny():
    """`train` on 8 customers (272 rows): 32 training rows at as_of, 14 at evaluation."""
    return _train(8)


@pytest.mark.parametrize(("configured", "rows", "expected"), [
    (100, 50_000, 100), (100, 2_000, 100),  # 20x the configured value or more: as set
    (100, 1_999, 99), (100, 600, 30),       # a twentieth of the rows
    (100, 399, 20), (100, 10, 20),          # never under LightGBM's default of 20
    (5, 10_000, 5), (10, 100, 10),          # never over the configured value
])
def test_leaf_min_rows(configured, rows, expected) -> None:
    assert leaf_min_rows(configured, rows) == expected


def test_a_log_of_forty_customers_gets_trees_that_split() -> None:
    result, said = _train(40)
    for model in (result.models.churn, result.models.value, *result.eval_models.values()):
        # a leaf of 100 rows (the configured value) cannot split fewer than 200 rows
        assert model.train_rows_ < 200
        assert model.min_child_samples_ == 20
        assert model.has_splits(), model.kind
    assert not [m for m in said if "learned nothing" in m]
    for table in result.evaluation.values():
        assert table["model"].notna().all() and "n/a" not in set(table["better"])
    assert result.metrics_warning is None


def test_a_tiny_log_trains_and_says_what_it_could_not_learn_or_measure(tiny) -> None:
    result, said = tiny
    nothing = [m for m in said if "learned nothing" in m]
    assert nothing == [
        f"the {name} model learned nothing at 2011-12-06: none of its trees could split 32 "
        f"training rows with at least 20 per leaf, so every customer gets the same {what}; "
        f"more customers or a longer history would let it learn"
        for name, what in (("churn", "churn probability"), ("value", "predicted value"))]
    assert not result.models.churn.has_splits() and not result.models.value.has_splits()

    value = result.evaluation["value"].set_index("metric")
    undefined = ["normalized_gini", "spearman", "decile_mape"]
    assert value.loc[undefined, "model"].isna().all()
    assert value["better"].eq("n/a").all()  # the baseline's value metrics too: no GG fit
    assert value.drop(index=undefined)["model"].notna().all()
    assert result.metrics_warning in said
    assert result.metrics_warning.startswith(
        "metrics n/a (shown as n/a, not logged to MLflow): value at 2011-09-07 (6 customers): "
        "normalized_gini: normalized_gini is undefined when predicted is constant (it ranks "
        "nobody); spearman: spearman is undefined when predicted is constant; decile_mape: "
        "decile_mape needs at least 10 customers, got 6.")
    churn = result.evaluation["churn"]
    assert churn["model"].notna().all()  # a constant churn model scores ROC-AUC 0.5
    assert churn.set_index("metric").loc["roc_auc", "model"] == 0.5


def test_a_model_that_learned_nothing_gives_no_reasons(tiny) -> None:
    """Its SHAP contributions are all 0: before, every customer got three "reasons" with
    contribution 0.0 and direction "lowers"."""

    result, _ = tiny
    feats = result.eval_frames["churn"]
    p, reasons = result.models.churn.predict_with_reasons(feats)
    assert len(set(p.tolist())) == 1 and reasons == [[]] * len(feats)


def test_saved_models_keep_their_leaf_size_and_rows(tmp_path, tiny) -> None:
    result, _ = tiny
    for model in (result.models.churn, result.models.value):
        folder = model.save(tmp_path / model.kind)
        loaded = type(model).load(folder)
        assert (loaded.min_child_samples_, loaded.train_rows_) == (20, 32)
        # a model saved before they were recorded: the configured value, rows unknown
        meta = json.loads((folder / "model.json").read_text())
        del meta["min_child_samples"], meta["train_rows"]
        (folder / "model.json").write_text(json.dumps(meta))
        old = type(model).load(folder)
        assert (old.min_child_samples_, old.train_rows_) == (100, None)
    assert isinstance(result.models.churn, ChurnModel)
    assert isinstance(result.models.value, ValueModel)


NAN = math.nan


@pytest.mark.parametrize(("new", "old", "tie", "better", "words"), [
    ({"m": 0.8}, {"m": 0.7}, None, True, "m 0.800 > 0.700"),
    ({"m": 0.7}, {"m": 0.8}, None, False, "m 0.700 <= 0.800"),
    # a score that is undefined on the snapshot loses to one that is defined
    ({"m": NAN}, {"m": 0.7}, None, False, "m n/a <= 0.700"),
    ({"m": 0.5}, {"m": NAN}, None, True, "m 0.500 > n/a"),
    # undefined for both: the tie-break decides, or, without one, the champion stays
    ({"m": NAN, "t": 0.1}, {"m": NAN, "t": 0.2}, "t", True, "m n/a = n/a, t 0.100 < 0.200"),
    ({"m": NAN, "t": 0.3}, {"m": NAN, "t": 0.2}, "t", False, "m n/a = n/a, t 0.300 >= 0.200"),
    ({"m": NAN}, {"m": NAN}, None, False, "m n/a <= n/a"),
    ({"m": 0.8, "t": 0.1}, {"m": 0.8, "t": 0.2}, "t", True,
     "m 0.800000 = 0.800000, t 0.100 < 0.200"),
])
def test_the_champion_rule_compares_what_is_defined(new, old, tie, better, words) -> None:
    assert _compare(new, old, "m", tie) == (better, words)


@pytest.mark.slow  # ~15 s: two training runs logged to MLflow with plots and models
def test_train_command_on_a_tiny_log(tmp_path, monkeypatch) -> None:
    """Exit 0, the n/a metrics printed and left out of MLflow (the run says why in its
    ``metrics_warning`` tag), the first models promoted, and a retrain of the same settings
    on the same data judged on what is defined."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils
    from typer.testing import CliRunner

    from serving.cli import app
    from training import tracking

    path = tmp_path / "tiny.parquet"
    _first_customers(8).to_parquet(path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    previous = tracking_utils._tracking_uri
    args = ["train", "-t", str(path), "--customer-col", "CustomerID", "--timestamp-col",
            "InvoiceDate", "--amount", "Quantity * UnitPrice", "--order-col", "InvoiceNo",
            "--churn-horizon-days", "90", "--clv-horizon-days", "90", "--threads", "1"]
    try:
        first = CliRunner().invoke(app, args)
        assert first.exit_code == 0, first.output
        run = mlflow.search_runs(experiment_names=["lifecast"], output_format="list")[0]
        second = CliRunner().invoke(app, args)
        assert second.exit_code == 0, second.output
        listed = CliRunner().invoke(app, ["models"])
        assert listed.exit_code == 0, listed.output
    finally:
        mlflow.set_tracking_uri(previous)
    assert "the value model learned nothing at 2011-12-06" in first.output
    value = first.output.split("value model vs BG/NBD + Gamma-Gamma")[1].split("MLflow run")[0]
    gini = next(row for row in value.splitlines() if row.strip().startswith("normalized_gini"))
    assert gini.split() == ["normalized_gini", "n/a", "n/a", "n/a"]
    assert "lifecast-clv v1: promoted: no champion yet (normalized_gini n/a)" in first.output
    assert "lifecast-churn v1: promoted: no champion yet (roc_auc 0.500)" in first.output
    metrics, tags = run.data.metrics, run.data.tags
    assert "clv_mae" in metrics and "clv_normalized_gini" not in metrics
    assert metrics["churn_min_child_samples"] == 20 and metrics["clv_min_child_samples"] == 20
    assert tags["metrics_warning"].startswith("metrics n/a (shown as n/a, not logged")
    assert ("lifecast-clv v2: kept champion v1: normalized_gini n/a for both (the same "
            "settings as this run") in second.output
    table = listed.output.split("decisions:")[0]
    clv = [row.split() for row in table.split("lifecast-clv (")[1].strip().splitlines()[2:]]
    # normalized_gini, after "tuned" (no): n/a for both versions
    assert len(clv) == 2 and all(row[row.index("no") + 1] == "n/a" for row in clv), clv


def test_a_search_scores_a_model_that_learned_nothing_as_no_skill() -> None:
    """`--tune` on a tiny log stopped at its first trial ("normalized_gini is undefined when
    predicted is constant"). A constant value model ranks nobody: Gini 0, as a constant
    churn model's ROC-AUC is 0.5."""
    from training.models import TrainConfig
    from training.tuning import prepare, score_config

    data = prepare(_first_customers(8), DEMO_MAPPING, None, TrainConfig(**CONFIG))
    scores = score_config(data, TrainConfig(**CONFIG))
    assert (scores["churn_roc_auc"], scores["value_normalized_gini"]) == (0.5, 0.0)
    assert scores["objective"] == 0.5


def test_a_search_that_cannot_score_any_trial_says_so_before_it_starts() -> None:
    from features.contract import DataValidationError
    from features.naming import command_line
    from training.tuning import _check_scorable

    cuts = {"churn": pd.Timestamp("2011-06-01"), "value": pd.Timestamp("2011-05-02")}
    ok_c = pd.DataFrame({"churned": [0, 1, 1]})
    ok_v = pd.DataFrame({"future_value": [0.0, 10.0, 3.0]})
    _check_scorable(ok_c, ok_v, cuts, "shop.csv")
    with pytest.raises(DataValidationError) as err:
        _check_scorable(pd.DataFrame({"churned": [1, 1, 1]}),
                        pd.DataFrame({"future_value": [0.0, 0.0, 0.0]}), cuts, "shop.csv")
    assert err.value.source == "shop.csv"
    assert str(err.value) == (
        "tune_config cannot score its trials: every one of the 3 customers held out at "
        "2011-06-01 has churned = 1, so ROC-AUC is undefined; the 3 customers held out at "
        "2011-05-02 all spend the same, so normalized Gini is undefined. Train without "
        "tuning (a search needs more customers or a shorter horizon)")
    with command_line(), pytest.raises(DataValidationError) as err:  # as `lifecast train` runs
        _check_scorable(pd.DataFrame({"churned": [1, 1, 1]}), ok_v, cuts, "shop.csv")
    assert str(err.value).startswith("--tune cannot score its trials: ")
    assert str(err.value).endswith(". Train without --tune (a search needs more customers "
                                   "or a shorter horizon)")
    with pytest.raises(DataValidationError, match="normalized Gini is undefined"):
        _check_scorable(ok_c, pd.DataFrame({"future_value": [5.0, 5.0, 5.0]}), cuts, "x")


def test_backtest_on_a_tiny_log_reports_what_it_can() -> None:
    from training.pipeline import backtest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bt = backtest(_first_customers(8), "2011-09-01", DEMO_MAPPING, CONFIG)
    assert bt.metrics_warning in [str(w.message) for w in caught]
    assert bt.metrics_warning.startswith("metrics n/a: value at 2011-09-01 (")
    assert "MLflow" not in bt.metrics_warning  # backtest logs nothing
    value = bt.metrics[bt.metrics["target"] == "value"].set_index("metric")
    assert value.loc[["normalized_gini", "spearman"], "model"].isna().all()
    assert value.loc[["mae", "aggregate_bias"], "model"].notna().all()
    assert len(bt.predictions) == bt.predictions["customer_id"].nunique() > 0


@pytest.mark.parametrize(("label", "what"), [(0, "stayed: nobody churned"),
                                             (1, "churned: nobody bought again")])
def test_one_churn_label_in_every_training_row_says_where_and_what_to_do(tiny, label,
                                                                         what) -> None:
    from training.models import TrainConfig

    result, _ = tiny
    frame = result.eval_frames["churn"].copy()
    frame.loc[frame["churned"].notna(), "churned"] = label
    last = frame.loc[frame["churned"].notna(), "cutoff"].max()
    train_rows = frame[frame["churned"].notna() & (frame["cutoff"] < last)]
    cuts = sorted(pd.Timestamp(c).date() for c in train_rows["cutoff"].unique())
    with pytest.raises(ValueError) as err:
        ChurnModel(TrainConfig(**CONFIG)).fit(frame)
    assert str(err.value) == (
        f"every one of the {len(train_rows)} training rows (snapshots {cuts[0]} to {cuts[-1]}) "
        f"{what} within the 90-day horizon, so a churn model cannot be fit: use a log with "
        f"more customers or more history, or another churn horizon")
