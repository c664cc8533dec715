"""Train, backtest and score flows on the bundled real-data extract, and their errors."""

from __future__ import annotations

import re
import warnings

import pandas as pd
import pytest

from features import FeatureConfig, build_features, build_labels
from features.contract import DataValidationError
from training.models import TrainConfig
from training.pipeline import (
    OUTPUT_COLUMNS,
    _check_history,
    backtest,
    default_as_of,
    predict_customers,
    train,
)


def test_train_evaluates_models_that_saw_no_outcome_after_the_evaluation_cutoff(
        demo_train_result):
    r = demo_train_result
    horizon = {"churn": 90, "value": 90}
    for kind, model in r.eval_models.items():
        used = [pd.Timestamp(c) for c in model.train_cutoffs_] + [
            pd.Timestamp(model.valid_cutoff_)]
        # every outcome window the evaluated model learned from ends by the evaluation
        # cutoff: the fit snapshot just before it (30 days earlier) would see 60 of its days
        assert max(used) + pd.Timedelta(days=horizon[kind]) <= r.eval_cutoffs[kind]
        assert r.eval_frames[kind]["cutoff"].max() < r.eval_cutoffs[kind]
    # the registered models learned from everything up to as_of: the evaluation snapshot
    # is the latest one, their validation snapshot
    for model, kind in ((r.models.churn, "churn"), (r.models.value, "value")):
        assert pd.Timestamp(model.valid_cutoff_) == r.eval_cutoffs[kind]
    # the evaluation window ends exactly at as_of: nothing after it was read
    assert r.eval_cutoffs["churn"] + pd.Timedelta(days=90) <= r.models.as_of
    assert set(r.evaluation) == {"churn", "value"}
    for table in r.evaluation.values():
        assert list(table.columns) == ["metric", "model", "baseline", "better"]


def test_train_evaluates_exactly_as_a_backtest_at_its_evaluation_cutoff(
        demo_transactions, demo_config, demo_train_result):
    r = demo_train_result
    cut = r.eval_cutoffs["churn"]
    assert r.eval_cutoffs["value"] == cut  # equal horizons: one evaluation cutoff
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bt = backtest(demo_transactions, cut, config=demo_config)
    for kind, table in r.evaluation.items():
        theirs = bt.metrics[bt.metrics["target"] == kind].set_index("metric")
        ours = table.set_index("metric")
        # the same fits on the same rows; the rows come in another order (the frame's
        # snapshot against backtest's population), which moves a few figures by ~1e-5 (the
        # leak this guards against moved the Brier score by 0.017 and ECE by 0.08)
        for col in ("model", "baseline"):
            pd.testing.assert_series_equal(ours[col], theirs[col], rtol=1e-4,
                                           check_names=False)


def test_predict_customers_output_contract(demo_train_result):
    r = demo_train_result
    rows = r.frame[r.frame["cutoff"] == r.eval_cutoffs["churn"]].head(50)
    out = predict_customers(r.models, rows)
    assert list(out.columns[: len(OUTPUT_COLUMNS)]) == OUTPUT_COLUMNS
    assert out["customer_id"].is_unique and len(out) == len(rows)
    assert set(out["churn_risk"]) <= {"low", "medium", "high"}
    pd.testing.assert_series_equal(
        out["value_at_risk"], out["churn_probability"] * out["predicted_clv"],
        check_names=False,
    )


def test_backtest_scores_everyone_and_compares_with_baseline(demo_transactions, demo_config):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = backtest(demo_transactions, "2011-09-01", config=demo_config)
    # the demo log starts on 2010-12-01: 274 days before the cutoff, and the user is told
    assert any("covers 274 days (from 2010-12-01), less than a year" in str(w.message)
               for w in caught)
    preds = result.predictions
    assert result.observed and result.metrics is not None
    assert {"customer_id", "churn_probability", "predicted_clv", "expected_orders", "p_alive",
            "segment", "lifecycle_stage", "churned", "actual_value"} <= set(preds.columns)
    assert preds["customer_id"].is_unique
    metrics = set(result.metrics["metric"])
    assert {"roc_auc", "brier", "normalized_gini", "decile_mape", "aggregate_bias"} <= metrics


def test_backtest_without_observed_outcome_has_no_metrics(demo_transactions, demo_config):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = backtest(demo_transactions, "2011-11-15", config=demo_config)
    assert not result.observed and result.metrics is None
    assert "churned" not in result.predictions.columns


def test_backtest_evaluates_the_churn_window_the_data_covers(demo_transactions, demo_config):
    """The demo log ends 2011-12-09: from 2011-10-15 a 45-day churn window is covered, a
    90-day value window is not. Churn is evaluated (as a backtest with both at 45 days
    evaluates it); value is not, and nothing says it was."""
    features = demo_config.features.model_copy(update={"churn_horizon_days": 45})
    config = demo_config.model_copy(update={"features": features})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = backtest(demo_transactions, "2011-10-15", config=config)
    assert not result.observed and result.evaluated == ("churn",)
    assert set(result.metrics["target"]) == {"churn"}
    assert "churned" in result.predictions and "actual_value" not in result.predictions
    # the churn labels are the real outcomes after the cutoff
    labels = build_labels(demo_transactions, "2011-10-15", 45)
    got = result.predictions.set_index("customer_id")["churned"]
    pd.testing.assert_series_equal(got.sort_index(),
                                   labels.set_index("customer_id")["churned"].sort_index(),
                                   check_dtype=False, check_index_type=False)
    assert {"load", "training_frame", "churn_fit", "value_fit", "evaluation"} <= set(
        result.timings)


def test_horizon_longer_than_history_is_a_clear_error(demo_transactions):
    """A Python caller is told the config field and parameter they set (it was told
    "--clv-horizon-days 365 is too long ... before --as-of", flags it never typed); the
    command line names the flags (`test_a_too_long_horizon_names_the_flags_on_the_command_line`)."""
    config = TrainConfig(features=FeatureConfig(churn_horizon_days=90, clv_horizon_days=365))
    with pytest.raises(DataValidationError,
                       match=r"^config\.features\.clv_horizon_days=365 is too long") as info:
        train(demo_transactions, config=config)
    # the first message states everything train needs (its evaluation fits a year earlier)
    # and the longest horizon that would do (found by bisection: it passes, one more fails)
    msg = str(info.value)
    assert "--" not in msg
    # the evaluation cutoff is on the snapshot grid (every 30 days back from as_of minus the
    # shorter horizon): 365 - 90 = 275 days earlier rounds back to 300, so 841 days, not 791
    assert "which needs 841 days of history before as_of in all" in msg
    longest = int(re.search(r"The longest config\.features\.clv_horizon_days this history "
                            r"allows here is (\d+): use a shorter horizon", msg).group(1))
    for days, fits in ((longest, True), (longest + 1, False)):
        fcfg = FeatureConfig(churn_horizon_days=90, clv_horizon_days=days)
        try:
            _check_history(demo_transactions, default_as_of(demo_transactions),
                           TrainConfig(features=fcfg), evaluate=True)
        except DataValidationError:
            assert not fits
        else:
            assert fits
    # an evaluation cutoff before the data is said as such, not as "covers -N days"
    config = TrainConfig(features=FeatureConfig(churn_horizon_days=90,
                                                clv_horizon_days=30_000))
    with pytest.raises(DataValidationError, match=r"the evaluation cutoff, 1929-\d\d-\d\d, "
                       r"is before the data starts \(2010-12-01; \d+ days before as_of\)"):
        train(demo_transactions, config=config)


def test_a_cutoff_before_the_data_says_so(demo_transactions, demo_config, demo_train_result):
    """Not that the horizon is too long: that there would be no customers at all, calling
    the date by the name it was given (as_of for train and score, which said "cutoff") and
    suggesting one that suits the call (score's suggestion was a backtest cutoff)."""
    from training.scoring import score_customers

    last_day = (pd.Timestamp(demo_transactions.report.last_event).normalize()
                + pd.Timedelta(days=1)).date()
    for call, name, example in (
            (lambda: backtest(demo_transactions, "2010-06-01", config=demo_config),
             "cutoff", r"\d{4}-\d\d-\d\d"),
            (lambda: train(demo_transactions, as_of="2010-06-01", config=demo_config),
             "as_of", str(last_day)),
            (lambda: score_customers(demo_train_result.models, demo_transactions,
                                     as_of="2010-06-01"),
             "as_of", str(last_day))):
        with pytest.raises(DataValidationError, match=fr"^{name} 2010-06-01 00:00:00 is at or "
                           fr"before the first event .* choose a {name} after 2010-12-01, "
                           fr"e.g. {example}\.$"):
            call()


def test_as_of_long_after_the_data_is_a_clear_error(demo_transactions, demo_config):
    """Training windows after the data would label every customer churned: train and
    backtest refuse a date more than `stale_after_days` (30) after the last event, and
    say which date works. Up to 30 days after it is still allowed."""
    last = pd.Timestamp(demo_transactions.report.last_event)
    with pytest.raises(DataValidationError) as info:
        train(demo_transactions, as_of="2030-01-01", config=demo_config)
    msg = str(info.value)
    assert msg.startswith(f"as_of 2030-01-01 is {(pd.Timestamp('2030-01-01') - last).days:,} "
                          f"days after the last event in ")
    assert f"no later than {(last + pd.Timedelta(days=30)).date()}" in msg
    assert f"the day after the last event, {(last + pd.Timedelta(days=1)).date()}" in msg
    with pytest.raises(DataValidationError, match=r"^cutoff 2012-02-01 is \d+ days after"):
        backtest(demo_transactions, "2012-02-01", config=demo_config)
    from features.pipeline import check_labels_in_data

    check_labels_in_data(demo_transactions, last + pd.Timedelta(days=30), demo_config.features,
                         "--as-of")
    # ... and train then trains as of the day after the last event, saying so: its
    # snapshots' windows would run past the data (everyone churned), its evaluation
    # snapshot would have no outcomes
    from training.pipeline import training_as_of

    day_after = (last + pd.Timedelta(days=1)).normalize()
    with pytest.warns(UserWarning, match=rf"^as_of {(last + pd.Timedelta(days=20)).date()} is "
                                         rf"after the last event in .*: training as of "
                                         rf"{day_after.date()}, the day after it"):
        assert training_as_of(demo_transactions, last + pd.Timedelta(days=20),
                              demo_config) == day_after
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert training_as_of(demo_transactions, None, demo_config) == day_after


def test_no_repeat_customers_is_a_clear_error():
    days = pd.date_range("2020-01-01", periods=600, freq="D")
    one_each = pd.DataFrame({"customer_id": [f"c{i}" for i in range(600)],
                             "timestamp": days, "amount": 10.0})
    config = TrainConfig(features=FeatureConfig(churn_horizon_days=60, clv_horizon_days=60))
    with warnings.catch_warnings():
        # fails before any snapshot's baseline warns that it cannot be fitted
        warnings.filterwarnings("error", message="baseline features left empty")
        with pytest.raises(DataValidationError) as info:
            train(one_each, config=config)
    assert str(info.value).startswith(
        "no repeat customers in pandas DataFrame before 2021-08-23: no customer bought on "
        "two different days, so everyone churns in every snapshot")
    assert "check the customer id mapping" in str(info.value)


def test_no_repeat_customers_is_exit_2_on_the_command_line(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from serving.cli import app

    days = pd.date_range("2020-01-01", periods=600, freq="D")
    path = tmp_path / "one_each.csv"
    pd.DataFrame({"cust": [f"c{i}" for i in range(600)], "when": days,
                  "amount": 10.0}).to_csv(path, index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    res = CliRunner().invoke(app, ["train", "-t", str(path), "--customer-col", "cust",
                                   "--timestamp-col", "when", "--amount", "amount",
                                   "--churn-horizon-days", "60", "--clv-horizon-days", "60"])
    assert res.exit_code == 2, res.output
    assert "no repeat customers in" in res.output, res.output
    assert "one_each.csv before 2021-08-23: no customer bought on two" in res.output


def test_sample_snapshots_keeps_the_same_customers_in_every_snapshot():
    from training.pipeline import sample_snapshots

    ids = [f"c{i}" for i in range(50)]
    frame = pd.DataFrame({"cutoff": [1] * 50 + [2] * 40, "customer_id": ids + ids[:40]})
    config = TrainConfig(max_customers_per_snapshot=10)
    kept = sample_snapshots(frame, config)
    assert kept.groupby("cutoff").size().tolist() == [10, 10]
    first = set(kept.loc[kept.cutoff == 1, "customer_id"])
    second = set(kept.loc[kept.cutoff == 2, "customer_id"])
    assert len(first & second) >= 7  # a consistent panel, not two independent draws
    pd.testing.assert_frame_equal(kept, sample_snapshots(frame, config))
    assert len(sample_snapshots(frame, TrainConfig(max_customers_per_snapshot=0))) == 90


def test_a_flat_p_alive_is_called_out():
    """On Online Retail the BG/NBD fit finds no dropout (a -> 0): p_alive is 1 for everyone,
    and the output says so rather than pass it off as information."""
    import numpy as np

    from training.pipeline import _warn_if_p_alive_is_flat

    with pytest.warns(UserWarning, match=r"p_alive is 1 for all 3 customers: the BG/NBD "
                                         r"baseline finds no dropout"):
        _warn_if_p_alive_is_flat(np.array([1.0, 1 - 1e-9, 1.0]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_p_alive_is_flat(np.array([1.0, 0.97, 1.0]))
        _warn_if_p_alive_is_flat(np.array([1.0]))


def test_less_than_a_year_of_history_is_called_out():
    """Under a year of history no snapshot covers the prediction window's season: said, not
    hidden; a full year is not."""
    from types import SimpleNamespace

    from training.pipeline import _warn_if_under_a_year

    tx = SimpleNamespace(report=SimpleNamespace(first_event=pd.Timestamp("2010-12-01 08:26")))
    with pytest.warns(UserWarning, match=r"the data before 2011-11-30 covers 364 days \(from "
                                         r"2010-12-01\), less than a year: seasonal swings"):
        _warn_if_under_a_year(tx, pd.Timestamp("2011-11-30"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _warn_if_under_a_year(tx, pd.Timestamp("2011-12-02"))


def test_backtest_without_repeat_customers_fails_before_any_work():
    days = pd.date_range("2020-01-01", periods=600, freq="D")
    one_each = pd.DataFrame({"customer_id": [f"c{i}" for i in range(600)],
                             "timestamp": days, "amount": 10.0})
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="baseline features left empty")
        with pytest.raises(DataValidationError, match="no repeat customers in pandas "
                                                      "DataFrame before 2021-06-01"):
            backtest(one_each, "2021-06-01",
                     config={"features": {"churn_horizon_days": 60, "clv_horizon_days": 60}})


def test_predict_customers_refuses_features_of_several_cutoffs(demo_train_result,
                                                               demo_transactions):
    from features.pipeline import build_snapshots

    feats = build_snapshots(demo_transactions, ["2011-11-01", "2011-12-10"],
                            config=demo_train_result.models.config.features)
    with pytest.raises(ValueError, match=r"the features are at 2 cutoffs \(2011-11-01 "
                                         r"00:00:00 to 2011-12-10 00:00:00\): "
                                         r"predict_customers scores one cutoff at a time"):
        predict_customers(demo_train_result.models, feats)


def test_predict_customers_on_a_subset_fits_the_baseline_on_the_population(
        demo_train_result, demo_transactions):
    """predict_customers on 20 customers fitted BG/NBD + Gamma-Gamma on those 20 alone, and
    silently gave other churn probabilities (by up to 0.065) and values (by up to 179) than
    for the same customers scored with everyone. population= fits it on everyone; without
    it a subset warns."""
    models = demo_train_result.models
    everyone = build_features(demo_transactions, models.as_of,
                              config=models.config.features)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # p_alive is flat on this log
        whole = predict_customers(models, everyone).set_index("customer_id")
        subset = everyone.sample(20, random_state=1)
        with_pop = predict_customers(models, subset, population=everyone)
    assert list(with_pop["customer_id"]) == list(subset["customer_id"])
    pd.testing.assert_frame_equal(with_pop.set_index("customer_id"),
                                  whole.loc[list(subset["customer_id"])], check_exact=True)
    with pytest.warns(UserWarning, match=r"predict_customers fits the BG/NBD \+ Gamma-Gamma "
                      r"features on the rows it is given: 20 customers at cutoff [-\d: ]+, "
                      r"where the models were fit on [\d,]+\. .* "
                      r"population=everyone\)\)") as caught:
        predict_customers(models, subset)
    assert caught[0].filename == __file__
    with pytest.raises(ValueError, match=r"1 customer of features is not in population, "
                                         r"e\.g\. '\d+'"):
        predict_customers(models, subset, population=everyone[
            everyone["customer_id"] != subset["customer_id"].iloc[0]])
    earlier = build_features(demo_transactions, "2011-11-01", config=models.config.features)
    with pytest.raises(ValueError, match=r"population is at 2011-11-01 00:00:00, features at "
                                         r"2011-12-10"):
        predict_customers(models, subset, population=earlier)


def test_train_takes_its_config_as_a_dict():
    from training.pipeline import _train_config

    made = _train_config({"features": {"churn_horizon_days": 30}, "num_threads": 1})
    assert made == TrainConfig(features=FeatureConfig(churn_horizon_days=30), num_threads=1)
    assert _train_config(None) == TrainConfig()
    with pytest.raises(TypeError, match="config must be a TrainConfig or a dict"):
        _train_config("fast")


def test_daily_profile_and_data_differs_tell_the_same_log_from_another() -> None:
    """The same rows in another order, or the log extended or cut, are the same log before
    the earlier as-of; a changed, missing or shifted row is another log, and the reason
    names the first day that differs."""
    from features.contract import load_transactions
    from training.pipeline import data_differs

    log = pd.DataFrame({
        "customer_id": [1, 1, 2, 3, 2],
        "timestamp": pd.to_datetime(["2024-01-01 10:00", "2024-01-01 12:00", "2024-01-02 09:00",
                                     "2024-01-04 09:00", "2024-01-05 09:00"]),
        "amount": [10.0, 5.0, 7.5, 3.0, 2.0],
    })

    def profile(frame: pd.DataFrame, before: str = "2024-01-06") -> pd.DataFrame:
        return load_transactions(frame).daily_profile(before)

    full = profile(log)
    assert list(full["day"]) == ["2024-01-01", "2024-01-02", "2024-01-04", "2024-01-05"]
    assert list(full["rows"]) == [2, 1, 1, 1]
    assert list(profile(log, "2024-01-04")["day"]) == ["2024-01-01", "2024-01-02"]
    shuffled = profile(log.sample(frac=1, random_state=0))
    assert shuffled.equals(full)
    assert data_differs(full, profile(log, "2024-01-03"), "2024-01-03") is None  # cut
    assert data_differs(profile(log, "2024-01-03"), full, "2024-01-03") is None  # extended
    # a partial last day is not compared: the earlier run read only its morning
    assert data_differs(profile(log, "2024-01-01 11:00"), full, "2024-01-01 11:00") is None
    changed = log.assign(amount=[10.0, 5.0, 7.5, 3.5, 2.0])
    changed_profile = profile(changed)
    with warnings.catch_warnings():  # `lifecast train` printed pandas 3.1's deprecation of
        warnings.simplefilter("error")  # DataFrame.join's lsuffix/rsuffix
        data_differs(full, changed_profile, "2024-01-06")
    assert data_differs(full, changed_profile, "2024-01-06") == (
        "its events before 2024-01-06 differ from the other data's on 1 of 4 days (first "
        "2024-01-04: 1 row on both sides, with other values: customer ids (e.g. "
        "'0012345' against 12345), times (a time zone) or amounts)")
    # as many rows on a day, other amounts: "1,968 rows here, 1,968 there" read as no
    # difference at all (Online Retail scored with `amount: UnitPrice` after training on
    # `Quantity * UnitPrice`)
    doubled = pd.concat([log, log]).assign(amount=lambda d: d["amount"] * 2)
    assert data_differs(profile(pd.concat([log, log])), profile(doubled), "2024-01-06") == (
        "its events before 2024-01-06 differ from the other data's on 4 of 4 days (first "
        "2024-01-01: 4 rows on both sides, with other values: customer ids (e.g. "
        "'0012345' against 12345), times (a time zone) or amounts)")
    assert data_differs(full, profile(log.drop(index=1)), "2024-01-06") == (
        "its events before 2024-01-06 differ from the other data's on 1 of 4 days (first "
        "2024-01-01: 1 row here, 2 rows there)")  # said "1 rows here"
    extra = pd.concat([log, log.iloc[[2]].assign(timestamp=pd.Timestamp("2024-01-03"))])
    assert data_differs(full, profile(extra), "2024-01-06") == (
        "its events before 2024-01-06 differ from the other data's on 1 of 5 days (first "
        "2024-01-03: 1 row here, no rows there)")
    one_day = log.iloc[:2]
    assert data_differs(profile(one_day), profile(one_day.iloc[:1]), "2024-01-06") == (
        "its events before 2024-01-06 differ from the other data's on 1 of 1 day (first "
        "2024-01-01: 1 row here, 2 rows there)")
    later = log.assign(timestamp=log["timestamp"] + pd.Timedelta(days=30))
    assert data_differs(full, profile(later, "2024-03-01"), "2024-01-06") == (
        "it has no events before 2024-01-06 (the other data runs from 2024-01-01 to "
        "2024-01-05)")


def test_result_objects_document_every_field():
    """help(TrainResult) showed only the generated signature: the meaning of each field was
    in source comments, out of help()'s reach. train, backtest and score say what they
    return."""
    import dataclasses

    from training.pipeline import BacktestResult, FittedModels, TrainResult, backtest, train
    from training.scoring import ScoreResult, score

    for cls in (TrainResult, BacktestResult, ScoreResult, FittedModels):
        doc = cls.__doc__ or ""
        assert not doc.startswith(cls.__name__ + "("), cls.__name__
        missing = [f.name for f in dataclasses.fields(cls) if f"``{f.name}``" not in doc]
        assert not missing, (cls.__name__, missing)
    assert "Returns a `TrainResult`" in train.__doc__
    assert "Returns a `BacktestResult`" in backtest.__doc__
    assert "Returns a `ScoreResult`" in score.__doc__


def test_loaded_transactions_refuse_a_second_mapping_in_training_too(demo_transactions,
                                                                     demo_train_result):
    """build_features refused a mapping given with loaded transactions (it would be
    ignored); train, backtest, score_customers and tuning ignored it silently, so a changed
    amount expression trained on the old one."""
    from training.pipeline import backtest, train
    from training.scoring import score_customers

    other = {"customer_id": "CustomerID", "timestamp": "InvoiceDate", "amount": "UnitPrice"}
    calls = [lambda: train(demo_transactions, other),
             lambda: backtest(demo_transactions, "2011-09-01", other),
             lambda: score_customers(demo_train_result.models, demo_transactions, None, other),
             lambda: train(demo_transactions, table="sales")]
    for call in calls:
        with pytest.raises(ValueError, match="already loaded .*: leave (mapping|table) out"):
            call()


# --- a baseline that cannot be fitted stops nothing -----------------------------------------

#: 60-day horizons and a small model: the logs below are 400 days long
SMALL = {"features": {"churn_horizon_days": 60, "clv_horizon_days": 60}, "num_threads": 1,
         "n_estimators": 50}


def _heavy_tailed_spend(n: int = 200, seed: int = 0) -> pd.DataFrame:
    """A year of repeat buyers (152 customers, 1,011 orders) whose order values are
    log-normal with sigma 3: a few orders of thousands among orders of a few. Gamma-Gamma's
    fit then gives q <= 1 (an infinite mean order value) at every cutoff; BG/NBD fits."""
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for c in range(n):
        t, end = rng.uniform(0, 250), rng.uniform(0, 700)
        while t < min(end, 400):
            rows.append((f"c{c}", pd.Timestamp("2022-01-01") + pd.Timedelta(days=float(t)),
                         float(rng.lognormal(2.0, 3.0))))
            t += 1 + rng.exponential(40)
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])


def _baseline_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "baseline features left empty" in str(w.message)]


@pytest.fixture(scope="module")
def heavy_tailed_train():
    """(log, `train` result, warnings) on `_heavy_tailed_spend`."""
    log = _heavy_tailed_spend()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(log, config=SMALL)
    return log, result, _baseline_warnings(caught)


def test_train_goes_on_when_gamma_gamma_cannot_be_fitted(heavy_tailed_train):
    """It stopped with 'p contains NaN (152 of 152)': the Gamma-Gamma failure emptied every
    baseline feature, BG/NBD's churn probability too, and the comparison refused the NaN.
    Now the baseline's value metrics are n/a, the model's are there, BG/NBD's features and
    churn metrics are kept, and one warning says which part failed, where, why and what it
    means."""
    _, result, said = heavy_tailed_train
    assert len(said) == 1, said
    assert said[0].startswith(
        "baseline features left empty: Gamma-Gamma at 12 of 12 cutoffs (between 2022-02-10 "
        "and 2023-02-05; at 2023-02-05: Gamma-Gamma fit gave q = 0.858 <= 1: the population "
        "mean order value is infinite")
    assert ("so gg_expected_value, bg_clv are NaN there. The LightGBM models read NaN as a "
            "missing value. The baseline's value metrics at 2022-12-07 (152 of 152 customers "
            "have no baseline prediction) are n/a and not logged to MLflow; lifecast's own "
            "metrics and the champion rule do not depend on them. The value model's total is "
            "set by its validation snapshot alone") in said[0]
    assert result.baseline_warning == said[0]
    value = result.evaluation["value"]
    assert value["model"].notna().all()
    assert value["baseline"].isna().all() and set(value["better"]) == {"n/a"}
    churn = result.evaluation["churn"]
    assert churn["baseline"].notna().all() and "n/a" not in set(churn["better"])
    assert result.frame["bg_p_alive"].notna().all()
    assert result.frame[["gg_expected_value", "bg_clv"]].isna().all().all()
    assert result.models.value.anchor_ == 1.0


def test_backtest_goes_on_when_gamma_gamma_cannot_be_fitted(heavy_tailed_train):
    log, result, _ = heavy_tailed_train
    cut = result.eval_cutoffs["value"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bt = backtest(log, cut, config=SMALL)
    said = _baseline_warnings(caught)
    assert len(said) == 1 and said[0] == bt.baseline_warning
    assert "The baseline's value metrics at 2022-12-07 (152 of 152 customers" in said[0]
    value = bt.metrics[bt.metrics["target"] == "value"]
    assert value["baseline"].isna().all() and value["model"].notna().all()
    # the same evaluation as train's at that cutoff
    pd.testing.assert_series_equal(value["model"].reset_index(drop=True),
                                   result.evaluation["value"]["model"], rtol=1e-4)
    preds = bt.predictions
    assert preds["baseline_clv"].isna().all()
    assert preds[["p_alive", "expected_orders", "predicted_clv"]].notna().all().all()

    # without outcome data: predictions, no metrics, the same one warning
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        late = backtest(log, "2023-01-20", config=SMALL)
    assert late.metrics is None and late.predictions["predicted_clv"].notna().all()
    said = _baseline_warnings(caught)
    assert len(said) == 1 and "metrics" not in said[0].split("missing value.")[1]


def test_score_goes_on_when_gamma_gamma_cannot_be_fitted(heavy_tailed_train):
    from training.scoring import score_customers

    log, result, _ = heavy_tailed_train
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores, feats = score_customers(result.models, log)
    said = _baseline_warnings(caught)
    assert len(said) == 1
    assert said[0].startswith("baseline features left empty: Gamma-Gamma at 2023-02-05 "
                              "(Gamma-Gamma fit gave q = 0.858 <= 1")
    assert scores[["churn_probability", "predicted_clv", "p_alive",
                   "expected_orders"]].notna().all().all()
    assert feats["bg_clv"].isna().all()


def test_backtest_goes_on_when_bgnbd_does_not_converge(monkeypatch):
    """An optimiser that stops short (here: one iteration, no restart) makes BG/NBD fail at
    every cutoff: no baseline feature at all, every baseline metric n/a, and the warning
    names the part and the optimiser's message. Gamma-Gamma is not tried without BG/NBD."""
    import functools

    from training import baseline as baseline_module

    def one_step(minimize, *args, **kwargs):
        return minimize(*args, **{**kwargs, "options": {**kwargs["options"], "maxiter": 1}})

    monkeypatch.setattr(baseline_module, "_RESTARTS", 0)
    monkeypatch.setattr(baseline_module, "minimize",
                        functools.partial(one_step, baseline_module.minimize))
    log = _heavy_tailed_spend()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        bt = backtest(log, "2022-12-07", config=SMALL)
    said = _baseline_warnings(caught)
    assert len(said) == 1
    assert said[0].startswith(
        "baseline features left empty: BG/NBD at 10 of 10 cutoffs (between 2022-02-10 and "
        "2022-12-07; at 2022-12-07: BG/NBD fit did not converge: STOP: TOTAL NO. OF "
        "ITERATIONS REACHED LIMIT), so bg_p_alive, bg_p_no_purchase, bg_expected_orders, "
        "gg_expected_value, bg_clv are NaN there")
    assert ("The baseline's churn metrics at 2022-12-07 (152 of 152 customers have no "
            "baseline prediction) and value metrics at 2022-12-07 (152 of 152 customers have "
            "no baseline prediction) are n/a") in said[0]
    assert said[0].endswith("p_alive and expected_orders are NaN in the output for those "
                            "customers.")
    assert bt.metrics["baseline"].isna().all() and bt.metrics["model"].notna().all()
    assert bt.predictions[["churn_probability", "predicted_clv"]].notna().all().all()
    assert bt.predictions[["p_alive", "expected_orders"]].isna().all().all()


def test_a_non_finite_baseline_prediction_is_missing_not_fatal(heavy_tailed_train,
                                                                monkeypatch):
    """A prediction that overflows (inf or NaN from a fit that worked) is left out for the
    customers it concerns, and said; the others keep theirs."""
    import numpy as np

    from training.baseline import BetaGeoModel
    from training.scoring import score_customers

    log, result, _ = heavy_tailed_train
    plain = BetaGeoModel.expected_purchases

    def overflowing(self, *args, **kwargs):
        out = plain(self, *args, **kwargs)
        out[0] = np.inf
        return out

    monkeypatch.setattr(BetaGeoModel, "expected_purchases", overflowing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores, feats = score_customers(result.models, log)
    said = _baseline_warnings(caught)
    assert len(said) == 1
    assert said[0].startswith(
        "baseline features left empty: BG/NBD at 2023-02-05 (for 1 of 152 customers: its "
        "predictions are not finite), so bg_expected_orders, bg_clv are NaN there; "
        "Gamma-Gamma at 2023-02-05 (Gamma-Gamma fit gave q = 0.858 <= 1")
    assert "expected_orders is NaN in the output for those customers." in said[0]
    assert scores["expected_orders"].isna().sum() == 1
    assert scores["expected_orders"].isna().iloc[0] and scores["p_alive"].notna().all()
    assert np.isfinite(scores["churn_probability"]).all()


def test_invalid_baseline_input_is_still_an_error():
    """Only a fit the data cannot make is tolerated: input no fit should get (a NaN
    frequency: a bug upstream) still raises instead of leaving the features empty."""
    from training.models import add_baseline_features

    feats = pd.DataFrame({"cutoff": pd.Timestamp("2023-01-01"), "customer_id": ["a", "b"],
                          "frequency": [1.0, float("nan")], "recency": [3.0, 0.0],
                          "T": [10.0, 5.0], "monetary_value": [5.0, 0.0]})
    with pytest.raises(ValueError, match="frequency contains NaN"):
        add_baseline_features(feats, FeatureConfig())


@pytest.mark.slow  # ~13 s: a training run logged to MLflow with its plots and models
def test_train_command_shows_na_and_logs_no_baseline_value_metrics(tmp_path, monkeypatch):
    """On the command line: exit 0, the baseline's value metrics printed as n/a, none of
    them logged to MLflow (where the run says why in its ``baseline_warning`` tag), every
    plot drawn (the model alone where the baseline has no prediction) and the models
    registered by the champion rule on their own metrics."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils
    from typer.testing import CliRunner

    from serving.cli import app
    from training import tracking

    path = tmp_path / "heavy.csv"
    _heavy_tailed_spend().to_csv(path, index=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    previous = tracking_utils._tracking_uri
    try:
        res = CliRunner().invoke(app, [
            "train", "-t", str(path), "--customer-col", "customer_id", "--timestamp-col",
            "timestamp", "--amount", "amount", "--churn-horizon-days", "60",
            "--clv-horizon-days", "60", "--threads", "1"])
        assert res.exit_code == 0, res.output
        run = mlflow.search_runs(experiment_names=["lifecast"], output_format="list")[0]
    finally:
        mlflow.set_tracking_uri(previous)
    assert "baseline features left empty: Gamma-Gamma at 12 of 12 cutoffs" in res.output
    tables = res.output.split("churn model vs BG/NBD + Gamma-Gamma")[1].split("MLflow run")[0]
    churn, value = tables.split("value model vs BG/NBD + Gamma-Gamma")
    assert "n/a" not in churn and "nan" not in tables.lower()
    rows = value.strip().splitlines()[2:]
    assert len(rows) == 6 and all(row.split()[-2:] == ["n/a", "n/a"] for row in rows), value
    assert "lifecast-clv v1: promoted: no champion yet (normalized_gini" in res.output
    metrics, tags = run.data.metrics, run.data.tags
    assert "baseline_churn_roc_auc" in metrics and "clv_normalized_gini" in metrics
    assert not [m for m in metrics if m.startswith(("baseline_value_", "baseline_clv_"))]
    assert tags["baseline_warning"].startswith("baseline features left empty: Gamma-Gamma")
    assert "plots_skipped" not in tags
