"""Batch scoring: every customer, scored by the champion models, into the customer store.

Transactions in; one row per customer out (the per-customer output of DESIGN.md), written
to the store atomically (readers see the previous batch or this one, never a mix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from features.config import ColumnMapping
from features.contract import Transactions, check_cutoff, parse_cutoff
from features.naming import named, setting
from features.pipeline import build_features
from features.warn import warn
from training.baseline import BaselineCLV
from training.models import (
    BaselineGaps,
    add_baseline_features,
    check_feature_definitions,
    check_source_columns,
)
from training.pipeline import (
    AS_OF,
    FittedModels,
    _load,
    _timed,
    data_differs,
    default_as_of,
    predict_customers,
)
from training.store import CustomerStore


@dataclass
class ScoreResult:
    """What `score` returns: ``scores``, the per-customer output (one row per customer, a
    pandas DataFrame with `training.pipeline.OUTPUT_COLUMNS` and the model versions);
    ``batch_id`` of the batch written to the store; ``as_of``, the scoring cutoff;
    ``versions`` of the models that scored it; ``store_url`` (credentials masked); and
    ``timings``, wall seconds per step."""

    scores: pd.DataFrame
    batch_id: str
    as_of: pd.Timestamp
    versions: dict[str, str]
    store_url: str
    #: wall seconds per step: load, features, baseline_features, churn_predict_reasons,
    #: value_predict, segments, store_write
    timings: dict[str, float] = field(default_factory=dict)


def _warn_if_another_log(models: FittedModels, tx: Transactions, cut: pd.Timestamp) -> None:
    """Warn when ``tx`` is not the log the models were trained on, up to the earlier of
    their as-of and ``cut`` (`training.pipeline.data_differs`; the same log with later
    events is the same log). Models saved without a daily profile are not checked."""
    if models.data_days is None or models.as_of is None:
        return
    before = min(pd.Timestamp(models.as_of), cut)
    why = data_differs(models.data_days, tx.daily_profile(before), before)
    if why:
        warn(f"the models were trained on another log than this one: {why}. Their scores "
             f"are those of a model of other data (another shop, a sample, a restated "
             f"history); train on this log with `lifecast train` for models of its own")


def score_customers(models: FittedModels, transactions: Any, as_of: Any | None = None,
                    mapping: ColumnMapping | None = None, *, table: str | None = None,
                    timings: dict[str, float] | None = None,
                    baselines: dict[pd.Timestamp, BaselineCLV] | None = None,
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-customer output, model features) for every customer with a purchase before
    ``as_of`` (default: the day after the last event). ``timings``, if given, receives the
    wall seconds of each step (see `ScoreResult.timings`); ``baselines``, if given, the
    BG/NBD + Gamma-Gamma baseline fitted on this population (keyed by ``as_of``)."""
    check_feature_definitions([(models.churn, "the churn model"),
                               (models.value, "the value model")])
    with _timed(timings, "load"):
        tx = _load(transactions, mapping, table)
        check_source_columns([(models.churn, "the churn model"),
                              (models.value, "the value model")],
                             list(tx.report.columns), tx.report.source)
        cut = parse_cutoff(as_of) if as_of is not None else default_as_of(tx)
        if cut <= pd.Timestamp(tx.report.first_event):  # no customers: say it of --as-of
            check_cutoff(tx.report, cut, models.config.features, name=named(*AS_OF),
                         example=default_as_of(tx))
        _warn_if_another_log(models, tx, cut)
    fcfg = models.config.features
    with _timed(timings, "features"):
        feats = build_features(tx, cut, config=fcfg)
    gaps = BaselineGaps()
    with _timed(timings, "baseline_features"):
        feats = add_baseline_features(feats, fcfg, fitted=baselines, gaps=gaps)
    if gaps:
        warn(gaps.message(" ".join(filter(None, [
            gaps.outputs_missing(cut),
            "The lifecast models still score every customer."]))))
    return predict_customers(models, feats, cut, timings=timings), feats


def scores_summary(scores: pd.DataFrame, n_top: int = 10) -> str:
    """The per-customer output of one batch (`predict_customers`) in, a text summary out:
    per segment its customers, mean churn probability and value at risk (largest first),
    then the ``n_top`` customers with the most value at risk. What `lifecast score` and
    `lifecast demo` print."""
    seg = (scores.groupby("segment")
           .agg(customers=("customer_id", "size"),
                mean_churn_probability=("churn_probability", "mean"),
                value_at_risk=("value_at_risk", "sum"))
           .sort_values("value_at_risk", ascending=False))
    top = scores.nlargest(n_top, "value_at_risk")[
        ["customer_id", "segment", "lifecycle_stage", "churn_probability", "predicted_clv",
         "value_at_risk"]]
    money = {"float_format": lambda v: f"{v:,.2f}"}
    with pd.option_context("display.width", 140):
        return "\n".join(["Segments:", seg.to_string(**money), "",
                          f"{'Ten' if n_top == 10 else n_top} customers with the most value "
                          f"at risk:", top.to_string(index=False, **money)])


def _warn_if_not_newer(current: dict | None, cut: pd.Timestamp, versions: dict[str, str],
                       *, defaulted: bool, n_customers: int) -> None:
    """Warn when the batch about to replace the store's ``current`` one is older than it
    (readers and the service would get older scores), or, with the as-of taken from the
    data (``defaulted``), is as of the same day with the same models and as many customers:
    a nightly run on an export that was not updated, which the stale-data warning (30 days)
    does not see. (Another log ending the same day, of other customers, repeats nothing:
    it was told so too.)"""
    if current is None:
        return
    now, written = pd.Timestamp(current["as_of"]), f"{current['created_at']:%Y-%m-%d %H:%M}"
    if cut < now:
        warn(f"these scores are as of {cut.date()}, older than the store's current batch "
             f"{current['batch_id']} (as of {now.date()}, written {written} UTC) that they "
             f"replace: readers and the service will get the older scores. If that is not "
             f"meant, score the newer log again")
        return
    same_models = dict(current["model_versions"]) == {
        kind: "" if v is None else str(v) for kind, v in versions.items()}
    if cut == now and defaulted and same_models and current["n_customers"] == n_customers:
        warn(f"the store's current batch {current['batch_id']} (written {written} UTC) is "
             f"already as of {cut.date()}, from the same models: the log has no event after "
             f"those it scored, so these scores repeat it. Was the export updated? (Pass "
             f"{setting('--as-of', 'as_of', 'DATE')} to score a later day on purpose)")


def score(
    transactions: Any,
    mapping: ColumnMapping | None = None,
    as_of: Any | None = None,
    *,
    store_url: str | None = None,
    models: FittedModels | None = None,
    table: str | None = None,
) -> ScoreResult:
    """Score every customer with the champion models (or ``models``) and write the batch
    into the customer store (default: ``$LIFECAST_STORE_URL``, else ``lifecast_store.db`` in
    the working folder, as for the service: `CustomerStore.configured_url`).

    Without ``models`` the champions are read from the MLflow store
    (`training.tracking.load_champions`; ``MLFLOW_TRACKING_URI``, else ``./mlflow.db``).
    Returns a `ScoreResult`; its ``scores`` are the per-customer output as a pandas
    DataFrame."""
    store = CustomerStore(CustomerStore.configured_url(store_url))
    if store.in_memory:
        raise ValueError(
            f"the customer store {store.safe_url} is an in-memory database: the scores would "
            f"be lost when this {named('command', 'process')} ends. Give a file, e.g. "
            f"{setting('--store', 'store_url', CustomerStore.default_url())}")
    try:
        store.check_reachable()  # before the work, not after it
        if models is None:
            from training.tracking import load_champions

            models = load_champions()
        timings: dict[str, float] = {}
        baselines: dict[pd.Timestamp, BaselineCLV] = {}
        scores, feats = score_customers(models, transactions, as_of, mapping, table=table,
                                        timings=timings, baselines=baselines)
        cut = pd.Timestamp(scores["as_of"].iloc[0])
        trained = pd.Timestamp(models.as_of) if models.as_of is not None else None
        if trained is not None and cut < trained:
            backtest_call = f"training.pipeline.backtest(..., cutoff='{cut.date()}')"
            warn(f"scoring as of {cut.date()} with models trained as of {trained.date()}: "
                 f"they learned from what happened after {cut.date()}, so these scores "
                 f"look better than a forecast made then could; "
                 f"{named(f'`lifecast backtest --cutoff {cut.date()}`', backtest_call)} "
                 f"shows what the models of that day would say")
        _warn_if_not_newer(store.current_batch(), cut, dict(models.versions),
                           defaulted=as_of is None, n_customers=len(scores))
        feature_cols = ["customer_id", *models.churn.feature_names_]
        with _timed(timings, "store_write"):
            batch = store.write_batch(
                scores.drop(columns=["churn_model_version", "clv_model_version"]),
                feats[feature_cols],
                as_of=cut,
                model_versions=dict(models.versions),
                segmenter=models.segmenter.to_dict(),
                # the baseline fitted on this population: /score reuses it (no refit)
                metadata={"config": models.config.model_dump(mode="json"),
                          "baseline": next((b.to_dict() for b in baselines.values()), None)},
            )
    finally:
        store.close()
    return ScoreResult(scores, batch, cut, dict(models.versions), store.safe_url, timings)
