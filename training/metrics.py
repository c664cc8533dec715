"""Evaluation metrics for the churn and the customer-value models.

Pure functions on one value per customer: numpy arrays, lists or pandas Series of equal length.
Every function validates its input and raises ``ValueError`` on a length mismatch, empty input,
NaN (or infinite) values, and raises `UndefinedMetricError` (a ``ValueError``) on inputs for which
the metric is undefined (a single class for the ranking metrics, zero total actual value for the
ratio metrics, a constant prediction for the rank metrics of value, ...), saying which.
`churn_metrics` and `value_metrics` can instead report such a metric as NaN (n/a) with its
reason (``undefined=``), which is how training evaluates: a small log whose evaluation snapshot
has no churner is still a log lifecast can train on.

"Top decile" everywhere means the ``ceil(n / 10)`` customers with the highest prediction; ties
are broken by input order (stable sort), so results are deterministic.

Churn metrics take ``y`` (1 = churned, 0 = retained; booleans accepted) and ``p`` (predicted
churn probability in [0, 1]). Value metrics take ``actual`` and ``predicted`` (e.g. future net
spend; negative actual values from returns are allowed).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as _sk_log_loss

__all__ = [
    "HIGHER_IS_BETTER",
    "LOWER_IS_BETTER",
    "ZERO_IS_BEST",
    "UndefinedMetricError",
    "aggregate_bias",
    "brier",
    "capture_top_decile",
    "churn_metrics",
    "compare_table",
    "decile_mape",
    "expected_calibration_error",
    "format_table",
    "lift_top_decile",
    "log_loss",
    "mae",
    "normalized_gini",
    "pr_auc",
    "roc_auc",
    "spearman",
    "top_decile_capture",
    "value_metrics",
]

ArrayLike = npt.ArrayLike
FloatArray = npt.NDArray[np.float64]

#: Metric names (as returned by :func:`churn_metrics` and :func:`value_metrics`) by direction.
HIGHER_IS_BETTER: frozenset[str] = frozenset(
    {
        "roc_auc",
        "pr_auc",
        "lift_top_decile",
        "capture_top_decile",
        "normalized_gini",
        "spearman",
        "top_decile_capture",
    }
)
LOWER_IS_BETTER: frozenset[str] = frozenset({"brier", "log_loss", "ece", "decile_mape", "mae"})
ZERO_IS_BEST: frozenset[str] = frozenset({"aggregate_bias"})


class UndefinedMetricError(ValueError):
    """The metric has no value on these inputs (they are valid; the data lacks what it
    measures: both classes, a non-zero total, a ranking)."""


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_1d(values: ArrayLike, name: str) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional (one value per customer)")
    if arr.size == 0:
        raise ValueError(f"empty input: {name} has no values")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN ({int(np.isnan(arr).sum())} of {arr.size})")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    return arr


def _pair(a: ArrayLike, b: ArrayLike, name_a: str, name_b: str) -> tuple[FloatArray, FloatArray]:
    x = _as_1d(a, name_a)
    y = _as_1d(b, name_b)
    if x.shape != y.shape:
        raise ValueError(f"length mismatch: {name_a} has {x.size} values, {name_b} has {y.size}")
    return x, y


def _churn_inputs(y: ArrayLike, p: ArrayLike) -> tuple[FloatArray, FloatArray]:
    yy, pp = _pair(y, p, "y", "p")
    if not np.isin(yy, (0.0, 1.0)).all():
        raise ValueError("y must contain only 0 and 1 (1 = churned)")
    if (pp < 0).any() or (pp > 1).any():
        raise ValueError("p must be probabilities in [0, 1]")
    return yy, pp


def _require_both_classes(y: FloatArray, metric: str) -> None:
    if np.unique(y).size < 2:
        only = int(y[0])
        raise UndefinedMetricError(
            f"{metric} is undefined when y has a single class: all {y.size} labels are {only}"
        )


def _top_decile_mask(scores: FloatArray) -> npt.NDArray[np.bool_]:
    """Boolean mask of the ceil(n/10) highest scores, ties broken by input order."""
    n = scores.size
    k = -(-n // 10)  # ceil(n / 10) in integer arithmetic
    order = np.argsort(-scores, kind="stable")
    mask = np.zeros(n, dtype=bool)
    mask[order[:k]] = True
    return mask


def _nonzero_total(actual: FloatArray, metric: str) -> float:
    total = float(actual.sum())
    if total == 0:
        raise UndefinedMetricError(f"{metric} is undefined when the actual values sum to 0")
    return total


# --------------------------------------------------------------------------------------------
# churn metrics
# --------------------------------------------------------------------------------------------


def roc_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the ROC curve (scikit-learn). Needs both classes in ``y``."""
    yy, pp = _churn_inputs(y, p)
    _require_both_classes(yy, "roc_auc")
    return float(roc_auc_score(yy, pp))


def pr_auc(y: ArrayLike, p: ArrayLike) -> float:
    """Area under the precision-recall curve as average precision (scikit-learn), with
    churn (1) as the positive class. Needs both classes in ``y``."""
    yy, pp = _churn_inputs(y, p)
    _require_both_classes(yy, "pr_auc")
    return float(average_precision_score(yy, pp))


def brier(y: ArrayLike, p: ArrayLike) -> float:
    """Brier score: mean of ``(p - y)^2`` (scikit-learn)."""
    yy, pp = _churn_inputs(y, p)
    return float(brier_score_loss(yy, pp, labels=[0, 1]))


def log_loss(y: ArrayLike, p: ArrayLike) -> float:
    """Mean negative log-likelihood ``-mean(y ln p + (1 - y) ln(1 - p))`` (scikit-learn, which
    clips ``p`` to ``[eps, 1 - eps]`` so a confident mistake is large but finite)."""
    yy, pp = _churn_inputs(y, p)
    return float(_sk_log_loss(yy, pp, labels=[0, 1]))


def expected_calibration_error(y: ArrayLike, p: ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error over ``n_bins`` equal-width bins of ``p`` on [0, 1].

    ``ECE = sum_b (n_b / n) |mean(y in b) - mean(p in b)|`` over non-empty bins. Bin ``k``
    holds ``k / n_bins <= p < (k + 1) / n_bins`` (bin index ``floor(p * n_bins)``), with
    ``p = 1`` in the last bin.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    yy, pp = _churn_inputs(y, p)
    idx = np.minimum(np.floor(pp * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    sum_y = np.bincount(idx, weights=yy, minlength=n_bins)
    sum_p = np.bincount(idx, weights=pp, minlength=n_bins)
    nonempty = counts > 0
    gaps = np.abs(sum_y[nonempty] - sum_p[nonempty]) / counts[nonempty]
    return float(np.sum(counts[nonempty] / yy.size * gaps))


def lift_top_decile(y: ArrayLike, p: ArrayLike) -> float:
    """Churn rate among the top decile by ``p`` divided by the overall churn rate.

    1 means no better than random; the maximum is ``n / (number of churners)`` capped by the
    decile size. Needs at least one churner.
    """
    yy, pp = _churn_inputs(y, p)
    if yy.sum() == 0:
        raise UndefinedMetricError(
            "lift_top_decile is undefined when y has no positives (no churners)")
    top = _top_decile_mask(pp)
    return float(yy[top].mean() / yy.mean())


def capture_top_decile(y: ArrayLike, p: ArrayLike) -> float:
    """Share of all churners found in the top decile by ``p``. Needs at least one churner."""
    yy, pp = _churn_inputs(y, p)
    if yy.sum() == 0:
        raise UndefinedMetricError(
            "capture_top_decile is undefined when y has no positives (no churners)")
    top = _top_decile_mask(pp)
    return float(yy[top].sum() / yy.sum())


def churn_metrics(y: ArrayLike, p: ArrayLike, *, undefined: dict[str, str] | None = None
                  ) -> dict[str, float]:
    """All churn metrics, keys ``roc_auc, pr_auc, brier, log_loss, ece, lift_top_decile,
    capture_top_decile`` (ECE with 10 bins). ``undefined``: see `_collect`."""
    return _collect({
        "roc_auc": roc_auc,
        "pr_auc": pr_auc,
        "brier": brier,
        "log_loss": log_loss,
        "ece": expected_calibration_error,
        "lift_top_decile": lift_top_decile,
        "capture_top_decile": capture_top_decile,
    }, y, p, undefined)


def _collect(functions: dict[str, Any], a: ArrayLike, b: ArrayLike,
             undefined: dict[str, str] | None) -> dict[str, float]:
    """Each metric of ``functions`` on ``(a, b)``. Without ``undefined`` a metric that is
    undefined on these inputs raises `UndefinedMetricError`; with it (a dict), that metric
    is NaN and ``undefined[name]`` says why. Invalid inputs always raise."""
    out = {}
    for name, fn in functions.items():
        try:
            out[name] = fn(a, b)
        except UndefinedMetricError as exc:
            if undefined is None:
                raise
            out[name] = math.nan
            undefined[name] = str(exc)
    return out


# --------------------------------------------------------------------------------------------
# value metrics
# --------------------------------------------------------------------------------------------


def _gini(actual: FloatArray, order_by: FloatArray) -> float:
    """Kaggle Gini: cumulative share of ``actual`` with customers sorted by ``order_by``
    descending (ties in input order), minus the diagonal."""
    order = np.argsort(-order_by, kind="stable")
    sorted_actual = actual[order]
    n = actual.size
    return float(np.cumsum(sorted_actual).sum() / sorted_actual.sum() - (n + 1) / 2.0) / n


def normalized_gini(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Normalized Gini: ``gini(actual, predicted) / gini(actual, actual)`` (Kaggle definition).

    ``gini(a, s) = (sum_i cumsum(a sorted by s descending)_i / sum(a) - (n + 1) / 2) / n``.
    1 is a perfect ranking, 0 a random one. Ties in ``predicted`` are broken by input order.
    Undefined (`UndefinedMetricError`) when the actual values sum to 0 or are all equal, or
    when ``predicted`` is constant.
    """
    a, s = _pair(actual, predicted, "actual", "predicted")
    _nonzero_total(a, "normalized_gini")
    if np.all(a == a[0]):
        raise UndefinedMetricError(
            "normalized_gini is undefined when all actual values are equal")
    if np.all(s == s[0]):
        # a constant prediction ranks nobody: under the tie rule its "Gini" would be that
        # of the input order (measured: 0.16-0.22 on small real extracts), not a skill
        raise UndefinedMetricError(
            "normalized_gini is undefined when predicted is constant (it ranks nobody)")
    return _gini(a, s) / _gini(a, a)


def spearman(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Spearman rank correlation (scipy; average ranks for ties). Undefined
    (`UndefinedMetricError`) when either input is constant."""
    a, s = _pair(actual, predicted, "actual", "predicted")
    if a.size < 2:
        raise UndefinedMetricError("spearman needs at least 2 customers")
    for arr, name in ((a, "actual"), (s, "predicted")):
        if np.all(arr == arr[0]):
            raise UndefinedMetricError(f"spearman is undefined when {name} is constant")
    return float(spearmanr(a, s).statistic)


def decile_mape(actual: ArrayLike, predicted: ArrayLike, n_groups: int = 10) -> float:
    """Mean absolute percentage error of the group means, over groups by predicted value.

    Customers are sorted by ``predicted`` ascending (stable) and split into ``n_groups`` groups
    of equal size (sizes differ by at most one, the first groups being the larger). For each
    group ``|mean(predicted) - mean(actual)| / |mean(actual)|``; the result is the average over
    the groups whose mean actual is not 0, as a fraction (0.1 = 10 %). Needs at least
    ``n_groups`` customers and one group with a non-zero mean actual.
    """
    a, s = _pair(actual, predicted, "actual", "predicted")
    if a.size < n_groups:
        raise UndefinedMetricError(
            f"decile_mape needs at least {n_groups} customers, got {a.size}")
    order = np.argsort(s, kind="stable")
    errors = []
    for group in np.array_split(order, n_groups):
        mean_actual = a[group].mean()
        if mean_actual != 0:
            errors.append(abs(s[group].mean() - mean_actual) / abs(mean_actual))
    if not errors:
        raise UndefinedMetricError(
            "decile_mape is undefined: every group has a mean actual value of 0")
    return float(np.mean(errors))


def top_decile_capture(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Share of the total actual value held by the top decile by ``predicted``."""
    a, s = _pair(actual, predicted, "actual", "predicted")
    total = _nonzero_total(a, "top_decile_capture")
    return float(a[_top_decile_mask(s)].sum() / total)


def mae(actual: ArrayLike, predicted: ArrayLike) -> float:
    """Mean absolute error."""
    a, s = _pair(actual, predicted, "actual", "predicted")
    return float(np.mean(np.abs(s - a)))


def aggregate_bias(actual: ArrayLike, predicted: ArrayLike) -> float:
    """``sum(predicted) / sum(actual) - 1``: positive when the total is over-predicted."""
    a, s = _pair(actual, predicted, "actual", "predicted")
    total = _nonzero_total(a, "aggregate_bias")
    return float(s.sum() / total - 1.0)


def value_metrics(actual: ArrayLike, predicted: ArrayLike, *,
                  undefined: dict[str, str] | None = None) -> dict[str, float]:
    """All value metrics, keys ``normalized_gini, spearman, decile_mape, top_decile_capture,
    mae, aggregate_bias``. ``undefined``: see `_collect`."""
    return _collect({
        "normalized_gini": normalized_gini,
        "spearman": spearman,
        "decile_mape": decile_mape,
        "top_decile_capture": top_decile_capture,
        "mae": mae,
        "aggregate_bias": aggregate_bias,
    }, actual, predicted, undefined)


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------


def _winner(metric: str, model: float, baseline: float) -> str:
    if metric in HIGHER_IS_BETTER:
        m, b = model, baseline
    elif metric in LOWER_IS_BETTER:
        m, b = -model, -baseline
    elif metric in ZERO_IS_BEST:
        m, b = -abs(model), -abs(baseline)
    else:
        raise ValueError(f"unknown metric {metric!r}: no known direction to compare it")
    if math.isclose(m, b, rel_tol=1e-9, abs_tol=1e-12):
        return "tie"
    return "model" if m > b else "baseline"


def compare_table(model: dict[str, float], baseline: dict[str, float] | None) -> pd.DataFrame:
    """Side-by-side comparison of two metric dicts with the same keys.

    Returns one row per metric (in the order of ``model``) with columns ``metric, model,
    baseline, better``, where ``better`` is ``"model"``, ``"baseline"`` or ``"tie"`` (equal up
    to a relative 1e-9): higher is better for AUCs, lift, capture, Gini and Spearman; lower for
    Brier, log loss, ECE, decile MAPE and MAE; closer to 0 for ``aggregate_bias``. Raises
    ValueError for differing keys or an unknown metric name.

    A NaN value is a metric that is n/a: undefined on the evaluated customers (`_collect`),
    or ``baseline`` None, which means the baseline could not be evaluated (it could not be
    fitted, or has no prediction for some customers) and makes every ``baseline`` value
    NaN. Where either side is NaN, ``better`` is ``"n/a"`` (`format_table` shows ``n/a``;
    MLflow logging leaves NaN out).
    """
    if baseline is not None and set(model) != set(baseline):
        only_m = sorted(set(model) - set(baseline))
        only_b = sorted(set(baseline) - set(model))
        raise ValueError(
            f"model and baseline metrics differ: only in model {only_m}, only in baseline {only_b}"
        )
    rows = []
    for metric, m_value in model.items():
        m = float(m_value)
        b = math.nan if baseline is None else float(baseline[metric])
        known = not (math.isnan(m) or math.isnan(b))
        better = _winner(metric, m if known else 0.0, b if known else 0.0)  # checks the name
        rows.append({"metric": metric, "model": m, "baseline": b,
                     "better": better if known else "n/a"})
    return pd.DataFrame(rows, columns=["metric", "model", "baseline", "better"])


def format_table(table: pd.DataFrame) -> str:
    """A metrics table (`compare_table`'s, or a backtest's with its ``target`` column) as
    text, numbers to 4 decimals and a value that is not available (NaN) as ``n/a``."""
    return table.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="n/a")
