"""Optional hyperparameter search for the LightGBM models (``lifecast train --tune N``).

`tune_config` runs an Optuna study (TPE sampler seeded with ``config.seed``, or ``seed``) over
a few LightGBM parameters of `TrainConfig` and returns the config with the best ones:

=====================  =====================  =========
parameter              range                  scale
=====================  =====================  =========
``learning_rate``      0.01 - 0.1             log
``num_leaves``         4 - 31                 linear
``max_depth``          2 - 6                  linear
``min_child_samples``  20 - 300               log
``feature_fraction``   0.5 - 1.0              linear
``lambda_l2``          0.1 - 30               log
=====================  =====================  =========

The tree cap scales with the learning rate: a trial of learning rate ``lr`` may grow
``n_estimators * config.learning_rate / lr`` trees (`tree_cap`; never fewer than
``config.n_estimators``), the number of trees that gives it the same total step as the
config's own, and the chosen config carries its cap, so the registered models are fit as
the best trial was. At the 1,000-tree cap a trial of learning rate 0.01 stopped at the cap,
under-fit, and scored below what its learning rate can do. A trial whose fit still reached
its cap is tagged ``lifecast.tree_cap`` and named in one warning.

The objective is time-based only: the training frame is built once at the earlier of
`training.pipeline.train`'s two evaluation cutoffs (features, labels and the BG/NBD +
Gamma-Gamma baseline features, customers per snapshot sampled as ``train`` samples them), so
that no trial sees the outcomes `train` will evaluate the chosen settings on; the most recent
labelled snapshot of each label is held out, both models are fit on the snapshots before it
with the trial's parameters (the latest of those validates early stopping and calibration, as
always) and scored on the held-out snapshot. A trial's score is

    objective = ROC-AUC of churn + normalized Gini of value          (maximized)

the sum of the two metrics the champion rule uses (`training.tracking.PRIMARY_METRIC`). Both
are rank measures with 1 as a perfect ranking (normalized Gini 0 and AUC 0.5 are random; for a
0/1 target the Gini equals ``2 * AUC - 1``), so an equal weight gives neither model the final
say and the two models share one parameter set, as they share one `TrainConfig`. No random
split is made anywhere: the held-out snapshot is later than every snapshot the models see.

MLflow: when a run is active, or a tracking URI is set (``MLFLOW_TRACKING_URI`` or
`training.tracking.configure`), every trial is logged as a nested run (``trial <n>``: its
parameters and the horizons, ``tune_churn_roc_auc``, ``tune_clv_normalized_gini``,
``tune_objective`` and the best iteration of each model, prefixed so that they do not sort
with the train runs' metrics of the same names, measured on another snapshot) under the
active run, under ``parent_run_id`` when given, or
else under a parent run ``tune <as-of> churn <N>d clv <N>d`` (numbered ``#2``, ... when
the experiment has one of that name; tag ``lifecast.step=tune``)
started here in ``experiment`` (`training.tracking.experiment_name`: by default
``$MLFLOW_EXPERIMENT_NAME``, else ``lifecast``), which also gets the best parameters and
score. With no tracking set up nothing is logged and no global MLflow state is
touched.

Optuna is an optional extra: ``pip install 'lifecast[tune]'``. It is imported only when a
search actually runs.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from features.config import ColumnMapping
from features.contract import DataValidationError
from features.naming import named
from features.pipeline import build_training_frame
from features.warn import warn
from training.metrics import UndefinedMetricError, normalized_gini, roc_auc
from training.models import (
    TREE_CAP_TAG,
    ChurnModel,
    TrainConfig,
    ValueModel,
    add_baseline_features,
)
from training.pipeline import (
    _horizons,
    _labelled_cutoffs,
    _load,
    evaluation_cutoffs,
    horizon_name,
    sample_snapshots,
    training_as_of,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["SEARCH_SPACE", "TUNE_RUN_NAME", "TUNE_STEP_TAG", "TuningData", "prepare",
           "score_config", "tune_config"]

#: name -> (low, high, log scale); integers where the `TrainConfig` field is an int.
SEARCH_SPACE: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0.01, 0.1, True),
    "num_leaves": (4, 31, False),
    "max_depth": (2, 6, False),
    "min_child_samples": (20, 300, True),
    "feature_fraction": (0.5, 1.0, False),
    "lambda_l2": (0.1, 30.0, True),
}
_INT_PARAMS = ("num_leaves", "max_depth", "min_child_samples")
#: Name of the parent run started when no MLflow run is active.
TUNE_RUN_NAME = "tune"
#: The tag that marks the parent run of a search (value `TUNE_RUN_NAME`); its name is
#: ``tune <as-of> churn <N>d clv <N>d``.
TUNE_STEP_TAG = "lifecast.step"
#: The prefix of a trial run's metrics (``tune_churn_roc_auc``, ``tune_objective`` ...).
TRIAL_METRIC_PREFIX = "tune_"
#: The id of the last ``tune`` run `tune_config` started in this process (`last_tune_run_id`).
_last_tune_run: str | None = None
_INSTALL_HINT = "pip install 'lifecast[tune]'"


@dataclass(frozen=True)
class TuningData:
    """The training frame built once at `train`'s evaluation cutoff for ``as_of`` (`prepare`),
    split: ``fit`` has the held-out snapshots' labels hidden, ``eval_churn`` /
    ``eval_value`` are those snapshots' rows."""

    as_of: pd.Timestamp
    fit: pd.DataFrame
    eval_churn: pd.DataFrame
    eval_value: pd.DataFrame
    eval_cutoffs: dict[str, pd.Timestamp]


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError as exc:
        raise ImportError(
            f"hyperparameter tuning ({named('--tune', 'tune_config')}) needs Optuna, an "
            f"optional extra: {_INSTALL_HINT}"
        ) from exc
    return optuna


def _stable(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its float columns rounded to 9 decimals.

    The database engine sums money in parallel, so a sum's last bits (and a net total of
    returns that cancel, ``0`` or ``1e-14``) can change from one run to the next; rounded far
    below a cent they do not, so the trials' scores, and with them the sampler's choices,
    repeat exactly for the same data.
    """
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_float_dtype(out[col].dtype):
            out[col] = out[col].round(9)
    return out


def prepare(
    transactions: Any,
    mapping: ColumnMapping | None,
    as_of: Any | None,
    config: TrainConfig,
    *,
    table: str | None = None,
) -> TuningData:
    """Build the training frame once, at the earlier of `train`'s two evaluation cutoffs
    for ``as_of`` (default: the day after the last event), sampled as `train` samples it,
    and hold out its most recent labelled snapshot of each label.

    Not at ``as_of``: `train` evaluates the chosen settings by fitting them as if today
    were its evaluation cutoff and scoring the outcomes after it, so a search that saw
    those outcomes would pick the settings that fit that very test (a tuned run's score,
    and with it the champion decision, would be flattered)."""
    tx = _load(transactions, mapping, table)
    cut = training_as_of(tx, as_of, config)
    fcfg = config.features
    tune_cut = min(evaluation_cutoffs(tx.report.first_event, cut, config).values())
    for kind, h in _horizons(config).items():
        name = horizon_name(kind)
        n = len(_labelled_cutoffs(tx.report.first_event, tune_cut, h, config))
        if n < 3:  # one to fit on, one to validate on, one to score the trials on
            raise DataValidationError(
                f"{named('--tune', 'tune_config')} needs three snapshots with the {h}-day "
                f"label ({name}) before {tune_cut.date()}, the evaluation cutoff of train "
                f"(the search must not see the outcomes train evaluates on); the history "
                f"there allows {n}. Use a shorter horizon, more history, or "
                f"{named('train without --tune', 'train without tuning')}",
                source=tx.report.source,
            )
    frame = _stable(sample_snapshots(build_training_frame(tx, tune_cut, config=fcfg), config))
    frame = add_baseline_features(frame, fcfg)
    eval_cut = {
        "churn": pd.Timestamp(frame.loc[frame["churned"].notna(), "cutoff"].max()),
        "value": pd.Timestamp(frame.loc[frame["future_value"].notna(), "cutoff"].max()),
    }
    fit = frame.copy()
    fit.loc[fit["cutoff"] == eval_cut["churn"], "churned"] = pd.NA
    fit.loc[fit["cutoff"] == eval_cut["value"], "future_value"] = np.nan
    ev_c = frame[(frame["cutoff"] == eval_cut["churn"]) & frame["churned"].notna()]
    ev_v = frame[(frame["cutoff"] == eval_cut["value"]) & frame["future_value"].notna()]
    _check_scorable(ev_c, ev_v, eval_cut, tx.report.source)
    return TuningData(cut, fit, ev_c, ev_v, eval_cut)


def _check_scorable(ev_c: pd.DataFrame, ev_v: pd.DataFrame,
                    eval_cut: dict[str, pd.Timestamp], source: Any) -> None:
    """Fail when the held-out snapshots cannot score any trial: when the metrics are
    undefined on their outcomes even for a perfect prediction (the outcomes themselves,
    `training.metrics`' own rules: ROC-AUC needs churners and customers who stay,
    normalized Gini spend that differs between customers; small logs)."""
    churned = ev_c["churned"].astype(int).to_numpy()
    spend = ev_v["future_value"].to_numpy(dtype="float64")
    problems = []
    if not _defined(roc_auc, churned):
        problems.append(f"every one of the {len(ev_c):,} customers held out at "
                        f"{eval_cut['churn'].date()} has churned = {int(churned[0])}, "
                        f"so ROC-AUC is undefined")
    if not _defined(normalized_gini, spend):
        problems.append(f"the {len(ev_v):,} customers held out at "
                        f"{eval_cut['value'].date()} all spend the same, so normalized Gini "
                        f"is undefined")
    if problems:
        raise DataValidationError(
            f"{named('--tune', 'tune_config')} cannot score its trials: "
            f"{'; '.join(problems)}. "
            f"{named('Train without --tune', 'Train without tuning')} "
            f"(a search needs more customers or a shorter horizon)",
            source=source,
        )


def _defined(metric: Any, actual: np.ndarray) -> bool:
    """Whether ``metric`` has a value on ``actual`` when the prediction is ``actual``."""
    try:
        metric(actual, actual)
    except UndefinedMetricError:
        return False
    return True


def score_config(data: TuningData, config: TrainConfig) -> dict[str, float]:
    """Fit both models with ``config`` on ``data.fit`` and score them on the held-out
    snapshots: ``churn_roc_auc``, ``value_normalized_gini``, their sum ``objective``, the
    best iteration of each model and whether it reached its tree cap (1.0 or 0.0,
    ``churn_reached_cap``, ``value_reached_cap``; `training.models.reached_tree_cap`). A
    value model that predicts one value for everyone (its trees could not split) ranks
    nobody and scores 0, a random ranking's Gini, as a constant churn model's ROC-AUC is
    0.5."""
    churn = ChurnModel(config).fit(data.fit)
    value = ValueModel(config).fit(data.fit)
    auc = roc_auc(data.eval_churn["churned"].astype(int).to_numpy(),
                  churn.predict_proba(data.eval_churn))
    try:
        gini = normalized_gini(data.eval_value["future_value"].to_numpy(dtype="float64"),
                               value.predict(data.eval_value))
    except UndefinedMetricError:  # a constant prediction: `prepare` checked the outcomes
        gini = 0.0
    return {
        "churn_roc_auc": auc,
        "value_normalized_gini": gini,
        "objective": auc + gini,
        "churn_best_iteration": float(churn.best_iteration_),
        "value_best_iteration": float(value.best_iteration_),
        "churn_reached_cap": float(churn.reached_cap_),
        "value_reached_cap": float(value.reached_cap_),
    }


def _mlflow_name(key: str) -> str:
    """A `score_config` key as MLflow names the metric: the value model's as ``clv_...``
    (``training.tracking.METRIC_PREFIX``, as in ``lifecast-clv``), the others unchanged."""
    return "clv_" + key.removeprefix("value_") if key.startswith("value_") else key


def tree_cap(config: TrainConfig, learning_rate: float) -> int:
    """The trees a trial of ``learning_rate`` may grow: ``config.n_estimators`` scaled by
    ``config.learning_rate / learning_rate`` (the same total step as ``config``), never
    fewer than ``config.n_estimators``. At the defaults (0.05, 1,000 trees) a learning rate
    of 0.01 may grow 5,000."""
    return max(config.n_estimators,
               math.ceil(config.n_estimators * config.learning_rate / learning_rate - 1e-9))


def _suggest(trial: optuna.Trial, config: TrainConfig) -> dict[str, Any]:
    """The trial's parameters: the `SEARCH_SPACE` ones and its ``n_estimators``
    (`tree_cap` of its learning rate)."""
    params: dict[str, Any] = {}
    for name, (low, high, log) in SEARCH_SPACE.items():
        if name in _INT_PARAMS:
            params[name] = trial.suggest_int(name, int(low), int(high), log=log)
        else:
            params[name] = trial.suggest_float(name, low, high, log=log)
    params["n_estimators"] = tree_cap(config, params["learning_rate"])
    return params


def capped_models(scores: dict[str, float]) -> list[str]:
    """The models of a trial's ``scores`` (`score_config`) that reached their tree cap."""
    return [kind for kind in ("churn", "value") if scores.get(f"{kind}_reached_cap")]


@contextlib.contextmanager
def _parent_run(parent_run_id: str | None, data: TuningData, n_trials: int, seed: int,
                config: TrainConfig, experiment: str | None
                ) -> Iterator[tuple[Any, str | None, str | None, bool]]:
    """(mlflow or None, parent run id, experiment id, started here) for the trials' nested
    runs. mlflow is None when no run is active and no tracking URI is set: nothing is logged.
    """
    import mlflow

    if parent_run_id is not None:
        experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
        yield mlflow, parent_run_id, experiment_id, False
        return
    active = mlflow.active_run()
    if active is not None:
        yield mlflow, active.info.run_id, active.info.experiment_id, False
        return
    if not mlflow.is_tracking_uri_set():
        yield None, None, None, False
        return
    from training.tracking import _experiment_id, default_run_name, experiment_name, started_run

    experiment_id = _experiment_id(experiment_name(experiment))
    name = default_run_name(TUNE_RUN_NAME, data.as_of, config.features)
    run_id = None
    try:
        with started_run(experiment_id, None, name) as run:
            run_id = run.info.run_id
            mlflow.set_tags({TUNE_STEP_TAG: TUNE_RUN_NAME, "as_of": str(data.as_of)})
            mlflow.log_params({
                "n_trials": n_trials,
                "churn_horizon_days": config.features.churn_horizon_days,
                "clv_horizon_days": config.features.clv_horizon_days,
                "sampler": "TPESampler",
                "sampler_seed": seed,
                "objective": "churn_roc_auc + clv_normalized_gini",
                "as_of": str(data.as_of),
                "eval_cutoff_churn": str(data.eval_cutoffs["churn"]),
                "eval_cutoff_clv": str(data.eval_cutoffs["value"]),
            })
            yield mlflow, run_id, experiment_id, True
    except BaseException:  # Ctrl-C too: a search that did not finish leaves no run behind
        if run_id is not None:
            delete_tune_run(run_id)
        raise


def delete_tune_run(run_id: str) -> None:
    """Delete ``tune`` run ``run_id`` and its trials' runs (`mlflow gc` purges them): what a
    `lifecast train --tune` that failed or was interrupted leaves, as a failed training run
    leaves nothing (`training.tracking.log_training`). Best effort: the error that stopped
    the command is the one the user sees."""
    import mlflow

    client = mlflow.MlflowClient()
    with contextlib.suppress(Exception):
        experiment_id = client.get_run(run_id).info.experiment_id
        children = client.search_runs(
            [experiment_id], filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
        for child in children:
            with contextlib.suppress(Exception):
                client.delete_run(child.info.run_id)
        client.delete_run(run_id)


def last_tune_run_id() -> str | None:
    """The ``tune`` run the last `tune_config` call in this process started, for linking
    the training run that uses its parameters (`training.tracking.log_training`'s
    ``tune_run_id``); None when it nested its trials under another run or logged nothing."""
    return _last_tune_run


def tune_config(
    transactions: Any,
    mapping: ColumnMapping | None,
    as_of: Any | None,
    config: TrainConfig,
    n_trials: int,
    table: str | None = None,
    seed: int | None = None,
    *,
    parent_run_id: str | None = None,
    experiment: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> TrainConfig:
    """Search the LightGBM parameters of ``config`` with ``n_trials`` Optuna trials.

    Transactions in (anything `training.pipeline.train` takes); ``config`` with the best
    trial's ``learning_rate, num_leaves, max_depth, min_child_samples, feature_fraction,
    lambda_l2`` out (everything else unchanged). The score of a trial is ROC-AUC of churn +
    normalized Gini of value on the held-out most recent snapshot (see the module doc).
    The sampler is seeded with ``seed`` (default ``config.seed``), so the same data, config
    and seed give the same result. ``n_trials <= 0`` returns ``config`` unchanged.
    ``progress``, if given, receives one line per finished trial (`lifecast train --tune`
    prints them); Optuna's own log lines are silenced.
    """
    if n_trials <= 0:
        return config
    optuna = _import_optuna()
    sampler_seed = config.seed if seed is None else int(seed)
    data = prepare(transactions, mapping, as_of, config, table=table)

    with _parent_run(parent_run_id, data, n_trials, sampler_seed, config, experiment
                     ) as (mlflow, parent, exp_id, own):

        # trials of searches with other horizons must tell apart when compared in MLflow
        horizons = {"churn_horizon_days": config.features.churn_horizon_days,
                    "clv_horizon_days": config.features.clv_horizon_days}

        capped: dict[int, str] = {}  # trial -> what reached its cap

        def objective(trial: optuna.Trial) -> float:
            params = _suggest(trial, config)
            trial.set_user_attr("n_estimators", params["n_estimators"])
            scores = score_config(data, config.model_copy(update=params))
            trial.set_user_attr("scores", scores)
            at_cap = capped_models(scores)
            if at_cap:
                capped[trial.number] = (
                    f"trial {trial.number} (learning_rate {params['learning_rate']:.4g}: "
                    f"{' and '.join(at_cap)} model{'s' if len(at_cap) > 1 else ''} at "
                    f"{params['n_estimators']:,} trees)")
            if mlflow is not None:
                from training.tracking import owner_tags

                with mlflow.start_run(run_name=f"trial {trial.number}", nested=True,
                                      parent_run_id=parent, experiment_id=exp_id,
                                      tags=owner_tags()):
                    mlflow.set_tag("optuna.trial", str(trial.number))
                    if trial.number in capped:
                        mlflow.set_tag(TREE_CAP_TAG, capped[trial.number])
                    mlflow.log_params({**params, **horizons})
                    # prefixed: measured on the search's held-out snapshot, not the
                    # evaluation snapshot of a train run's churn_roc_auc, so a sort by
                    # metric in MLflow does not rank the two together
                    mlflow.log_metrics({f"{TRIAL_METRIC_PREFIX}{_mlflow_name(k)}": v
                                        for k, v in scores.items()})
            if progress is not None:
                best = max([scores["objective"],
                            *(t.value for t in trial.study.get_trials(deepcopy=False)
                              if t.value is not None)])
                progress(f"trial {trial.number + 1} of {n_trials}: score "
                         f"{scores['objective']:.4f} (best so far {best:.4f})")
            return scores["objective"]

        sampler = optuna.samplers.TPESampler(seed=sampler_seed)
        study = optuna.create_study(direction="maximize", sampler=sampler,
                                    study_name="lifecast-tune")
        verbosity = optuna.logging.get_verbosity()
        # its "[I ...] Trial 0 ..." lines, and the "[W ...] Trial 1 failed" traceback a
        # Ctrl-C printed: an error stops the search and is said once, by the command
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            study.optimize(objective, n_trials=n_trials)
        finally:
            optuna.logging.set_verbosity(verbosity)
        best = study.best_trial
        if capped:
            warn(f"{named('--tune', 'tune_config')}: {len(capped)} of {n_trials} trials "
                 f"stopped at their tree cap (n_estimators) while their validation score "
                 f"still improved, so they are under-fit and scored below what their "
                 f"parameters can do: {'; '.join(capped.values())}. Compare them with care; "
                 f"to let them finish, raise n_estimators in TrainConfig (in Python: "
                 f"tune_config(..., config=TrainConfig(n_estimators=...)))")
        global _last_tune_run
        _last_tune_run = parent if own else None
        if own:  # the parent run "tune" is ours: it records the winner too
            mlflow.log_params({f"best_{k}": v for k, v in best.params.items()}
                              | {"best_n_estimators": best.user_attrs["n_estimators"]})
            mlflow.log_metrics({f"best_{_mlflow_name(k)}": v
                                for k, v in best.user_attrs["scores"].items()})
            mlflow.set_tag("best_trial", str(best.number))
    return config.model_copy(update={**best.params,
                                     "n_estimators": best.user_attrs["n_estimators"]})
