"""Hyperparameter search (`training.tuning`) on a small synthetic log, with a real MLflow
SQLite store in a temporary folder.

Three trials with few boosting rounds: with fewer trials than the TPE sampler's startup
trials the suggestions come from the seeded sampler alone, and the scores are checked for
exact repeatability separately (they drive the later, model-based suggestions).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking._tracking_service import utils as tracking_utils

from features.config import FeatureConfig
from training import tracking, tuning
from training.models import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
AS_OF = "2024-01-01"
CONFIG = TrainConfig(
    features=FeatureConfig(churn_horizon_days=90, clv_horizon_days=90, snapshot_every_days=30,
                           n_snapshots=4),
    n_estimators=60, early_stopping_rounds=20, num_threads=1,
)
TRIALS = 3


def _generate() -> pd.DataFrame:
    """~1,400 customers over two years (`bench/synthetic.py`, or a small fallback)."""
    path = ROOT / "bench" / "synthetic.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("_lifecast_bench_synthetic", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses need the module registered
        spec.loader.exec_module(module)
        return module.generate_transactions(15_000, seed=1, start="2022-01-01", days=730)
    rng = np.random.default_rng(1)
    rows = []
    for c in range(1_500):
        t = rng.uniform(0, 600)
        end = t + rng.exponential(300)
        rate = rng.gamma(1.0, 1 / 30)
        while t < min(end, 730):
            rows.append((c, pd.Timestamp("2022-01-01") + pd.Timedelta(days=float(t)),
                         float(rng.lognormal(3, 0.6))))
            t += rng.exponential(1 / rate)
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])


@pytest.fixture(scope="module")
def transactions() -> pd.DataFrame:
    return _generate()


@pytest.fixture(scope="module")
def prepared(transactions: pd.DataFrame) -> tuning.TuningData:
    return tuning.prepare(transactions, None, AS_OF, CONFIG)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A fresh SQLite store (one per module: creating it takes seconds); the environment's
    MLFLOW_TRACKING_URI is ignored and the global tracking URI restored afterwards."""
    previous = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setattr(tracking, "_last_set_uri", None)
        uri = tracking.configure(tmp_path_factory.mktemp("mlflow"))
        try:
            yield uri
        finally:
            while mlflow.active_run() is not None:
                mlflow.end_run()
            mlflow.set_tracking_uri(previous)


def _tune_runs(client: mlflow.MlflowClient, experiment_id: str) -> list:
    return client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{tuning.TUNE_STEP_TAG}` = '{tuning.TUNE_RUN_NAME}'",
    )


def _children(client: mlflow.MlflowClient, experiment_id: str, parent: str) -> list:
    return client.search_runs(
        [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
    )


def _within_bounds(config: TrainConfig) -> None:
    for name, (low, high, _) in tuning.SEARCH_SPACE.items():
        value = getattr(config, name)
        assert low <= value <= high, (name, value)
        if name in ("num_leaves", "max_depth", "min_child_samples"):
            assert isinstance(value, int), name


def test_no_trials_returns_the_config_unchanged() -> None:
    # nothing is loaded or imported: the transactions are not even looked at
    assert tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=0) is CONFIG
    assert tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=-1) is CONFIG


def test_missing_optuna_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    with pytest.raises(ImportError, match=r"pip install 'lifecast\[tune\]'"):
        tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=1)


def test_holdout_is_the_latest_labelled_snapshot(prepared: tuning.TuningData) -> None:
    fit = prepared.fit
    for key, label, rows in (("churn", "churned", prepared.eval_churn),
                             ("value", "future_value", prepared.eval_value)):
        cut = prepared.eval_cutoffs[key]
        assert not rows.empty and (rows["cutoff"] == cut).all()
        assert rows[label].notna().all()
        # the fit frame keeps the held-out rows' features but never their labels, and
        # every label it keeps comes from an earlier snapshot
        assert fit.loc[fit["cutoff"] == cut, label].isna().all()
        assert (fit.loc[fit[label].notna(), "cutoff"] < cut).all()
        # the outcome window ends on or before as_of: nothing after it was read
        horizon = CONFIG.features.churn_horizon_days if key == "churn" \
            else CONFIG.features.clv_horizon_days
        assert cut + pd.Timedelta(days=horizon) <= pd.Timestamp(AS_OF)


def test_scores_repeat_exactly(transactions: pd.DataFrame, prepared: tuning.TuningData
                               ) -> None:
    again = tuning.prepare(transactions, None, AS_OF, CONFIG)
    pd.testing.assert_frame_equal(prepared.fit, again.fit, check_exact=True)
    first = tuning.score_config(prepared, CONFIG)
    assert tuning.score_config(again, CONFIG) == first
    assert first["objective"] == first["churn_roc_auc"] + first["value_normalized_gini"]
    assert 0.5 < first["churn_roc_auc"] <= 1
    assert 0 < first["value_normalized_gini"] <= 1


def test_tune_logs_nested_trials_and_is_deterministic(
    transactions: pd.DataFrame, prepared: tuning.TuningData, store: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    client = mlflow.MlflowClient()
    experiment_id = tracking._experiment_id(tracking.DEFAULT_EXPERIMENT)
    before = {r.info.run_id for r in _tune_runs(client, experiment_id)}
    best = tuning.tune_config(transactions, None, AS_OF, CONFIG, n_trials=TRIALS)
    assert isinstance(best, TrainConfig)
    _within_bounds(best)
    untouched = set(TrainConfig.model_fields) - set(tuning.SEARCH_SPACE) - {"n_estimators"}
    assert {k: getattr(best, k) for k in untouched} == {k: getattr(CONFIG, k) for k in untouched}
    # the tree cap the best trial had, which the registered models are then fit with
    assert best.n_estimators == tuning.tree_cap(CONFIG, best.learning_rate)

    parents = [r for r in _tune_runs(client, experiment_id) if r.info.run_id not in before]
    assert len(parents) == 1
    parent = parents[0]
    assert parent.data.params["n_trials"] == str(TRIALS)
    assert parent.data.params["sampler_seed"] == str(CONFIG.seed)
    horizons = {"churn_horizon_days": str(CONFIG.features.churn_horizon_days),
                "clv_horizon_days": str(CONFIG.features.clv_horizon_days)}
    assert parent.info.run_name == (f"tune {pd.Timestamp(AS_OF):%Y-%m-%d} churn "
                                    f"{CONFIG.features.churn_horizon_days}d clv "
                                    f"{CONFIG.features.clv_horizon_days}d")
    trials = _children(client, experiment_id, parent.info.run_id)
    assert len(trials) == TRIALS
    for run in trials:
        assert set(tuning.SEARCH_SPACE) <= set(run.data.params)
        assert horizons.items() <= run.data.params.items()  # comparable across searches
        assert {"tune_churn_roc_auc", "tune_clv_normalized_gini", "tune_objective"} <= set(
            run.data.metrics)
        assert "churn_roc_auc" not in run.data.metrics  # a train run's metric: not mixed
    assert horizons.items() <= parent.data.params.items()
    top = max(trials, key=lambda r: r.data.metrics["tune_objective"])
    assert parent.data.metrics["best_objective"] == top.data.metrics["tune_objective"]
    assert best.learning_rate == pytest.approx(float(top.data.params["learning_rate"]))
    assert best.num_leaves == int(top.data.params["num_leaves"])
    assert best.n_estimators == int(top.data.params["n_estimators"])
    assert parent.data.params["best_n_estimators"] == top.data.params["n_estimators"]

    # the same data, config and seed give the same config; another seed another one (the
    # frame is the same: test_scores_repeat_exactly shows that building it again changes
    # nothing)
    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    assert tuning.tune_config(transactions, None, AS_OF, CONFIG, n_trials=TRIALS) == best
    other = tuning.tune_config(transactions, None, AS_OF, CONFIG, n_trials=TRIALS, seed=7)
    _within_bounds(other)
    assert other != best


def test_a_trial_s_tree_cap_scales_with_its_learning_rate_and_a_capped_trial_is_named(
        prepared: tuning.TuningData, store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """At the 1,000-tree cap a trial of learning rate ~0.01 grew every tree (999 of 1,000 on
    Online Retail) without early stopping: under-fit, scored below what its learning rate
    can do, and nothing said so. Its cap now scales with its learning rate, and a trial
    that still reaches it is tagged and named in a warning."""
    assert tuning.tree_cap(CONFIG, 0.01) == 300  # 60 trees at 0.05: the same total step
    assert tuning.tree_cap(CONFIG, 0.05) == tuning.tree_cap(CONFIG, 0.1) == 60
    assert tuning.tree_cap(TrainConfig(), 0.01) == 5_000
    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    client = mlflow.MlflowClient()
    experiment_id = tracking._experiment_id(tracking.DEFAULT_EXPERIMENT)
    before = {r.info.run_id for r in _tune_runs(client, experiment_id)}
    tiny = CONFIG.model_copy(update={"n_estimators": 3})  # every trial reaches its cap
    with pytest.warns(UserWarning, match="stopped at their tree cap") as caught:
        best = tuning.tune_config(None, None, AS_OF, tiny, n_trials=2)
    parent = next(r for r in _tune_runs(client, experiment_id) if r.info.run_id not in before)
    trials = sorted(_children(client, experiment_id, parent.info.run_id),
                    key=lambda r: int(r.data.tags["optuna.trial"]))
    message = str(caught[-1].message)
    assert "2 of 2 trials" in message and "raise n_estimators" in message
    for run in trials:
        lr = float(run.data.params["learning_rate"])
        cap = tuning.tree_cap(tiny, lr)
        assert int(run.data.params["n_estimators"]) == cap
        assert run.data.metrics["tune_churn_reached_cap"] == 1.0
        said = (f"trial {run.data.tags['optuna.trial']} (learning_rate {lr:.4g}: churn and "
                f"value models at {cap:,} trees)")
        assert run.data.tags[tuning.TREE_CAP_TAG] == said
        assert said in message
    assert best.n_estimators == tuning.tree_cap(tiny, best.learning_rate)


def test_trials_nest_under_the_active_run(prepared: tuning.TuningData, store: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # the frame is the one tested above; only the nesting is checked here
    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    client = mlflow.MlflowClient()
    experiment_id = tracking._experiment_id(tracking.DEFAULT_EXPERIMENT)
    tune_runs = len(_tune_runs(client, experiment_id))
    with mlflow.start_run(experiment_id=experiment_id, run_name="outer") as outer:
        tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=2)
        assert mlflow.active_run().info.run_id == outer.info.run_id  # left as it was
    assert len(_children(client, experiment_id, outer.info.run_id)) == 2
    assert len(_tune_runs(client, experiment_id)) == tune_runs  # no parent run of its own
    # and under an explicitly named parent, with no run active
    with mlflow.start_run(experiment_id=experiment_id, run_name="named") as named:
        parent_id = named.info.run_id
    tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=1, parent_run_id=parent_id)
    assert mlflow.active_run() is None
    assert len(_children(client, experiment_id, parent_id)) == 1


def test_nothing_is_logged_without_tracking(prepared: tuning.TuningData,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    best = tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=1)
    _within_bounds(best)
    assert not mlflow.is_tracking_uri_set()
    assert mlflow.active_run() is None


def test_trials_report_through_progress_and_optuna_says_nothing(
        prepared: tuning.TuningData, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    """`lifecast train --tune 3` printed Optuna's "[I 2026-...] Trial 0 finished with value
    ... and parameters: {...}" lines; one line per trial comes through ``progress`` now."""
    import optuna

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    lines: list[str] = []
    capfd.readouterr()
    tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=2, progress=lines.append)
    out, err = capfd.readouterr()
    assert "Trial" not in out + err and "[I " not in out + err
    assert [line.split(":")[0] for line in lines] == ["trial 1 of 2", "trial 2 of 2"]
    assert all("best so far" in line for line in lines)
    assert optuna.logging.get_verbosity() == optuna.logging.INFO  # given back


def test_a_tuned_training_run_and_its_tune_run_name_each_other(
    transactions: pd.DataFrame, prepared: tuning.TuningData, store: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """What `lifecast train --tune N` does: the search, then the training run with its
    parameters, each run tagged with the other's id."""
    from training.pipeline import train

    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)  # tested elsewhere
    client = mlflow.MlflowClient()
    experiment_id = tracking._experiment_id(tracking.DEFAULT_EXPERIMENT)
    before = {r.info.run_id for r in _tune_runs(client, experiment_id)}
    best = tuning.tune_config(transactions, None, AS_OF, CONFIG, n_trials=1)
    tune_id = tuning.last_tune_run_id()
    assert [r.info.run_id for r in _tune_runs(client, experiment_id)
            if r.info.run_id not in before] == [tune_id]
    summary = tracking.log_training(train(transactions, as_of=AS_OF, config=best),
                                    source="synthetic", promote="never", tune_run_id=tune_id)
    assert client.get_run(summary.run_id).data.tags[tracking.TUNE_RUN_TAG] == tune_id
    assert client.get_run(summary.run_id).info.run_name.endswith("d tuned")
    assert client.get_run(tune_id).data.tags[tracking.TRAIN_RUN_TAG] == summary.run_id
    # promoting the tune run, or one of its trials, names the run that has the models
    trial = client.search_runs([experiment_id],
                               f"tags.mlflow.parentRunId = '{tune_id}'")[0].info.run_id
    for wrong in (tune_id, trial):
        with pytest.raises(ValueError) as info:
            tracking.promote_run(wrong)
        assert (f"no registered models come from run {wrong}: it is a --tune run or trial; "
                f"the train run that used its parameters, {summary.run_id}, registered the "
                f"models (lifecast promote --run {summary.run_id})") in str(info.value)
    # trials nested under a run of the caller's: no tune run of its own to link
    with mlflow.start_run(experiment_id=experiment_id, run_name="outer"):
        tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=1)
    assert tuning.last_tune_run_id() is None


def test_the_search_goes_to_the_chosen_experiment(prepared: tuning.TuningData, store: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """`lifecast train --tune N --experiment X`: the tune run and its trials are in X."""
    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    tuning.tune_config(None, None, AS_OF, CONFIG, n_trials=1, experiment="tune study")
    client = mlflow.MlflowClient()
    parent = client.get_run(tuning.last_tune_run_id())
    assert client.get_experiment(parent.info.experiment_id).name == "tune study"
    assert len(_children(client, parent.info.experiment_id, parent.info.run_id)) == 1


def test_an_interrupted_search_or_training_leaves_no_tune_run(
    transactions: pd.DataFrame, prepared: tuning.TuningData, store: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:
    """Ctrl-C during `lifecast train --tune N`: the command says nothing it was writing was
    kept, but the search's ``tune`` run and its finished trials stayed (FAILED, or FINISHED
    and linked to no training run when the Ctrl-C came after the search), and Optuna printed
    a "[W ...] Trial 1 failed" traceback. Now the tune run and its trials are deleted when
    the search or the training after it stops, and Optuna says nothing."""
    from mlflow.entities import ViewType
    from typer.testing import CliRunner

    from serving.cli import app

    monkeypatch.setattr(tuning, "prepare", lambda *args, **kwargs: prepared)
    client = mlflow.MlflowClient()
    experiment_id = tracking._experiment_id(tracking.DEFAULT_EXPERIMENT)

    def active_tune_runs() -> set[str]:
        return {r.info.run_id for r in client.search_runs(
            [experiment_id], filter_string=f"tags.`{tuning.TUNE_STEP_TAG}` = "
                                           f"'{tuning.TUNE_RUN_NAME}'",
            run_view_type=ViewType.ACTIVE_ONLY)}

    before = active_tune_runs()
    calls = {"n": 0}
    real = tuning.score_config

    def second_trial_interrupted(data, config):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(data, config)

    monkeypatch.setattr(tuning, "score_config", second_trial_interrupted)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune_config(transactions, None, AS_OF, CONFIG, n_trials=3)
    assert active_tune_runs() == before
    deleted = client.search_runs([experiment_id], run_view_type=ViewType.DELETED_ONLY,
                                 filter_string="attributes.run_name = 'trial 0'")
    assert deleted  # the finished trial went with its search
    assert "Trial 1 failed" not in capfd.readouterr().err

    # the search finished, the training after it was interrupted: the command line
    monkeypatch.setattr(tuning, "score_config", real)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(tracking, "_last_set_uri", tracking._last_set_uri)
    monkeypatch.setattr(tracking, "_last_was_users", tracking._last_was_users)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    monkeypatch.setattr(tracking, "_last_was_users", True)

    def interrupted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise KeyboardInterrupt

    import training.pipeline

    monkeypatch.setattr(training.pipeline, "train", interrupted)
    log = tmp_path / "log.parquet"
    transactions.to_parquet(log)
    monkeypatch.chdir(tmp_path)
    res = CliRunner().invoke(app, ["train", "-t", str(log), "--churn-horizon-days", "90",
                                   "--clv-horizon-days", "90", "--as-of", AS_OF,
                                   "--tune", "1", "--threads", "1"])
    assert res.exit_code == 130, res.output
    assert "interrupted by Ctrl-C (SIGINT)" in res.output
    assert active_tune_runs() == before
