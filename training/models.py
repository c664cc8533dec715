"""The churn and future-value models, and the baseline features they use.

* `add_baseline_features`: per snapshot cutoff, fits BG/NBD + Gamma-Gamma on that
  snapshot's own population (so no snapshot sees a later one) and adds ``bg_p_alive``,
  ``bg_p_no_purchase``, ``bg_expected_orders`` and ``gg_expected_value``, ``bg_clv`` as
  extra features. Customers in, the same rows with five columns more out.
* `ChurnModel`: LightGBM binary classifier with early stopping on a time-based
  validation snapshot, then a Platt calibration (scikit-learn logistic regression on the
  raw score's logit) on that snapshot, so that a predicted 0.7 means 70%. Platt rather
  than isotonic: on the real logs in ``bench/README.md`` isotonic steps overfit the one
  validation snapshot (worse log-loss and Brier), while the two-parameter map did not.
  Monotone constraints make churn probability non-decreasing in ``days_since_last`` and
  ``overdue_ratio``. Reasons come from LightGBM's own SHAP contributions (``pred_contrib``);
  for large batches they are looked up in per-tree tables of those same values
  (`training.treeshap`), which also give the raw score.
* `ValueModel`: LightGBM with a Tweedie objective for zero-inflated, heavy-tailed spend;
  the total level is corrected on the validation snapshot (sum of actual / sum of
  predicted), then anchored to the population it will score (`ValueModel.anchor`): the
  total follows the BG/NBD + Gamma-Gamma total of that population, corrected by the
  baseline's own ratio of actual to predicted spend on the validation snapshot. The
  boosted trees say which customers spend; the baseline, fitted on the population's whole
  history up to its cutoff, carries drift in who the population is (new customers, aging)
  that trees fitted on earlier snapshots cannot extrapolate.

Both save to and load from a folder of plain files (booster text, JSON), which is what
MLflow logs and what the service loads, so serving never unpickles a training object.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Self

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from features.config import FeatureConfig, mapping_key
from features.naming import counted
from features.registry import (
    DEFINITIONS_HISTORY,
    DEFINITIONS_KEY,
    DEFINITIONS_VERSION,
    feature_names,
    recorded_definitions,
    source_columns,
)
from features.warn import warn
from training.baseline import BaselineCLV, BaselineFitError
from training.treeshap import NotTabulable, TreeContributions

BASELINE_FEATURES = [
    "bg_p_alive",
    "bg_p_no_purchase",
    "bg_expected_orders",
    "gg_expected_value",
    "bg_clv",
]
logger = logging.getLogger(__name__)
_MONOTONE_UP = ("days_since_last", "overdue_ratio")
#: rows per LightGBM ``pred_contrib`` call when computing reasons
_REASONS_CHUNK = 200_000
#: from this many rows on, reasons come from `TreeContributions` (break-even ~5,000 rows)
_TABULATE_ROWS = 20_000


class TrainConfig(BaseModel):
    """Everything a training run depends on (logged to MLflow as one JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    features: FeatureConfig = FeatureConfig(churn_horizon_days=90, clv_horizon_days=365)
    seed: int = 42
    # Small, strongly regularized trees: stacked snapshots repeat the same customers, so
    # the effective sample is small; these beat larger trees on every real log we tried.
    # Learning rate 0.05: on the real logs of bench/README.md as good as 0.02 (9 of 15 bars
    # either way), while 0.02 ran into the 3,000-round cap on 1M synthetic customers.
    learning_rate: float = Field(0.05, gt=0, le=1)
    num_leaves: int = Field(7, ge=2)
    max_depth: int = Field(3, ge=1)  # bounded depth also keeps pred_contrib (reasons) cheap
    # The rows a leaf must hold at least; on a small training frame (under 20x this many
    # rows) a twentieth of its rows, but not under LightGBM's own default of 20
    # (`leaf_min_rows`, recorded as each model's ``min_child_samples_``): at 100 on small
    # logs (random extracts of 30-60 Online Retail customers, 50-170 training rows) no
    # tree could split and both models predicted one value for every customer.
    min_child_samples: int = Field(100, ge=1)
    feature_fraction: float = Field(0.7, gt=0, le=1)
    bagging_fraction: float = Field(0.8, gt=0, le=1)
    lambda_l2: float = Field(10.0, ge=0)
    # A budget on trees, not a tuning knob: prediction and SHAP reasons cost time linearly in
    # trees (on 1M synthetic customers an uncapped churn model grew 2,974 trees, and its
    # reasons cost ~1.8 ms per customer); on the real logs early stopping ends near or
    # before it (the same or better bars in bench/README.md than with 3,000).
    n_estimators: int = Field(1000, ge=1)
    early_stopping_rounds: int = Field(100, ge=1)
    # The churn model stops once its validation log-loss has not improved by more than this
    # within early_stopping_rounds (LightGBM's min_delta). On 1M synthetic customers it kept
    # 267 trees instead of running to the 1,000 cap, with the same holdout AUC, PR-AUC and
    # Brier score to 4 decimals, and cut `lifecast score` (reasons cost time linearly in
    # trees) from 59-67 s to 42 s; on the real logs it changed the trees kept by at most 35
    # and no bar (bench/README.md). Not applied to the value model: the Tweedie deviance's
    # scale depends on the currency, so an absolute tolerance would mean different things.
    churn_min_delta: float = Field(1e-4, ge=0)
    tweedie_variance_power: float = Field(1.3, gt=1, lt=2)
    risk_bands: tuple[float, float] = (0.3, 0.6)  # low < 0.3 <= medium < 0.6 <= high
    top_reasons: int = Field(3, ge=1, le=10)
    num_threads: int = Field(0, ge=0)  # 0: LightGBM's default (all cores)
    # Stacked snapshots repeat the same customers, so past about a hundred thousand
    # customers per snapshot (a million rows or more over 12 snapshots for 7-leaf trees)
    # more rows cost time and memory for little: the training frame keeps at most this
    # many customers per snapshot (the same customers in every snapshot, chosen by a seeded
    # hash of their id). 0 keeps everyone. Scoring always covers everyone.
    max_customers_per_snapshot: int = Field(100_000, ge=0)

    def lgb_params(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "num_threads": self.num_threads,
            "verbosity": -1,
        }

    def same_models_as(self, other: TrainConfig) -> bool:
        """Whether ``other`` fits the same models on the same data: every field but
        `RUN_ONLY_FIELDS` equal. (The thread count was compared too, so a retrain on later
        data with another ``--threads`` tied on scores and was never promoted.)"""
        return (self.model_dump(exclude=set(RUN_ONLY_FIELDS))
                == other.model_dump(exclude=set(RUN_ONLY_FIELDS)))


#: `TrainConfig` fields that change how a run goes, not what it fits: LightGBM with
#: ``deterministic`` and row-wise histograms gives the same trees on any number of threads
#: (`tests/training/test_tracking.py`, the same settings trained on later data)
RUN_ONLY_FIELDS = ("num_threads",)


def definitions_difference(version: int, what: str) -> str | None:
    """Why ``what`` (a model or a batch of stored features, built with feature definitions
    ``version``) does not match the features this lifecast computes; None when it does."""
    if version == DEFINITIONS_VERSION:
        return None
    if version > DEFINITIONS_VERSION:
        return (f"{what} was built with feature definitions v{version}, by a later lifecast "
                f"than this one (which computes v{DEFINITIONS_VERSION}): upgrade lifecast")
    changes = "; ".join(f"in v{v}, {DEFINITIONS_HISTORY[v]}"
                        for v in range(version + 1, DEFINITIONS_VERSION + 1))
    return (f"{what} was built with feature definitions v{version}; this lifecast computes "
            f"v{DEFINITIONS_VERSION}, and they differ: {changes}")


#: What to do about models of other feature definitions.
RETRAIN = "Retrain with `lifecast train` (then `lifecast score`)."


def check_feature_definitions(models: Sequence[tuple[ChurnModel | ValueModel, str]],
                              fix: str = RETRAIN) -> None:
    """Raise ValueError when a model was trained on features of other definitions than
    this lifecast computes (`features.registry.DEFINITIONS_VERSION`): scored on today's
    features it would predict something else, silently. ``models`` pairs each model with
    where it came from; ``fix`` says what to do."""
    for model, source in models:
        why = definitions_difference(model.feature_definitions_, source)
        if why:
            raise ValueError(f"{why}. Its inputs would not mean what it learned. {fix}")


def check_source_columns(models: Sequence[tuple[ChurnModel | ValueModel, str]],
                         columns: Sequence[str], data: str, fix: str = RETRAIN) -> None:
    """Raise ValueError when the data to score (``data``, read into the contract
    ``columns``) maps other optional columns the features are computed from than a model
    was trained with: without ``order_id`` every customer-day is one order, without
    ``product_id`` the distinct products are empty, so the same customers get other
    features and the model predicts something else, silently (on Complete Journey scored
    without its order, product and discount columns: a total predicted value 43% lower).
    A model that recorded none (saved before they were recorded) is not checked."""
    have = source_columns(columns)
    for model, source in models:
        trained = model.source_columns_
        if trained is None or list(trained) == have:
            continue
        missing = [c for c in trained if c not in have]
        extra = [c for c in have if c not in trained]
        said = []
        if missing:
            said.append(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not "
                        f"mapped for {data}")
        if extra:
            said.append(f"{', '.join(extra)} {'is' if len(extra) == 1 else 'are'} mapped for "
                        f"{data} but {'was' if len(extra) == 1 else 'were'} not in training")
        flags = ", ".join(mapping_key(c) for c in missing)
        trained_with = (f"with {', '.join(trained)} mapped" if trained else
                        "without order_id, product_id, category or discount")
        raise ValueError(
            f"{source} was trained on data {trained_with}; {' and '.join(said)}. Features "
            f"computed from other columns do not "
            f"mean what the model learned. Score with the same mapping as training"
            + (f" ({flags})" if flags else "") + f", or {fix[0].lower()}{fix[1:]}"
        )


def check_same_feature_settings(churn: ChurnModel, value: ValueModel, churn_from: str,
                                value_from: str, fix: str) -> None:
    """Raise ValueError when ``churn`` and ``value`` were trained with different feature
    settings (``*_from`` say where each came from, ``fix`` what to do), or on features of
    other definitions than this lifecast computes (`check_feature_definitions`). Scoring
    computes the baseline features once, with one feature config (the churn horizon sets
    ``bg_p_no_purchase`` and ``bg_expected_orders``), so one of the two models would get
    inputs unlike those it was trained on and predict something else, silently."""
    check_feature_definitions([(churn, f"the churn model ({churn_from})"),
                               (value, f"the value model ({value_from})")])
    a, b = churn.config.features, value.config.features
    if a == b:
        return
    raise ValueError(
        f"the churn model ({churn_from}) and the value model ({value_from}) were trained "
        f"with other feature settings: {feature_settings_diff(a, b, 'value model')}; they "
        f"cannot score together. {fix}"
    )


def feature_settings_diff(a: FeatureConfig, b: FeatureConfig, b_label: str,
                          names: Sequence[str] | None = None) -> str:
    """The settings (of ``names``, default all) where ``a`` and ``b`` differ (at most four),
    as ``"name <a> (<b_label> <b>)"`` joined by commas; empty when they agree."""
    diff = [f"{k} {v} ({b_label} {getattr(b, k)})" for k, v in a.model_dump().items()
            if (names is None or k in names) and getattr(b, k) != v]
    return ", ".join(diff[:4])


def model_feature_names(config: FeatureConfig | None = None) -> list[str]:
    """The model inputs: every registry feature plus the baseline features."""
    return [*feature_names(config), *BASELINE_FEATURES]


#: The baseline features each part gives (bg_clv, expected orders times order value, needs
#: both; without BG/NBD there is no baseline, so none of them).
_PART_FEATURES = {
    "BG/NBD": ("bg_p_alive", "bg_p_no_purchase", "bg_expected_orders", "bg_clv"),
    "Gamma-Gamma": ("gg_expected_value", "bg_clv"),
}


class BaselineGap(NamedTuple):
    """Why a part of the baseline gave no features at one cutoff (`BaselineGaps`)."""

    reason: str  # the fit's error, or that its predictions were not finite
    customers: int  # customers without them
    population: int  # customers at the cutoff
    columns: tuple[str, ...]  # the baseline features left NaN


@dataclass
class BaselineGaps:
    """Where `add_baseline_features` left baseline features empty (NaN), and why.

    ``cutoffs``: every cutoff it was asked for; ``gaps``: ``(cutoff, part) ->``
    `BaselineGap` for each part of the baseline (``"BG/NBD"``, ``"Gamma-Gamma"``) that
    could not be fitted on a cutoff's population or whose predictions were not finite for
    some customers. One collector may take several calls (`training.pipeline.train` passes
    one to each): a cutoff is counted once."""

    cutoffs: set[pd.Timestamp] = field(default_factory=set)
    gaps: dict[tuple[pd.Timestamp, str], BaselineGap] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.gaps)

    def parts(self) -> list[str]:
        """The parts with a gap: ``"BG/NBD"`` first, then ``"Gamma-Gamma"``."""
        return [part for part in ("BG/NBD", "Gamma-Gamma")
                if any(p == part for _, p in self.gaps)]

    def outputs_missing(self, cut: Any) -> str:
        """The per-customer outputs that come from the baseline (``p_alive``,
        ``expected_orders``) and are NaN for some customers at ``cut``, as a sentence
        for `message`'s ``meaning``; "" for none."""
        missing = {col for (c, _), gap in self.gaps.items() if c == pd.Timestamp(cut)
                   for col in gap.columns}
        names = [out for col, out in (("bg_p_alive", "p_alive"),
                                      ("bg_expected_orders", "expected_orders"))
                 if col in missing]
        if not names:
            return ""
        return (f"{' and '.join(names)} {'is' if len(names) == 1 else 'are'} NaN in the "
                f"output for those customers.")

    def message(self, meaning: str = "") -> str | None:
        """One warning that says, per part, where and why its features are missing, then
        ``meaning`` (what it means to the caller, whole sentences); None without gaps."""
        if not self.gaps:
            return None
        said = []
        for part in self.parts():
            where = sorted(c for c, p in self.gaps if p == part)
            last = where[-1]
            gap = self.gaps[(last, part)]
            some = ("" if gap.customers == gap.population
                    else f" for {gap.customers:,} of {gap.population:,} customers")
            dates = (", ".join(f"{c.date()}" for c in where) if len(where) <= 3
                     else f"between {where[0].date()} and {last.date()}")
            at = (f"at {len(where)} of {len(self.cutoffs)} cutoffs ({dates}; at {last.date()}"
                  f"{some}: " if len(self.cutoffs) > 1 else f"at {last.date()} ({some[1:]}"
                  f"{': ' if some else ''}")
            said.append(f"{part} {at}{gap.reason}), so {', '.join(gap.columns)} "
                        f"{'is' if len(gap.columns) == 1 else 'are'} NaN there")
        return (f"baseline features left empty: {'; '.join(said)}. The LightGBM models "
                f"read NaN as a missing value.{' ' + meaning if meaning else ''}")


def warn_if_a_subset(features: pd.DataFrame, fitted_on: int, *, caller: str,
                     example: str) -> None:
    """Warn when a cutoff of ``features`` (or ``features`` itself, without a cutoff column)
    holds fewer than half the ``fitted_on`` customers the models were fit on: the baseline
    (`add_baseline_features`) would be fitted on a subset, so the predictions differ from
    those for the whole population. ``caller`` names the function the user called and
    ``example`` shows it called with ``population=``."""
    if fitted_on <= 0:
        return
    if "cutoff" in features.columns:
        counts = features.groupby("cutoff", sort=True, dropna=False)["customer_id"].size()
    else:
        counts = pd.Series([len(features)], index=[None])
    few = counts[counts < fitted_on / 2]
    if few.empty:
        return
    cut, n = few.index[0], int(few.iloc[0])
    at = "" if cut is None or pd.isna(cut) else f" at cutoff {pd.Timestamp(cut)}"
    warn(f"{caller} fits the BG/NBD + Gamma-Gamma features on the rows it is given: "
         f"{counted(n, 'customer')}{at}, where the models were fit on {fitted_on:,}. For a "
         f"subset the predictions differ from those for the whole population: pass everyone's "
         f"features as population= ({example})")


def add_baseline_features(frame: pd.DataFrame, config: FeatureConfig, *,
                          fitted: dict[pd.Timestamp, BaselineCLV] | None = None,
                          gaps: BaselineGaps | None = None) -> pd.DataFrame:
    """Fit BG/NBD + Gamma-Gamma per snapshot cutoff and add their predictions as features.

    One row per (cutoff, customer) in; the same rows, in the same order, with the
    `BASELINE_FEATURES` columns added out. Horizons: churn horizon for
    ``bg_p_no_purchase``/``bg_expected_orders``, value horizon for ``bg_clv``. ``fitted``,
    if given, receives each cutoff's fitted baseline (scoring stores it with the batch).

    The baseline is a yardstick and a source of features, not a requirement: where a
    cutoff's population cannot fit a part of it (`training.baseline.BaselineFitError`: no
    repeat purchase for BG/NBD, fewer than 10 repeat customers with positive spend or an
    infinite mean spend for Gamma-Gamma, an optimiser that does not converge), that part's
    features are NaN at that cutoff (all five when BG/NBD fails, ``gg_expected_value`` and
    ``bg_clv`` when Gamma-Gamma does), and so is every prediction that is not finite.
    LightGBM reads NaN as missing. ``gaps``, if given, collects where and why
    (`BaselineGaps`) for the caller to say; without it one warning here says it. Invalid
    input (a NaN frequency, recency > T) still raises.
    """
    values = {col: np.full(len(frame), np.nan) for col in BASELINE_FEATURES}
    rft = {c: frame[c].astype("float64").to_numpy()
           for c in ("frequency", "recency", "T", "monetary_value")}
    found = BaselineGaps() if gaps is None else gaps
    for cut, rows in frame.groupby("cutoff", sort=True).indices.items():
        cut = pd.Timestamp(cut)
        found.cutoffs.add(cut)
        summary = pd.DataFrame({c: v[rows] for c, v in rft.items()})
        try:
            base = BaselineCLV().fit(summary, gamma_gamma_optional=True)
        except BaselineFitError as exc:  # BG/NBD: no baseline prediction at all
            found.gaps[(cut, exc.model)] = BaselineGap(str(exc), len(rows), len(rows),
                                                       tuple(BASELINE_FEATURES))
            continue
        if base.gamma_gamma_error_ is not None:
            found.gaps[(cut, "Gamma-Gamma")] = BaselineGap(
                str(base.gamma_gamma_error_), len(rows), len(rows),
                ("gg_expected_value", "bg_clv"))
        if fitted is not None:
            fitted[cut] = base
        churn_h = base.predict(summary, config.churn_horizon_days)
        value_h = (churn_h if config.clv_horizon_days == config.churn_horizon_days
                   else base.predict(summary, config.clv_horizon_days))
        got = {
            "bg_p_alive": churn_h["p_alive"],
            "bg_p_no_purchase": churn_h["churn_probability"],
            "bg_expected_orders": churn_h["expected_orders"],
            "gg_expected_value": value_h["expected_order_value"],
            "bg_clv": value_h["predicted_clv"],
        }
        bad = {col: ~np.isfinite(v.to_numpy(dtype="float64")) for col, v in got.items()}
        for col, v in got.items():
            values[col][rows] = np.where(bad[col], np.nan, v.to_numpy(dtype="float64"))
        # predictions that overflowed (BG/NBD's expected orders over the value horizon
        # count as BG/NBD's, as they do in bg_clv); a part not fitted is said above
        overflow = {"BG/NBD": bad["bg_p_alive"] | bad["bg_p_no_purchase"]
                    | bad["bg_expected_orders"]
                    | ~np.isfinite(value_h["expected_orders"].to_numpy(dtype="float64"))}
        if base.gamma_gamma_ is not None:
            overflow["Gamma-Gamma"] = bad["gg_expected_value"] | (
                bad["bg_clv"] & ~overflow["BG/NBD"])
        for part, mask in overflow.items():
            if mask.any():
                found.gaps[(cut, part)] = BaselineGap(
                    "its predictions are not finite", int(mask.sum()), len(rows),
                    tuple(col for col in _PART_FEATURES[part] if (bad[col] & mask).any()))
    if gaps is None and found:
        warn(found.message())
    # new columns on a shallow copy (copy-on-write): the input's columns are not copied
    return frame.assign(**values)


def _matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise ValueError(f"feature frame lacks the model's columns: {', '.join(missing)}")
    return frame[names].astype("float64").to_numpy(na_value=np.nan)


#: the fewest rows `leaf_min_rows` lets a leaf hold (LightGBM's default min_child_samples)
_SMALL_LEAF = 20


def leaf_min_rows(configured: int, n_rows: int) -> int:
    """The rows a leaf must hold when fitting on ``n_rows`` training rows: ``configured``
    (`TrainConfig.min_child_samples`), or on a small frame a twentieth of its rows, but
    not under 20 (LightGBM's default) nor over ``configured``. Frames of 20x
    ``configured`` rows or more (2,000 at the default 100) are fit with ``configured``."""
    return min(configured, max(_SMALL_LEAF, n_rows // 20))


#: The tag of a run (a train run, a tune trial) with a fit that stopped at its tree cap.
TREE_CAP_TAG = "lifecast.tree_cap"


def reached_tree_cap(trees: int, best_iteration: int, config: TrainConfig) -> bool:
    """Whether a fit that grew ``trees`` trees, the best at ``best_iteration``, stopped at
    the cap (``config.n_estimators``) rather than by early stopping: it grew them all and
    its validation score still improved within the last ``early_stopping_rounds``, so more
    trees might have done better and its score is not what its learning rate can do."""
    return (trees >= config.n_estimators
            and best_iteration > config.n_estimators - config.early_stopping_rounds)


def _split_last_snapshot(frame: pd.DataFrame, label: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Rows with the label: (older snapshots, the most recent snapshot) — time-based."""
    labelled = frame[frame[label].notna()]
    cuts = sorted(labelled["cutoff"].unique())
    if len(cuts) < 2:
        raise ValueError(
            f"training needs at least two snapshots with a '{label}' label (one to fit, the "
            f"latest to validate), got {len(cuts)}: use a later cutoff, a shorter horizon or "
            f"more frequent snapshots"
        )
    last = cuts[-1]
    return labelled[labelled["cutoff"] < last], labelled[labelled["cutoff"] == last]


@dataclass
class _Fitted:
    booster: Any
    names: list[str]


class _SavedBooster:
    """What `ChurnModel` and `ValueModel` share: a fitted LightGBM booster with its feature
    names, the snapshots it was fitted and validated on and its config, saved as a folder of
    plain files (``booster.txt``, ``model.json``) and loaded back. Each model adds its own
    fitted state to ``model.json`` (`_own_meta`, `_restore_own`). ``feature_definitions_``
    is the version of the feature definitions it was trained on
    (`features.registry.DEFINITIONS_VERSION`); ``source_columns_`` the optional contract
    columns its features were computed from (`features.registry.source_columns`, set by
    `training.pipeline.fit_models`; None when not recorded), which scoring checks
    (`check_source_columns`)."""

    #: set by `training.pipeline.fit_models`; a class default so a model fit alone has it
    source_columns_: list[str] | None = None
    #: whether the fit used every tree `TrainConfig.n_estimators` allows while still
    #: improving (`reached_tree_cap`); False for a model loaded from files
    reached_cap_: bool = False

    kind: str
    config: TrainConfig | None

    def __init__(self, config: TrainConfig | None = None) -> None:
        self.config = config

    def _own_meta(self) -> dict[str, Any]:
        raise NotImplementedError

    def _restore_own(self, meta: dict[str, Any]) -> None:
        raise NotImplementedError

    def _boost(self, cfg: TrainConfig, params: dict[str, Any], train: pd.DataFrame,
               valid: pd.DataFrame, y_tr: np.ndarray, y_va: np.ndarray,
               min_delta: float = 0.0) -> Any:
        """Fit a LightGBM booster with ``params`` (the objective's; `TrainConfig.lgb_params`
        under them) on ``train``, early-stopped on ``valid`` (by more than ``min_delta``),
        and set the state both models share: ``booster_``, ``feature_names_``,
        ``best_iteration_``, ``train_rows_``, ``min_child_samples_`` (`leaf_min_rows` of
        them), ``train_cutoffs_``, ``valid_cutoff_``, ``config_``,
        ``feature_definitions_``. Returns the booster."""
        import lightgbm as lgb

        names = model_feature_names(cfg.features)
        self.train_rows_ = len(train)
        self.min_child_samples_ = leaf_min_rows(cfg.min_child_samples, self.train_rows_)
        params = {**cfg.lgb_params(), **params, "min_child_samples": self.min_child_samples_}
        dtrain = lgb.Dataset(_matrix(train, names), y_tr, feature_name=names,
                             free_raw_data=False)
        dvalid = lgb.Dataset(_matrix(valid, names), y_va, reference=dtrain)
        grown = {"trees": 0}  # the booster lgb.train returns keeps only the best trees

        def count(env: Any) -> None:
            grown["trees"] = env.iteration + 1

        count.order = 0  # type: ignore[attr-defined]  # before early stopping's check
        booster = lgb.train(
            params, dtrain, num_boost_round=cfg.n_estimators, valid_sets=[dvalid],
            callbacks=[count, lgb.early_stopping(cfg.early_stopping_rounds, verbose=False,
                                                 min_delta=min_delta)],
        )
        self.booster_ = booster
        self.feature_names_ = names
        self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
        self.reached_cap_ = reached_tree_cap(grown["trees"], self.best_iteration_, cfg)
        self.train_cutoffs_ = [str(pd.Timestamp(c)) for c in sorted(train["cutoff"].unique())]
        self.valid_cutoff_ = str(pd.Timestamp(valid["cutoff"].iloc[0]))
        self.config_ = cfg
        self.feature_definitions_ = DEFINITIONS_VERSION
        return booster

    def has_splits(self) -> bool:
        """Whether any tree split: False means the model gives every row the same
        prediction (a training frame too small for ``min_child_samples_`` per leaf)."""
        return bool(self.booster_.feature_importance(
            "split", iteration=self.best_iteration_).sum() > 0)

    def __getstate__(self) -> dict[str, Any]:
        return _without_cache(self)

    def save(self, folder: str | Path) -> Path:
        """Write ``booster.txt`` and ``model.json`` into ``folder``; each file goes to a
        temporary name first and is renamed, so a failed save leaves no half-written file."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "kind": self.kind,
            "feature_names": self.feature_names_,
            "best_iteration": self.best_iteration_,
            "train_rows": self.train_rows_,
            "min_child_samples": self.min_child_samples_,
            **self._own_meta(),
            "train_cutoffs": self.train_cutoffs_,
            "valid_cutoff": self.valid_cutoff_,
            "config": json.loads(self.config_.model_dump_json()),
            DEFINITIONS_KEY: self.feature_definitions_,
            "source_columns": getattr(self, "source_columns_", None),
        }
        with _written(folder / "booster.txt") as tmp:
            self.booster_.save_model(str(tmp), num_iteration=self.best_iteration_)
        with _written(folder / "model.json") as tmp:
            tmp.write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Self:
        import lightgbm as lgb

        folder = Path(folder)
        meta = json.loads((folder / "model.json").read_text())
        self = cls(TrainConfig(**meta["config"]))
        self.booster_ = lgb.Booster(model_file=str(folder / "booster.txt"))
        self.feature_names_ = meta["feature_names"]
        self.best_iteration_ = self.booster_.current_iteration()
        # saved before session 20: rows unknown, fit with the configured value
        self.train_rows_ = meta.get("train_rows")
        self.min_child_samples_ = int(meta.get("min_child_samples",
                                               self.config.min_child_samples))
        self._restore_own(meta)
        self.train_cutoffs_ = meta["train_cutoffs"]
        self.valid_cutoff_ = meta["valid_cutoff"]
        self.config_ = self.config
        self.feature_definitions_ = recorded_definitions(meta)
        self.source_columns_ = meta.get("source_columns")  # None: saved before session 15
        return self


@contextlib.contextmanager
def _written(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed to ``path`` if the block succeeds,
    removed if it fails."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


class ChurnModel(_SavedBooster):
    """Calibrated LightGBM churn classifier. ``fit`` takes a stacked training frame."""

    kind = "churn"

    def fit(self, frame: pd.DataFrame) -> ChurnModel:
        """Fit on every labelled snapshot but the latest; early-stop and calibrate on it."""
        from sklearn.linear_model import LogisticRegression

        cfg = self.config or TrainConfig()
        names = model_feature_names(cfg.features)
        train, valid = _split_last_snapshot(frame, "churned")
        y_tr = train["churned"].astype(int).to_numpy()
        y_va = valid["churned"].astype(int).to_numpy()
        if len(np.unique(y_tr)) < 2:
            cuts = sorted(pd.Timestamp(c).date() for c in train["cutoff"].unique())
            what = ("churned: nobody bought again" if y_tr[0] else
                    "stayed: nobody churned")
            raise ValueError(
                f"every one of the {len(y_tr):,} training rows (snapshots {cuts[0]} to "
                f"{cuts[-1]}) {what} within the {cfg.features.churn_horizon_days}-day "
                f"horizon, so a churn model cannot be fit: use a log with more customers or "
                f"more history, or another churn horizon"
            )
        params = {
            "objective": "binary",
            "metric": "binary_logloss",
            "monotone_constraints": [1 if n in _MONOTONE_UP else 0 for n in names],
            "monotone_constraints_method": "advanced",
        }
        booster = self._boost(cfg, params, train, valid, y_tr, y_va, cfg.churn_min_delta)
        raw = booster.predict(
            _matrix(valid, names), num_iteration=booster.best_iteration, raw_score=True
        )
        slope, intercept = 1.0, 0.0
        if len(np.unique(y_va)) == 2:
            platt = LogisticRegression(C=1e6).fit(raw[:, None], y_va)
            # keep the map increasing, so monotone constraints survive calibration
            if platt.coef_[0, 0] > 0:
                slope, intercept = float(platt.coef_[0, 0]), float(platt.intercept_[0])
        self.calibration_ = (slope, intercept)
        return self

    def raw_score(self, frame: pd.DataFrame) -> np.ndarray:
        """The booster's raw log-odds per row."""
        return self.booster_.predict(
            _matrix(frame, self.feature_names_), num_iteration=self.best_iteration_,
            raw_score=True,
        )

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated churn probability per row (an increasing map of the raw score)."""
        return calibrate(self.raw_score(frame), *self.calibration_)

    def reasons(self, frame: pd.DataFrame, k: int | None = None) -> list[list[dict[str, Any]]]:
        """Top-k features by |SHAP contribution| to the churn score, with direction."""
        return self.predict_with_reasons(frame, k)[1]

    def predict_with_reasons(self, frame: pd.DataFrame, k: int | None = None
                             ) -> tuple[np.ndarray, list[list[dict[str, Any]]]]:
        """(calibrated churn probability, top-k reasons) per row: the probability is
        `predict_proba`'s, bit for bit; the reasons come from the SHAP contributions.

        Not the sum of the contributions, which is the raw score only up to the last bits
        (added in another order): customers the trees score exactly alike were told apart
        by rounding, so `lifecast backtest --cutoff D` printed another PR-AUC (0.6305)
        than `train`'s evaluation at D (0.6306, from `predict_proba`) for the same models
        on Online Retail, and the stored probabilities were not the MLflow model's.

        Computed ``_REASONS_CHUNK`` rows at a time, so the contributions matrix (one float
        per feature and row) never needs memory for the whole population at once. From
        ``_TABULATE_ROWS`` rows on, the contributions come from `TreeContributions`
        (LightGBM's own values, tabulated per tree: ~20x cheaper per row, after ~1.5 ms
        per tree to build); below, or for a model it cannot tabulate, from
        ``pred_contrib`` directly.
        """
        X = _matrix(frame, self.feature_names_)
        k = k or self.config_.top_reasons
        contributions = self._contributions_fn(len(X))
        out: list[list[dict[str, Any]]] = []
        for start in range(0, len(X), _REASONS_CHUNK):
            chunk = X[start:start + _REASONS_CHUNK]
            out.extend(top_reasons(contributions(chunk), chunk, self.feature_names_, k))
        raw = self.booster_.predict(X, num_iteration=self.best_iteration_, raw_score=True)
        return calibrate(raw, *self.calibration_), out

    def _contributions_fn(self, n_rows: int) -> Any:
        tables = _tables(self, n_rows)
        if tables is not None:
            return tables.predict

        def direct(chunk: np.ndarray) -> np.ndarray:
            return self.booster_.predict(chunk, num_iteration=self.best_iteration_,
                                         pred_contrib=True)

        return direct

    def _own_meta(self) -> dict[str, Any]:
        return {"calibration": list(self.calibration_)}

    def _restore_own(self, meta: dict[str, Any]) -> None:
        self.calibration_ = tuple(float(v) for v in meta["calibration"])


class ValueModel(_SavedBooster):
    """LightGBM Tweedie regression of future net spend, with a level correction on the
    validation snapshot and an anchor to the population it scores (`anchor`)."""

    kind = "clv"

    def fit(self, frame: pd.DataFrame, population: pd.DataFrame | None = None) -> ValueModel:
        """Fit on every labelled snapshot but the latest; early-stop and correct the level
        on it (sum actual / sum predicted), so the total tracks spend drift; then, with
        ``population`` (the customers the model will score, at its cutoff, with the
        baseline features), `anchor` the total to it."""
        cfg = self.config or TrainConfig()
        names = model_feature_names(cfg.features)
        train, valid = _split_last_snapshot(frame, "future_value")
        # Tweedie needs non-negative targets: net returns in a window count as zero spend;
        # the level correction below is made against the actual net totals.
        y_tr = train["future_value"].clip(lower=0).to_numpy(dtype="float64")
        y_va = valid["future_value"].clip(lower=0).to_numpy(dtype="float64")
        if not (y_tr > 0).any():
            raise ValueError("no customer spends anything in any training window: "
                             "a value model cannot be fit")
        params = {
            "objective": "tweedie",
            "tweedie_variance_power": cfg.tweedie_variance_power,
            "metric": "tweedie",
        }
        booster = self._boost(cfg, params, train, valid, y_tr, y_va)
        pred_va = booster.predict(_matrix(valid, names), num_iteration=booster.best_iteration)
        actual_total = float(valid["future_value"].sum())
        pred_total = float(pred_va.sum())
        self.level_ = actual_total / pred_total if pred_total > 0 and actual_total > 0 else 1.0
        # the baseline's ratio of actual to predicted spend on the validation snapshot,
        # what `anchor` carries to a population (None: no usable baseline there)
        base_total = _baseline_total(valid)
        self.baseline_ratio_ = (actual_total / base_total
                                if base_total is not None and actual_total > 0 else None)
        self.anchor_, self.anchored_ = 1.0, False
        if population is not None:
            self.anchor(population)
        return self

    def anchor(self, population: pd.DataFrame) -> ValueModel:
        """`anchor_predict` without the predictions. Returns self."""
        self._anchor(population)
        return self

    def anchor_predict(self, population: pd.DataFrame) -> np.ndarray:
        """Anchor the total to ``population`` (features at one cutoff with the baseline
        features, no labels): afterwards the predictions for it sum to the baseline's total
        for it (``bg_clv``) times the baseline's ratio of actual to predicted spend on the
        validation snapshot (a ratio estimator, with the baseline as the auxiliary model).
        Sets ``anchor_``, the factor applied on top of ``level_`` (1.0, with a log line,
        when the baseline is missing or not positive on the validation snapshot or on
        ``population``), and ``anchored_``, whether it was anchored. Returns the
        predictions for ``population`` after anchoring, from the one prediction pass the
        anchor needs.

        Why: on logs whose scored population differs from the snapshots the trees were fit
        on (a log that starts shortly before the cutoff, so the early snapshots' "new"
        customers are mostly established ones seen for the first time), the level from
        the validation snapshot alone over-predicted the new customers by 40-85%
        (bench/README.md, "Model quality"), while the baseline, fitted on the population's
        own history, tracked them."""
        pred = self._anchor(population)
        return self.predict(population) if pred is None else pred * self.anchor_

    def _anchor(self, population: pd.DataFrame) -> np.ndarray | None:
        """Set ``anchor_`` (see `anchor_predict`); return the predictions for
        ``population`` before it (None when not anchored: nothing was predicted)."""
        self.anchor_, self.anchored_ = 1.0, False
        pop_base = _baseline_total(population)
        if self.baseline_ratio_ is None or pop_base is None:
            logger.info("value model: not anchored to the population (the baseline's "
                        "predictions are missing or not positive)")
            return None
        pred = self.predict(population)
        total = float(pred.sum())
        if total > 0:
            self.anchor_ = self.baseline_ratio_ * pop_base / total
            self.anchored_ = True
        return pred

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predicted net spend in the value horizon, per row (>= 0).

        From ``_TABULATE_ROWS`` rows on, the trees' outputs are looked up in
        `TreeContributions`' tables (about half the time of LightGBM's own prediction on
        a million rows of a 1,000-tree model; the same values within rounding, checked on
        the first rows of every call)."""
        X = _matrix(frame, self.feature_names_)
        tables = _tables(self, len(X))
        if tables is not None:
            # Tweedie's link is log: the prediction is exp(raw score)
            pred = np.exp(tables.predict_raw(X))
            head = self.booster_.predict(X[:64], num_iteration=self.best_iteration_)
            if np.allclose(pred[:64], head, rtol=1e-9, atol=0):
                return pred * self.scale
            logger.warning("value model: tabulated prediction differs from LightGBM's on "
                           "the first rows; predicting with LightGBM")
        return self.booster_.predict(X, num_iteration=self.best_iteration_) * self.scale

    @property
    def scale(self) -> float:
        """What the booster's prediction is multiplied by: ``level_ * anchor_``."""
        return self.level_ * self.anchor_

    def _own_meta(self) -> dict[str, Any]:
        return {"level": self.level_, "anchor": self.anchor_,
                "baseline_ratio": self.baseline_ratio_}

    def _restore_own(self, meta: dict[str, Any]) -> None:
        self.level_ = float(meta["level"])
        # models saved before the anchor existed: not anchored
        self.anchor_ = float(meta.get("anchor", 1.0))
        self.anchored_ = self.anchor_ != 1.0  # the factor is 1.0 exactly when not anchored
        ratio = meta.get("baseline_ratio")
        self.baseline_ratio_ = None if ratio is None else float(ratio)


def _baseline_total(frame: pd.DataFrame) -> float | None:
    """The baseline's predicted total spend (``bg_clv``) of ``frame``'s customers, or None
    when it is missing for any of them or not positive."""
    if "bg_clv" not in frame.columns:
        return None
    base = frame["bg_clv"].to_numpy(dtype="float64", na_value=np.nan)
    total = float(base.sum())
    return total if np.isfinite(total) and total > 0 else None


def calibrate(raw_score: np.ndarray, slope: float, intercept: float) -> np.ndarray:
    """Platt map of a raw log-odds score to a probability."""
    return 1.0 / (1.0 + np.exp(-(slope * np.asarray(raw_score, dtype="float64") + intercept)))


def _tables(model: ChurnModel | ValueModel, n_rows: int) -> TreeContributions | None:
    """The model's `TreeContributions`, built once and cached on it, for batches of at least
    ``_TABULATE_ROWS`` rows; None for smaller batches or a model it cannot tabulate."""
    if n_rows < _TABULATE_ROWS:
        return None
    # keyed on the booster itself: a refit (a new booster) never reads the old tables
    cached = model.__dict__.get("_tables")
    if cached is None or cached[0] is not model.booster_:
        try:
            tables = TreeContributions(model.best_iteration_).fit(model.booster_)
        except NotTabulable as e:
            logger.info("%s model: not tabulated (%s); LightGBM predicts", model.kind, e)
            tables = None
        cached = model._tables = (model.booster_, tables)
    return cached[1]


def _without_cache(model: ChurnModel | ValueModel) -> dict[str, Any]:
    state = dict(model.__dict__)
    state.pop("_tables", None)  # a cache, rebuilt from the booster when needed
    return state


def top_reasons(
    contrib: np.ndarray, X: np.ndarray, names: list[str], k: int
) -> list[list[dict[str, Any]]]:
    """Per row, the k features with the largest |contribution| (bias column dropped).

    Ties keep the column order; a NaN contribution comes after every number. A feature whose
    contribution is exactly 0 moved nothing and is no reason: it is left out, so a row has
    fewer than k reasons when fewer features moved its score (none from a model whose trees
    could not split: it gives everyone the same score). Vectorised: the
    selection and every value are computed as arrays and only the final dicts are built in
    Python; a few rows (the service's requests) take a plain-Python path instead, with the
    same result, because numpy's fixed cost per call is most of the time for one row.
    """
    c = np.asarray(contrib)[:, : len(names)]
    if c.shape[0] <= _FEW_ROWS:
        return _few_top_reasons(c, np.asarray(X, dtype="float64"), names, k)
    order = _top_k_columns(np.abs(c), k)
    rows = np.arange(c.shape[0])[:, None]
    top_c = c[rows, order]
    top_x = np.asarray(X, dtype="float64")[rows, order]
    value = top_x.astype(object)
    value[np.isnan(top_x)] = None
    feature = np.asarray(names, dtype=object)[order]
    direction = np.where(top_c > 0, "raises", "lowers").astype(object)
    with _gc_paused():  # millions of small containers: the cyclic GC would rescan them
        columns = [
            [
                {"feature": f, "value": v, "contribution": ci, "direction": d}
                for f, v, ci, d in zip(
                    feature[:, j].tolist(), value[:, j].tolist(), top_c[:, j].tolist(),
                    direction[:, j].tolist(), strict=True,
                )
            ]
            for j in range(order.shape[1])
        ]
        if not columns:
            return [[] for _ in range(c.shape[0])]
        out = [list(r) for r in zip(*columns, strict=True)]
        zero = top_c == 0
        for i in np.flatnonzero(zero.any(axis=1)).tolist():
            out[i] = [r for r, z in zip(out[i], zero[i].tolist(), strict=True) if not z]
        return out


#: `top_reasons` builds the reasons of at most this many rows in plain Python
_FEW_ROWS = 8


def _few_top_reasons(c: np.ndarray, X: np.ndarray, names: list[str], k: int
                     ) -> list[list[dict[str, Any]]]:
    """`top_reasons` row by row: ``sorted`` is stable, so equal magnitudes keep the column
    order, and NaN (keyed as infinity) sorts after every number, as in `_top_k_columns`."""
    out = []
    inf = math.inf
    for crow, xrow in zip(c.tolist(), X.tolist(), strict=True):
        keys = [inf if v != v else -abs(v) for v in crow]
        top = sorted(range(len(crow)), key=keys.__getitem__)[:k]
        out.append([
            {"feature": names[j], "value": None if xrow[j] != xrow[j] else xrow[j],
             "contribution": crow[j], "direction": "raises" if crow[j] > 0 else "lowers"}
            for j in top if crow[j] != 0
        ])
    return out


def _top_k_columns(magnitude: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the k largest values, largest first, ties in column
    order, NaN after every number: ``np.argsort(-magnitude, kind="stable")[:, :k]`` for
    non-negative ``magnitude``, by k passes of argmax instead of a full sort per row."""
    n, m = magnitude.shape
    k = min(k, m)
    if k > m // 4:  # a few columns of many: argmax passes; otherwise the sort is as cheap
        return np.argsort(-magnitude, axis=1, kind="stable")[:, :k]
    a = np.where(np.isnan(magnitude), -1.0, magnitude)  # a copy: NaN below every number
    rows = np.arange(n)
    out = np.empty((n, k), dtype=np.intp)
    for j in range(k):
        best = a.argmax(axis=1)  # the first of equal maxima: column order on ties
        out[:, j] = best
        a[rows, best] = -2.0  # taken: below NaN
    return out


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for a block that allocates many acyclic
    objects (dicts and lists of floats and str): each collection would walk every object
    built so far (in one test on a busy machine: 2.9 s with it, 0.9 s without, for 200k
    customers' reasons)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def risk_band(p: np.ndarray, bands: tuple[float, float]) -> np.ndarray:
    """low / medium / high by the configured thresholds."""
    lo, hi = bands
    p = np.asarray(p)
    if p.ndim == 1 and len(p) <= _FEW_ROWS:  # a request's few rows: numpy's setup dominates
        return np.array(["high" if x >= hi else "medium" if x >= lo else "low"
                         for x in p.tolist()], dtype="<U6")
    return np.where(p >= hi, "high", np.where(p >= lo, "medium", "low"))
