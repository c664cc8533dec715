"""Training, prediction and backtest flows as plain functions returning pandas objects.

The command line only parses and calls these; MLflow logging lives in
`training.tracking` and the customer store in `training.store`.

Time discipline: every flow takes its cutoff (``as_of``) explicitly; the training frame
holds only snapshots whose outcome windows end on or before it; metrics always come from a
backtest, never from a random split: ``backtest`` trains as if today were its cutoff and
scores the real outcome after it, and ``train`` does the same at its evaluation cutoff (the
most recent fully observed snapshot) before it refits on everything up to ``as_of``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from features.config import ColumnMapping, FeatureConfig, as_config
from features.contract import (
    DataValidationError,
    Transactions,
    check_cutoff,
    parse_cutoff,
)
from features.demo import segment_customers
from features.naming import counted, named, setting
from features.pipeline import (
    as_transactions,
    build_features,
    build_labels,
    build_training_frame,
    check_labels_in_data,
    default_cutoff,
    snapshot_cutoffs,
    window_observed,
)
from features.registry import source_columns
from features.segments import RFMSegmenter
from features.warn import warn
from training.metrics import churn_metrics, compare_table, value_metrics
from training.models import (
    BASELINE_FEATURES,
    BaselineGaps,
    ChurnModel,
    TrainConfig,
    ValueModel,
    add_baseline_features,
    risk_band,
    warn_if_a_subset,
)

logger = logging.getLogger(__name__)
#: stage timings as they finish; `serving.cli.main` shows them on stderr
progress = logging.getLogger("lifecast.progress")

OUTPUT_COLUMNS = [
    "customer_id", "as_of", "churn_probability", "churn_risk", "predicted_clv",
    "expected_orders", "p_alive", "rfm_score", "segment", "lifecycle_stage",
    "value_at_risk", "reasons",
]


@dataclass
class FittedModels:
    """The two models and the segmenter learned together at one training cutoff.

    ``churn`` (`ChurnModel`) and ``value`` (`ValueModel`), ``segmenter`` (the RFM quintile
    edges of the population at ``as_of``), ``config`` (the `TrainConfig` they were fit
    with), ``as_of`` (the training cutoff), ``versions`` (registered model versions,
    ``{"churn": ..., "clv": ...}``, empty until registered) and ``data_days`` (the
    training log's rows per day, or None). `predict_customers` scores with them.
    """

    churn: ChurnModel
    value: ValueModel
    segmenter: RFMSegmenter
    config: TrainConfig
    as_of: pd.Timestamp
    versions: dict[str, str] = field(default_factory=dict)
    #: the training log's rows per day before ``as_of`` (`Transactions.daily_profile`),
    #: when known: scoring another log with them warns (`training.scoring.score_customers`)
    data_days: pd.DataFrame | None = None


@dataclass
class TrainResult:
    """What `train` returns: the fitted models, the training frame and the evaluation.

    - ``models``: `FittedModels` fit on every labelled snapshot up to ``as_of`` (what
      `training.tracking.log_training` registers).
    - ``frame``: the stacked training frame, one row per (cutoff, customer), with the
      baseline features (a pandas DataFrame).
    - ``evaluation``: ``{"churn": DataFrame, "value": DataFrame}``, each with the columns
      ``metric, model, baseline, better``: the backtest at the evaluation cutoff.
    - ``eval_predictions``: ``{"churn": ..., "value": ...}``, one row per customer of the
      evaluation snapshot: ``customer_id, actual, model, baseline``.
    - ``eval_cutoffs``: ``{"churn": Timestamp, "value": Timestamp}``, where each was
      evaluated.
    - ``data_report``: the `features.contract.ValidationReport` of the load.
    - ``eval_models``: ``{"churn": ..., "value": ...}``, the models as of the evaluation
      cutoff (the same settings, fit on outcomes observed by then), which ``evaluation``
      scores.
    - ``eval_frames``: the training frames at the evaluation cutoffs they were fit on.
    - ``data_used``: the rows the run read (before ``as_of``): rows, customers,
      first_event, last_event, digest.
    - ``data_days``: the same rows per calendar day (None for a result made without it).
    - ``timings``: wall seconds per stage, in the order run.
    - ``baseline_warning``: the warning `train` gave where the BG/NBD + Gamma-Gamma baseline
      could not be fitted or predicted (features left empty, its metrics n/a), or None.
    - ``metrics_warning``: the warning `train` gave about metrics undefined on the
      evaluation snapshot (NaN in ``evaluation``, e.g. ROC-AUC when nobody churned), or
      None.
    """

    models: FittedModels  # fit on every labelled snapshot up to as_of (what is registered)
    frame: pd.DataFrame  # the stacked training frame (with baseline features)
    evaluation: dict[str, pd.DataFrame]  # "churn" / "value": metric, model, baseline, better
    eval_predictions: dict[str, pd.DataFrame]  # per-customer y, model, baseline on eval snap
    eval_cutoffs: dict[str, pd.Timestamp]
    data_report: Any
    #: "churn" / "value": the models as they would have been at the evaluation cutoff (the
    #: same settings, fit only on outcomes observed by then), which the evaluation scores
    eval_models: dict[str, ChurnModel | ValueModel] = field(default_factory=dict)
    #: "churn" / "value": the training frame at the evaluation cutoff they were fit on
    eval_frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: the rows the run read (those before as_of): rows, customers, first_event,
    #: last_event, digest (`features.contract.Transactions.profile_before`)
    data_used: dict[str, Any] = field(default_factory=dict)
    #: the same rows per calendar day (`Transactions.daily_profile`): whether another run
    #: trained on the same log (`data_differs`); None for a result made without it
    data_days: pd.DataFrame | None = None
    #: wall seconds per stage of `train`, in the order run: load, training_frame,
    #: baseline_features, population, churn_fit, value_fit, segmenter_fit,
    #: evaluation_frame, evaluation_fit, evaluation
    timings: dict[str, float] = field(default_factory=dict)
    #: the warning given where the baseline could not be fitted or predicted, or None
    baseline_warning: str | None = None
    #: the warning given about metrics undefined on the evaluation snapshot, or None
    metrics_warning: str | None = None


@dataclass
class BacktestResult:
    """What `backtest` returns.

    - ``predictions``: one row per customer with a purchase before ``cutoff`` (a pandas
      DataFrame): ``customer_id, churn_probability, churn_risk, predicted_clv,
      expected_orders, p_alive, segment, lifecycle_stage, value_at_risk,
      baseline_churn_probability, baseline_clv``, then ``churned`` and/or ``actual_value``
      for each label whose outcome window the data covers.
    - ``metrics``: ``target, metric, model, baseline, better``, one block per evaluated
      label (``churn``, ``value``); None when no window is covered.
    - ``cutoff``: the backtest cutoff; ``observed``: every outcome window is covered.
    - ``models``: the `FittedModels` fit as if today were ``cutoff``.
    - ``evaluated``: the labels evaluated, e.g. ``("churn", "value")``.
    - ``timings``: wall seconds per stage.
    - ``baseline_warning``: the warning `backtest` gave where the BG/NBD + Gamma-Gamma
      baseline could not be fitted or predicted (features left empty, its metrics n/a), or
      None.
    - ``metrics_warning``: the warning `backtest` gave about metrics undefined on the
      customers evaluated (NaN in ``metrics``), or None.
    """

    predictions: pd.DataFrame  # one row per customer (the backtest output columns)
    #: target, metric, model, baseline, better: one block per evaluated label; None if none
    metrics: pd.DataFrame | None
    cutoff: pd.Timestamp
    observed: bool  # every outcome window covered by the data
    models: FittedModels
    #: the labels whose outcome window the data covers, evaluated: "churn", "value"
    evaluated: tuple[str, ...] = ()
    #: wall seconds per stage (load, training_frame, baseline_features, population, the
    #: fits, the predictions, evaluation)
    timings: dict[str, float] = field(default_factory=dict)
    #: the warning given where the baseline could not be fitted or predicted, or None
    baseline_warning: str | None = None
    #: the warning given about metrics undefined on the customers evaluated, or None
    metrics_warning: str | None = None


def data_differs(other: pd.DataFrame, this: pd.DataFrame, before: Any) -> str | None:
    """Why the log of ``this`` is not the log of ``other`` on the days before ``before``, in
    a few words, or None when they hold the same rows on each of those days (the same log,
    or one extended from the other: pass the earlier of the two runs' as-of dates). Both
    are `Transactions.daily_profile` frames; the day of ``before`` itself is not compared
    when it is not midnight, since a run read only part of it."""
    day = f"{pd.Timestamp(before).normalize():%Y-%m-%d}"
    a = other[other["day"] < day].set_index("day")
    b = this[this["day"] < day].set_index("day")
    if a.empty and b.empty:
        return None
    # (merge, not join: pandas 3.1 deprecates join's lsuffix/rsuffix, and its suffixes=
    # is not in the pandas versions pyproject.toml allows)
    joined = a.merge(b, how="outer", left_index=True, right_index=True,
                     suffixes=("_a", "_b"))
    differ = joined[(joined["rows_a"] != joined["rows_b"])
                    | (joined["hash_sum_a"] != joined["hash_sum_b"])]
    if differ.empty:
        return None
    if b.empty:
        return (f"it has no events before {day} (the other data runs from {a.index.min()} "
                f"to {a.index.max()})")
    first = differ.index[0]
    n_a, n_b = (differ.loc[first, c] for c in ("rows_a", "rows_b"))
    here, there = (counted(int(n), "row") if pd.notna(n) else "no rows" for n in (n_b, n_a))
    if here == there:  # as many rows, other values (an amount, a customer, a time)
        how = (f"{here} on both sides, with other values: customer ids (e.g. '0012345' "
               f"against 12345), times (a time zone) or amounts")
    else:
        how = f"{here} here, {there} there"
    return (f"its events before {day} differ from the other data's on {len(differ):,} of "
            f"{counted(len(joined), 'day')} (first {first}: {how})")


@contextlib.contextmanager
def _timed(timings: dict[str, float] | None, stage: str) -> Iterator[None]:
    """Add the wall time of the block to ``timings[stage]`` (nothing when ``timings`` is None)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        elapsed = time.perf_counter() - started
        # one line per finished stage, which the command line shows on stderr (a training
        # run on a large log is otherwise silent for minutes); silent in library use
        progress.info("%s: %.1f s", stage.replace("_", " "), elapsed)
        if timings is not None:
            timings[stage] = timings.get(stage, 0.0) + elapsed


def _load(transactions: Any, mapping: ColumnMapping | None, table: str | None = None
          ) -> Transactions:
    """`features.pipeline.as_transactions`: loaded transactions with a mapping or table
    given as well are an error (they would be ignored), as in `build_features`."""
    return as_transactions(transactions, mapping, table)


def default_as_of(tx: Transactions) -> pd.Timestamp:
    """The day after the last event, so every event is used."""
    return default_cutoff(tx.report)


def _labelled_cutoffs(first_event: Any, cut: pd.Timestamp, horizon_days: int,
                      config: TrainConfig) -> list[pd.Timestamp]:
    """The snapshot cutoffs of `build_training_frame` at ``cut`` whose ``horizon_days``
    outcome window ends by ``cut`` (the snapshots with that label)."""
    fcfg = config.features
    grid = snapshot_cutoffs(pd.Timestamp(first_event), cut,
                            min(fcfg.churn_horizon_days, fcfg.clv_horizon_days), fcfg)
    return [c for c in grid if c + pd.Timedelta(days=horizon_days) <= cut]


def _horizons(config: TrainConfig) -> dict[str, int]:
    return {"churn": config.features.churn_horizon_days,
            "value": config.features.clv_horizon_days}


#: The command-line flag that sets each label's horizon (named in errors on the command line).
HORIZON_FLAGS = {"churn": "--churn-horizon-days", "value": "--clv-horizon-days"}
#: The `TrainConfig` field that sets it (named in errors to a Python caller).
HORIZON_FIELDS = {"churn": "config.features.churn_horizon_days",
                  "value": "config.features.clv_horizon_days"}


def horizon_name(kind: str) -> str:
    """How an error names the horizon of ``kind`` (``"churn"``, ``"value"``): its flag on
    the command line, its config field in Python (`features.naming.named`)."""
    return named(HORIZON_FLAGS[kind], HORIZON_FIELDS[kind])


def horizon_setting(kind: str, days: int) -> str:
    """``--clv-horizon-days 365`` on the command line, else
    ``config.features.clv_horizon_days=365`` (`features.naming.setting`)."""
    return setting(HORIZON_FLAGS[kind], HORIZON_FIELDS[kind], days)


def evaluation_cutoffs(first_event: Any, as_of: pd.Timestamp, config: TrainConfig
                       ) -> dict[str, pd.Timestamp]:
    """The cutoff of the most recent fully observed snapshot of each label (``"churn"``,
    ``"value"``) in the training frame at ``as_of``: `train` evaluates there."""
    out = {}
    for kind, h in _horizons(config).items():
        cuts = _labelled_cutoffs(first_event, as_of, h, config)
        out[kind] = cuts[-1] if cuts else (as_of - pd.Timedelta(days=h)).normalize()
    return out


#: How `train` and `backtest` name their cutoff in errors: (flag, Python parameter).
AS_OF = ("--as-of", "as_of")
CUTOFF = ("--cutoff", "cutoff")


def _check_history(tx: Transactions, as_of: pd.Timestamp, config: TrainConfig,
                   given_as: tuple[str, str] = AS_OF, *, evaluate: bool = False) -> None:
    """Fail when ``as_of`` (given as ``given_as``: its flag and its Python parameter, of
    which the message names the one the caller used, `features.naming.named`) is long
    after the data, or when a horizon leaves fewer than the two labelled snapshots a fit
    needs (one to fit on, the latest to validate on) in the history before it; with
    ``evaluate`` (`train`), also before the evaluation cutoff, where the models are fit a
    second time as if today were that day."""
    flag = named(*given_as)
    first = pd.Timestamp(tx.report.first_event)
    if as_of <= first:  # no customers at all: say that, not that a horizon is too long
        check_cutoff(tx.report, as_of, config.features, name=flag,
                     example=default_as_of(tx) if given_as == AS_OF else None)
    check_labels_in_data(tx, as_of, config.features, flag)
    every = config.features.snapshot_every_days
    evals = evaluation_cutoffs(first, as_of, config)
    for kind, h in _horizons(config).items():
        # snapshots every `every` days back from the cutoff minus the shorter horizon, the
        # earliest more than `every` days after the first event (`snapshot_cutoffs`)
        # the evaluation cutoff first: the earlier one, so the message states all it needs
        cuts = ([(evals[kind], "the evaluation cutoff")] if evaluate else []) + [(as_of, flag)]
        for cut, what in cuts:
            if len(_labelled_cutoffs(first, cut, h, config)) >= 2:
                continue
            need = history_needed_days(config)  # (the error path only: a bisection)
            why = ("" if what == flag else
                   f"; train evaluates out of time, so it also fits as if today were "
                   f"{cut.date()} (the latest {every}-day snapshot whose {h}-day outcome "
                   f"window ends by {setting(*given_as, as_of.date())}), which needs "
                   f"{counted(history_needed_days(config, evaluate=True), 'day')} of history "
                   f"before {flag} in all")
            if cut > first:
                history = (f"the data before {cut.date()} ({what}) covers "
                           f"{counted((cut - first).days, 'day')} from {first.date()}")
            else:  # the evaluation cutoff is before the data: "covers -99627 days" said
                history = (f"{what}, {cut.date()}, is before the data starts "
                           f"({first.date()}; {(as_of - first).days} days before {flag})")
            longest = _longest_horizon(first, as_of, config, kind, evaluate)
            advice = (f"The longest {horizon_name(kind)} this history allows here is "
                      f"{longest}: use" if longest else "Use")
            raise DataValidationError(
                f"{horizon_setting(kind, h)} is too long for the history: {history}, "
                f"and a fit needs two snapshots {every} days apart whose {h}-day outcome "
                f"windows end by then, the earliest more than {every} days after the first "
                f"event: {counted(need, 'day')} with these horizons{why}. {advice} a shorter "
                f"horizon or more history",
                source=tx.report.source,
            )


def _fits(first: pd.Timestamp, as_of: pd.Timestamp, config: TrainConfig,
          evaluate: bool) -> bool:
    """Whether every label has the two labelled snapshots a fit needs (`_check_history`)."""
    evals = evaluation_cutoffs(first, as_of, config)
    return all(len(_labelled_cutoffs(first, cut, h, config)) >= 2
               for kind, h in _horizons(config).items()
               for cut in ([evals[kind]] if evaluate else []) + [as_of])


def history_needed_days(config: TrainConfig, *, evaluate: bool = False) -> int:
    """The fewest whole days of history before a cutoff that a fit with these horizons needs
    (`backtest` at ``--cutoff``; with ``evaluate``, `train` at ``--as-of``, which also fits
    at its evaluation cutoffs): what `_check_history` accepts, found by bisection (more
    history never takes a snapshot away). Two labelled snapshots per label, the earliest more
    than `snapshot_every_days` after the first event; the snapshots are on one grid, every
    `snapshot_every_days` back from the cutoff minus the shorter horizon, so a longer
    horizon's latest labelled snapshot is up to that many days before the cutoff minus its
    horizon. With equal horizons h: h + 61 days (backtest) and 2h + 61 (train) at 30-day
    snapshots; train with 90 and 365 days: 841."""
    # the rule depends only on days before the cutoff: the latest one pandas holds leaves
    # ~213,000 days of room before it
    as_of = pd.Timestamp("2262-01-01")
    room = (as_of - pd.Timestamp("1678-01-01")).days

    def ok(days: int) -> bool:
        return _fits(as_of - pd.Timedelta(days=days), as_of, config, evaluate)

    lo, hi = 0, 64
    while not ok(hi):  # a fit needs a bounded history: 2 horizons plus 3 snapshots' days
        if hi >= room:
            return room
        lo, hi = hi, min(hi * 2, room)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return hi


def _longest_horizon(first: pd.Timestamp, as_of: pd.Timestamp, config: TrainConfig,
                     kind: str, evaluate: bool) -> int | None:
    """The longest horizon of ``kind`` (the other one as given) that `_check_history`
    accepts, or None when none does (bisection: a shorter horizon never needs more
    history)."""
    field = "churn_horizon_days" if kind == "churn" else "clv_horizon_days"

    def ok(days: int) -> bool:
        fcfg = config.features.model_copy(update={field: days})
        return _fits(first, as_of, config.model_copy(update={"features": fcfg}), evaluate)

    if not ok(1):
        return None
    lo, hi = 1, _horizons(config)[kind]  # ok(lo) holds, ok(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


def training_as_of(tx: Transactions, as_of: Any | None, config: TrainConfig) -> pd.Timestamp:
    """`train`'s ``as_of`` (and `training.tuning.prepare`'s): as given, else the day after
    the last event, checked (`_check_history`). One later than the day after the last
    event (by at most ``stale_after_days``: more is an error) becomes that day, with a
    warning: the latest snapshots' outcome windows would run past the end of the data,
    where nobody buys, and the evaluation snapshot would have no outcomes."""
    latest = default_as_of(tx)
    cut = parse_cutoff(as_of) if as_of is not None else latest
    if cut > latest:
        flag = named(*AS_OF)
        check_labels_in_data(tx, cut, config.features, flag)  # far after the data: error
        warn(f"{flag} {cut.date()} is after the last event in {tx.report.source} "
             f"({tx.report.last_event}): training as of {latest.date()}, the day after it, "
             f"since outcome windows after the data would show every customer as churned")
        cut = latest
    _check_history(tx, cut, config, evaluate=True)
    return cut


def _warn_if_under_a_year(tx: Transactions, as_of: pd.Timestamp) -> None:
    """Say so when the data before ``as_of`` covers less than a year: then no training
    snapshot's outcome window falls in the same season as the prediction's, so neither the
    models nor the baseline can learn a seasonal swing, and a prediction window over a peak
    or a lull is off by more than the usual error (Online Retail at 2011-09-01, September to
    November: the value total -33%, the baseline's -37%; bench/README.md, "Model
    quality")."""
    first = pd.Timestamp(tx.report.first_event).normalize()
    history = (as_of - first).days
    if history < 365:
        warn(
            f"the data before {as_of.date()} covers {counted(history, 'day')} (from "
            f"{first.date()}), "
            f"less than a year: seasonal swings (a holiday peak, a summer lull) cannot be "
            f"learned, so predictions for a window over one can be off by more than the "
            f"backtest on other windows shows",
        )


def _train_config(config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
    """``config`` as a TrainConfig: itself, the defaults for None, or one made from a dict
    of its fields (``{"features": {"churn_horizon_days": 30}, "num_threads": 1}``)."""
    return as_config(TrainConfig, config)


def _check_repeat_buyers(tx: Transactions, as_of: pd.Timestamp) -> None:
    """Fail fast when no customer bought on two different days before ``as_of``: then
    everyone in every snapshot churns and no model can be fit (found only after building
    the training frame otherwise: 27 s on a 600-customer log, with a warning per snapshot).
    A purchase here is a row with ``amount >= 0``; the exact rule (orders) is applied by
    the models' own check, so this one only catches logs with no repeat buyer at all."""
    import ibis

    t = tx.table
    lit = ibis.literal(as_of.to_pydatetime(), type="timestamp")
    bought = t.filter((t.timestamp < lit) & (t.amount >= 0))
    span = bought.group_by("customer_id").aggregate(first=bought.timestamp.min().date(),
                                                    last=bought.timestamp.max().date())
    if tx.backend.execute(span.filter(span.last > span.first).count()) == 0:
        raise DataValidationError(
            f"no repeat customers in {tx.report.source} before {as_of.date()}: no customer "
            f"bought on two different days, so everyone churns in every snapshot and a churn "
            f"model cannot be learned. Training needs a log where some customers buy again "
            f"(check the customer id mapping: an id that changes per order looks like this)",
            source=tx.report.source,
        )


def sample_snapshots(frame: pd.DataFrame, config: TrainConfig) -> pd.DataFrame:
    """Keep at most ``config.max_customers_per_snapshot`` customers per snapshot: those with
    the smallest seeded hash of their id, so the same customers are kept in every snapshot
    and the same input and seed give the same frame."""
    n = config.max_customers_per_snapshot
    if n <= 0 or frame.groupby("cutoff").size().max() <= n:
        return frame
    # hash each distinct id once (the snapshots repeat the same customers)
    codes, ids = pd.factorize(frame["customer_id"], use_na_sentinel=False)
    hashed = pd.util.hash_pandas_object(
        pd.Series(ids).astype(str), index=False, hash_key=f"{config.seed:016d}"[:16]
    ).to_numpy()
    key = hashed[codes]
    # per snapshot, the n smallest keys (equal keys in row order): one stable sort by
    # (snapshot, key) and the position within the snapshot
    snapshot = pd.factorize(frame["cutoff"], use_na_sentinel=False)[0]
    order = np.lexsort((key, snapshot))
    grouped = snapshot[order]
    position = np.arange(order.size) - np.searchsorted(grouped, grouped, side="left")
    keep = np.zeros(order.size, dtype=bool)
    keep[order[position < n]] = True
    return frame[keep].reset_index(drop=True)


def fit_models(frame: pd.DataFrame, population: pd.DataFrame, config: TrainConfig,
               as_of: pd.Timestamp, *, timings: dict[str, float] | None = None,
               columns: Sequence[str] | None = None) -> FittedModels:
    """Fit churn and value models on a training frame (with baseline features) and the
    segmenter on the population at ``as_of``, to which the value model's total is anchored
    (`ValueModel.anchor`: the population needs the baseline features, else it is not
    anchored).
    ``timings``, if given, receives the wall seconds of each fit (``churn_fit``,
    ``value_fit``, ``segmenter_fit``). ``columns``, the contract columns the log was read
    into, are recorded on both models as their ``source_columns_`` (the optional ones the
    features come from), which scoring checks (`training.models.check_source_columns`)."""
    with _timed(timings, "churn_fit"):
        churn = ChurnModel(config).fit(frame)
    with _timed(timings, "value_fit"):
        value = ValueModel(config).fit(frame, population)
    if columns is not None:
        churn.source_columns_ = value.source_columns_ = source_columns(columns)
    with _timed(timings, "segmenter_fit"):
        segmenter = RFMSegmenter().fit(population)
    for model, name, what in ((churn, "churn", "churn probability"),
                              (value, "value", "predicted value")):
        if not model.has_splits():
            rows = model.train_rows_
            warn(f"the {name} model learned nothing at {as_of.date()}: none of its "
                 f"trees could split {rows:,} training rows with at least "
                 f"{model.min_child_samples_} per leaf, so every customer gets the same "
                 f"{what}; more customers or a longer history would let it learn")
    return FittedModels(churn, value, segmenter, config, as_of)


def predict_customers(models: FittedModels, features: pd.DataFrame,
                      as_of: pd.Timestamp | None = None, *,
                      population: pd.DataFrame | None = None,
                      timings: dict[str, float] | None = None) -> pd.DataFrame:
    """Per-customer output of DESIGN.md for a feature frame at one cutoff.

    Features at one cutoff in (one row per customer, baseline features added here when
    missing); one row per customer out with `OUTPUT_COLUMNS` plus the model versions.
    ``timings``, if given, receives the wall seconds of each step (``baseline_features``
    when added here, ``churn_predict_reasons``, ``value_predict``, ``segments``).

    The baseline features (BG/NBD + Gamma-Gamma, inputs of both models) are fitted on the
    whole population, as `train` and `lifecast score` fit them: ``population``
    (`features.build_features` output for everyone at the same cutoff) when given, else
    ``features`` itself. To score a subset (a CRM segment, a few customers), pass
    everyone's features as ``population``: fitted on the subset alone, the baseline, and
    so the predictions, differ. Without it, fewer than half the customers the models were
    fit on warn.
    """
    cfg = models.config
    feats = features
    if population is not None and "bg_p_alive" not in feats.columns:
        feats = _with_population_baseline(feats, population, cfg.features, timings)
    elif "bg_p_alive" not in feats.columns:
        warn_if_a_subset(feats, models.segmenter.n_customers_, caller="predict_customers",
                         example="predict_customers(models, subset, population=everyone)")
    if "cutoff" in feats.columns and feats["cutoff"].nunique(dropna=False) > 1:
        cuts = sorted(pd.Timestamp(c) for c in feats["cutoff"].dropna().unique())
        raise ValueError(
            f"the features are at {len(cuts)} cutoffs ({cuts[0]} to {cuts[-1]}): "
            f"predict_customers scores one cutoff at a time (each customer once, with the "
            f"baseline fitted on that cutoff's population); pass the rows of one cutoff, "
            f"e.g. features[features.cutoff == '{cuts[-1]}']"
        )
    if "bg_p_alive" not in feats.columns:
        with _timed(timings, "baseline_features"):
            feats = add_baseline_features(feats, cfg.features)
    with _timed(timings, "churn_predict_reasons"):
        p, reasons = models.churn.predict_with_reasons(feats)
    with _timed(timings, "value_predict"):
        clv = models.value.predict(feats)
    with _timed(timings, "segments"):
        seg = segment_customers(feats, models.segmenter, cfg.features)
    out = pd.DataFrame({
        "customer_id": feats["customer_id"].astype("string").array,
        "as_of": pd.Timestamp(as_of if as_of is not None else feats["cutoff"].iloc[0]),
        "churn_probability": p,
        "churn_risk": risk_band(p, cfg.risk_bands),
        "predicted_clv": clv,
        "expected_orders": feats["bg_expected_orders"].to_numpy(dtype="float64"),
        "p_alive": feats["bg_p_alive"].to_numpy(dtype="float64"),
        "rfm_score": seg["rfm_score"].astype(str).to_numpy(),
        "segment": seg["segment"].astype(str).to_numpy(),
        "lifecycle_stage": seg["lifecycle_stage"].astype(str).to_numpy(),
        "value_at_risk": p * clv,
        "reasons": reasons,
    })
    out["churn_model_version"] = models.versions.get("churn", "unregistered")
    out["clv_model_version"] = models.versions.get("clv", "unregistered")
    _warn_if_p_alive_is_flat(out["p_alive"].to_numpy())
    return out


def _with_population_baseline(features: pd.DataFrame, population: pd.DataFrame,
                              settings: FeatureConfig, timings: dict[str, float] | None
                              ) -> pd.DataFrame:
    """``features`` with the baseline features of the same customers in ``population``
    (fitted there): `predict_customers`' ``population``."""
    cuts = {pd.Timestamp(c) for c in features["cutoff"].dropna().unique()}
    other = {pd.Timestamp(c) for c in population["cutoff"].dropna().unique()} - cuts
    if other:
        raise ValueError(
            f"predict_customers: population is at {sorted(other)[0]}, features at "
            f"{sorted(cuts)[0] if cuts else 'no cutoff'}; pass build_features output for "
            f"everyone at the cutoff of features")
    with _timed(timings, "baseline_features"):
        everyone = add_baseline_features(population, settings)
    ids = pd.Index(everyone["customer_id"].astype("string"))
    wanted = features["customer_id"].astype("string")
    if not ids.is_unique:
        raise ValueError("predict_customers: population holds a customer more than once; "
                         "pass build_features output (one row per customer)")
    where = ids.get_indexer(wanted)
    if (where < 0).any():
        cid = wanted[where < 0].iloc[0]
        raise ValueError(
            f"predict_customers: {counted(int((where < 0).sum()), 'customer')} of features "
            f"{'is' if (where < 0).sum() == 1 else 'are'} not in "
            f"population, e.g. {cid!r}; population must hold every customer of features "
            f"(build_features for everyone at the same cutoff)")
    base = {col: everyone[col].to_numpy()[where] for col in BASELINE_FEATURES}
    return features.assign(**base)


def _warn_if_p_alive_is_flat(p_alive: np.ndarray) -> None:
    """Say so when the baseline's ``p_alive`` is ~1 for every customer: BG/NBD's maximum
    likelihood fit found no dropout in this data (its dropout parameter ``a`` goes to 0,
    as on Online Retail, where the `lifetimes` package fits the same), so the column carries
    no information; ``churn_probability`` is the churn estimate to use."""
    known = p_alive[~np.isnan(p_alive)]
    if len(known) > 1 and known.min() > 1 - 1e-6:
        warn(
            f"p_alive is 1 for all {len(known):,} customers: the BG/NBD baseline finds no "
            f"dropout in this data, so p_alive carries no information here; use "
            f"churn_probability (the lifecast model) to rank customers by risk",
        )


def _eval_tables(churn: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                 value: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
                 cutoffs: dict[str, pd.Timestamp], *, logged: bool = True
                 ) -> tuple[dict[str, pd.DataFrame], str | None]:
    """(model vs baseline metrics per label, the warning given about metrics that are n/a,
    or None). ``churn`` and ``value`` are (actual, model, baseline) arrays, or None for a
    label not evaluated; ``cutoffs`` where each label was evaluated. A baseline without a
    prediction for every customer (NaN: it could not be fitted there,
    `add_baseline_features`) has no metrics: its column is NaN, shown as n/a
    (`training.metrics.compare_table`). A metric undefined on the evaluated customers (no
    churner among them, nobody spends, a model that predicts one value for everyone: on a
    small log) is n/a too, and one warning says which and why (and, with ``logged``, for
    `train`, what that means for MLflow and the champion rule)."""
    tables = {}
    unknown: list[str] = []
    for kind, arrays, metrics in (("churn", churn, churn_metrics),
                                  ("value", value, value_metrics)):
        if arrays is None:
            continue
        y, model, base = arrays
        known = bool(np.isfinite(np.asarray(base, dtype="float64")).all())
        why: dict[str, str] = {}
        why_base: dict[str, str] = {}
        tables[kind] = compare_table(metrics(y, model, undefined=why),
                                     metrics(y, base, undefined=why_base) if known else None)
        reasons: dict[str, list[str]] = {}
        for who, found in (("lifecast", why), ("baseline", why_base)):
            for metric, reason in found.items():
                reasons.setdefault(reason, []).append(
                    metric if who == "lifecast" else f"{metric} (baseline)")
        if reasons:
            parts = "; ".join(f"{', '.join(names)}: {reason}"
                              for reason, names in reasons.items())
            unknown.append(f"{kind} at {pd.Timestamp(cutoffs[kind]).date()} "
                           f"({len(y):,} customers): {parts}")
    if not unknown:
        return tables, None
    text = (f"metrics n/a (shown as n/a, not logged to MLflow): {' | '.join(unknown)}. "
            f"The champion rule compares what is defined" if logged else
            f"metrics n/a: {' | '.join(unknown)}")
    warn(text)
    return tables, text


def _baseline_warning(gaps: BaselineGaps, baselines: dict[str, tuple[np.ndarray, Any]],
                      anchored: bool, outputs: str = "") -> str | None:
    """Say once where the baseline left features empty (``gaps``) and what that means:
    ``baselines`` maps each evaluated label to (its baseline predictions on the evaluated
    customers, the cutoff), whose metrics are n/a when any is missing; ``anchored`` is
    whether the value model's total could be anchored to the baseline's; ``outputs``
    says which output columns are NaN (`BaselineGaps.outputs_missing`, "" for none).
    Returns the message given, or None when the baseline was complete."""
    if not gaps:
        return None
    sentences = []
    unknown = [f"{kind} metrics at {pd.Timestamp(cut).date()} ({int(np.isnan(base).sum()):,} "
               f"of {len(base):,} customers have no baseline prediction)"
               for kind, (base, cut) in baselines.items() if np.isnan(base).any()]
    if unknown:
        sentences.append(f"The baseline's {' and '.join(unknown)} are n/a and not logged "
                         f"to MLflow; lifecast's own metrics and the champion rule do not "
                         f"depend on them.")
    if not anchored:
        sentences.append("The value model's total is set by its validation snapshot alone, "
                         "not anchored to the baseline's total (value_anchor 1).")
    if outputs:
        sentences.append(outputs)
    text = gaps.message(" ".join(sentences))
    warn(text)
    return text


def evaluation_heading(kind: str, cutoff: pd.Timestamp) -> str:
    """What `train`'s evaluation of ``kind`` is, in one line (printed above its table)."""
    return (f"{kind} model vs BG/NBD + Gamma-Gamma, backtested at {cutoff.date()}: both fit "
            f"only on data before it, scored on the outcomes after it")


def _fit_as_of(tx: Transactions, cut: pd.Timestamp, config: TrainConfig,
               timings: dict[str, float], gaps: BaselineGaps
               ) -> tuple[pd.DataFrame, pd.DataFrame, FittedModels]:
    """(training frame, population, fitted models) as if today were ``cut``: the snapshots
    whose outcome windows end by it, the customers with a purchase before it, both with
    their baseline features (where the baseline could not be fitted, ``gaps`` says), and
    both models fit on the one for the other (`train` and `backtest` alike)."""
    fcfg = config.features
    with _timed(timings, "training_frame"):
        frame = sample_snapshots(build_training_frame(tx, cut, config=fcfg), config)
    with _timed(timings, "baseline_features"):
        frame = add_baseline_features(frame, fcfg, gaps=gaps)
    with _timed(timings, "population"):
        population = add_baseline_features(build_features(tx, cut, config=fcfg), fcfg,
                                           gaps=gaps)
    return frame, population, fit_models(frame, population, config, cut, timings=timings,
                                         columns=list(tx.report.columns))


def train(
    transactions: Any,
    mapping: ColumnMapping | None = None,
    as_of: Any | None = None,
    config: TrainConfig | dict | None = None,
    *,
    table: str | None = None,
) -> TrainResult:
    """Train both models on events before ``as_of`` and evaluate them by a backtest.

    The registered models (``models``) are fit on every snapshot whose outcome window ends
    by ``as_of``, the latest of them validating early stopping, calibration and the value
    level. The evaluation is out of time: for each label, its most recent fully observed
    snapshot (window ending at ``as_of``) is the evaluation cutoff, and the same settings
    are fit again as if today were that day (`build_training_frame` there: features and
    outcomes before it only, exactly what `backtest` at that cutoff fits) and scored on the
    outcomes after it (``eval_models``, ``evaluation``). A fit on the snapshots just before
    the evaluation snapshot would see most of its outcome window (with 30-day snapshots and
    a 90-day horizon, 60 of its 90 days) and look better than it is. The logged metrics
    therefore describe these settings on this data, not the registered models themselves,
    which also learned from the latest outcomes.

    Transactions in (as `features.build_features` takes them; ``mapping`` is the second
    argument here, ``as_of`` the third: default the day after the last event), ``config`` a
    `TrainConfig` or a dict of its fields. Returns a `TrainResult` (pandas frames and the
    fitted models); nothing is logged: `training.tracking.log_training` logs and registers
    it in MLflow.
    """
    config = _train_config(config)
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        tx = _load(transactions, mapping, table)
        as_of = training_as_of(tx, as_of, config)
        _warn_if_under_a_year(tx, as_of)
        _check_repeat_buyers(tx, as_of)
        data_used = tx.profile_before(as_of)
        data_days = tx.daily_profile(as_of)
    fcfg = config.features
    eval_cut = evaluation_cutoffs(tx.report.first_event, as_of, config)
    gaps = BaselineGaps()
    frame, population, models = _fit_as_of(tx, as_of, config, timings, gaps)
    models.data_days = data_days

    with _timed(timings, "evaluation_frame"):
        by_cut: dict[pd.Timestamp, pd.DataFrame] = {}
        for cut in sorted(set(eval_cut.values())):
            by_cut[cut] = add_baseline_features(
                sample_snapshots(build_training_frame(tx, cut, config=fcfg), config), fcfg,
                gaps=gaps)
        eval_frames = {kind: by_cut[cut] for kind, cut in eval_cut.items()}
    ev_c = frame[(frame["cutoff"] == eval_cut["churn"]) & frame["churned"].notna()]
    ev_v = frame[(frame["cutoff"] == eval_cut["value"]) & frame["future_value"].notna()]
    with _timed(timings, "evaluation_fit"):
        eval_models: dict[str, ChurnModel | ValueModel] = {
            "churn": ChurnModel(config).fit(eval_frames["churn"]),
            # anchored to the evaluation snapshot's population (its features, not its
            # outcomes), as the registered model is to the population at as_of
            "value": ValueModel(config).fit(eval_frames["value"], ev_v),
        }
    with _timed(timings, "evaluation"):
        y = ev_c["churned"].astype(int).to_numpy()
        p_model = eval_models["churn"].predict_proba(ev_c)
        p_base = ev_c["bg_p_no_purchase"].to_numpy(dtype="float64")
        yv = ev_v["future_value"].to_numpy(dtype="float64")
        v_model = eval_models["value"].predict(ev_v)
        v_base = ev_v["bg_clv"].to_numpy(dtype="float64")
        said = _baseline_warning(
            gaps, {"churn": (p_base, eval_cut["churn"]), "value": (v_base, eval_cut["value"])},
            models.value.anchored_ and eval_models["value"].anchored_)
        evaluation, undefined = _eval_tables((y, p_model, p_base), (yv, v_model, v_base),
                                             eval_cut)
        preds = {
            "churn": pd.DataFrame({"customer_id": ev_c["customer_id"].to_numpy(), "actual": y,
                                   "model": p_model, "baseline": p_base}),
            "value": pd.DataFrame({"customer_id": ev_v["customer_id"].to_numpy(),
                                   "actual": yv, "model": v_model, "baseline": v_base}),
        }
    return TrainResult(models, frame, evaluation, preds, eval_cut, tx.report,
                       eval_models=eval_models, eval_frames=eval_frames, data_used=data_used,
                       data_days=data_days, timings=timings, baseline_warning=said,
                       metrics_warning=undefined)


def backtest(
    transactions: Any,
    cutoff: Any,
    mapping: ColumnMapping | None = None,
    config: TrainConfig | dict | None = None,
    *,
    table: str | None = None,
) -> BacktestResult:
    """Train as if today were ``cutoff``, score every customer active before it, and, for
    each label whose outcome window the data covers, compare with the actual outcomes and
    with the BG/NBD + Gamma-Gamma baseline fitted on the same data.

    Transactions in. Returns a `BacktestResult` whose ``predictions`` hold one row per
    customer (``customer_id, churn_probability, churn_risk, predicted_clv, expected_orders,
    p_alive, segment, lifecycle_stage, value_at_risk`` plus the baseline's predictions, and
    ``churned`` / ``actual_value`` when the churn / value window is observed: a short churn
    horizon is evaluated even when a longer value horizon runs past the data) and whose
    ``metrics`` compare them with the baseline. Nothing is logged to MLflow.
    """
    config = _train_config(config)
    timings: dict[str, float] = {}
    with _timed(timings, "load"):
        tx = _load(transactions, mapping, table)
        cut = parse_cutoff(cutoff)
        _check_history(tx, cut, config, CUTOFF)
        _warn_if_under_a_year(tx, cut)
        _check_repeat_buyers(tx, cut)
    fcfg = config.features
    gaps = BaselineGaps()
    _, population, models = _fit_as_of(tx, cut, config, timings, gaps)
    out = predict_customers(models, population, cut, timings=timings)
    keep = ["customer_id", "churn_probability", "churn_risk", "predicted_clv",
            "expected_orders", "p_alive", "segment", "lifecycle_stage", "value_at_risk"]
    preds = out[keep].copy()
    preds["baseline_churn_probability"] = population["bg_p_no_purchase"].to_numpy()
    preds["baseline_clv"] = population["bg_clv"].to_numpy()

    horizons = {"churn": fcfg.churn_horizon_days, "value": fcfg.clv_horizon_days}
    covered = {k: window_observed(tx.report.last_event, cut, h) for k, h in horizons.items()}
    with _timed(timings, "evaluation"):
        labels = {h: build_labels(tx, cut, h)  # one query when both horizons are equal
                  for h in {horizons[k] for k in horizons if covered[k]}}
        churn = value = None
        if covered["churn"]:
            preds = preds.merge(labels[horizons["churn"]][["customer_id", "churned"]],
                                on="customer_id", how="left", validate="one_to_one")
            churn = (preds["churned"].astype(int).to_numpy(),
                     preds["churn_probability"].to_numpy(),
                     preds["baseline_churn_probability"].to_numpy())
        if covered["value"]:
            preds = preds.merge(
                labels[horizons["value"]][["customer_id", "future_value"]].rename(
                    columns={"future_value": "actual_value"}),
                on="customer_id", how="left", validate="one_to_one")
            value = (preds["actual_value"].to_numpy(dtype="float64"),
                     preds["predicted_clv"].to_numpy(), preds["baseline_clv"].to_numpy())
        said = _baseline_warning(
            gaps, {kind: (np.asarray(arrays[2], dtype="float64"), cut)
                   for kind, arrays in (("churn", churn), ("value", value))
                   if arrays is not None},
            models.value.anchored_, gaps.outputs_missing(cut))
        tables, undefined = _eval_tables(churn, value, {"churn": cut, "value": cut},
                                         logged=False)
    metrics = pd.concat(
        [t.assign(target=k) for k, t in tables.items()], ignore_index=True
    )[["target", "metric", "model", "baseline", "better"]] if tables else None
    return BacktestResult(preds, metrics, cut, all(covered.values()), models,
                          evaluated=tuple(tables), timings=timings, baseline_warning=said,
                          metrics_warning=undefined)

